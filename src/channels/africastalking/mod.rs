//! The `africastalking` backend: Africa's Talking bulk SMS, many recipients per request.
//!
//! `POST {base_url}/version1/messaging`, form-encoded `username`, comma-separated `to`,
//! `message` and optional `from`, with the `apiKey` header and `Accept: application/json`.
//! Messages of a batch with the same body go out together, `batch` recipients per request. The
//! answer's `SMSMessageData.Recipients[]` gives each number a `statusCode`: 100, 101 and 102
//! are accepted; 403, 404, 406 and 409 are final for that recipient; 401, 407 and 5xx are
//! worth another attempt; 405 (insufficient balance) pauses the whole backend for a while,
//! so the channel fails over to its next backend, and is logged as an alarm.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::registry::{Backend, BuildContext};
use super::web::{self, quote};
use super::{Address, BoxFuture, Limits, Message, Receipt, SendError, Sender};
use crate::domain::{Rendered, Secret, Span};

/// `type = "africastalking"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AfricasTalkingConfig {
    /// [default: https://api.africastalking.com]
    #[serde(default = "default_base_url")]
    pub base_url: String,
    pub username: String,
    pub api_key: Secret,
    /// The sender id or short code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// Recipients per request [default: 100].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<usize>,
    /// How long the backend stays paused after an insufficient-balance answer [default: 10m].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pause: Option<Span>,
}

fn default_base_url() -> String {
    "https://api.africastalking.com".to_owned()
}

const DEFAULT_BATCH: usize = 100;

impl Backend for AfricasTalkingConfig {
    fn default_limits(&self) -> Limits {
        Limits {
            // A request carries up to `batch` recipients: the burst lets one go at once.
            burst: Some(u32::try_from(self.batch.unwrap_or(DEFAULT_BATCH)).unwrap_or(u32::MAX)),
            ..web::sms_limits(4)
        }
    }

    fn validate(&self) -> Result<(), String> {
        web::http_url("base_url", &self.base_url)?;
        if self.username.trim().is_empty() || self.api_key.expose().is_empty() {
            return Err("username and api_key are required".into());
        }
        if self.batch == Some(0) || self.batch.is_some_and(|b| b > 1000) {
            return Err("batch must be between 1 and 1000".into());
        }
        Ok(())
    }

    fn build(&self, name: &str, _: &BuildContext) -> Result<Arc<dyn Sender>, String> {
        self.validate()?;
        Ok(Arc::new(AfricasTalkingSender {
            name: name.to_owned(),
            url: format!("{}/version1/messaging", self.base_url.trim_end_matches('/')),
            batch: self.batch.unwrap_or(DEFAULT_BATCH),
            pause: self.pause.map_or(Duration::from_secs(600), Span::to_std),
            config: self.clone(),
            client: web::client(Duration::from_secs(30), web::DEFAULT_CONNECTIONS)?,
            paused_until: Mutex::new(None),
        }))
    }
}

