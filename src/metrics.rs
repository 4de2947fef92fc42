//! Every Prometheus metric usher exports, named in one place (as sozu's `metrics/names.rs` does).
//!
//! Labels are bounded by the config: route names, upstream addresses, outcome classes. Never a
//! customer id: per-customer figures live in the experience store and the admin API, and reach
//! Prometheus only as the distribution `usher_customer_score`. Label handles are resolved once per
//! configuration ([`Metrics::for_generation`]: per route and upstream when it is compiled, per
//! route x upstream x outcome on first use) so the request path does an array index and an atomic
//! add, not a label hash. The registry and its families outlast configurations, so a counter keeps
//! counting across a reload; gauges of upstreams a reload removed are taken out. Each `Metrics` owns
//! its registry, so several usher instances (tests, embedders) never collide.
//!
//! Other modules that count things register their own handles here (`crate::events` does, for its
//! sinks); this module imports none of them.
//!
//! Besides usher's own figures the registry holds what operators expect of any service: the
//! `process_*` family (the prometheus crate's process collector, Linux), `usher_build_info` and
//! `usher_start_time_seconds`. The request duration histogram's buckets hold every route's Apdex
//! target T and 4T, so that Apdex per route is a PromQL expression:
//! `(le=T + le=4T) / 2 / count`. Buckets are fixed once a family is registered, so they are
//! chosen from the configuration usher starts with; a reload that brings a new target keeps them,
//! and says so in the log (restart or upgrade to get the new buckets).

use crate::experience::{Marks, Summary};
use crate::ids::{RouteId, UpstreamId};
use crate::measure::Outcome;
use crate::protection::Protection;
use parking_lot::Mutex;
use prometheus::core::{Collector, Desc};
use prometheus::proto::{self, MetricFamily, MetricType};
use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// The commit usher was built from (`build.rs`: `USHER_COMMIT`, else git, else "unknown").
pub const COMMIT: &str = match option_env!("USHER_COMMIT") {
    Some(c) => c,
    None => "unknown",
};

pub mod names {
    pub const REQUESTS_TOTAL: &str = "usher_requests_total";
    pub const REQUEST_DURATION: &str = "usher_request_duration_seconds";
    pub const UPSTREAM_DURATION: &str = "usher_upstream_duration_seconds";
    pub const CUSTOMERS_TRACKED: &str = "usher_customers_tracked";
    pub const CUSTOMERS_DEGRADED: &str = "usher_customers_degraded";
    pub const CUSTOMER_SCORE: &str = "usher_customer_score";
    pub const CUSTOMERS_EVICTED: &str = "usher_customers_evicted_total";
    pub const CUSTOMERS_EXPIRED: &str = "usher_customers_expired_total";
    pub const UPSTREAM_STATE: &str = "usher_upstream_state";
    pub const EJECTIONS: &str = "usher_ejections_total";
    pub const STRUGGLES: &str = "usher_struggle_total";
    pub const RETRIES: &str = "usher_retries_total";
    pub const RETRY_BUDGET_EXHAUSTED: &str = "usher_retry_budget_exhausted_total";
    pub const PROTECTED_REQUESTS: &str = "usher_protected_requests_total";
    pub const TRY_TIMEOUTS: &str = "usher_try_timeouts_total";
    pub const EVENTS: &str = "usher_events_total";
    pub const EVENT_QUEUE_DEPTH: &str = "usher_event_queue_depth";
    pub const EVENT_SPOOL_BYTES: &str = "usher_event_spool_bytes";
    pub const EVENT_DELIVERY: &str = "usher_event_delivery_seconds";
    pub const CONFIG_RELOADS: &str = "usher_config_reloads_total";
    pub const CONFIG_GENERATION: &str = "usher_config_generation";
    pub const CONFIG_LAST_RELOAD_SUCCESS: &str =
        "usher_config_last_reload_success_timestamp_seconds";
    pub const UPSTREAM_RESOLUTIONS: &str = "usher_upstream_resolutions_total";
    pub const SNAPSHOTS: &str = "usher_state_snapshots_total";
    pub const IDENTITY_TOKENS: &str = "usher_identity_tokens_total";
    pub const ADMIN_AUDIT: &str = "usher_admin_audit_records_total";
    pub const POOL_PANIC: &str = "usher_pool_panic";
    pub const CONNECTIONS_OPEN: &str = "usher_connections_open";
    pub const CONNECTIONS_LIMIT: &str = "usher_connections_limit";
    pub const CONNECTIONS_REFUSED: &str = "usher_connections_refused_total";
    pub const CONNECTIONS_IDLE_CLOSED: &str = "usher_connections_idle_closed_total";
    pub const CONNECTIONS_BY_PROTOCOL: &str = "usher_connections_open_by_protocol";
    pub const TLS_HANDSHAKES: &str = "usher_tls_handshakes_total";
    pub const BUILD_INFO: &str = "usher_build_info";
    pub const START_TIME: &str = "usher_start_time_seconds";
}

