//! Upstreams: their live state (load, passive and active health) and the choice of one for a request.
//!
//! Deliberately free of Pingora types and of the configuration's: a choice is an [`UpstreamId`] (a
//! position in one configuration's [`Upstreams`]), and the proxy turns it into a peer. What lasts
//! across configurations lives in [`Node`]s and the [`Registry`]; an [`Upstreams`] is one
//! configuration's membership over them. Selection, after tower's `p2c` balancer and linkerd2-proxy: everyone gets power-of-two-choices
//! over the peak-EWMA cost (`estimate x (in_flight + 1)`); protected traffic gets the single cheapest
//! healthy upstream; probing upstreams get one ordinary request at a time, and so, every
//! `sample_interval`, does a serving upstream that balancing has left idle (P2C starves an upstream
//! after one bad answer, so without samples the evidence that ejects it, or clears it, never
//! comes); when fewer than
//! `panic_below` of a pool are healthy, the whole pool is used (Envoy's panic mode), because sending
//! traffic to a doubtful upstream beats sending it nowhere. Randomness comes from the caller, so tests
//! are deterministic.

pub mod active;
pub mod budget;
pub mod checker;
pub mod ewma;
mod node;
pub mod outlier;
mod registry;

pub use crate::ids::{PoolId, UpstreamId};
pub use budget::BudgetSettings;
use budget::RetryBudget;
use ewma::cost;
pub use ewma::EwmaSettings;
pub use node::{HealthRecord, Node};
use node::{EJECTED, HEALTHY, PROBING};
pub use outlier::AttemptResult;
pub use outlier::OutlierSettings;
use outlier::{is_latency_outlier, Change, Reason, State};
use parking_lot::Mutex;
use rand::Rng;
pub use registry::{PoolSpec, Registry};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Settings {
    pub outlier: OutlierSettings,
    pub ewma: EwmaSettings,
    pub budget: BudgetSettings,
}

/// What an observation or sweep did to an upstream, for metrics, logs and events.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum HealthEvent {
    Ejected {
        upstream: UpstreamId,
        reason: Reason,
        until: Instant,
    },
    Probing {
        upstream: UpstreamId,
    },
    Restored {
        upstream: UpstreamId,
    },
    /// The rules wanted it out but the pool could not spare it (`max_ejected_share`).
    EjectionSuppressed {
        upstream: UpstreamId,
        reason: Reason,
    },
    ActiveDown {
        upstream: UpstreamId,
    },
    ActiveUp {
        upstream: UpstreamId,
    },
}

/// One pool of one configuration: its members and the budget it keeps across configurations.
pub(crate) struct Pool {
    pub(crate) name: Arc<str>,
    pub(crate) members: Vec<UpstreamId>,
    pub(crate) budget: Arc<Mutex<RetryBudget>>,
}

/// One configuration's upstreams: which addresses are in which pool, over nodes that outlast it.
/// Immutable once built ([`Registry::reconcile`]); everything that changes lives in the nodes.
pub struct Upstreams {
    settings: Settings,
    /// The registry's: `last_pick_ms` of a node means the same under every configuration.
    base: Instant,
    nodes: Vec<Arc<Node>>,
    pools: Vec<Pool>,
    /// For each upstream, the pools it is in.
    pools_of: Vec<Vec<PoolId>>,
}

/// The upstream chosen for one attempt. Holds its in-flight count (and probe slot) until dropped,
/// and its node, so that an upstream removed by a reload meanwhile is still measured.
pub struct Pick {
    pub upstream: UpstreamId,
    pub pool: PoolId,
    pub probe: bool,
    /// Chosen to sample an upstream that balancing had left idle.
    pub sample: bool,
    pub panic: bool,
    node: Arc<Node>,
}

impl std::fmt::Debug for Pick {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pick")
            .field("upstream", &self.node.addr())
            .field("pool", &self.pool)
            .field("probe", &self.probe)
            .field("sample", &self.sample)
            .finish()
    }
}

impl Drop for Pick {
    fn drop(&mut self) {
        self.node.in_flight.fetch_sub(1, Ordering::Relaxed);
        if self.probe {
            self.node.probe_busy.store(false, Ordering::Release);
        }
    }
}

/// A read-out of one upstream for the admin API.
#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamView {
    pub state: &'static str,
    pub active_up: bool,
    pub reason: Option<Reason>,
    pub ejected_until: Option<Instant>,
    pub ejections: u32,
    pub in_flight: u32,
    pub estimate: Duration,
    pub recent: outlier::Recent,
}

impl Upstreams {
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    pub fn members(&self, pool: PoolId) -> &[UpstreamId] {
        self.pools.get(pool as usize).map_or(&[], |p| &p.members)
    }

