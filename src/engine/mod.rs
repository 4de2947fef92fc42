//! The usher engine: identity, routing, protection, upstream choice and health, measurement and the
//! experience store, wired together as plain Rust.
//!
//! One [`Usher`] per configuration, shared by every request. Each request carries an [`Exchange`]: the
//! per-request state that the proxy (or an embedding proxy) keeps in its own context and hands back at
//! each step. Data flows one way: request -> identity -> route -> protection -> upstream -> measured
//! response -> upstream health and customer experience. Nothing here knows Pingora; `crate::proxy`
//! adapts its phases to these calls. Time is passed in by the caller.

mod exchange;
mod notify;

pub use exchange::{Admission, Exchange, Finish, RequestHead, RetryVerdict};

use crate::config::{Config, RouteConfig, RouteId, UpstreamId};
use crate::events::Events;
use crate::experience::{
    CustomerStore, Judgement, Observation, Recorded, ScoreModel, Step, StoreSettings,
};
use crate::identity::{Identity, IdentityResolver};
use crate::measure::{Measurement, Outcome};
use crate::metrics::Metrics;
use crate::protection;
use crate::routing::RouteTable;
use crate::stats::LatencyStats;
use crate::upstream::{AttemptResult, HealthEvent, Settings, Upstreams};
use exchange::Attempt;
use http::HeaderValue;
use rand::Rng;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Requests in a route's latency window before its p99 sets a try timeout: below that the p99 is
/// a guess, and a guess on the low side would cut off healthy answers.
const TRY_TIMEOUT_MIN_SAMPLES: u64 = 100;

/// Wall-clock milliseconds since the Unix epoch: the time base of customer state.
pub fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

pub struct Usher {
    config: Config,
    identity: IdentityResolver,
    routes: RouteTable,
    upstreams: Upstreams,
    store: CustomerStore,
    route_stats: Vec<LatencyStats>,
    upstream_stats: Vec<LatencyStats>,
    metrics: Metrics,
    /// Whether admission needs the customer's current score (rescue or the experience header).
    peek_customer: bool,
    events: Events,
    /// Every value of the experience header, by rounded score and state, made once: formatting one
    /// per request took a visible share of a request's time.
    experience_values: Vec<HeaderValue>,
    /// Each route's current try timeout for protected requests, in microseconds; 0 when none.
    try_timeouts: Vec<AtomicU64>,
    /// Each route's request count at the last refresh of its try timeout.
    try_timeouts_seen: Vec<AtomicU64>,
    /// When each route's burn was last reported, by severity.
    slo_alerted: parking_lot::Mutex<std::collections::HashMap<(usize, &'static str), u64>>,
}

impl Usher {
    pub fn new(config: Config) -> Arc<Usher> {
        Self::starting_at(config, Instant::now())
    }

