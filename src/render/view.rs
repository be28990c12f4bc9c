//! The view model: the facts of a notice, and the context every template is written against.

use std::collections::BTreeMap;

use chrono::{DateTime, TimeZone, Utc};
use serde_json::{Value, json};

use crate::domain::{
    ComponentId, ComponentNames, Locale, Localized, Notice, NoticeKind, Schedule, Span, Window, WindowId, WindowStatus,
    Zone, text_limits,
};

use super::Renderer;

impl Renderer {
    /// The template context: the view model every template is written against.
    pub(super) fn context(&self, f: &NoticeFacts, locale: Locale, zone: Zone) -> Value {
        json!({
            "service": self.service,
            "locale": locale.as_str(),
            "zone": zone.name(),
            "notice": f.notice.kind().as_str(),
            "offset": f.notice.offset().map(|o| o.to_string()).unwrap_or_default(),
            // How long until the start from when it is sent, not from when it was planned: a
            // reminder that goes late still tells the truth.
            "starts_in": lead_time(f.sent_at, f.schedule.starts_at()).to_string(),
            "reason": f.reason.as_ref().map(|r| r.get(locale)).unwrap_or_default(),
            // The affected components by id and name, for partners' notices.
            "affected": f.components.iter().map(|c| json!({
                "id": c.as_str(),
                "name": f.component_names.get(c).map_or(c.as_str(), |n| n.get(locale)),
            })).collect::<Vec<_>>(),
            "window": window_view(f, locale, json!(f.components.iter().map(ComponentId::as_str).collect::<Vec<_>>())),
            // The times changed (a reschedule or an extension), not only the components.
            "moved": f.schedule != f.previous,
            "previous": {
                "starts_at": f.previous.starts_at().to_rfc3339(),
                "ends_at": f.previous.ends_at().to_rfc3339(),
            },
        })
    }
}

/// The facts of one notice that rendering depends on: all of them are part of the body cache
/// key (window, revision, notice) or of the channel, locale and zone it is rendered for.
#[derive(Debug, Clone)]
pub struct NoticeFacts {
    pub window_id: WindowId,
    pub revision: u32,
    pub notice: Notice,
    pub status: WindowStatus,
    pub title: Localized,
    pub description: Localized,
    pub components: Vec<ComponentId>,
    pub component_names: BTreeMap<ComponentId, ComponentNames>,
    pub schedule: Schedule,
    pub previous: Schedule,
    pub zone: Zone,
    pub reason: Option<Localized>,
    /// When it is rendered to be sent: relative phrases ("starts in 19 hours") are true then.
    pub sent_at: DateTime<Utc>,
}

/// The time from `now` to `start` as a notice should say it: to the hour from two hours on, to
/// five minutes below that; never negative. It is part of the body cache key, so one body is
/// rendered per value.
pub fn lead_time(now: DateTime<Utc>, start: DateTime<Utc>) -> Span {
    let secs = (start - now).num_seconds().max(0);
    let step = if secs >= 2 * 3600 { 3600 } else { 300 };
    Span::from_secs((secs + step / 2) / step * step)
}

impl NoticeFacts {
    pub fn new(
        window: &Window,
        notice: Notice,
        names: &BTreeMap<ComponentId, ComponentNames>,
        sent_at: DateTime<Utc>,
    ) -> NoticeFacts {
        NoticeFacts {
            window_id: window.id,
            revision: window.revision,
            notice,
            status: window.status,
            title: window.title.clone(),
            description: window.description.clone(),
            components: window.components.clone(),
            component_names: window
                .components
                .iter()
                .filter_map(|c| names.get(c).map(|n| (c.clone(), n.clone())))
                .collect(),
            schedule: window.schedule,
            previous: window.previous,
            zone: window.zone,
            reason: window.cancel_reason.clone(),
            sent_at,
        }
    }

