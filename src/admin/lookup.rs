//! One customer, as the live page's lookup shows them: the customer view every reader shares
//! (`crate::views`), and beside it what only the admin API needs: where they are in each funnel
//! ("reached pay, 12 min ago, after 2 errors"), whether and why their requests are protected,
//! and the follow-up their tier calls for. Each step says its route's target itself.

use super::api::Reply;
use crate::engine::Usher;
use crate::events::funnels::{Ending, FunnelDef, Outcome, Progress};
use crate::experience::Step;
use crate::time::rfc3339;
use crate::views::CustomerJson;
use serde::Serialize;

/// Ended journeys of one customer looked at for their funnel position.
const HISTORY_LOOKED_AT: usize = 32;

#[derive(Serialize)]
struct Lookup {
    #[serde(flatten)]
    customer: CustomerJson,
    /// Where they are, or last were, in each funnel.
    funnels: Vec<FunnelPosition>,
    protection: ProtectionView,
    /// What the customer's tier says a person should do when they had trouble.
    follow_up: Option<String>,
    /// The score under which a customer is degraded (`experience.degraded_below`): the line on
    /// the page's score graph.
    degraded_below: f64,
}

#[derive(Serialize, Debug, PartialEq)]
pub(crate) struct FunnelPosition {
    funnel: String,
    /// in_progress, completed or abandoned.
    state: &'static str,
    furthest_step: Option<String>,
    furthest_step_index: usize,
    steps: usize,
    /// When the furthest step was reached (in progress: its latest request in the journey, or
    /// the last request in the funnel), or when the journey ended.
    at: String,
    errors: u16,
    frustrated: u16,
    after_trouble: bool,
    /// "reached pay, 12 min ago, after 2 errors".
    summary: String,
}

#[derive(Serialize)]
struct ProtectionView {
    /// Whether the next request on some route is protected: tier, critical routes or rescue.
    protected: bool,
    /// Where: "critical routes", "every route", or none.
    #[serde(rename = "where")]
    scope: Option<&'static str>,
    /// Why, in words.
    why: String,
    tier_protected: bool,
    rescued: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    rescued_until: Option<String>,
}

/// The answer about someone usher holds nothing about.
pub(crate) const NOT_TRACKED: &str = "customer not tracked (never seen, forgotten, or evicted)";

/// Customer `id` (already resolved from a pseudonym by the caller, who audits under it).
pub(crate) fn customer(usher: &Usher, id: &str, now_ms: u64) -> Reply {
    let g = usher.generation();
    let st = usher.state();
    let Some(c) = st.store.get(id, now_ms, &g.store_settings().model) else {
        return Reply::error(404, NOT_TRACKED);
    };
    let tier_name = st.tier_name(c.tier);
    let tier = g.config.tiers.iter().find(|t| t.name == tier_name);
    let funnels = positions(
        &g.funnels,
        &st.events.funnels.progress_detail(&g.funnels, id),
        &st.events.funnels.history_of(id, HISTORY_LOOKED_AT),
        &c.journey,
        now_ms,
    );
    let p = &g.config.protection;
    let tier_protected = tier.is_some_and(|t| t.protected);
    let rescued_until_ms = u64::from(c.rescued_until_s) * 1000;
    let rescued = rescued_until_ms > now_ms;
    let scope = if tier_protected && p.protected_anywhere {
        Some("every route")
    } else if tier_protected || p.critical_for_everyone || rescued {
        Some(if rescued {
            "every route"
        } else {
            "critical routes"
        })
    } else {
        None
    };
    let mut why = Vec::new();
    if tier_protected {
        why.push(format!(
            "tier {tier_name} is protected on {}",
            if p.protected_anywhere {
                "every route"
            } else {
                "critical routes"
            }
        ));
    }
    if p.critical_for_everyone {
        why.push("everyone is protected on critical routes".to_string());
    }
    if rescued {
        why.push(format!(
            "rescued until {}: their score fell below {}",
            rfc3339(rescued_until_ms),
            p.rescue_below.unwrap_or_default()
        ));
    }
    let protection = ProtectionView {
        protected: scope.is_some(),
        scope,
        why: if why.is_empty() {
            "not protected: an ordinary tier, and no rescue running".to_string()
        } else {
            why.join("; ")
        },
        tier_protected,
        rescued,
        rescued_until: (c.rescued_until_s > 0).then(|| rfc3339(rescued_until_ms)),
    };
    let view = Lookup {
        customer: CustomerJson::new(st, &g, &c),
        funnels,
        protection,
        follow_up: tier.and_then(|t| t.follow_up.clone()),
        degraded_below: g.config.experience.degraded_below,
    };
    Reply::json(200, &view)
}

