//! Downstream connections, below HTTP: how many a listener holds, how long a request head may take
//! to arrive, how long a kept-alive connection may sit idle.
//!
//! Pingora bounds none of these for HTTP/1.1: keep-alive after the first request is infinite, and a
//! request head only has a per-read timeout, so one byte a minute holds a connection for ever and a
//! client with twenty thousand idle connections takes every descriptor the process has (its upstream
//! connects then fail with EMFILE, which used to be blamed on the upstream). So every connection a
//! listener accepts is admitted under a cap ([`limit`]) and wrapped in a [`GuardedStream`] that keeps
//! the deadlines; the HTTP layer above only says when a request starts and ends
//! ([`request_started`], [`request_finished`]).
//!
//! On TLS listeners the handshake is done here too, after admission and within the head timeout
//! ([`Guarded::with_tls`]).
//!
//! What this module deliberately isn't: a rate limiter or a per-client quota (a cap shared by all
//! is what keeps descriptors for upstreams and the admin API; who may use it is policy).

mod app;
mod h2_start;
pub mod limit;
mod stream;

pub use app::Guarded;
pub use limit::{fd_budget, Connections, Slot, StreamSlot};
pub use stream::{request_finished, request_started, GuardedStream};
