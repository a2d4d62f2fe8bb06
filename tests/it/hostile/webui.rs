//! webui: only its own routes, and its security headers on every answer.

use super::{
    http_wire::{get_request, post, raw_http},
    mesh::{mesh, stop_mesh},
};
use dockercoins::server::limits::MAX_BLOCK_BYTES;

/// Text that would show a file of this machine or of the source tree.
const FILE_MARKERS: [&str; 6] = [
    "[package]",
    "root:",
    "pub mod",
    "//!",
    "#!/",
    "[dependencies]",
];

/// Path traversal, written as a client may send it (raw on the wire, so
/// nothing normalises it on the way): every server answers 404 or 400, and
/// never with the content of a file.
#[tokio::test]
async fn path_traversal_never_reaches_a_file() {
    let (rng, hasher, webui) = mesh().await;
    let targets = [
        "/../Cargo.toml",
        "/..%2fCargo.toml",
        "/%2e%2e/%2e%2e/etc/passwd",
        "/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
        "/static/../../services/lib.rs",
        "/static/%2e%2e/%2e%2e/services/lib.rs",
        "/static/..%2f..%2fCargo.toml",
        "/static/%252e%252e/Cargo.toml",
        "/static/....//....//etc/passwd",
        "/static/app.js/../../../Cargo.toml",
        "/static/app.js%00.txt",
        "/static/.%2e/.%2e/Cargo.toml",
        "/static//etc/passwd",
        "/static/%c0%ae%c0%ae/Cargo.toml",
        "/static/..\\..\\Cargo.toml",
        "/services/lib.rs",
        "/Cargo.toml",
        "/api/rng/../../Cargo.toml",
        "/api/../static/../Cargo.toml",
        "//etc/passwd",
        "/./Cargo.toml",
        "/webui/index.html",
        "/services/webui/app.js",
        "/static/index.html",
    ];
    for (name, addr) in [
        ("webui", webui.addr),
        ("rng", rng.addr),
        ("hasher", hasher.addr),
    ] {
        for target in targets {
            let response = raw_http(addr, &get_request("GET", target)).await.unwrap();
            assert!(
                [400, 404].contains(&response.status),
                "{name} {target}: {:?}",
                response.head
            );
            let body = String::from_utf8_lossy(&response.body);
            for marker in FILE_MARKERS {
                assert!(
                    !body.contains(marker),
                    "{name} {target} showed a file: {body:.200}"
                );
            }
        }
    }
    stop_mesh(rng, hasher, webui).await;
}

/// Checks a Content-Security-Policy: `default-src` is `'none'` or `'self'`,
/// every source list holds only `'self'` or `'none'` (no inline code, no
/// eval, no other origin, no scheme), and nobody may frame the page.
fn check_csp(csp: &str) {
    let directives: Vec<(&str, Vec<&str>)> = csp
        .split(';')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .map(|d| {
            let mut words = d.split_whitespace();
            (words.next().unwrap(), words.collect())
        })
        .collect();
    let get = |name: &str| directives.iter().find(|(n, _)| *n == name).map(|(_, v)| v);
    let default = get("default-src").expect("no default-src");
    assert!(
        *default == ["'none'"] || *default == ["'self'"],
        "default-src {default:?}"
    );
    for (name, sources) in &directives {
        for source in sources {
            assert!(
                ["'self'", "'none'"].contains(source),
                "{name} allows {source}: {csp}"
            );
        }
    }
    assert_eq!(
        get("frame-ancestors").map(|v| v.as_slice()),
        Some(&["'none'"][..])
    );
    assert_eq!(get("base-uri").map(|v| v.as_slice()), Some(&["'none'"][..]));
}

/// Every answer of webui (the page, its assets, the JSON, the gateway, and
/// its errors: 404, 400, 405, 413) carries the same security headers: a CSP
/// that lets the page load only its own assets, nosniff, no referrer, no
/// framing. And the page works under that CSP: no inline script, style or
/// event handler that the policy would block.
#[tokio::test]
async fn every_webui_answer_carries_the_security_headers() {
    let (rng, hasher, webui) = mesh().await;
    let mut answers = Vec::new();
    for (method, target, status) in [
        ("GET", "/", 200),
        ("GET", "/static/app.js", 200),
        ("GET", "/static/style.css", 200),
        ("GET", "/json", 200),
        ("GET", "/healthz", 200),
        ("GET", "/api/status", 200),
        ("GET", "/api/rng/8", 200),
        ("GET", "/favicon.ico", 204),
        ("GET", "/nope", 404),
        ("GET", "/api/rng/abc", 400),
        ("POST", "/json", 405),
    ] {
        let response = raw_http(webui.addr, &get_request(method, target))
            .await
            .unwrap();
        assert_eq!(
            response.status, status,
            "{method} {target}: {:?}",
            response.head
        );
        answers.push((format!("{method} {target}"), response));
    }
    let mut headers: Vec<(String, Vec<(String, String)>)> = answers
        .iter()
        .map(|(what, response)| {
            let fields = response
                .head
                .lines()
                .skip(1)
                .filter_map(|line| line.split_once(':'))
                .map(|(k, v)| (k.to_ascii_lowercase(), v.trim().to_owned()))
                .collect();
            (what.clone(), fields)
        })
        .collect();
    let (status, too_large, _) = post(webui.addr, "/api/hash", vec![0; MAX_BLOCK_BYTES + 1], false)
        .await
        .unwrap();
    assert_eq!(status, 413);
    let fields = too_large
        .iter()
        .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap().to_owned()))
        .collect();
    headers.push(("POST /api/hash (413)".to_owned(), fields));
    for (what, fields) in &headers {
        let get = |name: &str| {
            fields
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        };
        check_csp(get("content-security-policy").unwrap_or_else(|| panic!("{what}: no CSP")));
        assert_eq!(get("x-content-type-options"), Some("nosniff"), "{what}");
        assert_eq!(get("referrer-policy"), Some("no-referrer"), "{what}");
        assert_eq!(get("x-frame-options"), Some("DENY"), "{what}");
    }
    // The page under its own CSP: scripts and styles from files only.
    let page = String::from_utf8(answers[0].1.body.clone())
        .unwrap()
        .to_lowercase();
    for element in page.split("<script").skip(1) {
        let (tag, rest) = element.split_once('>').unwrap();
        assert!(
            tag.contains("src=\"/"),
            "a script not from a file: <script{tag}>"
        );
        assert!(
            rest.starts_with("</script>"),
            "inline code in <script{tag}>"
        );
    }
    assert!(!page.contains("<style"), "an inline stylesheet");
    assert!(!page.contains(" style="), "an inline style attribute");
    assert!(!page.contains("javascript:"), "a javascript: URL");
    for handler in [
        " onload=",
        " onclick=",
        " onerror=",
        " onmouseover=",
        " onsubmit=",
    ] {
        assert!(
            !page.contains(handler),
            "an inline event handler: {handler}"
        );
    }
    stop_mesh(rng, hasher, webui).await;
}
