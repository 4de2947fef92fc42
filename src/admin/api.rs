//! The admin API's answers, as plain functions of (usher, request line, time): testable without a
//! socket. Serving them over HTTP is `service.rs`'s job.
//!
//! JSON throughout, names rather than indices, times as RFC 3339. Read-only but for `POST /reload`
//! and `DELETE /customers/{id}`, which need an operator (or, without tokens, a caller on loopback).
//! The live page (`/ui`) is served from here too; its HTML, CSS and JavaScript hold no data and
//! load without a token, and every call it makes for data carries one. Looking up a customer is
//! said in the answer ([`Reply::audit`]) so that the service writes it to the audit log.

use crate::config::Role;
use crate::engine::{ReloadError, Usher};
use crate::stats::StatsView;
pub use crate::time::rfc3339;
use crate::urlencoded;
use crate::views::CustomerJson;
use serde::Serialize;

/// Most customers one `?worst=N` answer lists.
pub const MAX_WORST: usize = 1000;

#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
    /// A customer this answer looked up or erased: for the audit log.
    pub audit: Option<Audited>,
}

/// What an answer did to whom, for the audit log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Audited {
    /// lookup, events or erase.
    pub action: &'static str,
    pub customer: String,
}

impl Reply {
    pub(crate) fn json<T: Serialize>(status: u16, v: &T) -> Reply {
        Reply {
            status,
            content_type: "application/json",
            body: serde_json::to_vec_pretty(v).unwrap_or_default(),
            audit: None,
        }
    }

    pub(crate) fn text(status: u16, body: impl Into<Vec<u8>>) -> Reply {
        Reply {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.into(),
            audit: None,
        }
    }

    pub(crate) fn error(status: u16, message: &str) -> Reply {
        Reply::json(status, &serde_json::json!({ "error": message }))
    }

    fn audited(mut self, action: &'static str, customer: &str) -> Reply {
        self.audit = Some(Audited {
            action,
            customer: customer.to_string(),
        });
        self
    }
}

const INDEX: &str = "usher admin API
  GET /healthz                 liveness
  GET /metrics                 Prometheus metrics
  GET /ui                      the live page (a browser; it asks for a token if the API needs one)
  GET /now                     the page's live view: worst customers, degraded by tier, routes, upstreams, events
  GET /customers/{id}          one customer: score, state, counters, journey, funnels, protection, follow-up
  GET /customers/{id}/events   the recent events about one customer, newest first
  GET /funnels?window=1h       per funnel and step: who reached it and who dropped there, with their ids
  GET /customers?worst=N       the N customers with the lowest scores now
  GET /routes                  per-route requests, failure rate, p50/p90/p99
  GET /upstreams               per-upstream state, why, requests, failure rate, p50/p90/p99
  GET /events?limit=N          the most recent follow-up events, newest first
  GET /events/dead?limit=N     events a receiver refused for good, per sink
  GET /config                  the configuration in force: generation, file, hash, load time
  POST /reload                 read the configuration file again (operator)
  DELETE /customers/{id}       forget a customer: score, journey, funnels, recent events (operator)
";

/// Who is asking, as far as the admin API cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller {
    /// The request came from this machine.
    pub loopback: bool,
    /// The role of the bearer token it presented, if that is one of the configured tokens.
    pub role: Option<Role>,
}

/// What `path` needs: operator for what changes things, viewer for the rest, nothing for
/// liveness.
fn needs(method: &str, path: &str) -> Option<Role> {
    match (method, path) {
        (_, "/healthz") => None,
        // The page itself holds no data: it asks for a token when a data call is refused, and
        // sends it with every one.
        ("GET" | "HEAD", p) if super::page::asset(p).is_some() => None,
        ("POST", "/reload") => Some(Role::Operator),
        ("DELETE", p) if p.starts_with("/customers/") => Some(Role::Operator),
        _ => Some(Role::Viewer),
    }
}

