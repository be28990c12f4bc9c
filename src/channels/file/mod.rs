//! The `file` backend: JSON Lines per channel (`sms.jsonl`, `email.jsonl`, `webhook.jsonl`),
//! appended, never truncated. The default outbox, and the rehearsal backend.

use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;

use super::registry::{Backend, BuildContext};
use super::{BoxFuture, Limits, Message, Receipt, SendError, Sender};
use crate::domain::Channel;

/// `type = "file"`: the folder the JSON Lines files are appended in.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub dir: PathBuf,
}

impl Backend for FileConfig {
    fn default_limits(&self) -> Limits {
        Limits::default()
    }

    fn validate(&self) -> Result<(), String> {
        if self.dir.as_os_str().is_empty() {
            return Err("dir must not be empty".into());
        }
        Ok(())
    }

    fn build(&self, name: &str, _: &BuildContext) -> Result<Arc<dyn Sender>, String> {
        Ok(Arc::new(FileSender::new(name, self.dir.clone())))
    }
}

#[derive(Debug)]
pub struct FileSender {
    name: String,
    dir: PathBuf,
}

impl FileSender {
    pub fn new(name: &str, dir: PathBuf) -> FileSender {
        FileSender {
            name: name.to_owned(),
            dir,
        }
    }

    pub fn path(&self, channel: Channel) -> PathBuf {
        self.dir.join(format!("{channel}.jsonl"))
    }

    async fn append(&self, channel: Channel, lines: &[u8]) -> std::io::Result<()> {
        tokio::fs::create_dir_all(&self.dir).await?;
        let mut file = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path(channel))
            .await?;
        file.write_all(lines).await?;
        file.flush().await
    }
}

impl Sender for FileSender {
    fn name(&self) -> &str {
        &self.name
    }

    fn send<'a>(&'a self, batch: &'a [Message]) -> BoxFuture<'a, Vec<Result<Receipt, SendError>>> {
        Box::pin(async move {
            let mut results: Vec<Option<Result<Receipt, SendError>>> = vec![None; batch.len()];
            for channel in Channel::ALL {
                let mut buf = Vec::new();
                let mut members = Vec::new();
                for (i, m) in batch.iter().enumerate().filter(|(_, m)| m.channel == channel) {
                    match serde_json::to_writer(&mut buf, m) {
                        Ok(()) => {
                            buf.push(b'\n');
                            members.push(i);
                        }
                        Err(e) => {
                            results[i] = Some(Err(SendError::Permanent {
                                message: format!("cannot encode message: {e}"),
                            }))
                        }
                    }
                }
                if members.is_empty() {
                    continue;
                }
                let outcome = self
                    .append(channel, &buf)
                    .await
                    .map(|()| Receipt::default())
                    .map_err(|e| SendError::Transient {
                        message: format!("cannot append to {}: {e}", self.path(channel).display()),
                        retry_after: None,
                    });
                for i in members {
                    results[i] = Some(outcome.clone());
                }
            }
            results
                .into_iter()
                .map(|r| {
                    r.unwrap_or_else(|| {
                        Err(SendError::Permanent {
                            message: "message was not written".into(),
                        })
                    })
                })
                .collect()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn appends_one_json_line_per_message_to_its_channel_file() {
        let dir = tempfile::tempdir().unwrap();
        let sender = FileSender::new("outbox", dir.path().join("outbox"));
        for _ in 0..2 {
            let results = sender.send(&crate::channels::sample_sms(3)).await;
            assert!(results.iter().all(Result::is_ok));
        }
        let text = std::fs::read_to_string(sender.path(Channel::Sms)).unwrap();
        let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len(), 6, "appended, never truncated");
        assert_eq!(lines[1]["to"], "+254712345601");
        assert_eq!(lines[1]["body"], "Message 1");
        assert_eq!(lines[1]["segments"], 1);
        assert!(!sender.path(Channel::Email).exists());
    }

    #[test]
    fn an_empty_folder_is_refused() {
        let config = FileConfig { dir: PathBuf::new() };
        assert_eq!(config.validate().unwrap_err(), "dir must not be empty");
    }
}
