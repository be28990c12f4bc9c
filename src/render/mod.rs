//! Rendering notices: handlebars templates, the helpers they use, and the webhook payload.
//!
//! Templates load once at start-up (built in, or from a folder) in strict mode: a template that
//! names a variable the context lacks fails `tangazo templates check`, never a send. Email HTML
//! is HTML-escaped; SMS and plain text are not. Depends on `domain` and `config` only; no I/O
//! but reading the template folder at load time.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Datelike, TimeZone, Utc, Weekday};
use handlebars::{Context, Handlebars, Helper, HelperResult, Output, RenderContext, RenderErrorReason};
use serde_json::{Value, json};

use crate::domain::{
    Channel, ComponentId, ComponentNames, Encoding, Locale, Localized, Notice, NoticeKind, Rendered, Schedule, Span,
    Window, WindowId, WindowStatus, Zone, first_non_gsm7, sms_cost,
};

mod embedded {
    include!(concat!(env!("OUT_DIR"), "/templates.rs"));
}

/// The parts a notice is rendered into, one template each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Part {
    Sms,
    EmailSubject,
    EmailText,
    EmailHtml,
}

impl Part {
    pub const ALL: [Part; 4] = [Part::Sms, Part::EmailSubject, Part::EmailText, Part::EmailHtml];
    fn suffix(self) -> &'static str {
        match self {
            Part::Sms => "sms",
            Part::EmailSubject => "email.subject",
            Part::EmailText => "email.text",
            Part::EmailHtml => "email.html",
        }
    }
    /// `en/reminder.sms`: the template's name, and its path below the folder without `.hbs`.
    pub fn template_name(self, locale: Locale, kind: NoticeKind) -> String {
        format!("{locale}/{kind}.{}", self.suffix())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("template {file} is missing")]
    Missing { file: String },
    #[error("template {file}: {message}")]
    Syntax { file: String, message: String },
    #[error("template {file}: {message}")]
    Render { file: String, message: String },
    #[error("template {file}: the SMS renders as {segments} segments, more than the limit of {max} (sms.max_segments)")]
    TooLong { file: String, segments: usize, max: usize },
    #[error("cannot read template {file}: {source}")]
    Read { file: String, source: std::io::Error },
}

/// The loaded templates plus what the helpers need to know.
pub struct Renderer {
    text: Handlebars<'static>,
    html: Handlebars<'static>,
    /// Where the templates came from, to name files in errors.
    origin: Option<PathBuf>,
    service: String,
    max_sms_segments: usize,
}

/// What `check` found: problems fail the check, warnings are printed.
#[derive(Debug, Default)]
pub struct CheckReport {
    pub problems: Vec<RenderError>,
    pub warnings: Vec<String>,
}

impl std::fmt::Debug for Renderer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Renderer")
            .field("origin", &self.origin)
            .finish_non_exhaustive()
    }
}

