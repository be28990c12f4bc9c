//! The webhook payloads, as versioned structs, in the Standard Webhooks envelope
//! `{"type", "timestamp", "data"}`: a window notice (`window.announced`, `window.reminder`, …,
//! data [`WindowEventV1`]) and a free-text broadcast (`broadcast.message`, data
//! [`BroadcastMessageV1`]). The `timestamp` is set by the sender when the request goes out.
//! Changing what billers receive means a new version here (and in
//! `templates/webhook-event-v1.schema.json`), never an edit of a `json!` literal.

use serde::Serialize;
use serde_json::Value;

use crate::domain::{EventType, Locale, NoticeKind};

use super::view::NoticeFacts;

/// The envelope without its timestamp.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Envelope<T> {
    #[serde(rename = "type")]
    pub kind: String,
    pub data: T,
}

/// A window notice, as POSTed to a biller.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WindowEventV1 {
    pub window_id: i64,
    pub revision: u32,
    pub status: &'static str,
    /// The full notice: `reminder:24h`.
    pub notice: String,
    pub title: String,
    pub description: String,
    pub components: Vec<ComponentV1>,
    /// RFC 3339 instants in UTC.
    pub starts_at: String,
    pub ends_at: String,
    /// The same instants in the window's zone, with their offset.
    pub starts_at_local: String,
    pub ends_at_local: String,
    /// The IANA zone the window was announced in.
    pub zone: &'static str,
    /// The schedule before the change, for a notice about a change (rescheduled, cancelled);
    /// absent otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous: Option<ScheduleV1>,
    /// The operator's reason, for a cancellation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
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
    /// The broadcast's name.
    pub name: String,
    pub locale: &'static str,
    pub subject: String,
    pub text: String,
}

fn utc(t: chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

impl WindowEventV1 {
    pub fn new(f: &NoticeFacts, locale: Locale) -> WindowEventV1 {
        let local = |t: chrono::DateTime<chrono::Utc>| {
            t.with_timezone(&f.zone.tz())
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        };
        WindowEventV1 {
            window_id: f.window_id.0,
            revision: f.revision,
            status: f.status.as_str(),
            notice: f.notice.to_string(),
            title: f.title.get(locale).to_owned(),
            description: f.description.get(locale).to_owned(),
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
            starts_at: utc(f.schedule.starts_at()),
            ends_at: utc(f.schedule.ends_at()),
            starts_at_local: local(f.schedule.starts_at()),
            ends_at_local: local(f.schedule.ends_at()),
            zone: f.zone.name(),
            previous: matches!(f.notice.kind(), NoticeKind::Rescheduled | NoticeKind::Cancelled).then(|| ScheduleV1 {
                starts_at: utc(f.previous.starts_at()),
                ends_at: utc(f.previous.ends_at()),
            }),
            reason: f.reason.as_ref().map(|r| r.get(locale).to_owned()),
        }
    }
}

/// The payload a window notice's webhook carries, as JSON: `{"type": "window.reminder", "data"}`.
pub fn webhook_payload(f: &NoticeFacts, locale: Locale) -> Result<Value, serde_json::Error> {
    serde_json::to_value(Envelope {
        kind: EventType(f.notice.kind()).to_string(),
        data: WindowEventV1::new(f, locale),
    })
}
