//! The engine's decisions, driven without a socket: time is passed in, the RNG is seeded.

use super::*;
use crate::config::Config;
use crate::protection::Protection;
use http::{HeaderMap, Method, Uri};
use rand::rngs::SmallRng;
use rand::SeedableRng;
use std::path::Path;

const BASE: &str = r#"
[identity]
tier = [{ header = "x-customer-tier", trusted_from = ["127.0.0.1/32"] }]
[[tiers]]
name = "gold"
protected = true
[[tiers]]
name = "standard"
[protection]
rescue_below = 50
rescue_for = "1m"
experience_header = "x-usher-experience"
[[pools]]
name = "web"
upstreams = ["127.0.0.1:9001", "127.0.0.1:9002"]
[[pools]]
name = "vip"
upstreams = ["127.0.0.1:9101"]
[[pools]]
name = "solo"
upstreams = ["127.0.0.1:9201"]
[[routes]]
name = "checkout"
match = { path_prefix = "/checkout" }
pool = "web"
reserved_pool = "vip"
critical = true
target = "100ms"
[[routes]]
name = "solo"
match = { path_prefix = "/solo" }
pool = "solo"
[[routes]]
name = "site"
pool = "web"
"#;

fn usher(extra: &str) -> (Arc<Usher>, Instant) {
    let cfg = Config::parse(&format!("{BASE}\n{extra}"), Path::new(".")).unwrap();
    let t0 = Instant::now();
    (Usher::starting_at(cfg, t0), t0)
}

fn begin(
    u: &Usher,
    method: Method,
    path: &str,
    customer: &str,
    tier: Option<&str>,
    now_ms: u64,
) -> Exchange {
    let mut h = HeaderMap::new();
    h.insert("x-customer-id", customer.parse().unwrap());
    h.insert("host", "shop.example".parse().unwrap());
    if let Some(t) = tier {
        h.insert("x-customer-tier", t.parse().unwrap());
    }
    let uri: Uri = path.parse().unwrap();
    let mut ex = Exchange::new();
    u.begin(
        &mut ex,
        &RequestHead {
            version: http::Version::HTTP_11,
            method: &method,
            uri: &uri,
            headers: &h,
            peer: Some("127.0.0.1".parse().unwrap()),
        },
        now_ms,
    );
    ex
}

fn addr(u: &Usher, up: UpstreamId) -> std::net::SocketAddr {
    u.generation().upstreams().node(up).addr()
}

fn route(u: &Usher, r: crate::ids::RouteId) -> Arc<RouteState> {
    u.generation().route_state(r).unwrap().clone()
}

fn rng() -> SmallRng {
    SmallRng::seed_from_u64(3)
}

#[test]
fn gold_on_checkout_is_protected_and_served_from_the_reserved_pool() {
    let (u, t0) = usher("");
    let mut ex = begin(&u, Method::GET, "/checkout/pay", "g", Some("gold"), 1);
    assert_eq!(ex.protection(), Some(Protection::TierOnCritical));
    let up = u.choose_upstream(&mut ex, t0, &mut rng()).unwrap();
    assert_eq!(addr(&u, up).port(), 9101);

    // Standard customers on the same route: the main pool, unprotected.
    let mut std = begin(&u, Method::GET, "/checkout/pay", "s", None, 1);
    assert_eq!(std.protection(), None);
    let up = u.choose_upstream(&mut std, t0, &mut rng()).unwrap();
    assert_ne!(addr(&u, up).port(), 9101);

    // Gold elsewhere: not protected (protected_anywhere is off).
    assert_eq!(
        begin(&u, Method::GET, "/", "g", Some("gold"), 1).protection(),
        None
    );
}

#[test]
fn a_reserved_pool_that_is_down_falls_back_to_the_main_pool() {
    let (u, t0) = usher("");
    let mut ex = begin(&u, Method::GET, "/checkout", "g", Some("gold"), 1);
    let vip = u.choose_upstream(&mut ex, t0, &mut rng()).unwrap();
    // The reserved upstream refuses the connection: ejected at once.
    u.attempt_failed(&mut ex, Outcome::ConnectFailure, t0);
    assert_eq!(u.retry(&mut ex, false, t0), RetryVerdict::Retry);
    let next = u.choose_upstream(&mut ex, t0, &mut rng()).unwrap();
    assert_ne!(next, vip);
    assert_ne!(addr(&u, next).port(), 9101);
    // A new protected request does not even try it: no panic mode in a reserved pool.
    let mut ex2 = begin(&u, Method::GET, "/checkout", "g2", Some("gold"), 1);
    let first = u.choose_upstream(&mut ex2, t0, &mut rng()).unwrap();
    assert_ne!(first, vip);
}

