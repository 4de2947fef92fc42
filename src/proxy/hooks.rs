//! The plugin API: usher's work at each Pingora phase, callable from any `ProxyHttp`.
//!
//! The embedding proxy keeps an [`Exchange`] in its own CTX and calls, in order:
//! [`UsherHooks::on_request`] (request_filter), then either [`UsherHooks::upstream_peer`] (usher
//! chooses: peak-EWMA power of two choices, protected routing, passive health) or
//! [`UsherHooks::attribute_upstream`] (the embedder chooses, optionally filtering its balancer with
//! [`UsherHooks::accepts`], and usher is told), [`UsherHooks::on_upstream_request`]
//! (upstream_request_filter), [`UsherHooks::on_connected`] (connected_to_upstream),
//! [`UsherHooks::on_upstream_response`] (upstream_response_filter), [`UsherHooks::fail_to_connect`]
//! and [`UsherHooks::error_while_proxy`] (the hooks of the same names: retries) and
//! [`UsherHooks::on_logging`] (logging). Only `on_request` and `on_logging` are required: what is
//! skipped is simply not measured or not done.

use super::errors::outcome_of;
use crate::engine::{
    wall_ms, Admission, Exchange, Finish, RequestFacts, RequestHead, RetryVerdict, Usher,
};
use crate::experience::Recorded;
use crate::measure::Outcome;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::Session;
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorSource, ErrorType, Result, RetryType};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use crate::identity::headers;

#[derive(Clone)]
pub struct UsherHooks {
    usher: Arc<Usher>,
    /// This usher alone as the hop header's value, made once.
    hop: http::HeaderValue,
    tls: Arc<super::upstream_tls::PeerTlsCache>,
}

impl UsherHooks {
    pub fn new(usher: Arc<Usher>) -> Self {
        let hop = http::HeaderValue::from_str(&usher.state().instance)
            .expect("16 hex digits are a header value");
        UsherHooks {
            usher,
            hop,
            tls: Default::default(),
        }
    }

    pub fn usher(&self) -> &Arc<Usher> {
        &self.usher
    }

    /// request_filter: admits the request, identifies the customer, finds the route and decides on
    /// protection. On [`Admission::NoRoute`] usher's own proxy answers 404, an embedder may route the
    /// request its own way; [`Admission::HeadTooLarge`] should be refused (431) by everyone.
    pub fn on_request(&self, session: &Session, ex: &mut Exchange) -> Admission {
        let req = session.req_header();
        let head = RequestHead {
            version: req.version,
            method: &req.method,
            uri: &req.uri,
            headers: &req.headers,
            peer: session
                .client_addr()
                .and_then(|a| a.as_inet())
                .map(|a| a.ip()),
        };
        self.usher.begin(ex, &head, wall_ms())
    }

