//! At most `n` messages of a backend in flight at once, for backends that send one message per
//! request or per SMTP transaction.

use std::future::Future;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use tokio::sync::Semaphore;

use super::{BoxFuture, Message, Receipt, SendError};

/// The messages a backend is sending: at most `n` in flight at once, across all the batches it
/// is sending (several lanes hand it batches together), and at most `n` of one batch begun.
///
/// - Unbounded, a batch of 500 opened 500 connections, and all but the few the pool kept were
///   closed after one request each; a provider also refuses a client that opens too many at
///   once.
/// - A message is begun (its request or email built) only when it may go: a batch waiting for
///   its turn holds its messages as they were handed over, not as built requests. The memory of
///   a backend then grows with `n`, not with the size of the batches it is given.
#[derive(Debug)]
pub struct InFlight {
    slots: Semaphore,
    n: usize,
}

impl InFlight {
    pub fn new(n: usize) -> InFlight {
        let n = n.max(1);
        InFlight {
            slots: Semaphore::new(n),
            n,
        }
    }

    /// Each message of `batch` sent with `send` as soon as one of the `n` places is free, in
    /// the batch's order but without waiting for the ones before it; the results in the
    /// batch's order.
    pub fn each<'a, F, Fut>(&'a self, batch: &'a [Message], send: F) -> BoxFuture<'a, Vec<Result<Receipt, SendError>>>
    where
        F: Fn(&'a Message) -> Fut + Send + Sync + 'a,
        Fut: Future<Output = Result<Receipt, SendError>> + Send + 'a,
    {
        Box::pin(async move {
            let mut results: Vec<Option<Result<Receipt, SendError>>> = (0..batch.len()).map(|_| None).collect();
            // Unordered: a slow message (a webhook endpoint that takes its whole timeout)
            // holds one place, not the start of every message behind it.
            let mut waiting = batch.iter().enumerate();
            let mut going = FuturesUnordered::new();
            for (i, m) in waiting.by_ref().take(self.n) {
                going.push(self.one(&send, i, m));
            }
            while let Some((i, result)) = going.next().await {
                if let Some(place) = results.get_mut(i) {
                    *place = Some(result);
                }
                if let Some((i, m)) = waiting.next() {
                    going.push(self.one(&send, i, m));
                }
            }
            results
                .into_iter()
                .map(|r| {
                    // Every message is answered above; this only keeps the count right.
                    r.unwrap_or_else(|| {
                        Err(SendError::Transient {
                            message: "no result".into(),
                            retry_after: None,
                        })
                    })
                })
                .collect()
        })
    }

    /// Message `i` sent once one of the places is free.
    async fn one<'a, F, Fut>(&'a self, send: &F, i: usize, m: &'a Message) -> (usize, Result<Receipt, SendError>)
    where
        F: Fn(&'a Message) -> Fut,
        Fut: Future<Output = Result<Receipt, SendError>>,
    {
        // Never closed, so a permit always comes.
        let _slot = self.slots.acquire().await.ok();
        (i, send(m).await)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::*;
    use crate::channels::sample_sms;

    /// Two batches handed over together: never more than `n` messages begun and unanswered at
    /// once, each answer in its own batch's order, and a slow message does not hold up the
    /// ones behind it.
    #[tokio::test(start_paused = true)]
    async fn at_most_n_begun_across_batches_answers_in_order() {
        let in_flight = InFlight::new(3);
        let (begun, most) = (AtomicUsize::new(0), AtomicUsize::new(0));
        let send = |m: &Message| {
            let (begun, most) = (&begun, &most);
            let key = m.idempotency_key.clone();
            async move {
                let now = begun.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                // The first message of each batch is slow.
                let slow = key.contains(".announced.0.");
                tokio::time::sleep(Duration::from_millis(if slow { 1_000 } else { 10 })).await;
                begun.fetch_sub(1, Ordering::SeqCst);
                Ok(Receipt {
                    provider_id: Some(key),
                    ..Receipt::default()
                })
            }
        };
        let a = sample_sms(20);
        let mut b = sample_sms(20);
        for m in &mut b {
            m.idempotency_key = format!("b.{}", m.idempotency_key);
        }
        let started = tokio::time::Instant::now();
        let (ra, rb) = tokio::join!(in_flight.each(&a, send), in_flight.each(&b, send));
        assert_eq!(most.load(Ordering::SeqCst), 3);
        for (results, batch) in [(ra, &a), (rb, &b)] {
            let ids: Vec<String> = results.into_iter().map(|r| r.unwrap().provider_id.unwrap()).collect();
            let keys: Vec<String> = batch.iter().map(|m| m.idempotency_key.clone()).collect();
            assert_eq!(ids, keys);
        }
        // Two slow messages hold two places for a second; the other 38 pass through the
        // third (and the first two once free) meanwhile, so the whole takes about a second,
        // not two and more.
        assert!(
            started.elapsed() < Duration::from_millis(1_500),
            "{:?}",
            started.elapsed()
        );
    }
}
