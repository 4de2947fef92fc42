//! JSON views of usher's state: customers and journey steps with names instead of indices, times as
//! RFC 3339. Shared by the admin API and the follow-up events, so that a customer reads the same in
//! `GET /customers/{id}` and in an event.

use crate::config::TierId;
use crate::engine::Usher;
use crate::experience::{CustomerSnapshot, Step};
use serde::Serialize;
use std::time::{Duration, UNIX_EPOCH};

pub fn rfc3339(ms: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

pub fn tier_name(usher: &Usher, t: TierId) -> String {
    usher
        .config()
        .tiers
        .get(t as usize)
        .map_or_else(|| "?".to_string(), |t| t.name.clone())
}

#[derive(Serialize)]
pub struct CustomerJson {
    pub id: String,
    pub tier: String,
    pub score: f64,
    pub state: &'static str,
    pub requests: u32,
    pub errors: u32,
    pub frustrated: u32,
    pub first_seen: String,
    pub last_seen: String,
    pub journey: Vec<StepJson>,
}

#[derive(Serialize)]
pub struct StepJson {
    pub at: String,
    pub route: Option<String>,
    pub method: &'static str,
    pub path: String,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub path_truncated: bool,
    pub status: u16,
    pub latency_ms: f64,
    pub upstream: Option<String>,
    pub outcome: &'static str,
}

impl CustomerJson {
    pub fn new(usher: &Usher, c: &CustomerSnapshot) -> Self {
        CustomerJson {
            id: c.id.clone(),
            tier: tier_name(usher, c.tier),
            score: (c.score * 10.0).round() / 10.0,
            state: if usher.is_degraded(c.score) {
                "degraded"
            } else {
                "ok"
            },
            requests: c.requests,
            errors: c.errors,
            frustrated: c.frustrated,
            first_seen: rfc3339(c.first_seen_ms),
            last_seen: rfc3339(c.last_seen_ms),
            journey: c.journey.iter().map(|s| StepJson::new(usher, s)).collect(),
        }
    }
}

impl StepJson {
    pub fn new(usher: &Usher, s: &Step) -> Self {
        let (path, path_truncated) = s.path();
        let cfg = usher.config();
        StepJson {
            at: rfc3339(s.at_ms()),
            route: s
                .route()
                .and_then(|r| cfg.routes.get(r as usize))
                .map(|r| r.name.clone()),
            method: s.method(),
            path: path.to_string(),
            path_truncated,
            status: s.status(),
            latency_ms: s.latency_us() as f64 / 1000.0,
            upstream: s
                .upstream()
                .and_then(|u| cfg.upstreams.get(u as usize))
                .map(|a| a.to_string()),
            outcome: s.outcome().as_str(),
        }
    }
}
