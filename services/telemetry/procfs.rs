//! What Linux's `/proc` says about a process and the machine: CPU seconds,
//! memory (VmRSS, VmHWM), the CPU model. Read, never cached: `bench` and
//! `flood` read them before and after a window, a server's load report
//! every second or so. Elsewhere than Linux, each reads as zero or
//! "unknown".

/// (utime + stime) in seconds, from /proc/<pid>/stat (USER_HZ = 100 on Linux).
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which is in parentheses.
    let rest = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}

/// A `/proc/<pid>/status` field in kB (`VmRSS:`, `VmHWM:`...); 0 when the
/// process or the field is not there.
pub fn status_kb(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// The machine in one line: its cores and its CPU model.
pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|line| {
            line.strip_prefix("model name")
                .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    format!("{} cores, {cpu}", cores())
}

/// The CPUs this process may use (its cgroup's quota counted, as the
/// standard library reads it).
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
