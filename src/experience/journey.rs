//! A customer's journey: the last N requests, in a fixed-size ring of compact steps.
//!
//! A step is 64 bytes: the request's id (so that a step leads to the application's own logs), the
//! path truncated to fit, the score after the step and its struggle marks. A 16-step journey is
//! 1,024 bytes, exactly one of mimalloc's size classes. Routes and upstreams are stored as interned
//! ids (`crate::names`), not positions in a configuration: a step keeps naming the route that
//! served it after a reload removed that route. Names are looked up only when someone reads the
//! journey.

use crate::measure::Outcome;
use http::Method;

/// Bytes of path kept per step.
pub const PATH_BYTES: usize = 25;
/// Bytes of request id kept per step: a generated id or a W3C trace id (32 hex digits) and a UUID
/// fit whole; another id keeps its first 16 characters.
pub const ID_BYTES: usize = 16;
/// Bytes of a step in a snapshot: the same 64, little-endian.
pub const STEP_BYTES: usize = 64;
/// Bytes of a step in a version 1 snapshot (no request id, score or marks).
pub const STEP_BYTES_V1: usize = 48;
/// Marks "no route" / "no upstream" in a step.
pub const NONE: u16 = u16::MAX;
const TRUNCATED: u8 = 0x80;
/// The score byte of a step recorded before scores were kept per step.
const NO_SCORE: u8 = u8::MAX;

/// How a step holds its request id: the kind in the low two bits, for text its length in the next
/// five, and whether it was cut in the top bit.
mod id_form {
    pub const NONE: u8 = 0;
    /// 32 lowercase hex digits, kept as 16 bytes.
    pub const HEX: u8 = 1;
    /// A lowercase hyphenated UUID, kept as 16 bytes.
    pub const UUID: u8 = 2;
    /// Any other id, its first 16 bytes as sent.
    pub const TEXT: u8 = 3;
    pub const CUT: u8 = 0x80;
}

/// Struggle signals of a step (see `crate::experience::struggle`), a bit each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Marks(u8);

