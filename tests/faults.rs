//! Routing around sick upstreams, with real origins and real traffic: a slow upstream, a brownout,
//! a killed upstream, one slow on one route only, one that hangs. Every threshold is usher's
//! default (Envoy- and Linkerd-like) unless a test says otherwise; only the tiers, routes and pool
//! are configured.
//!
//! What is asserted are facts: which origin answered each request, how many requests each origin
//! saw, what `/upstreams` says and why. Latencies are printed for the README's table, never
//! asserted (the machines are shared). The load tests take turns (`serial`): two at once on two
//! cores would measure each other.

mod common;

use common::*;
use std::time::{Duration, Instant};
use usher::origin::Origin;

/// Held by each load test for its whole run.
async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    LOCK.lock().await
}

const THINK: Duration = Duration::from_millis(2);

async fn three_origins() -> Vec<Origin> {
    let mut v = Vec::new();
    for name in ["a", "b", "c"] {
        v.push(Origin::start_local(name).await.unwrap());
    }
    v
}

fn shop(origins: &[Origin], dir: &std::path::Path) -> usher::Config {
    shop_with(origins, "", dir)
}

/// The shop, with `extra` TOML (whole tables) before its own.
fn shop_with(origins: &[Origin], extra: &str, dir: &std::path::Path) -> usher::Config {
    let ups: Vec<String> = origins.iter().map(|o| format!("\"{}\"", o.addr)).collect();
    config(
        &format!(
            r#"
{extra}
[identity]
tier = [{{ header = "x-customer-tier", trusted_from = ["127.0.0.1/32"] }}]
[[tiers]]
name = "gold"
protected = true
[[tiers]]
name = "standard"
[[pools]]
name = "web"
upstreams = [{}]
read_timeout = "5s"
[[routes]]
name = "checkout"
match = {{ path_prefix = "/checkout" }}
pool = "web"
critical = true
target = "100ms"
[[routes]]
name = "site"
pool = "web"
target = "200ms"
"#,
            ups.join(", ")
        ),
        dir,
    )
}

fn workers() -> Vec<Worker> {
    let mut w = Vec::new();
    for i in 0..3 {
        w.push(Worker {
            customer: format!("gold-{i}"),
            tier: Some("gold"),
            path: "/checkout/pay",
            protected: true,
        });
        w.push(Worker {
            customer: format!("std-{i}"),
            tier: None,
            path: "/checkout/pay",
            protected: false,
        });
        w.push(Worker {
            customer: format!("browse-{i}"),
            tier: None,
            path: "/products/1",
            protected: false,
        });
    }
    w
}

fn report(name: &str, samples: &[Sample], from: Instant) {
    let window: Vec<&Sample> = samples.iter().filter(|s| s.at >= from).collect();
    let p = figures(window.iter().copied().filter(|s| s.protected));
    let s = figures(window.iter().copied().filter(|s| !s.protected));
    eprintln!(
        "{name}: protected n={} success={:.4} p50={:?} p99={:?} max={:?} | standard n={} success={:.4} p50={:?} p99={:?} max={:?}",
        p.n, p.success, p.p50, p.p99, p.max, s.n, s.success, s.p50, s.p99, s.max
    );
}

/// The admin API's view of one upstream.
async fn upstream_view(
    running: &usher::server::Running,
    addr: std::net::SocketAddr,
) -> serde_json::Value {
    let adm = running.admin().unwrap();
    let ups = json(&client(), format!("http://{adm}/upstreams")).await;
    let v = ups["upstreams"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["address"] == addr.to_string())
        .cloned()
        .unwrap();
    eprintln!(
        "{addr}: state={} why={} passive={}",
        v["state"], v["why"], v["passive_health"]
    );
    for l in v["routes"].as_array().into_iter().flatten() {
        eprintln!(
            "  on {}: state={} ejections={} why={}",
            l["route"], l["state"], l["ejections"], l["why"]
        );
    }
    v
}

