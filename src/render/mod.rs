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

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use handlebars::{Handlebars, RenderErrorReason};
use serde_json::Value;

use crate::domain::{Channel, ComponentId, ComponentNames, Locale, NoticeKind, Rendered, Zone, sms_cost};

mod check;
mod helpers;
mod messages;
mod view;
mod webhook;

pub use check::CheckReport;
pub use helpers::{duration_words, format_brief, format_instant};
pub use view::{NoticeFacts, lead_time};
pub use webhook::{BroadcastMessageV1, WebhookEventV1, webhook_payload};

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
    #[error("cannot read template {file}")]
    Read { file: String, source: std::io::Error },
    #[error("cannot encode the webhook payload: {0}")]
    Encode(serde_json::Error),
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
            helpers::register(hb, components);
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
