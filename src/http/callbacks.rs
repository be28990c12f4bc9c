//! What comes back from outside: SMS providers' delivery reports (the handset's receipt), SMS
//! replies that opt a number out (`STOP`, `ACHA`, `SITAKI`), and the one-click unsubscribe
//! link of emails (RFC 8058).
//!
//! Authentication: Twilio signs its callbacks (`X-Twilio-Signature`, HMAC-SHA1 with the
//! account's auth token over the URL and the sorted form fields), checked against the named
//! `twilio` sender's token. Africa's Talking signs nothing, so its callback URLs carry a secret
//! path segment derived from this deployment's key (`tangazo serve --print-callback-urls`).
//! Unsubscribe links carry a per-recipient token signed with the same key; a GET only shows a
//! button (link scanners follow GETs), the POST opts out.

use axum::Router;
use axum::extract::{Form, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use hmac::{Hmac, KeyInit, Mac};
use serde::Deserialize;
use serde_json::json;
use subtle::ConstantTimeEq;

use super::AppState;
use super::problem::{Answer, Problem};
use super::public::esc;
use crate::channels::registry::BackendConfig;
use crate::domain::{Locale, PhoneNumber, RecipientId};
use crate::storage::{OptOutBy, Store, StoreError};

/// The words that opt a number out when they open an SMS reply.
const STOP_WORDS: [&str; 6] = ["STOP", "STOPALL", "UNSUBSCRIBE", "ACHA", "SITAKI", "SIMAMISHA"];

/// The secret path segment of providers' callbacks, for `tangazo serve --print-callback-urls`.
pub async fn callback_path_secret(store: &Store) -> Result<String, StoreError> {
    Ok(store.signing_key().await?.callback_path())
}

/// The unsubscribe token of a recipient, as links in emails carry it.
pub async fn unsubscribe_token(store: &Store, recipient: RecipientId) -> Result<String, StoreError> {
    Ok(store.signing_key().await?.unsubscribe_token(recipient))
}

pub fn routes() -> Router<AppState> {
    Router::new()
        .route(
            "/callbacks/{secret}/africastalking/{sender}/delivery",
            post(at_delivery),
        )
        .route("/callbacks/{secret}/africastalking/{sender}/inbound", post(at_inbound))
        .route("/callbacks/twilio/{sender}/status", post(twilio_status))
        .route("/callbacks/twilio/{sender}/inbound", post(twilio_inbound))
        .route("/unsubscribe/{token}", get(unsubscribe_page).post(unsubscribe))
}

fn check_path(state: &AppState, secret: &str) -> Answer<()> {
    if state.keys.is_callback_path(secret) {
        Ok(())
    } else {
        // The same answer as a path that does not exist.
        Err(Problem::not_found("no such resource (see /openapi.json)"))
    }
}

/// A sender of the given kind by name.
fn sender_named<'a, T>(
    state: &'a AppState,
    name: &str,
    pick: impl Fn(&'a BackendConfig) -> Option<&'a T>,
) -> Answer<&'a T> {
    state
        .config
        .senders
        .get(name)
        .and_then(|s| pick(&s.backend))
        .ok_or_else(|| Problem::not_found("no such resource (see /openapi.json)"))
}

/// An Africa's Talking callback's form, once its path secret and sender are checked.
fn africas_talking<T>(
    state: &AppState,
    secret: &str,
    sender: &str,
    form: Result<Form<T>, axum::extract::rejection::FormRejection>,
) -> Answer<Form<T>> {
    check_path(state, secret)?;
    sender_named(state, sender, |b| match b {
        BackendConfig::AfricasTalking(c) => Some(c),
        _ => None,
    })?;
    form.map_err(|e| Problem::bad_request(e.body_text()))
}

/// Africa's Talking delivery report (form fields as its documentation lists them).
#[derive(Debug, Deserialize)]
pub struct AtDelivery {
    id: String,
    status: String,
    #[serde(rename = "failureReason")]
    failure_reason: Option<String>,
}

/// `Success` is a handset receipt; `Failed` and `Rejected` are final refusals; the rest
/// (`Sent`, `Submitted`, `Buffered`) are on the way and change nothing.
fn at_handset(status: &str) -> Option<&'static str> {
    match status {
        "Success" => Some("delivered"),
        "Failed" | "Rejected" => Some("undelivered"),
        _ => None,
    }
}

async fn at_delivery(
    State(state): State<AppState>,
    Path((secret, sender)): Path<(String, String)>,
    form: Result<Form<AtDelivery>, axum::extract::rejection::FormRejection>,
) -> Answer<Response> {
    let Form(report) = africas_talking(&state, &secret, &sender, form)?;
    handset(
        &state,
        &sender,
        &report.id,
        at_handset(&report.status),
        report.failure_reason.as_deref(),
    )
    .await?;
    Ok(StatusCode::OK.into_response())
}

