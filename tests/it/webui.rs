//! webui: `/json` as the original, its 503 path, the page and its embedded
//! assets, the status endpoint, and the HTTP-to-gRPC gateway.

use crate::support::{
    RedisServer, one_lane_no_queue, sha256_hex, spawn_hasher, spawn_rng,
    wait_for_a_call_in_rngs_lane,
};
use axum::{
    body::Body,
    http::{Request, StatusCode},
};
use dockercoins::{
    client::balancer::BalancerSettings,
    client::{BalancedHasher, BalancedRng},
    hasher::HasherConfig,
    rng::RngConfig,
    store::Store,
    webui::{Assets, CONTENT_SECURITY_POLICY, Webui, router},
};
use http_body_util::BodyExt;
use serde_json::Value;
use std::time::Duration;
use tower::ServiceExt;

fn webui(store: Store, rng_url: &str, hasher_url: &str) -> Webui {
    let pool = BalancerSettings {
        connect_timeout: Duration::from_millis(300),
        ..Default::default()
    };
    Webui::new(
        store,
        BalancedRng::new(rng_url, &pool).unwrap(),
        BalancedHasher::new(hasher_url, &pool).unwrap(),
    )
}

/// A loopback address where nothing listens.
async fn dead_url(scheme: &str) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    format!("{scheme}://{addr}")
}

async fn get(
    webui: &Webui,
    method: &str,
    uri: &str,
    body: &'static [u8],
) -> (StatusCode, axum::http::HeaderMap, bytes::Bytes) {
    let request = Request::builder()
        .method(method)
        .uri(uri)
        .body(Body::from(body))
        .unwrap();
    let response = router(webui.clone()).oneshot(request).await.unwrap();
    let (parts, body) = response.into_parts();
    (
        parts.status,
        parts.headers,
        body.collect().await.unwrap().to_bytes(),
    )
}

fn json(body: &[u8]) -> Value {
    serde_json::from_slice(body).unwrap_or_else(|_| panic!("not JSON: {body:?}"))
}

#[tokio::test]
async fn json_reports_coins_hashes_and_now_like_the_original() {
    let redis = RedisServer::start().await;
    let dead = dead_url("http").await;
    let webui = webui(
        Store::redis(&redis.url(), Duration::from_millis(500)).unwrap(),
        &dead,
        &dead,
    );
    let (status, headers, body) = get(&webui, "GET", "/json", b"").await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "application/json");
    let empty = json(&body);
    assert_eq!(
        (empty["coins"].as_u64(), empty["hashes"].as_u64()),
        (Some(0), Some(0))
    );

    let mut connection = redis.connection().await.unwrap();
    let () = redis::pipe()
        .cmd("INCRBY")
        .arg("hashes")
        .arg(42)
        .ignore()
        .cmd("HSET")
        .arg("wallet")
        .arg("0abc")
        .arg("x")
        .ignore()
        .query_async(&mut connection)
        .await
        .unwrap();
    let (_, _, body) = get(&webui, "GET", "/json", b"").await;
    let score = json(&body);
    assert_eq!(score["hashes"].as_u64(), Some(42));
    assert_eq!(score["coins"].as_u64(), Some(1));
    let now = score["now"].as_f64().expect("now is a float");
    let unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!((now - unix).abs() < 60.0);
}

#[tokio::test]
async fn json_is_503_with_an_error_when_redis_is_down() {
    let dead_redis = dead_url("redis").await;
    let dead = dead_url("http").await;
    let webui = webui(
        Store::redis(&dead_redis, Duration::from_millis(300)).unwrap(),
        &dead,
        &dead,
    );
    let (status, _, body) = get(&webui, "GET", "/json", b"").await;
    assert_eq!(status, 503);
    let error = json(&body);
    assert!(
        error["error"]
            .as_str()
            .unwrap()
            .contains("Redis unavailable"),
        "{error}"
    );
    // webui itself keeps serving.
    let (status, _, _) = get(&webui, "GET", "/", b"").await;
    assert_eq!(status, 200);
}

