//! The `console` backend: every message pretty-printed for rehearsals, on the writer it is
//! given (standard output in the binary, a buffer in tests).

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::registry::{Backend, BuildContext};
use super::{BoxFuture, Limits, Message, Receipt, SendError, Sender, SharedWriter};
use crate::domain::Rendered;

/// `type = "console"`: no settings of its own.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleConfig {}

impl Backend for ConsoleConfig {
    fn default_limits(&self) -> Limits {
        Limits::default()
    }

    fn validate(&self) -> Result<(), String> {
        Ok(())
    }

    fn build(&self, name: &str, context: &BuildContext) -> Result<Arc<dyn Sender>, String> {
        Ok(Arc::new(ConsoleSender::new(name, context.console.clone())))
    }
}

pub struct ConsoleSender {
    name: String,
    out: SharedWriter,
}

impl ConsoleSender {
    pub fn new(name: &str, out: SharedWriter) -> ConsoleSender {
        ConsoleSender {
            name: name.to_owned(),
            out,
        }
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
    match &*m.content {
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
            out.push_str(
                &serde_json::to_string_pretty(payload).unwrap_or_else(|e| format!("(cannot print the payload: {e})")),
            );
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
            let written = match self.out.lock() {
                Ok(mut out) => out.write_all(text.as_bytes()).and_then(|()| out.flush()),
                Err(_) => Err(std::io::Error::other("the console writer was poisoned by a panic")),
            };
            let result = written.map(|()| Receipt::default()).map_err(|e| SendError::Transient {
                message: format!("cannot write to the console: {e}"),
                retry_after: None,
            });
            vec![result; batch.len()]
        })
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    /// A writer the test can read back.
    #[derive(Clone, Default)]
    struct Buffer(Arc<std::sync::Mutex<Vec<u8>>>);

    impl Write for Buffer {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn each_message_goes_to_the_writer_it_is_given() {
        let buffer = Buffer::default();
        let sender = ConsoleSender::new("screen", Arc::new(std::sync::Mutex::new(buffer.clone())));
        let results = sender.send(&crate::channels::sample_sms(2)).await;
        assert!(results.iter().all(Result::is_ok));
        let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        assert!(
            text.contains("── sms → +254712345600 · announced · window 1 r1 · en"),
            "{text}"
        );
        assert!(text.contains("Message 1\n[GSM-7, 1 segment]"), "{text}");
        assert_eq!(text.matches("[key w1.r1.announced.").count(), 2, "{text}");
    }

    #[tokio::test]
    async fn a_failing_writer_is_a_transient_failure() {
        struct Broken;
        impl Write for Broken {
            fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
                Err(std::io::Error::from(std::io::ErrorKind::BrokenPipe))
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let sender = ConsoleSender::new("screen", Arc::new(std::sync::Mutex::new(Broken)));
        let results = sender.send(&crate::channels::sample_sms(1)).await;
        assert!(matches!(&results[0], Err(e) if e.is_transient()));
    }
}
