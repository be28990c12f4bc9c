//! What anyone may read without a token: upcoming and current windows as JSON, and the status
//! page — server-rendered HTML, no JavaScript, readable on a phone — in English or Swahili
//! (`?lang=`, else `Accept-Language`), with times in East Africa Time, UTC and any `?tz=`.

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, header};
use axum::response::{Html, IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::AppState;
use super::problem::{Answer, Problem};
use crate::domain::{ComponentId, Locale, Window, WindowId, WindowStatus, Zone};
use crate::render::format_instant;

/// Text in both languages.
#[derive(Debug, Serialize)]
pub struct Texts {
    pub en: String,
    pub sw: Option<String>,
}

impl From<&crate::domain::Localized> for Texts {
    fn from(l: &crate::domain::Localized) -> Texts {
        Texts {
            en: l.en.clone(),
            sw: l.sw.clone(),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct ComponentView {
    pub id: String,
    pub name: Texts,
}

/// A window as the public sees it.
#[derive(Debug, Serialize)]
pub struct WindowView {
    pub id: i64,
    pub revision: u32,
    pub status: &'static str,
    pub title: Texts,
    pub description: Texts,
    pub components: Vec<ComponentView>,
    pub starts_at: DateTime<Utc>,
    pub ends_at: DateTime<Utc>,
    /// The zone it was announced in.
    pub zone: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cancel_reason: Option<Texts>,
    pub updated_at: DateTime<Utc>,
}

impl WindowView {
    pub fn of(w: &Window, state: &AppState) -> WindowView {
        WindowView {
            id: w.id.0,
            revision: w.revision,
            status: w.status.as_str(),
            title: (&w.title).into(),
            description: (&w.description).into(),
            components: w
                .components
                .iter()
                .map(|c| ComponentView {
                    id: c.to_string(),
                    name: component_names(state, c),
                })
                .collect(),
            starts_at: w.schedule.starts_at(),
            ends_at: w.schedule.ends_at(),
            zone: w.zone.name(),
            cancel_reason: w.cancel_reason.as_ref().map(Texts::from),
            updated_at: w.revised_at,
        }
    }
}

fn component_names(state: &AppState, c: &ComponentId) -> Texts {
    match state.config.components.get(c) {
        Some(n) => Texts {
            en: n.en.clone(),
            sw: Some(n.sw.clone()),
        },
        None => Texts {
            en: c.to_string(),
            sw: None,
        },
    }
}

/// Windows that are on or ahead: scheduled or in progress (an overrun one stays until it is
/// completed), soonest first.
pub(super) fn upcoming(windows: Vec<Window>, now: DateTime<Utc>) -> Vec<Window> {
    let mut list: Vec<Window> = windows
        .into_iter()
        .filter(|w| match w.status {
            WindowStatus::InProgress => true,
            WindowStatus::Scheduled => w.schedule.ends_at() > now,
            WindowStatus::Completed | WindowStatus::Cancelled => false,
        })
        .collect();
    list.sort_by_key(|w| (w.schedule.starts_at(), w.id));
    list
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Only windows affecting this component.
    component: Option<String>,
}

/// Parses `?component=a,b` against the configured components.
pub(super) fn component_filter(state: &AppState, text: Option<&str>) -> Answer<Vec<ComponentId>> {
    let mut out = Vec::new();
    for part in crate::domain::split_list(text.unwrap_or_default()) {
        let id: ComponentId = part
            .parse()
            .map_err(|e: crate::domain::ComponentError| Problem::invalid("/component", e.to_string()))?;
        if !state.config.knows(&id) {
            return Err(Problem::invalid("/component", format!("unknown component '{id}'")));
        }
        out.push(id);
    }
    Ok(out)
}

pub(super) fn affects_any(w: &Window, components: &[ComponentId]) -> bool {
    components.is_empty() || w.components.iter().any(|c| components.contains(c))
}

/// `GET /v1/windows`: upcoming and current windows.
pub async fn windows(
    State(state): State<AppState>,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Answer<Response> {
    let Query(query) = query.map_err(|e| Problem::bad_request(e.body_text()))?;
    let filter = component_filter(&state, query.component.as_deref())?;
    let now = state.clock.now();
    let list: Vec<WindowView> = upcoming(state.store.windows().await?, now)
        .iter()
        .filter(|w| affects_any(w, &filter))
        .map(|w| WindowView::of(w, &state))
        .collect();
    Ok(axum::Json(serde_json::json!({ "windows": list })).into_response())
}

/// `GET /v1/windows/{id}`: any window, past ones too.
pub async fn window(State(state): State<AppState>, Path(id): Path<String>) -> Answer<Response> {
    let id: i64 = id
        .parse()
        .ok()
        .filter(|i: &i64| *i > 0)
        .ok_or_else(|| Problem::not_found(format!("no window has id '{}'", crate::domain::quote_prefix(&id))))?;
    let w = state.store.window(WindowId(id)).await?;
    Ok(axum::Json(WindowView::of(&w, &state)).into_response())
}

/// The page's words.
struct Words {
    title: &'static str,
    now_on: &'static str,
    upcoming: &'static str,
    nothing: &'static str,
    affected: &'static str,
    from: &'static str,
    until: &'static str,
    in_progress: &'static str,
    cancelled: &'static str,
    cancelled_list: &'static str,
    subscribe: &'static str,
    calendar: &'static str,
    feed: &'static str,
    updated: &'static str,
    other_language: (&'static str, &'static str),
    zone_note: &'static str,
}

const EN: Words = Words {
    title: "Service status",
    now_on: "Maintenance now",
    upcoming: "Planned maintenance",
    nothing: "No maintenance is planned. All services are available.",
    affected: "Affected services",
    from: "From",
    until: "Until",
    in_progress: "In progress",
    cancelled: "Cancelled",
    cancelled_list: "Cancelled",
    subscribe: "Follow planned maintenance:",
    calendar: "calendar",
    feed: "Atom feed",
    updated: "Page generated",
    other_language: ("sw", "Kiswahili"),
    zone_note: "Times in",
};

const SW: Words = Words {
    title: "Hali ya huduma",
    now_on: "Matengenezo yanayoendelea",
    upcoming: "Matengenezo yaliyopangwa",
    nothing: "Hakuna matengenezo yaliyopangwa. Huduma zote zinapatikana.",
    affected: "Huduma zitakazoathirika",
    from: "Kuanzia",
    until: "Hadi",
    in_progress: "Yanaendelea",
    cancelled: "Yamesitishwa",
    cancelled_list: "Yaliyositishwa",
    subscribe: "Fuatilia matengenezo yaliyopangwa:",
    calendar: "kalenda",
    feed: "mlisho wa Atom",
    updated: "Ukurasa umetolewa",
    other_language: ("en", "English"),
    zone_note: "Saa kwa",
};

#[derive(Debug, Deserialize)]
pub struct PageQuery {
    lang: Option<String>,
    tz: Option<String>,
}

/// `?lang=` wins; else the first of `sw` and `en` in `Accept-Language` by weight; else English.
pub(super) fn choose_locale(lang: Option<&str>, headers: &HeaderMap) -> Answer<Locale> {
    if let Some(lang) = lang.filter(|l| !l.is_empty()) {
        return lang.parse().map_err(|_| {
            Problem::invalid(
                "/lang",
                format!(
                    "'{}' is not a language here: en or sw",
                    crate::domain::quote_prefix(lang)
                ),
            )
        });
    }
    let accept = headers
        .get(header::ACCEPT_LANGUAGE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let mut best: Option<(f32, Locale)> = None;
    for item in accept.split(',') {
        let mut parts = item.split(';');
        let tag = parts.next().unwrap_or_default().trim().to_ascii_lowercase();
        let q = parts
            .find_map(|p| p.trim().strip_prefix("q=").and_then(|q| q.parse::<f32>().ok()))
            .unwrap_or(1.0);
        let locale = match tag.split('-').next() {
            Some("sw") => Locale::Sw,
            Some("en") => Locale::En,
            _ => continue,
        };
        if q > 0.0 && best.is_none_or(|(b, _)| q > b) {
            best = Some((q, locale));
        }
    }
    Ok(best.map_or(Locale::En, |(_, l)| l))
}

/// HTML-escapes text.
pub(super) fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// `GET /`: the status page.
pub async fn status_page(
    State(state): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<PageQuery>, axum::extract::rejection::QueryRejection>,
) -> Answer<Response> {
    let Query(query) = query.map_err(|e| Problem::bad_request(e.body_text()))?;
    let locale = choose_locale(query.lang.as_deref(), &headers)?;
    let extra: Option<Zone> = match query.tz.as_deref().filter(|t| !t.is_empty()) {
        Some(t) => Some(
            t.parse()
                .map_err(|e: crate::domain::TimeError| Problem::invalid("/tz", e.to_string()))?,
        ),
        None => None,
    };
    let now = state.clock.now();
    let all = state.store.windows().await?;
    let cancelled: Vec<&Window> = all
        .iter()
        .filter(|w| w.status == WindowStatus::Cancelled && w.schedule.ends_at() > now)
        .collect();
    let list = upcoming(all.clone(), now);
    let words = if locale == Locale::Sw { &SW } else { &EN };
    let home = state.config.default_zone;
    let utc: Zone = "UTC"
        .parse()
        .map_err(|e: crate::domain::TimeError| Problem::internal(&e))?;
    let mut zones = vec![home, utc];
    if let Some(z) = extra.filter(|z| !zones.contains(z)) {
        zones.push(z);
    }
    let when = |t: DateTime<Utc>| -> String {
        let mut lines = zones
            .iter()
            .map(|z| format!("<span class=\"t\">{}</span>", esc(&format_instant(t, *z, locale, true))));
        let first = lines.next().unwrap_or_default();
        let rest: Vec<String> = lines.collect();
        format!("{first}<br><small>{}</small>", rest.join(" · "))
    };
    let card = |w: &Window, badge: Option<&str>| -> String {
        let components: Vec<String> = w
            .components
            .iter()
            .map(|c| {
                let n = component_names(&state, c);
                let name = if locale == Locale::Sw {
                    n.sw.unwrap_or(n.en)
                } else {
                    n.en
                };
                format!("<li>{}</li>", esc(&name))
            })
            .collect();
        let description = w.description.get(locale);
        format!(
            "<article id=\"window-{id}\"><h3>{title}{badge}</h3>{desc}<dl><dt>{from}</dt><dd>{start}</dd><dt>{until}</dt><dd>{end}</dd></dl><p class=\"label\">{affected}</p><ul>{components}</ul></article>",
            id = w.id.0,
            title = esc(w.title.get(locale)),
            badge = badge
                .map(|b| format!(" <span class=\"badge\">{}</span>", esc(b)))
                .unwrap_or_default(),
            desc = if description.is_empty() {
                String::new()
            } else {
                format!("<p>{}</p>", esc(description))
            },
            from = words.from,
            start = when(w.schedule.starts_at()),
            until = words.until,
            end = when(w.schedule.ends_at()),
            affected = words.affected,
            components = components.concat(),
        )
    };
    let (current, ahead): (Vec<&Window>, Vec<&Window>) = list
        .iter()
        .partition(|w| w.status == WindowStatus::InProgress || w.schedule.starts_at() <= now);
    let mut body = String::new();
    if !current.is_empty() {
        body.push_str(&format!("<h2>{}</h2>", words.now_on));
        for w in current {
            body.push_str(&card(w, Some(words.in_progress)));
        }
    }
    body.push_str(&format!("<h2>{}</h2>", words.upcoming));
    if ahead.is_empty() {
        body.push_str(&format!("<p class=\"none\">{}</p>", words.nothing));
    }
    for w in ahead {
        body.push_str(&card(w, None));
    }
    if !cancelled.is_empty() {
        body.push_str(&format!("<h2>{}</h2>", words.cancelled_list));
        for w in cancelled {
            body.push_str(&card(w, Some(words.cancelled)));
        }
    }
    let zone_names: Vec<&str> = zones.iter().map(|z| z.name()).collect();
    let tz_param = extra.map(|z| format!("&amp;tz={}", esc(z.name()))).unwrap_or_default();
    let (other, other_name) = words.other_language;
    let page = format!(
        r#"<!doctype html>
<html lang="{lang}">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{service} — {title}</title>
<link rel="alternate" type="application/atom+xml" href="/feed.atom">
<style>
body {{ font-family: system-ui, sans-serif; margin: 0 auto; max-width: 42rem; padding: 1rem; line-height: 1.45; color: #1a1a1a; }}
h1 {{ font-size: 1.5rem; margin-bottom: .25rem; }}
h2 {{ font-size: 1.2rem; margin-top: 1.5rem; border-bottom: 1px solid #ccc; }}
article {{ border: 1px solid #ddd; border-radius: .5rem; padding: .75rem 1rem; margin: .75rem 0; }}
h3 {{ margin: 0 0 .5rem; font-size: 1.05rem; }}
dl {{ display: grid; grid-template-columns: auto 1fr; gap: .25rem .75rem; margin: .5rem 0; }}
dt {{ font-weight: 600; }}
dd {{ margin: 0; }}
small {{ color: #555; }}
.badge {{ font-size: .8rem; background: #b00020; color: #fff; border-radius: .25rem; padding: .1rem .4rem; }}
.label {{ font-weight: 600; margin: .5rem 0 0; }}
ul {{ margin: .25rem 0; padding-left: 1.25rem; }}
footer {{ margin-top: 2rem; font-size: .9rem; color: #555; }}
</style>
</head>
<body>
<header><h1>{service} — {title}</h1><p><a href="/?lang={other}{tz_param}" hreflang="{other}">{other_name}</a> · {zone_note} {zone_list}</p></header>
<main>
{body}
</main>
<footer><p>{subscribe} <a href="/calendar.ics">{calendar}</a> · <a href="/feed.atom">{feed}</a></p><p>{updated}: {generated}</p></footer>
</body>
</html>
"#,
        lang = locale.as_str(),
        service = esc(&state.config.service_name),
        title = words.title,
        zone_note = words.zone_note,
        zone_list = esc(&zone_names.join(", ")),
        subscribe = words.subscribe,
        calendar = words.calendar,
        feed = words.feed,
        updated = words.updated,
        generated = esc(&format_instant(now, home, locale, true)),
    );
    let mut response = Html(page).into_response();
    response
        .headers_mut()
        .insert(header::VARY, header::HeaderValue::from_static("Accept-Language"));
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn languages_by_query_then_weight() {
        let mut h = HeaderMap::new();
        assert_eq!(choose_locale(None, &h).unwrap(), Locale::En);
        h.insert(header::ACCEPT_LANGUAGE, "fr, sw-KE;q=0.9, en;q=0.8".parse().unwrap());
        assert_eq!(choose_locale(None, &h).unwrap(), Locale::Sw);
        h.insert(header::ACCEPT_LANGUAGE, "sw;q=0.2, en-GB".parse().unwrap());
        assert_eq!(choose_locale(None, &h).unwrap(), Locale::En);
        assert_eq!(choose_locale(Some("sw"), &h).unwrap(), Locale::Sw);
        assert_eq!(choose_locale(Some("xx"), &h).unwrap_err().status.as_u16(), 422);
    }

    #[test]
    fn escaping() {
        assert_eq!(
            esc("<a href='x'>&\"</a>"),
            "&lt;a href=&#39;x&#39;&gt;&amp;&quot;&lt;/a&gt;"
        );
    }
}