    /// upstream_peer: usher's choice of upstream for the request's route, another one on retry. A
    /// protected first try may get a shorter read timeout ([`Usher::try_timeout`]); an embedder that
    /// builds its own peers can ask for the same.
    pub fn upstream_peer(&self, ex: &mut Exchange) -> Result<Box<HttpPeer>> {
        if ex.route().is_none() {
            return Err(Error::explain(ErrorType::HTTPStatus(404), "no route"));
        }
        let now = Instant::now();
        if self
            .usher
            .choose_upstream(ex, now, &mut rand::thread_rng())
            .is_none()
        {
            return Err(Error::create(
                ErrorType::ConnectNoRoute,
                ErrorSource::Upstream,
                Some("no upstream available in pool".into()),
                None,
            ));
        }
        let try_timeout = self.usher.try_timeout(ex, now);
        let (addr, pool) = ex
            .peer()
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "upstream not in pool"))?;
        let mut peer = Box::new(HttpPeer::new(addr, false, String::new()));
        if let (Some(g), Some(p)) = (ex.generation(), ex.pool) {
            self.tls.apply(g, p as usize, &mut peer);
        }
        peer.options.connection_timeout = Some(pool.connect_timeout);
        // An upgraded connection (WebSocket) may sit quiet for as long as its ends like: no read
        // timeout once it is up (the connect timeout still holds, and the idle upstream pool
        // never sees it).
        peer.options.read_timeout = if ex.upgrades() {
            None
        } else {
            Some(try_timeout.unwrap_or(pool.read_timeout))
        };
        peer.options.write_timeout = Some(pool.write_timeout);
        peer.options.idle_timeout = Some(pool.idle_timeout);
        Ok(peer)
    }

    /// For embedders that choose upstreams themselves: attributes the attempt to `addr`, so it is
    /// measured against that upstream and feeds its passive health.
    pub fn attribute_upstream(&self, ex: &mut Exchange, addr: SocketAddr) {
        self.usher.attribute_upstream(ex, addr, Instant::now());
    }

    /// For an embedder's balancer (`LoadBalancer::select_with`): false for an upstream that passive
    /// health has ejected, that fails its checks, or that this request already tried.
    pub fn accepts(&self, ex: &Exchange, addr: SocketAddr) -> bool {
        self.usher.accepts(ex, addr)
    }

    /// upstream_request_filter: removes every header that reads as one of usher's own
    /// (`x-usher-*`) or as a claim usher believes only from some peers (tier and trusted id
    /// headers), lookalike spellings (`x_customer_tier`) included, unless this peer was trusted to
    /// send it; adds the experience header when configured.
    pub fn on_upstream_request(&self, req: &mut RequestHeader, ex: &Exchange) -> Result<()> {
        let (guarded, trusted) = match (ex.generation(), ex.identity()) {
            (Some(g), Some(i)) => (g.identity_resolver().guarded(), i.trusted),
            _ => (&[][..], 0),
        };
        // The ushers this request came through, then this one: a loop comes back to it (508).
        let hop = {
            let mut before = headers::hops(&req.headers).peekable();
            if before.peek().is_none() {
                self.hop.clone()
            } else {
                let mut v: Vec<&str> = before.collect();
                v.push(&self.usher.state().instance);
                http::HeaderValue::from_str(&v.join(", ")).unwrap_or_else(|_| self.hop.clone())
            }
        };
        for name in headers::to_strip(&req.headers, guarded, trusted) {
            req.remove_header(&name);
        }
        req.insert_header(headers::HOP_HEADER, hop)?;
        if let (Some(g), Some(id)) = (ex.generation(), ex.request_id_header()) {
            req.insert_header(g.request_id_name().clone(), id.clone())?;
        }
        if let Some((name, value)) = self.usher.experience_header(ex) {
            req.insert_header(name.clone(), value)?;
        }
        Ok(())
    }

    /// connected_to_upstream: marks the end of connection setup (or reuse).
    pub fn on_connected(&self, ex: &mut Exchange) {
        self.usher.connected(ex, Instant::now());
    }

    /// upstream_response_filter: marks the upstream's first byte and feeds its health. For an
    /// idempotent request answered 502, 503 or 504, returns an error when a retry on another
    /// upstream is granted: the proxy must return it so that Pingora retries (nothing has reached
    /// the client yet). Otherwise the upstream's answer goes to the client as it is.
    pub fn on_upstream_response(
        &self,
        session: &Session,
        resp: &ResponseHeader,
        ex: &mut Exchange,
    ) -> Result<()> {
        let status = resp.status.as_u16();
        let now = Instant::now();
        self.usher.response_head(ex, status, now);
        // Pingora keeps at most 64 KiB of request body for a replay: a longer body cannot be sent
        // again, and the upstream's own answer is better than a retry with half a body.
        if matches!(status, 502..=504)
            && !session.as_ref().retry_buffer_truncated()
            && self.usher.retry(ex, true, now) == RetryVerdict::Retry
        {
            ex.status_retry = true;
            let mut e = Error::explain(
                ErrorType::HTTPStatus(status),
                "retrying on another upstream",
            );
            e.set_retry(true);
            return Err(e.into_up());
        }
        Ok(())
    }

    /// fail_to_connect: the request never reached the upstream, so any method may be retried on
    /// another one, within the budget; unless usher itself is out of descriptors or memory, which no
    /// other upstream would change and which is not held against this one.
    pub fn fail_to_connect(&self, mut e: Box<Error>, ex: &mut Exchange) -> Box<Error> {
        let now = Instant::now();
        let outcome = outcome_of(&e);
        self.usher.attempt_failed(ex, outcome, now);
        // Out of descriptors here, out of them for the next upstream too: a retry only spends budget.
        let retry = outcome != Outcome::LocalResource
            && self.usher.retry(ex, false, now) == RetryVerdict::Retry;
        e.set_retry(retry);
        e
    }

    /// error_while_proxy: the attempt failed after connecting. A stale pooled connection is retried
    /// as Pingora would; an upstream that failed is retried on another one only for idempotent
    /// requests, within the budget, and only while nothing has been sent to the client.
    pub fn error_while_proxy(
        &self,
        session: &mut Session,
        mut e: Box<Error>,
        client_reused: bool,
        ex: &mut Exchange,
    ) -> Box<Error> {
        if std::mem::take(&mut ex.status_retry) {
            // on_upstream_response granted this retry already.
            e.set_retry(true);
            return e;
        }
        let replayable =
            !session.as_ref().retry_buffer_truncated() && session.response_written().is_none();
        if client_reused && matches!(e.retry, RetryType::ReusedOnly) {
            let retry = replayable && self.usher.retry_stale_connection(ex);
            e.set_retry(retry);
            return e;
        }
        // Only the upstream's failures are its fault, and only they are worth another upstream:
        // a malformed request or a client that left would fail the same way anywhere.
        if e.esource() != &ErrorSource::Upstream {
            e.set_retry(false);
            return e;
        }
        // An upstream that times out while the client has not finished sending the body was
        // waiting for the client: 408, and nothing held against the upstream (else any client that
        // trickles a body could eject healthy upstreams).
        if e.etype() == &ErrorType::ReadTimedout && !session.as_mut().is_body_done() {
            let mut slow = Error::because(
                ErrorType::HTTPStatus(408),
                "the client's request body stalled; the upstream was waiting for it",
                e,
            );
            slow.set_retry(false);
            return slow;
        }
        let now = Instant::now();
        if ex.try_timeout.is_some()
            && ex.response_head.is_none()
            && e.etype() == &ErrorType::ReadTimedout
        {
            self.usher.try_timed_out(ex, now);
        } else {
            self.usher.attempt_failed(ex, outcome_of(&e), now);
        }
        let retry = replayable && self.usher.retry(ex, true, now) == RetryVerdict::Retry;
        e.set_retry(retry);
        e
    }

    /// logging: records the finished request. Returns what it did to the customer's score.
    pub fn on_logging(
        &self,
        session: &Session,
        e: Option<&Error>,
        ex: &mut Exchange,
    ) -> Option<Recorded> {
        let req = session.req_header();
        let now = Instant::now();
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        let failure = e.map(outcome_of).filter(|o| *o != Outcome::Ok);
        let rec = self.usher.finish(
            ex,
            &Finish {
                method: &req.method,
                path: req.uri.path(),
                status,
                failure,
                bytes_in: session.body_bytes_read() as u64,
                bytes_out: session.body_bytes_sent() as u64,
                now,
                now_ms: ex.wall_at(now),
            },
        );
        let host = req
            .uri
            .authority()
            .map(|a| a.as_str())
            .or_else(|| req.headers.get(http::header::HOST)?.to_str().ok())
            .unwrap_or("");
        self.usher.log_access(
            ex,
            &RequestFacts {
                client: session
                    .client_addr()
                    .and_then(|a| a.as_inet())
                    .map(|a| a.ip()),
                method: req.method.as_str(),
                host,
                path: req.uri.path(),
                query: req.uri.query(),
                protocol: protocol_of(session),
            },
        );
        rec
    }

    /// Adds the request id to a response head usher sends the client.
    pub fn on_response(&self, resp: &mut ResponseHeader, ex: &Exchange) -> Result<()> {
        if let (Some(g), Some(id)) = (ex.generation(), ex.request_id_header()) {
            resp.insert_header(g.request_id_name().clone(), id.clone())?;
        }
        Ok(())
    }
}

/// The protocol as the access log names it.
fn protocol_of(session: &Session) -> &'static str {
    if session.is_http2() {
        "HTTP/2"
    } else {
        match session.req_header().version {
            http::Version::HTTP_10 => "HTTP/1.0",
            http::Version::HTTP_09 => "HTTP/0.9",
            _ => "HTTP/1.1",
        }
    }
}
