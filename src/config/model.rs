//! The validated configuration: what the rest of usher reads.
//!
//! Everything here has been checked by `validate.rs`: names resolve to indices, durations are parsed,
//! addresses are resolved, tier tables are loaded. Code downstream never re-validates and never has a
//! reason to panic on a value from here. Deliberately independent of the file format (`file.rs`), so
//! the TOML can change shape without touching the request path.
//!
//! The ids below are positions in *this* configuration's vectors: a configuration is compiled and
//! swapped whole (`crate::generation::Generation`), so inside one they are stable. Nothing that outlives a
//! configuration (customers, upstream health, statistics) is keyed by them: that state is keyed by
//! names and addresses.

use crate::matchers::PathPattern;
use crate::privacy::Pseudonyms;
pub use crate::settings::HealthCheck;
use crate::settings::{
    BudgetSettings, ConnectionLimits, EwmaSettings, OutlierSettings, StruggleRules,
};
use http::{HeaderName, HeaderValue, Method};
use ipnet::IpNet;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub use crate::ids::{PoolId, RouteId, TierId, UpstreamId};

#[derive(Debug, Clone)]
pub struct Config {
    pub server: ServerConfig,
    /// Who may use the admin API, and for what (empty: loopback callers only, for everything).
    pub admin_tokens: Vec<AdminToken>,
    /// Where the admin API writes who looked up or erased which customer (`None`: nowhere).
    pub admin_audit_log: Option<PathBuf>,
    pub identity: IdentityConfig,
    pub tiers: Vec<Tier>,
    pub experience: ExperienceConfig,
    pub pools: Vec<PoolConfig>,
    pub routes: Vec<RouteConfig>,
    /// Every distinct upstream address named by any pool, in order of first appearance.
    pub upstreams: Vec<SocketAddr>,
    pub outlier: OutlierSettings,
    /// How often ejections are reviewed and the windowed rules applied.
    pub sweep_interval: Duration,
    pub retries: RetriesConfig,
    pub struggle: StruggleRules,
    pub privacy: PrivacyConfig,
    pub balancing: EwmaSettings,
    pub protection: ProtectionConfig,
    pub events: EventsConfig,
    pub funnels: Vec<Funnel>,
    pub state: StateConfig,
    /// One line per request; `None`: no access log.
    pub access_log: Option<crate::access_log::AccessLogConfig>,
}

/// What an admin token lets its holder do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// Reads: customers, routes, upstreams, events, metrics, the configuration in force.
    Viewer,
    /// Also reloads the configuration (and erases customers).
    Operator,
}

/// One admin token: its SHA-256 (the token itself is not kept), its role and a name for the
/// audit log.
#[derive(Clone, PartialEq)]
pub struct AdminToken {
    pub role: Role,
    pub sha256: [u8; 32],
    /// As written after the token in the file, if anything was.
    pub name: Option<String>,
}

impl AdminToken {
    /// What the audit log calls the holder: the token's name, or else the first 8 hex digits of
    /// its SHA-256 (stable across reloads, and no help to a guesser).
    pub fn label(&self) -> String {
        match &self.name {
            Some(n) => n.clone(),
            None => {
                let hex: String = self.sha256[..4]
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect();
                format!("sha256:{hex}")
            }
        }
    }
}

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AdminToken({:?}, {:?})", self.role, self.name)
    }
}

/// What usher shows of a person, and how long it remembers them (see `crate::privacy`).
#[derive(Debug, Clone, PartialEq)]
pub struct PrivacyConfig {
    pub pseudonyms: Pseudonyms,
    /// A customer not seen for this long is forgotten: score, journey, funnel history.
    pub retention: Duration,
}

/// Where what usher learns is kept across restarts.
#[derive(Debug, Clone, PartialEq)]
pub struct StateConfig {
    /// The snapshot written on SIGTERM and read at start lives here.
    pub dir: PathBuf,
}

