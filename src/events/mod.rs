//! Follow-up events: who suffered, where they stopped, and what to do about it.
//!
//! The engine decides that something happened (a customer degraded, a funnel abandoned, an upstream
//! ejected) and hands a [`CloudEvent`] to [`Events::emit`]. That is the only thing the request path
//! does: a cooldown check, then a non-blocking `try_send` into each sink's bounded queue. Sinks run on
//! their own tasks (`sink/`), so a slow or unreachable receiver never slows requests or the other
//! sinks; whatever no bound can hold is counted in `usher_events_total{outcome="dropped"}`.
//!
//! Pure rules live beside it: `funnels` (abandonment), `cooldown` (no spam), `slo` (burn rates).

pub mod cooldown;
pub mod funnels;
pub mod model;
pub mod sink;
pub mod slo;

use crate::config::{Config, SinkKind};
use crate::metrics::{EventMetrics, EventOutcome};
use cooldown::Cooldown;
use funnels::Funnels;
use model::CloudEvent;
use parking_lot::Mutex;
use slo::SloTracker;
use std::collections::VecDeque;
use std::sync::Arc;
use tokio::sync::{mpsc, watch};

pub use model::EventType;

/// Most customers with a running cooldown; see [`Cooldown`].
const COOLDOWN_MAX: usize = 1_000_000;

struct SinkQueue {
    tx: mpsc::Sender<Arc<CloudEvent>>,
}

pub struct Events {
    source: String,
    sinks: Vec<SinkQueue>,
    /// Receivers waiting for [`Events::run`], which takes them once.
    receivers: Mutex<Option<Vec<mpsc::Receiver<Arc<CloudEvent>>>>>,
    recent: Mutex<VecDeque<Arc<CloudEvent>>>,
    recent_max: usize,
    cooldown: Cooldown,
    pub funnels: Funnels,
    pub slo: SloTracker,
    config: Arc<Config>,
}

impl Events {
    pub fn new(config: &Config) -> Self {
        let ev = &config.events;
        let (sinks, receivers) = ev
            .sinks
            .iter()
            .map(|s| {
                let (tx, rx) = mpsc::channel(s.queue);
                (SinkQueue { tx }, rx)
            })
            .unzip();
        Events {
            source: ev.source.clone(),
            sinks,
            receivers: Mutex::new(Some(receivers)),
            recent: Mutex::new(VecDeque::with_capacity(ev.recent.min(1024))),
            recent_max: ev.recent,
            cooldown: Cooldown::new(ev.cooldown, COOLDOWN_MAX),
            funnels: Funnels::new(config.funnels.clone(), ev.funnel_track_max),
            slo: SloTracker::new(
                &config.routes.iter().map(|r| r.slo).collect::<Vec<_>>(),
                ev.slo_min_requests,
            ),
            config: Arc::new(config.clone()),
        }
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// Hands `e` to every sink, unless it is about a customer whose cooldown for this type is
    /// running. Never blocks. Returns whether the event went out.
    pub fn emit(&self, e: CloudEvent, now_ms: u64, metrics: &EventMetrics) -> bool {
        if e.kind.about_customer() && !self.cooldown.allow(e.kind, &e.subject, now_ms) {
            metrics.suppressed(e.kind);
            return false;
        }
        let e = Arc::new(e);
        for (i, s) in self.sinks.iter().enumerate() {
            let outcome = match s.tx.try_send(e.clone()) {
                Ok(()) => EventOutcome::Queued,
                Err(_) => EventOutcome::Dropped,
            };
            if let Some(m) = metrics.sink(i) {
                m.count(e.kind, outcome);
                m.queue_depth
                    .set((s.tx.max_capacity() - s.tx.capacity()) as i64);
            }
        }
        if self.recent_max > 0 {
            let mut r = self.recent.lock();
            if r.len() >= self.recent_max {
                r.pop_front();
            }
            r.push_back(e);
        }
        true
    }

    /// The newest `limit` events, newest first.
    pub fn recent(&self, limit: usize) -> Vec<Arc<CloudEvent>> {
        self.recent
            .lock()
            .iter()
            .rev()
            .take(limit)
            .cloned()
            .collect()
    }

    /// Periodic housekeeping of the cooldown table.
    pub fn sweep_cooldowns(&self, now_ms: u64) {
        self.cooldown.sweep(now_ms);
    }

    /// Runs every sink until `shutdown`; the first call takes the queues, later calls return at once.
    pub async fn run(&self, metrics: &EventMetrics, shutdown: watch::Receiver<bool>) {
        let Some(receivers) = self.receivers.lock().take() else {
            return;
        };
        let mut tasks = Vec::new();
        for (i, (rx, sink)) in receivers
            .into_iter()
            .zip(&self.config.events.sinks)
            .enumerate()
        {
            let Some(m) = metrics.sink(i).cloned() else {
                continue;
            };
            let stop = shutdown.clone();
            let name = sink.name.clone();
            let spool_dir = self.config.events.spool_dir.join(&sink.name);
            let task = match &sink.kind {
                SinkKind::Jsonl {
                    path,
                    max_bytes,
                    keep,
                } => match sink::jsonl::JsonlFile::open(path, *max_bytes, *keep) {
                    Ok(f) => tokio::spawn(sink::jsonl::run(f, rx, m, stop)),
                    Err(e) => {
                        tracing::error!(sink = %name, path = %path.display(), "cannot open the events file: {e}");
                        continue;
                    }
                },
                SinkKind::Webhook {
                    url,
                    batch,
                    timeout,
                    max_spool_bytes,
                } => {
                    let Some(spool) = open_spool(&name, &spool_dir, *max_spool_bytes) else {
                        continue;
                    };
                    let d = sink::webhook::Webhook::new(url.clone(), *timeout);
                    tokio::spawn(sink::run_remote(name, d, rx, spool, *batch, m, stop))
                }
                SinkKind::Nats {
                    url,
                    stream,
                    subject,
                    timeout,
                    max_spool_bytes,
                } => {
                    let Some(spool) = open_spool(&name, &spool_dir, *max_spool_bytes) else {
                        continue;
                    };
                    let d = sink::nats::Nats::new(
                        url.clone(),
                        stream.clone(),
                        subject.clone(),
                        *timeout,
                    );
                    tokio::spawn(sink::run_remote(name, d, rx, spool, 100, m, stop))
                }
            };
            tasks.push(task);
        }
        for t in tasks {
            let _ = t.await;
        }
    }
}

fn open_spool(name: &str, dir: &std::path::Path, max: u64) -> Option<sink::spool::Spool> {
    match sink::spool::Spool::open(dir, max) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::error!(sink = %name, dir = %dir.display(), "cannot open the spool, the sink is off: {e}");
            None
        }
    }
}
