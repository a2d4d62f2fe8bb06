//! Ports for servers a test stops and starts again where clients look.

/// A free port for a server a test stops and starts again on the same port.
/// A port from `bind(0)` is in the kernel's ephemeral range, so while the
/// server is down any other socket of the test run (a listener on port 0, an
/// outgoing connection) may be given it. Below that range only an explicit
/// bind takes a port, and each call here picks another one.
pub fn restartable_port() -> u16 {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<usize>().ok())
        .unwrap_or(32768);
    let span = ephemeral_low.saturating_sub(1024).min(12_000);
    assert!(span >= 100, "no room below the ephemeral port range");
    // Test processes running at once (nextest) start at different places.
    let start = std::process::id() as usize * 7919;
    for _ in 0..span {
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let port = (ephemeral_low - span + (start + n) % span) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port below the ephemeral range");
}
