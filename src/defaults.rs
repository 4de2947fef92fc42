//! Every default of usher's configuration, named once (as linkerd2-proxy's `env.rs` and sozu's
//! `config.rs` keep theirs). Validation fills a missing key from here, the `Default` impls of the
//! settings types read from here, and a test holds `config/usher.example.toml` and the README's
//! table to these values, so the code, the example and the docs cannot drift apart.
//!
//! A leaf module: it imports nothing of usher's.

use std::time::Duration;

const fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

const fn secs(v: u64) -> Duration {
    Duration::from_secs(v)
}

// [server]
pub const LISTEN: &str = "127.0.0.1:8080";
pub const ADMIN: &str = "127.0.0.1:9190";
pub const THREADS: i64 = 1;
pub const GRACE_PERIOD: Duration = secs(5);
pub const MAX_HEADER_BYTES: i64 = 64 * 1024;
/// Pingora's own default.
pub const UPSTREAM_IDLE_CONNECTIONS: i64 = 128;
/// Downstream connections open at once; fewer when the open-files limit cannot hold them (see
/// [`FD_RESERVE`]).
pub const MAX_CONNECTIONS: i64 = 16_384;
/// nginx's `client_header_timeout` is 60 s; 10 s is ample for any real client on any network and
/// lets a slowloris hold a connection for at most that long.
pub const HEAD_TIMEOUT: Duration = secs(10);
/// nginx's `keepalive_timeout` is 75 s, Pingora's first-request default 60 s.
pub const IDLE_TIMEOUT_DOWNSTREAM: Duration = secs(60);
/// HTTP/2 with prior knowledge on plain listeners: off, as in nginx and Envoy (a plain listener
/// meets HTTP/1.1 clients and health checkers far more often than h2c ones).
pub const H2C: bool = false;
pub const REDIRECT_TO_HTTPS: bool = false;
/// HTTP/2 offered by ALPN on TLS listeners, HTTP/1.1 beside it: what every browser negotiates.
pub const TLS_H2: bool = true;
/// The de facto name (Heroku, nginx's `$request_id` setups, Envoy's `x-request-id`).
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// Pools speak plain HTTP unless they say `tls = true`.
pub const UPSTREAM_TLS: bool = false;
/// Towards upstreams HTTP/1.1 unless a TLS pool offers HTTP/2: keep-alive HTTP/1.1 is what every
/// origin serves well, and usher's retries and measurements are per request either way.
pub const UPSTREAM_H2: bool = false;
/// A route's answers are judged whole unless it says they stream.
pub const STREAMING: bool = false;
/// Query strings carry tokens, e-mail addresses and search terms: journeys keep the path only.
pub const KEEP_QUERY: bool = false;

// [access_log]
pub const ACCESS_LOG_FORMAT: &str = "json";
/// Lines held for the writer: a second of a busy proxy, about 25 MiB at most.
pub const ACCESS_LOG_QUEUE: i64 = 65_536;
/// Query strings often carry tokens and personal data: left out unless asked for.
pub const ACCESS_LOG_QUERY: bool = false;
/// Descriptors kept out of the downstream connections' share of the open-files limit, besides the
/// idle upstream pool: the admin API's 64 connections, 2 x 32 refused connections lingering to
/// read their 503, and 128 for sinks, logs, the snapshot, health checks and the runtime's own.
pub const FD_RESERVE: u64 = 256;
/// Connections the admin API holds at once (not configurable: its callers are a few people and
/// scrapers, and it must never eat the proxy's descriptors).
pub const ADMIN_MAX_CONNECTIONS: usize = 64;

// [identity]
pub const CUSTOMER_ID_HEADER: &str = "x-customer-id";
pub const DEFAULT_TIER: &str = "standard";
pub const MAX_ID_LEN: i64 = 128;
/// The claim of a customer token that holds the customer id.
pub const JWT_CUSTOMER_CLAIM: &str = "sub";
/// Clock skew allowed on a token's `exp` and `nbf`.
pub const JWT_LEEWAY: Duration = secs(30);

// [experience]
pub const HALF_LIFE: Duration = secs(600);
pub const DEGRADED_BELOW: f64 = 70.0;
pub const TRACK_MAX: i64 = 1_000_000;
pub const JOURNEY_LEN: i64 = 16;
pub const MIN_REQUESTS: i64 = 3;
pub const SUMMARY_INTERVAL: Duration = secs(5);

// [state]
/// Relative to the configuration file's folder.
pub const STATE_DIR: &str = "usher-state";

