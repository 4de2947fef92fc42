//! The engine's follow-up events: deciding that something worth acting on happened, and putting in
//! each event what a person needs to act: who, which tier and what the tier's follow-up is, the
//! score, the last steps of the journey, how far they got in any funnel, the route, the upstream,
//! the error.

use super::Usher;
use crate::config::{TierId, UpstreamId};
use crate::events::funnels::Abandoned;
use crate::events::model::{CloudEvent, EventType};
use crate::events::slo::Burn;
use crate::experience::{Recorded, Transition};
use crate::measure::Measurement;
use crate::upstream::HealthEvent;
use crate::views::{rfc3339, tier_name, StepJson};
use serde_json::{json, Map, Value};

/// Journey steps carried in a customer event.
const JOURNEY_STEPS: usize = 5;

impl Usher {
    fn emit(&self, e: CloudEvent, now_ms: u64) -> bool {
        self.events.emit(e, now_ms, &self.metrics().events)
    }

    /// The common part of every customer event.
    fn customer_data(&self, id: &str, tier: TierId, now_ms: u64, extra: Value) -> Value {
        let cfg = self.config();
        let snapshot = self.store().get(id, now_ms);
        let score = snapshot.as_ref().map(|c| (c.score * 10.0).round() / 10.0);
        let journey: Vec<StepJson> = snapshot
            .as_ref()
            .map(|c| {
                let skip = c.journey.len().saturating_sub(JOURNEY_STEPS);
                c.journey[skip..]
                    .iter()
                    .map(|s| StepJson::new(self, s))
                    .collect()
            })
            .unwrap_or_default();
        let funnels: Vec<Value> = self
            .events
            .funnels
            .progress_of(id)
            .into_iter()
            .filter_map(|(f, step)| {
                let def = self.events.funnels.defs().get(f)?;
                Some(json!({ "name": def.name, "furthest_step": def.steps.get(step)?.name }))
            })
            .collect();
        let mut data = Map::new();
        data.insert("customer".into(), json!(id));
        data.insert("tier".into(), json!(tier_name(self, tier)));
        data.insert("score".into(), json!(score));
        data.insert(
            "state".into(),
            json!(match score {
                Some(s) if self.is_degraded(s) => "degraded",
                Some(_) => "ok",
                None => "unknown",
            }),
        );
        data.insert(
            "follow_up".into(),
            json!(cfg
                .tiers
                .get(tier as usize)
                .and_then(|t| t.follow_up.clone())),
        );
        data.insert("journey".into(), json!(journey));
        data.insert("funnels".into(), json!(funnels));
        if let Value::Object(extra) = extra {
            data.extend(extra);
        }
        Value::Object(data)
    }

    fn names(&self, m: &Measurement<'_>) -> (Option<String>, Option<String>) {
        let route = m
            .route
            .and_then(|r| self.route_config(r))
            .map(|r| r.name.clone());
        let upstream = m
            .upstream
            .and_then(|u| self.upstream_addr(u))
            .map(|a| a.to_string());
        (route, upstream)
    }