impl Renderer {
    /// Loads every (locale × kind × part) template from `dir`, or the built-in set.
    pub fn load(
        dir: Option<&Path>,
        service: &str,
        components: &BTreeMap<ComponentId, ComponentNames>,
    ) -> Result<Renderer, RenderError> {
        let mut text = Handlebars::new();
        let mut html = Handlebars::new();
        text.register_escape_fn(handlebars::no_escape);
        for hb in [&mut text, &mut html] {
            hb.set_strict_mode(true);
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
        for locale in Locale::ALL {
            for kind in NoticeKind::ALL {
                for part in Part::ALL {
                    let name = part.template_name(locale, kind);
                    let file = file_name(dir, &name);
                    let source = match dir {
                        Some(d) => std::fs::read_to_string(d.join(format!("{name}.hbs"))).map_err(|source| {
                            if source.kind() == std::io::ErrorKind::NotFound {
                                RenderError::Missing { file: file.clone() }
                            } else {
                                RenderError::Read {
                                    file: file.clone(),
                                    source,
                                }
                            }
                        })?,
                        None => embedded::EMBEDDED
                            .iter()
                            .find(|(n, _)| n.strip_suffix(".hbs") == Some(name.as_str()))
                            .map(|(_, s)| (*s).to_owned())
                            .ok_or_else(|| RenderError::Missing { file: file.clone() })?,
                    };
                    let registry = if part == Part::EmailHtml { &mut html } else { &mut text };
                    registry
                        .register_template_string(&name, source)
                        .map_err(|e| RenderError::Syntax {
                            file,
                            message: e.to_string(),
                        })?;
                }
            }
        }
        Ok(Renderer {
            text,
            html,
            origin: dir.map(Path::to_owned),
            service: service.to_owned(),
            max_sms_segments: usize::MAX,
        })
    }

    /// Refuses SMS bodies billed as more than `max` segments.
    pub fn with_sms_limit(mut self, max: usize) -> Renderer {
        self.max_sms_segments = max;
        self
    }

    fn render_part(&self, part: Part, locale: Locale, kind: NoticeKind, ctx: &Value) -> Result<String, RenderError> {
        let name = part.template_name(locale, kind);
        let registry = if part == Part::EmailHtml {
            &self.html
        } else {
            &self.text
        };
        registry.render(&name, ctx).map_err(|e| RenderError::Render {
            file: file_name(self.origin.as_deref(), &name),
            message: describe(&e),
        })
    }

    /// Renders one notice for one channel, locale and zone.
    pub fn render(
        &self,
        facts: &NoticeFacts,
        channel: Channel,
        locale: Locale,
        zone: Zone,
    ) -> Result<Rendered, RenderError> {
        let kind = facts.notice.kind();
        let ctx = self.context(facts, locale, zone);
        Ok(match channel {
            Channel::Sms => {
                let body = self.render_part(Part::Sms, locale, kind, &ctx)?.trim().to_owned();
                let cost = sms_cost(&body);
                if cost.segments > self.max_sms_segments {
                    return Err(RenderError::TooLong {
                        file: file_name(self.origin.as_deref(), &Part::Sms.template_name(locale, kind)),
                        segments: cost.segments,
                        max: self.max_sms_segments,
                    });
                }
                Rendered::Sms {
                    body,
                    encoding: cost.encoding,
                    segments: cost.segments,
                }
            }
            Channel::Email => Rendered::Email {
                subject: self
                    .render_part(Part::EmailSubject, locale, kind, &ctx)?
                    .trim()
                    .to_owned(),
                text: self.render_part(Part::EmailText, locale, kind, &ctx)?,
                html: self.render_part(Part::EmailHtml, locale, kind, &ctx)?,
            },
            Channel::Webhook => Rendered::Webhook {
                payload: webhook_payload(facts, locale),
            },
        })
    }

    /// Renders a free-text broadcast: the SMS is the text as written (within the segment
    /// limit), the email carries it as plain text and escaped HTML, the webhook as a v1 event.
    pub fn render_message(
        &self,
        message: &crate::domain::Message,
        name: &str,
        channel: Channel,
        locale: Locale,
    ) -> Result<Rendered, RenderError> {
        let m = message.get(locale);
        let text = m.text.trim();
        let subject = m.subject.clone().unwrap_or_else(|| match locale {
            Locale::En => format!("{}: service notice", self.service),
            Locale::Sw => format!("{}: taarifa ya huduma", self.service),
        });
        Ok(match channel {
            Channel::Sms => {
                let cost = sms_cost(text);
                if cost.segments > self.max_sms_segments {
                    return Err(RenderError::TooLong {
                        file: format!("the {locale} message of broadcast '{name}'"),
                        segments: cost.segments,
                        max: self.max_sms_segments,
                    });
                }
                Rendered::Sms {
                    body: text.to_owned(),
                    encoding: cost.encoding,
                    segments: cost.segments,
                }
            }
            Channel::Email => {
                let paragraphs: String = text
                    .split("\n\n")
                    .map(|p| format!("<p>{}</p>\n", handlebars::html_escape(p.trim()).replace('\n', "<br>\n")))
                    .collect();
                Rendered::Email {
                    html: format!(
                        "<!DOCTYPE html>\n<html lang=\"{locale}\">\n<head>\n<meta charset=\"utf-8\">\n<title>{}</title>\n</head>\n<body>\n{paragraphs}</body>\n</html>\n",
                        handlebars::html_escape(&subject)
                    ),
                    subject,
                    text: format!("{text}\n"),
                }
            }
            Channel::Webhook => Rendered::Webhook {
                payload: json!({
                    "type": "broadcast.message",
                    "version": "v1",
                    "name": name,
                    "locale": locale.as_str(),
                    "subject": subject,
                    "text": text,
                }),
            },
        })
    }

    /// The template context: the view model every template is written against.
    fn context(&self, f: &NoticeFacts, locale: Locale, zone: Zone) -> Value {
        json!({
            "service": self.service,
            "locale": locale.as_str(),
            "zone": zone.name(),
            "notice": f.notice.kind().as_str(),
            "offset": f.notice.offset().map(|o| o.to_string()).unwrap_or_default(),
            "reason": f.reason.clone().unwrap_or_default(),
            "window": window_view(f, locale, json!(f.components.iter().map(ComponentId::as_str).collect::<Vec<_>>())),
            "previous": {
                "starts_at": f.previous.starts_at().to_rfc3339(),
                "ends_at": f.previous.ends_at().to_rfc3339(),
            },
        })
    }

    /// Renders every (locale × kind × part) against a sample window: failures (a missing
    /// variable, an SMS over the segment limit) and warnings (an SMS that forces UCS-2).
    pub fn check(&self, components: &BTreeMap<ComponentId, ComponentNames>) -> CheckReport {
        let mut report = CheckReport::default();
        for kind in NoticeKind::ALL {
            let facts = NoticeFacts::sample(kind, components);
            for locale in Locale::ALL {
                let ctx = self.context(&facts, locale, Zone::NAIROBI);
                for part in [Part::EmailSubject, Part::EmailText, Part::EmailHtml] {
                    if let Err(e) = self.render_part(part, locale, kind, &ctx) {
                        report.problems.push(e);
                    }
                }
                match self.render(&facts, Channel::Sms, locale, Zone::NAIROBI) {
                    Ok(Rendered::Sms {
                        body,
                        encoding: Encoding::Ucs2,
                        ..
                    }) => {
                        let c = first_non_gsm7(&body).unwrap_or('?');
                        let file = file_name(self.origin.as_deref(), &Part::Sms.template_name(locale, kind));
                        report.warnings.push(format!(
                            "template {file}: '{c}' (U+{:04X}) is not in the GSM-7 alphabet, so every SMS from it is UCS-2: 70 characters per message instead of 160",
                            u32::from(c)
                        ));
                    }
                    Ok(_) => {}
                    Err(e) => report.problems.push(e),
                }
            }
        }
        report
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
    pub reason: Option<String>,
}

impl NoticeFacts {
    pub fn new(window: &Window, notice: Notice, names: &BTreeMap<ComponentId, ComponentNames>) -> NoticeFacts {
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
            reason: (kind == NoticeKind::Cancelled).then(|| "The vendor postponed the hardware delivery.".into()),
        }
    }
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

/// The versioned webhook event (`v1`): what the webhook backend signs and POSTs.
pub fn webhook_payload(f: &NoticeFacts, locale: Locale) -> Value {
    json!({
        "type": format!("maintenance.{}", f.notice.kind()),
        "version": "v1",
        "notice": f.notice.to_string(),
        "window": window_view(f, locale, json!(f.components.iter().map(|c| json!({
            "id": c.as_str(),
            "name": f.component_names.get(c).map(|n| n.get(locale)).unwrap_or(c.as_str()),
        })).collect::<Vec<_>>())),
        "previous": {
            "starts_at": f.previous.starts_at().to_rfc3339(),
            "ends_at": f.previous.ends_at().to_rfc3339(),
        },
        "reason": f.reason,
    })
}

fn file_name(dir: Option<&Path>, name: &str) -> String {
    match dir {
        Some(d) => d.join(format!("{name}.hbs")).display().to_string(),
        None => format!("templates/{name}.hbs (built in)"),
    }
}

fn describe(e: &handlebars::RenderError) -> String {
    match e.reason() {
        RenderErrorReason::MissingVariable(Some(var)) => format!("variable '{var}' is missing"),
        _ => {
            let mut msg = e.to_string();
            if let Some(line) = e.line_no {
                msg = format!("line {line}: {msg}");
            }
            msg
        }
    }
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

/// Hours and minutes, rounded to five minutes (a window ending at 23:59 lasts "48 hours").
pub fn duration_words(secs: i64, locale: Locale) -> String {
    let minutes = ((secs.max(0) + 150) / 300) * 5;
    let (h, m) = (minutes / 60, minutes % 60);
    match locale {
        Locale::En => {
            let hours = match h {
                1 => "1 hour".to_owned(),
                n => format!("{n} hours"),
            };
            match (h, m) {
                (_, 0) => hours,
                (0, m) => format!("{m} minutes"),
                (_, m) => format!("{hours} {m} minutes"),
            }
        }
        Locale::Sw => match (h, m) {
            (h, 0) => format!("saa {h}"),
            (0, m) => format!("dakika {m}"),
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

#[cfg(test)]
mod tests;
