//! Notice kinds and delivery states.
//!
//! Pure. A notice is a kind plus, for reminders, the lead time: `reminder:24h`. Its text form is
//! part of every delivery's idempotency key, so it is canonical.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};

use super::{Channel, RecipientId, Span, WindowId};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum NoticeKind {
    Announced,
    Reminder,
    Started,
    Rescheduled,
    Cancelled,
    Completed,
}

impl NoticeKind {
    pub const ALL: [NoticeKind; 6] = [
        NoticeKind::Announced,
        NoticeKind::Reminder,
        NoticeKind::Started,
        NoticeKind::Rescheduled,
        NoticeKind::Cancelled,
        NoticeKind::Completed,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            NoticeKind::Announced => "announced",
            NoticeKind::Reminder => "reminder",
            NoticeKind::Started => "started",
            NoticeKind::Rescheduled => "rescheduled",
            NoticeKind::Cancelled => "cancelled",
            NoticeKind::Completed => "completed",
        }
    }
}

impl fmt::Display for NoticeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A notice: its kind, and for a reminder its lead time. A reminder without an offset, or
/// any other kind with one, cannot be built. Ordered by kind, then offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Notice {
    Announced,
    Reminder(Span),
    Started,
    Rescheduled,
    Cancelled,
    Completed,
}

impl Notice {
    pub fn reminder(offset: Span) -> Notice {
        Notice::Reminder(offset)
    }
    pub fn kind(self) -> NoticeKind {
        match self {
            Notice::Announced => NoticeKind::Announced,
            Notice::Reminder(_) => NoticeKind::Reminder,
            Notice::Started => NoticeKind::Started,
            Notice::Rescheduled => NoticeKind::Rescheduled,
            Notice::Cancelled => NoticeKind::Cancelled,
            Notice::Completed => NoticeKind::Completed,
        }
    }
    pub fn offset(self) -> Option<Span> {
        match self {
            Notice::Reminder(o) => Some(o),
            _ => None,
        }
    }
    /// The notice of `kind` with `offset`: exactly reminders carry one.
    pub fn of(kind: NoticeKind, offset: Option<Span>) -> Option<Notice> {
        Some(match (kind, offset) {
            (NoticeKind::Reminder, Some(o)) => Notice::Reminder(o),
            (NoticeKind::Reminder, None) | (_, Some(_)) => return None,
            (NoticeKind::Announced, None) => Notice::Announced,
            (NoticeKind::Started, None) => Notice::Started,
            (NoticeKind::Rescheduled, None) => Notice::Rescheduled,
            (NoticeKind::Cancelled, None) => Notice::Cancelled,
            (NoticeKind::Completed, None) => Notice::Completed,
        })
    }
}

impl fmt::Display for Notice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.kind().as_str())?;
        match self.offset() {
            Some(o) => write!(f, ":{o}"),
            None => Ok(()),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "notice '{0}' is not one of announced, reminder:OFFSET (e.g. reminder:24h), started, rescheduled, cancelled, completed"
)]
pub struct NoticeError(pub String);

impl FromStr for Notice {
    type Err = NoticeError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || NoticeError(s.to_owned());
        let (kind, offset) = match s.trim().split_once(':') {
            Some((k, o)) => (k, Some(o.parse::<Span>().map_err(|_| bad())?)),
            None => (s.trim(), None),
        };
        let kind = NoticeKind::ALL
            .into_iter()
            .find(|k| k.as_str() == kind)
            .ok_or_else(bad)?;
        Notice::of(kind, offset).ok_or_else(bad)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DeliveryState {
    Pending,
    Claimed,
    Sent,
    Failed,
    Expired,
    Superseded,
}

impl DeliveryState {
    pub const ALL: [DeliveryState; 6] = [
        DeliveryState::Pending,
        DeliveryState::Claimed,
        DeliveryState::Sent,
        DeliveryState::Failed,
        DeliveryState::Expired,
        DeliveryState::Superseded,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryState::Pending => "pending",
            DeliveryState::Claimed => "claimed",
            DeliveryState::Sent => "sent",
            DeliveryState::Failed => "failed",
            DeliveryState::Expired => "expired",
            DeliveryState::Superseded => "superseded",
        }
    }
}

impl fmt::Display for DeliveryState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for DeliveryState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        DeliveryState::ALL
            .into_iter()
            .find(|d| d.as_str() == s)
            .ok_or_else(|| format!("unknown delivery state '{s}'"))
    }
}

