//! A notice or message as a channel carries it: the SMS text with its encoding and billed
//! segments, the email's subject, text and HTML, or the webhook's JSON body.
//!
//! Pure data, shared by `render`, which produces it, and `channels`, which deliver it.

use serde::Serialize;
use serde_json::Value;

use super::Encoding;

/// What a channel sends, rendered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Rendered {
    Sms {
        body: String,
        encoding: Encoding,
        segments: usize,
    },
    Email {
        subject: String,
        text: String,
        html: String,
    },
    Webhook {
        payload: Value,
    },
}