/// One listener's connection handles (`listener` is "proxy" or "admin"), looked up once.
#[derive(Clone)]
pub struct ConnectionMetrics {
    pub open: IntGauge,
    pub limit: IntGauge,
    /// Turned away at the cap.
    pub refused_capacity: IntCounter,
    /// HTTP/2 streams answered 503 because the open-files limit could not hold their upstream
    /// connections.
    pub refused_streams: IntCounter,
    /// Closed because a request head did not arrive within `server.head_timeout`.
    pub refused_head_timeout: IntCounter,
    /// Kept-alive connections closed after `server.idle_timeout` without a request.
    pub idle_closed: IntCounter,
    /// By [`PROTOCOLS`].
    pub by_protocol: [IntGauge; 3],
    /// By [`TLS_RESULTS`].
    pub tls_handshakes: [IntCounter; 7],
}

/// The `protocol` label of `usher_connections_open_by_protocol`.
pub const PROTOCOLS: [&str; 3] = ["http", "https", "h2"];

/// The `result` label of `usher_tls_handshakes_total`.
pub const TLS_RESULTS: [&str; 7] = [
    "tls1.2",
    "tls1.3",
    "timeout",
    "closed",
    "refused",
    "malformed",
    "other",
];

/// Values of the `state` label of `usher_upstream_state` (one-hot: the current state is 1).
pub const UPSTREAM_STATES: [&str; 4] = ["healthy", "probing", "ejected", "unhealthy"];

/// `route` label of an ejection of an upstream as a whole, not on one route.
pub const ALL_ROUTES: &str = "all";

/// Label value for "no route matched" and "no upstream was used".
pub const NONE_LABEL: &str = "none";

const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Bounds added to [`LATENCY_BUCKETS`] for route targets, at most: every bucket is a series per
/// route, so a configuration with many distinct targets must not multiply them without end.
pub const MAX_TARGET_BOUNDS: usize = 32;

/// `d` in seconds, correctly rounded (one division of exact values), so 300 ms is `le="0.3"`
/// and 1200 ms `le="1.2"`, as a person writes them in PromQL.
fn seconds(d: Duration) -> f64 {
    d.as_nanos() as f64 / 1e9
}

/// The bounds an Apdex target needs: T and 4T.
fn apdex_bounds(target: Duration) -> [f64; 2] {
    [seconds(target), seconds(target.saturating_mul(4))]
}

/// The request duration buckets for routes with these targets: [`LATENCY_BUCKETS`] and each
/// target's T and 4T (at most [`MAX_TARGET_BOUNDS`] added, in the order given), ascending. Also the
/// bounds left out for the cap.
pub fn request_buckets(targets: impl IntoIterator<Item = Duration>) -> (Vec<f64>, Vec<f64>) {
    let mut buckets = LATENCY_BUCKETS.to_vec();
    let (mut added, mut left_out) = (0, Vec::new());
    for b in targets.into_iter().flat_map(apdex_bounds) {
        if !(b.is_finite() && b > 0.0) || buckets.contains(&b) {
            continue;
        }
        if added < MAX_TARGET_BOUNDS {
            buckets.push(b);
            added += 1;
        } else if !left_out.contains(&b) {
            left_out.push(b);
        }
    }
    buckets.sort_by(f64::total_cmp);
    (buckets, left_out)
}

/// The request duration family, registered with the first configuration's targets.
struct RequestDuration {
    vec: HistogramVec,
    buckets: Vec<f64>,
    /// Bounds a later configuration wanted and did not get, already said in the log.
    missing: Mutex<Vec<f64>>,
}

