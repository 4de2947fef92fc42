//! Settings shared by the configuration (which validates and fills them) and by the code that runs
//! on them (upstream health, balancing, retry budgets). Plain values with defaults from
//! [`crate::defaults`]; a leaf beside it, so that `config` and `upstream` both import these and
//! neither imports the other.

use crate::defaults as d;
use std::time::Duration;

/// Passive health: when real traffic ejects an upstream, and how it comes back.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OutlierSettings {
    pub consecutive_failures: u32,
    /// Refused or unreachable connections in a row that eject.
    pub connect_failures: u32,
    pub failure_rate: f64,
    /// Attempts seen since (re)admission before the rate and latency rules judge an upstream.
    pub min_requests: u32,
    /// How many recent attempts the failure-rate and latency averages weigh (the exponential
    /// average's weight per attempt is 1/memory).
    pub memory: u32,
    pub latency_factor: f64,
    pub latency_min_delta: Duration,
    /// Successful answers before the latency rule judges an upstream (or uses it as a peer).
    pub latency_min_samples: u32,
    /// A serving upstream that balancing has left alone this long gets one ordinary idempotent
    /// request, so that evidence about it keeps coming either way.
    pub sample_interval: Duration,
    pub base_ejection: Duration,
    pub max_ejection: Duration,
    /// Extra ejection time, as a share of the ejection time, drawn at random up to this.
    pub jitter: f64,
    pub max_ejected_share: f64,
    pub probe_successes: u32,
    pub panic_below: f64,
    /// Silence on a route that means its upstream hangs: this many times the route's p99 ...
    pub hung_factor: f64,
    /// ... and at least this long.
    pub hung_floor: Duration,
}

impl Default for OutlierSettings {
    fn default() -> Self {
        OutlierSettings {
            consecutive_failures: d::CONSECUTIVE_FAILURES as u32,
            connect_failures: d::CONNECT_FAILURES as u32,
            failure_rate: d::FAILURE_RATE,
            min_requests: d::OUTLIER_MIN_REQUESTS as u32,
            memory: d::MEMORY as u32,
            latency_factor: d::LATENCY_FACTOR,
            latency_min_delta: d::LATENCY_MIN_DELTA,
            latency_min_samples: d::LATENCY_MIN_SAMPLES as u32,
            sample_interval: d::SAMPLE_INTERVAL,
            base_ejection: d::BASE_EJECTION,
            max_ejection: d::MAX_EJECTION,
            jitter: d::JITTER,
            max_ejected_share: d::MAX_EJECTED_SHARE,
            probe_successes: d::PROBE_SUCCESSES as u32,
            panic_below: d::PANIC_BELOW,
            hung_factor: d::HUNG_FACTOR,
            hung_floor: d::HUNG_FLOOR,
        }
    }
}

/// The peak-EWMA latency estimate behind balancing.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EwmaSettings {
    /// Time constant of the decay.
    pub decay: Duration,
    /// The estimate before any observation.
    pub default_rtt: Duration,
    /// What a failure counts as, at least.
    pub failure_penalty: Duration,
}

impl Default for EwmaSettings {
    fn default() -> Self {
        EwmaSettings {
            decay: d::DECAY,
            default_rtt: d::DEFAULT_RTT,
            failure_penalty: d::FAILURE_PENALTY,
        }
    }
}

/// How a listener treats its downstream connections: how many it holds, how long a request head may
/// take to arrive, and how long a kept-alive connection may sit idle (or a client may take to accept
/// the next bytes of a response).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    pub max: usize,
    pub head_timeout: Duration,
    pub idle_timeout: Duration,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            max: d::MAX_CONNECTIONS as usize,
            head_timeout: d::HEAD_TIMEOUT,
            idle_timeout: d::IDLE_TIMEOUT_DOWNSTREAM,
        }
    }
}

/// The retry budget of a pool.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BudgetSettings {
    pub ratio: f64,
    pub min_per_sec: f64,
    pub window: Duration,
}

impl Default for BudgetSettings {
    fn default() -> Self {
        BudgetSettings {
            ratio: d::BUDGET_RATIO,
            min_per_sec: d::BUDGET_MIN_PER_SEC,
            window: d::BUDGET_WINDOW,
        }
    }
}

/// An active health check: GET `path` every `interval`, 2xx/3xx within `timeout` is good; `rise`
/// good ones in a row bring an upstream back, `fall` bad ones take it out.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthCheck {
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
    pub rise: u32,
    pub fall: u32,
}

/// The keys customer tokens must be signed with, as read from the configuration's key file: one
/// key for one algorithm, or a JWKS set whose keys are chosen by the token's `kid`.
#[derive(Clone)]
pub struct JwtKeys {
    /// Where they were read from.
    pub file: std::path::PathBuf,
    pub keys: Vec<JwtKey>,
}

#[derive(Clone)]
pub struct JwtKey {
    /// The `kid` a token names to be checked with this key; `None` for a single key file.
    pub kid: Option<String>,
    pub algorithm: jsonwebtoken::Algorithm,
    pub key: jsonwebtoken::DecodingKey,
}

impl std::fmt::Debug for JwtKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let algs: Vec<String> = self
            .keys
            .iter()
            .map(|k| {
                format!(
                    "{:?}{}",
                    k.algorithm,
                    k.kid
                        .as_deref()
                        .map(|k| format!(" kid {k}"))
                        .unwrap_or_default()
                )
            })
            .collect();
        write!(f, "JwtKeys({}: {})", self.file.display(), algs.join(", "))
    }
}

/// Struggle signals (`crate::experience::struggle`): `[struggle]` (defaults in `crate::defaults`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StruggleRules {
    /// This many of the same request (this one included) within `loop_window` is a loop.
    pub loop_count: u8,
    pub loop_window: Duration,
    /// The same request within this long of a failed or frustrated one is a retry after failure.
    pub retry_window: Duration,
    /// This many 4xx answers to POSTs on one route (this one included) within
    /// `form_loop_window` is a form loop.
    pub form_loop_count: u8,
    pub form_loop_window: Duration,
    /// A struggling step counts as frustrated in the score, whatever its latency.
    pub in_score: bool,
}

impl Default for StruggleRules {
    fn default() -> Self {
        StruggleRules {
            loop_count: d::STRUGGLE_LOOP_COUNT,
            loop_window: d::STRUGGLE_LOOP_WINDOW,
            retry_window: d::STRUGGLE_RETRY_WINDOW,
            form_loop_count: d::STRUGGLE_FORM_LOOP_COUNT,
            form_loop_window: d::STRUGGLE_FORM_LOOP_WINDOW,
            in_score: d::STRUGGLE_IN_SCORE,
        }
    }
}
