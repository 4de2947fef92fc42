//! What usher learns about one upstream on one route: passive health judged on that route's
//! requests alone, and whether that route's requests there are getting answers at all.
//!
//! An upstream can be fine for the catalogue and slow or failing on the checkout (one slow query,
//! one broken dependency). Judged as a whole, its fast answers elsewhere hide the checkout's, and
//! probes on other paths re-admit it. So each (route, upstream) pair has its own [`Health`], with
//! the same rules as the upstream's: a request of the route avoids the upstream while either says
//! so, and only the route's own requests probe it back in there.
//!
//! A hung upstream (it accepts, never answers) is found from the age of its unanswered requests,
//! not by waiting for the read timeout: when a route has [`HUNG_MIN_IN_FLIGHT`] or more requests
//! there and none has been answered for `hung_after` (from the route's latency), it is avoided at
//! once and ejected by the next sweep. Keyed by route name and address, so it lasts across
//! configurations as nodes do.

use super::ewma::PeakEwma;
use super::health::Health;
use parking_lot::Mutex;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// Unanswered requests needed before silence means a hang: one slow request alone is a slow
/// request (the latency rules judge it), not a hung upstream.
pub const HUNG_MIN_IN_FLIGHT: u32 = 2;

pub struct Lane {
    route: Arc<str>,
    addr: SocketAddr,
    pub(crate) health: Health,
    /// The upstream's latency on this route alone: what balancing goes by for the route's
    /// requests, so one slow checkout makes it look slow for checkouts, not for the catalogue.
    pub(crate) ewma: Mutex<PeakEwma>,
    /// When a request of the route last went there, in milliseconds since the registry's base:
    /// balancing that leaves a route's lane idle still samples it (see `mod.rs`).
    pub(crate) last_pick_ms: AtomicU64,
    in_flight: AtomicU32,
    /// When its in-flight count last went from 0 to 1, in milliseconds since the registry's base.
    busy_since_ms: AtomicU64,
    /// When it last answered a request of the route (a 5xx is an answer, a timeout is not), same
    /// clock.
    last_answer_ms: AtomicU64,
    /// Requests of the route that ended there with no answer since the last answer.
    unanswered: AtomicU32,
    /// Silence that means a hang, in milliseconds; 0 until the route's latency is known.
    hung_after_ms: AtomicU64,
}

impl Lane {
    pub(crate) fn new(route: Arc<str>, addr: SocketAddr, now: Instant) -> Lane {
        Lane {
            route,
            addr,
            health: Health::new(now),
            ewma: Mutex::new(PeakEwma::new(now)),
            last_pick_ms: AtomicU64::new(0),
            in_flight: AtomicU32::new(0),
            busy_since_ms: AtomicU64::new(0),
            last_answer_ms: AtomicU64::new(0),
            unanswered: AtomicU32::new(0),
            hung_after_ms: AtomicU64::new(0),
        }
    }

    pub fn route(&self) -> &str {
        &self.route
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    pub(crate) fn started(&self, now_ms: u64) {
        // A silence that timed-out requests left running goes on: this one waits in it.
        if self.in_flight.fetch_add(1, Ordering::Relaxed) == 0
            && self.unanswered.load(Ordering::Relaxed) == 0
        {
            self.busy_since_ms.store(now_ms, Ordering::Relaxed);
        }
    }

    pub(crate) fn ended(&self) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
    }

    pub(crate) fn answered(&self, now_ms: u64) {
        self.last_answer_ms.fetch_max(now_ms, Ordering::Relaxed);
        self.unanswered.store(0, Ordering::Relaxed);
    }

    pub(crate) fn timed_out(&self) {
        self.unanswered.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn waiting(&self) -> u32 {
        self.in_flight()
            .saturating_add(self.unanswered.load(Ordering::Relaxed))
    }

    /// Sets the silence that means a hang (see the module's docs); `None` turns detection off.
    pub fn set_hung_after(&self, after: Option<std::time::Duration>) {
        let ms = after.map_or(0, |d| crate::time::millis(d).max(1));
        self.hung_after_ms.store(ms, Ordering::Relaxed);
    }

    /// How long requests of the route have been waiting there with no answer, while any are.
    pub(crate) fn silent_for(&self, now_ms: u64) -> Option<u64> {
        if self.waiting() == 0 {
            return None;
        }
        let since = self
            .busy_since_ms
            .load(Ordering::Relaxed)
            .max(self.last_answer_ms.load(Ordering::Relaxed));
        Some(now_ms.saturating_sub(since))
    }

    /// How long its requests of the route have gone unanswered, when that means it hangs.
    pub(crate) fn hung_for(&self, now_ms: u64) -> Option<u64> {
        let after = self.hung_after_ms.load(Ordering::Relaxed);
        // A timeout is an answer that never came: on its own it is evidence enough.
        let unanswered = self.unanswered.load(Ordering::Relaxed);
        if after == 0 || (self.in_flight() < HUNG_MIN_IN_FLIGHT && unanswered == 0) {
            return None;
        }
        self.silent_for(now_ms).filter(|silent| *silent >= after)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn silence_with_requests_waiting_is_a_hang_and_an_answer_ends_it() {
        let l = Lane::new("r".into(), "127.0.0.1:1".parse().unwrap(), Instant::now());
        l.set_hung_after(Some(Duration::from_millis(1000)));
        l.started(100);
        assert_eq!(l.hung_for(5_000), None, "one slow request is not a hang");
        l.started(200);
        assert_eq!(l.hung_for(1_099), None);
        assert_eq!(l.hung_for(1_100), Some(1_000));
        l.answered(1_200);
        assert_eq!(l.hung_for(2_100), None, "it answers");
        assert_eq!(l.hung_for(2_200), Some(1_000));
        // Both time out: ended, unanswered; the silence goes on.
        l.ended();
        l.timed_out();
        assert_eq!(l.hung_for(9_000), Some(7_800), "one waiting, one timed out");
        l.ended();
        l.timed_out();
        assert_eq!(
            l.hung_for(9_400),
            Some(8_200),
            "nothing waiting, still no answer"
        );
        l.started(9_500);
        assert_eq!(
            l.hung_for(9_600),
            Some(8_400),
            "a new request waits in the same silence"
        );
        l.answered(9_700);
        assert_eq!(l.hung_for(99_000), None, "an answer ends it");
        l.timed_out();
        assert_eq!(l.hung_for(10_600), None, "within the limit");
        assert_eq!(
            l.hung_for(10_700),
            Some(1_000),
            "one timeout and silence past the limit"
        );
        l.answered(10_800);
        l.ended();
        assert_eq!(l.hung_for(99_000), None);
        l.set_hung_after(None);
        l.started(9_000);
        assert_eq!(
            l.hung_for(99_000),
            None,
            "off until the route's latency is known"
        );
    }
}