#[test]
fn retries_follow_method_budget_and_alternatives() {
    let (u, t0) = usher("");
    let mut r = rng();
    // GET answered 503: retried once on another upstream, not twice.
    let mut get = begin(&u, Method::GET, "/", "a", None, 1);
    let first = u.choose_upstream(&mut get, t0, &mut r).unwrap();
    u.response_head(&mut get, 503, t0);
    assert_eq!(u.retry(&mut get, true, t0), RetryVerdict::Retry);
    let second = u.choose_upstream(&mut get, t0, &mut r).unwrap();
    assert_ne!(first, second, "a retry goes to a different upstream");
    u.response_head(&mut get, 503, t0);
    assert_eq!(u.retry(&mut get, true, t0), RetryVerdict::NotAllowed);

    // POST that reached an upstream: never retried; one that never connected: retried.
    let mut post = begin(&u, Method::POST, "/", "b", None, 1);
    u.choose_upstream(&mut post, t0, &mut r);
    assert_eq!(u.retry(&mut post, true, t0), RetryVerdict::NotIdempotent);
    assert_eq!(u.retry(&mut post, false, t0), RetryVerdict::Retry);

    // A one-upstream pool has nowhere else to go.
    let mut solo = begin(&u, Method::GET, "/solo", "c", None, 1);
    u.choose_upstream(&mut solo, t0, &mut r);
    assert_eq!(u.retry(&mut solo, true, t0), RetryVerdict::NoAlternative);
}

#[test]
fn the_retry_budget_stops_a_retry_storm() {
    let (u, t0) = usher("[retries]\nbudget_ratio = 0.1\nbudget_min_per_sec = 0\n");
    let mut r = rng();
    let mut granted = 0;
    for i in 0..100 {
        let mut ex = begin(&u, Method::GET, "/", &format!("c{i}"), None, 1);
        u.choose_upstream(&mut ex, t0, &mut r);
        if u.retry(&mut ex, true, t0) == RetryVerdict::Retry {
            granted += 1;
        }
    }
    // 10% of 100 requests.
    assert_eq!(granted, 10);
    assert_eq!(u.state().metrics.retry_budget_exhausted.get(), 90);
}

#[test]
fn a_protected_try_is_cut_short_at_a_multiple_of_the_routes_p99() {
    let (u, t0) = usher("");
    let ms = Duration::from_millis;
    let checkout = route(&u, 0);
    let checkout = &checkout.stats;
    let gold = |u: &Usher, method: Method| begin(u, method, "/checkout/pay", "g", Some("gold"), 1);
    let first_try = |u: &Usher, ex: &mut Exchange| {
        u.choose_upstream(ex, t0, &mut rng()).unwrap();
        u.try_timeout(ex, t0)
    };

    // Too few requests for a p99 worth trusting: the pool's own timeout stands.
    for _ in 0..99 {
        checkout.record(Some(ms(5)), false, (0, 0), 1);
    }
    u.refresh_try_timeouts(1);
    assert_eq!(u.route_try_timeout("checkout"), None);
    assert_eq!(first_try(&u, &mut gold(&u, Method::GET)), None);

    // 4 x a 5 ms p99 is under the floor: the floor.
    checkout.record(Some(ms(5)), false, (0, 0), 1);
    u.refresh_try_timeouts(1);
    assert_eq!(u.route_try_timeout("checkout"), Some(ms(50)));
    let mut ex = gold(&u, Method::GET);
    assert_eq!(first_try(&u, &mut ex), Some(ms(50)));

    // The try runs out: the upstream is charged the wait, the retry goes elsewhere with the
    // pool's full timeout.
    let cut = ex.upstream().unwrap();
    u.try_timed_out(&mut ex, t0 + ms(50));
    assert_eq!(u.state().metrics.try_timeouts.get(), 1);
    assert!(u.generation().upstreams().cost(cut, t0 + ms(50), true) >= 0.05);
    assert_eq!(u.retry(&mut ex, true, t0 + ms(50)), RetryVerdict::Retry);
    assert_ne!(first_try(&u, &mut ex), Some(ms(50)));
    assert_ne!(ex.upstream(), Some(cut));

    // A slower route gets a longer timeout: 4 x its p99 of about 30 ms.
    for _ in 0..100 {
        checkout.record(Some(ms(30)), false, (0, 0), 1);
    }
    u.refresh_try_timeouts(1);
    let t = u.route_try_timeout("checkout").unwrap();
    assert!(t >= ms(119) && t <= ms(122), "{t:?}");

    // Only what can be retried is cut short: not standard customers, not a POST, not a body.
    let mut standard = begin(&u, Method::GET, "/checkout/pay", "s", None, 1);
    assert_eq!(first_try(&u, &mut standard), None);
    assert_eq!(first_try(&u, &mut gold(&u, Method::POST)), None);
    let mut with_body = gold(&u, Method::PUT);
    with_body.bodiless = false;
    assert_eq!(first_try(&u, &mut with_body), None);
    assert!(first_try(&u, &mut gold(&u, Method::PUT)).is_some());

    // Off with a factor of 0.
    let off = BASE.replace("[protection]\n", "[protection]\ntry_timeout_factor = 0\n");
    let off = Usher::new(Config::parse(&off, Path::new(".")).unwrap());
    for _ in 0..200 {
        route(&off, 0).stats.record(Some(ms(5)), false, (0, 0), 1);
    }
    off.refresh_try_timeouts(1);
    assert_eq!(off.route_try_timeout("checkout"), None);
}

