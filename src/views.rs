//! JSON views of usher's state: customers and journey steps with names instead of ids, times as
//! RFC 3339. Shared by the admin API and the follow-up events, so that a customer reads the same in
//! `GET /customers/{id}` and in an event.
//!
//! Names come from the interned tables of the state (a step served by a route that a reload removed
//! still names it); judgements that depend on the configuration (degraded or not) from the
//! generation in force.

use crate::experience::{CustomerSnapshot, Step};
use crate::generation::Generation;
use crate::state::State;
use crate::time::rfc3339;
use serde::Serialize;

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
    /// The request's id, as sent to the upstream: it finds the step in the application's logs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// The id was longer than a step keeps: this is its beginning.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub request_id_truncated: bool,
    /// The customer's score right after this step.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub score: Option<u8>,
    /// The target T of the route that served it, in the configuration in force.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_ms: Option<f64>,
    /// What went wrong with this step, for someone reading the journey: `failed` (a 5xx, no
    /// connection, a timeout), `slow` (past the route's target T), `frustrated` (a request that
    /// did not fail but took past 4T), each as judged when it was recorded, and the struggle
    /// signals (`loop`, `retry`, `form_loop`).
    pub marks: Vec<&'static str>,
}

/// "degraded" or "ok" for a customer of `requests` requests scoring `score` under generation `g`.
pub fn state_of(g: &Generation, score: f64, requests: u32) -> &'static str {
    if g.is_degraded(score, requests) {
        "degraded"
    } else {
        "ok"
    }
}

impl CustomerJson {
    pub fn new(st: &State, g: &Generation, c: &CustomerSnapshot) -> Self {
        CustomerJson {
            id: c.id.clone(),
            tier: st.tier_name(c.tier),
            score: (c.score * 10.0).round() / 10.0,
            state: state_of(g, c.score, c.requests),
            requests: c.requests,
            errors: c.errors,
            frustrated: c.frustrated,
            first_seen: rfc3339(c.first_seen_ms),
            last_seen: rfc3339(c.last_seen_ms),
            journey: c.journey.iter().map(|s| StepJson::new(st, g, s)).collect(),
        }
    }
}

impl StepJson {
    pub fn new(st: &State, g: &Generation, s: &Step) -> Self {
        let (path, path_truncated) = s.path();
        let route = s
            .route()
            .and_then(|r| st.route_names.get(r))
            .map(|r| r.to_string());
        let target = route
            .as_deref()
            .and_then(|name| g.config.routes.iter().find(|r| r.name == name))
            .map(|r| r.target);
        // As judged when it was recorded, against the target then: a reload that moved the
        // target does not rewrite what the customer went through. A failure is marked as failed,
        // not also as frustrated.
        let failed = s.outcome().is_failure();
        let mut marks = Vec::new();
        if failed {
            marks.push("failed");
        }
        if s.slow() {
            marks.push("slow");
        }
        if s.frustrated() && !failed {
            marks.push("frustrated");
        }
        marks.extend(s.marks().names());
        let (request_id, request_id_truncated) = s.request_id().unzip();
        StepJson {
            at: rfc3339(s.at_ms()),
            route,
            method: s.method(),
            path: path.to_string(),
            path_truncated,
            status: s.status(),
            latency_ms: s.latency_us() as f64 / 1000.0,
            upstream: s
                .upstream()
                .and_then(|u| st.upstreams.addrs().get(u))
                .map(|a| a.to_string()),
            outcome: s.outcome().as_str(),
            request_id,
            request_id_truncated: request_id_truncated.unwrap_or(false),
            score: s.score(),
            target_ms: target.map(|t| t.as_secs_f64() * 1000.0),
            marks,
        }
    }
}
