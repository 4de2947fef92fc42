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
//! traffic to a doubtful upstream beats sending it nowhere. Health is judged twice: per upstream
//! (its [`Node`]) and per route and upstream (its [`Lane`]): a request avoids an upstream that
//! either says is out, so an upstream slow only on the checkout is avoided there and still used
//! elsewhere. Randomness comes from the caller, so tests are deterministic.

pub mod active;
pub mod budget;
pub mod checker;
pub mod ewma;
mod health;
mod lane;
mod node;
pub mod outlier;
mod registry;

pub use crate::ids::{PoolId, RouteId, UpstreamId};
pub use budget::BudgetSettings;
use budget::RetryBudget;
use ewma::cost;
pub use ewma::EwmaSettings;
use health::{Applied, Health, EJECTED, HEALTHY, PROBING};
pub use lane::{Lane, HUNG_MIN_IN_FLIGHT};
pub use node::{HealthRecord, Node};
pub use outlier::AttemptResult;
pub use outlier::OutlierSettings;
use outlier::{is_latency_outlier, Change, Reason, State};
use parking_lot::Mutex;
use rand::Rng;
pub use registry::{PoolSpec, Registry, RouteSpec};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Settings {
    pub outlier: OutlierSettings,
    pub ewma: EwmaSettings,
    pub budget: BudgetSettings,
}

/// What an observation or sweep did to an upstream, for metrics, logs and events. `route` is
/// `Some` when it happened to the upstream on that route only (its [`Lane`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum HealthEvent {
    Ejected {
        upstream: UpstreamId,
        route: Option<RouteId>,
        reason: Reason,
        until: Instant,
    },
    Probing {
        upstream: UpstreamId,
        route: Option<RouteId>,
    },
    Restored {
        upstream: UpstreamId,
        route: Option<RouteId>,
    },
    /// The rules wanted it out but the pool could not spare it (`max_ejected_share`).
    EjectionSuppressed {
        upstream: UpstreamId,
        route: Option<RouteId>,
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

/// One route of one configuration: the upstreams it can use and its lane to each.
pub(crate) struct RouteLanes {
    pub(crate) members: Vec<UpstreamId>,
    /// By upstream id; `None` for upstreams the route cannot use.
    pub(crate) lanes: Vec<Option<Arc<Lane>>>,
}

/// One configuration's upstreams: which addresses are in which pool, over nodes that outlast it.
/// Immutable once built ([`Registry::reconcile`]); everything that changes lives in the nodes and
/// lanes.
pub struct Upstreams {
    settings: Settings,
    /// The registry's: `last_pick_ms` of a node means the same under every configuration.
    base: Instant,
    nodes: Vec<Arc<Node>>,
    pools: Vec<Pool>,
    /// For each upstream, the pools it is in.
    pools_of: Vec<Vec<PoolId>>,
    routes: Vec<RouteLanes>,
}

/// Which probe slot a pick holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    None,
    Node,
    Lane,
}

