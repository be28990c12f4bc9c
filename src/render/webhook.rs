//! The webhook payloads, as versioned structs: a window notice ([`WebhookEventV1`]) and a
//! free-text broadcast ([`BroadcastMessageV1`]). Changing what billers receive means a new
//! version here, never an edit of a `json!` literal.

use serde::Serialize;
use serde_json::Value;

use crate::domain::{Locale, NoticeKind};

use super::view::NoticeFacts;

/// A window notice, as POSTed to a biller.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WebhookEventV1 {
    /// `maintenance.announced`, `maintenance.reminder`, …
    #[serde(rename = "type")]
    pub kind: String,
    /// Always `v1`.
    pub version: &'static str,
    /// The full notice: `reminder:24h`.
    pub notice: String,
    pub window: WindowV1,
    /// The schedule before the change, for a notice about a change (rescheduled, cancelled);
    /// absent otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous: Option<ScheduleV1>,
    /// The operator's reason, for a cancellation.
    pub reason: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WindowV1 {
    pub id: i64,
    pub revision: u32,
    pub status: &'static str,
    pub title: String,
    pub description: String,
    /// RFC 3339 instants in UTC.
    pub starts_at: String,
    pub ends_at: String,
    /// The IANA zone the window was announced in.
    pub zone: &'static str,
    pub components: Vec<ComponentV1>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ComponentV1 {
    pub id: String,
    /// The display name in the recipient's language.
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ScheduleV1 {
    pub starts_at: String,
    pub ends_at: String,
}

/// A free-text broadcast, as POSTed to a biller.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BroadcastMessageV1 {
    /// Always `broadcast.message`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// Always `v1`.
    pub version: &'static str,
    /// The broadcast's name.
    pub name: String,
    pub locale: &'static str,
    pub subject: String,
    pub text: String,
}

impl WebhookEventV1 {
    pub fn new(f: &NoticeFacts, locale: Locale) -> WebhookEventV1 {
        WebhookEventV1 {
            kind: format!("maintenance.{}", f.notice.kind()),
            version: "v1",
            notice: f.notice.to_string(),
            window: WindowV1 {
                id: f.window_id.0,
                revision: f.revision,
                status: f.status.as_str(),
                title: f.title.get(locale).to_owned(),
                description: f.description.get(locale).to_owned(),
                starts_at: f.schedule.starts_at().to_rfc3339(),
                ends_at: f.schedule.ends_at().to_rfc3339(),
                zone: f.zone.name(),
                components: f
                    .components
                    .iter()
                    .map(|c| ComponentV1 {
                        id: c.as_str().to_owned(),
                        name: f
                            .component_names
                            .get(c)
                            .map(|n| n.get(locale))
                            .unwrap_or(c.as_str())
                            .to_owned(),
                    })
                    .collect(),
            },
            previous: matches!(f.notice.kind(), NoticeKind::Rescheduled | NoticeKind::Cancelled).then(|| ScheduleV1 {
                starts_at: f.previous.starts_at().to_rfc3339(),
                ends_at: f.previous.ends_at().to_rfc3339(),
            }),
            reason: f.reason.as_ref().map(|r| r.get(locale).to_owned()),
        }
    }
}

/// The payload a window notice's webhook carries, as JSON.
pub fn webhook_payload(f: &NoticeFacts, locale: Locale) -> Result<Value, serde_json::Error> {
    serde_json::to_value(WebhookEventV1::new(f, locale))
}