impl serde::Serialize for DeliveryState {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// One row the planner wants in the queue. Its key is `(window, revision, notice, recipient,
/// channel)`; planning the same thing twice yields the same key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedDelivery {
    pub window: WindowId,
    pub revision: u32,
    pub notice: Notice,
    pub recipient: RecipientId,
    pub channel: Channel,
    /// The biller's webhook endpoint a webhook row goes to (none for other channels, and for
    /// a biller without endpoints).
    pub endpoint: Option<i64>,
    pub due_at: DateTime<Utc>,
    pub deadline: DateTime<Utc>,
}

impl PlannedDelivery {
    pub fn idempotency_key(&self) -> String {
        idempotency_key(
            self.window,
            self.revision,
            self.notice,
            self.recipient,
            self.channel,
            self.endpoint,
        )
    }
}

/// The text form of a delivery's identity, handed to senders so a provider can drop duplicates:
/// `w{window}.r{revision}.{notice}.{recipient}.{channel}`, then `.e{endpoint}` for a webhook
/// endpoint's. Written piece by piece, without the formatting machinery: it is made for every
/// message sent.
pub fn idempotency_key(
    window: WindowId,
    revision: u32,
    notice: Notice,
    recipient: RecipientId,
    channel: Channel,
    endpoint: Option<i64>,
) -> String {
    let mut numbers = itoa::Buffer::new();
    let mut key = String::with_capacity(KEY_CAPACITY);
    key.push('w');
    key.push_str(numbers.format(window.0));
    key.push_str(".r");
    key.push_str(numbers.format(revision));
    key.push('.');
    key.push_str(notice.kind().as_str());
    if let Some(offset) = notice.offset() {
        use fmt::Write as _;
        // Writing to a `String` cannot fail.
        let _ = write!(key, ":{offset}");
    }
    push_key_tail(&mut key, recipient, channel, endpoint);
    key
}

/// The text form of a broadcast's delivery's identity: `b{broadcast}.{recipient}.{channel}`,
/// then `.e{endpoint}` for a webhook endpoint's.
pub fn broadcast_key(broadcast: i64, recipient: RecipientId, channel: Channel, endpoint: Option<i64>) -> String {
    let mut key = String::with_capacity(KEY_CAPACITY);
    key.push('b');
    key.push_str(itoa::Buffer::new().format(broadcast));
    push_key_tail(&mut key, recipient, channel, endpoint);
    key
}

/// Room for a key without growing: its longest parts are three ids and a reminder's offset.
const KEY_CAPACITY: usize = 64;

/// `.{recipient}.{channel}`, then `.e{endpoint}` if any: how both keys end.
fn push_key_tail(key: &mut String, recipient: RecipientId, channel: Channel, endpoint: Option<i64>) {
    let mut numbers = itoa::Buffer::new();
    key.push('.');
    key.push_str(numbers.format(recipient.0));
    key.push('.');
    key.push_str(channel.as_str());
    if let Some(e) = endpoint {
        key.push_str(".e");
        key.push_str(numbers.format(e));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_read_as_their_parts() {
        let (w, r) = (WindowId(12), RecipientId(9_000_001));
        let reminder = Notice::reminder("1h30m".parse().unwrap());
        for (notice, channel, endpoint) in [
            (Notice::Announced, Channel::Sms, None),
            (reminder, Channel::Email, None),
            (Notice::Completed, Channel::Webhook, Some(-3)),
        ] {
            let tail = endpoint.map(|e| format!(".e{e}")).unwrap_or_default();
            assert_eq!(
                idempotency_key(w, 4_000_000_000, notice, r, channel, endpoint),
                format!("w12.r4000000000.{notice}.9000001.{channel}{tail}")
            );
            assert_eq!(
                broadcast_key(i64::MAX, r, channel, endpoint),
                format!("b{}.9000001.{channel}{tail}", i64::MAX)
            );
        }
        assert_eq!(
            idempotency_key(w, 1, reminder, r, Channel::Sms, None),
            "w12.r1.reminder:1h30m.9000001.sms"
        );
    }

    #[test]
    fn notices_round_trip() {
        for text in ["announced", "reminder:24h", "reminder:1h30m", "completed"] {
            assert_eq!(text.parse::<Notice>().unwrap().to_string(), text);
        }
        assert_eq!("reminder:1d".parse::<Notice>().unwrap().to_string(), "reminder:24h");
        for bad in ["reminder", "started:1h", "nope", "reminder:x"] {
            assert!(bad.parse::<Notice>().is_err(), "{bad}");
        }
    }
}