/// The upstream chosen for one attempt. Holds its in-flight counts (and probe slot) until dropped,
/// and its node and lane, so that an upstream removed by a reload meanwhile is still measured.
pub struct Pick {
    pub upstream: UpstreamId,
    pub pool: PoolId,
    /// A probe of an ejection that is over, on the upstream as a whole or on this route.
    pub probe: bool,
    /// Chosen to sample an upstream that balancing had left idle.
    pub sample: bool,
    pub panic: bool,
    node: Arc<Node>,
    lane: Option<Arc<Lane>>,
    slot: Slot,
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
        if let Some(l) = &self.lane {
            l.ended();
        }
        match self.slot {
            Slot::None => {}
            Slot::Node => self.node.health.release_probe(),
            Slot::Lane => {
                if let Some(l) = &self.lane {
                    l.health.release_probe();
                }
            }
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

/// A read-out of one upstream on one route: its lane's health.
#[derive(Debug, Clone, PartialEq)]
pub struct LaneView {
    pub route: RouteId,
    pub state: &'static str,
    pub reason: Option<Reason>,
    pub ejected_until: Option<Instant>,
    pub ejections: u32,
    pub in_flight: u32,
    pub recent: outlier::Recent,
}

fn state_of(p: &outlier::Passive) -> (&'static str, Option<Reason>, Option<Instant>) {
    match p.state() {
        State::Healthy => ("healthy", None, None),
        State::Ejected { until, reason } => ("ejected", Some(reason), Some(until)),
        State::Probing { reason, .. } => ("probing", Some(reason), None),
    }
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

    /// The lane of route `r` to upstream `u`, when the route can use it.
    pub fn lane(&self, r: RouteId, u: UpstreamId) -> Option<&Arc<Lane>> {
        self.routes.get(r as usize)?.lanes.get(u as usize)?.as_ref()
    }

    fn lane_of(&self, r: Option<RouteId>, u: UpstreamId) -> Option<&Arc<Lane>> {
        r.and_then(|r| self.lane(r, u))
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

    fn ms_since_base(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.base).as_millis() as u64
    }

    /// Healthy by both active checks and passive health.
    pub fn serving(&self, u: UpstreamId) -> bool {
        self.node(u).serving()
    }

    /// Serving, and on route `r` (when given) neither out nor hung.
    pub fn serving_on(&self, r: Option<RouteId>, u: UpstreamId, now: Instant) -> bool {
        self.serving(u)
            && self
                .lane_of(r, u)
                .is_none_or(|l| l.health.healthy() && l.hung_for(self.ms_since_base(now)).is_none())
    }

    /// Whether `pool` has fewer than `panic_below` of its members serving (on route `r`): then
    /// the whole pool is used.
    pub fn in_panic(&self, pool: PoolId, r: Option<RouteId>, now: Instant) -> bool {
        let members = self.members(pool);
        let healthy = members
            .iter()
            .filter(|u| self.serving_on(r, **u, now))
            .count();
        !members.is_empty()
            && (healthy as f64) < self.settings.outlier.panic_below * members.len() as f64
    }

    /// Whether a pick on route `r` could find an upstream of `pool` outside `exclude`: a serving
    /// one, or, when `allow_panic` and the pool is in panic mode, any.
    pub fn has_alternative(
        &self,
        pool: PoolId,
        r: Option<RouteId>,
        allow_panic: bool,
        exclude: &[UpstreamId],
        now: Instant,
    ) -> bool {
        let panic = allow_panic && self.in_panic(pool, r, now);
        self.members(pool)
            .iter()
            .any(|u| !exclude.contains(u) && (panic || self.serving_on(r, *u, now)))
    }

    /// A member of `pool` that is out of service on route `r` (ejected, probing, hung or failing
    /// its checks), if any: the upstream a protected request is being steered clear of.
    pub fn out_of_service(
        &self,
        pool: PoolId,
        r: Option<RouteId>,
        now: Instant,
    ) -> Option<UpstreamId> {
        self.members(pool)
            .iter()
            .copied()
            .find(|u| !self.serving_on(r, *u, now))
    }

    /// The current cost of sending one more request to `u`. `conservative` (protected traffic)
    /// ignores idle decay: see [`PeakEwma::last_observed`].
    pub fn cost(&self, u: UpstreamId, now: Instant, conservative: bool) -> f64 {
        self.cost_on(None, u, now, conservative)
    }

    /// As [`Self::cost`] for a request of route `r`: the latency is the upstream's on that route
    /// once it has answered one there (an upstream slow only on the checkout is costly for
    /// checkouts alone), its latency as a whole before; the load is the whole upstream's.
    pub fn cost_on(
        &self,
        r: Option<RouteId>,
        u: UpstreamId,
        now: Instant,
        conservative: bool,
    ) -> f64 {
        let n = self.node(u);
        let read = |e: &ewma::PeakEwma| {
            if conservative {
                e.last_observed(&self.settings.ewma)
            } else {
                e.estimate(now, &self.settings.ewma)
            }
        };
        let lane = self.lane_of(r, u);
        let on_route = lane.and_then(|l| {
            let e = l.ewma.lock();
            e.observed().then(|| read(&e))
        });
        let mut est = on_route.unwrap_or_else(|| read(&n.ewma.lock()));
        // Requests waiting there unanswered for 3 s say its latency is at least 3 s, whatever the
        // estimate from its last answers says (that one decays while it is silent): so an
        // upstream that stops answering grows dearer by the second instead of cheaper.
        if let Some(silent_ms) = lane.and_then(|l| l.silent_for(self.ms_since_base(now))) {
            est = est.max(silent_ms as f64 / 1000.0);
        }
        cost(est, n.in_flight.load(Ordering::Relaxed))
    }

    /// Chooses an upstream of `pool` for one attempt of a request of route `route` (when known),
    /// avoiding `exclude` (tried already). `None` when the pool has no upstream outside
    /// `exclude`. Only `idempotent` requests are used as samples.
    #[allow(clippy::too_many_arguments)]
    pub fn pick<R: Rng + ?Sized>(
        &self,
        pool: PoolId,
        route: Option<RouteId>,
        protected: bool,
        idempotent: bool,
        exclude: &[UpstreamId],
        now: Instant,
        rng: &mut R,
    ) -> Option<Pick> {
        self.pick_in(pool, route, protected, idempotent, true, exclude, now, rng)
    }

    /// As [`Self::pick`], without panic mode: `None` when no member is serving. For a reserved pool,
    /// whose whole point is falling back to the main pool rather than using a doubtful upstream.
    pub fn pick_serving<R: Rng + ?Sized>(
        &self,
        pool: PoolId,
        route: Option<RouteId>,
        protected: bool,
        exclude: &[UpstreamId],
        now: Instant,
        rng: &mut R,
    ) -> Option<Pick> {
        self.pick_in(pool, route, protected, false, false, exclude, now, rng)
    }

    #[allow(clippy::too_many_arguments)]
    fn pick_in<R: Rng + ?Sized>(
        &self,
        pool: PoolId,
        route: Option<RouteId>,
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
        let serving = |u: UpstreamId| self.serving_on(route, u, now);

        // An upstream on probation gets ordinary traffic, one request at a time; never protected.
        // On probation as a whole, a request of a route where it is not out probes it; on
        // probation on this route only, this route's requests do.
        if !protected {
            for &u in p.members.iter().filter(|u| allowed(u)) {
                let n = self.node(u);
                let lane = self.lane_of(route, u);
                if !self.active_up(u) {
                    continue;
                }
                let node_state = n.health.state();
                let lane_state = lane.map_or(HEALTHY, |l| l.health.state());
                if node_state == PROBING && lane_state != EJECTED && n.health.try_probe() {
                    return Some(self.take(u, pool, route, Slot::Node, false, false, now_ms));
                }
                if node_state == HEALTHY
                    && lane_state == PROBING
                    && lane.is_some_and(|l| l.health.try_probe())
                {
                    return Some(self.take(u, pool, route, Slot::Lane, false, false, now_ms));
                }
            }
        }

        // A serving upstream left idle by balancing gets a sample, one at a time: idle on this
        // route (its lane), or as a whole for a request outside any route. The one idle longest
        // goes first, or with little traffic the first member would take every sample.
        let every = self.settings.outlier.sample_interval.as_millis() as u64;
        if !protected && idempotent && p.members.len() > 1 {
            let last_pick = |u: UpstreamId| match self.lane_of(route, u) {
                Some(l) => (&l.last_pick_ms, l.in_flight()),
                None => {
                    let n = self.node(u);
                    (&n.last_pick_ms, n.in_flight.load(Ordering::Relaxed))
                }
            };
            let idlest = p
                .members
                .iter()
                .copied()
                .filter(|u| allowed(u) && serving(*u))
                .filter_map(|u| {
                    let (at, busy) = last_pick(u);
                    let last = at.load(Ordering::Relaxed);
                    (busy == 0 && now_ms.saturating_sub(last) >= every).then_some((u, last))
                })
                .min_by_key(|(_, last)| *last);
            if let Some((u, last)) = idlest {
                if last_pick(u)
                    .0
                    .compare_exchange(last, now_ms, Ordering::AcqRel, Ordering::Relaxed)
                    .is_ok()
                {
                    return Some(self.take(u, pool, route, Slot::None, true, false, now_ms));
                }
            }
        }

        let panic = allow_panic && self.in_panic(pool, route, now);
        let candidate = |u: &UpstreamId| allowed(u) && (panic || serving(*u));
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
                    .map(|u| (u, self.cost_on(route, u, now, true)))
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
                if self.cost_on(route, b, now, false) < self.cost_on(route, a, now, false) {
                    b
                } else {
                    a
                }
            }
        };
        Some(self.take(chosen, pool, route, Slot::None, false, panic, now_ms))
    }

