//! Every Prometheus metric usher exports, named in one place (as sozu's `metrics/names.rs` does).
//!
//! Labels are bounded by the config: route names, upstream addresses, outcome classes. Never a
//! customer id: per-customer figures live in the experience store and the admin API, and reach
//! Prometheus only as the distribution `usher_customer_score`. Label handles are resolved once (per
//! route and upstream at startup, per route x upstream x outcome on first use) so the request path
//! does an array index and an atomic add, not a label hash. Each `Metrics` owns its registry, so
//! several usher instances (tests, embedders) never collide.

use crate::config::{Config, RouteId, UpstreamId};
use crate::events::model::EventType;
use crate::experience::Summary;
use crate::measure::Outcome;
use crate::protection::Protection;
use parking_lot::Mutex;
use prometheus::core::{Collector, Desc};
use prometheus::proto::{self, MetricFamily, MetricType};
use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

pub mod names {
    pub const REQUESTS_TOTAL: &str = "usher_requests_total";
    pub const REQUEST_DURATION: &str = "usher_request_duration_seconds";
    pub const UPSTREAM_DURATION: &str = "usher_upstream_duration_seconds";
    pub const CUSTOMERS_TRACKED: &str = "usher_customers_tracked";
    pub const CUSTOMERS_DEGRADED: &str = "usher_customers_degraded";
    pub const CUSTOMER_SCORE: &str = "usher_customer_score";
    pub const CUSTOMERS_EVICTED: &str = "usher_customers_evicted_total";
    pub const UPSTREAM_STATE: &str = "usher_upstream_state";
    pub const EJECTIONS: &str = "usher_ejections_total";
    pub const RETRIES: &str = "usher_retries_total";
    pub const RETRY_BUDGET_EXHAUSTED: &str = "usher_retry_budget_exhausted_total";
    pub const PROTECTED_REQUESTS: &str = "usher_protected_requests_total";
    pub const TRY_TIMEOUTS: &str = "usher_try_timeouts_total";
    pub const EVENTS: &str = "usher_events_total";
    pub const EVENT_QUEUE_DEPTH: &str = "usher_event_queue_depth";
    pub const EVENT_SPOOL_BYTES: &str = "usher_event_spool_bytes";
    pub const EVENT_DELIVERY: &str = "usher_event_delivery_seconds";
}

/// Values of the `state` label of `usher_upstream_state` (one-hot: the current state is 1).
pub const UPSTREAM_STATES: [&str; 4] = ["healthy", "probing", "ejected", "unhealthy"];

/// Label value for "no route matched" and "no upstream was used".
pub const NONE_LABEL: &str = "none";

const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

pub struct Metrics {
    registry: Registry,
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
    pub customers_tracked: IntGauge,
    pub customers_degraded: IntGauge,
    pub customers_evicted: IntCounter,
    score: Arc<ScoreDistribution>,
    /// `[upstream][state]`.
    upstream_state: Vec<[IntGauge; 4]>,
    ejections: IntCounterVec,
    retries_granted: IntCounter,
    retries_succeeded: IntCounter,
    retries_failed: IntCounter,
    pub retry_budget_exhausted: IntCounter,
    pub try_timeouts: IntCounter,
    protected: [IntCounter; 4],
    pub events: EventMetrics,
}

fn must<T>(r: prometheus::Result<T>) -> T {
    // Names and labels are static or validated config values; a failure here is a bug in this
    // module, caught by its tests, not something user input can cause.
    r.expect("metric definitions are valid")
}

impl Metrics {
    pub fn new(config: &Config) -> Self {
        let registry = Registry::new();
        let mut route_labels: Vec<String> = config.routes.iter().map(|r| r.name.clone()).collect();
        route_labels.push(NONE_LABEL.to_string());
        let mut upstream_labels: Vec<String> =
            config.upstreams.iter().map(|a| a.to_string()).collect();
        upstream_labels.push(NONE_LABEL.to_string());

        let requests = must(IntCounterVec::new(
            Opts::new(
                names::REQUESTS_TOTAL,
                "Requests finished, by route, upstream and outcome class.",
            ),
            &["route", "upstream", "outcome"],
        ));
        must(registry.register(Box::new(requests.clone())));

        let hist = |name: &str, help: &str, label: &str, values: &[String]| -> Vec<Histogram> {
            let vec = must(prometheus::HistogramVec::new(
                HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec()),
                &[label],
            ));
            must(registry.register(Box::new(vec.clone())));
            values
                .iter()
                .map(|v| must(vec.get_metric_with_label_values(&[v])))
                .collect()
        };
        let request_duration = hist(
            names::REQUEST_DURATION,
            "Request duration, from request head read to response finished, by route.",
            "route",
            &route_labels,
        );
        let upstream_duration = hist(
            names::UPSTREAM_DURATION,
            "Upstream time (connect plus time to first byte), by upstream.",
            "upstream",
            &upstream_labels[..upstream_labels.len() - 1],
        );