#[test]
fn a_customer_who_suffered_is_rescued_and_the_site_is_told() {
    let (u, t0) = usher("");
    let mut r = rng();
    let get = Method::GET;
    // Three failed requests: (0 + 2) / (3 + 2) = 40, under rescue_below 50.
    for i in 0..3 {
        let mut ex = begin(&u, Method::GET, "/", "jo", None, 1_000 + i);
        u.choose_upstream(&mut ex, t0, &mut r);
        u.response_head(&mut ex, 503, t0);
        let f = Finish {
            method: &get,
            path: "/",
            status: 503,
            failure: None,
            bytes_in: 0,
            bytes_out: 0,
            now: t0,
            now_ms: 1_000 + i,
        };
        u.finish(&mut ex, &f);
    }
    let ex = begin(&u, Method::GET, "/", "jo", None, 2_000);
    assert_eq!(ex.protection(), Some(Protection::Rescue));
    let (name, value) = u.experience_header(&ex).unwrap();
    assert_eq!(&name[..], b"x-usher-experience");
    assert_eq!(value, "score=40; state=degraded");
    // A minute later (rescue_for) the rescue is over; the score has recovered a little.
    let later = begin(&u, Method::GET, "/", "jo", None, 62_000);
    assert_eq!(later.protection(), None);
    // Someone never seen gets no header: there is nothing to tell.
    assert!(u
        .experience_header(&begin(&u, Method::GET, "/", "new", None, 1))
        .is_none());
}

#[test]
fn finishing_releases_the_upstream() {
    let (u, t0) = usher("");
    let mut ex = begin(&u, Method::GET, "/", "a", None, 1);
    let up = u.choose_upstream(&mut ex, t0, &mut rng()).unwrap();
    assert_eq!(u.generation().upstreams().view(up, t0).in_flight, 1);
    u.response_head(&mut ex, 200, t0);
    let get = Method::GET;
    u.finish(
        &mut ex,
        &Finish {
            method: &get,
            path: "/",
            status: 200,
            failure: None,
            bytes_in: 0,
            bytes_out: 0,
            now: t0,
            now_ms: 1,
        },
    );
    assert_eq!(u.generation().upstreams().view(up, t0).in_flight, 0);
}

mod events {
    use super::*;
    use crate::events::model::EventType;

    const EVENTS: &str = r#"
[identity]
tier = [{ header = "x-customer-tier", trusted_from = ["127.0.0.1/32"] }]
[[tiers]]
name = "gold"
protected = true
follow_up = "phone within 1h"
notify_failures = true
[[tiers]]
name = "standard"
follow_up = "email"
[events]
source = "usher://test"
cooldown = "10m"
recover_above = 80
[[pools]]
name = "web"
upstreams = ["127.0.0.1:9001", "127.0.0.1:9002", "127.0.0.1:9003"]
[[routes]]
name = "checkout"
match = { path_prefix = "/checkout" }
pool = "web"
critical = true
slo = 0.99
[[routes]]
name = "cart"
match = { path_prefix = "/cart" }
pool = "web"
[[routes]]
name = "site"
pool = "web"
[[funnels]]
name = "checkout"
abandon_after = "30m"
steps = [
  { name = "cart", method = "POST", path = "/cart" },
  { name = "checkout", path = "/checkout" },
  { name = "pay", method = "POST", path = "/checkout/pay" },
  { name = "done", path = "/checkout/done" },
]
"#;

    fn usher() -> (Arc<Usher>, Instant) {
        let cfg = Config::parse(EVENTS, Path::new(".")).unwrap();
        let t0 = Instant::now();
        (Usher::starting_at(cfg, t0), t0)
    }

    /// One request through the engine, answered `status` by whichever upstream is chosen.
    #[allow(clippy::too_many_arguments)]
    fn request(
        u: &Usher,
        method: Method,
        path: &str,
        who: &str,
        tier: Option<&str>,
        status: u16,
        now_ms: u64,
        t: Instant,
    ) -> Option<UpstreamId> {
        let zero = Duration::ZERO;
        crate::engine::testing::request(u, &method, path, who, tier, status, zero, now_ms, t)
    }

    fn of(u: &Usher, kind: EventType) -> Vec<serde_json::Value> {
        u.state()
            .events
            .recent(1000)
            .iter()
            .filter(|e| e.kind == kind)
            .map(|e| serde_json::to_value(e.as_ref()).unwrap())
            .collect()
    }

    const MIN: u64 = 60_000;

    #[test]
    fn degraded_then_recovered_once_each_with_what_to_do() {
        let (u, t) = usher();
        let t0 = 1_000 * MIN;
        request(&u, Method::GET, "/", "ann", None, 200, t0, t);
        for i in 0..3 {
            request(&u, Method::GET, "/products", "ann", None, 503, t0 + i, t);
        }
        let d = of(&u, EventType::CustomerDegraded);
        assert_eq!(d.len(), 1, "{d:?}");
        let e = &d[0];
        assert_eq!(
            (e["subject"].as_str(), e["source"].as_str()),
            (Some("ann"), Some("usher://test"))
        );
        assert_eq!(e["data"]["tier"], "standard");
        assert_eq!(e["data"]["follow_up"], "email");
        assert_eq!(e["data"]["state"], "degraded");
        assert_eq!(e["data"]["error"], "upstream_5xx");
        assert_eq!(e["data"]["route"], "site");
        assert_eq!(e["data"]["journey"].as_array().unwrap().len(), 3);
        // Good requests bring the score back over recover_above (80): recovered, once.
        for i in 0..12 {
            request(&u, Method::GET, "/", "ann", None, 200, t0 + 100 + i, t);
        }
        assert_eq!(of(&u, EventType::CustomerRecovered).len(), 1);
        // Degraded again within the cooldown: no second event.
        for i in 0..30 {
            request(&u, Method::GET, "/", "ann", None, 503, t0 + 200 + i, t);
        }
        assert_eq!(of(&u, EventType::CustomerDegraded).len(), 1, "cooldown");
        assert!(u.state().metrics.encode().contains(
            "usher_events_total{outcome=\"suppressed\",sink=\"none\",type=\"usher.customer.degraded\"} 1"
        ));
    }

