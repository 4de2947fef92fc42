//! `GET /now`: what the live page's "now" view polls every two seconds, in one answer: the worst
//! customers now, how many are degraded in each tier, each route's Apdex and error-budget burn,
//! each upstream's state and why, and the latest events.
//!
//! One scan of the store per call (the same as `GET /customers?worst=N`): degraded counts come
//! from the [`MAX_WORST`] lowest scores, so past that many they are a floor, and say so.

use super::api::{upstreams, Reply, MAX_WORST};
use crate::engine::Usher;
use crate::time::rfc3339;
use serde_json::{json, Value};
use std::collections::BTreeMap;

/// Customers the "now" view lists.
pub const WORST_SHOWN: usize = 10;
/// Events the "now" view lists.
pub const EVENTS_SHOWN: usize = 15;

pub(crate) fn now(usher: &Usher, now_ms: u64) -> Reply {
    let g = usher.generation();
    let st = usher.state();
    let min = g.config.experience.min_requests;
    let lowest = st
        .store
        .worst(MAX_WORST, min, now_ms, &g.store_settings().model);
    let mut degraded: BTreeMap<String, usize> =
        g.config.tiers.iter().map(|t| (t.name.clone(), 0)).collect();
    for c in lowest.iter().filter(|c| g.is_degraded(c.score, c.requests)) {
        *degraded.entry(st.tier_name(c.tier)).or_default() += 1;
    }
    let worst: Vec<Value> = lowest
        .iter()
        .take(WORST_SHOWN)
        .map(|c| {
            let last = c
                .journey
                .last()
                .map(|s| crate::views::StepJson::new(st, &g, s));
            json!({
                "id": c.id,
                "tier": st.tier_name(c.tier),
                "score": (c.score * 10.0).round() / 10.0,
                "state": crate::views::state_of(&g, c.score, c.requests),
                "requests": c.requests,
                "errors": c.errors,
                "frustrated": c.frustrated,
                "last_seen": rfc3339(c.last_seen_ms),
                "last_step": last,
            })
        })
        .collect();
    let routes: Vec<Value> = g
        .config
        .routes
        .iter()
        .enumerate()
        .filter_map(|(i, r)| {
            let rs = g.route_state(i as u16)?;
            let v = rs.stats.view(now_ms);
            let burn = r.slo.map(|objective| {
                let w = rs.slo.lock();
                let (fast, fast_n) = w.burn(objective, 5, now_ms);
                let (slow, slow_n) = w.burn(objective, 60, now_ms);
                json!({
                    "objective": objective,
                    "burn_rate_5m": (fast * 100.0).round() / 100.0,
                    "requests_5m": fast_n,
                    "burn_rate_1h": (slow * 100.0).round() / 100.0,
                    "requests_1h": slow_n,
                })
            });
            Some(json!({
                "name": r.name,
                "critical": r.critical,
                "target_ms": r.target.as_secs_f64() * 1000.0,
                "apdex": rs.stats.window_apdex(r.target, now_ms).map(|a| (a * 1000.0).round() / 1000.0),
                "recent": v.recent,
                "p99_ms": v.p99_ms,
                "failure_rate": v.failure_rate,
                "slo": burn,
            }))
        })
        .collect();
    let events: Vec<Value> = st
        .events
        .recent(EVENTS_SHOWN)
        .iter()
        .map(|e| serde_json::to_value(e.as_ref()).unwrap_or_default())
        .collect();
    let ups = upstreams(usher, now_ms);
    Reply::json(
        200,
        &json!({
            "at": rfc3339(now_ms),
            "min_requests": min,
            "tracked": st.store.len(),
            "worst": worst,
            "degraded_by_tier": degraded,
            "degraded_counts_are_a_floor": lowest.len() >= MAX_WORST,
            "routes": routes,
            "upstreams": ups["upstreams"],
            "pools": ups["pools"],
            "events": events,
        }),
    )
}