    /// The node behind upstream `u` of this configuration.
    pub fn node(&self, u: UpstreamId) -> &Arc<Node> {
        &self.nodes[u as usize]
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The position of the node for `addr` in this configuration.
    pub fn find(&self, addr: std::net::SocketAddr) -> Option<UpstreamId> {
        self.nodes
            .iter()
            .position(|n| n.addr() == addr)
            .map(|i| i as UpstreamId)
    }

    pub fn pool_name(&self, pool: PoolId) -> Option<&str> {
        self.pools.get(pool as usize).map(|p| &*p.name)
    }

    /// The pools `u` is in.
    pub fn pools_of(&self, u: UpstreamId) -> &[PoolId] {
        self.pools_of.get(u as usize).map_or(&[], |v| v)
    }

    fn active_up(&self, u: UpstreamId) -> bool {
        self.node(u).active_up()
    }

    /// Healthy by both active checks and passive health.
    pub fn serving(&self, u: UpstreamId) -> bool {
        self.node(u).serving()
    }

    /// Whether [`Self::pick`] could find an upstream of `pool` outside `exclude`: a serving one, or,
    /// when `allow_panic` and the pool is in panic mode, any.
    pub fn has_alternative(&self, pool: PoolId, allow_panic: bool, exclude: &[UpstreamId]) -> bool {
        let members = self.members(pool);
        let healthy = members.iter().filter(|u| self.serving(**u)).count();
        let panic = allow_panic
            && (healthy as f64) < self.settings.outlier.panic_below * members.len() as f64;
        members
            .iter()
            .any(|u| !exclude.contains(u) && (panic || self.serving(*u)))
    }

    /// A member of `pool` that is out of service (ejected, probing or failing its checks), if any:
    /// the upstream a protected request is being steered clear of.
    pub fn out_of_service(&self, pool: PoolId) -> Option<UpstreamId> {
        self.members(pool)
            .iter()
            .copied()
            .find(|u| !self.serving(*u))
    }

    /// The current cost of sending one more request to `u`. `conservative` (protected traffic)
    /// ignores idle decay: see [`PeakEwma::last_observed`].
    pub fn cost(&self, u: UpstreamId, now: Instant, conservative: bool) -> f64 {
        let n = self.node(u);
        let est = {
            let inner = n.inner.lock();
            if conservative {
                inner.ewma.last_observed(&self.settings.ewma)
            } else {
                inner.ewma.estimate(now, &self.settings.ewma)
            }
        };
        cost(est, n.in_flight.load(Ordering::Relaxed))
    }

    fn ms_since_base(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.base).as_millis() as u64
    }

    /// Chooses an upstream of `pool` for one attempt, avoiding `exclude` (tried already). `None` when
    /// the pool has no upstream outside `exclude`. Only `idempotent` requests are used as samples.
    pub fn pick<R: Rng + ?Sized>(
        &self,
        pool: PoolId,
        protected: bool,
        idempotent: bool,
        exclude: &[UpstreamId],
        now: Instant,
        rng: &mut R,
    ) -> Option<Pick> {
        self.pick_in(pool, protected, idempotent, true, exclude, now, rng)
    }

    /// As [`Self::pick`], without panic mode: `None` when no member is serving. For a reserved pool,
    /// whose whole point is falling back to the main pool rather than using a doubtful upstream.
    pub fn pick_serving<R: Rng + ?Sized>(
        &self,
        pool: PoolId,
        protected: bool,
        exclude: &[UpstreamId],
        now: Instant,
        rng: &mut R,
    ) -> Option<Pick> {
        self.pick_in(pool, protected, false, false, exclude, now, rng)
    }

