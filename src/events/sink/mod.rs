//! Event sinks: where events go, each with its own bounded queue and task, so that a slow sink
//! never slows requests or the other sinks.
//!
//! Remote sinks (webhook, NATS) share one driver: every event is appended to the sink's disk spool
//! first, and batches are delivered from the spool, retried with capped exponential backoff while
//! the receiver is down. Delivery is at least once; the spool keeps what is not yet acknowledged
//! across restarts. Events keep reaching the spool while a batch is on its way or waiting out a
//! backoff, and the spool is written through within a second, so a `kill -9` loses at most the
//! last second. A batch the receiver refuses outright (a 400: it will never take it) is not
//! retried: it goes to the sink's dead-letter file beside the spool, counted, and what is behind it
//! keeps flowing.
//!
//! A sink is stopped by its own signal, not the process's: when a reload retires it, or once the
//! requests in flight at shutdown are done. Then it stops delivering, takes every event still on its
//! way (its queue closes when the last sender is gone), writes them to its file or spool, and ends;
//! its successor opens the same file or spool only after that.

pub mod jsonl;
pub mod nats;
pub mod spool;
pub mod webhook;

use super::counters::{EventOutcome, SinkMetrics};
use super::model::CloudEvent;
use super::DRAIN_WAIT;
use crate::config::{SinkConfig, SinkKind};
use crate::defaults;
use async_trait::async_trait;
use rand::Rng;
use spool::Spool;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, watch};

/// Why a batch was not delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// Worth trying again: the receiver is down, slow, overloaded or asks to come back later.
    Retry(String),
    /// The receiver will never take this batch (a 4xx but 408 and 429), or there is no body to
    /// send it in (a webhook template failed on it): dead-lettered.
    Reject(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Retry(m) | Failure::Reject(m) => f.write_str(m),
        }
    }
}

/// A receiver that takes batches of events and acknowledges them.
#[async_trait]
pub trait Deliver: Send {
    /// Delivers the whole batch or fails; a batch that failed to be retried is retried whole.
    async fn deliver(&mut self, batch: &[CloudEvent]) -> Result<(), Failure>;
}

const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// A spool another process still holds (the old one, during a graceful upgrade) is tried again
/// this often; events wait in the sink's queue meanwhile.
const SPOOL_BUSY_RETRY: Duration = Duration::from_millis(200);
/// How long a stopped sink still waits for a spool held by another process; well inside the time
/// usher gives its sinks to close (`crate::tasks`), so that what it cannot spool is still counted.
const SPOOL_BUSY_GIVE_UP: Duration = Duration::from_secs(5);

fn age_secs(e: &CloudEvent) -> Option<f64> {
    let t = humantime::parse_rfc3339(&e.time).ok()?;
    SystemTime::now()
        .duration_since(t)
        .ok()
        .or(Some(Duration::ZERO))
        .map(|d| d.as_secs_f64())
        .filter(|_| t > UNIX_EPOCH)
}

/// Runs one sink until it is stopped and has written out what reached it.
pub async fn run(
    config: SinkConfig,
    spool_dir: PathBuf,
    rx: mpsc::Receiver<Arc<CloudEvent>>,
    metrics: SinkMetrics,
    stop: watch::Receiver<bool>,
) {
    let name = config.name.clone();
    match config.kind {
        SinkKind::Jsonl {
            path,
            max_bytes,
            keep,
        } => match jsonl::JsonlFile::open(&path, max_bytes, keep) {
            Ok(f) => jsonl::run(f, rx, metrics, stop).await,
            Err(e) => {
                tracing::error!(sink = %name, path = %path.display(), "cannot open the events file, the sink is off: {e}");
                count_lost(rx, &metrics).await;
            }
        },
        SinkKind::Webhook {
            url,
            batch,
            timeout,
            max_spool_bytes,
            ca,
            body,
            headers,
            authorization,
        } => {
            let d = webhook::Webhook::new(
                url,
                timeout,
                ca.as_deref().map(|c| c.as_slice()),
                webhook::Shape {
                    body,
                    headers,
                    authorization,
                },
            );
            run_remote(
                name,
                d,
                rx,
                &spool_dir,
                max_spool_bytes,
                batch,
                metrics,
                stop,
            )
            .await
        }
        SinkKind::Nats {
            url,
            stream,
            subject,
            timeout,
            max_spool_bytes,
        } => {
            let d = nats::Nats::new(url, stream, subject, timeout);
            let batch = defaults::NATS_BATCH;
            run_remote(
                name,
                d,
                rx,
                &spool_dir,
                max_spool_bytes,
                batch,
                metrics,
                stop,
            )
            .await
        }
    }
}