    #[allow(clippy::too_many_arguments)]
    fn take(
        &self,
        u: UpstreamId,
        pool: PoolId,
        route: Option<RouteId>,
        slot: Slot,
        sample: bool,
        panic: bool,
        now_ms: u64,
    ) -> Pick {
        let n = self.node(u);
        n.in_flight.fetch_add(1, Ordering::Relaxed);
        n.last_pick_ms.store(now_ms, Ordering::Relaxed);
        let lane = self.lane_of(route, u).cloned();
        if let Some(l) = &lane {
            l.started(now_ms);
            l.last_pick_ms.store(now_ms, Ordering::Relaxed);
        }
        Pick {
            upstream: u,
            pool,
            probe: slot != Slot::None,
            sample,
            panic,
            node: n.clone(),
            lane,
            slot,
        }
    }

    /// Median of the recent mean latencies of the other serving members of `u`'s pools.
    fn peers_latency(&self, u: UpstreamId) -> Option<Duration> {
        let means = self.pools_of[u as usize]
            .iter()
            .flat_map(|p| self.pools[*p as usize].members.iter().copied())
            .filter(|&v| v != u && self.serving(v))
            .filter_map(|v| self.mean_of(&self.node(v).health));
        median(means.collect())
    }

    /// Median of the recent mean latencies, on route `r`, of the route's other upstreams that
    /// serve it.
    fn lane_peers_latency(&self, r: RouteId, u: UpstreamId, now: Instant) -> Option<Duration> {
        let rl = self.routes.get(r as usize)?;
        let means = rl
            .members
            .iter()
            .copied()
            .filter(|&v| v != u && self.serving_on(Some(r), v, now))
            .filter_map(|v| self.mean_of(&self.lane(r, v)?.health));
        median(means.collect())
    }

