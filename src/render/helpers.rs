//! The handlebars helpers templates use: `{{time t}}` (an instant in the recipient's zone and
//! language), `{{duration a b}}` (a span in words) and `{{components ids}}` (display names).

use std::collections::BTreeMap;

use chrono::{DateTime, Datelike, Utc, Weekday};
use handlebars::{Context, Handlebars, Helper, HelperResult, Output, RenderContext, RenderErrorReason};
use serde_json::Value;

use crate::domain::{ComponentId, ComponentNames, Locale, Span, Zone};

/// Registers every helper on `hb`, with the component names the `components` helper shows.
pub(super) fn register(hb: &mut Handlebars<'static>, components: &BTreeMap<ComponentId, ComponentNames>) {
    hb.register_helper("time", Box::new(time_helper));
    hb.register_helper("duration", Box::new(duration_helper));
    let names = components.clone();
    hb.register_helper(
        "components",
        Box::new(
            move |h: &Helper,
                  r: &Handlebars,
                  ctx: &Context,
                  _: &mut RenderContext,
                  out: &mut dyn Output|
                  -> HelperResult {
                let ids = param(h, 0, "components")?;
                let locale = root_locale(ctx);
                let ids: Vec<&str> = ids
                    .as_array()
                    .map(|a| a.iter().filter_map(Value::as_str).collect())
                    .unwrap_or_default();
                let service = ctx.data().get("service").and_then(Value::as_str).unwrap_or_default();
                let text = if names.len() > 1 && names.keys().all(|k| ids.contains(&k.as_str())) {
                    // Everything is affected: say so in three words, not a list of all.
                    match locale {
                        Locale::En => format!("all {service} services"),
                        Locale::Sw => format!("huduma zote za {service}"),
                    }
                } else {
                    let list: Vec<String> = ids.iter().map(|id| component_name(&names, id, locale)).collect();
                    join_words(&list, locale)
                };
                // `sentence=true`: the list opens a sentence, so its first letter is a capital.
                let text = if h
                    .hash_get("sentence")
                    .is_some_and(|v| v.value().as_bool() == Some(true))
                {
                    let mut chars = text.chars();
                    chars
                        .next()
                        .map(|c| c.to_uppercase().chain(chars).collect())
                        .unwrap_or_default()
                } else {
                    text
                };
                out.write(&r.get_escape_fn()(&text))?;
                Ok(())
            },
        ),
    );
}

fn param<'a>(h: &'a Helper, i: usize, helper: &'static str) -> Result<&'a Value, RenderErrorReason> {
    h.param(i)
        .map(|p| p.value())
        .ok_or(RenderErrorReason::ParamNotFoundForIndex(helper, i))
}

fn root_locale(ctx: &Context) -> Locale {
    ctx.data()
        .get("locale")
        .and_then(Value::as_str)
        .and_then(|s| s.parse().ok())
        .unwrap_or_default()
}

fn root_zone(ctx: &Context, path: &[&str]) -> Zone {
    let mut v = ctx.data();
    for p in path {
        v = &v[*p];
    }
    v.as_str().and_then(|s| s.parse().ok()).unwrap_or_default()
}

fn instant(v: &Value, helper: &'static str) -> Result<DateTime<Utc>, RenderErrorReason> {
    v.as_str()
        .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
        .map(|d| d.with_timezone(&Utc))
        .ok_or_else(|| {
            RenderErrorReason::InvalidParamType(if helper == "time" {
                "an RFC 3339 instant"
            } else {
                "an RFC 3339 instant or a duration"
            })
        })
}

/// `{{time t}}`: the instant in the recipient's zone and language, followed by the window's own
/// zone in brackets when the recipient lives elsewhere (a biller in Berlin sees CEST and EAT).
fn time_helper(h: &Helper, r: &Handlebars, ctx: &Context, _: &mut RenderContext, out: &mut dyn Output) -> HelperResult {
    let t = instant(param(h, 0, "time")?, "time")?;
    let locale = root_locale(ctx);
    let zone = root_zone(ctx, &["zone"]);
    let home = root_zone(ctx, &["window", "zone"]);
    let mut text = format_instant(t, zone, locale, true);
    if zone.tz().name() != home.tz().name() {
        text = format!("{text} ({})", format_brief(t, home, locale));
    }
    out.write(&r.get_escape_fn()(&text))?;
    Ok(())
}

/// `Sat 18 Apr 2015 00:00 EAT` / `Jumamosi 18 Aprili 2015 00:00 EAT`.
pub fn format_instant(t: DateTime<Utc>, zone: Zone, locale: Locale, with_year: bool) -> String {
    let local = t.with_timezone(&zone.tz());
    let hm = local.format("%H:%M %Z");
    let year = if with_year {
        format!(" {}", local.year())
    } else {
        String::new()
    };
    match locale {
        Locale::En => format!(
            "{} {:02} {}{year} {hm}",
            local.format("%a"),
            local.day(),
            local.format("%b")
        ),
        Locale::Sw => format!(
            "{} {} {}{year} {hm}",
            SW_DAYS[local.weekday().num_days_from_monday() as usize],
            local.day(),
            SW_MONTHS[local.month0() as usize]
        ),
    }
}

