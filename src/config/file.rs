//! The configuration file as written: serde structs that mirror the TOML one to one.
//!
//! Nothing here is trusted or interpreted. Every struct denies unknown keys so that a typo is an error
//! rather than a silently ignored setting; turning these into the validated [`super::Config`] is the
//! job of `validate.rs`. Durations stay strings here ("300ms", "10m") so that a bad one is reported
//! with its path instead of aborting the whole parse.

use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerFile {
    pub listen: Option<Vec<String>>,
    pub admin: Option<String>,
    pub threads: Option<i64>,
    pub grace_period: Option<String>,
    pub max_header_bytes: Option<i64>,
    pub upstream_idle_connections: Option<i64>,
    pub admin_tokens: Option<String>,
    /// JSON lines: who looked up or erased which customer, when, from where.
    pub admin_audit_log: Option<String>,
    pub max_connections: Option<i64>,
    pub head_timeout: Option<String>,
    pub idle_timeout: Option<String>,
    /// HTTP/2 with prior knowledge (h2c) on the plain listeners.
    pub h2c: Option<bool>,
    /// Plain listeners answer every request with a redirect to https.
    pub redirect_to_https: Option<bool>,
    pub request_id_header: Option<String>,
    pub tls: Option<TlsFile>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFile {
    pub listen: Option<Vec<String>>,
    /// Offer HTTP/2 by ALPN.
    pub h2: Option<bool>,
    pub certificates: Option<Vec<CertFile>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertFile {
    pub cert: Option<String>,
    pub key: Option<String>,
    pub names: Option<Vec<String>>,
    pub default: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityFile {
    pub customer_id: Option<Vec<IdSourceFile>>,
    pub tier: Option<Vec<TierSourceFile>>,
    pub default_tier: Option<String>,
    pub max_id_len: Option<i64>,
    pub jwt: Option<JwtFile>,
    /// Confirms a `trusted_from` that covers every address.
    pub trust_any_peer: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtFile {
    pub header: Option<String>,
    pub cookie: Option<String>,
    pub key_file: Option<String>,
    pub jwks_file: Option<String>,
    pub algorithm: Option<String>,
    pub issuer: Option<OneOrMany>,
    pub audience: Option<OneOrMany>,
    pub customer_claim: Option<String>,
    pub tier_claim: Option<String>,
    pub leeway: Option<String>,
}

/// One place to read a customer id from; exactly one of the keys must be set.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdSourceFile {
    pub header: Option<String>,
    pub trusted_from: Option<Vec<String>>,
    pub cookie: Option<String>,
    pub query: Option<String>,
}

/// One place to read a tier from; exactly one of `header` or `table` must be set.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TierSourceFile {
    pub header: Option<String>,
    pub trusted_from: Option<Vec<String>>,
    pub table: Option<String>,
    pub verified_only: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TierFile {
    pub name: Option<String>,
    pub protected: Option<bool>,
    pub follow_up: Option<String>,
    pub notify_failures: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsFile {
    pub source: Option<String>,
    pub cooldown: Option<String>,
    pub recover_above: Option<f64>,
    pub recent: Option<i64>,
    pub funnel_track_max: Option<i64>,
    pub funnel_history_max: Option<i64>,
    pub spool_dir: Option<String>,
    pub slo_min_requests: Option<i64>,
    pub slo_realert: Option<String>,
    pub budget_per_second: Option<f64>,
    pub verified_only: Option<Vec<String>>,
    pub sinks: Option<Vec<SinkFile>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinkFile {
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub name: Option<String>,
    pub queue: Option<i64>,
    pub path: Option<String>,
    pub max_bytes: Option<i64>,
    pub keep: Option<i64>,
    pub url: Option<String>,
    pub batch: Option<i64>,
    pub timeout: Option<String>,
    pub max_spool_bytes: Option<i64>,
    pub stream: Option<String>,
    pub subject: Option<String>,
    pub ca_file: Option<String>,
    pub events: Option<Vec<String>>,
    pub when: Option<String>,
    pub template: Option<String>,
    pub content_type: Option<String>,
    pub headers: Option<std::collections::BTreeMap<String, String>>,
    pub authorization_file: Option<String>,
    pub idempotency_header: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FunnelFile {
    pub name: Option<String>,
    pub abandon_after: Option<String>,
    pub steps: Option<Vec<FunnelStepFile>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FunnelStepFile {
    pub name: Option<String>,
    pub method: Option<String>,
    pub path: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExperienceFile {
    pub half_life: Option<String>,
    pub degraded_below: Option<f64>,
    pub track_max: Option<i64>,
    pub journey_len: Option<i64>,
    pub min_requests: Option<i64>,
    pub summary_interval: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolFile {
    pub name: Option<String>,
    pub upstreams: Option<Vec<String>>,
    pub resolve_interval: Option<String>,
    pub connect_timeout: Option<String>,
    pub read_timeout: Option<String>,
    pub write_timeout: Option<String>,
    pub idle_timeout: Option<String>,
    pub health_check: Option<HealthCheckFile>,
    /// Speak TLS to the upstreams.
    pub tls: Option<bool>,
    pub sni: Option<String>,
    pub ca_file: Option<String>,
    pub client_cert: Option<String>,
    pub client_key: Option<String>,
    /// Offer HTTP/2 by ALPN (TLS pools only).
    pub h2: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrivacyFile {
    pub pseudonym_key_file: Option<String>,
    pub retention: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateFile {
    pub dir: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessLogFile {
    pub path: Option<String>,
    pub format: Option<String>,
    pub queue: Option<i64>,
    pub query: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckFile {
    pub path: Option<String>,
    pub interval: Option<String>,
    pub timeout: Option<String>,
    pub rise: Option<i64>,
    pub fall: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutlierFile {
    pub consecutive_failures: Option<i64>,
    pub connect_failures: Option<i64>,
    pub failure_rate: Option<f64>,
    pub min_requests: Option<i64>,
    pub memory: Option<i64>,
    pub sample_interval: Option<String>,
    pub latency_factor: Option<f64>,
    pub latency_min_delta: Option<String>,
    pub latency_min_samples: Option<i64>,
    pub base_ejection: Option<String>,
    pub max_ejection: Option<String>,
    pub jitter: Option<f64>,
    pub max_ejected_share: Option<f64>,
    pub probe_successes: Option<i64>,
    pub panic_below: Option<f64>,
    pub hung_factor: Option<f64>,
    pub hung_floor: Option<String>,
    pub sweep_interval: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StruggleFile {
    pub loop_count: Option<i64>,
    pub loop_window: Option<String>,
    pub retry_window: Option<String>,
    pub form_loop_count: Option<i64>,
    pub form_loop_window: Option<String>,
    pub in_score: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetriesFile {
    pub enabled: Option<bool>,
    pub budget_ratio: Option<f64>,
    pub budget_min_per_sec: Option<f64>,
    pub budget_window: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BalancingFile {
    pub decay: Option<String>,
    pub default_rtt: Option<String>,
    pub failure_penalty: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProtectionFile {
    pub protected_anywhere: Option<bool>,
    pub critical_for_everyone: Option<bool>,
    pub rescue_below: Option<f64>,
    pub rescue_for: Option<String>,
    pub experience_header: Option<String>,
    pub try_timeout_factor: Option<f64>,
    pub try_timeout_floor: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteFile {
    pub name: Option<String>,
    #[serde(rename = "match")]
    pub matcher: Option<MatchFile>,
    pub pool: Option<String>,
    pub reserved_pool: Option<String>,
    pub critical: Option<bool>,
    pub target: Option<String>,
    pub slo: Option<f64>,
    pub streaming: Option<bool>,
    pub keep_query: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MatchFile {
    pub host: Option<String>,
    pub path_prefix: Option<String>,
    pub method: Option<OneOrMany>,
    pub header: Option<HeaderMatchFile>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub fn as_slice(&self) -> &[String] {
        match self {
            OneOrMany::One(s) => std::slice::from_ref(s),
            OneOrMany::Many(v) => v,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderMatchFile {
    pub name: Option<String>,
    pub value: Option<String>,
}