/// `u`'s health on `route`, from its `/upstreams` entry.
fn lane<'a>(u: &'a serde_json::Value, route: &str) -> &'a serde_json::Value {
    u["routes"]
        .as_array()
        .and_then(|a| a.iter().find(|l| l["route"] == route))
        .unwrap_or_else(|| panic!("no route {route} in {u}"))
}

/// Why `u` is out, as a whole or on some route: the rules that ejected it.
fn ejected_for(u: &serde_json::Value) -> Vec<String> {
    let mut why: Vec<String> = Vec::new();
    if u["ejections"].as_u64().unwrap_or(0) > 0 {
        why.extend(u["why"]["rule"].as_str().map(String::from));
    }
    for l in u["routes"].as_array().into_iter().flatten() {
        if l["ejections"].as_u64().unwrap_or(0) > 0 {
            why.extend(l["why"]["rule"].as_str().map(String::from));
        }
    }
    why
}

/// The samples of `protected` (or standard) requests begun at or after `from` answered by `origin`.
fn answered_by<'a>(
    samples: &'a [Sample],
    from: Instant,
    protected: bool,
    origin: &str,
) -> Vec<&'a Sample> {
    samples
        .iter()
        .filter(|s| s.at >= from && s.protected == protected && s.origin == origin)
        .collect()
}

