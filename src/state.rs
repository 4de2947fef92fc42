//! What usher learns, kept for the life of the process and carried across every configuration:
//! customers and their journeys, funnel progress, cooldowns and recent events, upstream nodes and
//! pool budgets (by address and pool name), per-route figures and objective windows (by route name),
//! the metric registry and the sinks' queues. Nothing here is keyed by a position in a
//! configuration; names are interned ([`crate::names`]) so that what is stored stays small and keeps
//! meaning the same thing after the configuration that named it is gone.
//!
//! What a configuration decides is the [`crate::generation::Generation`]; it is compiled against
//! this state.

use crate::events::slo::SloWindow;
use crate::events::Events;
use crate::experience::CustomerStore;
use crate::metrics::Metrics;
use crate::names::Interner;
use crate::stats::LatencyStats;
use crate::transport::Connections;
use crate::upstream::Registry;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// Distinct route and funnel names a process remembers (journey steps and funnel progress refer
/// to them by id).
const MAX_NAMES: usize = u16::MAX as usize - 1;
/// Distinct tier names a process remembers (customers refer to them by a one-byte id).
const MAX_TIERS: usize = u8::MAX as usize - 1;

/// What is learned about one route, kept by its name.
pub struct RouteState {
    /// The route name's interned id, for journey steps.
    pub label: u16,
    pub stats: LatencyStats,
    /// Good and total requests per minute, for the route's objective.
    pub slo: Mutex<SloWindow>,
    /// The route's current try timeout for protected requests, in microseconds; 0 when none.
    pub(crate) try_timeout_us: AtomicU64,
    /// The route's request count at the last refresh of its try timeout.
    pub(crate) try_seen: AtomicU64,
    /// When the route's burn was last reported, by severity (page, ticket); 0 when never.
    pub(crate) slo_alerted: Mutex<[u64; 2]>,
}

impl RouteState {
    fn new(label: u16) -> Self {
        RouteState {
            label,
            stats: LatencyStats::default(),
            slo: Mutex::new(SloWindow::default()),
            try_timeout_us: AtomicU64::new(0),
            try_seen: AtomicU64::new(0),
            slo_alerted: Mutex::new([0; 2]),
        }
    }
}

pub struct State {
    pub store: CustomerStore,
    pub upstreams: Registry,
    routes: Mutex<HashMap<Arc<str>, Arc<RouteState>>>,
    pub route_names: Interner<Arc<str>>,
    pub funnel_names: Interner<Arc<str>>,
    pub tier_names: Interner<Arc<str>>,
    pub metrics: Metrics,
    pub events: Events,
    /// Requests between admission and their end, for draining at shutdown.
    pub in_flight: Arc<InFlight>,
    /// Downstream connections open on the proxy listeners and on the admin API, each under its cap.
    pub proxy_connections: Arc<Connections>,
    pub admin_connections: Arc<Connections>,
    /// What the TLS listeners choose certificates from: given each configuration's as it comes
    /// into force, so a reload changes them without touching a listener.
    pub tls: Arc<crate::tls::Resolver>,
    pub access_log: crate::access_log::AccessLogs,
    /// When this process started, Unix milliseconds.
    pub started_ms: u64,
    /// This process's id in the hop header (16 hex digits, random): a request that comes back
    /// with it has looped.
    pub instance: String,
    /// Whether the state folder is this process's to write its snapshot to (not while a graceful
    /// upgrade's old process still holds it).
    owns_state_dir: std::sync::atomic::AtomicBool,
    /// During a graceful upgrade, until the old process's state is taken over: the customers
    /// erased meanwhile (ids or pseudonyms), to erase again from what arrives.
    pub pending_erasures: parking_lot::Mutex<Option<Vec<String>>>,
    /// Retention forgot customers whom the snapshot on disk may still hold, and when it was last
    /// written again for that (Unix ms): see `crate::snapshot::rewrite_after_retention`.
    pub retention_forgot: std::sync::atomic::AtomicBool,
    pub retention_rewritten_ms: std::sync::atomic::AtomicU64,
}