/// The families and the handles that do not depend on a configuration.
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    /// Registered by the first [`Metrics::for_generation`], when the routes' targets are known.
    request_duration: OnceLock<RequestDuration>,
    upstream_duration: HistogramVec,
    upstream_state: IntGaugeVec,
    /// The upstream labels of the configuration in force, to take out a removed upstream's gauges.
    upstream_labels: Mutex<Vec<String>>,
    pub customers_tracked: IntGauge,
    pub customers_degraded: IntGauge,
    pub customers_evicted: IntCounter,
    pub customers_expired: IntCounter,
    score: Arc<ScoreDistribution>,
    ejections: IntCounterVec,
    struggles: IntCounterVec,
    retries_granted: IntCounter,
    retries_succeeded: IntCounter,
    retries_failed: IntCounter,
    pub retry_budget_exhausted: IntCounter,
    pub try_timeouts: IntCounter,
    protected: [IntCounter; 4],
    reloads_ok: IntCounter,
    reloads_failed: IntCounter,
    pub config_generation: IntGauge,
    pub config_last_success: Gauge,
    resolutions: IntCounterVec,
    snapshots: IntCounterVec,
    pool_panic: IntGaugeVec,
    /// The pool labels of the configuration in force, to take out a removed pool's gauge.
    pool_labels: Mutex<Vec<String>>,
    connections_open: IntGaugeVec,
    connections_limit: IntGaugeVec,
    connections_refused: IntCounterVec,
    connections_idle_closed: IntCounterVec,
    connections_by_protocol: IntGaugeVec,
    tls_handshakes: IntCounterVec,
    tokens: IntCounterVec,
    /// Audit records of customer look-ups and erasures: written, failed.
    pub audit_written: IntCounter,
    pub audit_failed: IntCounter,
    /// `tokens` by result, looked up once.
    token_cells: Mutex<std::collections::HashMap<&'static str, IntCounter>>,
}

/// One configuration's handles: routes and upstreams of that configuration, by position.
pub struct GenMetrics {
    requests: IntCounterVec,
    /// Per route (and "none"), a block of `(upstreams it can use + 1 for none) x outcomes` cells,
    /// created on first use: routes x pools, not routes x every upstream.
    request_cells: Box<[OnceLock<IntCounter>]>,
    /// Per route: where its block starts, and the upstreams it can use (its pool and reserved pool).
    /// The "none" route's block covers every upstream, indexed by id.
    cell_blocks: Vec<(usize, Vec<UpstreamId>)>,
    /// Combinations outside those blocks (an embedder attributing a request to an upstream of
    /// another pool): rare, so a locked map.
    cell_overflow: Mutex<std::collections::HashMap<(usize, usize, usize), IntCounter>>,
    route_labels: Vec<String>,
    upstream_labels: Vec<String>,
    request_duration: Vec<Histogram>,
    upstream_duration: Vec<Histogram>,
    /// `[upstream][state]`.
    upstream_state: Vec<[IntGauge; 4]>,
    /// `[route][signal]`, "none" last, signals in [`Marks`] order.
    struggles: Vec<Vec<IntCounter>>,
}

