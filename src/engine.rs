//! The usher engine: identity, routing, upstream choice, measurement and the experience store, wired
//! together as plain Rust.
//!
//! One [`Usher`] per configuration, shared by every request. Each request carries an [`Exchange`]: the
//! per-request state that the proxy (or an embedding proxy) keeps in its own context and hands back at
//! each step. Data flows one way: request -> identity -> route -> upstream -> measured response ->
//! experience. Nothing here knows Pingora; `crate::proxy` adapts its phases to these calls.

use crate::config::{Config, PoolConfig, RouteConfig, RouteId, UpstreamId};
use crate::experience::{
    CustomerStore, Judgement, Observation, Recorded, ScoreModel, Step, StoreSettings,
};
use crate::identity::{Identity, IdentityResolver};
use crate::measure::{Measurement, Outcome};
use crate::metrics::Metrics;
use crate::routing::RouteTable;
use crate::stats::LatencyStats;
use crate::upstream::Pools;
use http::{HeaderMap, Method, Uri};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

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
    pools: Pools,
    store: CustomerStore,
    route_stats: Vec<LatencyStats>,
    upstream_stats: Vec<LatencyStats>,
    metrics: Metrics,
}

/// Per-request state. Create it when the request head has been read; keep it in the proxy's context.
#[derive(Debug, Clone)]
pub struct Exchange {
    pub(crate) started: Instant,
    pub(crate) identity: Option<Identity>,
    pub(crate) route: Option<RouteId>,
    pub(crate) upstream: Option<UpstreamId>,
    /// Upstreams already tried for this request, so a retry goes elsewhere.
    pub(crate) tried: Vec<UpstreamId>,
    pub(crate) peer_chosen: Option<Instant>,
    pub(crate) connected: Option<Instant>,
    pub(crate) response_head: Option<Instant>,
    pub(crate) upstream_status: Option<u16>,
    pub(crate) recorded: bool,
}

impl Default for Exchange {
    fn default() -> Self {
        Self::new()
    }
}

impl Exchange {
    pub fn new() -> Self {
        Self::starting_at(Instant::now())
    }

    pub fn starting_at(started: Instant) -> Self {
        Exchange {
            started,
            identity: None,
            route: None,
            upstream: None,
            tried: Vec::new(),
            peer_chosen: None,
            connected: None,
            response_head: None,
            upstream_status: None,
            recorded: false,
        }
    }

    pub fn identity(&self) -> Option<&Identity> {
        self.identity.as_ref()
    }

    pub fn route(&self) -> Option<RouteId> {
        self.route
    }

    pub fn upstream(&self) -> Option<UpstreamId> {
        self.upstream
    }

    pub fn started(&self) -> Instant {
        self.started
    }
}

/// What to do with a request once its head has been read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Proxy it on this route.
    Route(RouteId),
    /// No route matches: answer 404.
    NoRoute,
    /// Request line and headers exceed `server.max_header_bytes`: answer 431, forward nothing.
    HeadTooLarge,
}

impl Admission {
    /// The status to answer with instead of proxying, if any.
    pub fn refusal(self) -> Option<(u16, &'static str)> {
        match self {
            Admission::Route(_) => None,
            Admission::NoRoute => Some((404, "usher: no route matches this request\n")),
            Admission::HeadTooLarge => Some((431, "usher: request header fields too large\n")),
        }
    }
}

/// Bytes of the request head as sent on the wire (request line and header lines).
fn head_size(method: &Method, uri: &Uri, headers: &HeaderMap) -> usize {
    let line = method.as_str().len() + uri_len(uri) + " HTTP/1.1\r\n".len() + 1;
    headers
        .iter()
        .fold(line, |n, (k, v)| n + k.as_str().len() + v.len() + 4)
}

fn uri_len(uri: &Uri) -> usize {
    uri.path_and_query().map_or(1, |pq| pq.as_str().len())
        + uri.authority().map_or(0, |a| a.as_str().len())
}

/// What the caller supplies when a request ends.
#[derive(Debug, Clone)]
pub struct Finish<'a> {
    pub method: &'a Method,
    pub path: &'a str,
    /// Status sent to the client, 0 when none was.
    pub status: u16,
    /// The failure that ended the request, if it did not end with a delivered response.
    pub failure: Option<Outcome>,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub now: Instant,
    pub now_ms: u64,
}

