//! The engine's follow-up events: deciding that something worth acting on happened, and putting in
//! each event what a person needs to act: who, which tier and what the tier's follow-up is, the
//! score, the last steps of the journey, how far they got in any funnel, the route, the upstream,
//! the error. Every event is built against the generation in force for what it names and decides
//! (tiers' follow-ups, thresholds, funnels) and the state for what was learned.

use super::{Generation, Usher};
use crate::events::funnels::Abandoned;
use crate::events::model::{CloudEvent, EventType};
use crate::events::slo::{self, Burn};
use crate::experience::{Recorded, Transition};
use crate::ids::UpstreamId;
use crate::measure::Measurement;
use crate::time::rfc3339;
use crate::upstream::HealthEvent;
use crate::views::StepJson;
use serde_json::{json, Map, Value};

/// Journey steps carried in a customer event.
const JOURNEY_STEPS: usize = 5;

impl Usher {
    fn emit(&self, g: &Generation, e: CloudEvent, now_ms: u64) -> bool {
        let ev = &g.config.events;
        let policy = crate::events::Policy {
            cooldown: ev.cooldown,
            recent: ev.recent,
            budget_per_sec: ev.budget_per_sec,
            source: &ev.source,
        };
        self.state.events.emit(e, now_ms, &policy)
    }