fn must<T>(r: prometheus::Result<T>) -> T {
    // Names and labels are static or validated config values; a failure here is a bug in this
    // module, caught by its tests, not something user input can cause.
    r.unwrap_or_else(|e| panic!("metric registration: {e}"))
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let reg = |c: Box<dyn Collector>| must(registry.register(c));
        let requests = must(IntCounterVec::new(
            Opts::new(
                names::REQUESTS_TOTAL,
                "Requests finished, by route, upstream and outcome class.",
            ),
            &["route", "upstream", "outcome"],
        ));
        reg(Box::new(requests.clone()));
        let hist = |name: &str, help: &str, label: &str| {
            let vec = must(HistogramVec::new(
                HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec()),
                &[label],
            ));
            reg(Box::new(vec.clone()));
            vec
        };
        let upstream_duration = hist(
            names::UPSTREAM_DURATION,
            "Upstream time (connect plus time to first byte), by upstream.",
            "upstream",
        );
        let gauge = |name: &str, help: &str| {
            let g = must(IntGauge::new(name, help));
            reg(Box::new(g.clone()));
            g
        };
        let counter = |name: &str, help: &str| {
            let c = must(IntCounter::new(name, help));
            reg(Box::new(c.clone()));
            c
        };
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            let c = must(IntCounterVec::new(Opts::new(name, help), labels));
            reg(Box::new(c.clone()));
            c
        };
        let customers_tracked = gauge(
            names::CUSTOMERS_TRACKED,
            "Customers currently tracked in the experience store.",
        );
        let customers_degraded = gauge(
            names::CUSTOMERS_DEGRADED,
            "Tracked customers whose score is below experience.degraded_below.",
        );
        let customers_evicted = counter(
            names::CUSTOMERS_EVICTED,
            "Customers evicted from the store to keep it within experience.track_max.",
        );
        let customers_expired = counter(
            names::CUSTOMERS_EXPIRED,
            "Customers forgotten after privacy.retention without a request.",
        );
        let score = Arc::new(ScoreDistribution::new());
        reg(Box::new(ScoreCollectorHandle(score.clone())));
        let upstream_state = must(IntGaugeVec::new(
            Opts::new(
                names::UPSTREAM_STATE,
                "1 for the upstream's current state (healthy, probing, ejected, unhealthy by active checks), else 0.",
            ),
            &["upstream", "state"],
        ));
        reg(Box::new(upstream_state.clone()));
        let ejections = counter_vec(
            names::EJECTIONS,
            "Upstreams ejected by passive health, by route (all: the upstream as a whole) and rule.",
            &["upstream", "route", "reason"],
        );
        let struggles = counter_vec(
            names::STRUGGLES,
            "Requests that showed a struggle signal (loop, retry, form_loop), by route.",
            &["route", "signal"],
        );
        let retries = counter_vec(
            names::RETRIES,
            "Retries on another upstream: granted, and how the retried requests ended.",
            &["outcome"],
        );
        let retry_budget_exhausted = counter(
            names::RETRY_BUDGET_EXHAUSTED,
            "Retries refused because the pool's retry budget was spent.",
        );
        let try_timeouts = counter(
            names::TRY_TIMEOUTS,
            "Protected requests' tries given up after protection.try_timeout_factor x the route's p99.",
        );
        let protected_vec = counter_vec(
            names::PROTECTED_REQUESTS,
            "Requests given protected treatment, by why.",
            &["why"],
        );
        let protected = Protection::ALL
            .map(|p| must(protected_vec.get_metric_with_label_values(&[p.as_str()])));
        let reloads = counter_vec(
            names::CONFIG_RELOADS,
            "Configuration reloads, by result: success, or failure (the running configuration stayed).",
            &["result"],
        );
        let config_generation = gauge(
            names::CONFIG_GENERATION,
            "Number of the configuration in force: 1 at start, one more per reload or upstream re-resolution.",
        );
        let config_last_success = must(Gauge::new(
            names::CONFIG_LAST_RELOAD_SUCCESS,
            "When the configuration in force was loaded, Unix seconds.",
        ));
        reg(Box::new(config_last_success.clone()));
        let resolutions = counter_vec(
            names::UPSTREAM_RESOLUTIONS,
            "Look-ups of pools' upstream host names, by result: unchanged, changed, failure.",
            &["result"],
        );
        let snapshots = counter_vec(
            names::SNAPSHOTS,
            "State snapshots written and read, by what and result.",
            &["op", "result"],
        );
        let audit = counter_vec(
            names::ADMIN_AUDIT,
            "Audit records of admin look-ups and erasures of customers, by result: written, failed.",
            &["result"],
        );
        let tokens = counter_vec(
            names::IDENTITY_TOKENS,
            "Customer tokens seen, by how they checked out (valid, missing, expired, bad_signature, ...).",
            &["result"],
        );
        let gauge_vec = |name: &str, help: &str, labels: &[&str]| {
            let g = must(IntGaugeVec::new(Opts::new(name, help), labels));
            reg(Box::new(g.clone()));
            g
        };
        let connections_open = gauge_vec(
            names::CONNECTIONS_OPEN,
            "Downstream connections open now, by listener (proxy, admin).",
            &["listener"],
        );
        let connections_limit = gauge_vec(
            names::CONNECTIONS_LIMIT,
            "Downstream connections a listener holds at most: server.max_connections, or less when the open-files limit cannot hold that many.",
            &["listener"],
        );
        let connections_refused = counter_vec(
            names::CONNECTIONS_REFUSED,
            "Downstream connections refused, by listener and reason: capacity (503 at the cap), head_timeout (408: no complete request head within server.head_timeout).",
            &["listener", "reason"],
        );
        let connections_by_protocol = gauge_vec(
            names::CONNECTIONS_BY_PROTOCOL,
            "Downstream connections open now, by listener and protocol: http (plain: HTTP/1.1, or h2c), https (TLS, HTTP/1.1), h2 (TLS, HTTP/2).",
            &["listener", "protocol"],
        );
        let tls_handshakes = counter_vec(
            names::TLS_HANDSHAKES,
            "TLS handshakes on the proxy listeners, by result: tls1.2 or tls1.3 (completed), or why one failed: timeout (not done within server.head_timeout), closed (the client went away), refused (the client or usher refused the other's certificate or offer), malformed (not TLS, e.g. plain HTTP to a TLS port), other.",
            &["result"],
        );
        let connections_idle_closed = counter_vec(
            names::CONNECTIONS_IDLE_CLOSED,
            "Kept-alive downstream connections closed after server.idle_timeout without a request, by listener.",
            &["listener"],
        );
        #[cfg(target_os = "linux")]
        reg(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ));
        let build_info = must(IntGauge::with_opts(
            Opts::new(
                names::BUILD_INFO,
                "1, labelled with the usher version and the commit it was built from.",
            )
            .const_label("version", env!("CARGO_PKG_VERSION"))
            .const_label("commit", COMMIT),
        ));
        build_info.set(1);
        reg(Box::new(build_info));
        let start_time = must(Gauge::new(
            names::START_TIME,
            "When this usher started, Unix seconds.",
        ));
        start_time.set(crate::time::wall_ms() as f64 / 1000.0);
        reg(Box::new(start_time));
        let pool_panic = gauge_vec(
            names::POOL_PANIC,
            "1 while fewer than outlier.panic_below of the pool's upstreams are serving, so that all of them are used, ejected ones included (panic mode); else 0.",
            &["pool"],
        );
        Metrics {
            pool_panic,
            pool_labels: Mutex::new(Vec::new()),
            connections_open,
            connections_limit,
            connections_refused,
            connections_idle_closed,
            connections_by_protocol,
            tls_handshakes,
            tokens,
            audit_written: must(audit.get_metric_with_label_values(&["written"])),
            audit_failed: must(audit.get_metric_with_label_values(&["failed"])),
            token_cells: Mutex::new(std::collections::HashMap::new()),
            requests,
            request_duration: OnceLock::new(),
            upstream_duration,
            upstream_state,
            upstream_labels: Mutex::new(Vec::new()),
            customers_tracked,
            customers_degraded,
            customers_evicted,
            customers_expired,
            score,
            ejections,
            struggles,
            retries_granted: must(retries.get_metric_with_label_values(&["granted"])),
            retries_succeeded: must(retries.get_metric_with_label_values(&["succeeded"])),
            retries_failed: must(retries.get_metric_with_label_values(&["failed"])),
            retry_budget_exhausted,
            try_timeouts,
            protected,
            reloads_ok: must(reloads.get_metric_with_label_values(&["success"])),
            reloads_failed: must(reloads.get_metric_with_label_values(&["failure"])),
            config_generation,
            config_last_success,
            resolutions,
            snapshots,
            registry,
        }
    }

    /// Handles for one configuration: `routes[i]` is route i's name, its Apdex target and the
    /// upstreams it can use, `upstreams[u]` upstream u's label (its address). Gauges of upstreams no longer listed are
    /// taken out, so `usher_upstream_state` shows what is configured now.
    pub fn for_generation(
        &self,
        routes: &[(&str, Duration, Vec<UpstreamId>)],
        upstreams: &[String],
    ) -> GenMetrics {
        let mut route_labels: Vec<String> = routes.iter().map(|(n, _, _)| n.to_string()).collect();
        route_labels.push(NONE_LABEL.to_string());
        let mut upstream_labels = upstreams.to_vec();
        upstream_labels.push(NONE_LABEL.to_string());
        {
            let mut current = self.upstream_labels.lock();
            for gone in current.iter().filter(|l| !upstreams.contains(l)) {
                for s in UPSTREAM_STATES {
                    let _ = self.upstream_state.remove_label_values(&[gone, s]);
                }
            }
            *current = upstreams.to_vec();
        }
        let durations = self.request_duration(routes);
        let request_duration = route_labels
            .iter()
            .map(|r| must(durations.get_metric_with_label_values(&[r])))
            .collect();
        let upstream_duration = upstreams
            .iter()
            .map(|u| must(self.upstream_duration.get_metric_with_label_values(&[u])))
            .collect();
        let upstream_state = upstreams
            .iter()
            .map(|u| {
                UPSTREAM_STATES
                    .map(|s| must(self.upstream_state.get_metric_with_label_values(&[u, s])))
            })
            .collect();
        let struggles = route_labels
            .iter()
            .map(|r| {
                Marks::ALL_SIGNALS
                    .iter()
                    .map(|(_, signal)| {
                        must(
                            self.struggles
                                .get_metric_with_label_values(&[r.as_str(), signal]),
                        )
                    })
                    .collect()
            })
            .collect();
        let mut cell_blocks = Vec::new();
        let mut cells = 0;
        for (_, _, ups) in routes {
            cell_blocks.push((cells, ups.clone()));
            cells += (ups.len() + 1) * Outcome::ALL.len();
        }
        cell_blocks.push((cells, Vec::new()));
        cells += upstream_labels.len() * Outcome::ALL.len();
        GenMetrics {
            requests: self.requests.clone(),
            request_cells: (0..cells).map(|_| OnceLock::new()).collect(),
            cell_blocks,
            cell_overflow: Mutex::new(std::collections::HashMap::new()),
            route_labels,
            upstream_labels,
            request_duration,
            upstream_duration,
            upstream_state,
            struggles,
        }
    }

    /// The request duration family: registered on the first call, with buckets for these routes'
    /// targets; on later calls, a target it has no bucket for is said once in the log.
    fn request_duration(&self, routes: &[(&str, Duration, Vec<UpstreamId>)]) -> &HistogramVec {
        let family = self.request_duration.get_or_init(|| {
            let (buckets, left_out) = request_buckets(routes.iter().map(|(_, t, _)| *t));
            if !left_out.is_empty() {
                tracing::warn!(
                    left_out = ?left_out,
                    "{}: more than {MAX_TARGET_BOUNDS} distinct route targets (T and 4T); \
                     these bounds get no bucket, so Apdex for their routes cannot be read from it",
                    names::REQUEST_DURATION
                );
            }
            let vec = must(HistogramVec::new(
                HistogramOpts::new(
                    names::REQUEST_DURATION,
                    "Request duration, from request head read to response finished, by route. \
                     Buckets include every route's target T and 4T (Apdex), as configured at start.",
                )
                .buckets(buckets.clone()),
                &["route"],
            ));
            must(self.registry.register(Box::new(vec.clone())));
            RequestDuration {
                vec,
                buckets,
                missing: Mutex::new(left_out),
            }
        });
        let mut missing = family.missing.lock();
        for (name, target, _) in routes {
            let new: Vec<f64> = apdex_bounds(*target)
                .into_iter()
                .filter(|b| !family.buckets.contains(b) && !missing.contains(b))
                .collect();
            if !new.is_empty() {
                tracing::warn!(
                    route = %name,
                    target_ms = target.as_secs_f64() * 1000.0,
                    "{} has no bucket at {new:?} s (this route's target and 4x its target): its \
                     buckets were fixed when usher started; restart or upgrade usher for Apdex on \
                     this route",
                    names::REQUEST_DURATION
                );
                missing.extend(new);
            }
        }
        &family.vec
    }

    /// Ejections are rare: the labelled handle is looked up when one happens.
    /// `route` is "" for an ejection of the upstream as a whole (labelled `all`).
    pub fn ejected(&self, upstream: &str, route: &str, reason: &str) {
        let route = if route.is_empty() { ALL_ROUTES } else { route };
        must(
            self.ejections
                .get_metric_with_label_values(&[upstream, route, reason]),
        )
        .inc();
    }

    pub fn retry_granted(&self) {
        self.retries_granted.inc();
    }

    pub fn retry_finished(&self, succeeded: bool) {
        if succeeded {
            self.retries_succeeded.inc();
        } else {
            self.retries_failed.inc();
        }
    }

    pub fn protected(&self, p: Protection) {
        self.protected[p as usize].inc();
    }

    /// A reload (or re-resolution) put configuration number `generation` in force, at `at_ms`.
    pub fn config_loaded(&self, generation: u64, at_ms: u64) {
        self.config_generation.set(generation as i64);
        self.config_last_success.set(at_ms as f64 / 1000.0);
    }

    pub fn reload(&self, ok: bool) {
        if ok {
            self.reloads_ok.inc();
        } else {
            self.reloads_failed.inc();
        }
    }

    pub fn resolution(&self, result: &str) {
        must(self.resolutions.get_metric_with_label_values(&[result])).inc();
    }

    /// One request's token checked out as `result`.
    pub fn token(&self, result: &'static str) {
        let mut cells = self.token_cells.lock();
        cells
            .entry(result)
            .or_insert_with(|| must(self.tokens.get_metric_with_label_values(&[result])))
            .inc();
    }

    /// Says whether `pool` is in panic mode now. A pool that is no longer configured (not in
    /// `pools`, when given) loses its gauge.
    pub fn set_pool_panic(&self, pool: &str, panic: bool) {
        must(self.pool_panic.get_metric_with_label_values(&[pool])).set(i64::from(panic));
    }

    /// The pools of the configuration in force: gauges of the others are taken out.
    pub fn set_pools(&self, pools: &[&str]) {
        let mut current = self.pool_labels.lock();
        for gone in current.iter().filter(|l| !pools.contains(&l.as_str())) {
            let _ = self.pool_panic.remove_label_values(&[gone]);
        }
        *current = pools.iter().map(|p| p.to_string()).collect();
    }

    /// The connection handles of one listener.
    pub fn connections(&self, listener: &str) -> ConnectionMetrics {
        ConnectionMetrics {
            open: must(
                self.connections_open
                    .get_metric_with_label_values(&[listener]),
            ),
            limit: must(
                self.connections_limit
                    .get_metric_with_label_values(&[listener]),
            ),
            refused_capacity: must(
                self.connections_refused
                    .get_metric_with_label_values(&[listener, "capacity"]),
            ),
            refused_streams: must(
                self.connections_refused
                    .get_metric_with_label_values(&[listener, "streams"]),
            ),
            refused_head_timeout: must(
                self.connections_refused
                    .get_metric_with_label_values(&[listener, "head_timeout"]),
            ),
            idle_closed: must(
                self.connections_idle_closed
                    .get_metric_with_label_values(&[listener]),
            ),
            by_protocol: PROTOCOLS.map(|p| {
                must(
                    self.connections_by_protocol
                        .get_metric_with_label_values(&[listener, p]),
                )
            }),
            tls_handshakes: TLS_RESULTS
                .map(|r| must(self.tls_handshakes.get_metric_with_label_values(&[r]))),
        }
    }

    pub fn snapshot(&self, op: &str, result: &str) {
        must(self.snapshots.get_metric_with_label_values(&[op, result])).inc();
    }

    /// Publishes a fresh scan of the experience store.
    pub fn set_summary(&self, s: &Summary) {
        self.customers_tracked.set(s.tracked as i64);
        self.customers_degraded.set(s.below as i64);
        *self.score.latest.lock() = s.clone();
    }

    /// The Prometheus text exposition of everything.
    pub fn encode(&self) -> String {
        let mut buf = Vec::new();
        // Encoding our own well-formed families into a Vec cannot fail.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }
}

