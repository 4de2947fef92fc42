//! `GET /funnels?window=1h`: per funnel and step, who reached it and who dropped there in the
//! window, split by trouble and by tier, with the customer ids behind each number (see
//! `crate::events::funnels::Funnels::report`). What the live page's funnel view draws.

use super::api::Reply;
use crate::engine::Usher;
use crate::events::funnels::{Cell, Split, REPORT_IDS_MAX};
use crate::state::State;
use crate::time::rfc3339;
use crate::urlencoded;
use serde_json::{json, Map, Value};
use std::time::Duration;

/// The window when none is asked for.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(3600);
/// The shortest window one can ask for: journeys are timed to the millisecond, but a window
/// under a second would be a typo (`500ms` for `500s`), not a question.
pub const MIN_WINDOW: Duration = Duration::from_secs(1);
/// The longest window one can ask for.
pub const MAX_WINDOW: Duration = Duration::from_secs(30 * 24 * 3600);

fn cell(c: &Cell) -> Value {
    json!({
        "count": c.count,
        "customers": c.customers.iter().map(|c| c.as_str()).collect::<Vec<_>>(),
        "more": c.count.saturating_sub(c.customers.len()),
    })
}

fn split(st: &State, s: &Split) -> Value {
    let by_tier: Map<String, Value> = s
        .by_tier
        .iter()
        .map(|(t, c)| (st.tier_name(*t), cell(c)))
        .collect();
    json!({
        "count": s.all.count,
        "customers": s.all.customers.iter().map(|c| c.as_str()).collect::<Vec<_>>(),
        "more": s.all.count.saturating_sub(s.all.customers.len()),
        "after_trouble": cell(&s.after_trouble),
        "without_trouble": cell(&s.without_trouble),
        "by_tier": by_tier,
    })
}

pub(crate) fn funnels(usher: &Usher, query: Option<&str>, now_ms: u64) -> Reply {
    let raw = urlencoded::query_param(query.unwrap_or(""), "window");
    let window = match raw.as_deref().map(humantime::parse_duration) {
        None => DEFAULT_WINDOW,
        Some(Ok(d)) if (MIN_WINDOW..=MAX_WINDOW).contains(&d) => d,
        Some(_) => {
            return Reply::error(
                400,
                "window must be a duration from 1s to 30d, e.g. ?window=15m or ?window=1h",
            )
        }
    };
    let g = usher.generation();
    let st = usher.state();
    let from = now_ms.saturating_sub(crate::time::millis(window));
    let reports = st.events.funnels.report(&g.funnels, from, now_ms);
    let list: Vec<Value> = reports
        .iter()
        .filter_map(|r| {
            let def = g.funnels.get(r.funnel)?;
            let steps: Vec<Value> = def
                .steps
                .iter()
                .zip(&r.steps)
                .map(|(s, sr)| {
                    json!({
                        "name": s.name,
                        "reached": split(st, &sr.reached),
                        "dropped": split(st, &sr.dropped),
                    })
                })
                .collect();
            Some(json!({
                "name": def.name,
                "abandon_after": humantime::format_duration(def.abandon_after).to_string(),
                "completed": r.completed,
                "abandoned": r.abandoned,
                "in_progress": r.in_progress,
                "steps": steps,
            }))
        })
        .collect();
    Reply::json(
        200,
        &json!({
            "window": humantime::format_duration(window).to_string(),
            "from": rfc3339(from),
            "to": rfc3339(now_ms),
            "ids_listed_at_most": REPORT_IDS_MAX,
            "history": {
                "kept": st.events.funnels.history_len(),
                "max": g.config.events.funnel_history_max,
            },
            "funnels": list,
        }),
    )
}
