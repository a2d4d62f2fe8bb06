//! (a) The legacy HTTP routes and webui's gateway: arbitrary paths and bodies.

use super::{
    cases::{check_cases, runtime},
    http_wire::{get_request, percent_decode, post, raw_http},
    mesh::{mesh, stop_mesh},
};
use crate::support::{sha256_hex, spawn_rng};
use axum::http::StatusCode;
use dockercoins::{rng::RngConfig, server::limits::MAX_BLOCK_BYTES};
use proptest::{prelude::*, test_runner::TestCaseError};

/// What `GET /<segment>` must answer, worked out independently of
/// `parse_size`: the decoded segment is an optional `+` and ASCII digits
/// whose value is 1 to MAX_BLOCK_BYTES, or the answer is 400.
fn expected_size(segment: &str) -> Option<usize> {
    let decoded = String::from_utf8(percent_decode(segment)).ok()?;
    let digits = decoded.strip_prefix('+').unwrap_or(&decoded);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let significant = digits.trim_start_matches('0');
    if significant.len() > 7 {
        return None;
    }
    let value: usize = significant.parse().unwrap_or(0);
    (1..=MAX_BLOCK_BYTES).contains(&value).then_some(value)
}

/// A size as a client may write it in a URL: numbers near the limits,
/// leading zeros, signs, overflow, percent-encoded digits, trailing garbage.
fn size_segment() -> impl Strategy<Value = String> {
    let max = MAX_BLOCK_BYTES as u64;
    prop_oneof![
        (1..=max).prop_map(|n| n.to_string()),
        (max - 2..=max + 2).prop_map(|n| n.to_string()),
        any::<u64>().prop_map(|n| n.to_string()),
        "[+-]?0{0,20}[0-9]{1,22}",
        "(%3[0-9]){1,4}",
        "%2[bB]?[0-9]{1,3}(%[0-9a-fA-F]{2})?",
        "[0-9]{1,5}[a-zA-Z.~_-]{1,3}",
        "[a-zA-Z.~_-]{1,4}[0-9]{0,3}",
        "(%20|%09|%0[aA])?[0-9]{1,4}(%20|%09)?",
    ]
}

/// `GET /<n>` answers exactly n random bytes when n is a size in range, and
/// 400 with a one-line reason otherwise; over a real socket.
#[test]
fn rng_get_size_answers_exactly_the_sizes_in_range() {
    let rt = runtime();
    let rng = rt.block_on(spawn_rng(RngConfig::turbo()));
    let addr = rng.addr;
    check_cases(&rt, 64, size_segment(), |segment| async move {
        let response = raw_http(addr, &get_request("GET", &format!("/{segment}")))
            .await
            .map_err(TestCaseError::fail)?;
        match expected_size(&segment) {
            Some(size) => {
                prop_assert_eq!(response.status, 200, "/{}: {:?}", segment, response.head);
                prop_assert_eq!(response.body.len(), size);
                prop_assert_eq!(
                    response.header("content-type"),
                    Some("application/octet-stream")
                );
            }
            None => {
                prop_assert_eq!(response.status, 400, "/{}: {:?}", segment, response.head);
                let reason = String::from_utf8_lossy(&response.body);
                prop_assert_eq!(reason.lines().count(), 1, "{:?}", reason);
            }
        }
        Ok(())
    });
    rt.block_on(rng.stop()).unwrap();
}

/// Any request target a client may write: path segments of every sort
/// (dots, percent-encoding, NUL, non-ASCII, spaces), queries, and the odd
/// forms (`*`, absolute URLs, `//`).
fn request_target() -> impl Strategy<Value = String> {
    let segment = prop_oneof![
        4 => size_segment(),
        2 => "[a-zA-Z0-9._~!$&'()*+,;=:@-]{0,12}",
        2 => "(%[0-9a-fA-F]{2}){1,4}",
        1 => prop::sample::select(vec![
            "..", ".", "%2e%2e", "%2E%2E", "%2f", "%00", "%ff%fe", "%", "%zz", "static",
            "api", "rng", "hash", "json", "app.js", "etc", "passwd",
        ]).prop_map(str::to_owned),
        1 => "\\PC{1,6}",
    ];
    let prefix = prop::sample::select(vec!["", "", "", "/static", "/api"]);
    let path = (
        prefix,
        prop_oneof![
            3 => segment.clone().prop_map(|s| vec![s]),
            1 => prop::collection::vec(segment, 0..=3),
        ],
        prop::option::weighted(0.3, "[a-z=&%0-9]{0,10}"),
        prop::bool::weighted(0.15),
    )
        .prop_map(|(prefix, segments, query, trailing)| {
            let mut path = format!("{prefix}/{}", segments.join("/"));
            if trailing && !segments.is_empty() {
                path.push('/');
            }
            if let Some(query) = query {
                path = format!("{path}?{query}");
            }
            path
        });
    prop_oneof![
        8 => path,
        1 => prop::sample::select(vec![
            "*", "http://evil.example/32", "//32", "/./32", "/api/rng/../../32",
            "/api//rng/32", "/api/rng/", "/api/rng/32/", "/static//app.js",
        ]).prop_map(str::to_owned),
    ]
}