    #[allow(clippy::too_many_arguments)]
    fn pick_in<R: Rng + ?Sized>(
        &self,
        pool: PoolId,
        protected: bool,
        idempotent: bool,
        allow_panic: bool,
        exclude: &[UpstreamId],
        now: Instant,
        rng: &mut R,
    ) -> Option<Pick> {
        let p = self.pools.get(pool as usize)?;
        let allowed = |u: &UpstreamId| !exclude.contains(u);
        let now_ms = self.ms_since_base(now);

        // An upstream on probation gets ordinary traffic, one request at a time; never protected.
        if !protected {
            for &u in p.members.iter().filter(|u| allowed(u)) {
                let n = self.node(u);
                if n.state.load(Ordering::Relaxed) == PROBING
                    && self.active_up(u)
                    && n.probe_busy
                        .compare_exchange(false, true, Ordering::AcqRel, Ordering::Relaxed)
                        .is_ok()
                {
                    return Some(self.take(u, pool, true, false, false, now_ms));
                }
            }
        }

        // A serving upstream left idle by balancing gets a sample, one at a time.
        let every = self.settings.outlier.sample_interval.as_millis() as u64;
        if !protected && idempotent && p.members.len() > 1 {
            for &u in p.members.iter().filter(|u| allowed(u)) {
                let n = self.node(u);
                let last = n.last_pick_ms.load(Ordering::Relaxed);
                if self.serving(u)
                    && now_ms.saturating_sub(last) >= every
                    && n.in_flight.load(Ordering::Relaxed) == 0
                    && n.last_pick_ms
                        .compare_exchange(last, now_ms, Ordering::AcqRel, Ordering::Relaxed)
                        .is_ok()
                {
                    return Some(self.take(u, pool, false, true, false, now_ms));
                }
            }
        }

        let healthy = p.members.iter().filter(|u| self.serving(**u)).count();
        let panic = allow_panic
            && (healthy as f64) < self.settings.outlier.panic_below * p.members.len() as f64;
        let candidate = |u: &UpstreamId| allowed(u) && (panic || self.serving(*u));
        let count = p.members.iter().filter(|u| candidate(u)).count();
        let nth = |k: usize| p.members.iter().copied().filter(|u| candidate(u)).nth(k);
        let chosen = match count {
            0 => return None,
            1 => nth(0)?,
            _ if protected => {
                p.members
                    .iter()
                    .copied()
                    .filter(|u| candidate(u))
                    .map(|u| (u, self.cost(u, now, true)))
                    .min_by(|a, b| a.1.total_cmp(&b.1))?
                    .0
            }
            _ => {
                let i = rng.gen_range(0..count);
                let mut j = rng.gen_range(0..count - 1);
                if j >= i {
                    j += 1;
                }
                let (a, b) = (nth(i)?, nth(j)?);
                if self.cost(b, now, false) < self.cost(a, now, false) {
                    b
                } else {
                    a
                }
            }
        };
        Some(self.take(chosen, pool, false, false, panic, now_ms))
    }

    fn take(
        &self,
        u: UpstreamId,
        pool: PoolId,
        probe: bool,
        sample: bool,
        panic: bool,
        now_ms: u64,
    ) -> Pick {
        let n = self.node(u);
        n.in_flight.fetch_add(1, Ordering::Relaxed);
        n.last_pick_ms.store(now_ms, Ordering::Relaxed);
        Pick {
            upstream: u,
            pool,
            probe,
            sample,
            panic,
            node: n.clone(),
        }
    }

    /// Median of the recent mean latencies of the other serving members of `u`'s pools.
    fn peers_latency(&self, u: UpstreamId) -> Option<Duration> {
        let mut means: Vec<Duration> = self.pools_of[u as usize]
            .iter()
            .flat_map(|p| self.pools[*p as usize].members.iter().copied())
            .filter(|&v| v != u && self.serving(v))
            .filter_map(|v| {
                let r = self.node(v).inner.lock().passive.recent();
                (r.ok >= u64::from(self.settings.outlier.latency_min_samples))
                    .then_some(r.mean_latency)
                    .flatten()
            })
            .collect();
        if means.is_empty() {
            return None;
        }
        means.sort();
        Some(means[means.len() / 2])
    }

    /// Records the result of one attempt on `u`. `latency` is the time to the upstream's answer (or
    /// failure).
    pub fn observe<R: Rng + ?Sized>(
        &self,
        u: UpstreamId,
        result: AttemptResult,
        latency: Duration,
        now: Instant,
        rng: &mut R,
    ) -> Option<HealthEvent> {
        let node = self.node(u);
        let failed = result != AttemptResult::Ok;
        // Peers are read before taking this node's lock: two locks are never held at once.
        let outlier = if node.state.load(Ordering::Relaxed) == PROBING && !failed {
            self.peers_latency(u)
                .is_some_and(|peers| is_latency_outlier(latency, peers, &self.settings.outlier))
        } else {
            false
        };
        let change = {
            let mut inner = node.inner.lock();
            if failed {
                inner.ewma.observe_failure(now, &self.settings.ewma);
            } else {
                inner.ewma.observe(latency, now, &self.settings.ewma);
            }
            inner
                .passive
                .observe(result, latency, outlier, now, &self.settings.outlier)
        };
        self.apply(u, change?, now, rng)
    }

    fn apply<R: Rng + ?Sized>(
        &self,
        u: UpstreamId,
        change: Change,
        now: Instant,
        rng: &mut R,
    ) -> Option<HealthEvent> {
        let node = self.node(u);
        match change {
            Change::Eject(reason) => {
                // A failed probe is already out of service: re-ejecting takes nobody's place.
                let probing = node.state.load(Ordering::Relaxed) == PROBING;
                if !probing && !self.can_spare(u) {
                    // Every sweep would say it again: once per episode is enough.
                    let first = !node.suppressed.swap(true, Ordering::Relaxed);
                    return first.then_some(HealthEvent::EjectionSuppressed {
                        upstream: u,
                        reason,
                    });
                }
                node.suppressed.store(false, Ordering::Relaxed);
                let until = node.inner.lock().passive.eject(
                    reason,
                    now,
                    rng.gen::<f64>(),
                    &self.settings.outlier,
                );
                node.state.store(EJECTED, Ordering::Relaxed);
                Some(HealthEvent::Ejected {
                    upstream: u,
                    reason,
                    until,
                })
            }
            Change::Probing => {
                node.state.store(PROBING, Ordering::Relaxed);
                Some(HealthEvent::Probing { upstream: u })
            }
            Change::Restored => {
                node.suppressed.store(false, Ordering::Relaxed);
                node.state.store(HEALTHY, Ordering::Relaxed);
                Some(HealthEvent::Restored { upstream: u })
            }
        }
    }