pub fn handle(
    usher: &Usher,
    method: &str,
    path: &str,
    query: Option<&str>,
    now_ms: u64,
    caller: Caller,
) -> Reply {
    if let Some(need) = needs(method, path) {
        let secured = !usher.generation().config.admin_tokens.is_empty();
        // Without tokens, a caller on this machine may do everything; with them, the token says.
        let has = if secured {
            caller.role
        } else if caller.loopback {
            Some(Role::Operator)
        } else {
            None
        };
        match has {
            None if secured => {
                return Reply::error(
                    401,
                    "this needs an admin token: Authorization: Bearer <token>",
                )
            }
            None => return Reply::error(403, "the admin API answers callers on this machine only"),
            Some(role) if role < need => {
                let refused = Reply::error(403, "this needs an operator token");
                // A viewer who tried to erase someone is worth a line in the audit log.
                return match (method, path.strip_prefix("/customers/")) {
                    ("DELETE", Some(raw)) => {
                        let whom = urlencoded::decode_path(raw).unwrap_or_default();
                        refused.audited("erase", &whom)
                    }
                    _ => refused,
                };
            }
            Some(_) => {}
        }
    }
    if path == "/reload" {
        return match method {
            "POST" => reload(usher),
            _ => Reply::error(405, "use POST /reload"),
        };
    }
    if method == "DELETE" {
        return match path.strip_prefix("/customers/") {
            Some(raw) => erase(usher, raw),
            None => Reply::error(405, "only a customer can be erased: DELETE /customers/{id}"),
        };
    }
    if method != "GET" && method != "HEAD" {
        return Reply::error(
            405,
            "the admin API is read-only but for POST /reload and DELETE /customers/{id}: use GET",
        );
    }
    if let Some(asset) = super::page::asset(path) {
        return asset;
    }
    match path {
        "/" => Reply::text(200, INDEX),
        "/now" => super::now::now(usher, now_ms),
        "/funnels" => super::funnels::funnels(usher, query, now_ms),
        "/healthz" => Reply::text(200, "ok\n"),
        "/metrics" => Reply {
            status: 200,
            content_type: "text/plain; version=0.0.4",
            body: usher.state().metrics.encode().into_bytes(),
            audit: None,
        },
        "/customers" | "/customers/" => worst(usher, query, now_ms),
        "/routes" => Reply::json(200, &routes(usher, now_ms)),
        "/events" => events(usher, query),
        "/events/dead" => dead_letters(usher, query),
        "/upstreams" => Reply::json(200, &upstreams(usher, now_ms)),
        "/config" => Reply::json(200, &config(usher)),
        p => match p.strip_prefix("/customers/") {
            Some(raw) => match raw.strip_suffix("/events") {
                Some(raw) => customer_events(usher, raw, query),
                None => customer(usher, raw, now_ms),
            },
            None => Reply::error(404, "no such admin endpoint; GET / lists them"),
        },
    }
}

/// Whether `id` is longer than any id usher tracks (what identity takes, and what a snapshot
/// restores): no person to look up, and nothing to write to the audit log, which an endless
/// run of such ids from one viewer would otherwise fill.
fn impossible_id(usher: &Usher, id: &str) -> bool {
    let max = crate::defaults::MAX_ID_LEN.max(usher.generation().config.identity.max_id_len as i64);
    id.len() as i64 > max
}

fn customer(usher: &Usher, raw: &str, now_ms: u64) -> Reply {
    let Some(id) = urlencoded::decode_path(raw) else {
        return Reply::error(400, "malformed percent-encoding in customer id");
    };
    if impossible_id(usher, &id) {
        return Reply::error(404, super::lookup::NOT_TRACKED);
    }
    // Audited under the id looked up, whether it was asked for by id or by pseudonym, as an
    // erasure is: "who looked up this person" is one search. Resolved once: for a pseudonym
    // that is a scan of every tracked id.
    match usher.resolve_customer(&id) {
        Some(whom) => super::lookup::customer(usher, &whom, now_ms).audited("lookup", &whom),
        None => Reply::error(404, super::lookup::NOT_TRACKED).audited("lookup", &id),
    }
}