/// The page loads only its own, embedded assets: every src/href is a local
/// path that webui serves, and the CSP allows nothing else.
#[tokio::test]
async fn the_page_references_only_embedded_assets() {
    let dead = dead_url("http").await;
    let webui = webui(Store::memory(), &dead, &dead);
    let (status, headers, body) = get(&webui, "GET", "/", b"").await;
    assert_eq!(status, 200);
    assert!(
        headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    assert_eq!(headers["content-security-policy"], CONTENT_SECURITY_POLICY);
    assert_eq!(headers["x-content-type-options"], "nosniff");
    let page = String::from_utf8(body.to_vec()).unwrap();
    assert!(!page.contains("http://") && !page.contains("https://") && !page.contains("//cdn"));
    let mut assets = 0;
    for attribute in ["src=\"", "href=\""] {
        for piece in page.split(attribute).skip(1) {
            let path = piece.split('"').next().unwrap();
            assert!(path.starts_with('/'), "not a local asset: {path}");
            let (status, headers, body) = get(&webui, "GET", path, b"").await;
            assert_eq!(status, 200, "{path}");
            assert!(!body.is_empty(), "{path}");
            assert_eq!(headers["x-content-type-options"], "nosniff");
            assets += 1;
        }
    }
    assert!(
        assets >= 2,
        "the page should load its script and stylesheet"
    );
    for path in [
        "/static/../Cargo.toml",
        "/static/",
        "/etc/passwd",
        "/static/app.js/x",
    ] {
        let (status, _, _) = get(&webui, "GET", path, b"").await;
        assert_eq!(status, 404, "{path}");
    }
}

#[tokio::test]
async fn status_and_gateway_reach_the_backends() {
    let rng = spawn_rng(RngConfig::turbo()).await;
    let hasher = spawn_hasher(HasherConfig::turbo()).await;
    let webui = webui(Store::memory(), &rng.url(), &hasher.url());

    let (status, _, body) = get(&webui, "GET", "/api/status", b"").await;
    assert_eq!(status, 200);
    let report = json(&body);
    assert_eq!(report["rng"]["status"], "SERVING", "{report}");
    assert_eq!(report["hasher"]["status"], "SERVING", "{report}");
    assert_eq!(report["redis"]["state"]["status"], "UP", "{report}");
    // What `dockercoins top` shows as the policy.
    assert_eq!(report["rng"]["policy"], "round_robin", "{report}");
    assert_eq!(report["hasher"]["policy"], "round_robin", "{report}");

    let (status, _, body) = get(&webui, "GET", "/api/rng/16", b"").await;
    assert_eq!(status, 200);
    let random = json(&body);
    assert_eq!(random["size"], 16);
    assert_eq!(random["hex"].as_str().unwrap().len(), 32);

    let (status, _, body) = get(&webui, "POST", "/api/hash", b"hello").await;
    assert_eq!(status, 200);
    assert_eq!(json(&body)["hex"], sha256_hex(b"hello"));

    for bad in ["/api/rng/abc", "/api/rng/0", "/api/rng/99999999999"] {
        let (status, _, body) = get(&webui, "GET", bad, b"").await;
        assert_eq!(status, 400, "{bad}");
        assert!(json(&body)["error"].is_string());
    }
    rng.stop().await.unwrap();
    hasher.stop().await.unwrap();
}

#[tokio::test]
async fn the_gateway_says_which_backend_failed_and_how() {
    let dead = dead_url("http").await;
    let webui = webui(Store::memory(), &dead, &dead);
    let (status, _, body) = get(&webui, "GET", "/api/rng/16", b"").await;
    assert_eq!(status, 503);
    let error = json(&body);
    assert_eq!(error["backend"], "rng");
    assert_eq!(error["grpc_status"], "Unavailable");
    let (status, _, body) = get(&webui, "POST", "/api/hash", b"x").await;
    assert_eq!(status, 503);
    assert_eq!(json(&body)["backend"], "hasher");
    let (status, _, body) = get(&webui, "GET", "/api/status", b"").await;
    assert_eq!(status, 200);
    assert_eq!(json(&body)["rng"]["status"], "UNREACHABLE");
}

/// An overloaded rng (a full lane) is passed on to the browser as what it
/// is: 503, with the pause rng asked for as `Retry-After`.
#[tokio::test]
async fn the_gateway_passes_an_overloaded_backends_pause_on() {
    let rng = spawn_rng(one_lane_no_queue(Duration::from_secs(3))).await;
    let webui = webui(Store::memory(), &rng.url(), &dead_url("http").await);
    let holder = webui.clone();
    let first = tokio::spawn(async move { get(&holder, "GET", "/api/rng/8", b"").await });
    wait_for_a_call_in_rngs_lane(rng.addr, Duration::from_secs(5)).await;
    let (status, headers, body) = get(&webui, "GET", "/api/rng/8", b"").await;
    assert_eq!(status, 503);
    assert_eq!(headers["retry-after"], "3");
    assert_eq!(json(&body)["grpc_status"], "ResourceExhausted");
    first.abort();
    rng.stop().await.unwrap();
}

/// The lab's "update a service" step: with `WEBUI_ASSETS_DIR`, the page
/// comes from a directory, read at each request, so an edited stylesheet is
/// served at once, with the same security headers; nothing but the page's
/// own three files is served from there; and a directory that is not one is
/// refused at start-up, naming the setting.
#[tokio::test]
async fn an_edited_stylesheet_in_the_assets_dir_is_served_without_a_rebuild() {
    let temp = tempfile::Builder::new()
        .prefix("dockercoins-assets-")
        .tempdir()
        .unwrap();
    let dir = temp.path().to_owned();
    let source = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("services/webui");
    for file in ["index.html", "app.js", "style.css"] {
        std::fs::copy(source.join(file), dir.join(file)).unwrap();
    }
    std::fs::write(dir.join("secret.txt"), "not for the web").unwrap();
    let dead = dead_url("http").await;
    let webui =
        webui(Store::memory(), &dead, &dead).with_assets(Assets::from_dir(dir.clone()).unwrap());

    let (status, _, before) = get(&webui, "GET", "/static/style.css", b"").await;
    assert_eq!(status, 200);
    assert!(!String::from_utf8_lossy(&before).contains("font-size: 3em"));
    // The student's edit, then a reload.
    let edited = format!(
        "{}\nbody {{ font-size: 3em; }}\n",
        String::from_utf8_lossy(&before)
    );
    std::fs::write(dir.join("style.css"), &edited).unwrap();
    let (status, headers, after) = get(&webui, "GET", "/static/style.css", b"").await;
    assert_eq!(status, 200);
    assert_eq!(String::from_utf8_lossy(&after), edited);
    assert_eq!(headers["content-type"], "text/css; charset=utf-8");
    assert_eq!(headers["content-security-policy"], CONTENT_SECURITY_POLICY);
    assert_eq!(headers["x-content-type-options"], "nosniff");
    assert_eq!(headers["cache-control"], "no-cache");
    let (status, _, page) = get(&webui, "GET", "/", b"").await;
    assert_eq!(status, 200);
    assert!(String::from_utf8_lossy(&page).contains("/static/style.css"));

    for path in ["/secret.txt", "/static/secret.txt", "/static/../secret.txt"] {
        let (status, _, body) = get(&webui, "GET", path, b"").await;
        assert_eq!(status, 404, "{path}: {body:?}");
    }
    // A file removed from the directory: an error that names it, not the
    // compiled copy.
    std::fs::remove_file(dir.join("app.js")).unwrap();
    let (status, _, body) = get(&webui, "GET", "/static/app.js", b"").await;
    assert_eq!(status, 500);
    assert!(
        String::from_utf8_lossy(&body).contains("app.js"),
        "{body:?}"
    );

    let error = Assets::from_dir(dir.join("style.css"))
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("WEBUI_ASSETS_DIR") && error.contains("not a directory"),
        "{error}"
    );
}
