//! Feeds: an iCalendar (RFC 5545) feed of windows a calendar can subscribe to, and an Atom
//! (RFC 4287) feed of window events.
//!
//! Each window is one `VEVENT` whose `UID` never changes and whose `SEQUENCE` is the window's
//! revision, so a subscribed calendar moves the event when the window moves and strikes it
//! (`STATUS:CANCELLED`) when it is cancelled. Times are in UTC (`…Z`): every calendar shows
//! them in its own zone, and no `VTIMEZONE` can go stale.

use axum::extract::{Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, TimeDelta, Utc};
use serde::Deserialize;

use super::AppState;
use super::problem::{Answer, Problem};
use super::public::{affects_any, component_filter, esc};
use crate::domain::{Locale, Window, WindowStatus};

/// How long a window stays in the feeds after its end.
const KEPT_AFTER_END: TimeDelta = TimeDelta::days(30);
/// The most entries in the Atom feed.
const ATOM_ENTRIES: usize = 100;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeedQuery {
    component: Option<String>,
    lang: Option<String>,
}

fn locale(lang: Option<&str>) -> Answer<Locale> {
    match lang.filter(|l| !l.is_empty()) {
        None => Ok(Locale::En),
        Some(l) => l
            .parse()
            .map_err(|_| Problem::invalid("/lang", "a language here is en or sw")),
    }
}

fn ics_time(t: DateTime<Utc>) -> String {
    t.format("%Y%m%dT%H%M%SZ").to_string()
}

/// Escapes a TEXT value (RFC 5545 §3.3.11).
fn ics_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            ';' => out.push_str("\\;"),
            ',' => out.push_str("\\,"),
            '\n' => out.push_str("\\n"),
            '\r' => {}
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

/// Appends `line` folded at 75 octets (RFC 5545 §3.1), never inside a character, with CRLF.
fn push_folded(out: &mut String, line: &str) {
    let mut width = 0;
    for c in line.chars() {
        let n = c.len_utf8();
        if width + n > 75 {
            out.push_str("\r\n ");
            width = 1;
        }
        out.push(c);
        width += n;
    }
    out.push_str("\r\n");
}

fn host(state: &AppState) -> String {
    let base = state.public_base();
    url::Url::parse(&base)
        .ok()
        .and_then(|u| u.host_str().map(str::to_owned))
        .unwrap_or_else(|| "tangazo".to_owned())
}

fn in_feed(w: &Window, now: DateTime<Utc>) -> bool {
    w.schedule.ends_at() + KEPT_AFTER_END > now || matches!(w.status, WindowStatus::InProgress)
}

