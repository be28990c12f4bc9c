//! What the HTTP backends share: one client each (no redirects followed, bounded in time), at
//! most `connections` requests in flight, a response read with a size cap, and how an HTTP
//! status is classified.

use std::future::Future;
use std::time::Duration;

use reqwest::{Response, StatusCode};
use tokio::sync::Semaphore;

use super::{BoxFuture, Limits, Message, Receipt, SendError};
use crate::domain::Span;

/// The shortest pause after a 429, a 408 or a request that timed out: a provider that says
/// it is overloaded is not asked again at once, whatever the retry schedule says.
pub const BUSY_FLOOR: Duration = Duration::from_secs(30);

/// The most of a response body that is read; the rest is never downloaded.
pub const MAX_RESPONSE: usize = 64 * 1024;

/// How much of a response body an error message quotes.
const QUOTE: usize = 200;

/// Requests in flight at once from a backend that sends one message per request, unless its
/// `connections` says otherwise.
pub const DEFAULT_CONNECTIONS: usize = 64;

/// A client that follows no redirect (a 3xx is the far end's answer, not an instruction), gives
/// up on a request, body included, after `timeout`, and keeps up to `connections` idle
/// connections to each host.
pub fn client(timeout: Duration, connections: usize) -> Result<reqwest::Client, String> {
    build(builder(timeout, connections))
}

/// The settings every backend's client shares, to add to before [`build`].
pub fn builder(timeout: Duration, connections: usize) -> reqwest::ClientBuilder {
    super::install_tls_provider();
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(10)))
        .pool_max_idle_per_host(connections)
}

/// Checks a backend's `connections`: at least one.
pub fn connections(configured: Option<usize>) -> Result<usize, String> {
    match configured {
        Some(0) => Err("connections must be at least 1".into()),
        Some(n) => Ok(n),
        None => Ok(DEFAULT_CONNECTIONS),
    }
}

/// The requests of a backend that sends one message per request: at most as many in flight at
/// once, across all the batches it is sending, as its client keeps connections alive. Unbounded,
/// a batch of 500 opened 500 connections, and all but the few the pool kept were closed after
/// one request each; a provider also refuses a client that opens too many at once.
#[derive(Debug)]
pub struct Requests {
    slots: Semaphore,
}

impl Requests {
    pub fn new(connections: usize) -> Requests {
        Requests {
            slots: Semaphore::new(connections),
        }
    }

    /// Each message of `batch` sent with `send` as soon as a connection is free; the results in
    /// the batch's order.
    pub fn each<'a, F, Fut>(&'a self, batch: &'a [Message], send: F) -> BoxFuture<'a, Vec<Result<Receipt, SendError>>>
    where
        F: Fn(&'a Message) -> Fut + Send + Sync + 'a,
        Fut: Future<Output = Result<Receipt, SendError>> + Send + 'a,
    {
        Box::pin(async move {
            let send = &send;
            futures_util::future::join_all(batch.iter().map(|m| async move {
                // Never closed, so a permit always comes.
                let _slot = self.slots.acquire().await.ok();
                // Its deadline may have passed while it waited for a connection.
                if m.is_late(tokio::time::Instant::now()) {
                    return Err(SendError::TooLate);
                }
                send(m).await
            }))
            .await
        })
    }
}

pub fn build(builder: reqwest::ClientBuilder) -> Result<reqwest::Client, String> {
    builder
        .build()
        .map_err(|e| format!("cannot build the HTTP client: {e}"))
}

/// The status, the `Retry-After` in seconds if any, and up to [`MAX_RESPONSE`] bytes of body.
pub async fn read(mut response: Response) -> Result<(StatusCode, Option<Duration>, Vec<u8>), reqwest::Error> {
    let status = response.status();
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        let room = MAX_RESPONSE - body.len();
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if body.len() >= MAX_RESPONSE {
            break;
        }
    }
    Ok((status, retry_after, body))
}

/// The start of a response body, for an error message: one line, at most a few words.
pub fn quote(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let flat: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    match flat.char_indices().nth(QUOTE) {
        Some((i, _)) => format!("{}…", &flat[..i]),
        None => flat,
    }
}

/// A request that got no answer. Before anything was sent (no connection) it was surely not
/// processed; after, it may have been.
pub fn unanswered(backend: &str, e: &reqwest::Error) -> SendError {
    let message = format!("no answer from {backend}: {}", super::error_chain(e));
    let retry_after = e.is_timeout().then_some(BUSY_FLOOR);
    if e.is_connect() {
        SendError::Transient { message, retry_after }
    } else {
        SendError::Uncertain { message, retry_after }
    }
}

/// An answer that was not a success, classified: 408 and 429 were not processed and are
/// retried; a 5xx may have been processed, so its retry may be a duplicate; 401 and 403 are
/// this backend's credentials (worth failing over, then retrying); any other 4xx is final.
pub fn refused(status: StatusCode, retry_after: Option<Duration>, body: &[u8]) -> SendError {
    let message = format!("HTTP {}: {}", status.as_u16(), quote(body));
    match status.as_u16() {
        408 | 429 => SendError::Transient {
            message,
            retry_after: Some(retry_after.map_or(BUSY_FLOOR, |r| r.max(BUSY_FLOOR))),
        },
        401 | 403 => SendError::Transient { message, retry_after },
        500..=599 => SendError::Uncertain { message, retry_after },
        _ => SendError::Permanent { message },
    }
}

/// The limits an HTTP SMS gateway gets where the configuration sets none: `concurrency`
/// requests in flight, 30 s each, retried after 15 s, 1, 5, 15 and 30 minutes (±20 %), a
/// provider's `Retry-After` honoured up to 10 minutes.
pub fn sms_limits(concurrency: usize) -> Limits {
    Limits {
        concurrency: Some(concurrency),
        timeout: Some(Span::from_secs(30)),
        retry: Some(
            ["15s", "1m", "5m", "15m", "30m"]
                .iter()
                .filter_map(|s| s.parse().ok())
                .collect(),
        ),
        jitter: Some(0.2),
        retry_after_max: Some(Span::from_secs(600)),
        ..Limits::default()
    }
}

/// Checks that `key`'s value is an http(s) URL.
pub fn http_url(key: &str, url: &str) -> Result<(), String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("{key}: {e}"))?;
    if !matches!(parsed.scheme(), "https" | "http") {
        return Err(format!("{key} must be an http(s) URL"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_answers_wait_at_least_the_floor() {
        let wait = |status: u16, after: Option<u64>| {
            refused(
                StatusCode::from_u16(status).unwrap(),
                after.map(Duration::from_secs),
                b"busy",
            )
            .retry_after()
        };
        assert_eq!(wait(429, None), Some(BUSY_FLOOR));
        assert_eq!(
            wait(429, Some(5)),
            Some(BUSY_FLOOR),
            "a shorter Retry-After is lifted to the floor"
        );
        assert_eq!(wait(429, Some(120)), Some(Duration::from_secs(120)));
        assert_eq!(wait(408, None), Some(BUSY_FLOOR));
        assert_eq!(wait(503, None), None);
        assert!(refused(StatusCode::BAD_GATEWAY, None, b"<html>").may_have_been_sent());
        assert!(matches!(
            refused(StatusCode::BAD_REQUEST, None, b"no"),
            SendError::Permanent { .. }
        ));
    }
}