/// Whether the sink configured by `c` takes `e` (its `events` and `when`). A `when` that fails on
/// an event takes it, and says so: a ticket too many is better than a customer nobody calls.
pub(crate) fn takes(c: &SinkConfig, e: &CloudEvent) -> bool {
    let f = &c.takes;
    if !f.types.is_empty() && !f.types.contains(&e.kind) {
        return false;
    }
    match f.when.as_deref().map(|w| w.eval(e)) {
        None | Some(Ok(true)) => true,
        Some(Ok(false)) => false,
        Some(Err(err)) => {
            tracing::warn!(sink = %c.name, event = %e.id, "the sink's `when` failed on an event, which it takes: {err}");
            true
        }
    }
}

/// A sink that cannot work still takes its events off the queue, so they are counted as lost
/// rather than silently piling up.
async fn count_lost(mut rx: mpsc::Receiver<Arc<CloudEvent>>, metrics: &SinkMetrics) {
    while let Some(e) = rx.recv().await {
        metrics.count(e.kind, EventOutcome::Dropped);
    }
}

/// Takes the events still on their way to a stopped sink: until its queue closes, or nothing came
/// for [`DRAIN_WAIT`].
pub(crate) async fn drain(
    rx: &mut mpsc::Receiver<Arc<CloudEvent>>,
    mut take: impl FnMut(&CloudEvent),
) {
    while let Ok(Some(e)) = tokio::time::timeout(DRAIN_WAIT, rx.recv()).await {
        take(&e);
    }
}

/// Opens the spool, waiting while another process holds it.
async fn open_spool(
    name: &str,
    dir: &Path,
    max: u64,
    stop: &mut watch::Receiver<bool>,
) -> Option<Spool> {
    let mut told = false;
    let mut give_up: Option<tokio::time::Instant> = None;
    loop {
        match Spool::open(dir, max) {
            Ok(s) => return Some(s),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if !told {
                    tracing::info!(sink = %name, dir = %dir.display(), "the spool is held by another process (a graceful upgrade?): waiting for it");
                    told = true;
                }
            }
            Err(e) => {
                tracing::error!(sink = %name, dir = %dir.display(), "cannot open the spool, the sink is off: {e}");
                return None;
            }
        }
        if *stop.borrow() {
            // Stopped before the spool came free: wait a while longer for it, not for ever.
            let at =
                *give_up.get_or_insert_with(|| tokio::time::Instant::now() + SPOOL_BUSY_GIVE_UP);
            if tokio::time::Instant::now() >= at {
                tracing::error!(sink = %name, dir = %dir.display(), "the spool stayed held by another process; its queued events are lost");
                return None;
            }
            tokio::time::sleep(SPOOL_BUSY_RETRY).await;
        } else {
            tokio::select! {
                _ = tokio::time::sleep(SPOOL_BUSY_RETRY) => {}
                _ = stop.changed() => {}
            }
        }
    }
}

