//! What one request was like: the facts usher records for every request, and their classification.
//!
//! Like linkerd2-proxy's `FailureHint`, failures are classified explicitly rather than folded into
//! "status >= 500": a refused connection, a timeout, an upstream 5xx and a client that hung up are
//! different facts with different remedies. Mapping Pingora's errors onto these classes is the
//! proxy's job; this module is plain data.

use crate::identity::Identity;
use crate::ids::{RouteId, UpstreamId};
use http::Method;
use std::time::Duration;

/// How a request ended, from the customer's point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Outcome {
    /// A response below 400.
    Ok = 0,
    /// A 4xx: the request was answered as asked; judged by latency alone.
    ClientError = 1,
    /// The upstream answered 5xx, or broke the response off.
    Upstream5xx = 2,
    /// No connection to an upstream could be made (refused, unreachable, none available).
    ConnectFailure = 3,
    /// Connecting, sending or waiting for the upstream took longer than the pool allows.
    Timeout = 4,
    /// The client went away before the response was complete.
    ClientGone = 5,
    /// usher itself ran out of something (descriptors, memory, local ports): the customer was
    /// failed, but no upstream is to blame.
    LocalResource = 6,
}

impl Outcome {
    pub const ALL: [Outcome; 7] = [
        Outcome::Ok,
        Outcome::ClientError,
        Outcome::Upstream5xx,
        Outcome::ConnectFailure,
        Outcome::Timeout,
        Outcome::ClientGone,
        Outcome::LocalResource,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::ClientError => "client_error",
            Outcome::Upstream5xx => "upstream_5xx",
            Outcome::ConnectFailure => "connect_failure",
            Outcome::Timeout => "timeout",
            Outcome::ClientGone => "client_gone",
            Outcome::LocalResource => "local_resource",
        }
    }

    pub fn from_u8(v: u8) -> Outcome {
        Outcome::ALL.get(v as usize).copied().unwrap_or(Outcome::Ok)
    }

    /// A failure on the serving side: what makes a customer frustrated whatever the latency. All but
    /// [`Outcome::LocalResource`] also count against the upstream.
    pub fn is_failure(self) -> bool {
        matches!(
            self,
            Outcome::Upstream5xx
                | Outcome::ConnectFailure
                | Outcome::Timeout
                | Outcome::LocalResource
        )
    }

    /// The outcome of a response that was delivered with this status.
    pub fn of_status(status: u16) -> Outcome {
        match status {
            500..=599 => Outcome::Upstream5xx,
            400..=499 => Outcome::ClientError,
            _ => Outcome::Ok,
        }
    }
}

/// Everything measured about one finished request.
#[derive(Debug, Clone)]
pub struct Measurement<'a> {
    pub identity: &'a Identity,
    pub route: Option<RouteId>,
    pub upstream: Option<UpstreamId>,
    pub method: &'a Method,
    pub path: &'a str,
    /// The query string, when the route keeps it in journeys.
    pub query: Option<&'a str>,
    /// See `crate::request_id`; empty when the request failed before its head was read.
    pub request_id: &'a [u8],
    /// The status sent to the client; 0 when nothing was sent.
    pub status: u16,
    pub outcome: Outcome,
    /// From the request head being read to the response finished (or the failure).
    pub total: Duration,
    /// Time to obtain an upstream connection, when one was attempted.
    pub connect: Option<Duration>,
    /// From the upstream connection being ready to the upstream response head arriving.
    pub ttfb: Option<Duration>,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Wall clock, milliseconds since the Unix epoch: the time base of customer state.
    pub now_ms: u64,
}

impl Measurement<'_> {
    /// Time spent on the upstream: connect plus time to first byte.
    pub fn upstream_time(&self) -> Option<Duration> {
        match (self.connect, self.ttfb) {
            (None, None) => None,
            (c, t) => Some(c.unwrap_or_default() + t.unwrap_or_default()),
        }
    }
}
