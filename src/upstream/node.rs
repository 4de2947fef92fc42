//! What usher learns about one upstream address: its load (in flight, peak-EWMA estimate), its
//! passive health (ejections, probes), its active checks and its latency figures. It lasts as long
//! as some configuration lists the address: a reload that keeps the address keeps the node, as
//! pingora-load-balancing keeps a backend's health across `Backends::update` by the backend's hash.
//!
//! Reads on the request path are atomics; the estimate and the passive rules sit behind one short
//! lock. What a node does not know is which pools it is in: that is the configuration's, and it
//! changes with each one (`mod.rs`).

use super::active::ActiveState;
use super::ewma::PeakEwma;
use super::health::{Health, EJECTED, HEALTHY, PROBING};
use super::outlier::{Reason, State};
use crate::stats::LatencyStats;
use parking_lot::Mutex;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What a snapshot keeps of an upstream's health: whether it is out, why, for how much longer,
/// and how many times it was ejected (which sets the length of the next ejection).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct HealthRecord {
    /// 0 healthy, 1 probing, 2 ejected.
    pub state: u8,
    pub reason: Option<Reason>,
    pub remaining_ms: u64,
    pub ejections: u32,
}

pub struct Node {
    addr: SocketAddr,
    /// The address's interned id, for journey steps; `u16::MAX` when the table was full.
    label: u16,
    pub(crate) in_flight: AtomicU32,
    /// Passive health judged on all of its requests.
    pub(crate) health: Health,
    /// Health checks currently failing among the pools that check this upstream.
    checks_down: AtomicU32,
    /// When it was last chosen, in milliseconds since the registry's base.
    pub(crate) last_pick_ms: AtomicU64,
    pub(crate) ewma: Mutex<PeakEwma>,
    checks: Mutex<Vec<(Arc<str>, ActiveState)>>,
    stats: LatencyStats,
}

impl Node {
    pub(crate) fn new(addr: SocketAddr, label: u16, now: Instant) -> Node {
        Node {
            addr,
            label,
            in_flight: AtomicU32::new(0),
            health: Health::new(now),
            checks_down: AtomicU32::new(0),
            last_pick_ms: AtomicU64::new(0),
            ewma: Mutex::new(PeakEwma::new(now)),
            checks: Mutex::new(Vec::new()),
            stats: LatencyStats::default(),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn label(&self) -> u16 {
        self.label
    }

    /// Attempts and upstream time, for the admin API.
    pub fn stats(&self) -> &LatencyStats {
        &self.stats
    }

    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    pub(crate) fn active_up(&self) -> bool {
        self.checks_down.load(Ordering::Relaxed) == 0
    }

    /// Healthy by both active checks and passive health.
    pub(crate) fn serving(&self) -> bool {
        self.active_up() && self.health.healthy()
    }

    /// Its passive health, for a snapshot; `None` when there is nothing worth keeping.
    pub fn health_record(&self, now: Instant) -> Option<HealthRecord> {
        let passive = self.health.passive.lock();
        let ejections = passive.ejections();
        let (state, reason, remaining_ms) = match passive.state() {
            State::Healthy => (HEALTHY, None, 0),
            State::Probing { reason, .. } => (PROBING, Some(reason), 0),
            State::Ejected { until, reason } => (
                EJECTED,
                Some(reason),
                crate::time::millis(until.saturating_duration_since(now)),
            ),
        };
        (ejections > 0 || state != HEALTHY).then_some(HealthRecord {
            state,
            reason,
            remaining_ms,
            ejections,
        })
    }

    /// Puts back what a snapshot kept, unless this process has already learned something about
    /// the upstream (an ejection of its own).
    pub fn restore_health(&self, r: &HealthRecord, now: Instant) {
        if self.health.passive.lock().ejections() > 0 {
            return;
        }
        let reason = r.reason.unwrap_or(Reason::FailedProbe);
        let state = match r.state {
            EJECTED => State::Ejected {
                until: now
                    + Duration::from_millis(
                        r.remaining_ms
                            .min(crate::time::millis(Duration::from_secs(365 * 24 * 3600))),
                    ),
                reason,
            },
            PROBING => State::Probing {
                successes: 0,
                reason,
            },
            _ => State::Healthy,
        };
        self.health.restore(state, r.ejections);
    }

    /// The pools whose checks now cover this upstream. A pool that stays keeps its rise/fall
    /// state; one that is gone (or stopped checking) no longer holds the upstream down.
    pub(crate) fn set_checked_by(&self, pools: &[Arc<str>]) {
        let mut checks = self.checks.lock();
        checks.retain(|(p, _)| pools.contains(p));
        for p in pools {
            if !checks.iter().any(|(q, _)| q == p) {
                checks.push((p.clone(), ActiveState::default()));
            }
        }
        let down = checks.iter().filter(|(_, s)| !s.is_up()).count() as u32;
        self.checks_down.store(down, Ordering::Relaxed);
    }

    /// Records one check by `pool`; the new state when it changed. A pool that no longer checks
    /// this upstream (a round still running when the configuration changed) is ignored.
    pub(crate) fn record_check(&self, pool: &str, ok: bool, rise: u32, fall: u32) -> Option<bool> {
        let mut checks = self.checks.lock();
        let (_, state) = checks.iter_mut().find(|(p, _)| &**p == pool)?;
        let changed = state.record(ok, rise, fall)?;
        let down = checks.iter().filter(|(_, s)| !s.is_up()).count() as u32;
        self.checks_down.store(down, Ordering::Relaxed);
        Some(changed)
    }
}
