//! The baseline: a bare Pingora 0.9 proxy. Round robin over the upstreams, upstream keep-alive,
//! Pingora's defaults for everything else, no usher logic at all. Built with the same release
//! profile and allocator as usher, so that a ratio between the two is the cost of usher's work.
//!
//! `bare [--timeouts] [--tls CERT KEY TLS_LISTEN] LISTEN UPSTREAM [UPSTREAM ...]`; `--timeouts` gives
//! the peers usher's default connect, read, write and idle timeouts, to tell their cost apart from
//! usher's own work. `--tls` adds a TLS listener with Pingora's `rustls` backend (usher's), HTTP/2 and
//! HTTP/1.1 offered by ALPN as usher does, Pingora's TLS defaults for the rest.

use async_trait::async_trait;
use pingora::lb::selection::RoundRobin;
use pingora::lb::LoadBalancer;
use pingora::prelude::*;
use pingora::server::configuration::ServerConf;
use std::sync::Arc;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Bare(Arc<LoadBalancer<RoundRobin>>, bool);

#[async_trait]
impl ProxyHttp for Bare {
    type CTX = ();
    fn new_ctx(&self) {}

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        let b = self
            .0
            .select(b"", 256)
            .ok_or_else(|| Error::explain(ErrorType::ConnectNoRoute, "no upstream"))?;
        let mut peer = HttpPeer::new(b, false, String::new());
        if self.1 {
            // usher's default pool timeouts: what a production proxy needs, at a price per read.
            peer.options.connection_timeout = Some(std::time::Duration::from_secs(1));
            peer.options.read_timeout = Some(std::time::Duration::from_secs(10));
            peer.options.write_timeout = Some(std::time::Duration::from_secs(10));
            peer.options.idle_timeout = Some(std::time::Duration::from_secs(60));
        }
        Ok(Box::new(peer))
    }
}

fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let timeouts = args.first().is_some_and(|a| a == "--timeouts");
    if timeouts {
        args.remove(0);
    }
    let tls = if args.first().is_some_and(|a| a == "--tls") && args.len() >= 4 {
        let t: Vec<String> = args.drain(0..4).skip(1).collect();
        Some((t[0].clone(), t[1].clone(), t[2].clone()))
    } else {
        None
    };
    if args.len() < 2 {
        eprintln!(
            "usage: bare [--timeouts] [--tls CERT KEY TLS_LISTEN] LISTEN UPSTREAM [UPSTREAM ...]"
        );
        std::process::exit(2);
    }
    let lb = LoadBalancer::try_from_iter(args[1..].iter().map(String::as_str))
        .expect("upstream addresses");
    let mut server = Server::new_with_opt_and_conf(None, ServerConf::default());
    server.bootstrap();
    let mut proxy = http_proxy_service(&server.configuration, Bare(Arc::new(lb), timeouts));
    proxy.add_tcp(&args[0]);
    if let Some((cert, key, addr)) = tls {
        let mut settings =
            pingora::listeners::tls::TlsSettings::intermediate(&cert, &key).expect("cert and key");
        settings.enable_h2();
        proxy.add_tls_with_settings(&addr, None, settings);
    }
    server.add_service(proxy);
    server.run_forever();
}