    /// The recent mean latency of `h`, once it has enough successful answers to judge by.
    fn mean_of(&self, h: &Health) -> Option<Duration> {
        let r = h.passive.lock().recent();
        (r.ok >= u64::from(self.settings.outlier.latency_min_samples))
            .then_some(r.mean_latency)
            .flatten()
    }

    /// Records the result of one attempt on `u`, outside any route (an embedder's request usher
    /// could not place). `latency` is the time to the upstream's answer (or failure).
    pub fn observe<R: Rng + ?Sized>(
        &self,
        u: UpstreamId,
        result: AttemptResult,
        latency: Duration,
        now: Instant,
        rng: &mut R,
    ) -> Option<HealthEvent> {
        self.observe_on(None, u, result, latency, now, rng)
            .into_iter()
            .next()
    }

    /// Records the result of one attempt of a request of route `route` on `u`: it feeds the
    /// upstream's health and, on that route, its lane's.
    pub fn observe_on<R: Rng + ?Sized>(
        &self,
        route: Option<RouteId>,
        u: UpstreamId,
        result: AttemptResult,
        latency: Duration,
        now: Instant,
        rng: &mut R,
    ) -> Vec<HealthEvent> {
        let node = self.node(u);
        let mut events = Vec::new();
        node.ewma.lock().record(
            result != AttemptResult::Ok,
            latency,
            now,
            &self.settings.ewma,
        );
        let peers = || self.peers_latency(u);
        events.extend(self.judge(u, None, &node.health, peers, result, latency, now, rng));
        if let (Some(r), Some(lane)) = (route, self.lane_of(route, u)) {
            // A refused connection is never one route's trouble, and what put the upstream out
            // as a whole needs no second verdict per route.
            match result {
                AttemptResult::ConnectFailed => return events,
                AttemptResult::TimedOut => lane.timed_out(),
                AttemptResult::Ok | AttemptResult::Failed => lane.answered(self.ms_since_base(now)),
            }
            lane.ewma.lock().record(
                result != AttemptResult::Ok,
                latency,
                now,
                &self.settings.ewma,
            );
            if node.health.healthy() {
                let peers = || self.lane_peers_latency(r, u, now);
                events.extend(self.judge(
                    u,
                    Some(r),
                    &lane.health,
                    peers,
                    result,
                    latency,
                    now,
                    rng,
                ));
            }
        }
        events
    }

