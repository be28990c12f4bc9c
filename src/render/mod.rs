//! Rendering notices: handlebars templates, the helpers they use, and the webhook payload.
//!
//! `mod.rs` loads the templates and renders a notice for a channel; `view` is the model the
//! templates are written against (`NoticeFacts` and the context); `helpers` the handlebars
//! helpers (times in zones, durations in words, component lists); `messages` free-text
//! broadcasts; `check` the start-up check of every template; `webhook` the versioned payloads.
//!
//! Templates load once at start-up (built in, or from a folder) in strict mode: a template that
//! names a variable the context lacks fails `tangazo templates check`, never a send. Email HTML
//! is HTML-escaped; SMS and plain text are not. Depends on `domain` only; no I/O
//! but reading the template folder at load time.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use handlebars::{Handlebars, RenderErrorReason};
use serde_json::Value;

use crate::domain::{Audience, Channel, ComponentId, ComponentNames, Locale, NoticeKind, Rendered, Zone, sms_cost};

mod check;
mod helpers;
mod messages;
mod view;
mod webhook;

pub use check::{CheckReport, Segments};
pub use helpers::{duration_words, format_brief, format_instant};
pub use view::{NoticeFacts, lead_time};
pub use webhook::{BroadcastMessageV1, Envelope, WindowEventV1, webhook_payload};

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
    /// `en/reminder.sms` for customers, `en/biller/reminder.sms` for billers: the template's
    /// name, and its path below the folder without `.hbs`.
    pub fn template_name(self, locale: Locale, audience: Audience, kind: NoticeKind) -> String {
        match audience {
            Audience::Customer => format!("{locale}/{kind}.{}", self.suffix()),
            Audience::Biller => format!("{locale}/{audience}/{kind}.{}", self.suffix()),
        }
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
    #[error(
        "template {file}: in the worst case (every component, the longest names and times, a recipient abroad) the SMS renders as {segments} segments, more than the limit of {max} (sms.max_segments); free text (title, description, reason) may be long and in any script, so it belongs in emails, not in SMS"
    )]
    TooLongAtWorst { file: String, segments: usize, max: usize },
    #[error("cannot read template {file}")]
    Read { file: String, source: std::io::Error },
    #[error("cannot encode the webhook payload: {0}")]
    Encode(serde_json::Error),
}

type Slot = (Audience, Locale, NoticeKind, Part);

/// The loaded templates plus what the helpers need to know.
pub struct Renderer {
    /// SMS, email subject and text: nothing escaped.
    text: Handlebars<'static>,
    /// Email HTML: every value escaped.
    html: Handlebars<'static>,
    /// The SMS templates again, with helpers that write the longest text they can (the check).
    worst: Handlebars<'static>,
    /// Which registered template serves each slot: a biller's own where the set has one, else
    /// the customers' (a folder of templates need not have the biller ones).
    slots: HashMap<Slot, String>,
    /// Where the templates came from, to name files in errors.
    origin: Option<PathBuf>,
    service: String,
    max_sms_segments: usize,
}

impl std::fmt::Debug for Renderer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Renderer")
            .field("origin", &self.origin)
            .finish_non_exhaustive()
    }
}

/// Where templates are read from: a folder, or the set built into the binary.
enum Source<'a> {
    Dir(&'a Path),
    Embedded,
}

impl Source<'_> {
    /// The template `name` (a path below the folder without `.hbs`), or `None` if there is none.
    fn read(&self, name: &str) -> Result<Option<String>, RenderError> {
        match self {
            Source::Dir(d) => match std::fs::read_to_string(d.join(format!("{name}.hbs"))) {
                Ok(s) => Ok(Some(s)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(source) => Err(RenderError::Read {
                    file: file_name(Some(d), name),
                    source,
                }),
            },
            Source::Embedded => Ok(embedded::EMBEDDED
                .iter()
                .find(|(n, _)| n.strip_suffix(".hbs") == Some(name))
                .map(|(_, s)| (*s).to_owned())),
        }
    }

    /// The partials: every template whose file name starts with `_` (`en/biller/_facts.sms`),
    /// by name.
    fn partials(&self) -> Result<Vec<String>, RenderError> {
        let mut names = Vec::new();
        match self {
            Source::Dir(d) => partials_below(d, d, &mut names)?,
            Source::Embedded => names.extend(embedded::EMBEDDED.iter().filter_map(|(n, _)| {
                let name = n.strip_suffix(".hbs")?;
                name.rsplit('/').next()?.starts_with('_').then(|| name.to_owned())
            })),
        }
        names.sort();
        Ok(names)
    }
}

fn partials_below(root: &Path, dir: &Path, names: &mut Vec<String>) -> Result<(), RenderError> {
    let read_error = |source| RenderError::Read {
        file: dir.display().to_string(),
        source,
    };
    for entry in std::fs::read_dir(dir).map_err(read_error)? {
        let path = entry.map_err(read_error)?.path();
        if path.is_dir() {
            partials_below(root, &path, names)?;
        } else if let (Some(stem), Ok(rel)) = (
            path.file_name()
                .and_then(|f| f.to_str())
                .and_then(|f| f.strip_suffix(".hbs")),
            path.strip_prefix(root),
        ) && stem.starts_with('_')
        {
            let rel = rel.to_string_lossy().replace('\\', "/");
            names.push(rel.strip_suffix(".hbs").unwrap_or(&rel).to_owned());
        }
    }
    Ok(())
}

