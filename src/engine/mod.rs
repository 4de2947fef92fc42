//! The usher engine: identity, routing, protection, upstream choice and health, measurement and the
//! experience store, wired together as plain Rust.
//!
//! Two lifetimes, kept apart. What a configuration decides is a [`Generation`]: compiled once,
//! immutable, held in an `ArcSwap` and replaced whole by a reload. What usher learns is the
//! [`State`]: it lasts for the process and is keyed by names and addresses, so a reload carries it
//! over. Each request carries an [`Exchange`]: the per-request state that the proxy (or an
//! embedding proxy) keeps in its own context and hands back at each step; it pins the generation
//! the request started on. Data flows one way: request -> identity -> route -> protection ->
//! upstream -> measured response -> upstream health and customer experience. Nothing here knows
//! Pingora; `crate::proxy` adapts its phases to these calls. Time is passed in by the caller.

mod access;
mod exchange;
mod notify;
mod reload;

pub use crate::generation::{Generation, Source};
pub use crate::state::{InFlight, RouteState, State};
pub use access::RequestFacts;
pub use exchange::{Admission, Exchange, Finish, RequestHead, RetryVerdict};
pub use reload::{ReloadError, Reloaded};

use crate::config::Config;
use crate::experience::{Judgement, Observation, Recorded, Step};
use crate::identity::Identity;
use crate::ids::{RouteId, UpstreamId};
use crate::measure::{Measurement, Outcome};
use crate::protection;
use crate::upstream::{AttemptResult, HealthEvent};
use arc_swap::ArcSwap;
use exchange::Attempt;
use http::HeaderValue;
use rand::Rng;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use crate::time::wall_ms;

/// Requests in a route's latency window before its p99 sets a try timeout: below that the p99 is
/// a guess, and a guess on the low side would cut off healthy answers.
const TRY_TIMEOUT_MIN_SAMPLES: u64 = 100;
/// Requests in a route's latency window before silence on it can mean a hang (see
/// `upstream::Lane`): a few are enough to know its usual wait is not seconds.
const HUNG_MIN_SAMPLES: u64 = 20;

pub struct Usher {
    state: State,
    current: ArcSwap<Generation>,
    /// One reload at a time.
    reloading: parking_lot::Mutex<()>,
    /// The number of the generation in force, for tasks that follow it (health checks, timers).
    changed: tokio::sync::watch::Sender<u64>,
    /// Set once usher has stopped for good: requests drained, events written out, state saved.
    closed: tokio::sync::watch::Sender<bool>,
}

impl Usher {
    pub fn new(config: Config) -> Arc<Usher> {
        Self::starting_at(config, Instant::now())
    }

    /// A usher on a configuration that came from no file (an embedder's, a test's): it has
    /// nothing to reload from.
    pub fn starting_at(config: Config, now: Instant) -> Arc<Usher> {
        let source = Source {
            path: None,
            hash: String::new(),
            loaded_ms: wall_ms(),
            cause: "start",
        };
        Self::with_source(config, source, now)
    }

    /// A usher on `config`, loaded from `source`.
    pub fn with_source(config: Config, source: Source, now: Instant) -> Arc<Usher> {
        let state = State::new(config.experience.track_max, now, wall_ms());
        let gen = Generation::build(config, &state, 1, source, now);
        state
            .events
            .reconcile(&gen.config.events.sinks, &gen.config.events.spool_dir);
        state.metrics.config_loaded(1, gen.source.loaded_ms);
        gen.install(&state);
        Arc::new(Usher {
            state,
            current: ArcSwap::from_pointee(gen),
            reloading: parking_lot::Mutex::new(()),
            changed: tokio::sync::watch::channel(1).0,
            closed: tokio::sync::watch::channel(false).0,
        })
    }

    /// Watches for usher having stopped for good (see `crate::tasks`).
    pub fn closed(&self) -> tokio::sync::watch::Receiver<bool> {
        self.closed.subscribe()
    }