/// The recent events about the customer asked for as `asked`, which the caller resolved to the
/// tracked id `resolved` (`None`: a pseudonym of nobody tracked, which still names their
/// events), newest first, at most `limit`. 404 for someone neither tracked nor in any of them.
pub(crate) fn events(usher: &Usher, asked: &str, resolved: Option<&str>, limit: usize) -> Reply {
    let subject = match resolved {
        Some(id) => usher
            .generation()
            .config
            .privacy
            .pseudonyms
            .of(id)
            .into_owned(),
        None => asked.to_string(),
    };
    let all = usher.state().events.recent(usize::MAX);
    let list: Vec<&crate::events::model::CloudEvent> = all
        .iter()
        .filter(|e| e.subject == subject)
        .take(limit)
        .map(|e| e.as_ref())
        .collect();
    let tracked = resolved.is_some_and(|id| usher.state().store.contains(id));
    if list.is_empty() && !tracked {
        return Reply::error(404, NOT_TRACKED);
    }
    let id = resolved.unwrap_or(asked);
    Reply::json(200, &serde_json::json!({ "customer": id, "events": list }))
}

/// "12 min ago", "40 s ago", "3 h ago".
fn ago(now_ms: u64, at_ms: u64) -> String {
    let s = now_ms.saturating_sub(at_ms) / 1000;
    match s {
        0..=59 => format!("{s} s ago"),
        60..=5399 => format!("{} min ago", s / 60),
        _ => format!("{} h ago", s / 3600),
    }
}

/// ", after 2 errors and 1 frustrated request", or "".
fn trouble(errors: u16, frustrated: u16) -> String {
    let plural = |n: u16, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
    match (errors, frustrated) {
        (0, 0) => String::new(),
        (e, 0) => format!(", after {}", plural(e, "error", "errors")),
        (0, f) => format!(
            ", after {}",
            plural(f, "frustrated request", "frustrated requests")
        ),
        (e, f) => format!(
            ", after {} and {}",
            plural(e, "error", "errors"),
            plural(f, "frustrated request", "frustrated requests")
        ),
    }
}

/// The latest request of `journey` that is step `step` of funnel `def`.
fn reached_at(def: &FunnelDef, step: usize, journey: &[Step]) -> Option<u64> {
    let s = def.steps.get(step)?;
    journey
        .iter()
        .rev()
        .find(|j| {
            http::Method::from_bytes(j.method().as_bytes()).is_ok_and(|m| s.matches(&m, j.path().0))
        })
        .map(|j| j.at_ms())
}

/// Where a customer is in each funnel: in progress where they are in one now, else how their
/// latest journey through it ended, if the history still has it.
pub(crate) fn positions(
    defs: &[FunnelDef],
    progress: &[(usize, Progress)],
    history: &[Outcome],
    journey: &[Step],
    now_ms: u64,
) -> Vec<FunnelPosition> {
    let mut out = Vec::new();
    for (fi, def) in defs.iter().enumerate() {
        let step_name = |i: usize| def.steps.get(i).map(|s| s.name.clone());
        if let Some((_, p)) = progress.iter().find(|(i, _)| *i == fi) {
            let furthest = p.furthest as usize;
            let at = reached_at(def, furthest, journey)
                .filter(|t| *t >= p.entered_ms)
                .unwrap_or(p.last_ms);
            let name = step_name(furthest).unwrap_or_default();
            out.push(FunnelPosition {
                funnel: def.name.clone(),
                state: "in_progress",
                furthest_step: step_name(furthest),
                furthest_step_index: furthest,
                steps: def.steps.len(),
                at: rfc3339(at),
                errors: p.errors,
                frustrated: p.frustrated,
                after_trouble: p.errors > 0 || p.frustrated > 0,
                summary: format!(
                    "reached {name}, {}{}",
                    ago(now_ms, at),
                    trouble(p.errors, p.frustrated)
                ),
            });
            continue;
        }
        // The history is newest first.
        let Some(o) = history.iter().find(|o| o.funnel == def.id) else {
            continue;
        };
        let last = def.steps.len().saturating_sub(1);
        let furthest = match o.ending {
            Ending::Completed => last,
            Ending::Abandoned => (o.furthest as usize).min(last.saturating_sub(1)),
        };
        let name = step_name(furthest).unwrap_or_default();
        let (state, summary) = match o.ending {
            Ending::Completed => (
                "completed",
                format!(
                    "completed {}, {}{}",
                    def.name,
                    ago(now_ms, o.last_ms),
                    trouble(o.errors, o.frustrated)
                ),
            ),
            Ending::Abandoned => (
                "abandoned",
                format!(
                    "abandoned at {name}, last seen there {}{}",
                    ago(now_ms, o.last_ms),
                    trouble(o.errors, o.frustrated)
                ),
            ),
        };
        out.push(FunnelPosition {
            funnel: def.name.clone(),
            state,
            furthest_step: step_name(furthest),
            furthest_step_index: furthest,
            steps: def.steps.len(),
            at: rfc3339(o.last_ms),
            errors: o.errors,
            frustrated: o.frustrated,
            after_trouble: o.after_trouble(),
            summary,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_position_reads_as_a_sentence() {
        assert_eq!(ago(13 * 60_000, 60_000), "12 min ago");
        assert_eq!(ago(5_000, 0), "5 s ago");
        assert_eq!(ago(4 * 3_600_000, 0), "4 h ago");
        assert_eq!(trouble(0, 0), "");
        assert_eq!(trouble(2, 0), ", after 2 errors");
        assert_eq!(trouble(1, 1), ", after 1 error and 1 frustrated request");
    }
}
