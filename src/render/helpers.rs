//! The handlebars helpers templates use: `{{time t}}` (an instant in full, with its year, and
//! in the window's zone too for a recipient abroad), `{{short t}}` and `{{span a b}}` (an
//! instant, or a range, kept short for SMS), `{{utc t}}` (`2015-04-17 21:00 UTC`),
//! `{{duration a b}}` (a span in words) and `{{components ids}}` (display names).
//!
//! Each helper has two modes. `Real` renders the facts. `Worst` ignores the facts and writes the
//! longest text the helper can produce for the locale (the longest day and month names, a zone
//! abbreviation as long as any zone has, a recipient abroad, the longest list of components, the
//! longest duration): `templates check` renders SMS templates this way, so an SMS that passes
//! the check cannot grow past the segment limit at send time.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use chrono::{DateTime, Datelike, TimeZone, Utc, Weekday};
use handlebars::{Context, Handlebars, Helper, HelperResult, Output, RenderContext, RenderErrorReason};
use serde_json::Value;

use crate::domain::{ComponentId, ComponentNames, Locale, Span, Zone};

/// Whether helpers render the facts or the longest text they could ever produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Mode {
    Real,
    Worst,
}

/// A time further ahead than this shows its year in `short` and `span`; nearer ones do not,
/// because the weekday and date already say which one is meant.
const YEAR_AFTER: Span = Span::hours(180 * 24);

/// The longest duration `duration` is asked to say in the worst case: 999 days.
const LONGEST_DURATION_HOURS: i64 = 999 * 24;