#[derive(Debug, Clone)]
pub struct EventsConfig {
    /// The CloudEvents `source` of every event.
    pub source: String,
    /// At most one event of a type about a customer per this long.
    pub cooldown: Duration,
    /// A degraded customer is recovered when the score climbs back to this (hysteresis).
    pub recover_above: f64,
    /// Events kept in memory for `GET /events`.
    pub recent: usize,
    pub funnel_track_max: usize,
    /// Ended journeys kept for the funnel report; the oldest go first.
    pub funnel_history_max: usize,
    /// Where remote sinks keep events they have not delivered yet.
    pub spool_dir: PathBuf,
    pub slo_min_requests: u32,
    /// A route's burn is reported again after this long if it goes on.
    pub slo_realert: Duration,
    /// Events of one type let out per second at most; beyond it they are suppressed, counted and
    /// reported once a minute. 0: no limit.
    pub budget_per_sec: f64,
    /// Customer event types raised only about verified customers (a token, a trusted id header):
    /// claims anybody can make do not page anybody.
    pub verified_only: Vec<crate::event_types::EventType>,
    pub sinks: Vec<SinkConfig>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SinkConfig {
    pub name: String,
    /// Events waiting in memory for this sink; beyond it, events are dropped and counted.
    pub queue: usize,
    /// Which events it takes; the others never reach its queue.
    pub takes: SinkFilter,
    pub kind: SinkKind,
}

/// Which events a sink takes: a helpdesk wants a gold customer's abandonment after trouble, not
/// every upstream ejection.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SinkFilter {
    /// Only events of these types; empty: every type.
    pub types: Vec<crate::event_types::EventType>,
    /// And only those this holds for (see `crate::templates`).
    pub when: Option<std::sync::Arc<crate::templates::Condition>>,
}