fn customer_events(usher: &Usher, raw: &str, query: Option<&str>) -> Reply {
    let Some(id) = urlencoded::decode_path(raw) else {
        return Reply::error(400, "malformed percent-encoding in customer id");
    };
    let limit = match limit_param(query) {
        Ok(n) => n,
        Err(reply) => return reply,
    };
    if impossible_id(usher, &id) {
        return Reply::error(404, super::lookup::NOT_TRACKED);
    }
    let resolved = usher.resolve_customer(&id);
    let whom = resolved.as_deref().unwrap_or(&id);
    super::lookup::events(usher, &id, resolved.as_deref(), limit).audited("events", whom)
}

fn erase(usher: &Usher, raw: &str) -> Reply {
    // GET reads /customers/{id}/events as that customer's events: a DELETE of it would erase
    // someone called "{id}/events" while its caller believes it dealt with {id}.
    if raw.ends_with("/events") {
        return Reply::error(
            405,
            "a customer's events are erased with the customer: DELETE /customers/{id}",
        );
    }
    let Some(id) = urlencoded::decode_path(raw) else {
        return Reply::error(400, "malformed percent-encoding in customer id");
    };
    if impossible_id(usher, &id) {
        return Reply::error(404, super::lookup::NOT_TRACKED);
    }
    // A pseudonym (from an event or a log line) names the same person.
    let (erased, known, forgotten) = usher.erase_customer(&id);
    // During a graceful upgrade the old process's state is still to arrive, and with it maybe
    // this customer: erased again from it then.
    let pending = match usher.state().pending_erasures.lock().as_mut() {
        Some(keys) => {
            keys.push(id.to_string());
            true
        }
        None => false,
    };
    let pseudonyms = &usher.generation().config.privacy.pseudonyms;
    let snapshot = crate::snapshot::rewrite_after_erasure(usher);
    let pseudonym = match &erased {
        Some(real) => pseudonyms.is_on().then(|| pseudonyms.of(real).into_owned()),
        // Known only by the pseudonym asked for.
        None => Some(id.to_string()),
    };
    let id = erased.unwrap_or_else(|| id.to_string());
    Reply::json(
        200,
        &serde_json::json!({
            "erased": id,
            "pseudonym": pseudonym,
            "was_tracked": known,
            "funnels": forgotten.funnels,
            "funnel_history": forgotten.funnel_history,
            "cooldowns": forgotten.cooldowns,
            "recent_events": forgotten.recent_events,
            "snapshot": snapshot,
            "again_after_takeover": pending,
            "not_recalled": "events already delivered to sinks, waiting in their queues and spools, or dead-lettered (GET /events/dead, the sinks' dead-letter files), and access log lines already written",
        }),
    )
    .audited("erase", &id)
}