    pub(crate) fn mark_closed(&self) {
        self.closed.send_replace(true);
    }

    /// The generation in force now. A request keeps the one it started on (see [`Exchange`]).
    pub fn generation(&self) -> Arc<Generation> {
        self.current.load_full()
    }

    /// Watches the number of the generation in force.
    pub fn generations(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changed.subscribe()
    }

    pub fn state(&self) -> &State {
        &self.state
    }

    /// Forgets customer `id` (a person's right to erasure): score, journey, funnel progress,
    /// cooldowns and recent events; the next snapshot no longer holds them. False when usher knew
    /// nothing of them.
    ///
    /// `key` is the id, or the customer's pseudonym: an erasure request may come from whoever
    /// received an event. A pseudonym of someone no longer in the store is still erased wherever
    /// it or the id behind it is held (the ring and cooldowns by the pseudonym, funnels by trying
    /// each id there). Returns the id erased, when usher could tell it.
    pub fn erase_customer(&self, key: &str) -> (Option<String>, bool, crate::events::Forgotten) {
        let g = self.generation();
        let pseudonyms = &g.config.privacy.pseudonyms;
        match self.resolve_customer(key) {
            Some(id) => {
                let known = self.state.store.erase(&id);
                let subject = pseudonyms.of(&id).into_owned();
                let forgotten = self.state.events.forget_customer(&id, &subject);
                (Some(id), known, forgotten)
            }
            None => {
                let forgotten = self
                    .state
                    .events
                    .forget_customer_where(|c| pseudonyms.of(c) == key, key);
                (None, false, forgotten)
            }
        }
    }

    /// The customer `key` names: a tracked id, or the pseudonym of a tracked id (what an event or
    /// a log line gave the person looking them up); `None` for a pseudonym of nobody tracked. A
    /// pseudonym is found by trying every tracked id: tens of milliseconds at a million customers
    /// (`cargo bench --bench admin_lookup`), and
    /// only for something shaped like one that is not an id (pseudonym-shaped ids are refused
    /// while pseudonyms are on).
    pub fn resolve_customer(&self, key: &str) -> Option<String> {
        let pseudonyms = &self.generation().config.privacy.pseudonyms;
        if !pseudonyms.is_on()
            || !crate::privacy::Pseudonyms::looks_like(key)
            || self.state.store.contains(key)
        {
            return Some(key.to_string());
        }
        self.state.store.find_id(|id| pseudonyms.of(id) == key)
    }