/// Registers every helper on `hb`, with the component names the `components` helper shows.
pub(super) fn register(hb: &mut Handlebars<'static>, components: &BTreeMap<ComponentId, ComponentNames>, mode: Mode) {
    hb.register_helper(
        "time",
        Box::new(
            move |h: &Helper, r: &Handlebars, ctx: &Context, _: &mut RenderContext, out: &mut dyn Output| {
                let t = instant(param(h, 0, "time")?, "time")?;
                write(r, out, &time_text(t, &Where::of(ctx, mode)))
            },
        ),
    );
    hb.register_helper(
        "short",
        Box::new(
            move |h: &Helper, r: &Handlebars, ctx: &Context, _: &mut RenderContext, out: &mut dyn Output| {
                let t = instant(param(h, 0, "short")?, "time")?;
                let labelled = h.hash_get("zone").is_none_or(|v| v.value().as_bool() != Some(false));
                write(r, out, &short_text(t, &Where::of(ctx, mode), labelled))
            },
        ),
    );
    hb.register_helper(
        "span",
        Box::new(
            move |h: &Helper, r: &Handlebars, ctx: &Context, _: &mut RenderContext, out: &mut dyn Output| {
                let from = instant(param(h, 0, "span")?, "time")?;
                let to = instant(param(h, 1, "span")?, "time")?;
                write(r, out, &span_text(from, to, &Where::of(ctx, mode)))
            },
        ),
    );
    hb.register_helper(
        "utc",
        Box::new(
            |h: &Helper, r: &Handlebars, _: &Context, _: &mut RenderContext, out: &mut dyn Output| {
                // Every instant is written in the same width, so there is no worst case to find.
                let t = instant(param(h, 0, "utc")?, "time")?;
                write(r, out, &t.format("%Y-%m-%d %H:%M UTC").to_string())
            },
        ),
    );
    hb.register_helper(
        "duration",
        Box::new(
            move |h: &Helper, r: &Handlebars, ctx: &Context, _: &mut RenderContext, out: &mut dyn Output| {
                let secs = duration_param(h)?;
                let locale = root_locale(ctx);
                let text = match mode {
                    Mode::Real => duration_words(secs, locale),
                    Mode::Worst => longest_duration(locale).to_owned(),
                };
                write(r, out, &text)
            },
        ),
    );
    let names = components.clone();
    hb.register_helper(
        "components",
        Box::new(
            move |h: &Helper, r: &Handlebars, ctx: &Context, _: &mut RenderContext, out: &mut dyn Output| {
                let ids = param(h, 0, "components")?;
                let locale = root_locale(ctx);
                let service = ctx.data().get("service").and_then(Value::as_str).unwrap_or_default();
                let text = match mode {
                    Mode::Real => {
                        let ids: Vec<&str> = ids
                            .as_array()
                            .map(|a| a.iter().filter_map(Value::as_str).collect())
                            .unwrap_or_default();
                        component_list(&names, &ids, locale, service)
                    }
                    Mode::Worst => longest_component_list(&names, locale, service),
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
                write(r, out, &text)
            },
        ),
    );
}

fn write(r: &Handlebars, out: &mut dyn Output, text: &str) -> HelperResult {
    out.write(&r.get_escape_fn()(text))?;
    Ok(())
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

fn duration_param(h: &Helper) -> Result<i64, RenderErrorReason> {
    let first = param(h, 0, "duration")?;
    match h.param(1) {
        Some(second) => Ok((instant(second.value(), "duration")? - instant(first, "duration")?).num_seconds()),
        None => first
            .as_str()
            .and_then(|s| s.parse::<Span>().ok())
            .map(Span::secs)
            .ok_or(RenderErrorReason::InvalidParamType("a duration such as 24h")),
    }
}

/// Where and for whom a time is written: the recipient's zone and language, the window's own
/// zone, whether the year is worth showing, and whether to write the longest possible text.
struct Where {
    locale: Locale,
    zone: Zone,
    home: Zone,
    far_ahead: bool,
    mode: Mode,
}

impl Where {
    fn of(ctx: &Context, mode: Mode) -> Where {
        let starts_in = ctx
            .data()
            .get("starts_in")
            .and_then(Value::as_str)
            .and_then(|s| s.parse::<Span>().ok())
            .unwrap_or(Span::from_secs(0));
        Where {
            locale: root_locale(ctx),
            zone: root_zone(ctx, &["zone"]),
            home: root_zone(ctx, &["window", "zone"]),
            far_ahead: starts_in >= YEAR_AFTER,
            mode,
        }
    }

    fn abroad(&self) -> bool {
        self.mode == Mode::Worst || self.zone.tz().name() != self.home.tz().name()
    }

    /// The instant in the recipient's zone (`home`: in the window's), or the longest there is.
    fn stamp(&self, t: DateTime<Utc>, home: bool, with_year: bool) -> Stamp {
        match self.mode {
            Mode::Real => Stamp::of(t, if home { self.home } else { self.zone }, self.locale, with_year),
            Mode::Worst => Stamp::longest(self.locale, with_year),
        }
    }
}

/// `{{time t}}`: `Sat 18 Apr 2015 00:00 EAT`, followed by the window's own zone in brackets when
/// the recipient lives elsewhere (a biller in Berlin sees CEST and EAT).
fn time_text(t: DateTime<Utc>, w: &Where) -> String {
    let mut text = w.stamp(t, false, true).full();
    if w.abroad() {
        text = format!("{text} ({})", w.stamp(t, true, false).brief());
    }
    text
}

/// `{{short t}}`: `Sat 18 Apr 00:00 EAT` in the recipient's zone (the year only when far
/// ahead); `zone=false` leaves out the zone, for a time next to another that names it. Kept
/// short for SMS: unlike `time`, it does not repeat the time in the window's zone.
fn short_text(t: DateTime<Utc>, w: &Where, labelled: bool) -> String {
    let year = w.far_ahead || w.mode == Mode::Worst;
    let s = w.stamp(t, false, year);
    if labelled { s.full() } else { s.date_time() }
}

/// `{{span a b}}`: `Sat 18 Apr 00:00 to Sun 19 Apr 23:59 EAT`, or `Sat 18 Apr 00:00 to 06:00
/// EAT` within a day, in the recipient's zone, named once (twice if daylight saving changes in
/// between).
fn span_text(from: DateTime<Utc>, to: DateTime<Utc>, w: &Where) -> String {
    let worst = w.mode == Mode::Worst;
    let year = w.far_ahead || worst;
    let to_word = match w.locale {
        Locale::En => "to",
        Locale::Sw => "hadi",
    };
    let (a, b) = (w.stamp(from, false, year), w.stamp(to, false, year));
    // In the worst case the two ends fall on different days, in different abbreviations.
    let end = if a.same_day(&b) && !worst {
        b.hm.clone()
    } else {
        b.date_time()
    };
    let start = if a.abbr == b.abbr && !worst {
        a.date_time()
    } else {
        a.full()
    };
    format!("{start} {to_word} {end} {}", b.abbr)
}

/// An instant written out in pieces, so the longest text can be assembled from the longest
/// pieces in the same order as a real one.
#[derive(Debug, Clone, PartialEq)]
struct Stamp {
    locale: Locale,
    weekday: &'static str,
    /// The day of the month: `08` in English, `8` in Swahili.
    day: String,
    month: &'static str,
    year: Option<String>,
    hm: String,
    abbr: String,
}

impl Stamp {
    fn of(t: DateTime<Utc>, zone: Zone, locale: Locale, with_year: bool) -> Stamp {
        let local = t.with_timezone(&zone.tz());
        let (days, months) = names(locale);
        Stamp {
            locale,
            weekday: days[local.weekday().num_days_from_monday() as usize],
            day: match locale {
                Locale::En => format!("{:02}", local.day()),
                Locale::Sw => local.day().to_string(),
            },
            month: months[local.month0() as usize],
            year: with_year.then(|| local.year().to_string()),
            hm: local.format("%H:%M").to_string(),
            abbr: local.format("%Z").to_string(),
        }
    }

    /// The longest stamp there is in `locale`: every piece at its longest.
    fn longest(locale: Locale, with_year: bool) -> Stamp {
        let (days, months) = names(locale);
        let longest = |names: &[&'static str]| names.iter().copied().max_by_key(|n| n.chars().count()).unwrap_or("");
        Stamp {
            locale,
            weekday: longest(days),
            day: "28".to_owned(),
            month: longest(months),
            year: with_year.then(|| "2015".to_owned()),
            hm: "00:00".to_owned(),
            abbr: longest_abbreviation().to_owned(),
        }
    }

    fn same_day(&self, other: &Stamp) -> bool {
        (self.weekday, &self.day, self.month, &self.year) == (other.weekday, &other.day, other.month, &other.year)
    }

    /// `Sat 18 Apr 2015 00:00` / `Jumamosi 18 Aprili 2015 00:00`.
    fn date_time(&self) -> String {
        let year = self.year.as_ref().map(|y| format!(" {y}")).unwrap_or_default();
        match self.locale {
            Locale::En | Locale::Sw => format!("{} {} {}{year} {}", self.weekday, self.day, self.month, self.hm),
        }
    }

    /// `Sat 18 Apr 2015 00:00 EAT`.
    fn full(&self) -> String {
        format!("{} {}", self.date_time(), self.abbr)
    }

    /// `Sat 00:00 EAT`.
    fn brief(&self) -> String {
        format!("{} {} {}", self.weekday, self.hm, self.abbr)
    }
}

fn names(locale: Locale) -> (&'static [&'static str], &'static [&'static str]) {
    match locale {
        Locale::En => (&EN_DAYS, &EN_MONTHS),
        Locale::Sw => (&SW_DAYS, &SW_MONTHS),
    }
}

/// The longest zone abbreviation (`%Z`) of any zone, in winter or summer.
fn longest_abbreviation() -> &'static str {
    static LONGEST: OnceLock<String> = OnceLock::new();
    LONGEST.get_or_init(|| {
        let mut longest = String::new();
        for tz in chrono_tz::TZ_VARIANTS {
            for month in [1, 7] {
                if let Some(t) = Utc.with_ymd_and_hms(2015, month, 15, 12, 0, 0).single() {
                    let abbr = t.with_timezone(&tz).format("%Z").to_string();
                    if abbr.chars().count() > longest.chars().count() {
                        longest = abbr;
                    }
                }
            }
        }
        longest
    })
}

