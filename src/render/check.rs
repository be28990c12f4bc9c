//! The check of a template set, at start-up and by `tangazo templates check`: every (locale ×
//! audience × kind × part) template rendered against a typical window, and every SMS template
//! rendered once more in the worst case, so that nothing that passes can exceed the segment
//! limit at send time.

use std::collections::BTreeMap;

use crate::domain::{
    Audience, ComponentId, ComponentNames, Encoding, Locale, NoticeKind, Zone, first_non_gsm7, sms_cost,
};

use super::view::NoticeFacts;
use super::{Part, RenderError, Renderer, file_name};

/// What `check` found: problems fail the check, warnings are printed, and the segments each
/// SMS template costs.
#[derive(Debug, Default)]
pub struct CheckReport {
    pub problems: Vec<RenderError>,
    pub warnings: Vec<String>,
    pub segments: Vec<Segments>,
}

/// How many segments one SMS template is billed as: for a typical window (three components, a
/// recipient in the window's zone, on time) and in the worst case.
#[derive(Debug, Clone)]
pub struct Segments {
    pub audience: Audience,
    pub locale: Locale,
    pub notice: NoticeKind,
    pub typical: usize,
    pub typical_encoding: Encoding,
    pub worst: usize,
    pub worst_encoding: Encoding,
    /// The longest body the worst case rendered, to see what makes it long.
    pub worst_body: String,
}

impl CheckReport {
    /// How many templates were rendered.
    pub fn templates() -> usize {
        Locale::ALL.len() * Audience::ALL.len() * NoticeKind::ALL.len() * Part::ALL.len()
    }
}

impl Renderer {
    /// Renders every template against a typical window: failures (a missing variable, an SMS
    /// over the segment limit) and warnings (an SMS that forces UCS-2). Every SMS template is
    /// rendered again in the worst case: every component but the shortest-named, the longest
    /// day, month, zone abbreviation and duration, a recipient abroad, free text at its longest
    /// and in UCS-2, and each branch a change can take; above the limit, that fails too.
    pub fn check(&self, components: &BTreeMap<ComponentId, ComponentNames>) -> CheckReport {
        let mut report = CheckReport::default();
        for kind in NoticeKind::ALL {
            let typical = NoticeFacts::sample(kind, components);
            let worst_cases = NoticeFacts::worst_cases(kind, components);
            for audience in Audience::ALL {
                for locale in Locale::ALL {
                    let ctx = self.context(&typical, locale, Zone::NAIROBI);
                    for part in [Part::EmailSubject, Part::EmailText, Part::EmailHtml] {
                        if let Err(e) = self.render_part(self.registry(part), part, audience, locale, kind, &ctx) {
                            report.problems.push(e);
                        }
                    }
                    let file = file_name(self.origin.as_deref(), &self.slot(audience, locale, kind, Part::Sms));
                    let body = match self.render_part(&self.text, Part::Sms, audience, locale, kind, &ctx) {
                        Ok(body) => body,
                        Err(e) => {
                            report.problems.push(e);
                            continue;
                        }
                    };
                    let cost = sms_cost(body.trim());
                    if cost.encoding == Encoding::Ucs2 {
                        let c = first_non_gsm7(body.trim()).unwrap_or('?');
                        report.warnings.push(format!(
                            "template {file}: '{c}' (U+{:04X}) is not in the GSM-7 alphabet, so every SMS from it is UCS-2: 70 characters per segment instead of 160",
                            u32::from(c)
                        ));
                    }
                    if cost.segments > self.max_sms_segments {
                        report.problems.push(RenderError::TooLong {
                            file: file.clone(),
                            segments: cost.segments,
                            max: self.max_sms_segments,
                        });
                    }
                    let mut worst = cost;
                    let mut worst_body = body.trim().to_owned();
                    for case in &worst_cases {
                        let ctx = self.context(case, locale, case.zone);
                        match self.render_part(&self.worst, Part::Sms, audience, locale, kind, &ctx) {
                            Ok(body) => {
                                let body = body.trim();
                                let cost = sms_cost(body);
                                if (cost.segments, body.chars().count()) > (worst.segments, worst_body.chars().count())
                                {
                                    worst = cost;
                                    worst_body = body.to_owned();
                                }
                            }
                            Err(e) => report.problems.push(e),
                        }
                    }
                    if worst.segments > self.max_sms_segments && cost.segments <= self.max_sms_segments {
                        report.problems.push(RenderError::TooLongAtWorst {
                            file,
                            segments: worst.segments,
                            max: self.max_sms_segments,
                        });
                    }
                    report.segments.push(Segments {
                        audience,
                        locale,
                        notice: kind,
                        typical: cost.segments,
                        typical_encoding: cost.encoding,
                        worst: worst.segments,
                        worst_encoding: worst.encoding,
                        worst_body,
                    });
                }
            }
        }
        report
    }
}