    /// Judges one attempt on `health` (`u`'s as a whole, or on `route`): its passive rules, and
    /// for a probe whether its latency is an outlier against `peers`. Peers are read before the
    /// health's lock is taken: two locks are never held at once.
    #[allow(clippy::too_many_arguments)]
    fn judge<R: Rng + ?Sized>(
        &self,
        u: UpstreamId,
        route: Option<RouteId>,
        health: &Health,
        peers: impl FnOnce() -> Option<Duration>,
        result: AttemptResult,
        latency: Duration,
        now: Instant,
        rng: &mut R,
    ) -> Option<HealthEvent> {
        let s = &self.settings.outlier;
        let outlier = health.state() == PROBING
            && result == AttemptResult::Ok
            && peers().is_some_and(|p| is_latency_outlier(latency, p, s));
        let change = health
            .passive
            .lock()
            .observe(result, latency, outlier, now, s);
        change.and_then(|c| self.apply(u, route, c, now, rng))
    }

    /// Applies `change` to `u`'s health as a whole (`route` None) or on `route`.
    fn apply<R: Rng + ?Sized>(
        &self,
        u: UpstreamId,
        route: Option<RouteId>,
        change: Change,
        now: Instant,
        rng: &mut R,
    ) -> Option<HealthEvent> {
        let (health, can_spare) = match route {
            None => (&self.node(u).health, self.can_spare(u)),
            Some(r) => (&self.lane(r, u)?.health, self.can_spare_on(r, u, now)),
        };
        let applied = health.apply(
            change,
            can_spare,
            now,
            rng.gen::<f64>(),
            &self.settings.outlier,
        )?;
        Some(match applied {
            Applied::Ejected { reason, until } => HealthEvent::Ejected {
                upstream: u,
                route,
                reason,
                until,
            },
            Applied::Suppressed { reason } => HealthEvent::EjectionSuppressed {
                upstream: u,
                route,
                reason,
            },
            Applied::Probing => HealthEvent::Probing { upstream: u, route },
            Applied::Restored => HealthEvent::Restored { upstream: u, route },
        })
    }

    /// The most of `members` that may be out at once: `max_ejected_share` of them, and at least
    /// one (as in Envoy).
    fn spare(&self, members: usize) -> usize {
        ((self.settings.outlier.max_ejected_share * members as f64).floor() as usize).max(1)
    }

    /// Whether every pool of `u` can lose it without exceeding `max_ejected_share`.
    fn can_spare(&self, u: UpstreamId) -> bool {
        self.pools_of[u as usize].iter().all(|p| {
            let members = &self.pools[*p as usize].members;
            let out = members
                .iter()
                .filter(|v| !self.node(**v).health.healthy())
                .count();
            out < self.spare(members.len())
        })
    }

    /// Whether route `r` can lose `u` without more than `max_ejected_share` of its upstreams out
    /// on it (as a whole or on the route).
    fn can_spare_on(&self, r: RouteId, u: UpstreamId, now: Instant) -> bool {
        let Some(rl) = self.routes.get(r as usize) else {
            return false;
        };
        let out = rl
            .members
            .iter()
            .filter(|v| **v != u && !self.serving_on(Some(r), **v, now))
            .count();
        out < self.spare(rl.members.len())
    }