/// A value read from a file that must not show in logs or `Debug` output (a webhook's
/// `Authorization`).
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// A webhook that sends each event as a body of its own, rendered from a template.
#[derive(Debug, Clone, PartialEq)]
pub struct WebhookBody {
    pub template: std::sync::Arc<crate::templates::BodyTemplate>,
    pub content_type: String,
    /// A header that carries the event's id, for receivers that drop a retried request by it
    /// (Zendesk's `Idempotency-Key`).
    pub idempotency_header: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum SinkKind {
    /// Append JSON lines to a file, rotating at `max_bytes` and keeping `keep` old files.
    Jsonl {
        path: PathBuf,
        max_bytes: u64,
        keep: u32,
    },
    /// POST batches (CloudEvents batch mode) to `url`, or each event as a templated body.
    Webhook {
        url: String,
        batch: usize,
        timeout: Duration,
        max_spool_bytes: u64,
        /// Certificates (PEM) an `https://` receiver's may be signed by, besides the system's.
        ca: Option<std::sync::Arc<Vec<u8>>>,
        /// One request per event with this body instead of batches (`batch` is then 1).
        body: Option<WebhookBody>,
        /// Sent with every request, as given (names lower-case).
        headers: Vec<(String, String)>,
        /// The `Authorization` header's value, read from `authorization_file`.
        authorization: Option<Secret>,
    },
    /// Publish to NATS JetStream with acknowledgement; the stream is created if missing.
    Nats {
        url: String,
        stream: String,
        subject: String,
        timeout: Duration,
        max_spool_bytes: u64,
    },
}

/// Named, ordered steps of a journey; see `events::funnels`.
#[derive(Debug, Clone)]
pub struct Funnel {
    pub name: String,
    pub steps: Vec<FunnelStep>,
    pub abandon_after: Duration,
}

#[derive(Debug, Clone)]
pub struct FunnelStep {
    pub name: String,
    pub method: Option<Method>,
    pub path: PathPattern,
}

impl FunnelStep {
    pub fn matches(&self, method: &Method, path: &str) -> bool {
        self.method.as_ref().is_none_or(|m| m == method) && self.path.matches(path)
    }
}

#[derive(Debug, Clone)]
pub struct RetriesConfig {
    pub enabled: bool,
    pub budget: BudgetSettings,
}

#[derive(Debug, Clone)]
pub struct ProtectionConfig {
    /// Protected tiers get protected treatment on every route, not only critical ones.
    pub protected_anywhere: bool,
    /// Everyone gets protected treatment on critical routes.
    pub critical_for_everyone: bool,
    /// A customer whose score falls below this is protected for `rescue_for`.
    pub rescue_below: Option<f64>,
    pub rescue_for: Duration,
    /// When set, the customer's experience is forwarded to the upstream in this header.
    pub experience_header: Option<HeaderName>,
    /// A protected request's first try waits this many times the route's recent p99 for the
    /// upstream to answer, then goes to another upstream; 0 turns it off.
    pub try_timeout_factor: f64,
    /// The try timeout is never shorter than this.
    pub try_timeout_floor: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ServerConfig {
    pub listen: Vec<SocketAddr>,
    pub admin: Option<SocketAddr>,
    pub threads: usize,
    pub grace_period: Duration,
    /// Largest request head (request line and headers) proxied; larger ones get 431.
    pub max_header_bytes: usize,
    /// Idle upstream connections kept for reuse, per worker thread, across all upstreams.
    pub upstream_idle_connections: usize,
    /// The proxy listeners' downstream connections: cap, head and idle timeouts.
    pub connections: ConnectionLimits,
    /// HTTP/2 with prior knowledge on the plain listeners.
    pub h2c: bool,
    /// Plain listeners redirect every request to https (needs TLS listeners).
    pub redirect_to_https: bool,
    /// Carries the request id to the upstream and back (see `crate::request_id`).
    pub request_id_header: HeaderName,
    pub tls: Option<TlsConfig>,
}

/// TLS listeners and the certificates they serve.
#[derive(Debug, Clone, PartialEq)]
pub struct TlsConfig {
    pub listen: Vec<SocketAddr>,
    /// Offered by ALPN, HTTP/1.1 beside it.
    pub h2: bool,
    /// As written, for reload's comparison and `GET /config`.
    pub specs: Vec<crate::tls::CertSpec>,
    /// Loaded when the configuration is: what the handshakes get once it is in force.
    pub certs: std::sync::Arc<crate::tls::CertSet>,
}

#[derive(Debug, Clone)]
pub struct IdentityConfig {
    pub customer_id: Vec<IdSource>,
    pub tier: Vec<TierSource>,
    pub default_tier: TierId,
    pub max_id_len: usize,
    /// A signed token that says who the customer is (and their tier): a verified identity.
    pub jwt: Option<JwtConfig>,
    /// Pseudonyms are on: an id shaped like one is refused, so nobody can pose as someone's
    /// pseudonym in a lookup or an erasure.
    pub reserve_pseudonyms: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub enum IdSource {
    /// A header; with `trusted_from`, believed only from those peers (an authenticating front),
    /// and then the id is verified.
    Header {
        name: HeaderName,
        trusted_from: Option<Vec<IpNet>>,
    },
    Cookie(String),
    Query(String),
}

/// Where a token is read from.
#[derive(Debug, Clone, PartialEq)]
pub enum TokenSource {
    /// `Authorization: Bearer <token>`, or the header's whole value for any other header.
    Header(HeaderName),
    Cookie(String),
}

#[derive(Debug, Clone)]
pub struct JwtConfig {
    pub source: TokenSource,
    /// The keys tokens must be signed with (read when the configuration is loaded).
    pub keys: std::sync::Arc<crate::settings::JwtKeys>,
    /// Accepted `iss` values; empty: not checked.
    pub issuers: Vec<String>,
    /// Accepted `aud` values; empty: not checked.
    pub audiences: Vec<String>,
    /// The claim that holds the customer id.
    pub customer_claim: String,
    /// The claim that holds the tier name, if any.
    pub tier_claim: Option<String>,
    /// Clock skew allowed on `exp` and `nbf`.
    pub leeway: Duration,
}

#[derive(Debug, Clone)]
pub enum TierSource {
    /// A tier asserted by whoever sits in front of usher; believed only from `trusted_from`.
    Header {
        name: HeaderName,
        trusted_from: Vec<IpNet>,
    },
    /// A table of customer id to tier, loaded from a CSV file when the config is loaded.
    Table {
        path: PathBuf,
        /// Shared: a configuration is cloned into each generation, a large table is not.
        entries: std::sync::Arc<HashMap<Box<str>, TierId>>,
        /// Applies only to verified ids (a token, or a trusted id header): nobody gets a tier by
        /// knowing an id.
        verified_only: bool,
    },
}

#[derive(Debug, Clone)]
pub struct Tier {
    pub name: String,
    /// Customers the business can least afford to lose: served by the healthiest upstream.
    pub protected: bool,
    /// What a person should do when this tier's customer had trouble ("phone within 1h").
    pub follow_up: Option<String>,
    /// Send `usher.customer.request_failed` when such a customer's request fails on a critical route.
    pub notify_failures: bool,
}

#[derive(Debug, Clone)]
pub struct ExperienceConfig {
    pub half_life: Duration,
    pub degraded_below: f64,
    pub track_max: usize,
    pub journey_len: usize,
    /// Customers with fewer requests than this are left out of "worst customers" lists: one slow
    /// request from someone never seen before is noise, not a pattern.
    pub min_requests: u32,
    /// How often the score distribution and degraded count are recomputed for /metrics.
    pub summary_interval: Duration,
}

#[derive(Debug, Clone)]
pub struct PoolConfig {
    pub name: String,
    /// Distinct addresses, in order: literal ones and what the host names resolved to.
    pub upstreams: Vec<UpstreamId>,
    /// The upstreams as written, for looking host names up again.
    pub specs: Vec<UpstreamSpec>,
    /// How often host names among `specs` are looked up again.
    pub resolve_interval: Duration,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    pub write_timeout: Duration,
    pub idle_timeout: Duration,
    pub health_check: Option<HealthCheck>,
    /// TLS towards the upstreams; `None`: plain HTTP/1.1.
    pub tls: Option<UpstreamTls>,
}

/// How a pool's upstreams are spoken to over TLS: verified against `ca` (or the system's roots),
/// named `sni`, optionally with a client certificate, HTTP/2 offered when `h2`.
#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamTls {
    pub sni: String,
    pub h2: bool,
    /// The CA file's certificates (DER) and the file itself (PEM, for the health checks); empty:
    /// the system's roots.
    pub ca: Vec<Vec<u8>>,
    pub ca_pem: Option<Vec<u8>>,
    pub client: Option<ClientCert>,
}

/// A client certificate for mutual TLS: its chain (DER, leaf first), its key (DER) and both as
/// PEM.
#[derive(Clone, PartialEq)]
pub struct ClientCert {
    pub chain: Vec<Vec<u8>>,
    pub key: Vec<u8>,
    pub pem: Vec<u8>,
}

impl std::fmt::Debug for ClientCert {
    /// Never prints the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientCert")
            .field("certificates", &self.chain.len())
            .finish()
    }
}

/// One entry of a pool's `upstreams` as written.
#[derive(Debug, Clone, PartialEq)]
pub enum UpstreamSpec {
    Addr(SocketAddr),
    /// `host:port`, resolved when the configuration is loaded and again every `resolve_interval`;
    /// every address returned is an upstream.
    Name {
        host: String,
        port: u16,
        /// What it resolved to last.
        addrs: Vec<SocketAddr>,
    },
}

impl UpstreamSpec {
    pub fn addrs(&self) -> &[SocketAddr] {
        match self {
            UpstreamSpec::Addr(a) => std::slice::from_ref(a),
            UpstreamSpec::Name { addrs, .. } => addrs,
        }
    }
}

/// Looks a host name up: every address it has, for `port`.
pub type Resolve<'a> = dyn FnMut(&str, u16) -> std::io::Result<Vec<SocketAddr>> + 'a;

/// The system resolver, as `usher check` and `usher run` use it.
pub fn system_resolve(host: &str, port: u16) -> std::io::Result<Vec<SocketAddr>> {
    use std::net::ToSocketAddrs;
    let mut v: Vec<SocketAddr> = (host, port).to_socket_addrs()?.collect();
    // The order a resolver returns varies between calls; the set is what matters.
    v.sort();
    v.dedup();
    Ok(v)
}

#[derive(Debug, Clone)]
pub struct RouteConfig {
    pub name: String,
    pub matcher: RouteMatch,
    pub pool: PoolId,
    /// Protected traffic tries this pool first, and falls back to `pool`.
    pub reserved_pool: Option<PoolId>,
    pub critical: bool,
    /// The Apdex target T: at or under it a request satisfies, up to 4T it is tolerated.
    pub target: Duration,
    /// Share of requests that should be good (not failed, within target), e.g. 0.999.
    pub slo: Option<f64>,
    /// Answers stream (server-sent events, long polling, downloads): judged by the time to the
    /// answer's head, never cut short by the protected try timeout.
    pub streaming: bool,
    /// Journey steps keep the query string (cut with the path to what a step holds).
    pub keep_query: bool,
}

/// All present conditions must hold; an empty match matches every request.
#[derive(Debug, Clone, Default)]
pub struct RouteMatch {
    pub host: Option<HostMatch>,
    pub path_prefix: Option<String>,
    pub methods: Vec<Method>,
    pub header: Option<HeaderMatch>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum HostMatch {
    /// Lower-cased host without port.
    Exact(String),
    /// `*.example.com`, stored as `.example.com`: matches any subdomain, not the apex.
    Suffix(String),
}

#[derive(Debug, Clone)]
pub struct HeaderMatch {
    pub name: HeaderName,
    /// `None` matches on presence alone.
    pub value: Option<HeaderValue>,
}

/// Recomputes [`Config::upstreams`] and each pool's `upstreams` from the pools' specs: distinct
/// addresses in order of first appearance, each pool's without repeats.
pub(crate) fn index_pools(pools: &mut [PoolConfig]) -> Vec<SocketAddr> {
    let mut all: Vec<SocketAddr> = Vec::new();
    for p in pools.iter_mut() {
        p.upstreams.clear();
        for addr in p.specs.iter().flat_map(|s| s.addrs()) {
            let id = match all.iter().position(|a| a == addr) {
                Some(i) => i,
                None => {
                    all.push(*addr);
                    all.len() - 1
                }
            } as UpstreamId;
            if !p.upstreams.contains(&id) {
                p.upstreams.push(id);
            }
        }
    }
    all
}

impl Config {
    /// The same configuration with every host name among the pools' upstreams looked up again.
    /// A name that fails to resolve, or resolves to nothing, keeps its last addresses (and is
    /// returned with the error). `None` when no address changed.
    pub fn re_resolved(
        &self,
        resolve: &mut Resolve<'_>,
    ) -> (Option<Config>, Vec<(String, String)>) {
        let mut next = self.clone();
        let mut failures = Vec::new();
        let mut changed = false;
        for p in &mut next.pools {
            for s in &mut p.specs {
                if let UpstreamSpec::Name { host, port, addrs } = s {
                    match resolve(host, *port) {
                        Ok(found) if !found.is_empty() => {
                            if found != *addrs {
                                *addrs = found;
                                changed = true;
                            }
                        }
                        Ok(_) => {
                            failures.push((format!("{host}:{port}"), "no addresses".to_string()))
                        }
                        Err(e) => failures.push((format!("{host}:{port}"), e.to_string())),
                    }
                }
            }
        }
        if !changed {
            return (None, failures);
        }
        next.upstreams = index_pools(&mut next.pools);
        (Some(next), failures)
    }