async fn handset(
    state: &AppState,
    sender: &str,
    provider_id: &str,
    handset: Option<&str>,
    reason: Option<&str>,
) -> Answer<()> {
    let Some(handset) = handset else {
        return Ok(());
    };
    let now = state.clock.now();
    match state.store.record_handset(sender, provider_id, handset, now).await? {
        Some(r) => tracing::info!(delivery = r.delivery, sender, handset, reason, "handset receipt"),
        // An id this deployment never sent (or whose attempts were pruned): nothing to record,
        // and nothing the provider should retry.
        None => tracing::info!(sender, handset, "handset receipt for an unknown message"),
    }
    Ok(())
}

/// Africa's Talking incoming message.
#[derive(Debug, Deserialize)]
pub struct AtInbound {
    from: String,
    text: String,
}

async fn at_inbound(
    State(state): State<AppState>,
    Path((secret, sender)): Path<(String, String)>,
    form: Result<Form<AtInbound>, axum::extract::rejection::FormRejection>,
) -> Answer<Response> {
    let Form(message) = africas_talking(&state, &secret, &sender, form)?;
    reply(&state, &format!("sms:{sender}"), &message.from, &message.text).await?;
    Ok(StatusCode::OK.into_response())
}

/// Whether an SMS reply asks to stop: its first word, in any case, without punctuation.
pub fn is_stop(text: &str) -> bool {
    let first: String = text
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .chars()
        .filter(|c| c.is_alphanumeric())
        .collect::<String>()
        .to_uppercase();
    STOP_WORDS.contains(&first.as_str())
}

/// Acts on an SMS reply: a stop word opts the number out.
async fn reply(state: &AppState, source: &str, from: &str, text: &str) -> Answer<()> {
    if !is_stop(text) {
        tracing::info!(source, "SMS reply without a stop word; nothing to do");
        return Ok(());
    }
    let Ok(number) = PhoneNumber::parse(from) else {
        tracing::info!(source, "stop reply from a number that cannot be read");
        return Ok(());
    };
    let word = text.split_whitespace().next().unwrap_or_default().to_uppercase();
    let done = state
        .store
        .opt_out(
            OptOutBy::Key(number.as_str()),
            source,
            &json!({ "word": word }),
            state.clock.now(),
        )
        .await?;
    match done {
        Some(o) => tracing::info!(
            recipient = o.recipient.0,
            withdrawn = o.withdrawn,
            source,
            "opted out by SMS reply"
        ),
        None => tracing::info!(source, number = %number.masked(), "stop reply from a number that is not a recipient"),
    }
    Ok(())
}

/// Twilio's signature: base64 HMAC-SHA1 over the URL followed by each form field's name and
/// value, sorted by name.
pub fn twilio_signature(auth_token: &str, url: &str, fields: &[(String, String)]) -> String {
    let mut sorted: Vec<&(String, String)> = fields.iter().collect();
    sorted.sort();
    let mut data = url.to_owned();
    for (k, v) in sorted {
        data.push_str(k);
        data.push_str(v);
    }
    let mut mac =
        <Hmac<sha1::Sha1> as KeyInit>::new_from_slice(auth_token.as_bytes()).expect("HMAC takes keys of any length");
    mac.update(data.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// Checks a Twilio callback and returns its fields.
fn twilio_fields(
    state: &AppState,
    sender: &str,
    path: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Answer<Vec<(String, String)>> {
    let config = sender_named(state, sender, |b| match b {
        BackendConfig::Twilio(c) => Some(c),
        _ => None,
    })?;
    let fields: Vec<(String, String)> = url::form_urlencoded::parse(body).into_owned().collect();
    let given = headers
        .get("x-twilio-signature")
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| Problem::forbidden("the X-Twilio-Signature header is missing"))?;
    let url = format!("{}{path}", state.public_base());
    let expected = twilio_signature(config.auth_token.expose(), &url, &fields);
    if !bool::from(expected.as_bytes().ct_eq(given.as_bytes())) {
        return Err(Problem::forbidden("the X-Twilio-Signature does not match this request"));
    }
    Ok(fields)
}

fn field<'a>(fields: &'a [(String, String)], name: &str) -> Answer<&'a str> {
    fields
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
        .ok_or_else(|| Problem::invalid(format!("/{name}"), "missing"))
}

