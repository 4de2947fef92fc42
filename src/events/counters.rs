//! The events module's own counters: what happened to each event, per type and sink, in
//! `usher_events_total`, and each sink's queue, spool and delivery delay. Registered once into the
//! process's registry ([`crate::metrics::Metrics::registry`]); a sink's handles are looked up when
//! the sink is made and moved into its task.

use super::model::EventType;
use crate::metrics::{names, NONE_LABEL};
use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};

/// What happened to an event, per sink: the `outcome` label of `usher_events_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventOutcome {
    /// Handed to the sink's queue.
    Queued = 0,
    /// Lost: the sink's queue (or spool) was full.
    Dropped = 1,
    /// Written (jsonl) or acknowledged by the receiver (webhook, nats).
    Delivered = 2,
    /// Not sent at all: the cooldown for this customer and type was running, or the type's budget
    /// was spent (sink "none").
    Suppressed = 3,
    /// Refused by the receiver for good, kept in the sink's dead-letter file.
    DeadLettered = 4,
}

const EVENT_OUTCOMES: [&str; 5] = [
    "queued",
    "dropped",
    "delivered",
    "suppressed",
    "dead_lettered",
];

/// Handles for one sink, moved into its task.
#[derive(Clone)]
pub struct SinkMetrics {
    /// `[type][outcome]`.
    counts: Vec<[IntCounter; 5]>,
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

pub struct EventCounters {
    counts: IntCounterVec,
    depth: IntGaugeVec,
    spool: IntGaugeVec,
    delivery: HistogramVec,
    /// `[type]`, sink "none".
    suppressed: Vec<IntCounter>,
}

fn must<T>(r: prometheus::Result<T>) -> T {
    // Static names and validated sink names: a failure is a bug here, not user input.
    r.unwrap_or_else(|e| panic!("event metric registration: {e}"))
}

impl EventCounters {
    pub fn new(registry: &Registry) -> Self {
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
        let delivery = must(HistogramVec::new(
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
        let suppressed = EventType::ALL
            .iter()
            .map(|t| {
                must(counts.get_metric_with_label_values(&[t.as_str(), NONE_LABEL, "suppressed"]))
            })
            .collect();
        EventCounters {
            counts,
            depth,
            spool,
            delivery,
            suppressed,
        }
    }

    /// The handles of sink `name`: the same series under every configuration that keeps the name.
    pub fn sink(&self, name: &str) -> SinkMetrics {
        SinkMetrics {
            counts: EventType::ALL
                .iter()
                .map(|t| {
                    EVENT_OUTCOMES.map(|o| {
                        must(
                            self.counts
                                .get_metric_with_label_values(&[t.as_str(), name, o]),
                        )
                    })
                })
                .collect(),
            queue_depth: must(self.depth.get_metric_with_label_values(&[name])),
            spool_bytes: must(self.spool.get_metric_with_label_values(&[name])),
            delivery: must(self.delivery.get_metric_with_label_values(&[name])),
        }
    }

    pub fn suppressed(&self, t: EventType) {
        if let Some(c) = self.suppressed.get(t as usize) {
            c.inc();
        }
    }
}