        let customers_tracked = must(IntGauge::new(
            names::CUSTOMERS_TRACKED,
            "Customers currently tracked in the experience store.",
        ));
        let customers_degraded = must(IntGauge::new(
            names::CUSTOMERS_DEGRADED,
            "Tracked customers whose score is below experience.degraded_below.",
        ));
        let customers_evicted = must(IntCounter::new(
            names::CUSTOMERS_EVICTED,
            "Customers evicted from the store to keep it within experience.track_max.",
        ));
        for m in [&customers_tracked, &customers_degraded] {
            must(registry.register(Box::new(m.clone())));
        }
        must(registry.register(Box::new(customers_evicted.clone())));
        let score = Arc::new(ScoreDistribution::new());
        must(registry.register(Box::new(ScoreCollectorHandle(score.clone()))));

        let state_vec = must(IntGaugeVec::new(
            Opts::new(
                names::UPSTREAM_STATE,
                "1 for the upstream's current state (healthy, probing, ejected, unhealthy by active checks), else 0.",
            ),
            &["upstream", "state"],
        ));
        must(registry.register(Box::new(state_vec.clone())));
        let upstream_state = upstream_labels[..upstream_labels.len() - 1]
            .iter()
            .map(|u| {
                let g =
                    UPSTREAM_STATES.map(|s| must(state_vec.get_metric_with_label_values(&[u, s])));
                g[0].set(1);
                g
            })
            .collect();
        let ejections = must(IntCounterVec::new(
            Opts::new(
                names::EJECTIONS,
                "Upstreams ejected by passive health, by rule.",
            ),
            &["upstream", "reason"],
        ));
        must(registry.register(Box::new(ejections.clone())));
        let retries = must(IntCounterVec::new(
            Opts::new(
                names::RETRIES,
                "Retries on another upstream: granted, and how the retried requests ended.",
            ),
            &["outcome"],
        ));
        must(registry.register(Box::new(retries.clone())));
        let retry_budget_exhausted = must(IntCounter::new(
            names::RETRY_BUDGET_EXHAUSTED,
            "Retries refused because the pool's retry budget was spent.",
        ));
        must(registry.register(Box::new(retry_budget_exhausted.clone())));
        let try_timeouts = must(IntCounter::new(
            names::TRY_TIMEOUTS,
            "Protected requests' tries given up after protection.try_timeout_factor x the route's p99.",
        ));
        must(registry.register(Box::new(try_timeouts.clone())));
        let protected_vec = must(IntCounterVec::new(
            Opts::new(
                names::PROTECTED_REQUESTS,
                "Requests given protected treatment, by why.",
            ),
            &["why"],
        ));
        must(registry.register(Box::new(protected_vec.clone())));
        let protected = Protection::ALL
            .map(|p| must(protected_vec.get_metric_with_label_values(&[p.as_str()])));

