//! The `file` backend: JSON Lines per channel (`sms.jsonl`, `email.jsonl`, `webhook.jsonl`),
//! appended, never truncated. The default outbox, and the rehearsal backend.

use std::path::PathBuf;

use tokio::io::AsyncWriteExt;

use super::{BoxFuture, Message, Receipt, SendError, Sender};
use crate::domain::Channel;

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