    /// Whether any pool names a host to look up again.
    pub fn has_host_names(&self) -> bool {
        self.pools
            .iter()
            .flat_map(|p| &p.specs)
            .any(|s| matches!(s, UpstreamSpec::Name { .. }))
    }

    /// Replaces upstream address `old` with `new` everywhere (the demo starts its origins on free
    /// ports and puts them in place of the addresses written in its file).
    pub fn replace_upstream(&mut self, old: SocketAddr, new: SocketAddr) {
        for p in &mut self.pools {
            for s in &mut p.specs {
                match s {
                    UpstreamSpec::Addr(a) if *a == old => *a = new,
                    UpstreamSpec::Name { addrs, .. } => {
                        for a in addrs.iter_mut().filter(|a| **a == old) {
                            *a = new;
                        }
                    }
                    _ => {}
                }
            }
        }
        self.upstreams = index_pools(&mut self.pools);
    }

    pub fn tier_id(&self, name: &str) -> Option<TierId> {
        self.tiers
            .iter()
            .position(|t| t.name == name)
            .map(|i| i as TierId)
    }

    pub fn route_id(&self, name: &str) -> Option<RouteId> {
        self.routes
            .iter()
            .position(|r| r.name == name)
            .map(|i| i as RouteId)
    }

    pub fn upstream_id(&self, addr: SocketAddr) -> Option<UpstreamId> {
        self.upstreams
            .iter()
            .position(|a| *a == addr)
            .map(|i| i as UpstreamId)
    }
}
