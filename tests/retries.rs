//! Retries, with a real usher and real origins: what may be retried (README, "Routing around sick
//! upstreams": "retries once, on another upstream: after a connect failure (any method), a
//! timeout, a broken response or a 502/503/504 (idempotent methods only), within a per-pool budget
//! (20% extra requests plus 10 per second over 10 s)") and that the budget holds.
//!
//! Every assertion is a count: the status each client got, which origin answered, how many
//! requests each origin saw, what `/metrics` and `/upstreams` say. Nothing about time is asserted.

mod common;

use common::*;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use usher::origin::Origin;

/// The request body of every POST: big enough to be a real body, well under Pingora's 64 KiB
/// retry buffer (so that a retry is never refused for want of the body).
const BODY_BYTES: usize = 1024;

/// What one request came back with.
#[derive(Debug)]
struct Answer {
    status: u16,
    /// The `x-origin` header: which origin's answer the client got ("" for usher's own).
    origin: String,
    /// The origin's echo of the request body's size (`None` when the answer is not the echo).
    body_bytes: Option<u64>,
}

async fn send(c: &reqwest::Client, method: reqwest::Method, url: String, who: &str) -> Answer {
    let mut req = c.request(method.clone(), url).header("x-customer-id", who);
    if method == reqwest::Method::POST {
        req = req
            .header("content-type", "application/octet-stream")
            .body(vec![b'x'; BODY_BYTES]);
    }
    let resp = req.send().await.expect("request reaches usher");
    let status = resp.status().as_u16();
    let origin = resp
        .headers()
        .get("x-origin")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let text = resp.text().await.unwrap_or_default();
    let body_bytes = serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|v| v["body_bytes"].as_u64());
    Answer {
        status,
        origin,
        body_bytes,
    }
}

/// Requests seen so far by each origin (health checks excluded; none are configured here).
fn seen(origins: &[&Origin]) -> Vec<u64> {
    origins.iter().map(|o| o.behavior.requests()).collect()
}

fn delta(before: &[u64], after: &[u64]) -> Vec<u64> {
    before.iter().zip(after).map(|(b, a)| a - b).collect()
}

async fn metrics(running: &usher::server::Running) -> String {
    let adm = running.admin().unwrap();
    let (status, body) = get(&client(), format!("http://{adm}/metrics"), &[]).await;
    assert_eq!(status, 200, "{body}");
    body
}

fn counter(metrics: &str, name: &str, labels: &[(&str, &str)]) -> u64 {
    sample(metrics, name, labels).unwrap_or(0.0) as u64
}

fn retries_granted(metrics: &str) -> u64 {
    counter(metrics, "usher_retries_total", &[("outcome", "granted")])
}

fn budget_exhausted(metrics: &str) -> u64 {
    counter(metrics, "usher_retry_budget_exhausted_total", &[])
}

/// The admin API's view of the upstream at `addr`.
async fn upstream_view(running: &usher::server::Running, addr: SocketAddr) -> serde_json::Value {
    let adm = running.admin().unwrap();
    let ups = json(&client(), format!("http://{adm}/upstreams")).await;
    ups["upstreams"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["address"] == addr.to_string())
        .cloned()
        .unwrap_or_else(|| panic!("{addr} not in /upstreams: {ups}"))
}

/// One pool of `upstreams` behind one catch-all route, with `extra` TOML tables appended.
fn one_pool(
    upstreams: &[SocketAddr],
    pool_extra: &str,
    extra: &str,
    dir: &std::path::Path,
) -> usher::Config {
    let ups: Vec<String> = upstreams.iter().map(|a| format!("\"{a}\"")).collect();
    config(
        &format!(
            r#"
[[pools]]
name = "web"
upstreams = [{}]
{pool_extra}
[[routes]]
name = "site"
pool = "web"
{extra}
"#,
            ups.join(", ")
        ),
        dir,
    )
}

/// Lets a failing upstream keep its share of the traffic, so that requests keep reaching it: no
/// ejection for 503s (`failure_rate` is compared with `>`, so 1.0 is never exceeded), estimates
/// that decay within a few milliseconds, so the one left alone longest looks cheapest, and a
/// negligible cost for an upstream not yet measured, so both are tried from the start. With the
/// defaults, one 503 costs a second of penalty that takes many seconds to decay, and an upstream
/// never measured costs `default_rtt` (30 ms) for ever, more than a measured one decaying towards
/// zero: whichever upstream the first request met would get every POST (samples, which would
/// explore, are only ever idempotent requests).
const KEEP_THE_FAILING_ONE_IN_PLAY: &str = r#"
[balancing]
decay = "1ms"
default_rtt = "1us"
failure_penalty = "1ms"
[outlier]
consecutive_failures = 1000
failure_rate = 1.0
# A timeout would otherwise say the upstream hangs, and it would be avoided on the route.
hung_floor = "1h"
# An upstream that timed out looks as slow as its silence is long, so only samples reach it.
sample_interval = "10ms"
"#;