fn config(usher: &Usher) -> serde_json::Value {
    let g = usher.generation();
    serde_json::json!({
        "generation": g.number,
        "file": g.source.path.as_ref().map(|p| p.display().to_string()),
        "sha256": g.source.hash,
        "loaded_at": rfc3339(g.source.loaded_ms),
        "cause": g.source.cause,
        "routes": g.config.routes.iter().map(|r| &r.name).collect::<Vec<_>>(),
        "pools": g.config.pools.iter().map(|p| serde_json::json!({
            "name": p.name,
            "upstreams": p.upstreams.iter().map(|u| g.config.upstreams[*u as usize].to_string()).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "sinks": usher.state().events.sink_names(),
    })
}

fn reload(usher: &Usher) -> Reply {
    match usher.reload() {
        Ok(r) => Reply::json(
            200,
            &serde_json::json!({
                "reloaded": true,
                "generation": r.generation,
                "sha256": r.source.hash,
            }),
        ),
        Err(ReloadError::Invalid { path, errors }) => Reply::json(
            422,
            &serde_json::json!({
                "reloaded": false,
                "error": format!("{} is not valid; the running configuration stays", path.display()),
                "errors": errors.0.iter().map(|e| e.to_string()).collect::<Vec<_>>(),
            }),
        ),
        Err(e @ ReloadError::Cold(_)) => Reply::json(
            409,
            &serde_json::json!({ "reloaded": false, "error": e.to_string() }),
        ),
        Err(e @ (ReloadError::NoSource | ReloadError::Superseded)) => Reply::json(
            409,
            &serde_json::json!({ "reloaded": false, "error": e.to_string() }),
        ),
    }
}

/// Most events one `/events` answer lists.
pub const MAX_EVENTS: usize = 10_000;

/// `?limit=N` of an events listing: 100 by default, at most [`MAX_EVENTS`].
fn limit_param(query: Option<&str>) -> Result<usize, Reply> {
    match urlencoded::query_param(query.unwrap_or(""), "limit").map(|v| v.parse::<usize>()) {
        None => Ok(100),
        Some(Ok(n)) => Ok(n.min(MAX_EVENTS)),
        Some(Err(_)) => Err(Reply::error(400, "limit must be a number, e.g. ?limit=50")),
    }
}

fn events(usher: &Usher, query: Option<&str>) -> Reply {
    let limit = match limit_param(query) {
        Ok(n) => n,
        Err(reply) => return reply,
    };
    let recent = usher.state().events.recent(limit);
    let list: Vec<&crate::events::model::CloudEvent> = recent.iter().map(|e| e.as_ref()).collect();
    Reply::json(200, &serde_json::json!({ "events": list }))
}

fn dead_letters(usher: &Usher, query: Option<&str>) -> Reply {
    let limit = match limit_param(query) {
        Ok(n) => n,
        Err(reply) => return reply,
    };
    let g = usher.generation();
    let ev = &g.config.events;
    let mut out = Vec::new();
    for s in &ev.sinks {
        if matches!(s.kind, crate::config::SinkKind::Jsonl { .. }) {
            continue;
        }
        let dir = ev.spool_dir.join(&s.name);
        let events = crate::events::sink::spool::dead_letters(&dir, limit).unwrap_or_default();
        out.push(serde_json::json!({
            "sink": s.name,
            "file": dir.join(crate::events::sink::spool::DEAD).display().to_string(),
            "events": events,
        }));
    }
    Reply::json(200, &serde_json::json!({ "sinks": out }))
}

fn worst(usher: &Usher, query: Option<&str>, now_ms: u64) -> Reply {
    let q = query.unwrap_or("");
    let n = match urlencoded::query_param(q, "worst").map(|v| v.parse::<usize>()) {
        Some(Ok(n)) => n.min(MAX_WORST),
        Some(Err(_)) => return Reply::error(400, "worst must be a number, e.g. ?worst=10"),
        None => return Reply::error(400, "say how many: /customers?worst=10"),
    };
    let g = usher.generation();
    let st = usher.state();
    let min = match urlencoded::query_param(q, "min_requests").map(|v| v.parse::<u32>()) {
        Some(Ok(m)) => m,
        Some(Err(_)) => return Reply::error(400, "min_requests must be a number"),
        None => g.config.experience.min_requests,
    };
    let list: Vec<CustomerJson> = st
        .store
        .worst(n, min, now_ms, &g.store_settings().model)
        .iter()
        .map(|c| CustomerJson::new(st, &g, c))
        .collect();
    Reply::json(
        200,
        &serde_json::json!({ "min_requests": min, "customers": list }),
    )
}

#[derive(Serialize)]
struct RouteJson {
    name: String,
    pool: String,
    critical: bool,
    target_ms: f64,
    #[serde(flatten)]
    stats: StatsView,
}

fn routes(usher: &Usher, now_ms: u64) -> serde_json::Value {
    let g = usher.generation();
    let cfg = &g.config;
    let list: Vec<RouteJson> = cfg
        .routes
        .iter()
        .enumerate()
        .filter_map(|(i, r)| {
            Some(RouteJson {
                name: r.name.clone(),
                pool: cfg.pools.get(r.pool as usize)?.name.clone(),
                critical: r.critical,
                target_ms: r.target.as_secs_f64() * 1000.0,
                stats: g.route_state(i as u16)?.stats.view(now_ms),
            })
        })
        .collect();
    serde_json::json!({ "routes": list })
}

#[derive(Serialize)]
struct UpstreamJson {
    address: String,
    pools: Vec<String>,
    /// healthy, probing, ejected, or unhealthy (failing active checks).
    state: &'static str,
    /// up, down, or off when no pool checks it.
    active_check: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    why: Option<WhyJson>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ejected_until: Option<String>,
    ejections: u32,
    in_flight: u32,
    latency_estimate_ms: f64,
    /// What passive health is judging: recent attempts.
    passive_health: RecentJson,
    /// Whether ordinary requests still go there: when it is out but its pool is in panic mode
    /// (too few left, so the whole pool is used), this says so.
    used: bool,
    /// Its health on each route that can use it: an upstream can be out on one route only.
    routes: Vec<LaneJson>,
    #[serde(flatten)]
    stats: StatsView,
}

#[derive(Serialize)]
struct LaneJson {
    route: String,
    /// healthy, probing, ejected, or hung (requests waiting, no answer: avoided now, ejected at
    /// the next sweep).
    state: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    why: Option<WhyJson>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ejected_until: Option<String>,
    ejections: u32,
    in_flight: u32,
    passive_health: RecentJson,
}

#[derive(Serialize)]
struct PoolJson {
    name: String,
    upstreams: usize,
    serving: usize,
    /// Fewer than outlier.panic_below serving: every member is used, out or not.
    panic: bool,
}

#[derive(Serialize)]
struct WhyJson {
    rule: &'static str,
    detail: String,
}

#[derive(Serialize)]
struct RecentJson {
    /// Attempts since (re)admission.
    attempts: u64,
    failure_rate: f64,
    mean_latency_ms: Option<f64>,
}

impl RecentJson {
    fn of(r: &crate::upstream::outlier::Recent) -> Self {
        RecentJson {
            attempts: r.requests,
            failure_rate: (r.failure_rate * 1000.0).round() / 1000.0,
            mean_latency_ms: r.mean_latency.map(|d| d.as_secs_f64() * 1000.0),
        }
    }
}

pub(crate) fn upstreams(usher: &Usher, now_ms: u64) -> serde_json::Value {
    let g = usher.generation();
    let cfg = &g.config;
    let now = std::time::Instant::now();
    let list: Vec<UpstreamJson> =
        cfg.upstreams
            .iter()
            .enumerate()
            .map(|(i, a)| {
                let id = i as u16;
                let pools: Vec<&crate::config::PoolConfig> = cfg
                    .pools
                    .iter()
                    .filter(|p| p.upstreams.contains(&id))
                    .collect();
                let v = g.upstreams().view(id, now);
                let checked = pools.iter().any(|p| p.health_check.is_some());
                let ups = g.upstreams();
                let used = ups.serving(id)
                    || cfg.pools.iter().enumerate().any(|(p, pc)| {
                        pc.upstreams.contains(&id) && ups.in_panic(p as u16, None, now)
                    });
                let until = |u: Option<std::time::Instant>| {
                    u.map(|u| rfc3339(now_ms + u.saturating_duration_since(now).as_millis() as u64))
                };
                let routes = ups
                    .lane_views(id, now)
                    .into_iter()
                    .map(|l| LaneJson {
                        route: cfg
                            .routes
                            .get(l.route as usize)
                            .map_or_else(String::new, |r| r.name.clone()),
                        state: l.state,
                        why: l.reason.map(|r| WhyJson {
                            rule: r.as_str(),
                            detail: r.describe(&cfg.outlier),
                        }),
                        ejected_until: until(l.ejected_until),
                        ejections: l.ejections,
                        in_flight: l.in_flight,
                        passive_health: RecentJson::of(&l.recent),
                    })
                    .collect();
                UpstreamJson {
                    address: a.to_string(),
                    pools: pools.iter().map(|p| p.name.clone()).collect(),
                    state: if v.active_up { v.state } else { "unhealthy" },
                    active_check: match (checked, v.active_up) {
                        (false, _) => "off",
                        (true, true) => "up",
                        (true, false) => "down",
                    },
                    why: v.reason.map(|r| WhyJson {
                        rule: r.as_str(),
                        detail: r.describe(&cfg.outlier),
                    }),
                    ejected_until: v.ejected_until.map(|u| {
                        rfc3339(now_ms + u.saturating_duration_since(now).as_millis() as u64)
                    }),
                    ejections: v.ejections,
                    in_flight: v.in_flight,
                    latency_estimate_ms: v.estimate.as_secs_f64() * 1000.0,
                    passive_health: RecentJson::of(&v.recent),
                    used,
                    routes,
                    stats: g.upstreams().node(id).stats().view(now_ms),
                }
            })
            .collect();
    let pools: Vec<PoolJson> = cfg
        .pools
        .iter()
        .enumerate()
        .map(|(p, pc)| PoolJson {
            name: pc.name.clone(),
            upstreams: pc.upstreams.len(),
            serving: pc
                .upstreams
                .iter()
                .filter(|u| g.upstreams().serving(**u))
                .count(),
            panic: g.upstreams().in_panic(p as u16, None, now),
        })
        .collect();
    serde_json::json!({ "upstreams": list, "pools": pools })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn reload_is_for_callers_on_loopback_and_config_says_what_is_in_force() {
        let text = "[[pools]]\nname = \"p\"\nupstreams = [\"127.0.0.1:9001\"]\n[[routes]]\nname = \"r\"\npool = \"p\"\n";
        let u = Usher::new(Config::parse(text, std::path::Path::new(".")).unwrap());
        let near = Caller {
            loopback: true,
            role: None,
        };
        let far = Caller {
            loopback: false,
            role: None,
        };
        assert_eq!(handle(&u, "POST", "/reload", None, 0, far).status, 403);
        assert_eq!(handle(&u, "GET", "/customers/x", None, 0, far).status, 403);
        assert_eq!(handle(&u, "GET", "/healthz", None, 0, far).status, 200);
        assert_eq!(handle(&u, "GET", "/reload", None, 0, near).status, 405);
        let r = handle(&u, "POST", "/reload", None, 0, near);
        assert_eq!(r.status, 409, "no file to read again");
        assert_eq!(handle(&u, "POST", "/customers", None, 0, near).status, 405);
        let c = handle(&u, "GET", "/config", None, 0, near);
        let v: serde_json::Value = serde_json::from_slice(&c.body).unwrap();
        assert_eq!(
            (v["generation"].as_u64(), v["cause"].as_str()),
            (Some(1), Some("start"))
        );
        assert_eq!(v["routes"], serde_json::json!(["r"]));
    }

    /// A usher with a viewer and an operator token, a checkout funnel and a gold tier.
    fn secured() -> (std::sync::Arc<Usher>, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("tokens"),
            format!("viewer {VIEWER} ana\noperator {OPERATOR}\n"),
        )
        .unwrap();
        let text = r#"
[server]
admin_tokens = "tokens"
[identity]
tier = [{ header = "x-customer-tier", trusted_from = ["127.0.0.1/32"] }]
[[tiers]]
name = "gold"
protected = true
follow_up = "phone within 1h"
[[tiers]]
name = "standard"
follow_up = "email"
[[pools]]
name = "web"
upstreams = ["127.0.0.1:9001"]
[[routes]]
name = "checkout"
match = { path_prefix = "/checkout" }
pool = "web"
critical = true
target = "100ms"
[[routes]]
name = "site"
pool = "web"
[[funnels]]
name = "shop"
abandon_after = "1m"
steps = [
  { name = "cart", method = "POST", path = "/cart" },
  { name = "checkout", path = "/checkout" },
  { name = "pay", method = "POST", path = "/checkout/pay" },
  { name = "done", path = "/checkout/done" },
]
"#;
        let cfg = Config::parse(text, dir.path()).unwrap();
        (Usher::new(cfg), dir)
    }

    const VIEWER: &str = "viewer-token-0123456789abcdef";
    const OPERATOR: &str = "operator-token-0123456789abcdef";

    /// One request of `who` through the engine, answered `status` after `latency`.
    fn request(
        u: &Usher,
        method: http::Method,
        path: &str,
        who: &str,
        status: u16,
        latency: std::time::Duration,
        now_ms: u64,
    ) {
        let now = std::time::Instant::now();
        crate::engine::testing::request(u, &method, path, who, None, status, latency, now_ms, now);
    }

    fn as_viewer() -> Caller {
        Caller {
            loopback: false,
            role: Some(Role::Viewer),
        }
    }

    fn body(r: &Reply) -> serde_json::Value {
        serde_json::from_slice(&r.body).unwrap_or_else(|e| panic!("{e}: {:?}", r))
    }

    #[test]
    fn the_page_loads_without_a_token_and_its_data_does_not() {
        let (u, _dir) = secured();
        let nobody = Caller {
            loopback: false,
            role: None,
        };
        for p in ["/ui", "/ui/app.js", "/ui/app.css"] {
            let r = handle(&u, "GET", p, None, 0, nobody);
            assert_eq!(r.status, 200, "{p}");
            assert!(r.audit.is_none());
        }
        let html = String::from_utf8(handle(&u, "GET", "/ui", None, 0, nobody).body).unwrap();
        assert!(html.contains("src=\"/ui/app.js\"") && !html.contains("<script>"));
        for p in [
            "/now",
            "/funnels",
            "/customers/x",
            "/customers/x/events",
            "/",
        ] {
            assert_eq!(handle(&u, "GET", p, None, 0, nobody).status, 401, "{p}");
        }
        let refused = handle(&u, "DELETE", "/customers/x", None, 0, as_viewer());
        assert_eq!(refused.status, 403);
        assert_eq!(
            refused.audit,
            Some(Audited {
                action: "erase",
                customer: "x".into()
            }),
            "a viewer's try at an erasure is audited"
        );
        assert_eq!(
            handle(&u, "POST", "/reload", None, 0, as_viewer()).status,
            403
        );
        let op = Caller {
            loopback: false,
            role: Some(Role::Operator),
        };
        let r = handle(&u, "DELETE", "/customers/x", None, 0, op);
        assert_eq!(r.status, 200);
        assert_eq!(r.audit.map(|a| a.action), Some("erase"));
    }

    #[test]
    fn a_lookup_says_where_the_customer_is_and_is_audited() {
        use std::time::Duration;
        let (u, _dir) = secured();
        let t = 1_700_000_000_000;
        let fast = Duration::from_millis(5);
        request(&u, http::Method::POST, "/cart", "sam", 200, fast, t);
        request(
            &u,
            http::Method::GET,
            "/checkout",
            "sam",
            200,
            Duration::from_millis(600),
            t + 1_000,
        );
        request(
            &u,
            http::Method::POST,
            "/checkout/pay",
            "sam",
            502,
            fast,
            t + 2_000,
        );
        let now = t + 12 * 60_000;
        let r = handle(&u, "GET", "/customers/sam", None, now, as_viewer());
        assert_eq!(r.status, 200);
        assert_eq!(
            r.audit,
            Some(Audited {
                action: "lookup",
                customer: "sam".into()
            })
        );
        let v = body(&r);
        assert_eq!(v["journey"].as_array().unwrap().len(), 3);
        let last = &v["journey"][2];
        assert_eq!(
            (last["route"].as_str(), last["target_ms"].as_f64()),
            (Some("checkout"), Some(100.0)),
            "{last}"
        );
        assert_eq!(v["follow_up"], "email");
        assert_eq!(v["protection"]["protected"], false);
        let f = &v["funnels"][0];
        assert_eq!(f["state"], "in_progress", "{v}");
        assert_eq!(
            f["summary"], "reached pay, 11 min ago, after 1 error and 2 frustrated requests",
            "{v}"
        );
        // Nobody by that name: still a look-up, audited.
        let r = handle(&u, "GET", "/customers/nobody", None, now, as_viewer());
        assert_eq!(
            (r.status, r.audit.map(|a| a.customer)),
            (404, Some("nobody".into()))
        );
    }

    #[test]
    fn ids_no_customer_can_have_are_not_audited_and_events_cannot_be_erased_alone() {
        let (u, _dir) = secured();
        request(
            &u,
            http::Method::GET,
            "/",
            "cy",
            200,
            std::time::Duration::from_millis(5),
            1_000,
        );
        let long = "a".repeat(60_000);
        for path in [
            format!("/customers/{long}"),
            format!("/customers/{long}/events"),
        ] {
            let r = handle(&u, "GET", &path, None, 1_000, as_viewer());
            assert_eq!((r.status, r.audit.is_some()), (404, false));
        }
        let op = Caller {
            loopback: false,
            role: Some(Role::Operator),
        };
        let r = handle(&u, "DELETE", &format!("/customers/{long}"), None, 1_000, op);
        assert_eq!((r.status, r.audit.is_some()), (404, false));
        let r = handle(&u, "DELETE", "/customers/cy/events", None, 1_000, op);
        assert_eq!(r.status, 405);
        assert!(u.state().store.contains("cy"), "nobody erased");
        // The longest id usher takes is still looked up, and audited.
        let r = handle(
            &u,
            "GET",
            &format!("/customers/{}", "b".repeat(128)),
            None,
            1_000,
            as_viewer(),
        );
        assert_eq!((r.status, r.audit.is_some()), (404, true));
    }

    #[test]
    fn funnels_and_a_customers_events_answer_as_json() {
        use std::time::Duration;
        let (u, _dir) = secured();
        let t = 1_700_000_000_000;
        let fast = Duration::from_millis(5);
        request(&u, http::Method::POST, "/cart", "ann", 200, fast, t);
        request(
            &u,
            http::Method::GET,
            "/checkout",
            "ann",
            503,
            fast,
            t + 1_000,
        );
        request(&u, http::Method::POST, "/cart", "ben", 200, fast, t);
        request(
            &u,
            http::Method::GET,
            "/checkout/done",
            "ben",
            200,
            fast,
            t + 1_000,
        );
        // ann abandons at the checkout, after trouble.
        u.sweep_events(t + 61_000);
        let r = handle(
            &u,
            "GET",
            "/funnels",
            Some("window=15m"),
            t + 62_000,
            as_viewer(),
        );
        assert_eq!(r.status, 200);
        let v = body(&r);
        let f = &v["funnels"][0];
        assert_eq!(
            (f["completed"].as_u64(), f["abandoned"].as_u64()),
            (Some(1), Some(1)),
            "{v}"
        );
        let checkout = &f["steps"][1];
        assert_eq!(
            checkout["dropped"]["after_trouble"]["customers"],
            serde_json::json!(["ann"])
        );
        assert_eq!(checkout["reached"]["count"], 2);
        assert_eq!(checkout["reached"]["by_tier"]["standard"]["count"], 2);
        for bad in ["window=forever", "window=500ms", "window=31d", "window=0s"] {
            assert_eq!(
                handle(&u, "GET", "/funnels", Some(bad), 0, as_viewer()).status,
                400,
                "{bad}"
            );
        }
        assert_eq!(
            handle(&u, "GET", "/funnels", Some("window=1s"), 0, as_viewer()).status,
            200
        );
        // The abandonment is an event about ann, and only ann.
        let r = handle(
            &u,
            "GET",
            "/customers/ann/events",
            None,
            t + 62_000,
            as_viewer(),
        );
        assert_eq!(r.audit.as_ref().map(|a| a.action), Some("events"));
        let v = body(&r);
        let events = v["events"].as_array().unwrap();
        assert!(!events.is_empty(), "{v}");
        assert!(events.iter().all(|e| e["subject"] == "ann"), "{v}");
        let ben = body(&handle(
            &u,
            "GET",
            "/customers/ben/events",
            None,
            t,
            as_viewer(),
        ));
        assert!(ben["events"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["subject"] == "ben"));
        // The now view.
        let n = body(&handle(&u, "GET", "/now", None, t + 62_000, as_viewer()));
        assert!(n["routes"][0]["apdex"].is_number() || n["routes"][0]["apdex"].is_null());
        assert!(n["degraded_by_tier"].get("gold").is_some(), "{n}");
        // Erasure reaches the history.
        let op = Caller {
            loopback: false,
            role: Some(Role::Operator),
        };
        handle(&u, "DELETE", "/customers/ann", None, t, op);
        let v = body(&handle(
            &u,
            "GET",
            "/funnels",
            Some("window=15m"),
            t + 62_000,
            as_viewer(),
        ));
        assert_eq!(v["funnels"][0]["abandoned"], 0, "{v}");
        // Someone usher holds nothing about is a 404, and audited as one.
        for (path, action) in [
            ("/customers/ann/events", "events"),
            ("/customers/ann", "lookup"),
            ("/customers/nobody/events", "events"),
        ] {
            let r = handle(&u, "GET", path, None, t, as_viewer());
            assert_eq!(
                (r.status, r.audit.as_ref().map(|a| a.action)),
                (404, Some(action)),
                "{path}"
            );
        }
    }
}