fn share_of(samples: &[Sample], from: Instant, origin: &str) -> f64 {
    let window: Vec<&Sample> = samples.iter().filter(|s| s.at >= from).collect();
    window.iter().filter(|s| s.origin == origin).count() as f64 / window.len().max(1) as f64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slow_upstream_is_avoided_protected_customers_unharmed() {
    let _turn = serial().await;
    let dir = tempfile::tempdir().unwrap();
    let origins = three_origins().await;
    let running = usher::server::spawn(shop(&origins, dir.path())).unwrap();
    let proxy = running.listen();
    let slow = origins[2].behavior.clone();
    let traffic = tokio::spawn({
        let w = workers();
        async move { load(proxy, &w, Duration::from_secs(6), THINK).await }
    });
    // Past the first refresh of the routes' try timeouts (every second).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // No errors, a green health check: just 300 ms more on every answer.
    slow.set_delay(Duration::from_millis(300));
    let onset = Instant::now();
    let settled = onset + Duration::from_secs(1);
    let samples = traffic.await.unwrap();
    report("slow upstream", &samples, settled);
    report("slow upstream, from onset", &samples, onset);

    // Every protected request succeeded, and none started after the onset was answered by the
    // slow origin: those that reached it before anything was known were cut short and retried.
    let protected = figures(samples.iter().filter(|s| s.protected));
    assert_eq!(protected.success, 1.0, "{protected:?}");
    let late = answered_by(&samples, onset, true, "c");
    assert!(
        late.is_empty(),
        "protected answers from the slow origin: {late:?}"
    );
    let standard = figures(samples.iter().filter(|s| !s.protected));
    assert_eq!(standard.success, 1.0, "{standard:?}");
    // Balancing and ejection leave it a trickle of samples (about two a second per route).
    let share = share_of(&samples, settled, "c");
    assert!(
        share < 0.05,
        "the slow upstream still got {:.1}% of traffic",
        share * 100.0
    );
    let v = upstream_view(&running, origins[2].addr).await;
    let why = ejected_for(&v);
    assert!(why.iter().any(|r| r == "latency"), "{v}");
    running.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn brownout_is_routed_around() {
    let _turn = serial().await;
    let dir = tempfile::tempdir().unwrap();
    let origins = three_origins().await;
    let running = usher::server::spawn(shop(&origins, dir.path())).unwrap();
    let proxy = running.listen();
    let sick = origins[1].behavior.clone();
    let traffic = tokio::spawn({
        let w = workers();
        async move { load(proxy, &w, Duration::from_secs(7), THINK).await }
    });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let delay = Duration::from_secs(1);
    // Half its answers are 503, the other half take a second; its /healthz stays 200.
    sick.set_brownout(0.5, delay);
    let onset = Instant::now();
    let settled = onset + Duration::from_secs(1);
    let samples = traffic.await.unwrap();
    report("brownout", &samples, settled);
    report("brownout, from onset", &samples, onset);
    // Every protected request succeeded; none begun after the onset was answered by the sick
    // origin (a 503 was retried elsewhere, a late answer cut short and retried).
    let protected = figures(samples.iter().filter(|s| s.protected));
    assert_eq!(protected.success, 1.0, "{protected:?}");
    let late = answered_by(&samples, onset, true, "b");
    assert!(
        late.is_empty(),
        "protected answers from the sick origin: {late:?}"
    );
    // Standard GETs that got a 503 were retried on another upstream; the late answers still
    // came (within the 5 s read timeout).
    let standard = figures(samples.iter().filter(|s| !s.protected));
    assert_eq!(standard.success, 1.0, "{standard:?}");
    let v = upstream_view(&running, origins[1].addr).await;
    assert!(!ejected_for(&v).is_empty(), "{v}");
    running.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killed_upstream_fails_no_protected_request() {
    let _turn = serial().await;
    let dir = tempfile::tempdir().unwrap();
    let mut origins = three_origins().await;
    let running = usher::server::spawn(shop(&origins, dir.path())).unwrap();
    let proxy = running.listen();
    let traffic = tokio::spawn({
        let w = workers();
        async move { load(proxy, &w, Duration::from_secs(5), THINK).await }
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    // Gone: listener closed, open connections dropped mid-traffic.
    let dead = origins[0].addr;
    drop(origins.remove(0));
    let killed_at = Instant::now();
    let samples = traffic.await.unwrap();
    report("killed upstream", &samples, killed_at);

    let protected = figures(samples.iter().filter(|s| s.protected));
    let failed: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.protected && !(200..400).contains(&s.status))
        .collect();
    assert!(
        failed.is_empty(),
        "{} protected requests failed: {:?}",
        failed.len(),
        &failed[..failed.len().min(3)]
    );
    assert!(protected.success == 1.0 && protected.n > 0, "{protected:?}");
    let standard = figures(samples.iter().filter(|s| !s.protected));
    assert_eq!(standard.success, 1.0, "{standard:?}");

    let killed = upstream_view(&running, dead).await;
    // Ejected, it is tried no more (its next probe is 30 s away): more traffic adds no attempt.
    let attempts = killed["requests"].as_u64().unwrap();
    let more = load(proxy, &workers(), Duration::from_millis(500), THINK).await;
    assert!(more.iter().all(|s| s.status == 200));
    let after = upstream_view(&running, dead).await;
    assert_eq!(after["requests"].as_u64(), Some(attempts), "{after}");
    assert_eq!(killed["state"], "ejected", "{killed}");
    assert_eq!(killed["why"]["rule"], "connect_failure");
    assert!(killed["ejected_until"].as_str().is_some());

    let (_, metrics) = get(
        &client(),
        format!("http://{}/metrics", running.admin().unwrap()),
        &[],
    )
    .await;
    let d = dead.to_string();
    assert_eq!(
        sample(
            &metrics,
            "usher_ejections_total",
            &[
                ("upstream", &d),
                ("route", "all"),
                ("reason", "connect_failure")
            ]
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &metrics,
            "usher_upstream_state",
            &[("upstream", &d), ("state", "ejected")]
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &metrics,
            "usher_upstream_state",
            &[("upstream", &d), ("state", "healthy")]
        ),
        Some(0.0)
    );
    let protected = sample(
        &metrics,
        "usher_protected_requests_total",
        &[("why", "tier_on_critical")],
    )
    .unwrap();
    assert_eq!(
        protected as usize,
        samples.iter().chain(&more).filter(|s| s.protected).count()
    );
    running.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_health_checks_take_an_upstream_out_and_passing_ones_bring_it_back() {
    let dir = tempfile::tempdir().unwrap();
    let origins = three_origins().await;
    let ups: Vec<String> = origins.iter().map(|o| format!("\"{}\"", o.addr)).collect();
    let cfg = config(
        &format!(
            "[[pools]]\nname = \"web\"\nupstreams = [{}]\nhealth_check = {{ path = \"/healthz\", interval = \"100ms\", timeout = \"100ms\", rise = 2, fall = 2 }}\n[[routes]]\nname = \"all\"\npool = \"web\"\n",
            ups.join(", ")
        ),
        dir.path(),
    );
    let running = usher::server::spawn(cfg).unwrap();
    let c = client();
    origins[1].behavior.set_unhealthy(true);
    tokio::time::sleep(Duration::from_millis(600)).await;
    let v = upstream_view(&running, origins[1].addr).await;
    assert_eq!(
        (v["state"].as_str(), v["active_check"].as_str()),
        (Some("unhealthy"), Some("down"))
    );
    let before = origins[1].behavior.requests();
    for _ in 0..60 {
        let (s, _) = get(&c, format!("http://{}/x", running.listen()), &[]).await;
        assert_eq!(s, 200);
    }
    assert_eq!(
        origins[1].behavior.requests(),
        before,
        "an upstream failing its checks gets no traffic"
    );
    let (_, metrics) = get(
        &c,
        format!("http://{}/metrics", running.admin().unwrap()),
        &[],
    )
    .await;
    let b = origins[1].addr.to_string();
    assert_eq!(
        sample(
            &metrics,
            "usher_upstream_state",
            &[("upstream", &b), ("state", "unhealthy")]
        ),
        Some(1.0)
    );

    origins[1].behavior.set_unhealthy(false);
    tokio::time::sleep(Duration::from_millis(600)).await;
    let v = upstream_view(&running, origins[1].addr).await;
    assert_eq!(
        (v["state"].as_str(), v["active_check"].as_str()),
        (Some("healthy"), Some("up"))
    );
    running.stop();
}

fn two_origin_config(
    a: &Origin,
    b: std::net::SocketAddr,
    extra: &str,
    dir: &std::path::Path,
) -> usher::Config {
    config(
        &format!(
            "{extra}\n[[pools]]\nname = \"web\"\nupstreams = [\"{}\", \"{b}\"]\nread_timeout = \"300ms\"\n[[routes]]\nname = \"all\"\npool = \"web\"\n",
            a.addr
        ),
        dir,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_cannot_be_replayed_is_not_retried() {
    let dir = tempfile::tempdir().unwrap();
    let a = Origin::start_local("a").await.unwrap();
    let b = Origin::start_local("b").await.unwrap();
    a.behavior.set_failure_ratio(1.0);
    let running = usher::server::spawn(two_origin_config(&a, b.addr, "", dir.path())).unwrap();
    let c = client();
    let mut saw_503 = false;
    let mut saw_small_retried = false;
    // A sample goes to the failing upstream every 500 ms: spaced requests reach it.
    for i in 0..6 {
        // Alternate a 300 KB body (more than Pingora keeps for a replay) and a 1 KB one.
        let size = if i % 2 == 0 { 300_000 } else { 1_000 };
        let resp = c
            .put(format!("http://{}/doc", running.listen()))
            .body(vec![b'x'; size])
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let body: serde_json::Value = resp.json().await.unwrap();
        if status == 200 {
            assert_eq!(
                body["body_bytes"], size,
                "a retried request arrived with its body cut: {body}"
            );
            if size == 1_000 && a.behavior.failed() > 0 {
                saw_small_retried = true;
            }
        } else {
            assert_eq!(
                (status, size),
                (503, 300_000),
                "only the big body is not retried: {body}"
            );
            saw_503 = true;
        }
        tokio::time::sleep(Duration::from_millis(600)).await;
    }
    assert!(
        saw_503,
        "the failing upstream answered a big body at least once"
    );
    assert!(saw_small_retried);
    running.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_do_not_count_against_upstreams() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let a = Origin::start_local("a").await.unwrap();
    let b = Origin::start_local("b").await.unwrap();
    let running = usher::server::spawn(two_origin_config(&a, b.addr, "", dir.path())).unwrap();
    for _ in 0..12 {
        let mut s = tokio::net::TcpStream::connect(running.listen())
            .await
            .unwrap();
        // Pingora refuses a quoted Connection token while building the upstream request: after an
        // upstream was chosen, the error marked as the client's.
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: \"x\"\r\n\r\n")
            .await
            .unwrap();
        let mut buf = vec![0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf))
            .await
            .expect("usher answers a malformed request")
            .unwrap();
        let head = String::from_utf8_lossy(&buf[..n]);
        assert!(head.starts_with("HTTP/1.1 400"), "{head}");
    }
    assert_eq!(
        a.behavior.requests() + b.behavior.requests(),
        0,
        "nothing reached an origin"
    );
    for o in [&a, &b] {
        let v = upstream_view(&running, o.addr).await;
        assert_eq!(v["state"], "healthy", "{v}");
        assert_eq!(v["ejections"], 0, "{v}");
    }
    running.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timeout_with_nowhere_else_to_go_stays_a_504() {
    let dir = tempfile::tempdir().unwrap();
    let a = Origin::start_local("a").await.unwrap();
    a.behavior.set_delay(Duration::from_secs(2));
    let dead = dead_addr();
    let running = usher::server::spawn(two_origin_config(&a, dead, "", dir.path())).unwrap();
    let c = client();
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(
            get(
                &c,
                format!("http://{}/x", running.listen()),
                &[("x-customer-id", "tim")],
            )
            .await
            .0,
        );
    }
    // The dead one is ejected on its first refused connection; from then on a timeout on the live
    // one has no alternative, and the client must hear "timeout", not "no upstream".
    assert!(statuses.iter().skip(1).all(|s| *s == 504), "{statuses:?}");
    let d = upstream_view(&running, dead).await;
    assert_eq!(d["state"], "ejected");
    assert!(
        d["requests"].as_u64().unwrap() >= 1 && d["failures"].as_u64().unwrap() >= 1,
        "connect failures are counted: {d}"
    );
    let tim = json(
        &client(),
        format!("http://{}/customers/tim", running.admin().unwrap()),
    )
    .await;
    let last = &tim["journey"][3];
    assert_eq!(
        (last["status"].as_u64(), last["outcome"].as_str()),
        (Some(504), Some("timeout")),
        "{tim}"
    );
    running.stop();
}

/// An upstream slow only on the checkout: 1 s there, fast on the rest of the site, health check
/// green, standard traffic keeping it busy elsewhere. Its ejections are short, so in the run it
/// comes out of ejection, is probed by standard checkouts, and is ejected again. The protected
/// try timeout is off: a protected checkout that went there would wait out the second, and show.
/// The estimate's decay is short, so its fast answers on the site soon make the upstream as a
/// whole look fast again: only what it does on the checkout can keep protected checkouts away.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_upstream_slow_on_one_route_never_serves_a_protected_request_there_once_known() {
    let _turn = serial().await;
    let dir = tempfile::tempdir().unwrap();
    let origins = three_origins().await;
    let extra =
        "[protection]\ntry_timeout_factor = 0\n[outlier]\nbase_ejection = \"1s\"\njitter = 0.0\n";
    let running = usher::server::spawn(shop_with(&origins, extra, dir.path())).unwrap();
    let proxy = running.listen();
    // It is the fastest of the three on everything else (the others take 5 ms more), so judged
    // as a whole it is the best choice. Standard traffic is mostly browsing (one standard
    // customer checks out), so it is often idle of checkouts.
    for o in &origins[..2] {
        o.behavior.set_delay(Duration::from_millis(5));
    }
    let w: Vec<Worker> = workers()
        .into_iter()
        .filter(|w| w.protected || w.path != "/checkout/pay" || w.customer == "std-0")
        .collect();
    let traffic = tokio::spawn(async move { load(proxy, &w, Duration::from_secs(9), THINK).await });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    origins[2]
        .behavior
        .add_slow_path("/checkout", Duration::from_secs(1));
    let onset = Instant::now();
    let samples = traffic.await.unwrap();
    report("slow on /checkout only", &samples, onset);

    // When usher first knew: the first slow checkout answer from it came back.
    let known = samples
        .iter()
        .filter(|s| s.at >= onset && s.origin == "c" && s.latency >= Duration::from_secs(1))
        .map(|s| s.at + s.latency)
        .min()
        .expect("standard checkouts reached the slow upstream");
    let protected_there = answered_by(&samples, known, true, "c");
    assert!(
        protected_there.is_empty(),
        "protected checkouts served by the slow upstream after it was known: {protected_there:?}"
    );
    let protected = figures(samples.iter().filter(|s| s.protected));
    assert_eq!(protected.success, 1.0, "{protected:?}");
    // It keeps serving the rest of the site.
    let browsing = samples
        .iter()
        .filter(|s| s.at >= known && s.origin == "c" && s.path == "/products/1")
        .count();
    assert!(
        browsing > 0,
        "the slow-on-checkout upstream still serves the site"
    );

    let v = upstream_view(&running, origins[2].addr).await;
    assert_eq!(v["state"], "healthy", "ejected on the checkout alone: {v}");
    let checkout = lane(&v, "checkout");
    assert!(
        checkout["ejections"].as_u64().unwrap() >= 2,
        "its ejection ended, checkouts probed it, and it went out again: {v}"
    );
    assert_eq!(lane(&v, "site")["ejections"], 0, "{v}");
    running.stop();
}

/// An origin that starts to hang: it accepts and reads, and never answers. Found from the age
/// of its unanswered requests, not by waiting out the 5 s read timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_origin_that_hangs_is_avoided_for_every_customer_long_before_its_read_timeout() {
    let _turn = serial().await;
    let dir = tempfile::tempdir().unwrap();
    let origins = three_origins().await;
    let running = usher::server::spawn(shop(&origins, dir.path())).unwrap();
    let proxy = running.listen();
    let traffic = tokio::spawn({
        let w = workers();
        async move { load(proxy, &w, Duration::from_secs(8), THINK).await }
    });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let hung = &origins[0];
    hung.behavior.set_delay(Duration::from_secs(3600));
    let onset = Instant::now();
    // Two seconds after the onset, nobody's requests go there any more: what it has received by
    // then is all it receives.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let by_two_seconds = hung.behavior.requests();
    let samples = traffic.await.unwrap();
    report("hung origin", &samples, onset);
    assert_eq!(
        hung.behavior.requests(),
        by_two_seconds,
        "requests reached the hung origin more than 2 s after it hung"
    );
    let v = upstream_view(&running, hung.addr).await;
    assert!(
        ejected_for(&v).iter().any(|r| r == "hung"),
        "ejected as hung on some route: {v}"
    );
    // The requests it swallowed before that were retried elsewhere when their read timeout came
    // (idempotent GETs): no customer was left with an error.
    let failed: Vec<&Sample> = samples.iter().filter(|s| s.status != 200).collect();
    assert!(failed.is_empty(), "{failed:?}");
    running.stop();
}

/// A `rerouted` event is raised when a protected request went to another upstream than the one
/// it avoided, and names both and the request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rerouted_event_names_the_avoided_upstream_the_one_that_served_and_the_request() {
    let dir = tempfile::tempdir().unwrap();
    let origins = three_origins().await;
    let events = dir.path().join("events.jsonl");
    let extra = format!(
        "[events]\ncooldown = \"1s\"\n[[events.sinks]]\ntype = \"jsonl\"\npath = \"{}\"\n",
        events.display()
    );
    let running = usher::server::spawn(shop_with(&origins, &extra, dir.path())).unwrap();
    let c = client();
    let url = |p: &str| format!("http://{}{p}", running.listen());
    // One origin is gone: its first refused connection ejects it.
    let mut origins = origins;
    let sick = origins[1].addr;
    drop(origins.remove(1));
    let adm = running.admin().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ups = json(&c, format!("http://{adm}/upstreams")).await;
        let state = ups["upstreams"]
            .as_array()
            .and_then(|a| a.iter().find(|u| u["address"] == sick.to_string()))
            .map(|u| u["state"].clone());
        if state == Some("ejected".into()) {
            break;
        }
        assert!(Instant::now() < deadline, "never ejected: {ups}");
        get(&c, url("/products/1"), &[("x-customer-id", "sam")]).await;
    }
    let (status, _) = get(
        &c,
        url("/checkout/cart?step=2"),
        &[("x-customer-id", "gina"), ("x-customer-tier", "gold")],
    )
    .await;
    assert_eq!(status, 200);
    let deadline = Instant::now() + Duration::from_secs(10);
    let event = loop {
        let text = std::fs::read_to_string(&events).unwrap_or_default();
        let found = text
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|e| e["type"] == "usher.customer.rerouted" && e["data"]["customer"] == "gina");
        if let Some(e) = found {
            break e;
        }
        assert!(Instant::now() < deadline, "no rerouted event: {text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let d = &event["data"];
    let sick = sick.to_string();
    assert_eq!(d["avoided_upstream"], sick.as_str(), "{event}");
    let served = d["upstream"].as_str().unwrap();
    assert_ne!(served, sick, "{event}");
    assert!(
        origins
            .iter()
            .map(|o| o.addr)
            .any(|a| a.to_string() == served),
        "{event}"
    );
    assert_eq!(
        (
            d["method"].as_str(),
            d["path"].as_str(),
            d["route"].as_str()
        ),
        (Some("GET"), Some("/checkout/cart"), Some("checkout")),
        "{event}"
    );
    // No standard request raised one: only protected customers are steered.
    let text = std::fs::read_to_string(&events).unwrap();
    let rerouted: Vec<serde_json::Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["type"] == "usher.customer.rerouted")
        .collect();
    assert!(
        rerouted.iter().all(|e| e["data"]["customer"] == "gina"),
        "{rerouted:?}"
    );
    running.stop();
}

/// A pool's only upstream, failing everything: ejected, and still used, because sending a
/// request to a doubtful upstream beats sending it nowhere (panic mode). `/upstreams` and the
/// metrics say so, rather than showing an ejected upstream that mysteriously serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ejected_upstream_that_its_pool_cannot_do_without_is_shown_used_in_panic_mode() {
    let dir = tempfile::tempdir().unwrap();
    let only = Origin::start_local("only").await.unwrap();
    only.behavior.set_failure_ratio(1.0);
    let cfg = config(
        &format!(
            "[[pools]]\nname = \"solo\"\nupstreams = [\"{}\"]\n[[routes]]\nname = \"all\"\npool = \"solo\"\n",
            only.addr
        ),
        dir.path(),
    );
    let running = usher::server::spawn(cfg).unwrap();
    let c = client();
    let adm = running.admin().unwrap();
    let url = format!("http://{}/x", running.listen());
    let mut statuses = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while upstream_view(&running, only.addr).await["state"] != "ejected" {
        assert!(Instant::now() < deadline, "never ejected");
        statuses.push(get(&c, url.clone(), &[]).await.0);
    }
    let before = only.behavior.requests();
    for _ in 0..5 {
        statuses.push(get(&c, url.clone(), &[]).await.0);
    }
    assert_eq!(
        only.behavior.requests(),
        before + 5,
        "the ejected upstream still gets every request"
    );
    assert!(statuses.iter().all(|s| *s == 503), "{statuses:?}");
    let ups = json(&c, format!("http://{adm}/upstreams")).await;
    let u = &ups["upstreams"][0];
    assert_eq!(
        (u["state"].as_str(), u["used"].as_bool()),
        (Some("ejected"), Some(true)),
        "{ups}"
    );
    let pool = &ups["pools"][0];
    assert_eq!(
        (
            pool["name"].as_str(),
            pool["serving"].as_u64(),
            pool["panic"].as_bool()
        ),
        (Some("solo"), Some(0), Some(true)),
        "{ups}"
    );
    let (_, metrics) = get(&c, format!("http://{adm}/metrics"), &[]).await;
    assert_eq!(
        sample(&metrics, "usher_pool_panic", &[("pool", "solo")]),
        Some(1.0),
        "{metrics}"
    );
    running.stop();
}