    #[test]
    fn failed_requests_of_a_tier_that_asks_on_critical_routes_only() {
        let (u, t) = usher();
        request(
            &u,
            Method::GET,
            "/checkout",
            "gus",
            Some("gold"),
            502,
            MIN,
            t,
        );
        request(&u, Method::GET, "/", "gus", Some("gold"), 502, MIN, t);
        request(&u, Method::GET, "/checkout", "sid", None, 502, MIN, t);
        let f = of(&u, EventType::RequestFailed);
        assert_eq!(f.len(), 1, "{f:?}");
        assert_eq!(f[0]["subject"], "gus");
        assert_eq!(f[0]["data"]["follow_up"], "phone within 1h");
        assert_eq!(f[0]["data"]["status"], 502);
        assert_eq!(f[0]["data"]["route"], "checkout");
    }

    #[test]
    fn a_customer_who_retries_a_failed_payment_is_raised_struggling_once_per_cooldown() {
        let (u, t) = usher();
        let t0 = 20 * MIN;
        let pay = |who: &str, status: u16, at: u64| {
            request(&u, Method::POST, "/checkout/pay", who, None, status, at, t)
        };
        pay("ida", 503, t0);
        assert!(
            of(&u, EventType::Struggling).is_empty(),
            "one failure is no struggle"
        );
        pay("ida", 200, t0 + 4_000);
        let e = of(&u, EventType::Struggling);
        assert_eq!(e.len(), 1, "{e:?}");
        assert_eq!(e[0]["subject"], "ida");
        assert_eq!(e[0]["data"]["signals"], serde_json::json!(["retry"]));
        assert_eq!(e[0]["data"]["route"], "checkout");
        assert_eq!(e[0]["data"]["path"], "/checkout/pay");
        let journey = e[0]["data"]["journey"].as_array().unwrap();
        assert_eq!(
            journey.last().unwrap()["marks"],
            serde_json::json!(["retry"])
        );
        assert_eq!(journey[0]["marks"], serde_json::json!(["failed"]));
        // Within the cooldown: marked and counted, not raised again.
        pay("ida", 503, t0 + 5_000);
        pay("ida", 503, t0 + 6_000);
        assert_eq!(of(&u, EventType::Struggling).len(), 1);
        // Someone whose retries are more than 10 s apart is not struggling.
        pay("jon", 503, t0);
        pay("jon", 503, t0 + 10_001);
        assert!(of(&u, EventType::Struggling)
            .iter()
            .all(|e| e["subject"] != "jon"));
        let text = u.state().metrics.encode();
        let line = |signal: &str| {
            text.lines()
                .find(|l| {
                    l.starts_with(&format!(
                        "usher_struggle_total{{route=\"checkout\",signal=\"{signal}\"}}"
                    ))
                })
                .map(|l| l.rsplit(' ').next().unwrap().to_string())
        };
        // ida: retry at +4 s, +5 s, +6 s; a loop at +5 s and +6 s (three of four within 15 s).
        assert_eq!(line("retry").as_deref(), Some("3"), "{text}");
        assert_eq!(line("loop").as_deref(), Some("2"));
        assert_eq!(line("form_loop").as_deref(), Some("0"));
    }

    #[test]
    fn a_form_refused_again_and_again_is_a_form_loop_and_can_count_in_the_score() {
        let cfg = format!("{EVENTS}\n[struggle]\nin_score = true\nform_loop_count = 2\n");
        let cfg = Config::parse(&cfg, Path::new(".")).unwrap();
        let t = Instant::now();
        let u = Usher::starting_at(cfg, t);
        let t0 = 30 * MIN;
        request(&u, Method::POST, "/cart", "kim", None, 422, t0, t);
        let g = u.generation();
        let before = u
            .state()
            .store
            .get("kim", t0, &g.store_settings().model)
            .unwrap();
        assert_eq!(before.frustrated, 0, "a 4xx is judged by its latency");
        request(
            &u,
            Method::POST,
            "/cart/items",
            "kim",
            None,
            422,
            t0 + 1_000,
            t,
        );
        let after = u
            .state()
            .store
            .get("kim", t0 + 1_000, &g.store_settings().model)
            .unwrap();
        assert_eq!(
            after.frustrated, 1,
            "in_score: the struggling step counts as frustrated"
        );
        let e = of(&u, EventType::Struggling);
        assert_eq!(e.len(), 1, "{e:?}");
        assert_eq!(e[0]["data"]["signals"], serde_json::json!(["form_loop"]));
        assert_eq!(e[0]["data"]["status"], 422);
    }

