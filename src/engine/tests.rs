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
    if let Some(t) = tier {
        h.insert("x-customer-tier", t.parse().unwrap());
    }
    let uri: Uri = path.parse().unwrap();
    let mut ex = Exchange::new();
    u.begin(
        &mut ex,
        &RequestHead {
            method: &method,
            uri: &uri,
            headers: &h,
            peer: Some("127.0.0.1".parse().unwrap()),
        },
        now_ms,
    );
    ex
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
    assert_eq!(u.upstream_addr(up).unwrap().port(), 9101);

    // Standard customers on the same route: the main pool, unprotected.
    let mut std = begin(&u, Method::GET, "/checkout/pay", "s", None, 1);
    assert_eq!(std.protection(), None);
    let up = u.choose_upstream(&mut std, t0, &mut rng()).unwrap();
    assert_ne!(u.upstream_addr(up).unwrap().port(), 9101);

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
    assert_ne!(u.upstream_addr(next).unwrap().port(), 9101);
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
    assert_eq!(u.metrics().retry_budget_exhausted.get(), 90);
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
    assert_eq!(name.as_str(), "x-usher-experience");
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
    assert_eq!(u.upstreams().view(up, t0).in_flight, 1);
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
    assert_eq!(u.upstreams().view(up, t0).in_flight, 0);
}