    /// Admits the request, identifies the customer, finds the route and decides on protection.
    pub fn begin(&self, ex: &mut Exchange, req: &RequestHead<'_>, now_ms: u64) -> Admission {
        let g = self.current.load_full();
        ex.wall_ms = now_ms;
        if !ex.admitted {
            g.in_flight.enter();
            ex.admitted = true;
        }
        ex.request_id = crate::request_id::of(
            req.headers.get(&g.config.server.request_id_header),
            req.headers.get(crate::request_id::TRACEPARENT),
            rand::random::<u128>,
        );
        ex.upgrade = exchange::is_websocket_upgrade(req);
        let identity = g.identity.resolve(req.uri, req.headers, req.peer, now_ms);
        if let Some(t) = identity.token {
            self.state.metrics.token(t.as_str());
        }
        let mut hops = crate::identity::headers::hops(req.headers);
        let looped = hops
            .by_ref()
            .take(crate::identity::headers::MAX_HOPS)
            .any(|h| h == self.state.instance)
            || hops.next().is_some();
        if looped {
            ex.identity = Some(identity);
            ex.gen = Some(g);
            return Admission::Loop;
        }
        if req.version == http::Version::HTTP_11 && !req.headers.contains_key(http::header::HOST) {
            // RFC 9112 3.2: a server must answer 400 to an HTTP/1.1 request without Host.
            ex.identity = Some(identity);
            ex.gen = Some(g);
            return Admission::NoHost;
        }
        if exchange::head_size(req) > g.config.server.max_header_bytes {
            ex.identity = Some(identity);
            ex.gen = Some(g);
            return Admission::HeadTooLarge;
        }
        ex.route = g.routes.find(req.method, req.uri, req.headers);
        ex.kept_query = ex
            .route
            .and_then(|r| g.config.routes.get(r as usize))
            .filter(|r| r.keep_query)
            .and_then(|_| req.uri.query())
            .map(compact_str::CompactString::from);
        if req.version == http::Version::HTTP_2 && ex.stream.is_none() {
            ex.stream = self.state.proxy_connections.admit_stream();
            if ex.stream.is_none() {
                ex.busy = true;
                ex.identity = Some(identity);
                ex.gen = Some(g);
                return Admission::Busy;
            }
        }
        let peek = if g.peek_customer {
            self.state.store.peek(&identity.id, now_ms, &g.store.model)
        } else {
            None
        };
        ex.score = peek.map(|p| p.score);
        ex.known_requests = peek.map_or(0, |p| p.requests);
        let tier_protected = g
            .config
            .tiers
            .get(identity.tier as usize)
            .is_some_and(|t| t.protected);
        let critical = ex
            .route
            .and_then(|r| g.config.routes.get(r as usize))
            .is_some_and(|r| r.critical);
        ex.protection = protection::decide(
            &g.config.protection,
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
        ex.gen = Some(g);
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
        let g = ex.gen.as_deref()?;
        let route = g.config.routes.get(ex.route? as usize)?;
        let ups = &g.upstreams;
        let protected = ex.protection.is_some();
        let first = ex.attempt.is_none() && ex.tried.as_slice().is_empty();
        if first {
            ups.count_request(route.pool, now);
            if protected {
                ex.rerouted_from = ups.out_of_service(route.pool, ex.route, now);
            }
        }
        // End the previous attempt (its in-flight count) and its measurements before the next:
        // if no upstream is left, nothing stale may be attributed to the request.
        ex.attempt = None;
        ex.upstream = None;
        ex.pool = None;
        ex.connected = None;
        ex.response_head = None;
        ex.upstream_status = None;
        let reserved = if protected {
            route
                .reserved_pool
                .and_then(|p| ups.pick_serving(p, ex.route, true, ex.tried.as_slice(), now, rng))
        } else {
            None
        };
        let pick = reserved.or_else(|| {
            ups.pick(
                route.pool,
                ex.route,
                protected,
                ex.idempotent,
                ex.tried.as_slice(),
                now,
                rng,
            )
        })?;
        let up = pick.upstream;
        ex.pool = Some(pick.pool);
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
        let Some(g) = ex.gen.as_deref() else { return };
        let first = ex.attempt.is_none() && ex.tried.as_slice().is_empty();
        if let (true, Some(route)) = (
            first,
            ex.route.and_then(|r| g.config.routes.get(r as usize)),
        ) {
            // The retry budget is a share of original requests: count this one, as usher's own
            // choice does.
            g.upstreams.count_request(route.pool, now);
        }
        let up = g.upstreams.find(addr);
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
        let Some(g) = ex.gen.as_deref() else {
            return true;
        };
        match g.upstreams.find(addr) {
            Some(u) => !ex.tried.as_slice().contains(&u) && g.upstreams.serving(u),
            None => true,
        }
    }

    pub fn connected(&self, ex: &mut Exchange, now: Instant) {
        ex.connected = Some(now);
    }

    /// The upstream's response head arrived: its status and latency feed the upstream's health.
    /// Informational (1xx) heads are not the answer and are ignored, but for 101: the answer to
    /// an upgrade.
    pub fn response_head(&self, ex: &mut Exchange, status: u16, now: Instant) {
        if status < 200 && status != 101 {
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
            Outcome::Upstream5xx => Some(AttemptResult::Failed),
            Outcome::Timeout => Some(AttemptResult::TimedOut),
            // Out of descriptors or memory here says nothing about the upstream.
            Outcome::Ok | Outcome::ClientError | Outcome::ClientGone | Outcome::LocalResource => {
                None
            }
        }
    }

    /// Feeds the current attempt's result to its upstream's health, once; a failure after a good
    /// head (a body cut short) is fed once more.
    fn observe_attempt(&self, ex: &mut Exchange, result: AttemptResult, now: Instant) {
        let wall = ex.wall_at(now);
        let (Some(g), Some(a)) = (ex.gen.as_deref(), ex.attempt.as_mut()) else {
            return;
        };
        let failed = result != AttemptResult::Ok;
        match a.observed {
            None => {}
            Some(false) if failed => {}
            Some(_) => return,
        }
        let first_report = a.observed.is_none();
        a.observed = Some(failed);
        let Some(u) = a.upstream else { return };
        let latency = now.saturating_duration_since(a.started);
        // /upstreams counts attempts: a failed try that was retried elsewhere is still the
        // upstream's failure. A refused connection has no latency worth timing.
        if first_report {
            let timed = (result != AttemptResult::ConnectFailed).then_some(latency);
            g.upstreams
                .node(u)
                .stats()
                .record(timed, failed, (0, 0), wall);
        }
        for e in g
            .upstreams
            .observe_on(ex.route, u, result, latency, now, &mut rand::thread_rng())
        {
            self.health_event(g, e);
        }
    }

    /// Decides whether a failed attempt is retried on another upstream. `reached_upstream`: the
    /// request may have been seen by the upstream (anything but a failed connect), so only idempotent
    /// methods may be retried. Takes the retry from the pool's budget when granting it.
    pub fn retry(&self, ex: &mut Exchange, reached_upstream: bool, now: Instant) -> RetryVerdict {
        let verdict = Self::retry_verdict(ex, reached_upstream, now);
        match verdict {
            RetryVerdict::Retry => {
                ex.retries += 1;
                self.state.metrics.retry_granted();
            }
            RetryVerdict::BudgetExhausted => self.state.metrics.retry_budget_exhausted.inc(),
            _ => {}
        }
        verdict
    }

    fn retry_verdict(ex: &Exchange, reached: bool, now: Instant) -> RetryVerdict {
        let Some(g) = ex.gen.as_deref() else {
            return RetryVerdict::NoAlternative;
        };
        if !g.config.retries.enabled || ex.retries >= 1 {
            return RetryVerdict::NotAllowed;
        }
        if reached && !ex.idempotent {
            return RetryVerdict::NotIdempotent;
        }
        let Some(route) = ex.route.and_then(|r| g.config.routes.get(r as usize)) else {
            return RetryVerdict::NoAlternative;
        };
        let tried = ex.tried.as_slice();
        let ups = &g.upstreams;
        let reserved = ex.protection.is_some()
            && route
                .reserved_pool
                .is_some_and(|p| ups.has_alternative(p, ex.route, false, tried, now));
        if !reserved && !ups.has_alternative(route.pool, ex.route, true, tried, now) {
            return RetryVerdict::NoAlternative;
        }
        if !ups.try_retry(route.pool, now) {
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
        let g = ex.gen.as_deref()?;
        if ex.protection.is_none()
            || ex.streams()
            || ex.retries > 0
            || !ex.idempotent
            || !ex.bodiless
            || !g.config.retries.enabled
        {
            return None;
        }
        let r = ex.route?;
        let us = g.route_state(r)?.try_timeout_us.load(Ordering::Relaxed);
        let pool = g.config.routes.get(r as usize)?.pool;
        let limit = Duration::from_micros(us);
        if us == 0 || limit >= g.config.pools.get(pool as usize)?.read_timeout {
            return None;
        }
        if !g
            .upstreams
            .has_alternative(pool, ex.route, true, ex.tried.as_slice(), now)
            || !g.upstreams.retry_has_room(pool, now)
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
        self.state.metrics.try_timeouts.inc();
        self.observe_attempt(ex, AttemptResult::Ok, now);
    }

    /// Recomputes the try timeout of each route where protection can apply, from the p99 of its
    /// latency window. Periodic; skips routes without new requests.
    pub fn refresh_try_timeouts(&self, now_ms: u64) {
        let g = self.generation();
        let p = &g.config.protection;
        if p.try_timeout_factor == 0.0 {
            return;
        }
        let anywhere = p.protected_anywhere || p.rescue_below.is_some();
        for (route, rs) in g.config.routes.iter().zip(&g.route_states) {
            if !(route.critical || anywhere) {
                continue;
            }
            let requests = rs.stats.requests();
            if rs.try_seen.swap(requests, Ordering::Relaxed) == requests {
                continue;
            }
            let (samples, p99_us) = rs.stats.window_quantile(0.99, now_ms);
            let us = if samples < TRY_TIMEOUT_MIN_SAMPLES {
                0
            } else {
                let floor = p.try_timeout_floor.as_micros() as f64;
                (p99_us as f64 * p.try_timeout_factor).max(floor) as u64
            };
            rs.try_timeout_us.store(us, Ordering::Relaxed);
        }
    }

    /// A route's current try timeout for protected requests, if any.
    pub fn route_try_timeout(&self, route: &str) -> Option<Duration> {
        let us = self
            .state
            .route(route)?
            .try_timeout_us
            .load(Ordering::Relaxed);
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

    /// Applies one health change of generation `g`: metrics, a log line, an event.
    pub fn health_event(&self, g: &Generation, e: HealthEvent) {
        let addr = |u: UpstreamId| g.upstreams.node(u).addr().to_string();
        // "" for the upstream as a whole: a log field and a metric label either way.
        let on = |r: Option<RouteId>| {
            r.and_then(|r| g.config.routes.get(r as usize))
                .map_or("", |r| r.name.as_str())
        };
        match e {
            HealthEvent::Ejected {
                upstream,
                route,
                reason,
                until,
            } => {
                self.state.metrics.ejected(
                    g.metrics.upstream_label(upstream),
                    on(route),
                    reason.as_str(),
                );
                tracing::warn!(
                    upstream = %addr(upstream),
                    route = on(route),
                    reason = reason.as_str(),
                    for_secs = until.saturating_duration_since(Instant::now()).as_secs(),
                    "upstream ejected{}: {}",
                    if route.is_some() { " on one route" } else { "" },
                    reason.describe(&g.config.outlier)
                );
            }
            HealthEvent::EjectionSuppressed {
                upstream,
                route,
                reason,
            } => {
                tracing::warn!(upstream = %addr(upstream), route = on(route), reason = reason.as_str(),
                    "upstream would be ejected, but its pool cannot spare it (outlier.max_ejected_share)");
            }
            HealthEvent::Probing { upstream, route } => {
                tracing::info!(upstream = %addr(upstream), route = on(route), "ejection over: probing upstream");
            }
            HealthEvent::Restored { upstream, route } => {
                tracing::info!(upstream = %addr(upstream), route = on(route), "upstream restored after successful probes");
            }
            HealthEvent::ActiveDown { upstream } => {
                tracing::warn!(upstream = %addr(upstream), "upstream failed its health checks");
            }
            HealthEvent::ActiveUp { upstream } => {
                tracing::info!(upstream = %addr(upstream), "upstream passes its health checks again");
            }
        }
        let now = Instant::now();
        g.refresh_upstream_states(now);
        g.refresh_pool_panic(&self.state.metrics, now);
        self.notify_health(g, &e, wall_ms());
    }

    /// Periodic: sets each route's hang threshold from its latency, ends ejections that are over,
    /// applies the windowed outlier rules and ejects what hangs.
    pub fn sweep(&self, now: Instant) {
        let g = self.generation();
        let now_ms = wall_ms();
        let o = &g.config.outlier;
        for (r, rs) in g.route_states.iter().enumerate() {
            let (samples, p99_us) = rs.stats.window_quantile(0.99, now_ms);
            // Until the route's latency is known, a long wait may be its normal: no hang yet.
            let after = (samples >= HUNG_MIN_SAMPLES).then(|| {
                Duration::from_micros((p99_us as f64 * o.hung_factor) as u64).max(o.hung_floor)
            });
            g.upstreams.set_hung_after(r as RouteId, after);
        }
        for e in g.upstreams.sweep(now, &mut rand::thread_rng()) {
            self.health_event(&g, e);
        }
        g.refresh_pool_panic(&self.state.metrics, now);
    }

    /// Records the finished request everywhere it counts. Idempotent per exchange.
    pub fn finish(&self, ex: &mut Exchange, f: &Finish<'_>) -> Option<Recorded> {
        if ex.recorded {
            return None;
        }
        ex.recorded = true;
        let outcome = match (ex.busy, f.failure) {
            (true, _) => Outcome::LocalResource,
            (false, Some(o)) => o,
            (false, None) => Outcome::of_status(f.status),
        };
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
        // A request that failed before admission (a malformed head) is counted on the generation
        // in force.
        let in_force;
        let g: &Generation = match ex.gen.as_deref() {
            Some(g) => g,
            None => {
                in_force = self.generation();
                &in_force
            }
        };
        let anonymous;
        let identity = match &ex.identity {
            Some(i) => i,
            None => {
                // The request failed before identification (e.g. a malformed head): count it, but
                // against nobody in particular.
                anonymous = Identity::unknown(g.config.identity.default_tier);
                &anonymous
            }
        };
        if let Some(p) = ex.protection {
            self.state.metrics.protected(p);
        }
        if ex.retries > 0 {
            self.state.metrics.retry_finished(!outcome.is_failure());
        }
        let total = f.now.saturating_duration_since(ex.started);
        // A stream or an upgraded connection lasts as long as its ends want: what the customer
        // waited for is its answer's head. Its whole length would make every WebSocket a
        // frustrated request and poison the route's p99 (and so its try timeout and hang limit).
        let judged = match (ex.streams() && f.status < 400, ex.response_head) {
            (true, Some(head)) => head.saturating_duration_since(ex.started),
            _ => total,
        };
        let m = Measurement {
            identity,
            route: ex.route,
            upstream: ex.upstream,
            method: f.method,
            path: f.path,
            query: ex.kept_query.as_deref(),
            request_id: ex.request_id.as_bytes(),
            status: f.status,
            outcome,
            total: judged,
            connect,
            ttfb,
            bytes_in: f.bytes_in,
            bytes_out: f.bytes_out,
            now_ms: f.now_ms,
        };
        let rec = self.record(g, &m);
        ex.finished = Some(exchange::Finished {
            outcome,
            total,
            upstream_time: m.upstream_time(),
            status: m.status,
            bytes_in: m.bytes_in,
            bytes_out: m.bytes_out,
            now_ms: m.now_ms,
            score: (!identity.id.is_empty()).then_some(rec.score),
            requests: rec.requests,
        });
        if let (Some(sick), Some(p)) = (ex.rerouted_from, ex.protection) {
            // Rerouted only if it went somewhere else: not when it failed before reaching any
            // upstream, nor when the only choice left was the one it was to avoid.
            if m.upstream.is_some_and(|u| u != sick) {
                self.notify_rerouted(g, &m, sick, p.as_str());
            }
        }
        if std::mem::take(&mut ex.admitted) {
            g.in_flight.leave();
        }
        Some(rec)
    }

    /// Records one measurement of generation `g`: metrics, aggregates and the customer's
    /// experience.
    pub fn record(&self, g: &Generation, m: &Measurement<'_>) -> Recorded {
        let failed = m.outcome.is_failure();
        g.metrics
            .observe_request(m.route, m.upstream, m.outcome, m.total, m.upstream_time());
        let bytes = (m.bytes_in, m.bytes_out);
        let route = m.route.and_then(|r| g.route_state(r));
        if let Some(rs) = route {
            rs.stats.record(Some(m.total), failed, bytes, m.now_ms);
        }
        if let Some(u) = m.upstream {
            // Attempts were counted as they ended; the bytes are known only now.
            g.upstreams.node(u).stats().add_bytes(bytes);
        }
        let route_config = m.route.and_then(|r| g.config.routes.get(r as usize));
        let target = route_config.map_or(crate::defaults::TARGET, |r| r.target);
        let judgement = Judgement::of(m.total, target, failed);
        let with_query;
        let journey_path = match m.query {
            Some(q) => {
                with_query = format!("{}?{q}", m.path);
                with_query.as_str()
            }
            None => m.path,
        };
        let mut step = Step::new(
            m.now_ms,
            route.map(|rs| rs.label),
            m.method,
            journey_path,
            m.status,
            m.total.as_micros().min(u32::MAX as u128) as u32,
            m.upstream.map(|u| g.upstreams.node(u).label()),
            m.outcome,
            m.request_id,
        );
        step.set_slow(m.total > target);
        let tier = g.tier_label(m.identity.tier);
        let rec = self.state.store.record(
            &m.identity.id,
            &Observation {
                tier,
                judgement,
                failed,
                step,
                // An anonymous id is an address many people may share (an office, a carrier's
                // NAT), and a streaming route's clients poll and reconnect by design: neither is
                // someone trying again.
                struggle: !m.identity.id.starts_with("anon:")
                    && !route_config.is_some_and(|r| r.streaming),
            },
            m.now_ms,
            &g.store,
        );
        if rec.evicted {
            self.state.metrics.customers_evicted.inc();
        }
        if !rec.marks.is_empty() {
            g.metrics.struggled(m.route, rec.marks);
        }
        let frustrated = judgement == Judgement::Frustrated;
        if !g.funnels.is_empty() {
            self.state.events.funnels.observe(
                &g.funnels,
                g.config.events.funnel_track_max,
                &m.identity.id,
                tier,
                m.identity.verified,
                m.method,
                m.path,
                failed,
                frustrated,
                m.now_ms,
            );
        }
        if let (Some(rs), Some(_)) = (route, route_config.and_then(|r| r.slo)) {
            rs.slo.lock().record(!failed && m.total <= target, m.now_ms);
        }
        self.notify_request(g, m, &rec);
        rec
    }

    /// Rescans the store for the periodic gauges and score distribution.
    pub fn refresh_summary(&self, now_ms: u64) {
        let g = self.generation();
        let s = self.state.store.summary(
            g.config.experience.degraded_below,
            g.config.experience.min_requests,
            now_ms,
            &g.store.model,
        );
        self.state.metrics.set_summary(&s);
        self.forget_past_retention(now_ms);
    }

    /// Forgets what is older than `privacy.retention`: idle customers, and ended journeys in the
    /// funnel history. Run with the summary, every `experience.summary_interval`.
    pub fn forget_past_retention(&self, now_ms: u64) -> usize {
        let g = self.generation();
        let before = now_ms.saturating_sub(crate::time::millis(g.config.privacy.retention));
        let customers = self.state.store.forget_idle(before);
        self.state.events.funnels.forget_ended_before(before);
        if customers > 0 {
            self.state
                .metrics
                .customers_expired
                .inc_by(customers as u64);
            self.state
                .retention_forgot
                .store(true, std::sync::atomic::Ordering::Release);
        }
        customers
    }

    /// The value of the experience header for this request, if configured and the customer is known.
    pub fn experience_header<'a>(
        &self,
        ex: &'a Exchange,
    ) -> Option<(&'a bytes::Bytes, HeaderValue)> {
        let g = ex.gen.as_deref()?;
        let name = g.experience_name.as_ref()?;
        let score = ex.score?;
        let rounded = score.round().clamp(0.0, 100.0) as usize;
        let value = g
            .experience_values
            .get(rounded * 2 + usize::from(g.is_degraded(score, ex.known_requests)))?;
        Some((name, value.clone()))
    }
}

#[cfg(test)]
pub(crate) mod testing;
#[cfg(test)]
mod tests;