// [[pools]]
pub const CONNECT_TIMEOUT: Duration = secs(1);
pub const READ_TIMEOUT: Duration = secs(10);
pub const WRITE_TIMEOUT: Duration = secs(10);
pub const IDLE_TIMEOUT: Duration = secs(60);
/// How often a pool's host names are looked up again.
pub const RESOLVE_INTERVAL: Duration = secs(30);
pub const CHECK_PATH: &str = "/healthz";
pub const CHECK_INTERVAL: Duration = secs(2);
pub const CHECK_TIMEOUT: Duration = secs(1);
pub const CHECK_RISE: i64 = 2;
pub const CHECK_FALL: i64 = 3;

// [[routes]]
pub const TARGET: Duration = ms(500);

// [outlier]: Envoy's consecutive_5xx, ejection times, max_ejection_percent and panic threshold.
pub const CONSECUTIVE_FAILURES: i64 = 5;
/// nginx's `max_fails = 1`: nothing is listening, there is no doubt to give the benefit of.
pub const CONNECT_FAILURES: i64 = 1;
/// Envoy's failure_percentage_threshold is 85%, meant for large fleets; a checkout that fails one
/// time in four is already losing sales.
pub const FAILURE_RATE: f64 = 0.25;
pub const OUTLIER_MIN_REQUESTS: i64 = 20;
pub const MEMORY: i64 = 10;
pub const LATENCY_FACTOR: f64 = 3.0;
pub const LATENCY_MIN_DELTA: Duration = ms(50);
pub const LATENCY_MIN_SAMPLES: i64 = 5;
pub const SAMPLE_INTERVAL: Duration = ms(500);
pub const BASE_EJECTION: Duration = secs(30);
pub const MAX_EJECTION: Duration = secs(300);
pub const JITTER: f64 = 0.1;
pub const MAX_EJECTED_SHARE: f64 = 0.1;
pub const PROBE_SUCCESSES: i64 = 3;
pub const PANIC_BELOW: f64 = 0.5;
/// An upstream whose route's requests go unanswered for 4 x that route's p99 (at least a second)
/// while two or more wait is taken as hung: a hung origin is avoided within about a second
/// instead of after the read timeout.
pub const HUNG_FACTOR: f64 = 4.0;
pub const HUNG_FLOOR: Duration = secs(1);
pub const SWEEP_INTERVAL: Duration = ms(250);

// [retries]: Finagle's and Linkerd's budget.
pub const RETRIES_ENABLED: bool = true;
pub const BUDGET_RATIO: f64 = 0.2;
pub const BUDGET_MIN_PER_SEC: f64 = 10.0;
pub const BUDGET_WINDOW: Duration = secs(10);

// [balancing]: linkerd2-proxy's decay and default RTT.
pub const DECAY: Duration = secs(10);
pub const DEFAULT_RTT: Duration = ms(30);
pub const FAILURE_PENALTY: Duration = secs(1);

// [protection]
pub const RESCUE_FOR: Duration = secs(600);
pub const TRY_TIMEOUT_FACTOR: f64 = 4.0;
pub const TRY_TIMEOUT_FLOOR: Duration = ms(50);

// [events]
pub const COOLDOWN: Duration = secs(600);
/// `recover_above` defaults to `degraded_below` plus this.
pub const RECOVER_MARGIN: f64 = 10.0;
pub const RECENT_EVENTS: i64 = 1000;
pub const FUNNEL_TRACK_MAX: i64 = 100_000;
/// Ended journeys (completed or abandoned) kept for the funnel report (`GET /funnels`).
pub const FUNNEL_HISTORY_MAX: i64 = 100_000;
/// Relative to the configuration file's folder.
pub const SPOOL_DIR: &str = "usher-spool";
pub const SLO_MIN_REQUESTS: i64 = 20;
pub const SLO_REALERT: Duration = secs(3600);
/// Events of one type let out per second, at most.
pub const EVENT_BUDGET_PER_SEC: f64 = 100.0;

// [[events.sinks]]
pub const SINK_QUEUE: i64 = 10_000;
pub const SINK_TIMEOUT: Duration = secs(5);
pub const MAX_SPOOL_BYTES: i64 = 1 << 30;
pub const JSONL_PATH: &str = "usher-events.jsonl";
pub const JSONL_MAX_BYTES: i64 = 100 << 20;
pub const JSONL_KEEP: i64 = 5;
pub const WEBHOOK_BATCH: i64 = 100;
/// The content type of a webhook body rendered from a `template`.
pub const WEBHOOK_TEMPLATE_CONTENT_TYPE: &str = "application/json";
pub const NATS_STREAM: &str = "USHER_EVENTS";
pub const NATS_SUBJECT: &str = "usher.events";
/// Events per JetStream round of publishes.
pub const NATS_BATCH: usize = 100;

// [[funnels]]
pub const ABANDON_AFTER: Duration = secs(1800);

// [privacy]
/// An idle customer's journey is forgotten after a month: long enough to call back about a
/// failed order, short enough not to keep a history of everyone who ever visited.
pub const RETENTION: Duration = secs(30 * 24 * 3600);

