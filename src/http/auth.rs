//! Who is calling: a biller by its API token, the operator by the admin token, or nobody.
//!
//! A biller's token is `tgz_{id}_{secret}`: the id finds the stored row, and the SHA-256 of the
//! secret (256 random bits) is compared with the stored hash in constant time, so neither the
//! lookup nor the comparison tells an attacker how close a guess came. The admin token is
//! compared the same way. Tokens are never logged: the tracing layer records the path only.

use std::collections::HashMap;
use std::sync::Mutex;

use axum::extract::FromRequestParts;
use axum::http::header;
use axum::http::request::Parts;
use base64::Engine as _;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::time::Instant;

use super::problem::Problem;
use super::{AppState, Shared};
use crate::domain::RecipientId;

const PREFIX: &str = "tgz_";
/// Random bytes in a token's secret: 256 bits.
const SECRET_BYTES: usize = 32;

/// A new token, shown once: the text to hand over and the hash to keep.
#[derive(Debug)]
pub struct NewToken {
    pub secret: String,
    pub hash: String,
}

/// A fresh secret for a token and its hash; the token is `tgz_{id}_{secret}` once its row id
/// is known (see [`token_text`]).
pub fn new_token_secret() -> Result<NewToken, getrandom::Error> {
    let mut bytes = [0u8; SECRET_BYTES];
    getrandom::fill(&mut bytes)?;
    let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let hash = hash(&secret);
    Ok(NewToken { secret, hash })
}

/// The token a biller presents.
pub fn token_text(id: i64, secret: &str) -> String {
    format!("{PREFIX}{id}_{secret}")
}

fn hash(secret: &str) -> String {
    Sha256::digest(secret.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Equal in time that depends on the lengths only (and the hashes have one length).
fn same(a: &str, b: &str) -> bool {
    a.as_bytes().ct_eq(b.as_bytes()).into()
}

/// A parsed bearer token of a biller: its row id and secret.
fn parse_biller(token: &str) -> Option<(i64, &str)> {
    let rest = token.strip_prefix(PREFIX)?;
    let (id, secret) = rest.split_once('_')?;
    let id: i64 = id.parse().ok().filter(|i| *i > 0)?;
    let well_formed = secret.len() == 43
        && secret
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    well_formed.then_some((id, secret))
}

/// The authenticated caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller {
    Biller { recipient: RecipientId, token: i64 },
    Admin,
}

impl Caller {
    /// The key of its rate limit and of its idempotency keys.
    pub fn key(&self) -> String {
        match self {
            Caller::Biller { token, .. } => format!("t{token}"),
            Caller::Admin => "admin".to_owned(),
        }
    }
}

/// A biller, for the biller API: the admin token is refused there (403).
#[derive(Debug, Clone, Copy)]
pub struct Biller {
    pub recipient: RecipientId,
    pub caller: Caller,
}

/// The operator, for the operator API: a biller's token is refused there (403).
#[derive(Debug, Clone, Copy)]
pub struct Admin;

async fn authenticate(parts: &Parts, state: &Shared) -> Result<Caller, Problem> {
    let header = parts
        .headers
        .get(header::AUTHORIZATION)
        .ok_or_else(|| Problem::unauthorized("this endpoint needs `Authorization: Bearer TOKEN`"))?;
    let token = header
        .to_str()
        .ok()
        .and_then(|h| h.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| Problem::unauthorized("the Authorization header must be `Bearer TOKEN`"))?;
    let caller = if token.starts_with(PREFIX) {
        let (id, secret) = parse_biller(token).ok_or_else(|| Problem::unauthorized("the token is malformed"))?;
        let stored = state.store.api_token(id).await?;
        // Hash and compare even when there is no such row, so a missing id and a wrong secret
        // take the same time.
        let (expected, recipient) = match &stored {
            Some(s) => (s.hash.as_str(), Some(s.recipient)),
            None => ("0000000000000000000000000000000000000000000000000000000000000000", None),
        };
        match (same(&hash(secret), expected), recipient) {
            (true, Some(recipient)) => Caller::Biller { recipient, token: id },
            _ => {
                return Err(Problem::unauthorized(
                    "the token is not valid (revoked, or never issued)",
                ));
            }
        }
    } else {
        match &state.config.http.admin_token {
            Some(admin) if same(&hash(token), &hash(admin.expose())) => Caller::Admin,
            _ => return Err(Problem::unauthorized("the token is not valid")),
        }
    };
    state
        .limiter
        .take(&caller.key(), state.config.http.rate, state.config.http.burst)?;
    Ok(caller)
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = Problem;
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Caller, Problem> {
        authenticate(parts, &state.0).await
    }
}

impl FromRequestParts<AppState> for Biller {
    type Rejection = Problem;
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Biller, Problem> {
        match authenticate(parts, &state.0).await? {
            caller @ Caller::Biller { recipient, .. } => Ok(Biller { recipient, caller }),
            Caller::Admin => Err(Problem::forbidden(
                "the biller API takes a biller's token (`tangazo billers add`), not the admin token",
            )),
        }
    }
}

impl FromRequestParts<AppState> for Admin {
    type Rejection = Problem;
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Admin, Problem> {
        match authenticate(parts, &state.0).await? {
            Caller::Admin => Ok(Admin),
            Caller::Biller { .. } => Err(Problem::forbidden("the operator API takes the admin token")),
        }
    }
}

/// A token bucket per caller: `rate` a second, up to `burst` at once.
#[derive(Debug, Default)]
pub struct Limiter {
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

impl Limiter {
    fn take(&self, key: &str, rate: u32, burst: u32) -> Result<(), Problem> {
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let (tokens, last) = buckets.entry(key.to_owned()).or_insert((f64::from(burst), now));
        let refilled = (*tokens + now.duration_since(*last).as_secs_f64() * f64::from(rate)).min(f64::from(burst));
        *last = now;
        if refilled >= 1.0 {
            *tokens = refilled - 1.0;
            Ok(())
        } else {
            *tokens = refilled;
            let wait = ((1.0 - refilled) / f64::from(rate)).ceil().max(1.0);
            // Whole seconds, at least one: what Retry-After can say.
            Err(Problem::too_many(wait as u64))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_parse_only_in_their_own_shape() {
        let t = new_token_secret().unwrap();
        assert_eq!(t.secret.len(), 43);
        let text = token_text(7, &t.secret);
        assert_eq!(parse_biller(&text), Some((7, t.secret.as_str())));
        assert_eq!(hash(&t.secret), t.hash);
        for bad in [
            "tgz_",
            "tgz_7",
            "tgz_x_abc",
            "tgz_0_",
            "tgz_7_short",
            &format!("tgz_-1_{}", t.secret),
        ] {
            assert_eq!(parse_biller(bad), None, "{bad}");
        }
        assert_ne!(new_token_secret().unwrap().secret, t.secret);
    }

    #[tokio::test(start_paused = true)]
    async fn the_limiter_allows_the_burst_then_the_rate() {
        let l = Limiter::default();
        for _ in 0..5 {
            assert!(l.take("a", 2, 5).is_ok());
        }
        let refused = l.take("a", 2, 5).unwrap_err();
        assert_eq!(refused.status.as_u16(), 429);
        assert_eq!(refused.retry_after, Some(1));
        assert!(l.take("b", 2, 5).is_ok(), "another caller has its own bucket");
        tokio::time::advance(std::time::Duration::from_millis(500)).await;
        assert!(l.take("a", 2, 5).is_ok());
        assert!(l.take("a", 2, 5).is_err());
    }
}
