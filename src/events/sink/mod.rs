//! Event sinks: where events go, each with its own bounded queue and task, so that a slow sink
//! never slows requests or the other sinks.
//!
//! Remote sinks (webhook, NATS) share one driver: every event is appended to the sink's disk spool
//! first, and batches are delivered from the spool, retried with capped exponential backoff while
//! the receiver is down. Delivery is at least once; the spool keeps what is not yet acknowledged
//! across restarts.

pub mod jsonl;
pub mod nats;
pub mod spool;
pub mod webhook;

use super::model::CloudEvent;
use crate::metrics::{EventOutcome, SinkMetrics};
use async_trait::async_trait;
use rand::Rng;
use spool::Spool;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, watch};

/// A receiver that takes batches of events and acknowledges them.
#[async_trait]
pub trait Deliver: Send {
    /// Delivers the whole batch or fails; a failed batch is retried whole.
    async fn deliver(&mut self, batch: &[CloudEvent]) -> Result<(), String>;
}

const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

fn age_secs(e: &CloudEvent) -> Option<f64> {
    let t = humantime::parse_rfc3339(&e.time).ok()?;
    SystemTime::now()
        .duration_since(t)
        .ok()
        .or(Some(Duration::ZERO))
        .map(|d| d.as_secs_f64())
        .filter(|_| t > UNIX_EPOCH)
}

/// Runs a remote sink until shutdown: queue -> spool -> receiver.
pub async fn run_remote<D: Deliver>(
    name: String,
    mut deliver: D,
    mut rx: mpsc::Receiver<Arc<CloudEvent>>,
    mut spool: Spool,
    batch: usize,
    metrics: SinkMetrics,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut backoff = BACKOFF_MIN;
    let spool_in = |spool: &mut Spool, e: &CloudEvent| match spool.append(&e.to_json_line()) {
        Ok(true) => {}
        Ok(false) => metrics.count(e.kind, EventOutcome::Dropped),
        Err(err) => {
            metrics.count(e.kind, EventOutcome::Dropped);
            tracing::error!(sink = %name, "cannot spool event: {err}");
        }
    };
    loop {
        if *shutdown.borrow() {
            break;
        }
        while let Ok(e) = rx.try_recv() {
            spool_in(&mut spool, &e);
        }
        let _ = spool.flush();
        metrics.queue_depth.set(rx.len() as i64);
        metrics.spool_bytes.set(spool.pending_bytes() as i64);

        if spool.is_empty() {
            tokio::select! {
                e = rx.recv() => match e {
                    Some(e) => spool_in(&mut spool, &e),
                    None => break,
                },
                _ = shutdown.changed() => break,
            }
            continue;
        }
        let (events, to) = match spool.peek(batch) {
            Ok(x) => x,
            Err(err) => {
                tracing::error!(sink = %name, "cannot read the spool: {err}");
                tokio::time::sleep(BACKOFF_MAX).await;
                continue;
            }
        };
        let outcome = if events.is_empty() {
            Ok(())
        } else {
            deliver.deliver(&events).await
        };
        match outcome {
            Ok(()) => {
                if let Err(err) = spool.commit(to) {
                    tracing::error!(sink = %name, "cannot record delivery in the spool: {err}");
                }
                for e in &events {
                    metrics.count(e.kind, EventOutcome::Delivered);
                    if let Some(age) = age_secs(e) {
                        metrics.delivery.observe(age);
                    }
                }
                backoff = BACKOFF_MIN;
            }
            Err(err) => {
                tracing::warn!(sink = %name, retry_in_ms = backoff.as_millis() as u64, "delivery failed, events stay spooled: {err}");
                // Full jitter: a fleet of proxies must not hammer a recovering receiver in step.
                let wait = backoff.mul_f64(rand::thread_rng().gen_range(0.5..1.0));
                backoff = (backoff * 2).min(BACKOFF_MAX);
                let sleep = tokio::time::sleep(wait);
                tokio::pin!(sleep);
                loop {
                    tokio::select! {
                        _ = &mut sleep => break,
                        e = rx.recv() => match e {
                            Some(e) => spool_in(&mut spool, &e),
                            None => break,
                        },
                        _ = shutdown.changed() => {
                            while let Ok(e) = rx.try_recv() {
                                spool_in(&mut spool, &e);
                            }
                            let _ = spool.flush();
                            return;
                        }
                    }
                }
            }
        }
    }
    // Shutting down: whatever is still queued goes to disk for the next process.
    while let Ok(e) = rx.try_recv() {
        spool_in(&mut spool, &e);
    }
    let _ = spool.flush();
    metrics.spool_bytes.set(spool.pending_bytes() as i64);
}
