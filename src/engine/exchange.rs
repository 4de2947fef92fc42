//! Per-request state, and the small types the engine's callers exchange with it.

use super::Generation;
use crate::identity::Identity;
use crate::ids::{RouteId, UpstreamId};
use crate::measure::Outcome;
use crate::protection::Protection;
use crate::upstream::Pick;
use http::{HeaderMap, Method, Uri};
use std::sync::Arc;
use std::time::Instant;

/// Upstreams already tried by one request; a request tries at most a handful, so no allocation.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Tried {
    ids: [UpstreamId; 4],
    len: u8,
}

impl Tried {
    pub(crate) fn push(&mut self, u: UpstreamId) {
        if (self.len as usize) < self.ids.len() {
            self.ids[self.len as usize] = u;
            self.len += 1;
        }
    }

    pub(crate) fn pop(&mut self) {
        self.len = self.len.saturating_sub(1);
    }

    pub(crate) fn as_slice(&self) -> &[UpstreamId] {
        &self.ids[..self.len as usize]
    }
}

/// One try at one upstream.
#[derive(Debug)]
pub(crate) struct Attempt {
    pub(crate) upstream: Option<UpstreamId>,
    /// usher's own choice: holds the upstream's in-flight count (and probe slot) until dropped.
    pub(crate) _pick: Option<Pick>,
    pub(crate) started: Instant,
    /// What was fed to passive health: `Some(failed)`, or `None` when nothing yet.
    pub(crate) observed: Option<bool>,
}

/// Per-request state. Create it when the request head has been read; keep it in the proxy's context.
/// From admission on it pins the generation the request started on: routes, upstreams and
/// thresholds stay that generation's until the request ends, whatever a reload does meanwhile.
pub struct Exchange {
    pub(crate) gen: Option<Arc<Generation>>,
    /// Counted in flight on its generation until it finishes (or is dropped).
    pub(crate) admitted: bool,
    pub(crate) started: Instant,
    /// Wall clock at admission, Unix milliseconds; later wall times are derived from `started`
    /// rather than read again.
    pub(crate) wall_ms: u64,
    pub(crate) identity: Option<Identity>,
    pub(crate) route: Option<RouteId>,
    pub(crate) protection: Option<Protection>,
    /// A protected request steered clear of this upstream, out of service at the time.
    pub(crate) rerouted_from: Option<UpstreamId>,
    /// The request's method is idempotent: it may be retried after reaching an upstream, and used
    /// as a sample.
    pub(crate) idempotent: bool,
    /// The request announces no body, so a retry never depends on what Pingora kept of one.
    pub(crate) bodiless: bool,
    /// The current try was given this shortened read timeout (see [`crate::engine::Usher::try_timeout`]).
    pub(crate) try_timeout: Option<std::time::Duration>,
    /// The customer's score when the request arrived, if tracked and asked for.
    pub(crate) score: Option<f64>,
    /// The customer's requests before this one, when the score was asked for.
    pub(crate) known_requests: u32,
    pub(crate) attempt: Option<Attempt>,
    pub(crate) tried: Tried,
    pub(crate) upstream: Option<UpstreamId>,
    /// The pool the current attempt's upstream was chosen from, when usher chose it.
    pub(crate) pool: Option<crate::ids::PoolId>,
    pub(crate) connected: Option<Instant>,
    pub(crate) response_head: Option<Instant>,
    pub(crate) upstream_status: Option<u16>,
    /// Retries on another upstream so far (at most one).
    pub(crate) retries: u8,
    /// Retries of a stale pooled connection so far (at most one; not the upstream's fault).
    pub(crate) stale_retries: u8,
    /// A retry was granted on the upstream's status; the proxy's error hook must carry it out.
    pub(crate) status_retry: bool,
    pub(crate) recorded: bool,
    /// The request asks for a protocol upgrade (WebSocket): judged by the time to its 101, its
    /// connection lives as long as the two ends keep it.
    pub(crate) upgrade: bool,
    /// See `crate::request_id`; empty until the head is read.
    pub(crate) request_id: http::HeaderValue,
    /// How it ended, once recorded: what the access log says of it.
    pub(crate) finished: Option<Finished>,
    /// An HTTP/2 stream's claim on an upstream connection's descriptor (see
    /// `crate::transport::limit`), held until the exchange is dropped.
    pub(crate) stream: Option<crate::transport::StreamSlot>,
    /// Refused for want of descriptors: usher's own shortage, not the upstream's.
    pub(crate) busy: bool,
    /// The query string, kept for the journey when the route says `keep_query`.
    pub(crate) kept_query: Option<compact_str::CompactString>,
}

