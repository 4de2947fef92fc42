//! Follow-up events: who suffered, where they stopped, and what to do about it.
//!
//! The engine decides that something happened (a customer degraded, a funnel abandoned, an upstream
//! ejected) and hands a [`CloudEvent`] to [`Events::emit`]. That is the only thing the request path
//! does: a cooldown check, then a non-blocking `try_send` into each sink's bounded queue. Sinks run on
//! their own tasks (`sink/`), so a slow or unreachable receiver never slows requests or the other
//! sinks; whatever no bound can hold is counted in `usher_events_total{outcome="dropped"}`.
//!
//! This is state that outlasts configurations: the sinks' queues, the recent events, cooldowns and
//! funnel progress. A reload hands the new sink settings to [`Events::reconcile`]: a sink whose
//! settings did not change keeps its queue; a changed or removed one is retired (it stops
//! delivering, writes whatever reaches its queue to its file or spool, and only then does its
//! successor open them), so nothing is lost. Rules that decide are pure and beside it: `funnels`
//! (abandonment), `cooldown` (no spam), `slo` (burn rates).

pub mod cooldown;
pub mod counters;
pub mod funnels;
pub mod model;
pub mod sink;
pub mod slo;

use crate::config::SinkConfig;
use arc_swap::ArcSwap;
use cooldown::Cooldown;
use counters::{EventCounters, EventOutcome, SinkMetrics};
use funnels::Funnels;
use model::CloudEvent;
use parking_lot::Mutex;
use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch, Notify};

pub use model::EventType;

/// Most customers with a running cooldown; see [`Cooldown`].
const COOLDOWN_MAX: usize = 1_000_000;
/// A retired sink waits this long for the last event still on its way to its queue.
pub(crate) const DRAIN_WAIT: Duration = Duration::from_secs(2);

/// One sink's queue, as the request path sees it.
pub struct SinkQueue {
    name: String,
    config: SinkConfig,
    spool_dir: PathBuf,
    tx: mpsc::Sender<Arc<CloudEvent>>,
    metrics: SinkMetrics,
}

/// A sink whose queue exists and whose task is still to be started.
struct Pending {
    config: SinkConfig,
    spool_dir: PathBuf,
    rx: mpsc::Receiver<Arc<CloudEvent>>,
    metrics: SinkMetrics,
}

/// How the configuration in force lets events out.
#[derive(Debug, Clone, Copy)]
pub struct Policy<'a> {
    /// At most one event of a type about a customer per this long.
    pub cooldown: Duration,
    /// Events kept for `GET /events`.
    pub recent: usize,
    /// Events of one type let out per second, at most (a token bucket holding one second's worth);
    /// the rest are suppressed and counted. 0: no limit.
    pub budget_per_sec: f64,
    /// The `source` of the events usher raises about itself.
    pub source: &'a str,
}

/// One type's budget, and what it suppressed since it last said so.
#[derive(Debug, Clone, Copy, Default)]
struct Budget {
    tokens: f64,
    at_ms: u64,
    started: bool,
    suppressed: u64,
    reported_ms: Option<u64>,
}

/// A flood is reported at most this often per type.
const BUDGET_REPORT_EVERY_MS: u64 = 60_000;

pub struct Events {
    sinks: ArcSwap<Vec<Arc<SinkQueue>>>,
    budgets: Mutex<[Budget; EventType::ALL.len()]>,
    pending: Mutex<Vec<Pending>>,
    wake: Notify,
    closed: AtomicBool,
    recent: Mutex<VecDeque<Arc<CloudEvent>>>,
    cooldown: Cooldown,
    pub funnels: Funnels,
    counters: EventCounters,
}

/// What [`Events::forget_customer`] took out.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Forgotten {
    /// Funnels the customer was in.
    pub funnels: usize,
    /// Their finished journeys in the funnel history.
    pub funnel_history: usize,
    pub cooldowns: usize,
    /// Events about them in the recent-events ring (`GET /events`).
    pub recent_events: usize,
}

