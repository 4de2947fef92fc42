//! A customer's journey: the last N requests, in a fixed-size ring of compact steps.
//!
//! A step is 48 bytes, with the path truncated to fit, so that a 16-step journey costs 768 bytes and a
//! tracked customer stays under 1 KiB. Routes and upstreams are stored as interned ids
//! (`crate::names`), not positions in a configuration: a step keeps naming the route that served it
//! after a reload removed that route. Names are looked up only when someone reads the journey.

use crate::measure::Outcome;
use http::Method;

/// Bytes of path kept per step.
pub const PATH_BYTES: usize = 27;
/// Bytes of a step in a snapshot: the same 48, little-endian.
pub const STEP_BYTES: usize = 48;
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
        route: Option<u16>,
        method: &Method,
        path: &str,
        status: u16,
        latency_us: u32,
        upstream: Option<u16>,
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

    /// The interned name of the route that served it.
    pub fn route(&self) -> Option<u16> {
        let r = self.route;
        (r != NONE).then_some(r)
    }

    /// The interned address of the upstream that served it.
    pub fn upstream(&self) -> Option<u16> {
        let u = self.upstream;
        (u != NONE).then_some(u)
    }

    /// The same step with its interned ids mapped (a snapshot's ids into this process's).
    pub fn relabel(
        mut self,
        f: impl Fn(Option<u16>, Option<u16>) -> (Option<u16>, Option<u16>),
    ) -> Step {
        let (r, u) = f(self.route(), self.upstream());
        self.route = r.unwrap_or(NONE);
        self.upstream = u.unwrap_or(NONE);
        self
    }

    pub fn to_bytes(&self) -> [u8; STEP_BYTES] {
        let mut b = [0u8; STEP_BYTES];
        let (at_ms, latency_us, status, route, upstream) = (
            self.at_ms,
            self.latency_us,
            self.status,
            self.route,
            self.upstream,
        );
        b[0..8].copy_from_slice(&at_ms.to_le_bytes());
        b[8..12].copy_from_slice(&latency_us.to_le_bytes());
        b[12..14].copy_from_slice(&status.to_le_bytes());
        b[14..16].copy_from_slice(&route.to_le_bytes());
        b[16..18].copy_from_slice(&upstream.to_le_bytes());
        b[18] = self.method;
        b[19] = self.outcome;
        b[20] = self.path_len;
        b[21..].copy_from_slice(&self.path);
        b
    }

    /// `None` when the bytes are not a step this version wrote (a path that is not UTF-8 or
    /// longer than its room, an unknown outcome).
    pub fn from_bytes(b: &[u8; STEP_BYTES]) -> Option<Step> {
        let u16_at = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        let mut path = [0u8; PATH_BYTES];
        path.copy_from_slice(&b[21..]);
        let path_len = b[20];
        let len = (path_len & !TRUNCATED) as usize;
        if len > PATH_BYTES || std::str::from_utf8(&path[..len]).is_err() {
            return None;
        }
        if b[19] as usize >= Outcome::ALL.len() {
            return None;
        }
        Some(Step {
            at_ms: u64::from_le_bytes(b[0..8].try_into().ok()?),
            latency_us: u32::from_le_bytes(b[8..12].try_into().ok()?),
            status: u16_at(12),
            route: u16_at(14),
            upstream: u16_at(16),
            method: b[18],
            outcome: b[19],
            path_len,
            path,
        })
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
    /// `capacity` is at most 255 (validated in config). A journey kept at another capacity (the
    /// configuration changed) keeps its most recent steps.
    pub fn push(&mut self, step: Step, capacity: usize) {
        let capacity = capacity.clamp(1, u8::MAX as usize);
        if self.steps.len() != capacity {
            self.resize(capacity);
        }
        self.steps[self.next as usize] = step;
        self.next = ((self.next as usize + 1) % capacity) as u8;
        self.len = (self.len as usize + 1).min(capacity) as u8;
    }

    fn resize(&mut self, capacity: usize) {
        let keep: Vec<Step> = self.iter().copied().collect();
        let skip = keep.len().saturating_sub(capacity);
        *self = Journey::from_steps(&keep[skip..], capacity);
    }

    /// A journey of `steps` (oldest first), at most the last `capacity` of them.
    pub fn from_steps(steps: &[Step], capacity: usize) -> Journey {
        let capacity = capacity.clamp(1, u8::MAX as usize);
        let skip = steps.len().saturating_sub(capacity);
        let mut ring = vec![EMPTY; capacity].into_boxed_slice();
        let kept = &steps[skip..];
        ring[..kept.len()].copy_from_slice(kept);
        Journey {
            steps: ring,
            len: kept.len() as u8,
            next: (kept.len() % capacity) as u8,
        }
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
    fn a_new_capacity_keeps_the_most_recent_steps() {
        let mut j = Journey::default();
        for i in 0..10 {
            j.push(step(i, "/a"), 8);
        }
        j.push(step(10, "/a"), 4);
        let at: Vec<u64> = j.iter().map(|s| s.at_ms()).collect();
        assert_eq!(at, vec![7, 8, 9, 10]);
        j.push(step(11, "/a"), 16);
        assert_eq!(j.len(), 5);
        assert_eq!(j.heap_bytes(), 16 * 48);
    }

    #[test]
    fn steps_round_trip_through_bytes() {
        let s = Step::new(
            1_700_000_000_123,
            Some(7),
            &Method::POST,
            "/checkout/payment/confirm-and-pay",
            503,
            1234,
            Some(9),
            Outcome::Upstream5xx,
        );
        assert_eq!(Step::from_bytes(&s.to_bytes()), Some(s));
        let mut bad = s.to_bytes();
        bad[19] = 200;
        assert_eq!(Step::from_bytes(&bad), None, "unknown outcome");
        let moved = s.relabel(|r, u| (r.map(|r| r + 1), u.and(None)));
        assert_eq!((moved.route(), moved.upstream()), (Some(8), None));
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