async fn twilio_status(
    State(state): State<AppState>,
    Path(sender): Path<String>,
    uri: axum::extract::OriginalUri,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Answer<Response> {
    let fields = twilio_fields(&state, &sender, &uri.0.to_string(), &headers, &body)?;
    let sid = field(&fields, "MessageSid")?;
    let status = field(&fields, "MessageStatus")?;
    let handset_state = match status {
        "delivered" | "read" => Some("delivered"),
        "undelivered" | "failed" => Some("undelivered"),
        _ => None,
    };
    let reason = fields.iter().find(|(k, _)| k == "ErrorCode").map(|(_, v)| v.as_str());
    handset(&state, &sender, sid, handset_state, reason).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn twilio_inbound(
    State(state): State<AppState>,
    Path(sender): Path<String>,
    uri: axum::extract::OriginalUri,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Answer<Response> {
    let fields = twilio_fields(&state, &sender, &uri.0.to_string(), &headers, &body)?;
    reply(
        &state,
        &format!("sms:{sender}"),
        field(&fields, "From")?,
        field(&fields, "Body")?,
    )
    .await?;
    // An empty TwiML answer: no automatic reply.
    Ok((
        [(header::CONTENT_TYPE, "text/xml")],
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response></Response>",
    )
        .into_response())
}

fn page(locale: Locale, title: &str, body: &str) -> Html<String> {
    Html(format!(
        "<!doctype html><html lang=\"{}\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>{t}</title><style>body{{font-family:system-ui,sans-serif;max-width:32rem;margin:2rem auto;padding:0 1rem}}button{{font-size:1rem;padding:.5rem 1rem}}</style></head><body><h1>{t}</h1>{body}</body></html>",
        locale.as_str(),
        t = esc(title),
    ))
}

async fn recipient_locale(state: &AppState, id: RecipientId) -> Locale {
    match state.store.recipient(id).await {
        Ok(Some(r)) => r.profile.locale,
        _ => Locale::En,
    }
}

/// `GET /unsubscribe/{token}`: a page with the button that opts out (nothing changes yet).
async fn unsubscribe_page(State(state): State<AppState>, Path(token): Path<String>) -> Answer<Response> {
    let id = state
        .keys
        .check_unsubscribe(&token)
        .ok_or_else(|| Problem::not_found("this unsubscribe link is not valid"))?;
    let locale = recipient_locale(&state, id).await;
    let (title, text, button) = match locale {
        Locale::Sw => (
            "Jiondoe",
            "Hutapokea tena arifa za matengenezo kutoka kwetu.",
            "Jiondoe",
        ),
        Locale::En => (
            "Unsubscribe",
            "You will receive no further maintenance notices from us.",
            "Unsubscribe",
        ),
    };
    Ok(page(
        locale,
        title,
        &format!(
            "<p>{}</p><form method=\"post\"><input type=\"hidden\" name=\"List-Unsubscribe\" value=\"One-Click\"><button type=\"submit\">{}</button></form>",
            esc(text),
            esc(button)
        ),
    )
    .into_response())
}

/// `POST /unsubscribe/{token}`: RFC 8058 one-click (`List-Unsubscribe=One-Click`) or the
/// page's button. Opting out twice is fine.
async fn unsubscribe(State(state): State<AppState>, Path(token): Path<String>) -> Answer<Response> {
    let id = state
        .keys
        .check_unsubscribe(&token)
        .ok_or_else(|| Problem::not_found("this unsubscribe link is not valid"))?;
    let done = state
        .store
        .opt_out(
            OptOutBy::Id(id),
            "email",
            &json!({ "via": "list-unsubscribe" }),
            state.clock.now(),
        )
        .await?
        .ok_or_else(|| Problem::not_found("this unsubscribe link is not valid"))?;
    tracing::info!(
        recipient = done.recipient.0,
        withdrawn = done.withdrawn,
        "opted out by unsubscribe link"
    );
    let locale = recipient_locale(&state, id).await;
    let (title, text) = match locale {
        Locale::Sw => ("Umejiondoa", "Hutapokea tena arifa za matengenezo."),
        Locale::En => ("Unsubscribed", "You will receive no further maintenance notices."),
    };
    Ok(page(locale, title, &format!("<p>{}</p>", esc(text))).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_words_in_any_case_with_punctuation() {
        for yes in ["STOP", "stop", " Stop.", "ACHA tafadhali", "sitaki!", "UNSUBSCRIBE"] {
            assert!(is_stop(yes), "{yes}");
        }
        for no in ["", "stopped", "please stop", "ACHANA", "hello"] {
            assert!(!is_stop(no), "{no}");
        }
    }

    /// The example of Twilio's security documentation.
    #[test]
    fn twilio_signature_matches_the_documented_example() {
        let fields: Vec<(String, String)> = [
            ("CallSid", "CA1234567890ABCDE"),
            ("Caller", "+12349013030"),
            ("Digits", "1234"),
            ("From", "+12349013030"),
            ("To", "+18005551212"),
        ]
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
        assert_eq!(
            twilio_signature("12345", "https://mycompany.com/myapp.php?foo=1&bar=2", &fields),
            "0/KCTR6DLpKmkAf8muzZqo1nDgQ="
        );
    }
}
