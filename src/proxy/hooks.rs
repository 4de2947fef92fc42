//! The plugin API: usher's work at each Pingora phase, callable from any `ProxyHttp`.
//!
//! The embedding proxy keeps an [`Exchange`] in its own CTX and calls, in order:
//! [`UsherHooks::on_request`] (request_filter), then either [`UsherHooks::upstream_peer`] (usher picks
//! the upstream) or [`UsherHooks::attribute_upstream`] (the embedder picks, usher is told),
//! [`UsherHooks::on_upstream_request`] (upstream_request_filter), [`UsherHooks::on_connected`]
//! (connected_to_upstream), [`UsherHooks::on_upstream_response`] (upstream_response_filter) and
//! [`UsherHooks::on_logging`] (logging). Every hook is optional but `on_request` and `on_logging`:
//! what is skipped is simply not measured.

use super::errors::outcome_of;
use crate::config::{PoolId, UpstreamId};
use crate::engine::{wall_ms, Admission, Exchange, Finish, Usher};
use crate::experience::Recorded;
use crate::measure::Outcome;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::Session;
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorSource, ErrorType, Result};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

/// Prefix of headers that only usher may set toward the upstream.
pub const RESERVED_PREFIX: &str = "x-usher-";

#[derive(Clone)]
pub struct UsherHooks {
    usher: Arc<Usher>,
    /// Peer templates per pool, with that pool's timeouts, cloned per request.
    peers: Arc<Vec<Vec<(UpstreamId, HttpPeer)>>>,
}

impl UsherHooks {
    pub fn new(usher: Arc<Usher>) -> Self {
        let cfg = usher.config();
        let peers = cfg
            .pools
            .iter()
            .map(|pool| {
                pool.upstreams
                    .iter()
                    .map(|&u| {
                        let mut peer =
                            HttpPeer::new(cfg.upstreams[u as usize], false, String::new());
                        peer.options.connection_timeout = Some(pool.connect_timeout);
                        peer.options.read_timeout = Some(pool.read_timeout);
                        peer.options.write_timeout = Some(pool.write_timeout);
                        peer.options.idle_timeout = Some(pool.idle_timeout);
                        (u, peer)
                    })
                    .collect()
            })
            .collect();
        UsherHooks {
            usher,
            peers: Arc::new(peers),
        }
    }

    pub fn usher(&self) -> &Arc<Usher> {
        &self.usher
    }

    /// request_filter: admits the request, identifies the customer and finds the route. On
    /// [`Admission::NoRoute`] usher's own proxy answers 404, an embedder may route the request its
    /// own way; [`Admission::HeadTooLarge`] should be refused (431) by everyone.
    pub fn on_request(&self, session: &Session, ex: &mut Exchange) -> Admission {
        let req = session.req_header();
        let peer = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        self.usher
            .begin(ex, &req.method, &req.uri, &req.headers, peer)
    }

    /// upstream_peer: usher's choice of upstream for the request's route, a different one on retry.
    pub fn upstream_peer(&self, ex: &mut Exchange) -> Result<Box<HttpPeer>> {
        let route = ex
            .route()
            .and_then(|r| self.usher.route_config(r))
            .ok_or_else(|| Error::explain(ErrorType::HTTPStatus(404), "no route"))?;
        let pool: PoolId = route.pool;
        let Some((up, _)) = self.usher.choose_upstream(ex, Instant::now()) else {
            return Err(Error::create(
                ErrorType::ConnectNoRoute,
                ErrorSource::Upstream,
                Some("no upstream available in pool".into()),
                None,
            ));
        };
        self.peers
            .get(pool as usize)
            .and_then(|ps| ps.iter().find(|(u, _)| *u == up))
            .map(|(_, p)| Box::new(p.clone()))
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "upstream not in pool"))
    }

    /// For embedders that choose upstreams themselves: attributes the request to `addr`.
    pub fn attribute_upstream(&self, ex: &mut Exchange, addr: SocketAddr) {
        self.usher.attribute_upstream(ex, addr, Instant::now());
    }

    /// upstream_request_filter: removes `x-usher-*` headers the client sent, and tier claims the
    /// client was not trusted to make.
    pub fn on_upstream_request(&self, req: &mut RequestHeader, ex: &Exchange) {
        let reserved = |n: &str| {
            n.len() > RESERVED_PREFIX.len()
                && n[..RESERVED_PREFIX.len()].eq_ignore_ascii_case(RESERVED_PREFIX)
        };
        if req.headers.keys().any(|k| reserved(k.as_str())) {
            let names: Vec<_> = req
                .headers
                .keys()
                .filter(|k| reserved(k.as_str()))
                .cloned()
                .collect();
            for n in names {
                req.remove_header(&n);
            }
        }
        if ex.identity().is_some_and(|i| i.untrusted_tier_header) {
            for n in self.usher.identity_resolver().tier_headers() {
                req.remove_header(n);
            }
        }
    }

    /// connected_to_upstream: marks the end of connection setup (or reuse).
    pub fn on_connected(&self, ex: &mut Exchange) {
        self.usher.connected(ex, Instant::now());
    }

    /// upstream_response_filter: marks the upstream's first byte.
    pub fn on_upstream_response(&self, resp: &ResponseHeader, ex: &mut Exchange) {
        if ex.connected.is_none() {
            // Not every embedder calls on_connected: then connect time is folded into ttfb.
            ex.connected = ex.peer_chosen;
        }
        self.usher
            .response_head(ex, resp.status.as_u16(), Instant::now());
    }

    /// logging: records the finished request. Returns what it did to the customer's score.
    pub fn on_logging(
        &self,
        session: &Session,
        e: Option<&Error>,
        ex: &mut Exchange,
    ) -> Option<Recorded> {
        let req = session.req_header();
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        let failure = e.map(outcome_of).filter(|o| *o != Outcome::Ok);
        self.usher.finish(
            ex,
            &Finish {
                method: &req.method,
                path: req.uri.path(),
                status,
                failure,
                bytes_in: session.body_bytes_read() as u64,
                bytes_out: session.body_bytes_sent() as u64,
                now: Instant::now(),
                now_ms: wall_ms(),
            },
        )
    }
}