    /// After a request is recorded: degraded/recovered crossings and failed critical requests.
    pub(super) fn notify_request(&self, m: &Measurement<'_>, rec: &Recorded) {
        let id = m.identity.id.as_str();
        let tier = m.identity.tier;
        let now = m.now_ms;
        if let Some(t) = rec.transition {
            let (kind, disc) = match t {
                Transition::Degraded => (EventType::CustomerDegraded, "degraded"),
                Transition::Recovered => (EventType::CustomerRecovered, "recovered"),
            };
            let (route, upstream) = self.names(m);
            let data = self.customer_data(
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
                CloudEvent::new(self.events.source(), kind, id, now, disc, data),
                now,
            );
        }
        let critical = m
            .route
            .and_then(|r| self.route_config(r))
            .is_some_and(|r| r.critical);
        let asks = self
            .config()
            .tiers
            .get(tier as usize)
            .is_some_and(|t| t.notify_failures);
        if critical && asks && m.outcome.is_failure() {
            let (route, upstream) = self.names(m);
            let data = self.customer_data(
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
            self.emit(
                CloudEvent::new(
                    self.events.source(),
                    EventType::RequestFailed,
                    id,
                    now,
                    "",
                    data,
                ),
                now,
            );
        }
    }

    /// A protected customer's request went elsewhere because `sick` was out of service.
    pub(super) fn notify_rerouted(&self, m: &Measurement<'_>, sick: UpstreamId, why: &str) {
        let id = m.identity.id.as_str();
        let (route, upstream) = self.names(m);
        let sick_addr = self.upstream_addr(sick).map(|a| a.to_string());
        let data = self.customer_data(
            id,
            m.identity.tier,
            m.now_ms,
            json!({
                "route": route,
                "upstream": upstream,
                "avoided_upstream": sick_addr,
                "protection": why,
                "status": m.status,
            }),
        );
        self.emit(
            CloudEvent::new(
                self.events.source(),
                EventType::Rerouted,
                id,
                m.now_ms,
                "",
                data,
            ),
            m.now_ms,
        );
    }

    pub(super) fn notify_health(&self, e: &HealthEvent, now_ms: u64) {
        let (kind, u, data) = match e {
            HealthEvent::Ejected {
                upstream,
                reason,
                until,
            } => {
                let until_ms = now_ms
                    + until
                        .saturating_duration_since(std::time::Instant::now())
                        .as_millis() as u64;
                (
                    EventType::UpstreamEjected,
                    *upstream,
                    json!({
                        "rule": reason.as_str(),
                        "detail": reason.describe(&self.config().outlier),
                        "until": rfc3339(until_ms),
                        "ejections": self.upstreams().view(*upstream, std::time::Instant::now()).ejections,
                    }),
                )
            }
            HealthEvent::Restored { upstream } => {
                (EventType::UpstreamRestored, *upstream, json!({}))
            }
            _ => return,
        };
        let Some(addr) = self.upstream_addr(u) else {
            return;
        };
        let addr = addr.to_string();
        let pools: Vec<&str> = self
            .config()
            .pools
            .iter()
            .filter(|p| p.upstreams.contains(&u))
            .map(|p| p.name.as_str())
            .collect();
        let mut data = data;
        if let Value::Object(d) = &mut data {
            d.insert("upstream".into(), json!(addr));
            d.insert("pools".into(), json!(pools));
        }
        self.emit(
            CloudEvent::new(self.events.source(), kind, &addr, now_ms, "", data),
            now_ms,
        );
    }

    fn notify_abandoned(&self, a: &Abandoned, now_ms: u64) {
        let Some(def) = self.events.funnels.defs().get(a.funnel) else {
            return;
        };
        let step = def.steps.get(a.furthest).map(|s| s.name.clone());
        let data = self.customer_data(
            &a.customer,
            a.tier,
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
        self.emit(
            CloudEvent::new(
                self.events.source(),
                EventType::JourneyAbandoned,
                &a.customer,
                now_ms,
                &def.name,
                data,
            ),
            now_ms,
        );
    }

    fn notify_burn(&self, b: &Burn, now_ms: u64) {
        let Some(route) = self.config().routes.get(b.route) else {
            return;
        };
        let key = (b.route, b.severity);
        {
            let mut last = self.slo_alerted.lock();
            let realert = self.config().events.slo_realert.as_millis() as u64;
            if last
                .get(&key)
                .is_some_and(|t| now_ms.saturating_sub(*t) < realert)
            {
                return;
            }
            last.insert(key, now_ms);
        }
        let data = json!({
            "route": route.name,
            "objective": b.objective,
            "severity": b.severity,
            "burn_rate_threshold": b.threshold,
            "long_window_minutes": b.long_minutes,
            "long_window_burn_rate": (b.long_burn * 10.0).round() / 10.0,
            "short_window_minutes": b.short_minutes,
            "short_window_burn_rate": (b.short_burn * 10.0).round() / 10.0,
            "target_ms": route.target.as_secs_f64() * 1000.0,
        });
        self.emit(
            CloudEvent::new(
                self.events.source(),
                EventType::SloBurn,
                &route.name,
                now_ms,
                b.severity,
                data,
            ),
            now_ms,
        );
    }

    /// Periodic: abandoned funnels, burning objectives, cooldown housekeeping.
    pub fn sweep_events(&self, now_ms: u64) {
        for a in self.events.funnels.sweep(now_ms) {
            self.notify_abandoned(&a, now_ms);
        }
        for b in self.events.slo.evaluate(now_ms) {
            self.notify_burn(&b, now_ms);
        }
        self.events.sweep_cooldowns(now_ms);
    }
}
