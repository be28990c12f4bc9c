//! The domain: windows, recipients, notices, deliveries.
//!
//! Pure code: no I/O, no clock (every time-dependent function takes `now`), and none of sqlx,
//! handlebars, tokio or any other edge crate. Every type here is built by parsing, so code that
//! holds one never checks it again.

mod broadcast;
mod notice;
mod recipient;
mod time;
mod window;

use std::fmt;
use std::str::FromStr;

pub use broadcast::{AudienceFilter, Matcher, Message, MessageError, MessageText};
pub use notice::{DeliveryState, Notice, NoticeError, NoticeKind, PlannedDelivery, idempotency_key};
pub use recipient::{
    Audience, Channel, EmailAddress, Locale, PhoneNumber, Profile, Recipient, RecipientError, RecipientId,
};
pub use time::{Span, TimeError, Zone, from_millis, parse_instant, to_millis};
pub use window::{Change, Localized, NewWindow, Schedule, Window, WindowError, WindowId, WindowStatus};

/// A component id: a lowercase slug such as `send-money`. Which ids exist is configuration.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ComponentId(String);

impl ComponentId {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ComponentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("component '{0}' is not a valid id (lowercase letters, digits and '-', e.g. send-money)")]
pub struct ComponentError(pub String);

impl FromStr for ComponentId {
    type Err = ComponentError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        let ok = !t.is_empty()
            && t.len() <= 64
            && t.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            && !t.starts_with('-');
        if ok {
            Ok(ComponentId(t.to_owned()))
        } else {
            Err(ComponentError(s.to_owned()))
        }
    }
}

impl serde::Serialize for ComponentId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for ComponentId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

/// FNV-1a: a stable 64-bit fingerprint (unlike `DefaultHasher`, the same in every build and
/// on every machine), for names and cache keys derived from content.
pub fn fingerprint(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Splits a `;`- or `,`-separated list, ignoring blanks.
pub fn split_list(s: &str) -> impl Iterator<Item = &str> {
    s.split([';', ',']).map(str::trim).filter(|p| !p.is_empty())
}