/// `Sat 18 Apr 2015 00:00 EAT` / `Jumamosi 18 Aprili 2015 00:00 EAT`.
pub fn format_instant(t: DateTime<Utc>, zone: Zone, locale: Locale, with_year: bool) -> String {
    Stamp::of(t, zone, locale, with_year).full()
}

/// `Sat 00:00 EAT` / `Jumamosi 00:00 EAT`: the same instant in a second zone, kept short.
pub fn format_brief(t: DateTime<Utc>, zone: Zone, locale: Locale) -> String {
    Stamp::of(t, zone, locale, false).brief()
}

const EN_DAYS: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
const EN_MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];
const SW_DAYS: [&str; 7] = [
    "Jumatatu", "Jumanne", "Jumatano", "Alhamisi", "Ijumaa", "Jumamosi", "Jumapili",
];
const SW_MONTHS: [&str; 12] = [
    "Januari", "Februari", "Machi", "Aprili", "Mei", "Juni", "Julai", "Agosti", "Septemba", "Oktoba", "Novemba",
    "Desemba",
];

// Keeps the weekday tables honest: index 0 is Monday.
const _: () = assert!(Weekday::Mon.num_days_from_monday() == 0);

/// The longest text `duration_words` gives for any duration up to 999 days.
fn longest_duration(locale: Locale) -> &'static str {
    static LONGEST: OnceLock<[String; 2]> = OnceLock::new();
    let [en, sw] = LONGEST.get_or_init(|| {
        let longest = |locale| {
            // Minutes matter only below three days; from there on only whole hours are said.
            let below = (0..72 * 12).map(|i| i * 300);
            let above = (72..=LONGEST_DURATION_HOURS).map(|h| h * 3600);
            below
                .chain(above)
                .map(|secs| duration_words(secs, locale))
                .max_by_key(|s| s.chars().count())
                .unwrap_or_default()
        };
        [longest(Locale::En), longest(Locale::Sw)]
    });
    match locale {
        Locale::En => en,
        Locale::Sw => sw,
    }
}