/// Runs a remote sink until stopped: queue -> spool -> receiver.
#[allow(clippy::too_many_arguments)]
pub async fn run_remote<D: Deliver>(
    name: String,
    mut deliver: D,
    mut rx: mpsc::Receiver<Arc<CloudEvent>>,
    spool_dir: &Path,
    max_spool_bytes: u64,
    batch: usize,
    metrics: SinkMetrics,
    mut stop: watch::Receiver<bool>,
) {
    let Some(mut spool) = open_spool(&name, spool_dir, max_spool_bytes, &mut stop).await else {
        count_lost(rx, &metrics).await;
        return;
    };
    let mut backoff = BACKOFF_MIN;
    let spool_in = |spool: &mut Spool, e: &CloudEvent| match spool.append(&e.to_json_line()) {
        Ok(true) => {}
        Ok(false) => metrics.count(e.kind, EventOutcome::Dropped),
        Err(err) => {
            metrics.count(e.kind, EventOutcome::Dropped);
            tracing::error!(sink = %name, "cannot spool event: {err}");
        }
    };
    // Takes what is queued and writes it through to the spool file: it is on disk from here on.
    let take_queued = |spool: &mut Spool,
                       rx: &mut mpsc::Receiver<Arc<CloudEvent>>,
                       first: Option<&CloudEvent>| {
        if let Some(e) = first {
            spool_in(spool, e);
        }
        while let Ok(e) = rx.try_recv() {
            spool_in(spool, &e);
        }
        if let Err(err) = spool.flush() {
            tracing::error!(sink = %name, "cannot write the spool: {err}");
        }
    };
    'deliver: loop {
        if *stop.borrow() {
            break;
        }
        take_queued(&mut spool, &mut rx, None);
        metrics.queue_depth.set(rx.len() as i64);
        metrics.spool_bytes.set(spool.pending_bytes() as i64);

        if spool.is_empty() {
            tokio::select! {
                e = rx.recv() => match e {
                    Some(e) => take_queued(&mut spool, &mut rx, Some(&e)),
                    None => break,
                },
                _ = stop.changed() => break,
            }
            continue;
        }
        let (events, to) = match spool.peek(batch) {
            Ok(x) => x,
            Err(err) => {
                tracing::error!(sink = %name, "cannot read the spool: {err}");
                tokio::select! {
                    _ = tokio::time::sleep(BACKOFF_MAX) => {}
                    _ = stop.changed() => {}
                }
                continue;
            }
        };
        let outcome = if events.is_empty() {
            Ok(())
        } else {
            // What arrives while the batch is on its way goes to the spool meanwhile.
            let sending = deliver.deliver(&events);
            tokio::pin!(sending);
            let mut closed = false;
            loop {
                tokio::select! {
                    r = &mut sending => break r,
                    e = rx.recv(), if !closed => match e {
                        Some(e) => take_queued(&mut spool, &mut rx, Some(&e)),
                        None => closed = true,
                    },
                }
            }
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
            Err(Failure::Reject(err)) => {
                tracing::error!(sink = %name, events = events.len(), "a batch the receiver refused, or whose body could not be made, goes to the dead letters: {err}");
                let kept = spool.dead_letter(&events);
                if let Err(e) = &kept {
                    tracing::error!(sink = %name, "cannot write the dead letters: {e}");
                }
                if let Err(e) = spool.commit(to) {
                    tracing::error!(sink = %name, "cannot record the dead letters in the spool: {e}");
                }
                let outcome = match kept {
                    Ok(true) => EventOutcome::DeadLettered,
                    _ => EventOutcome::Dropped,
                };
                for e in &events {
                    metrics.count(e.kind, outcome);
                }
                backoff = BACKOFF_MIN;
            }
            Err(Failure::Retry(err)) => {
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
                            Some(e) => take_queued(&mut spool, &mut rx, Some(&e)),
                            None => break 'deliver,
                        },
                        _ = stop.changed() => break 'deliver,
                    }
                }
            }
        }
    }
    // Stopped: whatever is queued or still on its way goes to disk for the successor.
    drain(&mut rx, |e| spool_in(&mut spool, e)).await;
    let _ = spool.flush();
    metrics.spool_bytes.set(spool.pending_bytes() as i64);
    metrics.queue_depth.set(0);
}