    #[test]
    fn a_struggle_counted_in_the_score_is_not_trouble_to_retry() {
        let cfg = format!("{EVENTS}\n[struggle]\nin_score = true\n");
        let cfg = Config::parse(&cfg, Path::new(".")).unwrap();
        let t = Instant::now();
        let u = Usher::starting_at(cfg, t);
        let t0 = 30 * MIN;
        // Four quick, successful loads of one page: a loop from the third on, never a retry,
        // though the looping steps count as frustrated in the score.
        for k in 0..4 {
            request(
                &u,
                Method::GET,
                "/cart",
                "lia",
                None,
                200,
                t0 + k * 1_000,
                t,
            );
        }
        let g = u.generation();
        let lia = u
            .state()
            .store
            .get("lia", t0 + 3_000, &g.store_settings().model)
            .unwrap();
        assert_eq!(lia.frustrated, 2, "in_score: both looping steps");
        use crate::experience::Marks;
        let marks: Vec<Marks> = lia.journey.iter().map(|s| s.marks()).collect();
        assert_eq!(
            marks,
            [Marks::empty(), Marks::empty(), Marks::LOOP, Marks::LOOP],
            "a loop of fast answers breeds no retry"
        );
        assert!(lia.journey.iter().all(|s| !s.bad() && !s.frustrated()));
    }

    #[test]
    fn abandoning_the_checkout_after_errors_is_reported_with_the_furthest_step() {
        let (u, t) = usher();
        let t0 = 10 * MIN;
        request(&u, Method::POST, "/cart", "cat", None, 200, t0, t);
        request(&u, Method::GET, "/checkout", "cat", None, 200, t0 + MIN, t);
        request(
            &u,
            Method::POST,
            "/checkout/pay",
            "cat",
            None,
            503,
            t0 + 2 * MIN,
            t,
        );
        // Someone else finishes.
        for (m, p) in [
            (Method::POST, "/cart"),
            (Method::GET, "/checkout"),
            (Method::POST, "/checkout/pay"),
            (Method::GET, "/checkout/done"),
        ] {
            request(&u, m, p, "dan", None, 200, t0, t);
        }
        u.sweep_events(t0 + 29 * MIN);
        assert!(of(&u, EventType::JourneyAbandoned).is_empty());
        u.sweep_events(t0 + 30 * MIN);
        let a = of(&u, EventType::JourneyAbandoned);
        assert_eq!(a.len(), 1, "{a:?}");
        let d = &a[0]["data"];
        assert_eq!(a[0]["subject"], "cat");
        assert_eq!(d["funnel"], "checkout");
        assert_eq!(d["furthest_step"], "pay");
        assert_eq!(d["errors_in_funnel"], 1);
        assert_eq!(d["after_trouble"], true);
        assert_eq!(d["minutes_since_last_step"], 28);
        assert_eq!(
            d["journey"].as_array().unwrap().last().unwrap()["status"],
            503
        );
    }

    #[test]
    fn ejections_and_protected_customers_steered_clear_are_reported() {
        let (u, t) = usher();
        // A refused connection ejects an upstream.
        let mut ex = begin(&u, Method::GET, "/", "x", None, MIN);
        let dead = u.choose_upstream(&mut ex, t, &mut rng()).unwrap();
        u.attempt_failed(&mut ex, Outcome::ConnectFailure, t);
        let ej = of(&u, EventType::UpstreamEjected);
        assert_eq!(ej.len(), 1);
        assert_eq!(ej[0]["subject"], addr(&u, dead).to_string());
        assert_eq!(ej[0]["data"]["rule"], "connect_failure");
        assert_eq!(ej[0]["data"]["pools"][0], "web");
        // A gold customer on the checkout is served elsewhere, and that is said.
        let up = request(
            &u,
            Method::GET,
            "/checkout",
            "gia",
            Some("gold"),
            200,
            MIN,
            t,
        )
        .unwrap();
        assert_ne!(up, dead);
        let r = of(&u, EventType::Rerouted);
        assert_eq!(r.len(), 1, "{r:?}");
        assert_eq!(r[0]["data"]["avoided_upstream"], addr(&u, dead).to_string());
        assert_eq!(r[0]["data"]["protection"], "tier_on_critical");
        // Standard customers are not "rerouted": they are just balanced.
        request(&u, Method::GET, "/checkout", "sal", None, 200, MIN, t);
        assert_eq!(of(&u, EventType::Rerouted).len(), 1);
    }

    #[test]
    fn a_burning_checkout_raises_slo_burn_once_per_realert() {
        let (u, t) = usher();
        let t0 = 100 * MIN;
        // An hour of 30% failures against a 99% objective: 30x the budget rate.
        for m in 0..60 {
            for i in 0..10 {
                let status = if i < 3 { 503 } else { 200 };
                request(
                    &u,
                    Method::GET,
                    "/checkout",
                    &format!("c{m}-{i}"),
                    None,
                    status,
                    t0 + m * MIN,
                    t,
                );
            }
        }
        u.sweep_events(t0 + 59 * MIN);
        u.sweep_events(t0 + 59 * MIN + 1000);
        let b = of(&u, EventType::SloBurn);
        assert_eq!(b.len(), 1, "{b:?}");
        assert_eq!(b[0]["subject"], "checkout");
        assert_eq!(b[0]["data"]["severity"], "page");
        assert!(b[0]["data"]["short_window_burn_rate"].as_f64().unwrap() > 14.4);
    }