/// `Sat 00:00 EAT` / `Jumamosi 00:00 EAT`: the same instant in a second zone, kept short.
pub fn format_brief(t: DateTime<Utc>, zone: Zone, locale: Locale) -> String {
    let local = t.with_timezone(&zone.tz());
    let hm = local.format("%H:%M %Z");
    match locale {
        Locale::En => format!("{} {hm}", local.format("%a")),
        Locale::Sw => format!("{} {hm}", SW_DAYS[local.weekday().num_days_from_monday() as usize]),
    }
}

const SW_DAYS: [&str; 7] = [
    "Jumatatu", "Jumanne", "Jumatano", "Alhamisi", "Ijumaa", "Jumamosi", "Jumapili",
];
const SW_MONTHS: [&str; 12] = [
    "Januari", "Februari", "Machi", "Aprili", "Mei", "Juni", "Julai", "Agosti", "Septemba", "Oktoba", "Novemba",
    "Desemba",
];

// Keeps the weekday table honest: index 0 is Monday.
const _: () = assert!(Weekday::Mon.num_days_from_monday() == 0);

/// `{{duration from to}}` or `{{duration "24h"}}`: a duration in words.
fn duration_helper(
    h: &Helper,
    r: &Handlebars,
    ctx: &Context,
    _: &mut RenderContext,
    out: &mut dyn Output,
) -> HelperResult {
    let first = param(h, 0, "duration")?;
    let secs = match h.param(1) {
        Some(second) => (instant(second.value(), "duration")? - instant(first, "duration")?).num_seconds(),
        None => match first.as_str().and_then(|s| s.parse::<Span>().ok()) {
            Some(span) => span.secs(),
            None => {
                return Err(RenderErrorReason::InvalidParamType("a duration such as 24h").into());
            }
        },
    };
    out.write(&r.get_escape_fn()(&duration_words(secs, root_locale(ctx))))?;
    Ok(())
}

/// A duration as people say it, rounded to five minutes (a window ending at 23:59 lasts "48
/// hours"): weeks and days from three days on ("a week", "3 days", "7 days and 15 hours"), else
/// hours, with a half said as a half ("an hour and a half", "saa moja na nusu").
pub fn duration_words(secs: i64, locale: Locale) -> String {
    let minutes = ((secs.max(0) + 150) / 300) * 5;
    let (h, m) = (minutes / 60, minutes % 60);
    let (weeks, days) = (h / 168, h / 24);
    match locale {
        Locale::En => match (h, m) {
            (0, m) => format!("{m} minutes"),
            (h, 0) if h % 168 == 0 => match weeks {
                1 => "a week".to_owned(),
                n => format!("{n} weeks"),
            },
            (h, 0) if h % 24 == 0 && h >= 72 => format!("{days} days"),
            (h, 0) if h >= 72 => format!("{days} days and {} hours", h % 24),
            (1, 0) => "an hour".to_owned(),
            (1, 30) => "an hour and a half".to_owned(),
            (h, 0) => format!("{h} hours"),
            (h, 30) => format!("{h} and a half hours"),
            (1, m) => format!("an hour and {m} minutes"),
            (h, m) => format!("{h} hours and {m} minutes"),
        },
        Locale::Sw => match (h, m) {
            (0, m) => format!("dakika {m}"),
            (h, 0) if h % 168 == 0 => match weeks {
                1 => "wiki moja".to_owned(),
                n => format!("wiki {n}"),
            },
            (h, 0) if h % 24 == 0 && h >= 72 => format!("siku {days}"),
            (h, 0) if h >= 72 => format!("siku {days} na saa {}", h % 24),
            (1, 0) => "saa moja".to_owned(),
            (1, 30) => "saa moja na nusu".to_owned(),
            (h, 0) => format!("saa {h}"),
            (h, 30) => format!("saa {h} na nusu"),
            (1, m) => format!("saa moja na dakika {m}"),
            (h, m) => format!("saa {h} na dakika {m}"),
        },
    }
}

fn component_name(names: &BTreeMap<ComponentId, ComponentNames>, id: &str, locale: Locale) -> String {
    id.parse::<ComponentId>()
        .ok()
        .and_then(|c| names.get(&c))
        .map(|n| n.get(locale).to_owned())
        .unwrap_or_else(|| id.to_owned())
}

/// `a, b and c` / `a, b na c`.
fn join_words(items: &[String], locale: Locale) -> String {
    let and = match locale {
        Locale::En => "and",
        Locale::Sw => "na",
    };
    match items {
        [] => String::new(),
        [one] => one.clone(),
        [init @ .., last] => format!("{} {and} {last}", init.join(", ")),
    }
}