/// A POST that reached an upstream is never sent to a second one: the upstream may have acted on
/// it. One origin answers 503 to everything, the other is fine. Each POST is seen by exactly one
/// origin exactly once, and the client gets the failing origin's 503, never the other's success.
/// A GET in the same pool, the contrast, is retried and succeeds: the origins saw two attempts
/// for each GET that met the failing one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_is_not_retried_after_it_reached_an_upstream() {
    let dir = tempfile::tempdir().unwrap();
    let failing = Origin::start_local("failing").await.unwrap();
    let fine = Origin::start_local("fine").await.unwrap();
    failing.behavior.set_failure_ratio(1.0);
    let running = usher::server::spawn(one_pool(
        &[failing.addr, fine.addr],
        "",
        KEEP_THE_FAILING_ONE_IN_PLAY,
        dir.path(),
    ))
    .unwrap();
    let url = format!("http://{}/orders", running.listen());
    let c = client();
    let both = [&failing, &fine];

    const POSTS: u64 = 40;
    let mut posts_at_failing = 0;
    for i in 0..POSTS {
        let before = seen(&both);
        let a = send(&c, reqwest::Method::POST, url.clone(), "poster").await;
        let d = delta(&before, &seen(&both));
        assert_eq!(
            d.iter().sum::<u64>(),
            1,
            "POST {i}: seen by {d:?} (failing, fine): {a:?}"
        );
        if d[0] == 1 {
            posts_at_failing += 1;
            assert_eq!(
                (a.status, a.origin.as_str()),
                (503, "failing"),
                "POST {i}: {a:?}"
            );
        } else {
            assert_eq!(
                (a.status, a.origin.as_str()),
                (200, "fine"),
                "POST {i}: {a:?}"
            );
            assert_eq!(a.body_bytes, Some(BODY_BYTES as u64), "POST {i}: {a:?}");
        }
    }
    // Without this the test would prove nothing: some POSTs met the failing origin.
    assert!(posts_at_failing > 0, "no POST reached the failing origin");
    let m = metrics(&running).await;
    assert_eq!(retries_granted(&m), 0, "a POST was retried");
    assert_eq!(
        failing.behavior.requests() + fine.behavior.requests(),
        POSTS,
        "the origins saw more requests than were sent"
    );
    assert_eq!(failing.behavior.failed(), posts_at_failing);

    // The contrast: GETs in the same situation are retried on the fine origin.
    const GETS: u64 = 40;
    let mut gets_retried = 0;
    for i in 0..GETS {
        let before = seen(&both);
        let a = send(&c, reqwest::Method::GET, url.clone(), "getter").await;
        let d = delta(&before, &seen(&both));
        assert_eq!(
            (a.status, a.origin.as_str()),
            (200, "fine"),
            "GET {i}: {a:?}"
        );
        match d.as_slice() {
            [0, 1] => {}
            // The failing origin's 503, then the retry on the fine one: two attempts.
            [1, 1] => gets_retried += 1,
            other => panic!("GET {i}: seen by {other:?} (failing, fine)"),
        }
    }
    assert!(gets_retried > 0, "no GET reached the failing origin");
    let m = metrics(&running).await;
    assert_eq!(retries_granted(&m), gets_retried);
    assert_eq!(
        counter(&m, "usher_retries_total", &[("outcome", "succeeded")]),
        gets_retried
    );
    assert_eq!(
        budget_exhausted(&m),
        0,
        "40 retries are within the floor of 100"
    );
    eprintln!(
        "POSTs: {posts_at_failing} of {POSTS} met the failing origin, none retried; GETs: \
         {gets_retried} of {GETS} met it, all retried"
    );
    running.stop();
}

