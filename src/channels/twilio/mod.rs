//! The `twilio` backend: the Twilio Messages API, one SMS per request.
//!
//! `POST {base_url}/2010-04-01/Accounts/{account_sid}/Messages.json`, form-encoded, basic auth
//! with the account SID and auth token: `To`, `From` or `MessagingServiceSid`, `Body`, and a
//! `ValidityPeriod` that ends at the notice's deadline, so Twilio drops a message it could only
//! deliver late. A 201 answer carries the message `sid`. A 429 was not processed and is retried;
//! a 5xx, or no answer once the request was sent, may have been accepted: its retry is flagged
//! possibly duplicate.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::registry::{Backend, BuildContext};
use super::web::{self, quote};
use super::{Address, BoxFuture, Limits, Message, Receipt, SendError, Sender};
use crate::domain::{Rendered, Secret};

/// `type = "twilio"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TwilioConfig {
    /// [default: https://api.twilio.com]
    #[serde(default = "default_base_url")]
    pub base_url: String,
    pub account_sid: String,
    pub auth_token: Secret,
    /// The sending number or alphanumeric sender id; or else `messaging_service_sid`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub messaging_service_sid: Option<String>,
    /// Requests in flight at once, each over a connection kept alive [default: 64].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connections: Option<usize>,
}

fn default_base_url() -> String {
    "https://api.twilio.com".to_owned()
}

/// Twilio's longest validity period.
const MAX_VALIDITY: Duration = Duration::from_secs(36_000);

impl Backend for TwilioConfig {
    fn default_limits(&self) -> Limits {
        web::sms_limits(8)
    }

    fn validate(&self) -> Result<(), String> {
        web::http_url("base_url", &self.base_url)?;
        if self.account_sid.trim().is_empty() || self.auth_token.expose().is_empty() {
            return Err("account_sid and auth_token are required".into());
        }
        web::connections(self.connections)?;
        match (&self.from, &self.messaging_service_sid) {
            (Some(_), None) | (None, Some(_)) => Ok(()),
            _ => Err("give exactly one of from and messaging_service_sid".into()),
        }
    }

    fn build(&self, name: &str, _: &BuildContext) -> Result<Arc<dyn Sender>, String> {
        self.validate()?;
        let connections = web::connections(self.connections)?;
        Ok(Arc::new(TwilioSender {
            name: name.to_owned(),
            url: format!(
                "{}/2010-04-01/Accounts/{}/Messages.json",
                self.base_url.trim_end_matches('/'),
                self.account_sid
            ),
            config: self.clone(),
            client: web::client(Duration::from_secs(30), connections)?,
            requests: web::Requests::new(connections),
        }))
    }
}

pub struct TwilioSender {
    name: String,
    url: String,
    config: TwilioConfig,
    client: reqwest::Client,
    requests: web::Requests,
}

#[derive(Deserialize)]
struct Created {
    sid: String,
}

impl TwilioSender {
    async fn send_one(&self, m: &Message) -> Result<Receipt, SendError> {
        let permanent = |message: String| SendError::Permanent { message };
        let (Address::Phone(to), Rendered::Sms { body, .. }) = (&m.to, &*m.content) else {
            return Err(permanent(format!("{} sends SMS to phone numbers only", self.name)));
        };
        let mut form = vec![("To", to.as_str().to_owned()), ("Body", body.clone())];
        match (&self.config.from, &self.config.messaging_service_sid) {
            (Some(from), _) => form.push(("From", from.clone())),
            (None, Some(sid)) => form.push(("MessagingServiceSid", sid.clone())),
            (None, None) => {}
        }
        if let Some(not_after) = m.not_after {
            let left = not_after.saturating_duration_since(tokio::time::Instant::now());
            let secs = left.min(MAX_VALIDITY).as_secs().max(1);
            form.push(("ValidityPeriod", secs.to_string()));
        }
        let response = self
            .client
            .post(&self.url)
            .basic_auth(&self.config.account_sid, Some(self.config.auth_token.expose()))
            .form(&form)
            .send()
            .await
            .map_err(|e| web::unanswered(&self.name, &e))?;
        let (status, retry_after, bytes) = web::read(response).await.map_err(|e| web::unanswered(&self.name, &e))?;
        if !status.is_success() {
            return Err(web::refused(status, retry_after, &bytes));
        }
        // Accepted: an answer that does not parse still means it was taken.
        match serde_json::from_slice::<Created>(&bytes) {
            Ok(created) => Ok(Receipt {
                provider_id: Some(created.sid),
                ..Receipt::default()
            }),
            Err(_) => {
                tracing::warn!(backend = %self.name, body = %quote(&bytes), "accepted with an answer that has no sid");
                Ok(Receipt::default())
            }
        }
    }
}

impl Sender for TwilioSender {
    fn name(&self) -> &str {
        &self.name
    }

    fn send<'a>(&'a self, batch: &'a [Message]) -> BoxFuture<'a, Vec<Result<Receipt, SendError>>> {
        self.requests.each(batch, |m| self.send_one(m))
    }

    /// Reads the account (`GET …/Accounts/{sid}.json`): the credentials work and it is active.
    fn check(&self) -> BoxFuture<'_, Result<String, String>> {
        Box::pin(async move {
            let url = self.url.trim_end_matches("/Messages.json").to_owned() + ".json";
            let response = self
                .client
                .get(&url)
                .basic_auth(&self.config.account_sid, Some(self.config.auth_token.expose()))
                .send()
                .await
                .map_err(|e| format!("no answer: {}", super::error_chain(&e)))?;
            let (status, _, body) = web::read(response).await.map_err(|e| e.to_string())?;
            if !status.is_success() {
                return Err(format!("HTTP {}: {}", status.as_u16(), quote(&body)));
            }
            let account: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            Ok(format!(
                "account {} is {}",
                self.config.account_sid,
                account["status"].as_str().unwrap_or("reachable")
            ))
        })
    }
}
