//! The connection cap: plain counting, no sockets, so that the arithmetic is testable on its own.
//!
//! A listener's [`Connections`] lasts for the process (the count must survive reloads); the cap it
//! applies is the configuration's `server.max_connections`, lowered to what the open-files limit
//! can hold ([`fd_budget`]) so that a full listener never starves upstream connects or the admin API.
//!
//! An HTTP/2 connection carries many requests at once, each with an upstream connection of its own:
//! the connection cap alone would let a few of them take every descriptor. Their streams in flight
//! are counted too ([`Connections::admit_stream`]), against what the budget left for upstreams.

use crate::defaults as d;
use crate::metrics::ConnectionMetrics;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Refused connections given a moment to read their 503 at once, per listener, at most: beyond
/// that a flood of refusals would hold descriptors of its own, so they are just closed. Two
/// listeners' worth are part of [`d::FD_RESERVE`].
pub const MAX_LINGERING: usize = 32;

/// The fewest downstream connections usher serves whatever the open-files limit: below this the
/// reserve is not kept, and the start-up log says so.
pub const MIN_BUDGET: usize = 16;

/// How many downstream connections `open_files` descriptors can carry while keeping room for
/// `idle_upstreams` pooled upstream connections and [`d::FD_RESERVE`] more (admin API, lingering
/// refusals, sinks, logs, the snapshot): half of what is left, since every downstream connection
/// that is being proxied holds an upstream one too. At least [`MIN_BUDGET`].
pub fn fd_budget(open_files: u64, idle_upstreams: u64) -> usize {
    let reserve = d::FD_RESERVE + idle_upstreams;
    let budget = open_files.saturating_sub(reserve) / 2;
    usize::try_from(budget)
        .unwrap_or(usize::MAX)
        .max(MIN_BUDGET)
}

/// One listener's open connections.
pub struct Connections {
    open: AtomicUsize,
    /// What the open-files limit allows ([`fd_budget`]); unbounded until told.
    budget: AtomicUsize,
    lingering: AtomicUsize,
    /// HTTP/2 streams being proxied now.
    streams: AtomicUsize,
    metrics: ConnectionMetrics,
}

/// The right of one HTTP/2 stream to an upstream connection: given back when dropped.
pub struct StreamSlot {
    connections: Arc<Connections>,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.connections.streams.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The right of one admitted connection to be open: given back when dropped.
pub struct Slot {
    connections: Arc<Connections>,
    /// Which of [`crate::metrics::PROTOCOLS`] it was counted under, once known.
    protocol: Option<usize>,
}

impl Connections {
    pub fn new(metrics: ConnectionMetrics) -> Arc<Self> {
        Arc::new(Connections {
            open: AtomicUsize::new(0),
            budget: AtomicUsize::new(usize::MAX),
            lingering: AtomicUsize::new(0),
            streams: AtomicUsize::new(0),
            metrics,
        })
    }

    /// Lowers every cap to `budget` from now on.
    pub fn set_budget(&self, budget: usize) {
        self.budget.store(budget, Ordering::Relaxed);
    }

    /// The cap in force when the configuration asks for `configured`.
    pub fn limit(&self, configured: usize) -> usize {
        configured.min(self.budget.load(Ordering::Relaxed))
    }

    /// Shows the cap in force for `configured` in `usher_connections_limit` before any connection
    /// asks (a new connection shows it too).
    pub fn publish_limit(&self, configured: usize) {
        self.metrics.limit.set(self.limit(configured) as i64);
    }

    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// A slot for a new connection, or `None` (counted) when `limit(configured)` are open already.
    /// Connections that are open stay open: a lowered cap only turns new ones away.
    pub fn admit(self: &Arc<Self>, configured: usize) -> Option<Slot> {
        // HTTP/2 streams in flight hold upstream descriptors the budget meant for connections.
        let streams = self.streams.load(Ordering::Relaxed).div_ceil(2);
        let limit = self.limit(configured);
        let limit = match self.budget.load(Ordering::Relaxed) {
            usize::MAX => limit,
            budget => limit.min(budget.saturating_sub(streams)),
        };
        self.metrics.limit.set(limit as i64);
        let before = self.open.fetch_add(1, Ordering::AcqRel);
        if before >= limit {
            self.open.fetch_sub(1, Ordering::AcqRel);
            self.metrics.refused_capacity.inc();
            return None;
        }
        self.metrics.open.inc();
        Some(Slot {
            connections: self.clone(),
            protocol: None,
        })
    }

    /// A slot for one more HTTP/2 stream, or `None` (counted) when the descriptors left for
    /// upstream connections are taken. The budget gives the downstream connections one upstream
    /// connection each and as many again to spare; a stream may use what the open connections
    /// leave of that: `streams + 2 x open <= 2 x budget`, so that downstream and upstream
    /// descriptors together stay within twice the budget, what [`fd_budget`] set aside for them.
    /// Unbounded until the budget is known (an embedder's own server).
    pub fn admit_stream(self: &Arc<Self>) -> Option<StreamSlot> {
        let budget = self.budget.load(Ordering::Relaxed);
        let room = budget
            .saturating_mul(2)
            .saturating_sub(self.open().saturating_mul(2));
        let before = self.streams.fetch_add(1, Ordering::AcqRel);
        if budget != usize::MAX && before >= room {
            self.streams.fetch_sub(1, Ordering::AcqRel);
            self.metrics.refused_streams.inc();
            return None;
        }
        Some(StreamSlot {
            connections: self.clone(),
        })
    }