fn component_line(state: &AppState, w: &Window, locale: Locale) -> String {
    w.components
        .iter()
        .map(|c| {
            state
                .config
                .components
                .get(c)
                .map_or_else(|| c.to_string(), |n| n.get(locale).to_owned())
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The windows a feed shows (of the last 30 days and ahead, affecting `?component=`), its
/// language, and the instant it is made at.
async fn feed_windows(
    state: &AppState,
    query: Result<Query<FeedQuery>, axum::extract::rejection::QueryRejection>,
) -> Answer<(Vec<Window>, Locale, DateTime<Utc>)> {
    let Query(query) = query.map_err(|e| Problem::bad_request(e.body_text()))?;
    let filter = component_filter(state, query.component.as_deref())?;
    let locale = locale(query.lang.as_deref())?;
    let now = state.clock.now();
    let windows = state
        .store
        .windows()
        .await?
        .into_iter()
        .filter(|w| in_feed(w, now) && affects_any(w, &filter))
        .collect();
    Ok((windows, locale, now))
}

/// `GET /calendar.ics`: every window of the last 30 days and ahead, cancelled ones included
/// (marked), optionally only those affecting `?component=`.
pub async fn calendar(
    State(state): State<AppState>,
    query: Result<Query<FeedQuery>, axum::extract::rejection::QueryRejection>,
) -> Answer<Response> {
    let (mut windows, locale, _) = feed_windows(&state, query).await?;
    let host = host(&state);
    windows.sort_by_key(|w| (w.schedule.starts_at(), w.id));
    let mut out = String::new();
    for line in [
        "BEGIN:VCALENDAR",
        "VERSION:2.0",
        "PRODID:-//Tangazo//Maintenance windows//EN",
        "CALSCALE:GREGORIAN",
        "METHOD:PUBLISH",
    ] {
        push_folded(&mut out, line);
    }
    push_folded(
        &mut out,
        &format!(
            "X-WR-CALNAME:{}",
            ics_text(&format!("{} maintenance", state.config.service_name))
        ),
    );
    push_folded(&mut out, "REFRESH-INTERVAL;VALUE=DURATION:PT1H");
    for w in &windows {
        let status = match w.status {
            WindowStatus::Cancelled => "CANCELLED",
            _ => "CONFIRMED",
        };
        let mut description = w.description.get(locale).to_owned();
        let affected = component_line(&state, w, locale);
        let label = if locale == Locale::Sw {
            "Huduma zitakazoathirika"
        } else {
            "Affected"
        };
        if !description.is_empty() {
            description.push_str("\n\n");
        }
        description.push_str(&format!("{label}: {affected}"));
        if let Some(reason) = &w.cancel_reason {
            description.push_str(&format!("\n\n{}", reason.get(locale)));
        }
        for line in [
            "BEGIN:VEVENT".to_owned(),
            format!("UID:window-{}@{}", w.id.0, ics_text(&host)),
            format!("SEQUENCE:{}", w.revision),
            format!("DTSTAMP:{}", ics_time(w.revised_at)),
            format!("LAST-MODIFIED:{}", ics_time(w.revised_at)),
            format!("CREATED:{}", ics_time(w.created_at)),
            format!("DTSTART:{}", ics_time(w.schedule.starts_at())),
            format!("DTEND:{}", ics_time(w.schedule.ends_at())),
            format!("SUMMARY:{}", ics_text(w.title.get(locale))),
            format!("DESCRIPTION:{}", ics_text(&description)),
            format!(
                "CATEGORIES:{}",
                ics_text(&w.components.iter().map(|c| c.to_string()).collect::<Vec<_>>().join(","))
            ),
            format!("STATUS:{status}"),
            "TRANSP:TRANSPARENT".to_owned(),
            format!("URL:{}/v1/windows/{}", state.public_base(), w.id.0),
            "END:VEVENT".to_owned(),
        ] {
            push_folded(&mut out, &line);
        }
    }
    push_folded(&mut out, "END:VCALENDAR");
    Ok(([(header::CONTENT_TYPE, "text/calendar; charset=utf-8")], out).into_response())
}

/// The words an Atom entry opens with, per event.
fn event_title(action: &str, locale: Locale) -> &'static str {
    match (action, locale) {
        ("created", Locale::En) => "Planned",
        ("created", Locale::Sw) => "Imepangwa",
        ("rescheduled", Locale::En) => "Rescheduled",
        ("rescheduled", Locale::Sw) => "Imebadilishwa muda",
        ("amended", Locale::En) => "Services changed",
        ("amended", Locale::Sw) => "Huduma zimebadilishwa",
        ("started", Locale::En) => "Started",
        ("started", Locale::Sw) => "Imeanza",
        ("completed", Locale::En) => "Completed",
        ("completed", Locale::Sw) => "Imekamilika",
        ("cancelled", Locale::En) => "Cancelled",
        ("cancelled", Locale::Sw) => "Imesitishwa",
        (_, Locale::En) => "Updated",
        (_, Locale::Sw) => "Imesasishwa",
    }
}

/// `GET /feed.atom`: the latest window events (planned, rescheduled, services changed,
/// started, completed, cancelled), newest first.
pub async fn atom(
    State(state): State<AppState>,
    query: Result<Query<FeedQuery>, axum::extract::rejection::QueryRejection>,
) -> Answer<Response> {
    let (windows, locale, now) = feed_windows(&state, query).await?;
    let base = state.public_base();
    let host = host(&state);
    let mut entries = Vec::new();
    for w in &windows {
        for (n, event) in state.store.history(w.id).await?.into_iter().enumerate() {
            if matches!(
                event.action.as_str(),
                "created" | "rescheduled" | "amended" | "started" | "completed" | "cancelled"
            ) {
                entries.push((event.at, w, n, event));
            }
        }
    }
    entries.sort_by(|a, b| b.0.cmp(&a.0).then(b.1.id.cmp(&a.1.id)).then(b.2.cmp(&a.2)));
    entries.truncate(ATOM_ENTRIES);
    let updated = entries.first().map_or(now, |e| e.0);
    let zone = state.config.default_zone;
    let mut xml = format!(
        "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<feed xmlns=\"http://www.w3.org/2005/Atom\" xml:lang=\"{lang}\">\n<id>tag:{host},2015:tangazo/feed</id>\n<title>{title}</title>\n<updated>{updated}</updated>\n<author><name>{service}</name></author>\n<link rel=\"self\" type=\"application/atom+xml\" href=\"{base}/feed.atom\"/>\n<link rel=\"alternate\" type=\"text/html\" href=\"{base}/\"/>\n",
        lang = locale.as_str(),
        host = esc(&host),
        title = esc(&format!("{} maintenance", state.config.service_name)),
        updated = updated.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        service = esc(&state.config.service_name),
        base = esc(&base),
    );
    for (at, w, n, event) in &entries {
        let details = &event.details;
        let time = |key: &str| {
            details[key]
                .as_str()
                .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
                .map(|t| crate::render::format_instant(t.with_timezone(&Utc), zone, locale, true))
        };
        let mut summary = String::new();
        if let (Some(start), Some(end)) = (time("starts_at"), time("ends_at")) {
            summary.push_str(&format!("{start} – {end}. "));
        }
        summary.push_str(&component_line(&state, w, locale));
        xml.push_str(&format!(
            "<entry>\n<id>tag:{host},2015:tangazo/window/{id}/event/{n}</id>\n<title>{what}: {title}</title>\n<updated>{at}</updated>\n<link rel=\"alternate\" type=\"application/json\" href=\"{base}/v1/windows/{id}\"/>\n<category term=\"window.{action}\"/>\n<summary>{summary}</summary>\n</entry>\n",
            host = esc(&host),
            id = w.id.0,
            what = event_title(&event.action, locale),
            title = esc(w.title.get(locale)),
            at = at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            base = esc(&base),
            action = esc(&event.action),
            summary = esc(&summary),
        ));
    }
    xml.push_str("</feed>\n");
    Ok(([(header::CONTENT_TYPE, "application/atom+xml; charset=utf-8")], xml).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folding_keeps_characters_whole_and_lines_short() {
        let mut out = String::new();
        let long = format!("SUMMARY:{}", "Matengenezo ya M-PESA – ".repeat(8));
        push_folded(&mut out, &long);
        for line in out.split("\r\n").filter(|l| !l.is_empty()) {
            assert!(line.len() <= 75, "{line}");
        }
        let unfolded = out.trim_end_matches("\r\n").replace("\r\n ", "");
        assert_eq!(unfolded, long);
    }

    #[test]
    fn text_is_escaped() {
        assert_eq!(ics_text("a;b,c\\d\ne"), "a\\;b\\,c\\\\d\\ne");
    }
}