    /// Feeds the checkout a steady 30% failures (30x a 99% objective's budget) for `minutes`
    /// minutes from `t0`, sweeping three times a minute (at its start, half way and its last
    /// millisecond), and returns when each `usher.route.slo_burn` was raised, in Unix ms.
    fn burn_times(u: &Usher, t: Instant, t0: u64, minutes: u64) -> Vec<u64> {
        for m in 0..minutes {
            let at = t0 + m * MIN;
            for i in 0..10 {
                let status = if i < 3 { 503 } else { 200 };
                let who = format!("c{i}");
                request(u, Method::GET, "/checkout", &who, None, status, at, t);
            }
            for offset in [0, MIN / 2, MIN - 1] {
                u.sweep_events(at + offset);
            }
        }
        let mut times: Vec<u64> = of(u, EventType::SloBurn)
            .iter()
            .map(|e| {
                assert_eq!(e["subject"], "checkout");
                assert_eq!(e["data"]["severity"], "page");
                let at = humantime::parse_rfc3339(e["time"].as_str().unwrap()).unwrap();
                at.duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_millis() as u64
            })
            .collect();
        times.sort_unstable();
        times
    }

    #[test]
    fn a_burn_that_keeps_burning_is_raised_again_after_the_default_hour_and_not_before() {
        let text = EVENTS.replace("[events]\n", "[events]\nrecent = 100000\n");
        let cfg = Config::parse(&text, Path::new(".")).unwrap();
        assert_eq!(cfg.events.slo_realert, Duration::from_secs(3600));
        let t = Instant::now();
        let u = Usher::starting_at(cfg, t);
        let t0 = 100 * MIN;
        // The first sweep with 20 requests in the short window (slo_min_requests) raises it: the
        // start of the second minute. Every sweep after it burns as much, and only one an hour
        // later (not the one a millisecond before) raises it again.
        let first = t0 + MIN;
        assert_eq!(
            burn_times(&u, t, t0, 150),
            [first, first + 60 * MIN, first + 120 * MIN]
        );
    }

    #[test]
    fn a_burn_is_raised_again_after_the_configured_slo_realert() {
        let text = EVENTS.replace(
            "[events]\n",
            "[events]\nrecent = 100000\nslo_realert = \"10m\"\n",
        );
        let t = Instant::now();
        let u = Usher::starting_at(Config::parse(&text, Path::new(".")).unwrap(), t);
        let t0 = 100 * MIN;
        let first = t0 + MIN;
        assert_eq!(
            burn_times(&u, t, t0, 35),
            [first, first + 10 * MIN, first + 20 * MIN, first + 30 * MIN]
        );
    }

    /// One request through the engine that took `took` and was answered 200.
    fn took(u: &Usher, method: Method, path: &str, who: &str, took: Duration, now_ms: u64) {
        let mut ex = begin(u, method.clone(), path, who, None, now_ms);
        let start = ex.started();
        u.choose_upstream(&mut ex, start, &mut rng());
        u.response_head(&mut ex, 200, start + took);
        let f = Finish {
            method: &method,
            path,
            status: 200,
            failure: None,
            bytes_in: 0,
            bytes_out: 0,
            now: start + took,
            now_ms,
        };
        u.finish(&mut ex, &f);
    }

    #[test]
    fn abandoning_after_frustrating_slowness_alone_is_after_trouble_and_after_speed_is_not() {
        let (u, _) = usher();
        let t0 = 10 * MIN;
        let target = u.generation().config.routes[0].target;
        assert_eq!(target, Duration::from_millis(500), "the default target");
        // Beyond 4x the target is frustrated; 4x itself is only tolerated; 10 ms is satisfied.
        for (who, latency) in [
            ("slow", target * 4 + Duration::from_millis(1)),
            ("tolerated", target * 4),
            ("fast", Duration::from_millis(10)),
        ] {
            took(&u, Method::POST, "/cart", who, latency, t0);
            took(&u, Method::GET, "/checkout", who, latency, t0 + MIN);
        }
        u.sweep_events(t0 + 30 * MIN);
        let a = of(&u, EventType::JourneyAbandoned);
        assert_eq!(a.len(), 3, "{a:?}");
        let by = |who: &str| {
            a.iter()
                .find(|e| e["subject"] == who)
                .unwrap_or_else(|| panic!("{who} abandoned: {a:?}"))["data"]
                .clone()
        };
        for (who, frustrated, trouble) in [
            ("slow", 2, true),
            ("tolerated", 0, false),
            ("fast", 0, false),
        ] {
            let d = by(who);
            assert_eq!(d["funnel"], "checkout", "{who}");
            assert_eq!(d["furthest_step"], "checkout", "{who}");
            assert_eq!(d["errors_in_funnel"], 0, "{who}: no request failed");
            assert_eq!(d["frustrated_in_funnel"], frustrated, "{who}");
            assert_eq!(d["after_trouble"], trouble, "{who}");
        }
    }
}

mod reloads {
    use super::*;
    use crate::engine::{ReloadError, Source};
    use crate::upstream::AttemptResult;
    use crate::views::{CustomerJson, StepJson};

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    const FIRST: &str = r#"
[identity]
tier = [{ header = "x-customer-tier", trusted_from = ["127.0.0.1/32"] }]
[[tiers]]
name = "gold"
protected = true
[[tiers]]
name = "standard"
[[pools]]
name = "web"
upstreams = ["127.0.0.1:9001", "127.0.0.1:9002"]
[[routes]]
name = "promo"
match = { path_prefix = "/promo" }
pool = "web"
[[routes]]
name = "checkout"
match = { path_prefix = "/checkout" }
pool = "web"
critical = true
slo = 0.99
[[routes]]
name = "site"
pool = "web"
[[funnels]]
name = "checkout"
steps = [{ name = "cart", path = "/cart" }, { name = "pay", path = "/checkout/pay" }, { name = "done", path = "/checkout/done" }]
"#;

