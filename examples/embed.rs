//! A custom Pingora proxy that embeds usher as a plugin.
//!
//! The proxy keeps its own `Server`, its own CTX type and its own upstream selection (Pingora's
//! round-robin `LoadBalancer`), filtered by usher's health: an upstream usher has ejected, or that
//! this request already tried, is skipped. Protected customers (a gold tier on a critical route)
//! get usher's own choice: the cheapest healthy upstream. usher identifies customers, measures
//! every request, decides retries and serves its admin API. Run it with a usher config whose pools
//! list the same upstreams:
//!
//! ```text
//! cargo run --example embed -- config/embed.toml
//! ```

use async_trait::async_trait;
use pingora::lb::selection::RoundRobin;
use pingora::lb::LoadBalancer;
use pingora::prelude::*;
use pingora::server::configuration::ServerConf;
use std::net::SocketAddr;
use std::sync::Arc;
use usher::engine::Admission;
use usher::{Config, Exchange, Usher, UsherHooks};

/// The embedding proxy: its own state, with usher's hooks as one field among others.
pub struct ShopProxy {
    usher: UsherHooks,
    upstreams: Arc<LoadBalancer<RoundRobin>>,
}

/// The embedding proxy's own per-request context; usher's state is one field of it.
pub struct ShopCtx {
    usher: Exchange,
    attempts: u32,
}

#[async_trait]
impl ProxyHttp for ShopProxy {
    type CTX = ShopCtx;

    fn new_ctx(&self) -> ShopCtx {
        ShopCtx {
            usher: Exchange::new(),
            attempts: 0,
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut ShopCtx) -> Result<bool> {
        // usher identifies the customer and classifies the route; this proxy serves every path, so a
        // request outside usher's routes is still proxied (and measured as route "none").
        let admission = self.usher.on_request(session, &mut ctx.usher);
        match admission.refusal() {
            Some((status, _)) if admission != Admission::NoRoute => {
                session.respond_error(status).await?;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut ShopCtx,
    ) -> Result<Box<HttpPeer>> {
        ctx.attempts += 1;
        // Protected customers get usher's choice: the healthiest upstream, the reserved pool first.
        if ctx.usher.protection().is_some() {
            return self.usher.upstream_peer(&mut ctx.usher);
        }
        // Everyone else: this proxy's own round robin, skipping what usher says not to use.
        let chosen = self.upstreams.select_with(b"", 256, |backend, healthy| {
            healthy
                && backend
                    .addr
                    .as_inet()
                    .is_some_and(|a| self.usher.accepts(&ctx.usher, *a))
        });
        let Some(addr) = chosen.and_then(|b| b.addr.as_inet().copied()) else {
            // Nothing acceptable left in this balancer: let usher choose (panic mode included).
            return self.usher.upstream_peer(&mut ctx.usher);
        };
        // Tell usher which upstream this proxy chose, so the measurement is attributed to it.
        self.usher.attribute_upstream(&mut ctx.usher, addr);
        Ok(Box::new(HttpPeer::new(addr, false, String::new())))
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        req: &mut RequestHeader,
        ctx: &mut ShopCtx,
    ) -> Result<()> {
        self.usher.on_upstream_request(req, &ctx.usher)?;
        req.insert_header("x-shop-proxy", "1")?;
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut ShopCtx,
    ) -> Result<()> {
        // An Err here is usher granting a retry of a 502/503/504 on another upstream.
        self.usher
            .on_upstream_response(session, resp, &mut ctx.usher)
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut ShopCtx,
        e: Box<Error>,
    ) -> Box<Error> {
        self.usher.fail_to_connect(e, &mut ctx.usher)
    }

    fn error_while_proxy(
        &self,
        _peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut ShopCtx,
        client_reused: bool,
    ) -> Box<Error> {
        self.usher
            .error_while_proxy(session, e, client_reused, &mut ctx.usher)
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut ShopCtx) {
        self.usher.on_logging(session, e, &mut ctx.usher);
    }
}

/// Builds the embedding proxy's server: its proxy on `listen`, usher's admin API on the config's
/// admin address, usher's periodic summary.
pub fn build_server(config: Config, listen: SocketAddr) -> (Server, Arc<Usher>) {
    let upstreams: Vec<SocketAddr> = config.upstreams.clone();
    let admin = config.server.admin;
    let usher = Usher::new(config);
    let conf = ServerConf {
        // usher decides retries: one on another upstream, one on a stale pooled connection.
        max_retries: 3,
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let lb = LoadBalancer::try_from_iter(upstreams).expect("static upstream list");
    let mut proxy = http_proxy_service(
        &server.configuration,
        ShopProxy {
            usher: UsherHooks::new(usher.clone()),
            upstreams: Arc::new(lb),
        },
    );
    proxy.add_tcp(&listen.to_string());
    server.add_service(proxy);
    if let Some(admin) = admin {
        server.add_service(usher::admin::admin_service(usher.clone(), admin));
    }
    server.add_service(usher::tasks::periodic_service(usher.clone()));
    (server, usher)
}

#[allow(dead_code)]
fn main() {
    let path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "config/embed.toml".to_string());
    let config = match Config::load(path.as_ref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{path}:\n{e}");
            std::process::exit(2);
        }
    };
    let listen = config.server.listen[0];
    let (server, _usher) = build_server(config, listen);
    server.run_forever();
}