    /// Whether every pool of `u` can lose it without exceeding `max_ejected_share` (at least one
    /// upstream of a pool may always be ejected, as in Envoy).
    fn can_spare(&self, u: UpstreamId) -> bool {
        self.pools_of[u as usize].iter().all(|p| {
            let members = &self.pools[*p as usize].members;
            let out = members
                .iter()
                .filter(|v| self.node(**v).state.load(Ordering::Relaxed) != HEALTHY)
                .count();
            let allowed = ((self.settings.outlier.max_ejected_share * members.len() as f64).floor()
                as usize)
                .max(1);
            out < allowed
        })
    }

    /// Periodic work: ends ejections whose time is up and applies the latency rule, which needs the
    /// whole pool. Call every few hundred milliseconds.
    pub fn sweep<R: Rng + ?Sized>(&self, now: Instant, rng: &mut R) -> Vec<HealthEvent> {
        let mut events = Vec::new();
        for u in 0..self.nodes.len() as UpstreamId {
            let change = self.node(u).inner.lock().passive.sweep(now);
            if let Some(e) = change.and_then(|c| self.apply(u, c, now, rng)) {
                events.push(e);
            }
        }
        let s = &self.settings.outlier;
        for u in 0..self.nodes.len() as UpstreamId {
            if !self.serving(u) {
                continue;
            }
            let r = self.node(u).inner.lock().passive.recent();
            let (Some(mean), true) = (r.mean_latency, r.ok >= u64::from(s.latency_min_samples))
            else {
                continue;
            };
            if let Some(peers) = self.peers_latency(u) {
                if is_latency_outlier(mean, peers, s) {
                    let reason = Reason::Latency {
                        mean_ms: mean.as_secs_f64() * 1000.0,
                        peers_ms: peers.as_secs_f64() * 1000.0,
                    };
                    if let Some(e) = self.apply(u, Change::Eject(reason), now, rng) {
                        events.push(e);
                    }
                }
            }
        }
        events
    }

    /// Records one active check of member `index` of `pool`.
    pub fn record_check(
        &self,
        pool: PoolId,
        index: usize,
        ok: bool,
        rise: u32,
        fall: u32,
    ) -> Option<HealthEvent> {
        let p = self.pools.get(pool as usize)?;
        let u = *p.members.get(index)?;
        let up = self.node(u).record_check(&p.name, ok, rise, fall)?;
        Some(if up {
            HealthEvent::ActiveUp { upstream: u }
        } else {
            HealthEvent::ActiveDown { upstream: u }
        })
    }

    /// Counts an original request against `pool`'s retry budget.
    pub fn count_request(&self, pool: PoolId, now: Instant) {
        if let Some(p) = self.pools.get(pool as usize) {
            p.budget.lock().request(now);
        }
    }

    /// Takes one retry from `pool`'s budget; false when the budget is spent.
    pub fn try_retry(&self, pool: PoolId, now: Instant) -> bool {
        self.pools
            .get(pool as usize)
            .is_some_and(|p| p.budget.lock().try_retry(now))
    }

    /// Whether `pool`'s budget has a retry left, without taking it.
    pub fn retry_has_room(&self, pool: PoolId, now: Instant) -> bool {
        self.pools
            .get(pool as usize)
            .is_some_and(|p| p.budget.lock().has_room(now))
    }

    pub fn view(&self, u: UpstreamId, now: Instant) -> UpstreamView {
        let n = self.node(u);
        let inner = n.inner.lock();
        let (state, reason, until) = match inner.passive.state() {
            State::Healthy => ("healthy", None, None),
            State::Ejected { until, reason } => ("ejected", Some(reason), Some(until)),
            State::Probing { reason, .. } => ("probing", Some(reason), None),
        };
        UpstreamView {
            state,
            active_up: self.active_up(u),
            reason,
            ejected_until: until,
            ejections: inner.passive.ejections(),
            in_flight: n.in_flight.load(Ordering::Relaxed),
            estimate: Duration::from_secs_f64(inner.ewma.estimate(now, &self.settings.ewma)),
            recent: inner.passive.recent(),
        }
    }
}

#[cfg(test)]
mod tests;