impl GenMetrics {
    pub fn set_upstream_state(&self, u: UpstreamId, state: &str) {
        if let Some(gauges) = self.upstream_state.get(u as usize) {
            for (g, s) in gauges.iter().zip(UPSTREAM_STATES) {
                g.set(i64::from(s == state));
            }
        }
    }

    pub fn upstream_label(&self, u: UpstreamId) -> &str {
        self.upstream_labels
            .get(u as usize)
            .map_or(NONE_LABEL, |s| s.as_str())
    }

    /// A request of `route` showed the struggle signals `marks`.
    pub fn struggled(&self, route: Option<RouteId>, marks: Marks) {
        let none_route = self.route_labels.len() - 1;
        let r = route.map_or(none_route, |r| (r as usize).min(none_route));
        for (i, (m, _)) in Marks::ALL_SIGNALS.iter().enumerate() {
            if marks.contains(*m) {
                self.struggles[r][i].inc();
            }
        }
    }

    pub fn observe_request(
        &self,
        route: Option<RouteId>,
        upstream: Option<UpstreamId>,
        outcome: Outcome,
        total: Duration,
        upstream_time: Option<Duration>,
    ) {
        let none_route = self.route_labels.len() - 1;
        let none_upstream = self.upstream_labels.len() - 1;
        let r = route.map_or(none_route, |r| (r as usize).min(none_route));
        let u = upstream.map_or(none_upstream, |u| (u as usize).min(none_upstream));
        let o = outcome as usize;
        let make = || {
            must(self.requests.get_metric_with_label_values(&[
                &self.route_labels[r],
                &self.upstream_labels[u],
                outcome.as_str(),
            ]))
        };
        let (base, ups) = &self.cell_blocks[r];
        let slot = if r == none_route {
            Some(u)
        } else if u == none_upstream {
            Some(ups.len())
        } else {
            ups.iter().position(|x| *x as usize == u)
        };
        match slot.and_then(|i| self.request_cells.get(base + i * Outcome::ALL.len() + o)) {
            Some(cell) => cell.get_or_init(make).inc(),
            None => self
                .cell_overflow
                .lock()
                .entry((r, u, o))
                .or_insert_with(make)
                .inc(),
        }
        if let Some(h) = self.request_duration.get(r) {
            h.observe(total.as_secs_f64());
        }
        if let (Some(u), Some(t)) = (upstream, upstream_time) {
            if let Some(h) = self.upstream_duration.get(u as usize) {
                h.observe(t.as_secs_f64());
            }
        }
    }
}

