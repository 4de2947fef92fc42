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

/// Packed to alignment 1 on purpose: mimalloc (usher's allocator) pads an over-aligned 768-byte
/// journey into its 896-byte size class, a 1-aligned one fits the 768 class exactly: 128 bytes per
/// tracked customer. Fields are only ever read by value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C, packed)]
pub struct Step {
    at_ms: u64,
    latency_us: u32,
    status: u16,
    route: u16,
    upstream: u16,
    method: u8,
    outcome: u8,
    path_len: u8,
    path: [u8; PATH_BYTES],
}

const _: () = assert!(std::mem::size_of::<Step>() == 48 && std::mem::align_of::<Step>() == 1);

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

    pub fn at_ms(&self) -> u64 {
        self.at_ms
    }

    pub fn latency_us(&self) -> u32 {
        self.latency_us
    }

    pub fn status(&self) -> u16 {
        self.status
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
        let r = self.route;
        (r != NONE).then_some(r)
    }

    pub fn upstream(&self) -> Option<UpstreamId> {
        let u = self.upstream;
        (u != NONE).then_some(u)
    }
}

/// A ring of the most recent steps: a boxed slice of exactly `capacity` steps, allocated on first use,
/// and two counters. 24 bytes inline.
#[derive(Debug, Clone, Default)]
pub struct Journey {
    steps: Box<[Step]>,
    len: u8,
    next: u8,
}

const EMPTY: Step = Step {
    at_ms: 0,
    latency_us: 0,
    status: 0,
    route: NONE,
    upstream: NONE,
    method: u8::MAX,
    outcome: 0,
    path_len: 0,
    path: [0; PATH_BYTES],
};

impl Journey {
    /// `capacity` is at most 255 (validated in config).
    pub fn push(&mut self, step: Step, capacity: usize) {
        let capacity = capacity.clamp(1, u8::MAX as usize);
        if self.steps.len() != capacity {
            self.steps = vec![EMPTY; capacity].into_boxed_slice();
            self.len = 0;
            self.next = 0;
        }
        self.steps[self.next as usize] = step;
        self.next = ((self.next as usize + 1) % capacity) as u8;
        self.len = (self.len as usize + 1).min(capacity) as u8;
    }

    /// Oldest first.
    pub fn iter(&self) -> impl Iterator<Item = &Step> {
        let len = self.len as usize;
        let cap = self.steps.len();
        let start = (self.next as usize + cap - len) % cap.max(1);
        (0..len).map(move |k| &self.steps[(start + k) % cap])
    }

    pub fn last(&self) -> Option<&Step> {
        (self.len > 0)
            .then(|| &self.steps[(self.next as usize + self.steps.len() - 1) % self.steps.len()])
    }

    pub fn len(&self) -> usize {
        self.len as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn heap_bytes(&self) -> usize {
        std::mem::size_of_val(&*self.steps)
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
        let at: Vec<u64> = j.iter().map(|s| s.at_ms()).collect();
        assert_eq!(at, (4..20).collect::<Vec<_>>());
        assert_eq!(j.last().unwrap().at_ms(), 19);
        assert_eq!(j.heap_bytes(), 16 * 48);
        assert_eq!(std::mem::size_of::<Journey>(), 24);
    }

    #[test]
    fn empty_journey_has_nothing() {
        let j = Journey::default();
        assert!(j.is_empty() && j.last().is_none() && j.iter().next().is_none());
        assert_eq!(j.heap_bytes(), 0);
    }

    #[test]
    fn short_journey_in_order() {
        let mut j = Journey::default();
        for i in 0..3 {
            j.push(step(i, "/a"), 16);
        }
        assert_eq!(
            j.iter().map(|s| s.at_ms()).collect::<Vec<_>>(),
            vec![0, 1, 2]
        );
        assert_eq!(j.last().unwrap().at_ms(), 2);
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