impl Usher {
    pub fn new(config: Config) -> Arc<Usher> {
        let store = CustomerStore::new(StoreSettings {
            track_max: config.experience.track_max,
            journey_len: config.experience.journey_len,
            model: ScoreModel::new(config.experience.half_life),
        });
        Arc::new(Usher {
            identity: IdentityResolver::new(&config.identity, &config.tiers),
            routes: RouteTable::new(&config.routes),
            pools: Pools::new(&config),
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

    /// Admits the request, identifies the customer and finds the route.
    pub fn begin(
        &self,
        ex: &mut Exchange,
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
        peer: Option<IpAddr>,
    ) -> Admission {
        ex.identity = Some(self.identity.resolve(uri, headers, peer));
        if head_size(method, uri, headers) > self.config.server.max_header_bytes {
            return Admission::HeadTooLarge;
        }
        ex.route = self.routes.find(method, uri, headers);
        match ex.route {
            Some(r) => Admission::Route(r),
            None => Admission::NoRoute,
        }
    }

    /// Chooses the upstream for this attempt, preferring one not yet tried by this request.
    pub fn choose_upstream(
        &self,
        ex: &mut Exchange,
        now: Instant,
    ) -> Option<(UpstreamId, &PoolConfig)> {
        let route = self.route_config(ex.route?)?;
        let pool_cfg = self.config.pools.get(route.pool as usize)?;
        let up = self.pools.get(route.pool)?.pick(&ex.tried)?;
        ex.upstream = Some(up);
        ex.tried.push(up);
        ex.peer_chosen = Some(now);
        ex.connected = None;
        ex.response_head = None;
        ex.upstream_status = None;
        Some((up, pool_cfg))
    }

    pub fn upstream_addr(&self, id: UpstreamId) -> Option<std::net::SocketAddr> {
        self.config.upstreams.get(id as usize).copied()
    }

    /// Tells usher which upstream an embedding proxy chose by itself, so the request is attributed
    /// to it. Addresses usher does not know are recorded as no upstream.
    pub fn attribute_upstream(&self, ex: &mut Exchange, addr: std::net::SocketAddr, now: Instant) {
        ex.upstream = self.config.upstream_id(addr);
        ex.peer_chosen = Some(now);
        ex.connected = None;
        ex.response_head = None;
    }

    pub fn connected(&self, ex: &mut Exchange, now: Instant) {
        ex.connected = Some(now);
    }

    pub fn response_head(&self, ex: &mut Exchange, status: u16, now: Instant) {
        ex.response_head = Some(now);
        ex.upstream_status = Some(status);
    }

    /// Records the finished request everywhere it counts. Idempotent per exchange.
    pub fn finish(&self, ex: &mut Exchange, f: &Finish<'_>) -> Option<Recorded> {
        if ex.recorded {
            return None;
        }
        ex.recorded = true;
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
        let outcome = f.failure.unwrap_or_else(|| Outcome::of_status(f.status));
        let connect = match (ex.peer_chosen, ex.connected) {
            (Some(a), Some(b)) => Some(b.saturating_duration_since(a)),
            _ => None,
        };
        let ttfb = match (ex.connected, ex.response_head) {
            (Some(a), Some(b)) => Some(b.saturating_duration_since(a)),
            _ => None,
        };
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
        Some(self.record(&m))
    }

    /// Records one measurement: metrics, aggregates and the customer's experience.
    pub fn record(&self, m: &Measurement<'_>) -> Recorded {
        let failed = m.outcome.is_failure();
        self.metrics
            .observe_request(m.route, m.upstream, m.outcome, m.total, m.upstream_time());
        if let Some(s) = m.route.and_then(|r| self.route_stats.get(r as usize)) {
            s.record(m.total, failed, (m.bytes_in, m.bytes_out), m.now_ms);
        }
        if let (Some(s), Some(t)) = (
            m.upstream.and_then(|u| self.upstream_stats.get(u as usize)),
            m.upstream_time(),
        ) {
            s.record(t, failed, (m.bytes_in, m.bytes_out), m.now_ms);
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
        rec
    }

    /// Rescans the store for the periodic gauges and score distribution.
    pub fn refresh_summary(&self, now_ms: u64) {
        let s = self
            .store
            .summary(self.config.experience.degraded_below, now_ms);
        self.metrics.set_summary(&s);
    }

    pub fn is_degraded(&self, score: f64) -> bool {
        score < self.config.experience.degraded_below
    }
}