/// A duration as people say it, rounded to five minutes (a window ending at 23:59 lasts "48
/// hours"): weeks and days from three days on, rounded to the hour ("a week", "3 days", "7 days
/// and 15 hours"), else hours, with a half said as a half ("an hour and a half", "saa moja na
/// nusu").
pub fn duration_words(secs: i64, locale: Locale) -> String {
    let mut minutes = ((secs.max(0) + 150) / 300) * 5;
    if minutes >= 72 * 60 {
        minutes = (minutes + 30) / 60 * 60;
    }
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

/// The display names of `ids`, joined as a sentence would (`a, b and c`); every configured
/// component at once is said in three words ("all M-PESA services").
fn component_list(
    names: &BTreeMap<ComponentId, ComponentNames>,
    ids: &[&str],
    locale: Locale,
    service: &str,
) -> String {
    if names.len() > 1 && names.keys().all(|k| ids.contains(&k.as_str())) {
        return everything(locale, service);
    }
    let list: Vec<String> = ids.iter().map(|id| component_name(names, id, locale)).collect();
    join_words(&list, locale)
}

fn everything(locale: Locale, service: &str) -> String {
    match locale {
        Locale::En => format!("all {service} services"),
        Locale::Sw => format!("huduma zote za {service}"),
    }
}

/// The longest `component_list` can be: every component but the one with the shortest name
/// (all of them are said in three words), or all of them when that is longer.
fn longest_component_list(names: &BTreeMap<ComponentId, ComponentNames>, locale: Locale, service: &str) -> String {
    let mut list: Vec<String> = names.values().map(|n| n.get(locale).to_owned()).collect();
    list.sort_by_key(|n| std::cmp::Reverse(n.chars().count()));
    if list.len() > 1 {
        list.pop();
    }
    let most = join_words(&list, locale);
    let all = everything(locale, service);
    if names.len() > 1 && all.chars().count() > most.chars().count() {
        all
    } else {
        most
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
