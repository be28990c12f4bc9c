//! Billers' webhook endpoints as planning sees them: which events and components each wants,
//! and the rows a notice's webhook deliveries become (one per endpoint). Pure.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;

use super::{Channel, ComponentId, NoticeKind, PlannedDelivery, RecipientId};

/// An event type a biller can subscribe to: `window.announced`, `window.reminder`, …
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EventType(pub NoticeKind);

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "window.{}", self.0)
    }
}

impl FromStr for EventType {
    type Err = String;
    fn from_str(s: &str) -> Result<EventType, String> {
        let kind = s.trim().strip_prefix("window.").unwrap_or(s.trim());
        NoticeKind::ALL
            .into_iter()
            .find(|k| k.as_str() == kind)
            .map(EventType)
            .ok_or_else(|| {
                let known: Vec<String> = NoticeKind::ALL.iter().map(|k| EventType(*k).to_string()).collect();
                format!("'{s}' is not an event type (one of {})", known.join(", "))
            })
    }
}

/// One endpoint, as fan-out needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointRoute {
    pub id: i64,
    pub recipient: RecipientId,
    /// Empty: every event.
    pub events: Vec<EventType>,
    /// Empty: every component.
    pub components: Vec<ComponentId>,
    pub enabled: bool,
}

impl EndpointRoute {
    /// Whether this endpoint is sent a notice of `kind` about a window affecting `components`.
    pub fn wants(&self, kind: NoticeKind, components: &[ComponentId]) -> bool {
        self.enabled
            && (self.events.is_empty() || self.events.contains(&EventType(kind)))
            && (self.components.is_empty() || self.components.iter().any(|c| components.contains(c)))
    }
}

/// The webhook rows of `rows` made one per endpoint: a biller with endpoints gets a row for each
/// enabled endpoint that wants the notice (none if none does); one without endpoints keeps its
/// row, addressed to the biller (the file and console backends record it; the webhook backend
/// refuses it, naming the biller). Rows of other channels pass through.
pub fn per_endpoint(
    rows: Vec<PlannedDelivery>,
    endpoints: &HashMap<RecipientId, Vec<EndpointRoute>>,
    window_components: &[ComponentId],
) -> Vec<PlannedDelivery> {
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        match endpoints.get(&row.recipient) {
            Some(list) if row.channel == Channel::Webhook && !list.is_empty() => {
                out.extend(
                    list.iter()
                        .filter(|e| e.wants(row.notice.kind(), window_components))
                        .map(|e| PlannedDelivery {
                            endpoint: Some(e.id),
                            ..row.clone()
                        }),
                );
            }
            _ => out.push(row),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Notice, WindowId};
    use chrono::{TimeZone, Utc};

    fn row(recipient: i64, channel: Channel) -> PlannedDelivery {
        let at = Utc.with_ymd_and_hms(2015, 4, 10, 0, 0, 0).unwrap();
        PlannedDelivery {
            window: WindowId(1),
            revision: 1,
            notice: Notice::Announced,
            recipient: RecipientId(recipient),
            channel,
            endpoint: None,
            due_at: at,
            deadline: at,
        }
    }

    #[test]
    fn each_endpoint_that_wants_the_notice_gets_its_own_row() {
        let c = |s: &str| -> ComponentId { s.parse().unwrap() };
        let route = |id, events: &[&str], components: &[&str], enabled| EndpointRoute {
            id,
            recipient: RecipientId(7),
            events: events.iter().map(|e| e.parse().unwrap()).collect(),
            components: components.iter().map(|x| c(x)).collect(),
            enabled,
        };
        let endpoints = HashMap::from([(
            RecipientId(7),
            vec![
                route(1, &[], &[], true),
                route(2, &["window.announced"], &["pay-bill"], true),
                route(3, &["window.cancelled"], &[], true),
                route(4, &[], &["withdraw"], true),
                route(5, &[], &[], false),
            ],
        )]);
        let rows = vec![
            row(7, Channel::Webhook),
            row(7, Channel::Email),
            row(8, Channel::Webhook),
        ];
        let out = per_endpoint(rows, &endpoints, &[c("pay-bill"), c("send-money")]);
        let got: Vec<(i64, Channel, Option<i64>)> =
            out.iter().map(|r| (r.recipient.0, r.channel, r.endpoint)).collect();
        assert_eq!(
            got,
            [
                (7, Channel::Webhook, Some(1)),
                (7, Channel::Webhook, Some(2)),
                (7, Channel::Email, None),
                (8, Channel::Webhook, None),
            ]
        );
        assert!("window.started".parse::<EventType>().is_ok() && "started".parse::<EventType>().is_ok());
        assert!(
            "window.exploded"
                .parse::<EventType>()
                .unwrap_err()
                .contains("window.announced")
        );
    }
}
