//! The `http` backend: a generic JSON SMS gateway, one message per request.
//!
//! The body is a small JSON template: in every string value `{to}` becomes the E.164 number,
//! `{body}` the text and `{key}` the delivery's idempotency key (so the values are escaped as
//! JSON, whatever the text holds). A 2xx answer is success, and `id_pointer` (a JSON pointer
//! such as `/data/id`) picks the gateway's message id out of it; 408, 429, 401 and 403 are
//! retried; a 5xx or no answer may have been accepted (retried, flagged possibly duplicate);
//! any other 4xx is final.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::registry::{Backend, BuildContext};
use super::web;
use super::{Address, BoxFuture, Limits, Message, Receipt, SendError, Sender};
use crate::domain::{Rendered, Secret};

/// `type = "http"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    pub url: String,
    /// Request headers; their values are secrets (an API key, a bearer token).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, Secret>,
    /// The JSON body, with `{to}`, `{body}` and `{key}` in string values.
    pub body: String,
    /// Where the message id is in a successful answer (a JSON pointer, e.g. `/id`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id_pointer: Option<String>,
    /// Requests in flight at once, each over a connection kept alive [default: 64].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connections: Option<usize>,
}

impl GatewayConfig {
    fn template(&self) -> Result<Value, String> {
        let template: Value = serde_json::from_str(&self.body).map_err(|e| format!("body: not JSON: {e}"))?;
        let text = template.to_string();
        if !text.contains("{to}") || !text.contains("{body}") {
            return Err("body: must place {to} and {body}".into());
        }
        Ok(template)
    }
}

impl Backend for GatewayConfig {
    fn default_limits(&self) -> Limits {
        web::sms_limits(8)
    }

    fn validate(&self) -> Result<(), String> {
        web::http_url("url", &self.url)?;
        for name in self.headers.keys() {
            reqwest::header::HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| format!("headers: '{name}' is not a header name"))?;
        }
        if let Some(p) = &self.id_pointer
            && !p.starts_with('/')
        {
            return Err("id_pointer must be a JSON pointer starting with /".into());
        }
        web::connections(self.connections)?;
        self.template().map(|_| ())
    }

    fn build(&self, name: &str, _: &BuildContext) -> Result<Arc<dyn Sender>, String> {
        self.validate()?;
        let connections = web::connections(self.connections)?;
        Ok(Arc::new(GatewaySender {
            name: name.to_owned(),
            template: self.template()?,
            config: self.clone(),
            client: web::client(Duration::from_secs(30), connections)?,
            requests: web::Requests::new(connections),
        }))
    }
}

pub struct GatewaySender {
    name: String,
    template: Value,
    config: GatewayConfig,
    client: reqwest::Client,
    requests: web::Requests,
}

/// `template` with the placeholders of every string value filled in.
fn fill(template: &Value, to: &str, body: &str, key: &str) -> Value {
    match template {
        Value::String(s) => Value::String(s.replace("{to}", to).replace("{key}", key).replace("{body}", body)),
        Value::Array(a) => Value::Array(a.iter().map(|v| fill(v, to, body, key)).collect()),
        Value::Object(o) => Value::Object(o.iter().map(|(k, v)| (k.clone(), fill(v, to, body, key))).collect()),
        other => other.clone(),
    }
}

impl GatewaySender {
    async fn send_one(&self, m: &Message) -> Result<Receipt, SendError> {
        let (Address::Phone(to), Rendered::Sms { body, .. }) = (&m.to, &*m.content) else {
            return Err(SendError::Permanent {
                message: format!("{} sends SMS to phone numbers only", self.name),
            });
        };
        let mut request =
            self.client
                .post(&self.config.url)
                .json(&fill(&self.template, to.as_str(), body, &m.idempotency_key));
        for (name, value) in &self.config.headers {
            request = request.header(name.as_str(), value.expose());
        }
        let response = request.send().await.map_err(|e| web::unanswered(&self.name, &e))?;
        let (status, retry_after, bytes) = web::read(response).await.map_err(|e| web::unanswered(&self.name, &e))?;
        if !status.is_success() {
            return Err(web::refused(status, retry_after, &bytes));
        }
        let provider_id = self.config.id_pointer.as_deref().and_then(|pointer| {
            let answer: Value = serde_json::from_slice(&bytes).ok()?;
            match answer.pointer(pointer)? {
                Value::String(s) => Some(s.clone()),
                Value::Number(n) => Some(n.to_string()),
                _ => None,
            }
        });
        Ok(Receipt {
            provider_id,
            ..Receipt::default()
        })
    }
}

impl Sender for GatewaySender {
    fn name(&self) -> &str {
        &self.name
    }

    fn send<'a>(&'a self, batch: &'a [Message]) -> BoxFuture<'a, Vec<Result<Receipt, SendError>>> {
        self.requests.each(batch, |m| self.send_one(m))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_filled_as_json_strings() {
        let t: Value =
            serde_json::from_str(r#"{"msisdn": "{to}", "text": "{body}", "meta": {"ref": "{key}", "n": 1}}"#).unwrap();
        let v = fill(&t, "+254712345678", "Say \"hi\"\n", "k1");
        assert_eq!(
            v,
            serde_json::json!({"msisdn": "+254712345678", "text": "Say \"hi\"\n", "meta": {"ref": "k1", "n": 1}})
        );
        let config = |body: &str| GatewayConfig {
            url: "https://gw.example/send".into(),
            headers: BTreeMap::new(),
            body: body.into(),
            id_pointer: None,
            connections: None,
        };
        assert!(config(r#"{"to": "{to}"}"#).validate().unwrap_err().contains("{body}"));
        assert!(config("not json").validate().unwrap_err().contains("not JSON"));
        assert!(config(r#"{"to": "{to}", "text": "{body}"}"#).validate().is_ok());
        let none = GatewayConfig {
            connections: Some(0),
            ..config(r#"{"to": "{to}", "text": "{body}"}"#)
        };
        assert!(none.validate().unwrap_err().contains("connections"));
    }
}