impl Marks {
    /// The same method and path again and again within a short time.
    pub const LOOP: Marks = Marks(1);
    /// The same request again soon after it failed or was frustrating.
    pub const RETRY: Marks = Marks(2);
    /// Another 4xx answer to a form (a POST) on a route that kept refusing it.
    pub const FORM_LOOP: Marks = Marks(4);
    /// Every signal and its name (the `signal` label of `usher_struggle_total`).
    pub const ALL_SIGNALS: [(Marks, &'static str); 3] = [
        (Marks::LOOP, "loop"),
        (Marks::RETRY, "retry"),
        (Marks::FORM_LOOP, "form_loop"),
    ];
    const BITS: u8 = 7;

    pub fn empty() -> Marks {
        Marks(0)
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub fn contains(self, other: Marks) -> bool {
        self.0 & other.0 == other.0
    }

    pub fn with(self, other: Marks) -> Marks {
        Marks(self.0 | other.0)
    }

    /// Each mark and its name.
    pub fn each(self) -> impl Iterator<Item = (Marks, &'static str)> {
        Marks::ALL_SIGNALS
            .into_iter()
            .filter(move |(m, _)| self.contains(*m))
    }

    /// The names of the marks set, as the admin API and events write them.
    pub fn names(self) -> impl Iterator<Item = &'static str> {
        self.each().map(|(_, n)| n)
    }
}

/// Packed to alignment 1 on purpose: mimalloc (usher's allocator) pads an over-aligned journey
/// into the next size class, a 1-aligned one fits its class exactly. Fields are only ever read by
/// value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C, packed)]
pub struct Step {
    at_ms: u64,
    latency_us: u32,
    status: u16,
    route: u16,
    upstream: u16,
    method: u8,
    /// The outcome in the low three bits; whether the request itself was frustrating in the
    /// fourth; the struggle marks in the next three; whether it took longer than its route's
    /// target in the top bit. The last two are as judged when it was recorded, against the
    /// target in force then.
    outcome: u8,
    path_len: u8,
    /// The customer's score right after this step, 0 to 100.
    score: u8,
    id_form: u8,
    path: [u8; PATH_BYTES],
    id: [u8; ID_BYTES],
}

const _: () =
    assert!(std::mem::size_of::<Step>() == STEP_BYTES && std::mem::align_of::<Step>() == 1);
const _: () = assert!(Outcome::ALL.len() <= 8);
const OUTCOME: u8 = 0x07;
const FRUSTRATED: u8 = 0x08;
const SLOW: u8 = 0x80;

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

fn hex_digit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

/// 32 lowercase hex digits as 16 bytes.
fn unhex(s: &[u8]) -> Option<[u8; ID_BYTES]> {
    if s.len() != 2 * ID_BYTES {
        return None;
    }
    let mut out = [0u8; ID_BYTES];
    for (o, pair) in out.iter_mut().zip(s.chunks_exact(2)) {
        *o = hex_digit(pair[0])? << 4 | hex_digit(pair[1])?;
    }
    Some(out)
}

/// Where a UUID's hyphens go.
const UUID_HYPHENS: [usize; 4] = [8, 13, 18, 23];

fn pack_id(id: &[u8]) -> (u8, [u8; ID_BYTES]) {
    if id.is_empty() {
        return (id_form::NONE, [0; ID_BYTES]);
    }
    if let Some(b) = unhex(id) {
        return (id_form::HEX, b);
    }
    if id.len() == 36 && UUID_HYPHENS.iter().all(|&i| id[i] == b'-') {
        // On the request path for every client that sends UUIDs: no allocation.
        let mut digits = [0u8; 2 * ID_BYTES];
        for (d, c) in digits.iter_mut().zip(id.iter().filter(|&&c| c != b'-')) {
            *d = *c;
        }
        if let Some(b) = unhex(&digits) {
            return (id_form::UUID, b);
        }
    }
    let mut b = [0u8; ID_BYTES];
    let len = id.len().min(ID_BYTES);
    b[..len].copy_from_slice(&id[..len]);
    let cut = if id.len() > ID_BYTES { id_form::CUT } else { 0 };
    (id_form::TEXT | (len as u8) << 2 | cut, b)
}

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
        request_id: &[u8],
    ) -> Step {
        let mut buf = [0u8; PATH_BYTES];
        let mut len = path.len().min(PATH_BYTES);
        while !path.is_char_boundary(len) {
            len -= 1;
        }
        buf[..len].copy_from_slice(&path.as_bytes()[..len]);
        let truncated = if len < path.len() { TRUNCATED } else { 0 };
        let (id_form, id) = pack_id(request_id);
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
            score: NO_SCORE,
            id_form,
            path: buf,
            id,
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

    /// Whether two steps asked the same thing: method and path. A path cut to [`PATH_BYTES`] is
    /// never the same as another: `/api/v1/catalog/products/101` and `/202` would read as one.
    pub fn same_request(&self, other: &Step) -> bool {
        // Bytes, not `path()`: this runs over the whole journey on every request, and the
        // UTF-8 check `path()` makes was most of its cost.
        let (a, b) = (self.method, other.method);
        let (len, other_len) = (self.path_len, other.path_len);
        let n = (len & !TRUNCATED) as usize;
        a == b
            && a != u8::MAX
            && len == other_len
            && len & TRUNCATED == 0
            && self.path[..n] == other.path[..n]
    }

    /// A HEAD or OPTIONS request: sent by browsers and tools on their own (CORS preflights, link
    /// checks), never a person trying again.
    pub fn is_probe(&self) -> bool {
        let m = self.method;
        m == 4 || m == 5
    }

    pub fn is_post(&self) -> bool {
        let m = self.method;
        m == 1
    }

    pub fn outcome(&self) -> Outcome {
        Outcome::from_u8(self.outcome & OUTCOME)
    }

    /// Failed, or frustrating in itself when it was recorded: what a customer would try again.
    pub fn bad(&self) -> bool {
        self.outcome().is_failure() || self.frustrated()
    }

    /// The request itself was frustrating (failed, or over four times its route's target). A
    /// struggle counted in the score (`struggle.in_score`) does not set this: struggle must not
    /// breed struggle, a loop of fast answers is no failure to retry.
    pub fn frustrated(&self) -> bool {
        self.outcome & FRUSTRATED != 0
    }

    pub fn set_frustrated(&mut self, frustrated: bool) {
        self.set_bit(FRUSTRATED, frustrated);
    }

    /// Took longer than its route's target.
    pub fn slow(&self) -> bool {
        self.outcome & SLOW != 0
    }

    pub fn set_slow(&mut self, slow: bool) {
        self.set_bit(SLOW, slow);
    }

    /// Sets slow and frustrated from the step's latency and outcome against `target`: for a
    /// step kept by a usher that did not record them as they are meant now.
    pub fn judge_again(&mut self, target: std::time::Duration) {
        let latency = std::time::Duration::from_micros(u64::from(self.latency_us()));
        let judgement = super::Judgement::of(latency, target, self.outcome().is_failure());
        self.set_frustrated(judgement == super::Judgement::Frustrated);
        self.set_slow(latency > target);
    }

    fn set_bit(&mut self, bit: u8, on: bool) {
        self.outcome = (self.outcome & !bit) | if on { bit } else { 0 };
    }

    pub fn marks(&self) -> Marks {
        Marks((self.outcome >> 4) & Marks::BITS)
    }

    pub fn set_marks(&mut self, marks: Marks) {
        self.outcome =
            (self.outcome & (OUTCOME | FRUSTRATED | SLOW)) | (marks.0 & Marks::BITS) << 4;
    }

    /// The customer's score right after this step; `None` for a step restored from a snapshot
    /// that did not keep it.
    pub fn score(&self) -> Option<u8> {
        let s = self.score;
        (s != NO_SCORE).then_some(s)
    }

    pub fn set_score(&mut self, score: f64) {
        self.score = score.round().clamp(0.0, 100.0) as u8;
    }

    /// The request's id as it was sent (or generated), and whether it was cut to [`ID_BYTES`].
    pub fn request_id(&self) -> Option<(String, bool)> {
        let (form, id) = (self.id_form, self.id);
        let hex = || {
            let h = crate::request_id::hex32(u128::from_be_bytes(id));
            String::from_utf8_lossy(&h).into_owned()
        };
        match form & 3 {
            id_form::HEX => Some((hex(), false)),
            id_form::UUID => {
                let h = hex();
                Some((
                    format!(
                        "{}-{}-{}-{}-{}",
                        &h[..8],
                        &h[8..12],
                        &h[12..16],
                        &h[16..20],
                        &h[20..]
                    ),
                    false,
                ))
            }
            id_form::TEXT => {
                let len = ((form >> 2) & 0x1f) as usize;
                let text = String::from_utf8_lossy(&id[..len.min(ID_BYTES)]).into_owned();
                Some((text, form & id_form::CUT != 0))
            }
            _ => None,
        }
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
        b[21] = self.score;
        b[22] = self.id_form;
        b[23..23 + PATH_BYTES].copy_from_slice(&self.path);
        b[23 + PATH_BYTES..].copy_from_slice(&self.id);
        b
    }

    /// `None` when the bytes are not a step this version wrote (a path that is not UTF-8 or
    /// longer than its room, an unknown outcome, a request id of no known form).
    pub fn from_bytes(b: &[u8; STEP_BYTES]) -> Option<Step> {
        let mut path = [0u8; PATH_BYTES];
        path.copy_from_slice(&b[23..23 + PATH_BYTES]);
        let mut id = [0u8; ID_BYTES];
        id.copy_from_slice(&b[23 + PATH_BYTES..]);
        let form = b[22];
        let text_len = ((form >> 2) & 0x1f) as usize;
        if form & 3 == id_form::TEXT && text_len > ID_BYTES {
            return None;
        }
        if b[21] > 100 && b[21] != NO_SCORE {
            return None;
        }
        Step::checked(b, b[20], path, b[21], form, id)
    }

    /// A step of a version 1 snapshot: 48 bytes, a 27-byte path, no request id, score or marks.
    pub fn from_v1_bytes(b: &[u8; STEP_BYTES_V1]) -> Option<Step> {
        const V1_PATH: usize = 27;
        // Version 1 kept the outcome alone in its byte.
        if b[19] as usize >= Outcome::ALL.len() {
            return None;
        }
        let mut v1_path = [0u8; V1_PATH];
        v1_path.copy_from_slice(&b[21..]);
        let v1_len = (b[20] & !TRUNCATED) as usize;
        if v1_len > V1_PATH || std::str::from_utf8(&v1_path[..v1_len]).is_err() {
            return None;
        }
        // Cut to this version's room, at a char boundary.
        let text = std::str::from_utf8(&v1_path[..v1_len]).ok()?;
        let mut len = text.len().min(PATH_BYTES);
        while !text.is_char_boundary(len) {
            len -= 1;
        }
        let mut path = [0u8; PATH_BYTES];
        path[..len].copy_from_slice(&text.as_bytes()[..len]);
        let cut = if len < v1_len || b[20] & TRUNCATED != 0 {
            TRUNCATED
        } else {
            0
        };
        Step::checked(
            b,
            len as u8 | cut,
            path,
            NO_SCORE,
            id_form::NONE,
            [0; ID_BYTES],
        )
    }

    /// The fields both versions lay out alike, checked, with the rest given.
    fn checked(
        b: &[u8],
        path_len: u8,
        path: [u8; PATH_BYTES],
        score: u8,
        id_form: u8,
        id: [u8; ID_BYTES],
    ) -> Option<Step> {
        let u16_at = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        let len = (path_len & !TRUNCATED) as usize;
        if len > PATH_BYTES || std::str::from_utf8(&path[..len]).is_err() {
            return None;
        }
        // Every other bit of the byte means something (frustrated, marks, slow).
        if (b[19] & OUTCOME) as usize >= Outcome::ALL.len() {
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
            score,
            id_form,
            path,
            id,
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
    score: NO_SCORE,
    id_form: id_form::NONE,
    path: [0; PATH_BYTES],
    id: [0; ID_BYTES],
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
            b"",
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
        assert_eq!(j.heap_bytes(), 16 * 64);
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
        assert_eq!(j.heap_bytes(), 16 * 64);
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
            b"4bf92f3577b34da6a3ce929d0e0e4736",
        );
        assert_eq!(Step::from_bytes(&s.to_bytes()), Some(s));
        let mut bad = s.to_bytes();
        bad[19] = 0x07;
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
        assert_eq!(s.path(), ("/checkout/payment/confirm", true));
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
            b"",
        );
        assert_eq!(s.method(), "OTHER");
        assert_eq!(s.route(), None);
        assert_eq!(s.upstream(), Some(3));
        assert_eq!(s.outcome(), Outcome::Upstream5xx);
        assert_eq!(
            Step::new(
                0,
                Some(0),
                &Method::DELETE,
                "/",
                1,
                1,
                None,
                Outcome::Ok,
                b""
            )
            .method(),
            "DELETE"
        );
    }

    #[test]
    fn request_ids_of_every_form_come_back_as_sent() {
        let with = |id: &str| step_with_id(id).request_id();
        let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
        assert_eq!(with(trace), Some((trace.to_string(), false)));
        let uuid = "f81d4fae-7dec-11d0-a765-00a0c91e6bf6";
        assert_eq!(with(uuid), Some((uuid.to_string(), false)));
        // Upper case is not what the compact forms hold: kept as text, cut at 16.
        let upper = "F81D4FAE-7DEC-11D0-A765-00A0C91E6BF6";
        assert_eq!(with(upper), Some(("F81D4FAE-7DEC-11".to_string(), true)));
        assert_eq!(with("req-42"), Some(("req-42".to_string(), false)));
        assert_eq!(
            with("0123456789abcdef"),
            Some(("0123456789abcdef".to_string(), false))
        );
        assert_eq!(with(""), None);
        // 32 characters that are not all hex, and a UUID's shape with a non-hex digit.
        let almost = "4bf92f3577b34da6a3ce929d0e0e473g";
        assert_eq!(with(almost), Some((almost[..16].to_string(), true)));
        let not_uuid = "g81d4fae-7dec-11d0-a765-00a0c91e6bf6";
        assert_eq!(with(not_uuid), Some((not_uuid[..16].to_string(), true)));
        for id in [trace, uuid, upper, "req-42", ""] {
            let s = step_with_id(id);
            assert_eq!(Step::from_bytes(&s.to_bytes()), Some(s), "{id}");
        }
    }

    fn step_with_id(id: &str) -> Step {
        Step::new(
            0,
            None,
            &Method::GET,
            "/",
            200,
            1,
            None,
            Outcome::Ok,
            id.as_bytes(),
        )
    }

    #[test]
    fn score_and_marks_ride_with_the_step_and_leave_its_outcome_alone() {
        let mut s = step(5, "/cart");
        assert_eq!(s.score(), None);
        s.set_score(72.6);
        s.set_marks(Marks::LOOP.with(Marks::FORM_LOOP));
        assert_eq!(s.score(), Some(73));
        assert_eq!(s.outcome(), Outcome::Ok);
        assert_eq!(
            s.marks().names().collect::<Vec<_>>(),
            vec!["loop", "form_loop"]
        );
        assert_eq!(Step::from_bytes(&s.to_bytes()), Some(s));
        // Slow and frustrated share the byte and leave the marks alone, through bytes too.
        s.set_slow(true);
        s.set_frustrated(true);
        assert_eq!(s.marks(), Marks::LOOP.with(Marks::FORM_LOOP));
        let back = Step::from_bytes(&s.to_bytes()).expect("a slow step reads back");
        assert!(back.slow() && back.frustrated() && back.bad());
        assert_eq!((back.marks(), back.outcome()), (s.marks(), Outcome::Ok));
        s.set_marks(Marks::empty());
        assert!(s.slow() && s.frustrated(), "marks leave them alone");
        assert!(s.marks().is_empty());
        s.set_score(-3.0);
        assert_eq!(s.score(), Some(0));
        let mut bad = s.to_bytes();
        bad[21] = 101;
        assert_eq!(Step::from_bytes(&bad), None, "a score above 100");
    }

    #[test]
    fn a_version_1_step_is_read_with_its_path_cut_to_the_new_room() {
        // The 48-byte layout of snapshot format 1: 21 bytes of fields, then a 27-byte path.
        let mut b = [0u8; STEP_BYTES_V1];
        b[0..8].copy_from_slice(&1_700_000_000_000u64.to_le_bytes());
        b[8..12].copy_from_slice(&2500u32.to_le_bytes());
        b[12..14].copy_from_slice(&503u16.to_le_bytes());
        b[14..16].copy_from_slice(&3u16.to_le_bytes());
        b[16..18].copy_from_slice(&NONE.to_le_bytes());
        b[18] = 1;
        b[19] = Outcome::Upstream5xx as u8;
        let path = b"/checkout/payment/confirm-a";
        b[20] = path.len() as u8 | TRUNCATED;
        b[21..].copy_from_slice(path);
        let s = Step::from_v1_bytes(&b).unwrap();
        assert_eq!(s.path(), ("/checkout/payment/confirm", true));
        assert_eq!(
            (s.status(), s.latency_us(), s.method()),
            (503, 2500, "POST")
        );
        assert_eq!((s.route(), s.upstream()), (Some(3), None));
        assert_eq!(
            (s.score(), s.request_id(), s.marks()),
            (None, None, Marks::empty())
        );
        b[19] = 9;
        assert_eq!(Step::from_v1_bytes(&b), None);
    }
}