    pub fn starting_at(config: Config, now: Instant) -> Arc<Usher> {
        let prot = &config.protection;
        let store = CustomerStore::new(StoreSettings {
            track_max: config.experience.track_max,
            journey_len: config.experience.journey_len,
            model: ScoreModel::new(config.experience.half_life),
            rescue: prot.rescue_below.map(|b| (b, prot.rescue_for)),
            degraded_below: config.experience.degraded_below,
            recover_above: config.events.recover_above,
        });
        let settings = Settings {
            outlier: config.outlier,
            ewma: config.balancing,
            budget: config.retries.budget,
        };
        Arc::new(Usher {
            identity: IdentityResolver::new(&config.identity, &config.tiers),
            routes: RouteTable::new(&config.routes),
            upstreams: Upstreams::new(&config, settings, now),
            store,
            route_stats: config
                .routes
                .iter()
                .map(|_| LatencyStats::default())
                .collect(),
            upstream_stats: config
                .upstreams
                .iter()
                .map(|_| LatencyStats::default())
                .collect(),
            metrics: Metrics::new(&config),
            peek_customer: prot.rescue_below.is_some() || prot.experience_header.is_some(),
            events: Events::new(&config),
            experience_values: match prot.experience_header {
                Some(_) => (0..=100u8)
                    .flat_map(|score| ["ok", "degraded"].map(|state| (score, state)))
                    .map(|(score, state)| {
                        HeaderValue::from_str(&format!("score={score}; state={state}"))
                            .expect("digits, letters and spaces make a valid header value")
                    })
                    .collect(),
                None => Vec::new(),
            },
            try_timeouts: config.routes.iter().map(|_| AtomicU64::new(0)).collect(),
            try_timeouts_seen: config.routes.iter().map(|_| AtomicU64::new(0)).collect(),
            slo_alerted: Default::default(),
            config,
        })
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn store(&self) -> &CustomerStore {
        &self.store
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    pub fn upstreams(&self) -> &Upstreams {
        &self.upstreams
    }

    pub fn events(&self) -> &Events {
        &self.events
    }

    pub fn identity_resolver(&self) -> &IdentityResolver {
        &self.identity
    }

    pub fn route_stats(&self, id: RouteId) -> Option<&LatencyStats> {
        self.route_stats.get(id as usize)
    }

    pub fn upstream_stats(&self, id: UpstreamId) -> Option<&LatencyStats> {
        self.upstream_stats.get(id as usize)
    }

    pub fn route_config(&self, id: RouteId) -> Option<&RouteConfig> {
        self.config.routes.get(id as usize)
    }

    pub fn upstream_addr(&self, id: UpstreamId) -> Option<SocketAddr> {
        self.config.upstreams.get(id as usize).copied()
    }

    pub fn is_degraded(&self, score: f64) -> bool {
        score < self.config.experience.degraded_below
    }

    /// Admits the request, identifies the customer, finds the route and decides on protection.
    pub fn begin(&self, ex: &mut Exchange, req: &RequestHead<'_>, now_ms: u64) -> Admission {
        ex.wall_ms = now_ms;
        let identity = self.identity.resolve(req.uri, req.headers, req.peer);
        if exchange::head_size(req) > self.config.server.max_header_bytes {
            ex.identity = Some(identity);
            return Admission::HeadTooLarge;
        }
        ex.route = self.routes.find(req.method, req.uri, req.headers);
        let peek = if self.peek_customer {
            self.store.peek(&identity.id, now_ms)
        } else {
            None
        };
        ex.score = peek.map(|p| p.score);
        let tier_protected = self
            .config
            .tiers
            .get(identity.tier as usize)
            .is_some_and(|t| t.protected);
        let critical = ex
            .route
            .and_then(|r| self.route_config(r))
            .is_some_and(|r| r.critical);
        ex.protection = protection::decide(
            &self.config.protection,
            tier_protected,
            critical,
            peek.is_some_and(|p| p.rescued),
        );
        ex.identity = Some(identity);
        ex.idempotent = req.method.is_idempotent();
        // Only a protected request's try can be cut short; nobody else needs the look-ups.
        ex.bodiless = ex.protection.is_some()
            && !req.headers.contains_key(http::header::TRANSFER_ENCODING)
            && req
                .headers
                .get(http::header::CONTENT_LENGTH)
                .is_none_or(|v| v.as_bytes() == b"0");
        match ex.route {
            Some(r) => Admission::Route(r),
            None => Admission::NoRoute,
        }
    }

    /// Chooses the upstream for the next attempt: protected traffic tries the route's reserved pool
    /// first, and a retry goes to an upstream this request has not tried. `None` when there is none.
    pub fn choose_upstream<R: Rng + ?Sized>(
        &self,
        ex: &mut Exchange,
        now: Instant,
        rng: &mut R,
    ) -> Option<UpstreamId> {
        let route = self.route_config(ex.route?)?;
        let protected = ex.protection.is_some();
        let first = ex.attempt.is_none() && ex.tried.as_slice().is_empty();
        if first {
            self.upstreams.count_request(route.pool, now);
            if protected {
                ex.rerouted_from = self.upstreams.out_of_service(route.pool);
            }
        }
        // End the previous attempt (its in-flight count) and its measurements before the next:
        // if no upstream is left, nothing stale may be attributed to the request.
        ex.attempt = None;
        ex.upstream = None;
        ex.connected = None;
        ex.response_head = None;
        ex.upstream_status = None;
        let reserved = if protected {
            route.reserved_pool.and_then(|p| {
                self.upstreams
                    .pick_serving(p, true, ex.tried.as_slice(), now, rng)
            })
        } else {
            None
        };
        let pick = reserved.or_else(|| {
            self.upstreams.pick(
                route.pool,
                protected,
                ex.idempotent,
                ex.tried.as_slice(),
                now,
                rng,
            )
        })?;
        let up = pick.upstream;
        ex.attempt = Some(Attempt {
            upstream: Some(up),
            _pick: Some(pick),
            started: now,
            observed: None,
        });
        ex.tried.push(up);
        ex.upstream = Some(up);
        Some(up)
    }

    /// Tells usher which upstream an embedding proxy chose by itself, so the request is attributed
    /// to it and its result feeds that upstream's health. Addresses usher does not know are recorded
    /// as no upstream.
    pub fn attribute_upstream(&self, ex: &mut Exchange, addr: SocketAddr, now: Instant) {
        let up = self.config.upstream_id(addr);
        ex.attempt = Some(Attempt {
            upstream: up,
            _pick: None,
            started: now,
            observed: None,
        });
        if let Some(u) = up {
            ex.tried.push(u);
        }
        ex.upstream = up;
        ex.connected = None;
        ex.response_head = None;
        ex.upstream_status = None;
    }

    /// Whether an embedding proxy's own balancer should accept upstream `addr` for this request
    /// (for `LoadBalancer::select_with`): not ejected, not failing its checks, not tried already.
    pub fn accepts(&self, ex: &Exchange, addr: SocketAddr) -> bool {
        match self.config.upstream_id(addr) {
            Some(u) => !ex.tried.as_slice().contains(&u) && self.upstreams.serving(u),
            None => true,
        }
    }

    pub fn connected(&self, ex: &mut Exchange, now: Instant) {
        ex.connected = Some(now);
    }

    /// The upstream's response head arrived: its status and latency feed the upstream's health.
    /// Informational (1xx) heads are not the answer and are ignored.
    pub fn response_head(&self, ex: &mut Exchange, status: u16, now: Instant) {
        if status < 200 {
            return;
        }
        if ex.connected.is_none() {
            // Not every embedder reports the connection: connect time is then folded into ttfb.
            ex.connected = ex.attempt.as_ref().map(|a| a.started);
        }
        ex.response_head = Some(now);
        ex.upstream_status = Some(status);
        let result = if status >= 500 {
            AttemptResult::Failed
        } else {
            AttemptResult::Ok
        };
        self.observe_attempt(ex, result, now);
    }

    /// An attempt failed before a usable response (connect failure, timeout, broken response).
    /// Only the upstream's failures count against it: a client that sent garbage or went away
    /// says nothing about the upstream, and must not be able to get one ejected.
    pub fn attempt_failed(&self, ex: &mut Exchange, outcome: Outcome, now: Instant) {
        if let Some(result) = Self::upstream_result(outcome) {
            self.observe_attempt(ex, result, now);
        }
    }

    fn upstream_result(outcome: Outcome) -> Option<AttemptResult> {
        match outcome {
            Outcome::ConnectFailure => Some(AttemptResult::ConnectFailed),
            Outcome::Upstream5xx | Outcome::Timeout => Some(AttemptResult::Failed),
            Outcome::Ok | Outcome::ClientError | Outcome::ClientGone => None,
        }
    }

    /// Feeds the current attempt's result to its upstream's health, once; a failure after a good
    /// head (a body cut short) is fed once more.
    fn observe_attempt(&self, ex: &mut Exchange, result: AttemptResult, now: Instant) {
        let Some(a) = ex.attempt.as_mut() else { return };
        let failed = result != AttemptResult::Ok;
        match a.observed {
            None => {}
            Some(false) if failed => {}
            Some(_) => return,
        }
        let first_report = a.observed.is_none();
        a.observed = Some(failed);
        if let Some(u) = a.upstream {
            let latency = now.saturating_duration_since(a.started);
            // /upstreams counts attempts: a failed try that was retried elsewhere is still the
            // upstream's failure. A refused connection has no latency worth timing.
            if let Some(st) = self.upstream_stats.get(u as usize).filter(|_| first_report) {
                let timed = (result != AttemptResult::ConnectFailed).then_some(latency);
                st.record(timed, failed, (0, 0), ex.wall_at(now));
            }
            if let Some(e) =
                self.upstreams
                    .observe(u, result, latency, now, &mut rand::thread_rng())
            {
                self.health_event(e);
            }
        }
    }

    /// Decides whether a failed attempt is retried on another upstream. `reached_upstream`: the
    /// request may have been seen by the upstream (anything but a failed connect), so only idempotent
    /// methods may be retried. Takes the retry from the pool's budget when granting it.
    pub fn retry(&self, ex: &mut Exchange, reached_upstream: bool, now: Instant) -> RetryVerdict {
        let idempotent = ex.idempotent;
        let verdict = self.retry_verdict(ex, idempotent, reached_upstream, now);
        match verdict {
            RetryVerdict::Retry => {
                ex.retries += 1;
                self.metrics.retry_granted();
            }
            RetryVerdict::BudgetExhausted => self.metrics.retry_budget_exhausted.inc(),
            _ => {}
        }
        verdict
    }

    fn retry_verdict(
        &self,
        ex: &Exchange,
        idempotent: bool,
        reached: bool,
        now: Instant,
    ) -> RetryVerdict {
        if !self.config.retries.enabled || ex.retries >= 1 {
            return RetryVerdict::NotAllowed;
        }
        if reached && !idempotent {
            return RetryVerdict::NotIdempotent;
        }
        let Some(route) = ex.route.and_then(|r| self.route_config(r)) else {
            return RetryVerdict::NoAlternative;
        };
        let tried = ex.tried.as_slice();
        let reserved = ex.protection.is_some()
            && route
                .reserved_pool
                .is_some_and(|p| self.upstreams.has_alternative(p, false, tried));
        if !reserved && !self.upstreams.has_alternative(route.pool, true, tried) {
            return RetryVerdict::NoAlternative;
        }
        if !self.upstreams.try_retry(route.pool, now) {
            return RetryVerdict::BudgetExhausted;
        }
        RetryVerdict::Retry
    }

    /// The read timeout for a protected request's try, when it should be shorter than the pool's:
    /// `protection.try_timeout_factor` times the route's recent p99, at least
    /// `protection.try_timeout_floor`. An upstream that has just turned slow then costs a protected
    /// customer that long, not its whole delay: the try is given up and retried elsewhere. Only for
    /// a first try that can be retried (idempotent, no body, another upstream, budget left), since
    /// a try cut short with nowhere to go would fail a request that was merely slow.
    ///
    /// Pingora applies a read timeout to every read of the answer, so a body that pauses longer
    /// than this is cut off too: routes that stream belong in a setup with the factor at 0.
    pub fn try_timeout(&self, ex: &mut Exchange, now: Instant) -> Option<Duration> {
        ex.try_timeout = None;
        if ex.protection.is_none()
            || ex.retries > 0
            || !ex.idempotent
            || !ex.bodiless
            || !self.config.retries.enabled
        {
            return None;
        }
        let r = ex.route?;
        let us = self.try_timeouts.get(r as usize)?.load(Ordering::Relaxed);
        let pool = self.route_config(r)?.pool;
        let limit = Duration::from_micros(us);
        if us == 0 || limit >= self.config.pools.get(pool as usize)?.read_timeout {
            return None;
        }
        if !self
            .upstreams
            .has_alternative(pool, true, ex.tried.as_slice())
            || !self.upstreams.retry_has_room(pool, now)
        {
            return None;
        }
        ex.try_timeout = Some(limit);
        Some(limit)
    }

    /// The current try ran out of its [`Self::try_timeout`]. The upstream is slow, not known to be
    /// failing (it may well answer a moment later), so it is charged the time waited: enough for
    /// balancing to steer away, without counting towards failure-rate ejection.
    pub fn try_timed_out(&self, ex: &mut Exchange, now: Instant) {
        self.metrics.try_timeouts.inc();
        self.observe_attempt(ex, AttemptResult::Ok, now);
    }

    /// Recomputes the try timeout of each route where protection can apply, from the p99 of its
    /// latency window. Periodic; skips routes without new requests.
    pub fn refresh_try_timeouts(&self, now_ms: u64) {
        let p = &self.config.protection;
        if p.try_timeout_factor == 0.0 {
            return;
        }
        let anywhere = p.protected_anywhere || p.rescue_below.is_some();
        for (i, route) in self.config.routes.iter().enumerate() {
            if !(route.critical || anywhere) {
                continue;
            }
            let stats = &self.route_stats[i];
            let requests = stats.requests();
            if self.try_timeouts_seen[i].swap(requests, Ordering::Relaxed) == requests {
                continue;
            }
            let (samples, p99_us) = stats.window_quantile(0.99, now_ms);
            let us = if samples < TRY_TIMEOUT_MIN_SAMPLES {
                0
            } else {
                let floor = p.try_timeout_floor.as_micros() as f64;
                (p99_us as f64 * p.try_timeout_factor).max(floor) as u64
            };
            self.try_timeouts[i].store(us, Ordering::Relaxed);
        }
    }

    /// A route's current try timeout for protected requests, if any.
    pub fn route_try_timeout(&self, r: RouteId) -> Option<Duration> {
        let us = self.try_timeouts.get(r as usize)?.load(Ordering::Relaxed);
        (us > 0).then(|| Duration::from_micros(us))
    }

    /// A pooled keep-alive connection turned out to be closed: retry on the same upstream, once,
    /// without blaming it or charging the budget. Returns whether to retry.
    pub fn retry_stale_connection(&self, ex: &mut Exchange) -> bool {
        // Not the upstream's fault, retried or not: nothing more about this attempt is fed to its
        // health.
        if let Some(a) = ex.attempt.as_mut() {
            a.observed = Some(true);
        }
        if !ex.idempotent || ex.stale_retries >= 1 {
            return false;
        }
        ex.stale_retries += 1;
        ex.tried.pop();
        true
    }

    /// Applies one health change: metrics and a log line.
    pub fn health_event(&self, e: HealthEvent) {
        let addr = |u: UpstreamId| {
            self.upstream_addr(u)
                .map_or_else(|| "?".to_string(), |a| a.to_string())
        };
        match e {
            HealthEvent::Ejected {
                upstream,
                reason,
                until,
            } => {
                self.metrics.ejected(upstream, reason.as_str());
                tracing::warn!(
                    upstream = %addr(upstream),
                    reason = reason.as_str(),
                    for_secs = until.saturating_duration_since(Instant::now()).as_secs(),
                    "upstream ejected: {}",
                    reason.describe(&self.config.outlier)
                );
            }
            HealthEvent::EjectionSuppressed { upstream, reason } => {
                tracing::warn!(upstream = %addr(upstream), reason = reason.as_str(),
                    "upstream would be ejected, but its pool cannot spare it (outlier.max_ejected_share)");
            }
            HealthEvent::Probing { upstream } => {
                tracing::info!(upstream = %addr(upstream), "ejection over: probing upstream");
            }
            HealthEvent::Restored { upstream } => {
                tracing::info!(upstream = %addr(upstream), "upstream restored after successful probes");
            }
            HealthEvent::ActiveDown { upstream } => {
                tracing::warn!(upstream = %addr(upstream), "upstream failed its health checks");
            }
            HealthEvent::ActiveUp { upstream } => {
                tracing::info!(upstream = %addr(upstream), "upstream passes its health checks again");
            }
        }
        self.refresh_upstream_states(Instant::now());
        self.notify_health(&e, wall_ms());
    }

    /// Periodic: ends ejections that are over and applies the windowed outlier rules.
    pub fn sweep(&self, now: Instant) {
        for e in self.upstreams.sweep(now, &mut rand::thread_rng()) {
            self.health_event(e);
        }
    }

    fn refresh_upstream_states(&self, now: Instant) {
        for u in 0..self.config.upstreams.len() as UpstreamId {
            let v = self.upstreams.view(u, now);
            let state = if !v.active_up { "unhealthy" } else { v.state };
            self.metrics.set_upstream_state(u, state);
        }
    }

    /// Records the finished request everywhere it counts. Idempotent per exchange.
    pub fn finish(&self, ex: &mut Exchange, f: &Finish<'_>) -> Option<Recorded> {
        if ex.recorded {
            return None;
        }
        ex.recorded = true;
        let outcome = f.failure.unwrap_or_else(|| Outcome::of_status(f.status));
        let connect = match (ex.attempt.as_ref().map(|a| a.started), ex.connected) {
            (Some(a), Some(b)) => Some(b.saturating_duration_since(a)),
            _ => None,
        };
        let ttfb = match (ex.connected, ex.response_head) {
            (Some(a), Some(b)) => Some(b.saturating_duration_since(a)),
            _ => None,
        };
        // A failure the proxy hooks did not report (or a body cut short after a good head) still
        // counts against the upstream; then dropping the attempt releases its in-flight count.
        if let Some(result) = Self::upstream_result(outcome) {
            self.observe_attempt(ex, result, f.now);
        }
        ex.attempt = None;
        let anonymous;
        let identity = match &ex.identity {
            Some(i) => i,
            None => {
                // The request failed before identification (e.g. a malformed head): count it, but
                // against nobody in particular.
                anonymous = Identity {
                    id: "anon:unknown".into(),
                    tier: self.config.identity.default_tier,
                    untrusted_tier_header: false,
                };
                &anonymous
            }
        };
        if let Some(p) = ex.protection {
            self.metrics.protected(p);
        }
        if ex.retries > 0 {
            self.metrics.retry_finished(!outcome.is_failure());
        }
        let m = Measurement {
            identity,
            route: ex.route,
            upstream: ex.upstream,
            method: f.method,
            path: f.path,
            status: f.status,
            outcome,
            total: f.now.saturating_duration_since(ex.started),
            connect,
            ttfb,
            bytes_in: f.bytes_in,
            bytes_out: f.bytes_out,
            now_ms: f.now_ms,
        };
        let rec = self.record(&m);
        if let (Some(sick), Some(p)) = (ex.rerouted_from, ex.protection) {
            self.notify_rerouted(&m, sick, p.as_str());
        }
        Some(rec)
    }

    /// Records one measurement: metrics, aggregates and the customer's experience.
    pub fn record(&self, m: &Measurement<'_>) -> Recorded {
        let failed = m.outcome.is_failure();
        self.metrics
            .observe_request(m.route, m.upstream, m.outcome, m.total, m.upstream_time());
        let bytes = (m.bytes_in, m.bytes_out);
        if let Some(s) = m.route.and_then(|r| self.route_stats.get(r as usize)) {
            s.record(Some(m.total), failed, bytes, m.now_ms);
        }
        if let Some(s) = m.upstream.and_then(|u| self.upstream_stats.get(u as usize)) {
            // Attempts were counted as they ended; the bytes are known only now.
            s.add_bytes(bytes);
        }
        let target = m
            .route
            .and_then(|r| self.route_config(r))
            .map_or(Duration::from_millis(500), |r| r.target);
        let judgement = Judgement::of(m.total, target, failed);
        let step = Step::new(
            m.now_ms,
            m.route,
            m.method,
            m.path,
            m.status,
            m.total.as_micros().min(u32::MAX as u128) as u32,
            m.upstream,
            m.outcome,
        );
        let rec = self.store.record(
            &m.identity.id,
            &Observation {
                tier: m.identity.tier,
                judgement,
                failed,
                step,
            },
            m.now_ms,
        );
        if rec.evicted {
            self.metrics.customers_evicted.inc();
        }
        let frustrated = judgement == Judgement::Frustrated;
        if !self.events.funnels.is_empty() {
            self.events.funnels.observe(
                &m.identity.id,
                m.identity.tier,
                m.method,
                m.path,
                failed,
                frustrated,
                m.now_ms,
            );
        }
        if let Some(r) = m.route {
            self.events
                .slo
                .record(r as usize, !failed && m.total <= target, m.now_ms);
        }
        self.notify_request(m, &rec);
        rec
    }

    /// Rescans the store for the periodic gauges and score distribution.
    pub fn refresh_summary(&self, now_ms: u64) {
        let s = self
            .store
            .summary(self.config.experience.degraded_below, now_ms);
        self.metrics.set_summary(&s);
    }

    /// The value of the experience header for this request, if configured and the customer is known.
    pub fn experience_header(&self, ex: &Exchange) -> Option<(&http::HeaderName, HeaderValue)> {
        let name = self.config.protection.experience_header.as_ref()?;
        let score = ex.score?;
        let rounded = score.round().clamp(0.0, 100.0) as usize;
        let value = self
            .experience_values
            .get(rounded * 2 + usize::from(self.is_degraded(score)))?;
        Some((name, value.clone()))
    }
}

#[cfg(test)]
mod tests;