// [struggle]
/// Three of the same request within 15 s: a reload or a button pressed until something happens.
pub const STRUGGLE_LOOP_COUNT: u8 = 3;
pub const STRUGGLE_LOOP_WINDOW: Duration = secs(15);
pub const STRUGGLE_RETRY_WINDOW: Duration = secs(10);
/// Three refusals of a form on one route within a minute: someone who cannot get past it.
pub const STRUGGLE_FORM_LOOP_COUNT: u8 = 3;
pub const STRUGGLE_FORM_LOOP_WINDOW: Duration = secs(60);
/// Marked and raised, but the score stays a measure of speed and errors unless asked.
pub const STRUGGLE_IN_SCORE: bool = false;

/// Every documented default as `(key path, value as written in TOML)`: what the example config's
/// "Default ..." comments and the README's table must say. Checked by `config::tests`.
pub const DOCUMENTED: &[(&str, &str)] = &[
    ("server.listen", "[\"127.0.0.1:8080\"]"),
    ("server.admin", "\"127.0.0.1:9190\""),
    ("server.threads", "1"),
    ("server.grace_period", "\"5s\""),
    ("server.max_header_bytes", "65536"),
    ("server.upstream_idle_connections", "128"),
    ("server.max_connections", "16384"),
    ("server.head_timeout", "\"10s\""),
    ("server.idle_timeout", "\"60s\""),
    ("server.h2c", "false"),
    ("server.redirect_to_https", "false"),
    ("server.request_id_header", "\"x-request-id\""),
    ("routes.streaming", "false"),
    ("routes.keep_query", "false"),
    ("privacy.retention", "\"30d\""),
    ("pools.tls", "false"),
    ("access_log.format", "\"json\""),
    ("access_log.queue", "65536"),
    ("access_log.query", "false"),
    ("identity.default_tier", "\"standard\""),
    ("identity.max_id_len", "128"),
    ("experience.half_life", "\"10m\""),
    ("experience.degraded_below", "70"),
    ("experience.track_max", "1000000"),
    ("experience.journey_len", "16"),
    ("experience.min_requests", "3"),
    ("experience.summary_interval", "\"5s\""),
    ("state.dir", "\"usher-state\""),
    ("protection.protected_anywhere", "false"),
    ("protection.critical_for_everyone", "false"),
    ("protection.rescue_for", "\"10m\""),
    ("protection.try_timeout_factor", "4"),
    ("protection.try_timeout_floor", "\"50ms\""),
    ("events.cooldown", "\"10m\""),
    ("events.recent", "1000"),
    ("events.funnel_track_max", "100000"),
    ("events.funnel_history_max", "100000"),
    ("events.spool_dir", "\"usher-spool\""),
    ("events.slo_min_requests", "20"),
    ("events.slo_realert", "\"1h\""),
    ("events.budget_per_second", "100"),
    ("events.verified_only", "[]"),
    ("identity.trust_any_peer", "false"),
    ("balancing.decay", "\"10s\""),
    ("balancing.default_rtt", "\"30ms\""),
    ("balancing.failure_penalty", "\"1s\""),
    ("outlier.consecutive_failures", "5"),
    ("outlier.connect_failures", "1"),
    ("outlier.failure_rate", "0.25"),
    ("outlier.min_requests", "20"),
    ("outlier.memory", "10"),
    ("outlier.latency_factor", "3.0"),
    ("outlier.latency_min_delta", "\"50ms\""),
    ("outlier.latency_min_samples", "5"),
    ("outlier.sample_interval", "\"500ms\""),
    ("outlier.base_ejection", "\"30s\""),
    ("outlier.max_ejection", "\"300s\""),
    ("outlier.jitter", "0.1"),
    ("outlier.max_ejected_share", "0.1"),
    ("outlier.probe_successes", "3"),
    ("outlier.panic_below", "0.5"),
    ("outlier.hung_factor", "4.0"),
    ("outlier.hung_floor", "\"1s\""),
    ("outlier.sweep_interval", "\"250ms\""),
    ("retries.enabled", "true"),
    ("retries.budget_ratio", "0.2"),
    ("retries.budget_min_per_sec", "10"),
    ("retries.budget_window", "\"10s\""),
    ("pools.connect_timeout", "\"1s\""),
    ("pools.read_timeout", "\"10s\""),
    ("pools.write_timeout", "\"10s\""),
    ("pools.idle_timeout", "\"60s\""),
    ("pools.resolve_interval", "\"30s\""),
    ("routes.critical", "false"),
    ("routes.target", "\"500ms\""),
    ("struggle.loop_count", "3"),
    ("struggle.loop_window", "\"15s\""),
    ("struggle.retry_window", "\"10s\""),
    ("struggle.form_loop_count", "3"),
    ("struggle.form_loop_window", "\"60s\""),
    ("struggle.in_score", "false"),
];