impl Renderer {
    /// Loads every (locale × audience × kind × part) template from `dir`, or the built-in set,
    /// and every partial (a file whose name starts with `_`) beside them.
    pub fn load(
        dir: Option<&Path>,
        service: &str,
        components: &BTreeMap<ComponentId, ComponentNames>,
    ) -> Result<Renderer, RenderError> {
        let source = dir.map_or(Source::Embedded, Source::Dir);
        let mut text = Handlebars::new();
        let mut html = Handlebars::new();
        let mut worst = Handlebars::new();
        text.register_escape_fn(handlebars::no_escape);
        worst.register_escape_fn(handlebars::no_escape);
        for (hb, mode) in [
            (&mut text, helpers::Mode::Real),
            (&mut html, helpers::Mode::Real),
            (&mut worst, helpers::Mode::Worst),
        ] {
            hb.set_strict_mode(true);
            helpers::register(hb, components, mode);
        }
        let register = |hb: &mut Handlebars<'static>, name: &str, template: &str| {
            hb.register_template_string(name, template)
                .map_err(|e| RenderError::Syntax {
                    file: file_name(dir, name),
                    message: e.to_string(),
                })
        };
        for name in source.partials()? {
            let template = source.read(&name)?.ok_or_else(|| RenderError::Missing {
                file: file_name(dir, &name),
            })?;
            for hb in [&mut text, &mut html, &mut worst] {
                register(hb, &name, &template)?;
            }
        }
        let mut slots = HashMap::new();
        for locale in Locale::ALL {
            for kind in NoticeKind::ALL {
                for part in Part::ALL {
                    for audience in Audience::ALL {
                        let name = part.template_name(locale, audience, kind);
                        let template = match source.read(&name)? {
                            Some(t) => t,
                            None if audience != Audience::Customer => {
                                let customers = part.template_name(locale, Audience::Customer, kind);
                                slots.insert((audience, locale, kind, part), customers);
                                continue;
                            }
                            None => {
                                return Err(RenderError::Missing {
                                    file: file_name(dir, &name),
                                });
                            }
                        };
                        match part {
                            Part::EmailHtml => register(&mut html, &name, &template)?,
                            Part::Sms => {
                                register(&mut text, &name, &template)?;
                                register(&mut worst, &name, &template)?;
                            }
                            Part::EmailSubject | Part::EmailText => register(&mut text, &name, &template)?,
                        }
                        slots.insert((audience, locale, kind, part), name);
                    }
                }
            }
        }
        Ok(Renderer {
            text,
            html,
            worst,
            slots,
            origin: dir.map(Path::to_owned),
            service: service.to_owned(),
            max_sms_segments: usize::MAX,
        })
    }

    /// The service's name, as notices say it (`M-PESA`).
    pub fn service(&self) -> &str {
        &self.service
    }

    /// Refuses SMS bodies billed as more than `max` segments.
    pub fn with_sms_limit(mut self, max: usize) -> Renderer {
        self.max_sms_segments = max;
        self
    }

    /// The template that serves a slot, as registered.
    fn slot(&self, audience: Audience, locale: Locale, kind: NoticeKind, part: Part) -> String {
        self.slots
            .get(&(audience, locale, kind, part))
            .cloned()
            .unwrap_or_else(|| part.template_name(locale, audience, kind))
    }

    fn render_part(
        &self,
        registry: &Handlebars<'static>,
        part: Part,
        audience: Audience,
        locale: Locale,
        kind: NoticeKind,
        ctx: &Value,
    ) -> Result<String, RenderError> {
        let name = self.slot(audience, locale, kind, part);
        registry.render(&name, ctx).map_err(|e| RenderError::Render {
            file: file_name(self.origin.as_deref(), &name),
            message: describe(&e),
        })
    }

    fn registry(&self, part: Part) -> &Handlebars<'static> {
        if part == Part::EmailHtml {
            &self.html
        } else {
            &self.text
        }
    }

    /// Renders one notice for one audience, channel, locale and zone.
    pub fn render(
        &self,
        facts: &NoticeFacts,
        audience: Audience,
        channel: Channel,
        locale: Locale,
        zone: Zone,
    ) -> Result<Rendered, RenderError> {
        let kind = facts.notice.kind();
        let ctx = self.context(facts, locale, zone);
        let part = |part| self.render_part(self.registry(part), part, audience, locale, kind, &ctx);
        Ok(match channel {
            Channel::Sms => {
                let body = part(Part::Sms)?.trim().to_owned();
                let cost = sms_cost(&body);
                if cost.segments > self.max_sms_segments {
                    return Err(RenderError::TooLong {
                        file: file_name(self.origin.as_deref(), &self.slot(audience, locale, kind, Part::Sms)),
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
                subject: part(Part::EmailSubject)?.trim().to_owned(),
                text: part(Part::EmailText)?,
                html: part(Part::EmailHtml)?,
            },
            Channel::Webhook => Rendered::Webhook {
                payload: webhook_payload(facts, locale).map_err(RenderError::Encode)?,
            },
        })
    }
}

pub(super) fn file_name(dir: Option<&Path>, name: &str) -> String {
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

#[cfg(test)]
mod tests;
