//! Row types as sqlx reads them, and their conversion into domain types.

use std::str::FromStr;

use chrono::{DateTime, Utc};

use crate::domain::{
    Audience, AudienceFilter, Channel, ComponentId, EmailAddress, Locale, Localized, Message, Notice, PhoneNumber,
    Profile, Recipient, RecipientId, Schedule, Secret, Window, WindowId, Zone, from_millis,
};

use super::StoreError;

#[derive(Debug, sqlx::FromRow)]
pub(super) struct WindowRow {
    pub id: i64,
    pub title_en: String,
    pub title_sw: Option<String>,
    pub description_en: String,
    pub description_sw: Option<String>,
    pub components: String,
    pub starts_at: i64,
    pub ends_at: i64,
    pub prev_starts_at: i64,
    pub prev_ends_at: i64,
    pub zone: String,
    pub status: String,
    pub revision: i64,
    pub last_change: String,
    pub auto_complete: bool,
    pub cancel_reason: Option<String>,
    pub cancel_reason_sw: Option<String>,
    pub created_at: i64,
    pub revised_at: i64,
}

pub(super) const WINDOW_COLUMNS: &str = "id, title_en, title_sw, description_en, description_sw, components, \
     starts_at, ends_at, prev_starts_at, prev_ends_at, zone, status, revision, last_change, auto_complete, \
     cancel_reason, cancel_reason_sw, created_at, revised_at";

fn corrupt(what: &str, id: i64, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("{what} {id}: {e}"))
}

/// A stored instant; one out of range is corrupt data, not a made-up time.
pub(super) fn instant(what: &str, id: i64, ms: i64) -> Result<DateTime<Utc>, StoreError> {
    from_millis(ms).map_err(|e| corrupt(what, id, e))
}

fn parse<T: FromStr>(what: &str, id: i64, text: &str) -> Result<T, StoreError>
where
    T::Err: std::fmt::Display,
{
    text.parse().map_err(|e| corrupt(what, id, e))
}

pub(super) fn join_list<T: std::fmt::Display>(items: &[T]) -> String {
    items.iter().map(ToString::to_string).collect::<Vec<_>>().join(",")
}

fn split<T: FromStr>(what: &str, id: i64, text: &str) -> Result<Vec<T>, StoreError>
where
    T::Err: std::fmt::Display,
{
    text.split(',')
        .filter(|s| !s.is_empty())
        .map(|s| parse(what, id, s))
        .collect()
}

impl TryFrom<WindowRow> for Window {
    type Error = StoreError;
    fn try_from(r: WindowRow) -> Result<Window, StoreError> {
        let at = |ms| instant("window", r.id, ms);
        let schedule = Schedule::new(at(r.starts_at)?, at(r.ends_at)?).map_err(|e| corrupt("window", r.id, e))?;
        let previous =
            Schedule::new(at(r.prev_starts_at)?, at(r.prev_ends_at)?).map_err(|e| corrupt("window", r.id, e))?;
        Ok(Window {
            id: WindowId(r.id),
            title: Localized {
                en: r.title_en,
                sw: r.title_sw,
            },
            description: Localized {
                en: r.description_en,
                sw: r.description_sw,
            },
            components: split::<ComponentId>("window", r.id, &r.components)?,
            schedule,
            previous,
            zone: parse::<Zone>("window", r.id, &r.zone)?,
            status: parse("window", r.id, &r.status)?,
            revision: u32::try_from(r.revision).map_err(|e| corrupt("window", r.id, e))?,
            last_change: parse("window", r.id, &r.last_change)?,
            auto_complete: r.auto_complete,
            cancel_reason: r.cancel_reason.map(|en| Localized {
                en,
                sw: r.cancel_reason_sw,
            }),
            created_at: at(r.created_at)?,
            revised_at: at(r.revised_at)?,
        })
    }
}