/// A WebSocket handshake (RFC 6455 4.1): an HTTP/1.1 GET with `Connection: upgrade`,
/// `Upgrade: websocket` and a `Sec-WebSocket-Key`. Only that loses the upstream read timeout: a
/// bare `Upgrade` header on any request would let a client lift it from any route.
pub(crate) fn is_websocket_upgrade(req: &RequestHead<'_>) -> bool {
    let has_token = |name: http::header::HeaderName, token: &str| {
        req.headers.get_all(name).iter().any(|v| {
            v.to_str()
                .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    req.version == http::Version::HTTP_11
        && req.method == http::Method::GET
        && has_token(http::header::CONNECTION, "upgrade")
        && has_token(http::header::UPGRADE, "websocket")
        && req.headers.contains_key(http::header::SEC_WEBSOCKET_KEY)
}

/// The facts of a recorded request that the access log needs beyond its head.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Finished {
    pub(crate) outcome: crate::measure::Outcome,
    pub(crate) total: std::time::Duration,
    pub(crate) upstream_time: Option<std::time::Duration>,
    pub(crate) status: u16,
    pub(crate) bytes_in: u64,
    pub(crate) bytes_out: u64,
    pub(crate) now_ms: u64,
    pub(crate) score: Option<f64>,
    pub(crate) requests: u32,
}

impl Default for Exchange {
    fn default() -> Self {
        Self::new()
    }
}

impl Exchange {
    pub fn new() -> Self {
        Self::starting_at(Instant::now())
    }

    pub fn starting_at(started: Instant) -> Self {
        Exchange {
            gen: None,
            admitted: false,
            started,
            wall_ms: 0,
            identity: None,
            route: None,
            protection: None,
            rerouted_from: None,
            idempotent: false,
            bodiless: false,
            try_timeout: None,
            score: None,
            known_requests: 0,
            attempt: None,
            tried: Tried::default(),
            upstream: None,
            pool: None,
            connected: None,
            response_head: None,
            upstream_status: None,
            retries: 0,
            stale_retries: 0,
            status_retry: false,
            recorded: false,
            upgrade: false,
            request_id: http::HeaderValue::from_static(""),
            finished: None,
            stream: None,
            busy: false,
            kept_query: None,
        }
    }

    /// Whether its answer is a stream or an upgraded connection (see [`Exchange::upgrade`]):
    /// judged by the time to the answer's head, with no read timeout cutting its pauses short
    /// for a protected try.
    pub fn streams(&self) -> bool {
        self.upgrade
            || match (&self.gen, self.route) {
                (Some(g), Some(r)) => g.config.routes.get(r as usize).is_some_and(|r| r.streaming),
                _ => false,
            }
    }

    /// Whether the request asks for a protocol upgrade.
    pub fn upgrades(&self) -> bool {
        self.upgrade
    }

    /// The request's id (see `crate::request_id`), once its head was read.
    pub fn request_id(&self) -> &str {
        self.request_id.to_str().unwrap_or("")
    }

    /// The same, as the header value usher sends; `None` before the head was read.
    pub fn request_id_header(&self) -> Option<&http::HeaderValue> {
        (!self.request_id.is_empty()).then_some(&self.request_id)
    }

    /// The generation the request started on, once admitted.
    pub fn generation(&self) -> Option<&Arc<Generation>> {
        self.gen.as_ref()
    }

    pub fn identity(&self) -> Option<&Identity> {
        self.identity.as_ref()
    }

    pub fn route(&self) -> Option<RouteId> {
        self.route
    }

    pub fn upstream(&self) -> Option<UpstreamId> {
        self.upstream
    }

    /// Where the current attempt goes: the upstream's address and the settings of the pool usher
    /// chose it from.
    pub fn peer(&self) -> Option<(std::net::SocketAddr, &crate::config::PoolConfig)> {
        let g = self.gen.as_deref()?;
        let addr = g.upstreams().node(self.upstream?).addr();
        Some((addr, g.config.pools.get(self.pool? as usize)?))
    }

    pub fn protection(&self) -> Option<Protection> {
        self.protection
    }

    pub fn score(&self) -> Option<f64> {
        self.score
    }

    pub fn started(&self) -> Instant {
        self.started
    }

    pub fn retries(&self) -> u8 {
        self.retries
    }

    /// The wall clock (Unix milliseconds) at `now`, from the one read at admission.
    pub fn wall_at(&self, now: Instant) -> u64 {
        if self.wall_ms == 0 {
            return crate::time::wall_ms();
        }
        self.wall_ms + now.saturating_duration_since(self.started).as_millis() as u64
    }
}

/// What to do with a request once its head has been read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Proxy it on this route.
    Route(RouteId),
    /// No route matches: answer 404.
    NoRoute,
    /// Request line and headers exceed `server.max_header_bytes`: answer 431, forward nothing.
    HeadTooLarge,
    /// An HTTP/1.1 request without a Host header: answer 400.
    NoHost,
    /// The request has been through this usher before (or through too many): answer 508.
    Loop,
    /// An HTTP/2 stream the open-files limit has no upstream descriptor left for: answer 503.
    Busy,
}

impl Admission {
    /// The status to answer with instead of proxying, if any.
    pub fn refusal(self) -> Option<(u16, &'static str)> {
        match self {
            Admission::Route(_) => None,
            Admission::NoRoute => Some((404, "usher: no route matches this request\n")),
            Admission::HeadTooLarge => Some((431, "usher: request header fields too large\n")),
            Admission::NoHost => Some((400, "usher: an HTTP/1.1 request needs a Host header\n")),
            Admission::Loop => Some((508, "usher: this request has been here before (a loop)\n")),
            Admission::Busy => Some((503, "usher: too many requests in flight; try again\n")),
        }
    }
}

/// The request as usher sees it on admission.
#[derive(Debug, Clone, Copy)]
pub struct RequestHead<'a> {
    pub version: http::Version,
    pub method: &'a Method,
    pub uri: &'a Uri,
    pub headers: &'a HeaderMap,
    pub peer: Option<std::net::IpAddr>,
}

