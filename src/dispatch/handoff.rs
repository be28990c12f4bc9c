//! Batches the planner, or `tangazo broadcast` recording its audience, writes claimed for this
//! process's own lanes (on SQLite, and on PostgreSQL while no other process sends: see
//! `Store::hands_over`): the rows that can go out at once skip the claim's write and its
//! read-back.
//!
//! The channel holds at most one batch per lane, so the planner writes a page claimed only
//! when the lanes are about to want it, and a batch waits for a lane a batch's length or so.
//! Its lease is renewed when a lane takes it late; a batch whose lease lapsed meanwhile (its
//! rows settled by a lapsed-claims pass) is given back, never sent. Batches no lane takes
//! (the lanes stopped) go back to the queue as if they had not been claimed.

use std::time::Duration;

use tokio::sync::{Mutex, mpsc};

use crate::storage::{Claim, Store};

/// A batch written claimed, and when (real time).
#[derive(Debug)]
pub struct Handed {
    pub(super) claim: Claim,
    pub(super) at: Stamp,
}

/// When a batch was written, as [`Handed::stamp`] reads it.
pub type Stamp = tokio::time::Instant;

impl Handed {
    /// `claim`, written at `at` or later: its lease runs from then, however long the planner
    /// waited to hand it over.
    pub fn new(claim: Claim, at: tokio::time::Instant) -> Handed {
        Handed { claim, at }
    }

    /// When it was written, at the latest: its lease runs from then.
    pub fn at(&self) -> tokio::time::Instant {
        self.at
    }

    /// Now, as `new` takes it: read before a batch is written.
    pub fn stamp() -> tokio::time::Instant {
        tokio::time::Instant::now()
    }
}

/// The planner's end: see [`channel`].
#[derive(Debug)]
pub struct Hand {
    tx: mpsc::Sender<Handed>,
}

/// The lanes' end: see [`channel`].
#[derive(Debug)]
pub struct Handoff {
    rx: Mutex<mpsc::Receiver<Handed>>,
}

/// A channel from the planner to `lanes` lanes: at most one batch waiting per lane.
pub fn channel(lanes: usize) -> (Hand, Handoff) {
    let (tx, rx) = mpsc::channel(lanes.max(1));
    (Hand { tx }, Handoff { rx: Mutex::new(rx) })
}

impl Hand {
    /// Hands `batch` to the lanes once one has room for it. If the lanes have stopped, its rows
    /// go back to the queue and `false` says to hand no more.
    pub async fn hand(&self, store: &Store, batch: Handed) -> bool {
        match self.tx.send(batch).await {
            Ok(()) => true,
            Err(mpsc::error::SendError(batch)) => {
                give_back(store, batch).await;
                false
            }
        }
    }
}

impl Handoff {
    /// A batch waiting, if any. It waits for the receiving end while another lane holds it
    /// waiting for a batch (a moment): a lane that found none must be able to trust that none
    /// was there.
    pub(super) async fn take(&self) -> Option<Handed> {
        self.rx.lock().await.try_recv().ok()
    }

    /// Waits for a batch; never returns once the planner has let go of its end.
    pub(super) async fn next(&self) -> Handed {
        match self.rx.lock().await.recv().await {
            Some(batch) => batch,
            None => std::future::pending().await,
        }
    }

    /// Takes no more batches, and gives back those waiting.
    pub(super) async fn close(&self, store: &Store) {
        let mut rx = self.rx.lock().await;
        rx.close();
        while let Ok(batch) = rx.try_recv() {
            give_back(store, batch).await;
        }
    }
}

/// `batch` as a lane can send it, and when its lease was last set (at the latest): its lease
/// renewed if it waited a third of one, `None` if it lapsed meanwhile and rows were settled
/// (those still claimed are given back).
pub async fn ready(store: &Store, batch: Handed, lease: Duration) -> Option<(Claim, tokio::time::Instant)> {
    if batch.at.elapsed() < lease / 3 {
        return Some((batch.claim, batch.at));
    }
    let renewing = tokio::time::Instant::now();
    match store.renew(batch.claim.token, lease).await {
        Ok(n) if n == batch.claim.rows.len() as u64 => Some((batch.claim, renewing)),
        Ok(n) => {
            tracing::warn!(
                token = batch.claim.token,
                rows = batch.claim.rows.len(),
                still_claimed = n,
                "a batch written claimed waited past its lease: it goes back to the queue unsent"
            );
            give_back(store, batch).await;
            None
        }
        Err(e) => {
            tracing::warn!(token = batch.claim.token, error = %crate::domain::error_chain(&e), "cannot renew the lease of a batch written claimed; it goes back to the queue");
            give_back(store, batch).await;
            None
        }
    }
}

pub(super) async fn give_back(store: &Store, batch: Handed) {
    if let Err(e) = store.give_back(batch.claim.token).await {
        tracing::warn!(token = batch.claim.token, error = %crate::domain::error_chain(&e), "rows written claimed could not be given back; they return when their lease lapses");
    }
}
