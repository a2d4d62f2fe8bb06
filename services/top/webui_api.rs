//! webui's three answers, read over HTTP as the page reads them: `/json`
//! (the score), `/api/hops` (each hop's latency), `/api/status` (health per
//! replica, the policy). Each GET is bounded, so a webui that hangs is
//! shown as not answering instead of freezing the screen.

use crate::client::http_get;
use crate::protocol::webui::{HopsView, ScoreUnavailable, StatusView, TimedScore};
use serde::de::DeserializeOwned;
use std::time::Duration;

/// Bound on one GET. webui's `/api/status` asks every replica with a 2 s
/// bound of its own: one more second for the answer to travel.
pub const GET_TIMEOUT: Duration = Duration::from_secs(3);

/// webui did not answer (connection refused, timeout, not HTTP, not JSON).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Unreachable(pub String);

/// `GET /json`: `Ok(Err(text))` when webui answers with an error (503 while
/// Redis is down), which is a reading, not a failure to read.
pub async fn score(webui: &str) -> Result<Result<TimedScore, String>, Unreachable> {
    let (status, body) = get(webui, "/json").await?;
    if status.is_success() {
        return parse(&body, "/json").map(Ok);
    }
    let error = serde_json::from_slice::<ScoreUnavailable>(&body)
        .map_or_else(|_| format!("/json answered {status}"), |said| said.error);
    Ok(Err(error))
}

pub async fn hops(webui: &str) -> Result<HopsView, Unreachable> {
    json(webui, "/api/hops").await
}

pub async fn status(webui: &str) -> Result<StatusView, Unreachable> {
    json(webui, "/api/status").await
}

async fn json<T: DeserializeOwned>(webui: &str, path: &str) -> Result<T, Unreachable> {
    let (status, body) = get(webui, path).await?;
    if !status.is_success() {
        return Err(Unreachable(format!("{path} answered {status}")));
    }
    parse(&body, path)
}

fn parse<T: DeserializeOwned>(body: &[u8], path: &str) -> Result<T, Unreachable> {
    serde_json::from_slice(body)
        .map_err(|error| Unreachable(format!("{path} is not the JSON expected: {error}")))
}

async fn get(webui: &str, path: &str) -> Result<(hyper::StatusCode, bytes::Bytes), Unreachable> {
    match tokio::time::timeout(GET_TIMEOUT, http_get::get(&format!("{webui}{path}"))).await {
        Ok(Ok(answer)) => Ok(answer),
        Ok(Err(error)) => Err(Unreachable(error.to_string())),
        Err(_) => Err(Unreachable(format!(
            "no answer to {path} within {} s",
            GET_TIMEOUT.as_secs()
        ))),
    }
}
