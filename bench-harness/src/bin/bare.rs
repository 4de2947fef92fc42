//! The baseline: a bare Pingora 0.9 proxy. Round robin over the upstreams, upstream keep-alive,
//! Pingora's defaults for everything else, no usher logic at all. Built with the same release
//! profile and allocator as usher, so that a ratio between the two is the cost of usher's work.
//!
//! `bare LISTEN UPSTREAM [UPSTREAM ...]`

use async_trait::async_trait;
use pingora::lb::selection::RoundRobin;
use pingora::lb::LoadBalancer;
use pingora::prelude::*;
use pingora::server::configuration::ServerConf;
use std::sync::Arc;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Bare(Arc<LoadBalancer<RoundRobin>>);

#[async_trait]
impl ProxyHttp for Bare {
    type CTX = ();
    fn new_ctx(&self) {}

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        let b = self
            .0
            .select(b"", 256)
            .ok_or_else(|| Error::explain(ErrorType::ConnectNoRoute, "no upstream"))?;
        Ok(Box::new(HttpPeer::new(b, false, String::new())))
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 2 {
        eprintln!("usage: bare LISTEN UPSTREAM [UPSTREAM ...]");
        std::process::exit(2);
    }
    let lb = LoadBalancer::try_from_iter(args[1..].iter().map(String::as_str))
        .expect("upstream addresses");
    let mut server = Server::new_with_opt_and_conf(None, ServerConf::default());
    server.bootstrap();
    let mut proxy = http_proxy_service(&server.configuration, Bare(Arc::new(lb)));
    proxy.add_tcp(&args[0]);
    server.add_service(proxy);
    server.run_forever();
}