    /// The next file: a tier before gold, the promo route gone, the routes in another order, 9001
    /// replaced by 9003, and a tighter checkout target.
    const SECOND: &str = r#"
[identity]
tier = [{ header = "x-customer-tier", trusted_from = ["127.0.0.1/32"] }]
[[tiers]]
name = "silver"
[[tiers]]
name = "gold"
protected = true
[[tiers]]
name = "standard"
[[pools]]
name = "web"
upstreams = ["127.0.0.1:9003", "127.0.0.1:9002"]
[[routes]]
name = "site"
match = { path_prefix = "/site" }
pool = "web"
[[routes]]
name = "checkout"
match = { path_prefix = "/checkout" }
pool = "web"
critical = true
slo = 0.99
target = "100ms"
[[funnels]]
name = "checkout"
steps = [{ name = "cart", path = "/cart" }, { name = "pay", path = "/checkout/pay" }, { name = "done", path = "/checkout/done" }]
"#;

    fn source() -> Source {
        Source {
            path: None,
            hash: String::new(),
            loaded_ms: 0,
            cause: "reload",
        }
    }

    fn served(
        u: &Usher,
        method: Method,
        path: &str,
        who: &str,
        tier: Option<&str>,
        at: u64,
        t: Instant,
    ) {
        let mut ex = begin(u, method.clone(), path, who, tier, at);
        u.choose_upstream(&mut ex, t, &mut rng());
        u.response_head(&mut ex, 200, t);
        u.finish(
            &mut ex,
            &Finish {
                method: &method,
                path,
                status: 200,
                failure: None,
                bytes_in: 0,
                bytes_out: 0,
                now: t,
                now_ms: at,
            },
        );
    }

    #[test]
    fn a_reload_carries_what_was_learned_by_name_and_address() {
        let t0 = Instant::now();
        let u = Usher::starting_at(Config::parse(FIRST, Path::new(".")).unwrap(), t0);
        served(
            &u,
            Method::GET,
            "/promo/sale",
            "ann",
            Some("gold"),
            1_000,
            t0,
        );
        served(&u, Method::POST, "/cart", "ann", Some("gold"), 2_000, t0);
        served(
            &u,
            Method::GET,
            "/checkout/pay",
            "ann",
            Some("gold"),
            3_000,
            t0,
        );
        // 9002 refuses a connection and is ejected.
        let g1 = u.generation();
        let b = g1
            .upstreams()
            .find("127.0.0.1:9002".parse().unwrap())
            .unwrap();
        g1.upstreams()
            .observe(b, AttemptResult::ConnectFailed, ms(1), t0, &mut rng());
        assert!(!g1.upstreams().serving(b));
        let checkout_before = g1.route_state(1).unwrap().clone();
        // A request admitted now keeps this generation to its end.
        let mut in_flight = begin(&u, Method::GET, "/promo/late", "bob", None, 4_000);
        drop(g1);

        let next = Config::parse(SECOND, Path::new(".")).unwrap();
        let r = u.apply(next, source()).unwrap();
        assert_eq!(r.generation, 2);
        let g2 = u.generation();

        // The route kept its state by name although it moved; the promo route is gone.
        assert!(Arc::ptr_eq(g2.route_state(1).unwrap(), &checkout_before));
        assert_eq!(checkout_before.stats.requests(), 1);
        assert_eq!(g2.config.routes[1].target, ms(100));
        // 9002 stayed and is still ejected; 9003 is new and fresh; 9001 is gone.
        let b2 = g2
            .upstreams()
            .find("127.0.0.1:9002".parse().unwrap())
            .unwrap();
        assert!(!g2.upstreams().serving(b2));
        assert_eq!(g2.upstreams().view(b2, t0).ejections, 1);
        let c = g2
            .upstreams()
            .find("127.0.0.1:9003".parse().unwrap())
            .unwrap();
        assert!(g2.upstreams().serving(c));
        assert!(g2
            .upstreams()
            .find("127.0.0.1:9001".parse().unwrap())
            .is_none());

        // Ann is gold still, though gold is no longer the first tier, and her journey still names
        // the route that served each step, the removed one included.
        let st = u.state();
        let ann = st
            .store
            .get("ann", 5_000, &g2.store_settings().model)
            .unwrap();
        let view = CustomerJson::new(st, &g2, &ann);
        assert_eq!(view.tier, "gold");
        let routes: Vec<Option<&str>> = view.journey.iter().map(|s| s.route.as_deref()).collect();
        assert_eq!(routes, [Some("promo"), Some("site"), Some("checkout")]);
        // Her funnel progress carried over: pay is her furthest step.
        assert_eq!(
            st.events.funnels.progress_of(g2.funnels(), "ann"),
            vec![(0, 1)]
        );
        // Gold is protected on the checkout under the new file too.
        let gold = begin(&u, Method::GET, "/checkout/pay", "ann", Some("gold"), 6_000);
        assert!(gold.protection().is_some());

        // The request admitted before the reload finishes on its own generation's promo route.
        assert_eq!(in_flight.generation().unwrap().number, 1);
        assert!(u.choose_upstream(&mut in_flight, t0, &mut rng()).is_some());
        let rec = u.finish(
            &mut in_flight,
            &Finish {
                method: &Method::GET,
                path: "/promo/late",
                status: 200,
                failure: None,
                bytes_in: 0,
                bytes_out: 0,
                now: t0,
                now_ms: 7_000,
            },
        );
        assert!(rec.is_some());
        let bob = st
            .store
            .get("bob", 7_000, &g2.store_settings().model)
            .unwrap();
        assert_eq!(
            StepJson::new(st, &g2, &bob.journey[0]).route.as_deref(),
            Some("promo")
        );
    }