        let events = EventMetrics::new(&registry, config);
        let mut cell_blocks = Vec::new();
        let mut cells = 0;
        for r in &config.routes {
            let mut ups: Vec<UpstreamId> = Vec::new();
            for p in std::iter::once(r.pool).chain(r.reserved_pool) {
                if let Some(pool) = config.pools.get(p as usize) {
                    for u in &pool.upstreams {
                        if !ups.contains(u) {
                            ups.push(*u);
                        }
                    }
                }
            }
            let n = (ups.len() + 1) * Outcome::ALL.len();
            cell_blocks.push((cells, ups));
            cells += n;
        }
        cell_blocks.push((cells, Vec::new()));
        cells += upstream_labels.len() * Outcome::ALL.len();
        Metrics {
            registry,
            requests,
            request_cells: (0..cells).map(|_| OnceLock::new()).collect(),
            cell_blocks,
            cell_overflow: Mutex::new(std::collections::HashMap::new()),
            route_labels,
            upstream_labels,
            request_duration,
            upstream_duration,
            customers_tracked,
            customers_degraded,
            customers_evicted,
            score,
            upstream_state,
            ejections,
            retries_granted: must(retries.get_metric_with_label_values(&["granted"])),
            retries_succeeded: must(retries.get_metric_with_label_values(&["succeeded"])),
            retries_failed: must(retries.get_metric_with_label_values(&["failed"])),
            retry_budget_exhausted,
            try_timeouts,
            protected,
            events,
        }
    }

    pub fn set_upstream_state(&self, u: UpstreamId, state: &str) {
        if let Some(gauges) = self.upstream_state.get(u as usize) {
            for (g, s) in gauges.iter().zip(UPSTREAM_STATES) {
                g.set(i64::from(s == state));
            }
        }
    }

    /// Ejections are rare: the labelled handle is looked up when one happens.
    pub fn ejected(&self, u: UpstreamId, reason: &str) {
        if let Some(label) = self.upstream_labels.get(u as usize) {
            must(
                self.ejections
                    .get_metric_with_label_values(&[label, reason]),
            )
            .inc();
        }
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

/// What happened to an event, per sink: the `outcome` label of `usher_events_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventOutcome {
    /// Handed to the sink's queue.
    Queued = 0,
    /// Lost: the sink's queue (or spool) was full.
    Dropped = 1,
    /// Written (jsonl) or acknowledged by the receiver (webhook, nats).
    Delivered = 2,
    /// Not sent at all: the cooldown for this customer and type was running (sink "none").
    Suppressed = 3,
}

const EVENT_OUTCOMES: [&str; 4] = ["queued", "dropped", "delivered", "suppressed"];

/// Handles for one sink, moved into its task.
#[derive(Clone)]
pub struct SinkMetrics {
    /// `[type][outcome]`.
    counts: Vec<[IntCounter; 4]>,
    pub queue_depth: IntGauge,
    pub spool_bytes: IntGauge,
    pub delivery: Histogram,
}

impl SinkMetrics {
    pub fn count(&self, t: EventType, o: EventOutcome) {
        if let Some(c) = self.counts.get(t as usize) {
            c[o as usize].inc();
        }
    }
}

pub struct EventMetrics {
    sinks: Vec<SinkMetrics>,
    /// `[type]`, sink "none".
    suppressed: Vec<IntCounter>,
}

impl EventMetrics {
    fn new(registry: &Registry, config: &Config) -> Self {
        let counts = must(IntCounterVec::new(
            Opts::new(
                names::EVENTS,
                "Follow-up events, by type, sink and what happened to them.",
            ),
            &["type", "sink", "outcome"],
        ));
        must(registry.register(Box::new(counts.clone())));
        let gauge = |name: &str, help: &str| {
            let g = must(IntGaugeVec::new(Opts::new(name, help), &["sink"]));
            must(registry.register(Box::new(g.clone())));
            g
        };
        let depth = gauge(
            names::EVENT_QUEUE_DEPTH,
            "Events waiting in memory for the sink.",
        );
        let spool = gauge(
            names::EVENT_SPOOL_BYTES,
            "Bytes of events spooled on disk, not yet delivered.",
        );
        let delivery = must(prometheus::HistogramVec::new(
            HistogramOpts::new(
                names::EVENT_DELIVERY,
                "From an event's time to its delivery.",
            )
            .buckets(vec![
                0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0, 120.0, 600.0, 3600.0,
            ]),
            &["sink"],
        ));
        must(registry.register(Box::new(delivery.clone())));
        let sinks = config
            .events
            .sinks
            .iter()
            .map(|sink| SinkMetrics {
                counts: EventType::ALL
                    .iter()
                    .map(|t| {
                        EVENT_OUTCOMES.map(|o| {
                            must(counts.get_metric_with_label_values(&[t.as_str(), &sink.name, o]))
                        })
                    })
                    .collect(),
                queue_depth: must(depth.get_metric_with_label_values(&[&sink.name])),
                spool_bytes: must(spool.get_metric_with_label_values(&[&sink.name])),
                delivery: must(delivery.get_metric_with_label_values(&[&sink.name])),
            })
            .collect();
        let suppressed = EventType::ALL
            .iter()
            .map(|t| {
                must(counts.get_metric_with_label_values(&[t.as_str(), NONE_LABEL, "suppressed"]))
            })
            .collect();
        EventMetrics { sinks, suppressed }
    }

    pub fn sink(&self, i: usize) -> Option<&SinkMetrics> {
        self.sinks.get(i)
    }

    pub fn suppressed(&self, t: EventType) {
        if let Some(c) = self.suppressed.get(t as usize) {
            c.inc();
        }
    }
}