impl Events {
    pub fn new(registry: &prometheus::Registry) -> Self {
        Events {
            sinks: ArcSwap::from_pointee(Vec::new()),
            budgets: Mutex::new([Budget::default(); EventType::ALL.len()]),
            pending: Mutex::new(Vec::new()),
            wake: Notify::new(),
            closed: AtomicBool::new(false),
            recent: Mutex::new(VecDeque::new()),
            cooldown: Cooldown::new(COOLDOWN_MAX),
            funnels: Funnels::new(),
            counters: EventCounters::new(registry),
        }
    }

    pub fn cooldown(&self) -> &Cooldown {
        &self.cooldown
    }

    /// Forgets what is kept here about customer `id`: funnel progress, cooldowns and the recent
    /// events about them. Events already handed to sinks are the receivers' to erase.
    /// Forgets customer `id`, whose events were raised about `subject` (its pseudonym, or `id`).
    pub fn forget_customer(&self, id: &str, subject: &str) -> Forgotten {
        self.forget_customer_where(|c| c == id, subject)
    }

    /// As [`Self::forget_customer`], for the customers `is` holds for: someone usher knows only by
    /// a pseudonym now (evicted from the store, still in a funnel or the ring).
    pub fn forget_customer_where(&self, is: impl Fn(&str) -> bool, subject: &str) -> Forgotten {
        let (funnels, funnel_history) = self.funnels.forget_where(is);
        let mut recent = self.recent.lock();
        let before = recent.len();
        recent.retain(|e| e.subject != subject);
        Forgotten {
            funnels,
            funnel_history,
            cooldowns: self.cooldown.forget(subject),
            recent_events: before - recent.len(),
        }
    }

    /// Names of the sinks in force.
    pub fn sink_names(&self) -> Vec<String> {
        self.sinks.load().iter().map(|s| s.name.clone()).collect()
    }

    /// Puts `configs` in force: an unchanged sink keeps its queue, a new or changed one gets a new
    /// queue at once (events emitted from now on go there) and its task is started by
    /// [`Self::run`]; what is replaced or removed is retired there.
    pub fn reconcile(&self, configs: &[SinkConfig], spool_dir: &Path) {
        if self.closed.load(Ordering::Acquire) {
            return;
        }
        let current = self.sinks.load_full();
        let mut pending = Vec::new();
        let next: Vec<Arc<SinkQueue>> = configs
            .iter()
            .map(|c| {
                let dir = spool_dir.join(&c.name);
                if let Some(q) = current
                    .iter()
                    .find(|q| q.config == *c && q.spool_dir == dir)
                {
                    return q.clone();
                }
                let (tx, rx) = mpsc::channel(c.queue);
                let metrics = self.counters.sink(&c.name);
                pending.push(Pending {
                    config: c.clone(),
                    spool_dir: dir.clone(),
                    rx,
                    metrics: metrics.clone(),
                });
                Arc::new(SinkQueue {
                    name: c.name.clone(),
                    config: c.clone(),
                    spool_dir: dir,
                    tx,
                    metrics,
                })
            })
            .collect();
        self.pending.lock().extend(pending);
        self.sinks.store(Arc::new(next));
        self.wake.notify_one();
    }

    /// Hands `e` to every sink, unless it is about a customer whose cooldown for this type is
    /// running, or its type's budget is spent; keeps it among the recent ones. Never blocks.
    /// Returns whether the event went out.
    pub fn emit(&self, e: CloudEvent, now_ms: u64, p: &Policy<'_>) -> bool {
        if e.kind.about_customer() && !self.cooldown.allow(e.kind, &e.subject, now_ms, p.cooldown) {
            self.counters.suppressed(e.kind);
            return false;
        }
        if e.kind != EventType::BudgetExhausted {
            if let Some(flood) = self.spend(e.kind, now_ms, p.budget_per_sec) {
                self.counters.suppressed(e.kind);
                if let Some(suppressed) = flood {
                    let report = CloudEvent::new(
                        p.source,
                        EventType::BudgetExhausted,
                        e.kind.as_str(),
                        now_ms,
                        "",
                        serde_json::json!({
                            "type": e.kind.as_str(),
                            "budget_per_second": p.budget_per_sec,
                            "suppressed": suppressed,
                        }),
                    );
                    self.send(report, p.recent);
                }
                return false;
            }
        }
        self.send(e, p.recent);
        true
    }

