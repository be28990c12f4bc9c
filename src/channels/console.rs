//! The `console` backend: every message pretty-printed on standard output, for rehearsals.

use std::io::Write;

use super::{BoxFuture, Message, Receipt, SendError, Sender};
use crate::render::Rendered;

#[derive(Debug)]
pub struct ConsoleSender {
    name: String,
}

impl ConsoleSender {
    pub fn new(name: &str) -> ConsoleSender {
        ConsoleSender { name: name.to_owned() }
    }
}

/// The text block printed for one message.
pub fn format(m: &Message) -> String {
    let about = match (&m.broadcast, m.window_id) {
        (Some(b), _) => format!("broadcast {b}"),
        (None, Some(w)) => format!("window {w} r{}", m.revision),
        (None, None) => String::new(),
    };
    let mut out = format!("── {} → {} · {} · {about} · {}\n", m.channel, m.to, m.notice, m.locale);
    match &m.content {
        Rendered::Sms {
            body,
            encoding,
            segments,
        } => {
            out.push_str(&format!(
                "{body}\n[{encoding}, {segments} segment{}]\n",
                if *segments == 1 { "" } else { "s" }
            ));
        }
        Rendered::Email { subject, text, .. } => {
            out.push_str(&format!("Subject: {subject}\n\n{}\n", text.trim_end()));
        }
        Rendered::Webhook { payload } => {
            out.push_str(&serde_json::to_string_pretty(payload).unwrap_or_default());
            out.push('\n');
        }
    }
    out.push_str(&format!("[key {}]\n\n", m.idempotency_key));
    out
}

impl Sender for ConsoleSender {
    fn name(&self) -> &str {
        &self.name
    }

    fn send<'a>(&'a self, batch: &'a [Message]) -> BoxFuture<'a, Vec<Result<Receipt, SendError>>> {
        Box::pin(async move {
            let text: String = batch.iter().map(format).collect();
            let mut stdout = std::io::stdout().lock();
            let written = stdout.write_all(text.as_bytes()).and_then(|()| stdout.flush());
            let result = written.map(|()| Receipt::default()).map_err(|e| SendError::Transient {
                message: format!("cannot write to standard output: {e}"),
                retry_after: None,
            });
            vec![result; batch.len()]
        })
    }
}
