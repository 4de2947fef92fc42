//! A TLS pool's settings in Pingora's types (its CA list and client certificate), made once per
//! configuration rather than per request: Pingora parses every certificate it is given.

use crate::config::UpstreamTls;
use crate::engine::Generation;
use arc_swap::ArcSwapOption;
use pingora::protocols::tls::CaType;
use pingora::protocols::ALPN;
use pingora::upstreams::peer::HttpPeer;
use pingora::utils::tls::{parse_x509, CertKey, WrappedX509};
use std::sync::Arc;

struct PeerTls {
    ca: Option<Arc<CaType>>,
    client: Option<Arc<CertKey>>,
}

/// The pools of one configuration, by position.
struct ForGeneration {
    number: u64,
    pools: Vec<Option<PeerTls>>,
}

#[derive(Default)]
pub struct PeerTlsCache {
    current: ArcSwapOption<ForGeneration>,
}

impl PeerTlsCache {
    /// Sets `peer` up for TLS as pool `pool` of `g` says; nothing for a plain pool.
    pub fn apply(&self, g: &Generation, pool: usize, peer: &mut HttpPeer) {
        let Some(tls) = g.config.pools.get(pool).and_then(|p| p.tls.as_ref()) else {
            return;
        };
        let cached = self.current.load_full().filter(|c| c.number == g.number);
        let cached = match cached {
            Some(c) => c,
            None => {
                let made = Arc::new(ForGeneration {
                    number: g.number,
                    pools: g
                        .config
                        .pools
                        .iter()
                        .map(|p| p.tls.as_ref().map(convert))
                        .collect(),
                });
                self.current.store(Some(made.clone()));
                made
            }
        };
        peer.scheme = pingora::upstreams::peer::Scheme::HTTPS;
        peer.sni = tls.sni.clone();
        peer.options.alpn = if tls.h2 { ALPN::H2H1 } else { ALPN::H1 };
        if let Some(Some(p)) = cached.pools.get(pool) {
            peer.options.ca = p.ca.clone();
            peer.client_cert_key = p.client.clone();
        }
    }
}

/// Validation read and parsed every certificate already: these cannot fail here.
fn convert(t: &UpstreamTls) -> PeerTls {
    let ca = (!t.ca.is_empty()).then(|| {
        let list: Vec<WrappedX509> =
            t.ca.iter()
                .map(|der| WrappedX509::new(der.clone(), parse_x509))
                .collect();
        Arc::<CaType>::from(list.into_boxed_slice())
    });
    let client = t
        .client
        .as_ref()
        .map(|c| Arc::new(CertKey::new(c.chain.clone(), c.key.clone())));
    PeerTls { ca, client }
}