/// A recipient's columns, in `RECIPIENT_COLUMNS` order: SQLite's pages of recipients give each
/// as a JSON array, read by position.
#[derive(Debug, sqlx::FromRow, serde::Deserialize)]
pub(super) struct RecipientRow {
    pub id: i64,
    pub kind: String,
    pub name: String,
    pub phone: Option<String>,
    pub email: Option<String>,
    pub locale: String,
    pub zone: String,
    pub components: String,
    pub channels: String,
    pub opt_out: bool,
}

pub(super) const RECIPIENT_COLUMNS: &str = "id, kind, name, phone, email, locale, zone, components, channels, opt_out";

impl TryFrom<RecipientRow> for Recipient {
    type Error = StoreError;
    fn try_from(r: RecipientRow) -> Result<Recipient, StoreError> {
        // Stored rows were validated on the way in; only the cheap parts are re-read.
        Ok(Recipient {
            id: RecipientId(r.id),
            profile: Profile {
                kind: parse::<Audience>("recipient", r.id, &r.kind)?,
                name: r.name,
                phone: r.phone.map(PhoneNumber::from_trusted),
                email: r.email.map(EmailAddress::from_trusted),
                locale: parse("recipient", r.id, &r.locale)?,
                zone: parse("recipient", r.id, &r.zone)?,
                components: split::<ComponentId>("recipient", r.id, &r.components)?,
                channels: split::<Channel>("recipient", r.id, &r.channels)?,
                opt_out: r.opt_out,
            },
        })
    }
}

/// A claimed delivery as sqlx reads it (or serde, from SQLite's JSON of the claimed rows).
#[derive(Debug, Clone, sqlx::FromRow, serde::Deserialize)]
pub(super) struct ClaimRow {
    pub id: i64,
    pub window_id: Option<i64>,
    pub broadcast_id: Option<i64>,
    pub revision: i64,
    pub notice: String,
    pub channel: String,
    pub attempts: i64,
    pub due_at: i64,
    pub deadline: i64,
    pub recipient_id: i64,
    pub possibly_duplicate: bool,
    pub audience: String,
    pub phone: Option<String>,
    pub email: Option<String>,
    pub locale: String,
    pub zone: String,
    pub endpoint_id: Option<i64>,
    pub endpoint_url: Option<String>,
    pub endpoint_secret: Option<String>,
    pub endpoint_previous_secret: Option<String>,
    pub endpoint_previous_until: Option<i64>,
    pub endpoint_disabled: Option<String>,
}

/// A claimed delivery with what the dispatcher needs to render and address it, parsed.
#[derive(Debug, Clone)]
pub struct ClaimedDelivery {
    pub id: i64,
    pub window: Option<WindowId>,
    pub broadcast: Option<i64>,
    pub revision: u32,
    /// The window notice; `None` for a free-text broadcast message.
    pub notice: Option<Notice>,
    pub channel: Channel,
    /// Attempts so far, this one included.
    pub attempts: u32,
    pub deadline: DateTime<Utc>,
    pub recipient: RecipientId,
    /// An earlier claim of this row lapsed: it may have gone out already.
    pub possibly_duplicate: bool,
    /// Whom the recipient is: customers and billers are told in different words.
    pub audience: Audience,
    pub phone: Option<PhoneNumber>,
    pub email: Option<EmailAddress>,
    pub locale: Locale,
    pub zone: Zone,
    /// The biller's webhook endpoint a webhook row goes to.
    pub endpoint: Option<Endpoint>,
}

/// A webhook endpoint as a delivery to it needs it: where, and the secrets that sign.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub id: i64,
    pub url: String,
    /// The current secret, then the previous one while a rotation's overlap lasts.
    pub secrets: Vec<Secret>,
    pub disabled: Option<String>,
}

/// A claimed row: parsed, or the reason it could not be (the dispatcher records it failed
/// rather than letting one bad row hold up the queue).
pub type Claimed = Result<ClaimedDelivery, CorruptClaim>;

/// A claimed row whose stored values do not parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorruptClaim {
    pub id: i64,
    pub reason: String,
}