/// The same for a timeout: a POST whose upstream does not answer within the pool's read timeout
/// gets 504 and is not sent to the other upstream (it may be being processed); a GET is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_that_timed_out_is_not_retried() {
    let dir = tempfile::tempdir().unwrap();
    let stuck = Origin::start_local("stuck").await.unwrap();
    let fine = Origin::start_local("fine").await.unwrap();
    // Far past the read timeout: the answer never comes in time.
    stuck.behavior.set_delay(Duration::from_secs(3));
    let running = usher::server::spawn(one_pool(
        &[stuck.addr, fine.addr],
        r#"read_timeout = "150ms""#,
        KEEP_THE_FAILING_ONE_IN_PLAY,
        dir.path(),
    ))
    .unwrap();
    let url = format!("http://{}/orders", running.listen());
    let c = client();

    // A connection that timed out is closed, never reused, so each attempt on the stuck origin
    // opens one: attempts = stuck's new connections + fine's requests.
    let attempts = || (stuck.behavior.connections(), fine.behavior.requests());
    const POSTS: u64 = 12;
    let mut timed_out = 0;
    for i in 0..POSTS {
        let before = attempts();
        let a = send(&c, reqwest::Method::POST, url.clone(), "poster").await;
        let after = attempts();
        let d = (after.0 - before.0, after.1 - before.1);
        match d {
            (1, 0) => {
                timed_out += 1;
                assert_eq!(a.status, 504, "POST {i} timed out: {a:?}");
            }
            (0, 1) => {
                assert_eq!(
                    (a.status, a.origin.as_str()),
                    (200, "fine"),
                    "POST {i}: {a:?}"
                );
                assert_eq!(a.body_bytes, Some(BODY_BYTES as u64));
            }
            _ => panic!("POST {i}: attempts (stuck, fine) {d:?}, answer {a:?}"),
        }
    }
    assert_eq!(
        retries_granted(&metrics(&running).await),
        0,
        "a POST was retried"
    );
    assert!(timed_out > 0, "no POST reached the stuck origin");

    // The contrast: a GET that timed out is retried on the fine origin.
    const GETS: u64 = 12;
    let mut gets_retried = 0;
    for i in 0..GETS {
        // A sample is due every 10 ms.
        tokio::time::sleep(Duration::from_millis(20)).await;
        let before = attempts();
        let a = send(&c, reqwest::Method::GET, url.clone(), "getter").await;
        let after = attempts();
        assert_eq!(
            (a.status, a.origin.as_str()),
            (200, "fine"),
            "GET {i}: {a:?}"
        );
        match (after.0 - before.0, after.1 - before.1) {
            (0, 1) => {}
            (1, 1) => gets_retried += 1,
            d => panic!("GET {i}: attempts (stuck, fine) {d:?}"),
        }
    }
    assert!(gets_retried > 0, "no GET reached the stuck origin");
    assert_eq!(retries_granted(&metrics(&running).await), gets_retried);
    eprintln!(
        "POSTs: {timed_out} of {POSTS} timed out, none retried; GETs: {gets_retried} of {GETS} \
         timed out, all retried"
    );
    running.stop();
}

/// A refused connection means the request never reached an upstream, so even a POST is retried
/// on another one (README: "after a connect failure (any method)"), with its body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_is_retried_after_a_connect_failure() {
    let dir = tempfile::tempdir().unwrap();
    let dead = dead_addr();
    let fine = Origin::start_local("fine").await.unwrap();
    // An upstream never measured costs `default_rtt`: with it at 1 us the dead address is cheaper
    // than the fine origin once that has answered, so the first or second POST is sent to it.
    let running = usher::server::spawn(one_pool(
        &[dead, fine.addr],
        "",
        "[balancing]\ndefault_rtt = \"1us\"\n",
        dir.path(),
    ))
    .unwrap();
    let url = format!("http://{}/orders", running.listen());
    let c = client();

    const POSTS: u64 = 10;
    for i in 0..POSTS {
        let before = fine.behavior.requests();
        let a = send(&c, reqwest::Method::POST, url.clone(), "poster").await;
        assert_eq!(
            (a.status, a.origin.as_str()),
            (200, "fine"),
            "POST {i}: {a:?}"
        );
        assert_eq!(
            a.body_bytes,
            Some(BODY_BYTES as u64),
            "POST {i}: the body was lost"
        );
        assert_eq!(fine.behavior.requests() - before, 1, "POST {i}");
    }
    let m = metrics(&running).await;
    // The dead address was tried (and ejected at its first refusal: `connect_failures` = 1), and
    // that POST was retried on the fine origin, which answered it.
    assert_eq!(retries_granted(&m), 1, "{m}");
    assert_eq!(
        counter(&m, "usher_retries_total", &[("outcome", "succeeded")]),
        1
    );
    let v = upstream_view(&running, dead).await;
    assert_eq!(v["state"], "ejected", "{v}");
    assert_eq!(v["why"]["rule"], "connect_failure", "{v}");
    assert_eq!(fine.behavior.requests(), POSTS);
    running.stop();
}