    /// Periodic work: ends ejections whose time is up, applies the latency rule (which needs the
    /// whole route) and ejects what hangs. Call every few hundred milliseconds.
    pub fn sweep<R: Rng + ?Sized>(&self, now: Instant, rng: &mut R) -> Vec<HealthEvent> {
        let mut events = Vec::new();
        for u in 0..self.nodes.len() as UpstreamId {
            let change = self.node(u).health.passive.lock().sweep(now);
            if let Some(e) = change.and_then(|c| self.apply(u, None, c, now, rng)) {
                events.push(e);
            }
        }
        // Latency is judged per route (below), where every upstream answers the same requests:
        // an upstream's mean over all routes depends on which routes it happened to serve.
        let s = &self.settings.outlier;
        let now_ms = self.ms_since_base(now);
        for (r, rl) in self.routes.iter().enumerate() {
            let r = r as RouteId;
            for &u in &rl.members {
                let Some(lane) = self.lane(r, u) else {
                    continue;
                };
                let change = lane.health.passive.lock().sweep(now);
                if let Some(e) = change.and_then(|c| self.apply(u, Some(r), c, now, rng)) {
                    events.push(e);
                }
                if !lane.health.healthy() || !self.serving(u) {
                    continue;
                }
                let reason = if let Some(silent_ms) = lane.hung_for(now_ms) {
                    Some(Reason::Hung {
                        silent_ms,
                        waiting: lane.waiting(),
                    })
                } else {
                    let fastest = {
                        let recent = lane.health.passive.lock().recent();
                        (recent.ok >= u64::from(s.latency_min_samples))
                            .then(|| recent.fastest_latest())
                            .flatten()
                    };
                    match (fastest, self.lane_peers_latency(r, u, now)) {
                        (Some(fastest), Some(peers)) if is_latency_outlier(fastest, peers, s) => {
                            Some(Reason::Latency {
                                fastest_ms: fastest.as_secs_f64() * 1000.0,
                                peers_ms: peers.as_secs_f64() * 1000.0,
                            })
                        }
                        _ => None,
                    }
                };
                if let Some(e) =
                    reason.and_then(|why| self.apply(u, Some(r), Change::Eject(why), now, rng))
                {
                    events.push(e);
                }
            }
        }
        events
    }

    /// Sets the silence that means a hang on route `r` (see [`Lane`]).
    pub fn set_hung_after(&self, r: RouteId, after: Option<Duration>) {
        if let Some(rl) = self.routes.get(r as usize) {
            for l in rl.lanes.iter().flatten() {
                l.set_hung_after(after);
            }
        }
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
        let (state, reason, until, ejections, recent) = {
            let passive = n.health.passive.lock();
            let (state, reason, until) = state_of(&passive);
            (state, reason, until, passive.ejections(), passive.recent())
        };
        UpstreamView {
            state,
            active_up: self.active_up(u),
            reason,
            ejected_until: until,
            ejections,
            in_flight: n.in_flight.load(Ordering::Relaxed),
            estimate: Duration::from_secs_f64(n.ewma.lock().estimate(now, &self.settings.ewma)),
            recent,
        }
    }

    /// `u`'s health on each route that can use it.
    pub fn lane_views(&self, u: UpstreamId, now: Instant) -> Vec<LaneView> {
        let now_ms = self.ms_since_base(now);
        (0..self.routes.len() as RouteId)
            .filter_map(|r| {
                let lane = self.lane(r, u)?;
                let passive = lane.health.passive.lock();
                let (mut state, mut reason, until) = state_of(&passive);
                if state == "healthy" {
                    if let Some(silent_ms) = lane.hung_for(now_ms) {
                        state = "hung";
                        reason = Some(Reason::Hung {
                            silent_ms,
                            waiting: lane.waiting(),
                        });
                    }
                }
                Some(LaneView {
                    route: r,
                    state,
                    reason,
                    ejected_until: until,
                    ejections: passive.ejections(),
                    in_flight: lane.in_flight(),
                    recent: passive.recent(),
                })
            })
            .collect()
    }
}

fn median(mut v: Vec<Duration>) -> Option<Duration> {
    if v.is_empty() {
        return None;
    }
    v.sort();
    Some(v[v.len() / 2])
}

#[cfg(test)]
mod tests;
