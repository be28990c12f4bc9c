//! The `file` backend: JSON Lines per channel (`sms.jsonl`, `email.jsonl`, `webhook.jsonl`),
//! appended. The default outbox, and the rehearsal backend.
//!
//! Durable like a journal: a batch's lines are synced to disk before the batch counts as
//! sent; a write that fails part-way (a full disk) is cut back to where it began, so a retry
//! neither duplicates nor corrupts a line; and the first time a file is opened, a torn last
//! line (a crash mid-write) is cut away. One process writes a folder at a time.

use std::collections::HashSet;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

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
    /// The files already checked for a torn last line, and the one writer at a time.
    repaired: Arc<Mutex<HashSet<Channel>>>,
}

impl FileSender {
    pub fn new(name: &str, dir: PathBuf) -> FileSender {
        FileSender {
            name: name.to_owned(),
            dir,
            repaired: Arc::default(),
        }
    }

    pub fn path(&self, channel: Channel) -> PathBuf {
        self.dir.join(format!("{channel}.jsonl"))
    }

    async fn append(&self, channel: Channel, lines: Vec<u8>) -> std::io::Result<()> {
        let (dir, path, repaired) = (self.dir.clone(), self.path(channel), Arc::clone(&self.repaired));
        tokio::task::spawn_blocking(move || {
            let mut repaired = repaired
                .lock()
                .map_err(|_| std::io::Error::other("an earlier write panicked"))?;
            std::fs::create_dir_all(&dir)?;
            let mut file = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .read(true)
                .write(true)
                .open(&path)?;
            if repaired.insert(channel) {
                cut_torn_line(&mut file)?;
            }
            append_durably(&mut file, &lines)
        })
        .await
        .map_err(std::io::Error::other)?
    }
}

/// A file the outbox appends to: what `append_durably` and `cut_torn_line` need of it.
pub trait Journal: Read + Write + Seek {
    fn set_len(&mut self, len: u64) -> std::io::Result<()>;
    fn sync(&mut self) -> std::io::Result<()>;
}

impl Journal for std::fs::File {
    fn set_len(&mut self, len: u64) -> std::io::Result<()> {
        std::fs::File::set_len(self, len)
    }
    fn sync(&mut self) -> std::io::Result<()> {
        self.sync_data()
    }
}

/// Appends `lines` at the end and syncs them; if anything fails, the file is cut back to its
/// length before, so nothing of the attempt remains.
pub fn append_durably(file: &mut impl Journal, lines: &[u8]) -> std::io::Result<()> {
    let before = file.seek(SeekFrom::End(0))?;
    let written = file
        .write_all(lines)
        .and_then(|()| file.flush())
        .and_then(|()| file.sync());
    if let Err(e) = written {
        // Best effort: if even this fails, the torn line is cut when the file is next opened.
        let _ = file.set_len(before).and_then(|()| file.sync());
        return Err(e);
    }
    Ok(())
}

/// Cuts a last line that has no newline (a crash mid-write) away.
pub fn cut_torn_line(file: &mut impl Journal) -> std::io::Result<()> {
    let len = file.seek(SeekFrom::End(0))?;
    if len == 0 {
        return Ok(());
    }
    // Read back from the end in blocks until the last newline.
    let mut end = len;
    let mut block = [0u8; 4096];
    loop {
        let start = end.saturating_sub(block.len() as u64);
        let n = usize::try_from(end - start).unwrap_or(block.len());
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(&mut block[..n])?;
        if let Some(i) = block[..n].iter().rposition(|b| *b == b'\n') {
            let keep = start + i as u64 + 1;
            if keep < len {
                file.set_len(keep)?;
                file.sync()?;
            }
            return Ok(());
        }
        if start == 0 {
            file.set_len(0)?;
            return file.sync();
        }
        end = start;
    }
}

impl Sender for FileSender {
    fn name(&self) -> &str {
        &self.name
    }