/// The retry budget: every upstream of the pool answers 503 to everything, so every request wants
/// its retry; the budget lets only 20% extra plus the floor through.
///
/// The exact bound, from `src/upstream/budget.rs` and the defaults in `src/defaults.rs`
/// (`BUDGET_RATIO` 0.2, `BUDGET_MIN_PER_SEC` 10, `BUDGET_WINDOW` 10 s): a retry is granted while
/// `retries < min_per_sec x window + ratio x requests` over the window, i.e. while
/// `retries < 100 + 0.2 x requests`. The floor is 10/s x 10 s = 100 retries for the whole window,
/// not 10 per second of the test; the test runs well within one window (usher is started fresh,
/// the load lasts 3 s), so nothing ages out. The last retry granted saw `R - 1 < 100 + 0.2 N`,
/// so `R < 101 + 0.2 N` and the origins see `N + R < 1.2 N + 101` requests. And since every
/// request asks for exactly one retry (a retry's own 503 is final), the grants keep up with the
/// budget: after the last refusal (`R >= 100 + 0.2 n` then) every ask was granted, so at the end
/// `R >= 100 + 0.2 N` too. The metrics must say the same: `granted = R`, `exhausted = N - R`.
///
/// One slack per worker on each side: a hook reads its clock before it takes the budget's lock,
/// so a request whose clock still says second s while another has already opened second s + 1
/// does not see that newer bucket (`RetryBudget::totals` keeps buckets up to its own second), and
/// may be granted or refused one retry against the rest's view. At most the requests in flight
/// at that moment, one per worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_retry_budget_holds_when_every_upstream_fails() {
    let dir = tempfile::tempdir().unwrap();
    let mut origins = Vec::new();
    for name in ["a", "b", "c"] {
        let o = Origin::start_local(name).await.unwrap();
        o.behavior.set_failure_ratio(1.0);
        origins.push(o);
    }
    let addrs: Vec<SocketAddr> = origins.iter().map(|o| o.addr).collect();
    // Three upstreams: passive health may eject one of them (at most one of three may be out), so
    // each request's first try always leaves another upstream for its retry. Every threshold and
    // the budget at their defaults.
    let running = usher::server::spawn(one_pool(&addrs, "", "", dir.path())).unwrap();
    let proxy = running.listen();

    const WORKERS: usize = 4;
    let deadline = Instant::now() + Duration::from_secs(3);
    let tasks: Vec<_> = (0..WORKERS)
        .map(|w| {
            tokio::spawn(async move {
                let c = client();
                let who = format!("customer-{w}");
                let mut statuses = Vec::new();
                while Instant::now() < deadline {
                    let a = send(
                        &c,
                        reqwest::Method::GET,
                        format!("http://{proxy}/p/{w}"),
                        &who,
                    )
                    .await;
                    statuses.push(a.status);
                }
                statuses
            })
        })
        .collect();
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.extend(t.await.unwrap());
    }
    let n = statuses.len() as u64;
    assert!(
        statuses.iter().all(|s| *s == 503),
        "every answer is the origins' 503: {:?}",
        statuses
            .iter()
            .filter(|s| **s != 503)
            .take(5)
            .collect::<Vec<_>>()
    );
    let total: u64 = origins.iter().map(|o| o.behavior.requests()).sum();
    let retries = total - n;
    // The README's "20% extra requests plus 10 per second over 10 s", which must be the defaults.
    let (ratio, per_sec, window) = (0.2, 10.0, 10.0);
    assert_eq!(usher::defaults::BUDGET_RATIO, ratio);
    assert_eq!(usher::defaults::BUDGET_MIN_PER_SEC, per_sec);
    assert_eq!(usher::defaults::BUDGET_WINDOW.as_secs_f64(), window);
    let floor = per_sec * window;
    let slack = WORKERS as f64;
    let m = metrics(&running).await;
    let (granted, exhausted) = (retries_granted(&m), budget_exhausted(&m));
    eprintln!(
        "budget: {n} client requests, {total} seen by the origins ({retries} retries; \
         allowed < {:.1}); metrics: granted {granted}, exhausted {exhausted}",
        floor + 1.0 + ratio * n as f64
    );
    // Enough requests that retrying every one (2 N) would be far over the bound.
    assert!(n > 500, "only {n} requests in 3 s");
    assert!(
        (total as f64) < (1.0 + ratio) * n as f64 + floor + 1.0 + slack,
        "{total} requests reached the origins for {n} client requests: over the budget"
    );
    assert!(
        retries as f64 >= floor + ratio * n as f64 - slack,
        "{retries} retries for {n} requests: the budget ({floor} + {ratio} x {n}) was not used"
    );
    assert_eq!(
        granted, retries,
        "usher_retries_total{{outcome=\"granted\"}}"
    );
    assert_eq!(exhausted, n - retries, "usher_retry_budget_exhausted_total");
    running.stop();
}