/// Every server here answers any request target with a well-formed 2xx or
/// 4xx, never a 5xx and never a hang; and a 200 is never more than the
/// largest block (or its hex, through webui's gateway).
#[test]
fn any_request_target_gets_a_2xx_or_4xx_from_every_http_server() {
    let rt = runtime();
    let (rng, hasher, webui) = rt.block_on(mesh());
    let targets = [
        ("rng", rng.addr),
        ("hasher", hasher.addr),
        ("webui", webui.addr),
    ];
    let methods = prop::sample::select(vec![
        "GET", "GET", "GET", "GET", "GET", "POST", "HEAD", "PUT", "BREW",
    ]);
    // Half of webui's requests go under `/api/rng/`, where its gateway
    // parses them, rather than to the 404 fallback.
    let strategy = (
        prop::sample::select(targets.to_vec()),
        methods,
        request_target(),
        any::<bool>(),
    )
        .prop_map(|((name, addr), method, target, gateway)| {
            let target = if name == "webui" && gateway && target.starts_with('/') {
                format!("/api/rng{target}")
            } else {
                target
            };
            ((name, addr), method, target)
        });
    check_cases(
        &rt,
        192,
        strategy,
        |((name, addr), method, target)| async move {
            let response = raw_http(addr, &get_request(method, &target))
                .await
                .map_err(|e| TestCaseError::fail(format!("{name} {method} {target}: {e}")))?;
            prop_assert!(
                (200..300).contains(&response.status) || (400..500).contains(&response.status),
                "{} {} {}: {:?}",
                name,
                method,
                target,
                response.head
            );
            prop_assert!(response.body.len() <= 2 * MAX_BLOCK_BYTES + 64);
            Ok(())
        },
    );
    // Every server still serves after all that.
    rt.block_on(async {
        for (name, addr) in targets {
            let response = raw_http(addr, &get_request("GET", "/")).await.unwrap();
            assert_eq!(response.status, 200, "{name}");
        }
        stop_mesh(rng, hasher, webui).await;
    });
}

/// A body for `POST`: small and arbitrary, or within a few bytes of the
/// 1 MiB limit either side; sent with a length or chunked.
fn post_body() -> impl Strategy<Value = (Vec<u8>, bool)> {
    let body = prop_oneof![
        1 => prop::collection::vec(any::<u8>(), 0..=512),
        1 => (MAX_BLOCK_BYTES - 4..=MAX_BLOCK_BYTES + 4, any::<u8>())
            .prop_map(|(len, seed)| (0..len).map(|i| (i as u8).wrapping_mul(seed | 1)).collect()),
    ];
    (body, any::<bool>())
}

/// hasher's `POST /` and webui's `POST /api/hash`: any body up to 1 MiB gets
/// its SHA-256, anything longer 413, whether its length was announced or not.
#[test]
fn post_bodies_get_their_sha256_or_413_over_the_limit() {
    let rt = runtime();
    let (rng, hasher, webui) = rt.block_on(mesh());
    let targets = vec![(hasher.addr, "/"), (webui.addr, "/api/hash")];
    let strategy = (prop::sample::select(targets), post_body());
    check_cases(
        &rt,
        40,
        strategy,
        |((addr, path), (body, chunked))| async move {
            let len = body.len();
            let expected = sha256_hex(&body);
            let (status, _, answer) = post(addr, path, body, chunked)
                .await
                .map_err(|e| TestCaseError::fail(format!("{path} {len} bytes: {e}")))?;
            if len > MAX_BLOCK_BYTES {
                prop_assert_eq!(
                    status,
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "{} {} bytes",
                    path,
                    len
                );
            } else {
                prop_assert_eq!(status, StatusCode::OK, "{} {} bytes", path, len);
                let answer = String::from_utf8_lossy(&answer);
                prop_assert!(answer.contains(&expected), "{}: {}", path, answer);
            }
            Ok(())
        },
    );
    rt.block_on(stop_mesh(rng, hasher, webui));
}