    fn check(&self) -> BoxFuture<'_, Result<String, String>> {
        Box::pin(async move {
            let dir = self.dir.clone();
            tokio::task::spawn_blocking(move || {
                std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
                let probe = dir.join(".tangazo-check");
                std::fs::write(&probe, b"").map_err(|e| format!("cannot write in {}: {e}", dir.display()))?;
                let _ = std::fs::remove_file(&probe);
                Ok(format!("{} is writable", dir.display()))
            })
            .await
            .map_err(|e| e.to_string())?
        })
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
                    .append(channel, buf)
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

    /// An in-memory file that fails a write once `room` bytes are taken (a full disk), having
    /// written what fitted.
    struct SmallDisk {
        data: std::io::Cursor<Vec<u8>>,
        room: usize,
    }

    impl Read for SmallDisk {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            self.data.read(buf)
        }
    }
    impl Seek for SmallDisk {
        fn seek(&mut self, pos: SeekFrom) -> std::io::Result<u64> {
            self.data.seek(pos)
        }
    }
    impl Write for SmallDisk {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let free = self.room.saturating_sub(self.data.get_ref().len());
            if free == 0 {
                return Err(std::io::Error::new(std::io::ErrorKind::StorageFull, "no space left"));
            }
            self.data.write(&buf[..buf.len().min(free)])
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    impl Journal for SmallDisk {
        fn set_len(&mut self, len: u64) -> std::io::Result<()> {
            self.data.get_mut().truncate(len as usize);
            Ok(())
        }
        fn sync(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_write_that_fails_part_way_leaves_nothing_and_a_retry_writes_each_line_once() {
        let mut disk = SmallDisk {
            data: std::io::Cursor::new(Vec::new()),
            room: 30,
        };
        append_durably(&mut disk, b"{\"n\":1}\n").unwrap();
        let err = append_durably(&mut disk, b"{\"n\":2}\n{\"n\":3}\n{\"n\":4}\n").unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::StorageFull);
        assert_eq!(disk.data.get_ref(), b"{\"n\":1}\n", "the partial batch was cut back");
        // Space returns; the retried batch goes in whole, once.
        disk.room = 1000;
        append_durably(&mut disk, b"{\"n\":2}\n{\"n\":3}\n{\"n\":4}\n").unwrap();
        let text = String::from_utf8(disk.data.get_ref().clone()).unwrap();
        assert_eq!(text, "{\"n\":1}\n{\"n\":2}\n{\"n\":3}\n{\"n\":4}\n");
    }

    #[test]
    fn a_torn_last_line_is_cut_when_the_file_is_opened() {
        for (before, after) in [
            ("{\"n\":1}\n{\"n\":2", "{\"n\":1}\n"),
            ("{\"n\":1}\n", "{\"n\":1}\n"),
            ("{\"n\"", ""),
            ("", ""),
        ] {
            let mut disk = SmallDisk {
                data: std::io::Cursor::new(before.as_bytes().to_vec()),
                room: 1000,
            };
            cut_torn_line(&mut disk).unwrap();
            assert_eq!(
                String::from_utf8(disk.data.get_ref().clone()).unwrap(),
                after,
                "{before:?}"
            );
        }
        // Longer than one block of the backwards read.
        let long = format!("{}\n{}", "x".repeat(10_000), "y".repeat(5_000));
        let mut disk = SmallDisk {
            data: std::io::Cursor::new(long.into_bytes()),
            room: usize::MAX,
        };
        cut_torn_line(&mut disk).unwrap();
        assert_eq!(disk.data.get_ref().len(), 10_001);
    }

    #[tokio::test]
    async fn the_sender_repairs_a_torn_outbox_before_appending() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("sms.jsonl"), "{\"whole\":true}\n{\"torn\":").unwrap();
        let sender = FileSender::new("outbox", dir.path().to_owned());
        sender.send(&crate::channels::sample_sms(1)).await;
        let text = std::fs::read_to_string(dir.path().join("sms.jsonl")).unwrap();
        let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert_eq!(lines[0]["whole"], true);
    }

    #[test]
    fn an_empty_folder_is_refused() {
        let config = FileConfig { dir: PathBuf::new() };
        assert_eq!(config.validate().unwrap_err(), "dir must not be empty");
    }
}