/// Bytes of the request head as sent on the wire (request line and header lines).
pub(crate) fn head_size(h: &RequestHead<'_>) -> usize {
    let uri = h.uri.path_and_query().map_or(1, |pq| pq.as_str().len())
        + h.uri.authority().map_or(0, |a| a.as_str().len());
    let line = h.method.as_str().len() + uri + " HTTP/1.1\r\n".len() + 1;
    h.headers
        .iter()
        .fold(line, |n, (k, v)| n + k.as_str().len() + v.len() + 4)
}

/// Why a failed attempt will or will not be retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryVerdict {
    Retry,
    /// Retries are off, or this request already had its retry.
    NotAllowed,
    /// The request reached an upstream and its method is not idempotent.
    NotIdempotent,
    /// No other upstream is left to try.
    NoAlternative,
    /// The pool's retry budget is spent.
    BudgetExhausted,
}

/// What the caller supplies when a request ends.
#[derive(Debug, Clone)]
pub struct Finish<'a> {
    pub method: &'a Method,
    pub path: &'a str,
    /// Status sent to the client, 0 when none was.
    pub status: u16,
    /// The failure that ended the request, if it did not end with a delivered response.
    pub failure: Option<Outcome>,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub now: Instant,
    pub now_ms: u64,
}

impl Drop for Exchange {
    fn drop(&mut self) {
        if let (true, Some(g)) = (self.admitted, &self.gen) {
            g.in_flight.leave();
        }
    }
}

impl std::fmt::Debug for Exchange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exchange")
            .field("generation", &self.gen.as_ref().map(|g| g.number))
            .field("identity", &self.identity)
            .field("route", &self.route)
            .field("protection", &self.protection)
            .field("upstream", &self.upstream)
            .field("retries", &self.retries)
            .finish()
    }
}
