//! The domain: windows, recipients, notices, deliveries.
//!
//! Pure code: no I/O, no clock (every time-dependent function takes `now`), and none of sqlx,
//! handlebars, tokio or any other edge crate. Every type here is built by parsing, so code that
//! holds one never checks it again.

mod broadcast;
mod component;
mod content;
mod endpoint;
mod notice;
mod policy;
mod quiet;
mod recipient;
mod secret;
mod signing;
mod sms;
mod text;
mod time;
mod window;

pub use broadcast::{AudienceFilter, Matcher, Message, MessageError, MessageText};
pub use component::{ComponentError, ComponentId, ComponentNames};
pub use content::Rendered;
pub use endpoint::{EndpointRoute, EventType, per_endpoint};
pub use notice::{DeliveryState, Notice, NoticeError, NoticeKind, PlannedDelivery, broadcast_key, idempotency_key};
pub use policy::{AudiencePolicy, Decided, Decision, Outcome, Policy, PolicyError, Reach};
pub use quiet::{QuietHours, QuietHoursError};
pub use recipient::{
    Audience, Channel, EmailAddress, Locale, PhoneNumber, Profile, Recipient, RecipientError, RecipientId, quote_prefix,
};
pub use secret::{REDACTED, Secret};
pub use signing::SigningKey;
pub use sms::{Encoding, SmsCost, cost as sms_cost, first_non_gsm7, gsm7_septets};
pub use text::{TextError, check as check_text, limits as text_limits};
pub use time::{Span, TimeError, Zone, from_millis, parse_instant, to_millis};
pub use window::{Change, Localized, NewWindow, Schedule, Window, WindowError, WindowId, WindowStatus};

/// FNV-1a: a stable 64-bit fingerprint (unlike `DefaultHasher`, the same in every build and
/// on every machine), for names and cache keys derived from content.
pub fn fingerprint(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// An error with its causes, each once: `cannot open database x: database: connection refused`.
/// For logs; the command line prints the same through anyhow's `{:#}`.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let next = c.to_string();
        // Some errors repeat their cause's text in their own: say it once.
        if !text.ends_with(&next) {
            text = format!("{text}: {next}");
        }
        cause = c.source();
    }
    text
}

/// Splits a `;`- or `,`-separated list, ignoring blanks.
pub fn split_list(s: &str) -> impl Iterator<Item = &str> {
    s.split([';', ',']).map(str::trim).filter(|p| !p.is_empty())
}