impl ClaimRow {
    pub(super) fn parse(self) -> Claimed {
        let id = self.id;
        let bad = |what: &str| CorruptClaim {
            id,
            reason: format!("stored delivery has an invalid {what}"),
        };
        let notice = match (self.broadcast_id, self.notice.as_str()) {
            (Some(_), "message") => None,
            (_, text) => Some(text.parse::<Notice>().map_err(|_| bad("notice"))?),
        };
        Ok(ClaimedDelivery {
            id,
            window: self.window_id.map(WindowId),
            broadcast: self.broadcast_id,
            revision: u32::try_from(self.revision).map_err(|_| bad("revision"))?,
            notice,
            channel: self.channel.parse().map_err(|_| bad("channel"))?,
            attempts: u32::try_from(self.attempts).map_err(|_| bad("attempt count"))?,
            deadline: from_millis(self.deadline).map_err(|_| bad("deadline"))?,
            recipient: RecipientId(self.recipient_id),
            possibly_duplicate: self.possibly_duplicate,
            audience: self.audience.parse().map_err(|_| bad("recipient kind"))?,
            phone: self.phone.map(PhoneNumber::from_trusted),
            email: self.email.map(EmailAddress::from_trusted),
            locale: self.locale.parse().map_err(|_| bad("locale"))?,
            zone: self.zone.parse().map_err(|_| bad("zone"))?,
            endpoint: match (self.endpoint_id, self.endpoint_url, self.endpoint_secret) {
                (Some(id), Some(url), Some(secret)) => {
                    let mut secrets = vec![Secret::new(secret)];
                    // The previous secret signs too until its overlap ends (real time).
                    if let (Some(previous), Some(until)) = (self.endpoint_previous_secret, self.endpoint_previous_until)
                        && until > chrono::Utc::now().timestamp_millis()
                    {
                        secrets.push(Secret::new(previous));
                    }
                    Some(Endpoint {
                        id,
                        url,
                        secrets,
                        disabled: self.endpoint_disabled,
                    })
                }
                (None, _, _) => None,
                (Some(_), _, _) => return Err(bad("webhook endpoint (it was removed)")),
            },
        })
    }
}

/// What an operator asks to broadcast.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewBroadcast {
    pub name: String,
    pub window: Option<WindowId>,
    pub revision: Option<u32>,
    pub notice: Option<Notice>,
    pub message: Option<Message>,
    pub filter: AudienceFilter,
    pub deadline: DateTime<Utc>,
}

/// A recorded broadcast.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Broadcast {
    pub id: i64,
    pub name: String,
    pub window: Option<WindowId>,
    pub revision: Option<u32>,
    pub notice: Option<Notice>,
    pub message: Option<Message>,
    pub filter: AudienceFilter,
    pub deadline: DateTime<Utc>,
}

#[derive(Debug, sqlx::FromRow)]
pub(super) struct BroadcastRow {
    pub id: i64,
    pub name: String,
    pub window_id: Option<i64>,
    pub revision: Option<i64>,
    pub notice: Option<String>,
    pub message: Option<String>,
    pub filter: String,
    pub deadline: i64,
}

impl TryFrom<BroadcastRow> for Broadcast {
    type Error = StoreError;
    fn try_from(r: BroadcastRow) -> Result<Broadcast, StoreError> {
        Ok(Broadcast {
            id: r.id,
            name: r.name,
            window: r.window_id.map(WindowId),
            revision: r
                .revision
                .map(|v| u32::try_from(v).map_err(|e| corrupt("broadcast", r.id, e)))
                .transpose()?,
            notice: r.notice.map(|n| parse::<Notice>("broadcast", r.id, &n)).transpose()?,
            message: r
                .message
                .map(|m| serde_json::from_str(&m).map_err(|e| corrupt("broadcast", r.id, e)))
                .transpose()?,
            filter: serde_json::from_str(&r.filter).map_err(|e| corrupt("broadcast", r.id, e))?,
            deadline: instant("broadcast", r.id, r.deadline)?,
        })
    }
}
