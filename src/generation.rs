//! A generation: one configuration compiled for the request path, immutable, swapped whole.
//!
//! What a configuration decides (routes and their matchers, identity rules, tiers, pool
//! membership, thresholds, protection, funnels) is compiled here once, against the [`State`] that
//! outlasts it: each route gets its state by name, each upstream its node by address, each pool its
//! budget by name, each tier and funnel an interned id. Requests pin the generation they started on
//! (an `Arc`), so a reload never changes a request midway; the last request holding an old
//! generation drops it. As pingap keeps its locations in `ArcSwap` maps and Pingora's
//! `LoadBalancer` its selector in an `ArcSwap`.

use crate::config::{Config, TierId};
use crate::events::funnels::FunnelDef;
use crate::experience::{ScoreModel, StoreSettings};
use crate::identity::IdentityResolver;
use crate::metrics::GenMetrics;
use crate::routing::RouteTable;
use crate::state::{InFlight, RouteState, State};
use crate::upstream::{PoolSpec, RouteSpec, Settings, UpstreamId, Upstreams};
use http::HeaderValue;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

/// Where a generation's configuration came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Source {
    /// The file, when it was loaded from one.
    pub path: Option<PathBuf>,
    /// SHA-256 of the file's (or text's) bytes, hex.
    pub hash: String,
    /// Unix milliseconds.
    pub loaded_ms: u64,
    /// What made it: "start", "reload", "resolve" (host names looked up again).
    pub cause: &'static str,
}

impl Source {
    pub fn of_text(
        path: Option<PathBuf>,
        text: &[u8],
        loaded_ms: u64,
        cause: &'static str,
    ) -> Self {
        use sha2::Digest;
        let hash = sha2::Sha256::digest(text)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        Source {
            path,
            hash,
            loaded_ms,
            cause,
        }
    }
}

pub struct Generation {
    /// 1 for the configuration usher started with, one more for each that replaced it.
    pub number: u64,
    pub source: Source,
    pub config: Config,
    pub(crate) identity: IdentityResolver,
    pub(crate) routes: RouteTable,
    /// By route id: what is learned about the route, kept by its name.
    pub(crate) route_states: Vec<Arc<RouteState>>,
    pub(crate) upstreams: Upstreams,
    /// By tier id: the tier name's interned id.
    pub(crate) tier_labels: Vec<u8>,
    pub(crate) funnels: Vec<FunnelDef>,
    pub(crate) store: StoreSettings,
    pub(crate) metrics: GenMetrics,
    /// Whether admission needs the customer's current score (rescue or the experience header).
    pub(crate) peek_customer: bool,
    /// Every value of the experience header, by rounded score and state, made once: formatting one
    /// per request took a visible share of a request's time.
    pub(crate) experience_values: Vec<HeaderValue>,
    /// The request id and experience header names as Pingora's header inserts take them, made
    /// once: from a `HeaderName` each insert copied the name into a new buffer first.
    pub(crate) request_id_name: bytes::Bytes,
    pub(crate) experience_name: Option<bytes::Bytes>,
    /// The state's count of requests in flight, at hand for the request path.
    pub(crate) in_flight: Arc<InFlight>,
}

/// A header name as bytes whose clones only count references (as the request id's are).
fn header_name_bytes(name: &http::HeaderName) -> bytes::Bytes {
    bytes::Bytes::from_owner(name.as_str().to_owned())
}

impl Generation {
    /// The request id header's name, ready for a header insert.
    pub fn request_id_name(&self) -> &bytes::Bytes {
        &self.request_id_name
    }