    /// Takes one event of `kind` from its budget. `None`: it may go out. `Some(report)`: it must
    /// not; `report` is `Some(suppressed so far)` when the flood is to be reported now.
    fn spend(&self, kind: EventType, now_ms: u64, per_sec: f64) -> Option<Option<u64>> {
        if per_sec <= 0.0 {
            return None;
        }
        let mut all = self.budgets.lock();
        let b = &mut all[kind as usize];
        if !b.started {
            *b = Budget {
                tokens: per_sec,
                at_ms: now_ms,
                started: true,
                ..Budget::default()
            };
        }
        let dt = now_ms.saturating_sub(b.at_ms) as f64 / 1000.0;
        b.tokens = (b.tokens + dt * per_sec).min(per_sec);
        b.at_ms = b.at_ms.max(now_ms);
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            return None;
        }
        b.suppressed += 1;
        let due = b
            .reported_ms
            .is_none_or(|t| now_ms.saturating_sub(t) >= BUDGET_REPORT_EVERY_MS);
        if !due {
            return Some(None);
        }
        b.reported_ms = Some(now_ms);
        Some(Some(std::mem::take(&mut b.suppressed)))
    }

    fn send(&self, e: CloudEvent, recent: usize) {
        let e = Arc::new(e);
        for s in self.sinks.load().iter() {
            if !sink::takes(&s.config, &e) {
                continue;
            }
            let outcome = match s.tx.try_send(e.clone()) {
                Ok(()) => EventOutcome::Queued,
                Err(_) => EventOutcome::Dropped,
            };
            s.metrics.count(e.kind, outcome);
            s.metrics
                .queue_depth
                .set((s.tx.max_capacity() - s.tx.capacity()) as i64);
        }
        if recent > 0 {
            let mut r = self.recent.lock();
            while r.len() >= recent {
                r.pop_front();
            }
            r.push_back(e);
        }
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
    pub fn sweep_cooldowns(&self, now_ms: u64, period: Duration) {
        self.cooldown.sweep(now_ms, period);
    }

    /// No more events: every sink is retired (writes what is queued to its file or spool) and
    /// [`Self::run`] returns once they are done. For the end of the process.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.sinks.store(Arc::new(Vec::new()));
        self.wake.notify_one();
    }

    /// Runs the sinks: starts each new one (after the one it replaces has finished with its file or
    /// spool), retires replaced and removed ones, and returns after [`Self::close`] once every sink
    /// has written out what it held.
    pub async fn run(&self) {
        let mut running: HashMap<String, (tokio::task::JoinHandle<()>, watch::Sender<bool>)> =
            HashMap::new();
        let mut retiring: Vec<tokio::task::JoinHandle<()>> = Vec::new();
        loop {
            let wake = self.wake.notified();
            let started: Vec<Pending> = std::mem::take(&mut *self.pending.lock());
            for p in started {
                let name = p.config.name.clone();
                let before = running.remove(&name).map(|(h, stop)| {
                    let _ = stop.send(true);
                    h
                });
                let (stop_tx, stop_rx) = watch::channel(false);
                let task = tokio::spawn(async move {
                    if let Some(before) = before {
                        let _ = before.await;
                    }
                    sink::run(p.config, p.spool_dir, p.rx, p.metrics, stop_rx).await;
                });
                running.insert(name, (task, stop_tx));
            }
            let names = self.sink_names();
            let gone: Vec<String> = running
                .keys()
                .filter(|n| !names.contains(n))
                .cloned()
                .collect();
            for n in gone {
                if let Some((h, stop)) = running.remove(&n) {
                    let _ = stop.send(true);
                    retiring.push(h);
                }
            }
            retiring.retain(|h| !h.is_finished());
            if self.closed.load(Ordering::Acquire) && running.is_empty() {
                break;
            }
            wake.await;
        }
        for h in retiring {
            let _ = h.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SinkKind;

    fn sink(name: &str, path: &str) -> SinkConfig {
        SinkConfig {
            name: name.to_string(),
            queue: 10,
            takes: Default::default(),
            kind: SinkKind::Jsonl {
                path: PathBuf::from(path),
                max_bytes: 1 << 20,
                keep: 1,
            },
        }
    }

    #[test]
    fn an_unchanged_sink_keeps_its_queue_and_a_changed_one_gets_a_new_one() {
        let ev = Events::new(&prometheus::Registry::new());
        let spool = Path::new("spool");
        ev.reconcile(&[sink("a", "a.jsonl"), sink("b", "b.jsonl")], spool);
        let first = ev.sinks.load_full();
        assert_eq!(ev.pending.lock().len(), 2);
        ev.reconcile(&[sink("b", "b2.jsonl"), sink("a", "a.jsonl")], spool);
        let second = ev.sinks.load_full();
        assert!(Arc::ptr_eq(&first[0], &second[1]), "a kept its queue");
        assert!(
            !Arc::ptr_eq(&first[1], &second[0]),
            "b changed: a new queue"
        );
        assert_eq!(
            ev.pending.lock().len(),
            3,
            "only b's new queue waits to be started"
        );
        ev.reconcile(&[sink("a", "a.jsonl")], Path::new("elsewhere"));
        assert!(
            !Arc::ptr_eq(&first[0], &ev.sinks.load_full()[0]),
            "a new spool folder is a change"
        );
        ev.close();
        assert!(ev.sink_names().is_empty());
    }

    fn event(kind: EventType, subject: &str, at: u64) -> CloudEvent {
        CloudEvent::new("usher://t", kind, subject, at, "", serde_json::json!({}))
    }

    #[test]
    fn a_flood_is_held_to_the_budget_counted_and_reported_once_a_minute() {
        let registry = prometheus::Registry::new();
        let ev = Events::new(&registry);
        let p = Policy {
            cooldown: Duration::from_secs(600),
            recent: 100_000,
            budget_per_sec: 10.0,
            source: "usher://t",
        };
        // 1000 customers failing within one millisecond: ten go out.
        let out = (0..1000)
            .filter(|i| {
                ev.emit(
                    event(EventType::RequestFailed, &format!("c{i}"), 1_000),
                    1_000,
                    &p,
                )
            })
            .count();
        assert_eq!(out, 10);
        let reports: Vec<_> = ev
            .recent(100_000)
            .into_iter()
            .filter(|e| e.kind == EventType::BudgetExhausted)
            .collect();
        assert_eq!(reports.len(), 1, "one report, not one per suppressed event");
        assert_eq!(reports[0].subject, "usher.customer.request_failed");
        // Another type has its own budget.
        assert!(ev.emit(event(EventType::UpstreamEjected, "u", 1_000), 1_000, &p));
        // The bucket refills at the budget's rate: half a second later, five more.
        let later = (0..100)
            .filter(|i| {
                ev.emit(
                    event(EventType::RequestFailed, &format!("d{i}"), 1_500),
                    1_500,
                    &p,
                )
            })
            .count();
        assert_eq!(later, 5);
        // Still flooding a minute on: reported again, with what was suppressed meanwhile.
        for i in 0..100 {
            ev.emit(
                event(EventType::RequestFailed, &format!("e{i}"), 61_000),
                61_000,
                &p,
            );
        }
        let reports: Vec<_> = ev
            .recent(100_000)
            .into_iter()
            .filter(|e| e.kind == EventType::BudgetExhausted)
            .collect();
        assert_eq!(reports.len(), 2);
        // Newest first: the first report counted the one that started the flood; the second,
        // everything suppressed after it up to and including the one that made it due.
        assert_eq!(reports[1].data["suppressed"], 1);
        assert_eq!(reports[0].data["suppressed"], 989 + 95 + 1);
        let text = {
            let mut buf = Vec::new();
            prometheus::Encoder::encode(
                &prometheus::TextEncoder::new(),
                &registry.gather(),
                &mut buf,
            )
            .unwrap();
            String::from_utf8(buf).unwrap()
        };
        let suppressed = text
            .lines()
            .find(|l| {
                l.contains("outcome=\"suppressed\"") && l.contains("usher.customer.request_failed")
            })
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok());
        assert_eq!(suppressed, Some((990 + 95 + 90) as f64));
        // No limit with 0.
        let free = Policy {
            budget_per_sec: 0.0,
            ..p
        };
        assert!((0..1000).all(|i| ev.emit(
            event(EventType::Rerouted, &format!("f{i}"), 70_000),
            70_000,
            &free
        )));
    }
}
