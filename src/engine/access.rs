//! A finished request as the access log says it: what the proxy saw of it (client, host,
//! protocol) joined with what usher made of it (route, upstream, attempts, outcome, and the
//! customer's tier, score, state and protection).

use super::exchange::Exchange;
use super::Usher;
use crate::access_log::Entry;
use compact_str::CompactString;
use std::net::IpAddr;

/// What only the proxy knows of a request.
pub struct RequestFacts<'a> {
    pub client: Option<IpAddr>,
    pub method: &'a str,
    pub host: &'a str,
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub protocol: &'static str,
}

impl Usher {
    /// Logs `ex`, once recorded, when an access log is in force.
    pub fn log_access(&self, ex: &Exchange, facts: &RequestFacts<'_>) {
        self.state.access_log.with(|w| {
            if let Some(e) = self.access_entry(ex, facts, w.config().query) {
                w.log(e);
            }
        });
    }

    fn access_entry(&self, ex: &Exchange, facts: &RequestFacts<'_>, query: bool) -> Option<Entry> {
        let f = ex.finished?;
        let g = match ex.gen.clone() {
            Some(g) => g,
            None => self.current.load_full(),
        };
        let identity = ex.identity.as_ref();
        let tier = identity
            .and_then(|i| g.config.tiers.get(i.tier as usize))
            .map_or("", |t| t.name.as_str());
        let path = match (query, facts.query) {
            (true, Some(q)) => crate::access_log::bounded_path(&format!("{}?{q}", facts.path)),
            _ => crate::access_log::bounded_path(facts.path),
        };
        let ms = |d: std::time::Duration| (d.as_secs_f64() * 1e6).round() / 1e3;
        Some(Entry {
            time: crate::time::rfc3339(f.now_ms),
            request_id: CompactString::from(ex.request_id()),
            client: facts.client,
            method: CompactString::from(facts.method),
            host: CompactString::from(facts.host),
            path,
            protocol: facts.protocol,
            status: f.status,
            bytes_in: f.bytes_in,
            bytes_out: f.bytes_out,
            duration_ms: ms(f.total),
            upstream_ms: f.upstream_time.map(ms),
            route: ex
                .route
                .and_then(|r| g.config.routes.get(r as usize))
                .map(|r| CompactString::from(r.name.as_str())),
            upstream: ex.upstream.map(|u| g.upstreams.node(u).addr().to_string()),
            attempts: if ex.upstream.is_some() || ex.retries > 0 {
                1 + ex.retries + ex.stale_retries
            } else {
                0
            },
            outcome: f.outcome.as_str(),
            customer: identity
                .map(|i| match g.config.privacy.pseudonyms.of(&i.id) {
                    std::borrow::Cow::Borrowed(_) => i.id.clone(),
                    std::borrow::Cow::Owned(p) => CompactString::from(p),
                })
                .unwrap_or_default(),
            tier: CompactString::from(tier),
            score: f.score.map(|s| (s * 10.0).round() / 10.0),
            state: match f.score {
                Some(s) => crate::views::state_of(&g, s, f.requests),
                None => "unknown",
            },
            protected: ex.protection.is_some(),
            protection: ex.protection.map(|p| p.as_str()),
        })
    }
}