    /// HTTP/2 streams being proxied now.
    pub fn streams(&self) -> usize {
        self.streams.load(Ordering::Relaxed)
    }

    /// Whether one more refused connection may linger to read its answer; pair with
    /// [`Connections::lingered`].
    pub(crate) fn may_linger(&self) -> bool {
        let before = self.lingering.fetch_add(1, Ordering::AcqRel);
        if before >= MAX_LINGERING {
            self.lingering.fetch_sub(1, Ordering::AcqRel);
            return false;
        }
        true
    }

    pub(crate) fn lingered(&self) {
        self.lingering.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Slot {
    /// Counts the connection under protocol `p` (an index of [`crate::metrics::PROTOCOLS`]).
    pub(crate) fn set_protocol(&mut self, p: usize) {
        let by = &self.connections.metrics.by_protocol;
        if let Some(old) = self.protocol.and_then(|o| by.get(o)) {
            old.dec();
        }
        if let Some(g) = by.get(p) {
            g.inc();
            self.protocol = Some(p);
        }
    }

    /// Counts a TLS handshake's result (an index of [`crate::metrics::TLS_RESULTS`]).
    pub(crate) fn tls_handshake(&self, result: usize) {
        if let Some(c) = self.connections.metrics.tls_handshakes.get(result) {
            c.inc();
        }
    }

    pub(crate) fn head_timed_out(&self) {
        self.connections.metrics.refused_head_timeout.inc();
    }

    pub(crate) fn idle_closed(&self) {
        self.connections.metrics.idle_closed.inc();
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.connections.open.fetch_sub(1, Ordering::AcqRel);
        self.connections.metrics.open.dec();
        if let Some(g) = self
            .protocol
            .and_then(|p| self.connections.metrics.by_protocol.get(p))
        {
            g.dec();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;

    #[test]
    fn the_cap_turns_new_connections_away_and_frees_a_slot_on_drop() {
        let m = Metrics::new();
        let c = Connections::new(m.connections("proxy"));
        let a = c.admit(2).expect("first");
        let _b = c.admit(2).expect("second");
        assert!(c.admit(2).is_none());
        assert_eq!(c.open(), 2);
        drop(a);
        assert_eq!(c.open(), 1);
        let _c = c.admit(2).expect("a slot came free");
        let text = m.encode();
        assert!(
            text.contains("usher_connections_open{listener=\"proxy\"} 2"),
            "{text}"
        );
        assert!(text.contains("usher_connections_limit{listener=\"proxy\"} 2"));
        assert!(text
            .contains("usher_connections_refused_total{listener=\"proxy\",reason=\"capacity\"} 1"));
    }

    #[test]
    fn the_open_files_limit_lowers_the_cap() {
        let m = Metrics::new();
        let c = Connections::new(m.connections("proxy"));
        assert_eq!(c.limit(16_384), 16_384);
        c.set_budget(fd_budget(1024, 128));
        assert_eq!(c.limit(16_384), (1024 - 256 - 128) / 2);
        assert_eq!(c.limit(10), 10);
    }

    #[test]
    fn the_budget_keeps_a_reserve_and_half_for_upstreams() {
        assert_eq!(fd_budget(1_048_576, 128), (1_048_576 - 384) / 2);
        assert_eq!(fd_budget(20_000, 256), (20_000 - 512) / 2);
        assert_eq!(fd_budget(512, 128), 64);
        // A limit too small for the reserve still serves a few.
        assert_eq!(fd_budget(256, 128), MIN_BUDGET);
        assert_eq!(fd_budget(0, 0), MIN_BUDGET);
    }

    #[test]
    fn streams_share_what_the_open_connections_leave_of_twice_the_budget() {
        let m = Metrics::new();
        let c = Connections::new(m.connections("proxy"));
        // No budget yet: streams are counted, never refused.
        let free: Vec<StreamSlot> = (0..1000).map(|_| c.admit_stream().unwrap()).collect();
        assert_eq!(c.streams(), 1000);
        drop(free);
        c.set_budget(64);
        let conns: Vec<Slot> = (0..6).map(|_| c.admit(16_384).unwrap()).collect();
        let streams: Vec<StreamSlot> = std::iter::from_fn(|| c.admit_stream()).collect();
        assert_eq!(streams.len(), 2 * 64 - 2 * 6);
        assert!(c.admit_stream().is_none());
        assert!(
            c.admit(16_384).is_none(),
            "nor a connection: the descriptors are in use"
        );
        drop(streams);
        assert_eq!(c.streams(), 0);
        let _more = c
            .admit(16_384)
            .expect("a connection once the streams are done");
        drop(conns);
        assert!(m
            .encode()
            .contains("usher_connections_refused_total{listener=\"proxy\",reason=\"streams\"} 2"));
    }

    #[test]
    fn lingering_is_bounded() {
        let m = Metrics::new();
        let c = Connections::new(m.connections("proxy"));
        for _ in 0..MAX_LINGERING {
            assert!(c.may_linger());
        }
        assert!(!c.may_linger());
        c.lingered();
        assert!(c.may_linger());
    }
}
