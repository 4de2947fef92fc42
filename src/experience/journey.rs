//! A customer's journey: the last N requests, in a fixed-size ring of compact steps.
//!
//! A step is 48 bytes, with the path truncated to fit, so that a 16-step journey costs 768 bytes and a
//! tracked customer stays under 1 KiB. Routes and upstreams are stored as indices into the config;
//! names are looked up only when someone reads the journey.

use crate::config::{RouteId, UpstreamId};
use crate::measure::Outcome;
use http::Method;

/// Bytes of path kept per step.
pub const PATH_BYTES: usize = 27;
/// Marks "no route" / "no upstream" in a step.
pub const NONE: u16 = u16::MAX;
const TRUNCATED: u8 = 0x80;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    pub at_ms: u64,
    pub latency_us: u32,
    pub status: u16,
    pub route: u16,
    pub upstream: u16,
    method: u8,
    outcome: u8,
    path_len: u8,
    path: [u8; PATH_BYTES],
}

const _: () = assert!(std::mem::size_of::<Step>() == 48);

const METHODS: [Method; 9] = [
    Method::GET,
    Method::POST,
    Method::PUT,
    Method::DELETE,
    Method::HEAD,
    Method::OPTIONS,
    Method::PATCH,
    Method::CONNECT,
    Method::TRACE,
];

impl Step {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        at_ms: u64,
        route: Option<RouteId>,
        method: &Method,
        path: &str,
        status: u16,
        latency_us: u32,
        upstream: Option<UpstreamId>,
        outcome: Outcome,
    ) -> Step {
        let mut buf = [0u8; PATH_BYTES];
        let mut len = path.len().min(PATH_BYTES);
        while !path.is_char_boundary(len) {
            len -= 1;
        }
        buf[..len].copy_from_slice(&path.as_bytes()[..len]);
        let truncated = if len < path.len() { TRUNCATED } else { 0 };
        Step {
            at_ms,
            latency_us,
            status,
            route: route.unwrap_or(NONE),
            upstream: upstream.unwrap_or(NONE),
            method: METHODS
                .iter()
                .position(|m| m == method)
                .map_or(u8::MAX, |i| i as u8),
            outcome: outcome as u8,
            path_len: len as u8 | truncated,
            path: buf,
        }
    }

    pub fn method(&self) -> &'static str {
        METHODS
            .get(self.method as usize)
            .map_or("OTHER", |m| m.as_str())
    }

    pub fn outcome(&self) -> Outcome {
        Outcome::from_u8(self.outcome)
    }

    /// The stored path; `truncated` says whether the request's path was longer.
    pub fn path(&self) -> (&str, bool) {
        let len = (self.path_len & !TRUNCATED) as usize;
        // Built from a &str cut at a char boundary, so always valid UTF-8.
        let s = std::str::from_utf8(&self.path[..len]).unwrap_or("");
        (s, self.path_len & TRUNCATED != 0)
    }

    pub fn route(&self) -> Option<RouteId> {
        (self.route != NONE).then_some(self.route)
    }

    pub fn upstream(&self) -> Option<UpstreamId> {
        (self.upstream != NONE).then_some(self.upstream)
    }
}

/// A ring of the most recent steps. Allocates its buffer, exactly `capacity` steps, on first use.
#[derive(Debug, Clone, Default)]
pub struct Journey {
    steps: Vec<Step>,
    next: u8,
}

impl Journey {
    pub fn push(&mut self, step: Step, capacity: usize) {
        if self.steps.capacity() == 0 {
            self.steps.reserve_exact(capacity);
        }
        if self.steps.len() < capacity {
            self.steps.push(step);
        } else {
            self.steps[self.next as usize] = step;
            self.next = ((self.next as usize + 1) % capacity) as u8;
        }
    }

    /// Oldest first.
    pub fn iter(&self) -> impl Iterator<Item = &Step> {
        let (newer, older) = self.steps.split_at(self.next as usize);
        older.iter().chain(newer.iter())
    }

    pub fn last(&self) -> Option<&Step> {
        if self.steps.is_empty() {
            None
        } else {
            let i = (self.next as usize + self.steps.len() - 1) % self.steps.len();
            self.steps.get(i)
        }
    }

    pub fn len(&self) -> usize {
        self.steps.len()
    }

    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }

    pub fn heap_bytes(&self) -> usize {
        self.steps.capacity() * std::mem::size_of::<Step>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(i: u64, path: &str) -> Step {
        Step::new(
            i,
            Some(1),
            &Method::POST,
            path,
            200,
            1500,
            None,
            Outcome::Ok,
        )
    }

    #[test]
    fn ring_keeps_the_last_n_oldest_first() {
        let mut j = Journey::default();
        for i in 0..20 {
            j.push(step(i, "/a"), 16);
        }
        let at: Vec<u64> = j.iter().map(|s| s.at_ms).collect();
        assert_eq!(at, (4..20).collect::<Vec<_>>());
        assert_eq!(j.last().unwrap().at_ms, 19);
        assert_eq!(j.heap_bytes(), 16 * 48);
    }

    #[test]
    fn short_journey_in_order() {
        let mut j = Journey::default();
        for i in 0..3 {
            j.push(step(i, "/a"), 16);
        }
        assert_eq!(j.iter().map(|s| s.at_ms).collect::<Vec<_>>(), vec![0, 1, 2]);
        assert_eq!(j.last().unwrap().at_ms, 2);
    }

    #[test]
    fn long_paths_are_cut_at_a_char_boundary() {
        let s = step(0, "/checkout/payment/confirm-and-pay/now");
        assert_eq!(s.path(), ("/checkout/payment/confirm-a", true));
        let s = step(0, "/ééééééééééééééééé");
        let (p, cut) = s.path();
        assert!(cut && p.len() <= PATH_BYTES && p.starts_with("/é"));
        assert_eq!(step(0, "/short").path(), ("/short", false));
    }

    #[test]
    fn fields_round_trip() {
        let s = Step::new(
            7,
            None,
            &Method::from_bytes(b"PURGE").unwrap(),
            "/x",
            503,
            u32::MAX,
            Some(3),
            Outcome::Upstream5xx,
        );
        assert_eq!(s.method(), "OTHER");
        assert_eq!(s.route(), None);
        assert_eq!(s.upstream(), Some(3));
        assert_eq!(s.outcome(), Outcome::Upstream5xx);
        assert_eq!(
            Step::new(0, Some(0), &Method::DELETE, "/", 1, 1, None, Outcome::Ok).method(),
            "DELETE"
        );
    }
}