pub struct AfricasTalkingSender {
    name: String,
    url: String,
    batch: usize,
    pause: Duration,
    config: AfricasTalkingConfig,
    client: reqwest::Client,
    paused_until: Mutex<Option<Instant>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Answer {
    #[serde(rename = "SMSMessageData")]
    data: AnswerData,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct AnswerData {
    #[serde(default)]
    recipients: Vec<RecipientStatus>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RecipientStatus {
    number: String,
    status_code: u16,
    #[serde(default)]
    status: String,
    #[serde(default)]
    message_id: Option<String>,
}

const INSUFFICIENT_BALANCE: u16 = 405;

impl AfricasTalkingSender {
    fn paused(&self) -> Option<Duration> {
        let until = (*self.paused_until.lock().ok()?)?;
        until.checked_duration_since(Instant::now())
    }

    fn pause_for_balance(&self) {
        if let Ok(mut until) = self.paused_until.lock() {
            *until = Some(Instant::now() + self.pause);
        }
        tracing::error!(
            backend = %self.name,
            pause_seconds = self.pause.as_secs(),
            "ALARM: Africa's Talking reports insufficient balance (405): the backend is paused and its traffic fails over"
        );
    }

    /// One request for up to `batch` numbers with the same text; one result per number.
    async fn send_group(&self, body: &str, numbers: &[&str]) -> Vec<Result<Receipt, SendError>> {
        let all = |e: SendError| vec![Err(e); numbers.len()];
        let mut form = vec![
            ("username", self.config.username.clone()),
            ("to", numbers.join(",")),
            ("message", body.to_owned()),
        ];
        if let Some(from) = &self.config.from {
            form.push(("from", from.clone()));
        }
        let response = match self
            .client
            .post(&self.url)
            .header("apiKey", self.config.api_key.expose())
            .header(reqwest::header::ACCEPT, "application/json")
            .form(&form)
            .send()
            .await
        {
            Ok(r) => r,
            Err(e) => return all(web::unanswered(&self.name, &e)),
        };
        let (status, retry_after, bytes) = match web::read(response).await {
            Ok(read) => read,
            Err(e) => return all(web::unanswered(&self.name, &e)),
        };
        if !status.is_success() {
            return all(web::refused(status, retry_after, &bytes));
        }
        let answer: Answer = match serde_json::from_slice(&bytes) {
            Ok(a) => a,
            Err(e) => {
                // Accepted or not cannot be told: retry, and say a duplicate is possible.
                return all(SendError::Uncertain {
                    message: format!(
                        "{}: an answer that is not the expected JSON ({e}): {}",
                        self.name,
                        quote(&bytes)
                    ),
                    retry_after: None,
                });
            }
        };
        let mut by_number: HashMap<&str, &RecipientStatus> = HashMap::new();
        for r in &answer.data.recipients {
            by_number.insert(r.number.as_str(), r);
        }
        if answer
            .data
            .recipients
            .iter()
            .any(|r| r.status_code == INSUFFICIENT_BALANCE)
        {
            self.pause_for_balance();
        }
        numbers
            .iter()
            .map(|n| match by_number.get(n) {
                Some(r) => self.outcome(r),
                None => Err(SendError::Uncertain {
                    message: format!("{}: the answer has no status for this recipient", self.name),
                    retry_after: None,
                }),
            })
            .collect()
    }

    fn outcome(&self, r: &RecipientStatus) -> Result<Receipt, SendError> {
        let message = format!("{}: {} {}", self.name, r.status_code, r.status);
        match r.status_code {
            100..=102 => Ok(Receipt {
                provider_id: r.message_id.clone(),
                ..Receipt::default()
            }),
            // Invalid number, unsupported number type, blacklisted, do-not-disturb.
            403 | 404 | 406 | 409 => Err(SendError::Permanent { message }),
            INSUFFICIENT_BALANCE => Err(SendError::Paused {
                message: format!("{message}: the backend is paused"),
                retry_after: Some(self.pause),
            }),
            // Risk hold, could not route, gateway errors, and anything new.
            _ => Err(SendError::Transient {
                message,
                retry_after: None,
            }),
        }
    }
}

impl Sender for AfricasTalkingSender {
    fn name(&self) -> &str {
        &self.name
    }

    /// Reads the account's balance (`GET {base_url}/version1/user`).
    fn check(&self) -> BoxFuture<'_, Result<String, String>> {
        Box::pin(async move {
            let mut url = reqwest::Url::parse(&(self.url.trim_end_matches("/messaging").to_owned() + "/user"))
                .map_err(|e| format!("base_url: {e}"))?;
            url.query_pairs_mut().append_pair("username", &self.config.username);
            let response = self
                .client
                .get(url)
                .header("apiKey", self.config.api_key.expose())
                .header(reqwest::header::ACCEPT, "application/json")
                .send()
                .await
                .map_err(|e| format!("no answer: {}", super::error_chain(&e)))?;
            let (status, _, body) = web::read(response).await.map_err(|e| e.to_string())?;
            if !status.is_success() {
                return Err(format!("HTTP {}: {}", status.as_u16(), quote(&body)));
            }
            let user: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            Ok(format!(
                "user {}: balance {}",
                self.config.username,
                user["UserData"]["balance"].as_str().unwrap_or("unknown")
            ))
        })
    }

    fn send<'a>(&'a self, batch: &'a [Message]) -> BoxFuture<'a, Vec<Result<Receipt, SendError>>> {
        Box::pin(async move {
            let mut results: Vec<Option<Result<Receipt, SendError>>> = vec![None; batch.len()];
            if let Some(left) = self.paused() {
                let error = SendError::Paused {
                    message: format!(
                        "{} is paused for {} s after an insufficient-balance answer",
                        self.name,
                        left.as_secs()
                    ),
                    retry_after: Some(left),
                };
                return vec![Err(error); batch.len()];
            }
            // Identical texts travel together.
            let mut groups: HashMap<&str, Vec<usize>> = HashMap::new();
            for (i, m) in batch.iter().enumerate() {
                match (&m.to, &*m.content) {
                    (Address::Phone(_), Rendered::Sms { body, .. }) => groups.entry(body.as_str()).or_default().push(i),
                    _ => {
                        results[i] = Some(Err(SendError::Permanent {
                            message: format!("{} sends SMS to phone numbers only", self.name),
                        }));
                    }
                }
            }
            let mut requests = Vec::new();
            for (body, members) in &groups {
                for chunk in members.chunks(self.batch) {
                    let numbers: Vec<&str> = chunk
                        .iter()
                        .map(|&i| match &batch[i].to {
                            Address::Phone(p) => p.as_str(),
                            _ => "",
                        })
                        .collect();
                    requests.push(async move { (chunk, self.send_group(body, &numbers).await) });
                }
            }
            for (chunk, outcomes) in futures_util::future::join_all(requests).await {
                for (&i, outcome) in chunk.iter().zip(outcomes) {
                    results[i] = Some(outcome);
                }
            }
            results
                .into_iter()
                .map(|r| {
                    r.unwrap_or_else(|| {
                        Err(SendError::Transient {
                            message: "no result".into(),
                            retry_after: None,
                        })
                    })
                })
                .collect()
        })
    }
}
