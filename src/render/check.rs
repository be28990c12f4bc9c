//! The start-up check: every (locale × kind × part) template rendered against a sample window.

use std::collections::BTreeMap;

use crate::domain::{
    Channel, ComponentId, ComponentNames, Encoding, Locale, NoticeKind, Rendered, Zone, first_non_gsm7,
};

use super::view::NoticeFacts;
use super::{Part, RenderError, Renderer, file_name};

/// What `check` found: problems fail the check, warnings are printed.
#[derive(Debug, Default)]
pub struct CheckReport {
    pub problems: Vec<RenderError>,
    pub warnings: Vec<String>,
}

impl Renderer {
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