    /// The subject of an event about customer `id`: its pseudonym when they are on. Cooldowns and
    /// the recent-events ring are keyed by it too, so erasure forgets both (see
    /// `Usher::erase_customer`).
    fn subject<'a>(g: &Generation, id: &'a str) -> std::borrow::Cow<'a, str> {
        g.config.privacy.pseudonyms.of(id)
    }

    /// Whether an event of `kind` may be raised about a customer whose id is `verified` or not.
    fn allowed(g: &Generation, kind: EventType, verified: bool) -> bool {
        verified || !g.config.events.verified_only.contains(&kind)
    }

    /// The common part of every customer event; `tier` is the tier's name.
    fn customer_data(
        &self,
        g: &Generation,
        id: &str,
        tier: &str,
        now_ms: u64,
        extra: Value,
    ) -> Value {
        let st = &self.state;
        let snapshot = st.store.get(id, now_ms, &g.store.model);
        let score = snapshot.as_ref().map(|c| (c.score * 10.0).round() / 10.0);
        let journey: Vec<StepJson> = snapshot
            .as_ref()
            .map(|c| {
                let skip = c.journey.len().saturating_sub(JOURNEY_STEPS);
                c.journey[skip..]
                    .iter()
                    .map(|s| StepJson::new(st, g, s))
                    .collect()
            })
            .unwrap_or_default();
        let funnels: Vec<Value> = st
            .events
            .funnels
            .progress_of(&g.funnels, id)
            .into_iter()
            .filter_map(|(f, step)| {
                let def = g.funnels.get(f)?;
                Some(json!({ "name": def.name, "furthest_step": def.steps.get(step)?.name }))
            })
            .collect();
        let follow_up = g
            .config
            .tiers
            .iter()
            .find(|t| t.name == tier)
            .and_then(|t| t.follow_up.clone());
        let mut data = Map::new();
        data.insert("customer".into(), json!(g.config.privacy.pseudonyms.of(id)));
        data.insert("tier".into(), json!(tier));
        data.insert("score".into(), json!(score));
        data.insert(
            "state".into(),
            json!(match score {
                Some(s) =>
                    crate::views::state_of(g, s, snapshot.as_ref().map_or(0, |c| c.requests)),
                None => "unknown",
            }),
        );
        data.insert("follow_up".into(), json!(follow_up));
        data.insert("journey".into(), json!(journey));
        data.insert("funnels".into(), json!(funnels));
        if let Value::Object(extra) = extra {
            data.extend(extra);
        }
        Value::Object(data)
    }

    fn names(g: &Generation, m: &Measurement<'_>) -> (Option<String>, Option<String>) {
        let route = m
            .route
            .and_then(|r| g.config.routes.get(r as usize))
            .map(|r| r.name.clone());
        let upstream = m.upstream.map(|u| g.upstreams.node(u).addr().to_string());
        (route, upstream)
    }

    fn tier_name<'g>(g: &'g Generation, m: &Measurement<'_>) -> &'g str {
        g.config
            .tiers
            .get(m.identity.tier as usize)
            .map_or("?", |t| t.name.as_str())
    }

    /// After a request is recorded: degraded/recovered crossings and failed critical requests.
    pub(super) fn notify_request(&self, g: &Generation, m: &Measurement<'_>, rec: &Recorded) {
        let id = m.identity.id.as_str();
        let tier = Self::tier_name(g, m);
        let now = m.now_ms;
        let source = &g.config.events.source;
        let verified = m.identity.verified;
        let transition = rec.transition.map(|t| match t {
            Transition::Degraded => (EventType::CustomerDegraded, "degraded"),
            Transition::Recovered => (EventType::CustomerRecovered, "recovered"),
        });
        if let Some((kind, disc)) = transition.filter(|(k, _)| Self::allowed(g, *k, verified)) {
            let (route, upstream) = Self::names(g, m);
            let data = self.customer_data(
                g,
                id,
                tier,
                now,
                json!({
                    "score_before": (rec.score_before * 10.0).round() / 10.0,
                    "route": route,
                    "upstream": upstream,
                    "error": m.outcome.is_failure().then(|| m.outcome.as_str()),
                }),
            );
            self.emit(
                g,
                CloudEvent::new(source, kind, &Self::subject(g, id), now, disc, data),
                now,
            );
        }
        let critical = m
            .route
            .and_then(|r| g.config.routes.get(r as usize))
            .is_some_and(|r| r.critical);
        let asks = g
            .config
            .tiers
            .get(m.identity.tier as usize)
            .is_some_and(|t| t.notify_failures);
        if critical
            && asks
            && m.outcome.is_failure()
            && Self::allowed(g, EventType::RequestFailed, verified)
        {
            let (route, upstream) = Self::names(g, m);
            let data = self.customer_data(
                g,
                id,
                tier,
                now,
                json!({
                    "route": route,
                    "upstream": upstream,
                    "method": m.method.as_str(),
                    "path": m.path,
                    "status": m.status,
                    "error": m.outcome.as_str(),
                }),
            );
            let e = CloudEvent::new(
                source,
                EventType::RequestFailed,
                &Self::subject(g, id),
                now,
                "",
                data,
            );
            self.emit(g, e, now);
        }
        if !rec.marks.is_empty() && Self::allowed(g, EventType::Struggling, verified) {
            let (route, upstream) = Self::names(g, m);
            let signals: Vec<&str> = rec.marks.names().collect();
            let data = self.customer_data(
                g,
                id,
                tier,
                now,
                json!({
                    "signals": signals,
                    "route": route,
                    "upstream": upstream,
                    "method": m.method.as_str(),
                    "path": m.path,
                    "status": m.status,
                    "error": m.outcome.is_failure().then(|| m.outcome.as_str()),
                }),
            );
            let e = CloudEvent::new(
                source,
                EventType::Struggling,
                &Self::subject(g, id),
                now,
                "",
                data,
            );
            self.emit(g, e, now);
        }
    }

    /// A protected customer's request went elsewhere because `sick` was out of service.
    pub(super) fn notify_rerouted(
        &self,
        g: &Generation,
        m: &Measurement<'_>,
        sick: UpstreamId,
        why: &str,
    ) {
        let id = m.identity.id.as_str();
        if !Self::allowed(g, EventType::Rerouted, m.identity.verified) {
            return;
        }
        let (route, upstream) = Self::names(g, m);
        let sick_addr = g.upstreams.node(sick).addr().to_string();
        let data = self.customer_data(
            g,
            id,
            Self::tier_name(g, m),
            m.now_ms,
            json!({
                "route": route,
                "upstream": upstream,
                "avoided_upstream": sick_addr,
                "protection": why,
                "method": m.method.as_str(),
                "path": m.path,
                "status": m.status,
            }),
        );
        let e = CloudEvent::new(
            &g.config.events.source,
            EventType::Rerouted,
            &Self::subject(g, id),
            m.now_ms,
            "",
            data,
        );
        self.emit(g, e, m.now_ms);
    }

    pub(super) fn notify_health(&self, g: &Generation, e: &HealthEvent, now_ms: u64) {
        let now = std::time::Instant::now();
        let (kind, u, route, data) = match e {
            HealthEvent::Ejected {
                upstream,
                route,
                reason,
                until,
            } => {
                let until_ms = now_ms + until.saturating_duration_since(now).as_millis() as u64;
                (
                    EventType::UpstreamEjected,
                    *upstream,
                    *route,
                    json!({
                        "rule": reason.as_str(),
                        "detail": reason.describe(&g.config.outlier),
                        "until": rfc3339(until_ms),
                        "ejections": g.upstreams.view(*upstream, now).ejections,
                    }),
                )
            }
            HealthEvent::Restored { upstream, route } => {
                (EventType::UpstreamRestored, *upstream, *route, json!({}))
            }
            _ => return,
        };
        let addr = g.upstreams.node(u).addr().to_string();
        let pools: Vec<&str> = g
            .upstreams
            .pools_of(u)
            .iter()
            .filter_map(|p| g.upstreams.pool_name(*p))
            .collect();
        // On one route only: which; the upstream as a whole: none.
        let route = route
            .and_then(|r| g.config.routes.get(r as usize))
            .map(|r| r.name.as_str());
        let mut data = data;
        if let Value::Object(d) = &mut data {
            d.insert("upstream".into(), json!(addr));
            d.insert("pools".into(), json!(pools));
            d.insert("route".into(), json!(route));
        }
        let e = CloudEvent::new(
            &g.config.events.source,
            kind,
            &addr,
            now_ms,
            route.unwrap_or(""),
            data,
        );
        self.emit(g, e, now_ms);
    }

    fn notify_abandoned(&self, g: &Generation, a: &Abandoned, now_ms: u64) {
        let Some(def) = g.funnels.get(a.funnel) else {
            return;
        };
        if !Self::allowed(g, EventType::JourneyAbandoned, a.verified) {
            return;
        }
        let step = def.steps.get(a.furthest).map(|s| s.name.clone());
        let tier = self.state.tier_name(a.tier);
        let data = self.customer_data(
            g,
            &a.customer,
            &tier,
            now_ms,
            json!({
                "funnel": def.name,
                "furthest_step": step,
                "furthest_step_index": a.furthest,
                "steps": def.steps.len(),
                "entered_at": rfc3339(a.entered_ms),
                "last_seen_in_funnel": rfc3339(a.last_ms),
                "minutes_since_last_step": now_ms.saturating_sub(a.last_ms) / 60_000,
                "errors_in_funnel": a.errors,
                "frustrated_in_funnel": a.frustrated,
                "after_trouble": a.errors > 0 || a.frustrated > 0,
            }),
        );
        let e = CloudEvent::new(
            &g.config.events.source,
            EventType::JourneyAbandoned,
            &Self::subject(g, &a.customer),
            now_ms,
            &def.name,
            data,
        );
        self.emit(g, e, now_ms);
    }

    fn notify_burn(&self, g: &Generation, route: usize, b: &Burn, now_ms: u64) {
        let (Some(rc), Some(rs)) = (g.config.routes.get(route), g.route_states.get(route)) else {
            return;
        };
        let slot = usize::from(b.severity != "page");
        {
            let last = rs.slo_alerted.lock();
            let realert = crate::time::millis(g.config.events.slo_realert);
            if last[slot] != 0 && now_ms.saturating_sub(last[slot]) < realert {
                return;
            }
        }
        let data = json!({
            "route": rc.name,
            "objective": b.objective,
            "severity": b.severity,
            "burn_rate_threshold": b.threshold,
            "long_window_minutes": b.long_minutes,
            "long_window_burn_rate": (b.long_burn * 10.0).round() / 10.0,
            "short_window_minutes": b.short_minutes,
            "short_window_burn_rate": (b.short_burn * 10.0).round() / 10.0,
            "target_ms": rc.target.as_secs_f64() * 1000.0,
        });
        let e = CloudEvent::new(
            &g.config.events.source,
            EventType::SloBurn,
            &rc.name,
            now_ms,
            b.severity,
            data,
        );
        // Only an alert that went out starts the re-alert interval: one the event budget held
        // back is tried again at the next sweep.
        if self.emit(g, e, now_ms) {
            rs.slo_alerted.lock()[slot] = now_ms;
        }
    }

    /// Periodic: abandoned funnels, burning objectives, cooldown housekeeping.
    pub fn sweep_events(&self, now_ms: u64) {
        let g = self.generation();
        for a in self.state.events.funnels.sweep(&g.funnels, now_ms) {
            self.notify_abandoned(&g, &a, now_ms);
        }
        let min = g.config.events.slo_min_requests;
        for (i, (rc, rs)) in g.config.routes.iter().zip(&g.route_states).enumerate() {
            let Some(objective) = rc.slo else { continue };
            let burn = slo::evaluate(objective, &rs.slo.lock(), min, now_ms);
            if let Some(b) = burn {
                self.notify_burn(&g, i, &b, now_ms);
            }
        }
        self.state
            .events
            .sweep_cooldowns(now_ms, g.config.events.cooldown);
    }
}
