//! Free-text broadcasts: the text as written, within the SMS segment limit, as an email and as
//! a v1 webhook event.

use crate::domain::{Channel, Locale, Rendered, sms_cost};

use super::webhook::{BroadcastMessageV1, Envelope};
use super::{RenderError, Renderer};

impl Renderer {
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
                payload: serde_json::to_value(Envelope {
                    kind: "broadcast.message".to_owned(),
                    data: BroadcastMessageV1 {
                        name: name.to_owned(),
                        locale: locale.as_str(),
                        subject,
                        text: text.to_owned(),
                    },
                })
                .map_err(RenderError::Encode)?,
            },
        })
    }
}