    /// Compiles `config` against `state`. Cannot fail: the configuration was validated.
    pub fn build(config: Config, state: &State, number: u64, source: Source, now: Instant) -> Self {
        let settings = Settings {
            outlier: config.outlier,
            ewma: config.balancing,
            budget: config.retries.budget,
        };
        let pools: Vec<PoolSpec<'_>> = config
            .pools
            .iter()
            .map(|p| PoolSpec {
                name: &p.name,
                members: &p.upstreams,
                checked: p.health_check.is_some(),
            })
            .collect();
        let routes: Vec<RouteSpec<'_>> = config
            .routes
            .iter()
            .map(|r| {
                let mut members: Vec<UpstreamId> = r
                    .reserved_pool
                    .iter()
                    .chain(std::iter::once(&r.pool))
                    .filter_map(|p| config.pools.get(*p as usize))
                    .flat_map(|p| p.upstreams.iter().copied())
                    .collect();
                members.sort_unstable();
                members.dedup();
                RouteSpec {
                    name: &r.name,
                    members,
                }
            })
            .collect();
        let upstreams =
            state
                .upstreams
                .reconcile(&config.upstreams, &pools, &routes, settings, now);
        let route_names: Vec<&str> = config.routes.iter().map(|r| r.name.as_str()).collect();
        let route_states = state.routes_for(&route_names);
        let tier_labels = config
            .tiers
            .iter()
            .map(|t| {
                let id = state.tier_names.intern(&Arc::from(t.name.as_str()));
                id.map_or(u8::MAX, |i| i as u8)
            })
            .collect();
        let funnels = config
            .funnels
            .iter()
            .map(|f| FunnelDef {
                id: state
                    .funnel_names
                    .intern(&Arc::from(f.name.as_str()))
                    .unwrap_or(u16::MAX),
                name: f.name.clone(),
                steps: f.steps.clone(),
                abandon_after: f.abandon_after,
            })
            .collect();
        let prot = &config.protection;
        let store = StoreSettings {
            journey_len: config.experience.journey_len,
            model: ScoreModel::new(config.experience.half_life),
            rescue: prot.rescue_below.map(|b| (b, prot.rescue_for)),
            degraded_below: config.experience.degraded_below,
            recover_above: config.events.recover_above,
            min_requests: config.experience.min_requests,
            struggle: config.struggle,
        };
        let usable: Vec<(&str, std::time::Duration, Vec<UpstreamId>)> = config
            .routes
            .iter()
            .map(|r| {
                let mut ups: Vec<UpstreamId> = Vec::new();
                for p in std::iter::once(r.pool).chain(r.reserved_pool) {
                    for u in config
                        .pools
                        .get(p as usize)
                        .map_or(&[][..], |p| &p.upstreams)
                    {
                        if !ups.contains(u) {
                            ups.push(*u);
                        }
                    }
                }
                (r.name.as_str(), r.target, ups)
            })
            .collect();
        let labels: Vec<String> = config.upstreams.iter().map(|a| a.to_string()).collect();
        let metrics = state.metrics.for_generation(&usable, &labels);
        let pool_names: Vec<&str> = config.pools.iter().map(|p| p.name.as_str()).collect();
        state.metrics.set_pools(&pool_names);
        let experience_values = match prot.experience_header {
            Some(_) => (0..=100u8)
                .flat_map(|score| ["ok", "degraded"].map(|state| (score, state)))
                .map(|(score, state)| {
                    HeaderValue::from_str(&format!("score={score}; state={state}"))
                        .expect("digits, letters and spaces make a valid header value")
                })
                .collect(),
            None => Vec::new(),
        };
        let gen = Generation {
            number,
            source,
            identity: IdentityResolver::new(&config.identity, &config.tiers),
            routes: RouteTable::new(&config.routes),
            route_states,
            upstreams,
            tier_labels,
            funnels,
            store,
            metrics,
            peek_customer: prot.rescue_below.is_some() || prot.experience_header.is_some(),
            experience_values,
            request_id_name: header_name_bytes(&config.server.request_id_header),
            experience_name: prot.experience_header.as_ref().map(header_name_bytes),
            in_flight: state.in_flight.clone(),
            config,
        };
        gen.refresh_upstream_states(now);
        gen
    }

    pub fn upstreams(&self) -> &Upstreams {
        &self.upstreams
    }

    pub fn identity_resolver(&self) -> &IdentityResolver {
        &self.identity
    }

    pub fn route_state(&self, r: crate::ids::RouteId) -> Option<&Arc<RouteState>> {
        self.route_states.get(r as usize)
    }

    pub fn funnels(&self) -> &[FunnelDef] {
        &self.funnels
    }

    pub fn store_settings(&self) -> &StoreSettings {
        &self.store
    }

    /// Whether a customer with `requests` requests scoring `score` counts as degraded: under the
    /// threshold, and seen often enough (`experience.min_requests`) for it to mean something.
    pub fn is_degraded(&self, score: f64, requests: u32) -> bool {
        score < self.config.experience.degraded_below
            && requests >= self.config.experience.min_requests
    }

    /// The interned id of tier `t`.
    pub fn tier_label(&self, t: TierId) -> u8 {
        self.tier_labels.get(t as usize).copied().unwrap_or(u8::MAX)
    }

    /// Publishes every upstream's state to its gauge.
    pub(crate) fn refresh_upstream_states(&self, now: Instant) {
        for u in 0..self.upstreams.len() as UpstreamId {
            let v = self.upstreams.view(u, now);
            let state = if !v.active_up { "unhealthy" } else { v.state };
            self.metrics.set_upstream_state(u, state);
        }
    }

    /// Publishes which pools are in panic mode (judged on the upstreams as a whole).
    /// Puts in force what this configuration decides outside the request path: the certificates
    /// the TLS listeners hand out (connections already open keep theirs) and the access log.
    pub(crate) fn install(&self, state: &State) {
        if let Some(tls) = &self.config.server.tls {
            state.tls.set(tls.certs.clone());
        }
        state.access_log.reconcile(self.config.access_log.as_ref());
        state
            .events
            .funnels
            .set_history_max(self.config.events.funnel_history_max);
    }

    pub(crate) fn refresh_pool_panic(&self, metrics: &crate::metrics::Metrics, now: Instant) {
        for (p, pool) in self.config.pools.iter().enumerate() {
            metrics.set_pool_panic(
                &pool.name,
                self.upstreams.in_panic(p as crate::ids::PoolId, None, now),
            );
        }
    }
}