    /// A realistic window for checking templates: the April 2015 migration.
    pub fn sample(kind: NoticeKind, names: &BTreeMap<ComponentId, ComponentNames>) -> NoticeFacts {
        let at = |d, h, m| {
            Utc.with_ymd_and_hms(2015, 4, d, h, m, 0)
                .single()
                .expect("a valid fixed date")
        };
        let schedule = Schedule::new(at(17, 21, 0), at(19, 20, 59)).expect("fixed sample: end after start");
        let previous = Schedule::new(at(10, 21, 0), at(12, 20, 59)).expect("fixed sample: end after start");
        let offset = (kind == NoticeKind::Reminder).then_some(Span::hours(24));
        let notice = Notice::of(kind, offset).expect("a reminder with its offset, any other kind without");
        NoticeFacts {
            window_id: WindowId(1),
            revision: 2,
            notice,
            status: WindowStatus::Scheduled,
            title: Localized {
                en: "M-PESA systems migration to Kenya".into(),
                sw: Some("Uhamisho wa mifumo ya M-PESA kwenda Kenya".into()),
            },
            description: Localized {
                en: "Our systems are moving to a new data centre in Nairobi.".into(),
                sw: Some("Mifumo yetu inahamia kituo kipya cha data jijini Nairobi.".into()),
            },
            components: {
                let preferred: Vec<ComponentId> = ["send-money", "withdraw", "pay-bill"]
                    .iter()
                    .filter_map(|c| c.parse().ok())
                    .filter(|c| names.contains_key(c))
                    .collect();
                if preferred.is_empty() {
                    names.keys().take(3).cloned().collect()
                } else {
                    preferred
                }
            },
            component_names: names.clone(),
            schedule,
            previous,
            zone: Zone::NAIROBI,
            reason: (kind == NoticeKind::Cancelled).then(|| Localized {
                en: "The vendor postponed the hardware delivery.".into(),
                sw: Some("Msambazaji aliahirisha kuleta vifaa.".into()),
            }),
            // On time: a reminder says what its offset says.
            sent_at: schedule.starts_at() - offset.unwrap_or(Span::hours(24)).delta(),
        }
    }
    /// The facts for the worst-case SMS check: every component, free text at its longest and
    /// outside GSM-7 (so an SMS template that prints it cannot pass), the longest zone name, the
    /// largest numbers, and one case per branch a template may take on them (a reason or none;
    /// a change of start, of end only, or none). The helpers ignore the times in this check.
    pub fn worst_cases(kind: NoticeKind, names: &BTreeMap<ComponentId, ComponentNames>) -> Vec<NoticeFacts> {
        let filler = |n: usize| "ŵ".repeat(n);
        let zone = longest_zone_name();
        let base = NoticeFacts::sample(kind, names);
        let (start, end) = (base.schedule.starts_at(), base.schedule.ends_at());
        let moved_start = base.previous;
        let moved_end = Schedule::new(start, end - chrono::TimeDelta::hours(1)).unwrap_or(base.previous);
        let mut cases = Vec::new();
        for previous in [moved_start, moved_end, base.schedule] {
            let reason = Localized {
                en: filler(text_limits::REASON),
                sw: Some(filler(text_limits::REASON)),
            };
            for reason in [Some(reason), None] {
                cases.push(NoticeFacts {
                    window_id: WindowId(9_999_999_999),
                    revision: u32::MAX,
                    status: WindowStatus::InProgress,
                    title: Localized {
                        en: filler(text_limits::TITLE),
                        sw: Some(filler(text_limits::TITLE)),
                    },
                    description: Localized {
                        en: filler(text_limits::DESCRIPTION),
                        sw: Some(filler(text_limits::DESCRIPTION)),
                    },
                    components: names.keys().cloned().collect(),
                    component_names: names.clone(),
                    previous,
                    zone,
                    reason,
                    ..base.clone()
                });
            }
        }
        cases
    }
}

/// The zone with the longest IANA name.
fn longest_zone_name() -> Zone {
    chrono_tz::TZ_VARIANTS
        .iter()
        .max_by_key(|tz| tz.name().len())
        .and_then(|tz| tz.name().parse().ok())
        .unwrap_or_default()
}

/// The window as templates and webhook payloads see it; `components` as each wants them.
fn window_view(f: &NoticeFacts, locale: Locale, components: Value) -> Value {
    json!({
        "id": f.window_id.0,
        "revision": f.revision,
        "status": f.status.as_str(),
        "title": f.title.get(locale),
        "description": f.description.get(locale),
        "starts_at": f.schedule.starts_at().to_rfc3339(),
        "ends_at": f.schedule.ends_at().to_rfc3339(),
        "zone": f.zone.name(),
        "components": components,
    })
}