/// Requests between admission and their end. One counter per thread slot, each on its own cache
/// line, so that counting on the request path never bounces a shared line between worker threads;
/// a request may end on another thread than it started on, so a slot can go negative and only the
/// sum means anything.
pub struct InFlight {
    slots: Box<[Slot]>,
}

#[repr(align(128))]
struct Slot(AtomicI64);

const SLOTS: usize = 64;

thread_local! {
    static SLOT: usize = {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        NEXT.fetch_add(1, Ordering::Relaxed) as usize % SLOTS
    };
}

impl Default for InFlight {
    fn default() -> Self {
        InFlight {
            slots: (0..SLOTS).map(|_| Slot(AtomicI64::new(0))).collect(),
        }
    }
}

impl InFlight {
    fn slot(&self) -> &AtomicI64 {
        &self.slots[SLOT.with(|s| *s)].0
    }

    pub fn enter(&self) {
        self.slot().fetch_add(1, Ordering::Relaxed);
    }

    pub fn leave(&self) {
        self.slot().fetch_sub(1, Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        let sum: i64 = self.slots.iter().map(|s| s.0.load(Ordering::Relaxed)).sum();
        sum.max(0) as u64
    }
}

impl State {
    /// Fresh state; `track_max` sizes the customer store's shards for good.
    pub fn new(track_max: usize, now: Instant, now_ms: u64) -> Self {
        let metrics = Metrics::new();
        let events = Events::new(metrics.registry());
        let access_log = crate::access_log::AccessLogs::new(metrics.registry());
        let (proxy_connections, admin_connections) = (
            Connections::new(metrics.connections("proxy")),
            Connections::new(metrics.connections("admin")),
        );
        State {
            store: CustomerStore::new(track_max),
            upstreams: Registry::new(now),
            routes: Mutex::new(HashMap::new()),
            route_names: Interner::new(MAX_NAMES),
            funnel_names: Interner::new(MAX_NAMES),
            tier_names: Interner::new(MAX_TIERS),
            metrics,
            events,
            in_flight: Arc::new(InFlight::default()),
            proxy_connections,
            admin_connections,
            tls: Arc::default(),
            access_log,
            started_ms: now_ms,
            instance: format!("{:016x}", rand::random::<u64>()),
            owns_state_dir: std::sync::atomic::AtomicBool::new(true),
            retention_forgot: std::sync::atomic::AtomicBool::new(false),
            retention_rewritten_ms: std::sync::atomic::AtomicU64::new(0),
            pending_erasures: parking_lot::Mutex::new(None),
        }
    }

    /// The state of each of `names`, in order: kept for a name seen before, fresh for a new one.
    /// Routes no longer named are forgotten (requests still holding them finish on them).
    pub fn routes_for(&self, names: &[&str]) -> Vec<Arc<RouteState>> {
        let mut known = self.routes.lock();
        let out: Vec<Arc<RouteState>> = names
            .iter()
            .map(|n| {
                let key: Arc<str> = Arc::from(*n);
                known.get(&key).cloned().unwrap_or_else(|| {
                    let label = self.route_names.intern(&key).unwrap_or(u16::MAX);
                    Arc::new(RouteState::new(label))
                })
            })
            .collect();
        *known = names
            .iter()
            .map(|n| Arc::from(*n))
            .zip(out.iter().cloned())
            .collect();
        out
    }

    /// The state of route `name`, if the configuration in force has it.
    pub fn route(&self, name: &str) -> Option<Arc<RouteState>> {
        self.routes.lock().get(name).cloned()
    }

    /// Requests admitted and not yet finished.
    pub fn in_flight(&self) -> u64 {
        self.in_flight.count()
    }

    pub fn owns_state_dir(&self) -> bool {
        self.owns_state_dir.load(Ordering::Acquire)
    }

    pub fn set_owns_state_dir(&self, owns: bool) {
        self.owns_state_dir.store(owns, Ordering::Release);
    }

    /// The name behind an interned tier id.
    pub fn tier_name(&self, label: u8) -> String {
        self.tier_names
            .get(u16::from(label))
            .map_or_else(|| "?".to_string(), |n| n.to_string())
    }
}