    #[test]
    fn settings_that_pingora_fixes_at_start_are_refused_whole() {
        let u = Usher::starting_at(
            Config::parse(FIRST, Path::new(".")).unwrap(),
            Instant::now(),
        );
        let moved = format!("[server]\nlisten = [\"127.0.0.1:18080\"]\nthreads = 4\n{SECOND}");
        let err = u
            .apply(Config::parse(&moved, Path::new(".")).unwrap(), source())
            .unwrap_err();
        let ReloadError::Cold(what) = &err else {
            panic!("{err}")
        };
        assert_eq!(what.len(), 2, "{what:?}");
        assert!(what[0].starts_with("server.listen changed") && what[0].contains("--upgrade"));
        assert!(what[1].starts_with("server.threads changed from 1 to 4"));
        let moved_state = format!("[state]\ndir = \"elsewhere\"\n{SECOND}");
        let err = u
            .apply(
                Config::parse(&moved_state, Path::new(".")).unwrap(),
                source(),
            )
            .unwrap_err();
        assert!(err.to_string().contains("state.dir changed"), "{err}");
        // The head limit is HTTP/2's too once HTTP/2 is on (h2c here), and that one is fixed.
        let h2c = Usher::starting_at(
            Config::parse(&format!("[server]\nh2c = true\n{FIRST}"), Path::new(".")).unwrap(),
            Instant::now(),
        );
        let other_limit = format!("[server]\nh2c = true\nmax_header_bytes = 16384\n{SECOND}");
        let err = h2c
            .apply(
                Config::parse(&other_limit, Path::new(".")).unwrap(),
                source(),
            )
            .unwrap_err();
        assert!(err.to_string().contains("server.max_header_bytes"), "{err}");
        let plain = format!("[server]\nmax_header_bytes = 16384\n{SECOND}");
        u.apply(Config::parse(&plain, Path::new(".")).unwrap(), source())
            .expect("without HTTP/2 the limit is usher's alone, and changes");
        u.apply(Config::parse(FIRST, Path::new(".")).unwrap(), source())
            .unwrap();
        let g = u.generation();
        assert_eq!(g.number, 3, "nothing of the refused ones applied");
        assert_eq!(g.config.routes[0].name, "promo");
    }

    #[test]
    fn host_names_are_looked_up_again_and_addresses_that_stay_keep_their_state() {
        use std::net::SocketAddr;
        let answer = std::cell::RefCell::new(vec!["10.0.0.1:8080", "10.0.0.2:8080"]);
        let mut resolve = |host: &str, port: u16| -> std::io::Result<Vec<SocketAddr>> {
            assert_eq!((host, port), ("api.internal", 8080));
            let a = answer.borrow();
            if a.is_empty() {
                return Err(std::io::Error::other("no such host"));
            }
            Ok(a.iter().map(|a| a.parse().unwrap()).collect())
        };
        let text = "[[pools]]\nname = \"api\"\nupstreams = [\"api.internal:8080\", \"127.0.0.1:9001\"]\n[[routes]]\nname = \"r\"\npool = \"api\"\n";
        let cfg = Config::parse_with(text, Path::new("."), &mut resolve).unwrap();
        assert_eq!(
            cfg.upstreams.len(),
            3,
            "every address of the name, and the literal one"
        );
        let t0 = Instant::now();
        let u = Usher::starting_at(cfg, t0);
        let g1 = u.generation();
        let two = g1
            .upstreams()
            .find("10.0.0.2:8080".parse().unwrap())
            .unwrap();
        g1.upstreams()
            .observe(two, AttemptResult::ConnectFailed, ms(1), t0, &mut rng());
        drop(g1);

        assert!(u.re_resolve(&mut resolve).is_none(), "nothing changed");
        *answer.borrow_mut() = vec!["10.0.0.2:8080", "10.0.0.3:8080"];
        let r = u.re_resolve(&mut resolve).unwrap();
        assert_eq!((r.generation, r.source.cause), (2, "resolve"));
        let g2 = u.generation();
        let addrs: Vec<String> = g2.config.upstreams.iter().map(|a| a.to_string()).collect();
        assert_eq!(addrs, ["10.0.0.2:8080", "10.0.0.3:8080", "127.0.0.1:9001"]);
        let two = g2
            .upstreams()
            .find("10.0.0.2:8080".parse().unwrap())
            .unwrap();
        assert!(
            !g2.upstreams().serving(two),
            "an address that stays keeps its ejection"
        );
        assert!(g2.upstreams().serving(1), "a new one starts fresh");
        // A failed look-up keeps the last addresses.
        answer.borrow_mut().clear();
        assert!(u.re_resolve(&mut resolve).is_none());
        assert_eq!(u.generation().config.upstreams.len(), 3);
        let m = u.state().metrics.encode();
        for (result, n) in [("unchanged", 1), ("changed", 1), ("failure", 1)] {
            assert!(
                m.contains(&format!(
                    "usher_upstream_resolutions_total{{result=\"{result}\"}} {n}"
                )),
                "{result}: {m}"
            );
        }
    }
}