/// `usher_customer_score`: a histogram of current scores across customers. Prometheus histograms
/// only accumulate observations; this one is replaced wholesale by each periodic scan, so it is a
/// collector that renders the latest scan.
struct ScoreDistribution {
    desc: Desc,
    latest: Mutex<Summary>,
}

struct ScoreCollectorHandle(Arc<ScoreDistribution>);

impl ScoreDistribution {
    fn new() -> Self {
        ScoreDistribution {
            desc: must(Desc::new(
                names::CUSTOMER_SCORE.to_string(),
                "Current experience scores (0..100) across tracked customers, refreshed every experience.summary_interval.".to_string(),
                vec![],
                Default::default(),
            )),
            latest: Mutex::new(Summary::default()),
        }
    }
}

impl Collector for ScoreCollectorHandle {
    fn desc(&self) -> Vec<&Desc> {
        vec![&self.0.desc]
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let s = self.0.latest.lock().clone();
        let mut h = proto::Histogram::default();
        h.set_sample_count(s.tracked);
        h.set_sample_sum(s.sum);
        h.set_bucket(
            s.buckets
                .iter()
                .enumerate()
                .map(|(i, &count)| {
                    let mut b = proto::Bucket::default();
                    b.set_upper_bound(10.0 * (i + 1) as f64);
                    b.set_cumulative_count(count);
                    b
                })
                .collect(),
        );
        let mut m = proto::Metric::default();
        m.set_histogram(h);
        let mut mf = MetricFamily::default();
        mf.set_name(names::CUSTOMER_SCORE.to_string());
        mf.set_help(self.0.desc.help.clone());
        mf.set_field_type(MetricType::HISTOGRAM);
        mf.set_metric(vec![m]);
        vec![mf]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn bucket_line(text: &str, route: &str, le: &str) -> bool {
        let want = format!(
            "{}_bucket{{route=\"{route}\",le=\"{le}\"}}",
            names::REQUEST_DURATION
        );
        text.lines().any(|l| l.starts_with(&want))
    }

    #[test]
    fn a_route_target_gets_buckets_at_t_and_4t() {
        let m = Metrics::new();
        let g = m.for_generation(
            &[("checkout", ms(300), vec![0]), ("api", ms(250), vec![0])],
            &["127.0.0.1:1".to_string()],
        );
        g.observe_request(Some(0), Some(0), Outcome::Ok, ms(200), Some(ms(100)));
        g.observe_request(Some(0), Some(0), Outcome::Ok, ms(900), Some(ms(100)));
        let text = m.encode();
        for le in ["0.3", "1.2", "0.25", "1", "0.001", "30", "+Inf"] {
            assert!(bucket_line(&text, "checkout", le), "le={le}:\n{text}");
        }
        // One bucket set for the family: every route has every route's bounds, so sums across
        // routes stay histograms.
        assert!(bucket_line(&text, "api", "1.2"), "{text}");
        // Apdex for checkout: one satisfied (200 ms), one tolerating (900 ms) of two.
        let count = |le: &str| {
            let want = format!(
                "{}_bucket{{route=\"checkout\",le=\"{le}\"}} ",
                names::REQUEST_DURATION
            );
            text.lines()
                .find_map(|l| l.strip_prefix(&want))
                .and_then(|v| v.parse::<f64>().ok())
        };
        assert_eq!(
            (count("0.3"), count("1.2"), count("+Inf")),
            (Some(1.0), Some(2.0), Some(2.0))
        );
    }

    #[test]
    fn buckets_ascend_without_duplicates_and_are_capped() {
        let (b, left_out) = request_buckets([ms(250), ms(300), ms(300), ms(2500)]);
        assert!(b.windows(2).all(|w| w[0] < w[1]), "{b:?}");
        assert!(b.contains(&0.3) && b.contains(&1.2) && b.contains(&10.0));
        assert_eq!(b.len(), LATENCY_BUCKETS.len() + 2, "{b:?}");
        assert!(left_out.is_empty());
        let many = (1..=100).map(|i| ms(1000 + i));
        let (b, left_out) = request_buckets(many);
        assert_eq!(b.len(), LATENCY_BUCKETS.len() + MAX_TARGET_BOUNDS);
        assert_eq!(left_out.len(), 200 - MAX_TARGET_BOUNDS);
        assert!(b.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn a_reload_with_a_new_target_keeps_the_buckets_and_the_counts() {
        let m = Metrics::new();
        let ups = ["127.0.0.1:1".to_string()];
        let g1 = m.for_generation(&[("checkout", ms(300), vec![0])], &ups);
        g1.observe_request(Some(0), Some(0), Outcome::Ok, ms(100), None);
        let g2 = m.for_generation(&[("checkout", ms(200), vec![0])], &ups);
        g2.observe_request(Some(0), Some(0), Outcome::Ok, ms(100), None);
        let text = m.encode();
        assert!(bucket_line(&text, "checkout", "0.3"));
        assert!(!bucket_line(&text, "checkout", "0.2"), "{text}");
        assert!(text.contains(&format!(
            "{}_count{{route=\"checkout\"}} 2",
            names::REQUEST_DURATION
        )));
    }

    #[test]
    fn build_info_start_time_and_process_metrics_are_exported() {
        let before = crate::time::wall_ms() as f64 / 1000.0;
        let m = Metrics::new();
        let text = m.encode();
        let info = format!(
            "{}{{commit=\"{COMMIT}\",version=\"{}\"}} 1",
            names::BUILD_INFO,
            env!("CARGO_PKG_VERSION")
        );
        assert!(text.lines().any(|l| l == info), "{info}:\n{text}");
        assert!(!COMMIT.is_empty());
        let start: f64 = text
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{} ", names::START_TIME)))
            .and_then(|v| v.parse().ok())
            .expect("usher_start_time_seconds");
        assert!(start >= before.floor() && start < before + 60.0, "{start}");
        #[cfg(target_os = "linux")]
        for name in [
            "process_cpu_seconds_total",
            "process_resident_memory_bytes",
            "process_open_fds",
            "process_max_fds",
            "process_start_time_seconds",
            "process_threads",
        ] {
            assert!(
                text.lines().any(|l| l.starts_with(&format!("{name} "))),
                "{name}:\n{text}"
            );
        }
    }
}
