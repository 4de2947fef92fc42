//! Routing around sick upstreams, with real origins and real traffic: a slow upstream, a brownout
//! and a killed upstream. Every threshold is usher's default (Envoy- and Linkerd-like); only the
//! tiers, routes and pool are configured.

mod common;

use common::*;
use std::time::{Duration, Instant};
use usher::origin::Origin;

const THINK: Duration = Duration::from_millis(2);

async fn three_origins() -> Vec<Origin> {
    let mut v = Vec::new();
    for name in ["a", "b", "c"] {
        v.push(Origin::start_local(name).await.unwrap());
    }
    v
}

fn shop(origins: &[Origin], dir: &std::path::Path) -> usher::Config {
    let ups: Vec<String> = origins.iter().map(|o| format!("\"{}\"", o.addr)).collect();
    config(
        &format!(
            r#"
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
    v
}

fn share_of(samples: &[Sample], from: Instant, origin: &str) -> f64 {
    let window: Vec<&Sample> = samples.iter().filter(|s| s.at >= from).collect();
    window.iter().filter(|s| s.origin == origin).count() as f64 / window.len().max(1) as f64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slow_upstream_is_avoided_protected_customers_unharmed() {
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

    // Even the protected requests that reached it before anything was known were cut short and
    // retried: none waited out the 300 ms.
    let from_onset = figures(samples.iter().filter(|s| s.at >= onset && s.protected));
    assert_eq!(from_onset.success, 1.0, "{from_onset:?}");
    assert!(
        from_onset.max < Duration::from_millis(200),
        "protected max from onset {:?}",
        from_onset.max
    );

    let window: Vec<&Sample> = samples.iter().filter(|s| s.at >= settled).collect();
    let protected = figures(window.iter().copied().filter(|s| s.protected));
    assert!(protected.n > 200, "{protected:?}");
    assert_eq!(protected.success, 1.0, "{protected:?}");
    assert!(
        protected.p99 < Duration::from_millis(50),
        "protected p99 {:?}",
        protected.p99
    );
    let share = share_of(&samples, settled, "c");
    assert!(
        share < 0.05,
        "the slow upstream still got {:.1}% of traffic",
        share * 100.0
    );
    upstream_view(&running, origins[2].addr).await;
    running.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn brownout_is_routed_around() {
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
    let from_onset = figures(samples.iter().filter(|s| s.at >= onset && s.protected));
    assert_eq!(from_onset.success, 1.0, "{from_onset:?}");
    assert!(
        from_onset.max < delay / 2,
        "protected max from onset {:?}",
        from_onset.max
    );

    let window: Vec<&Sample> = samples.iter().filter(|s| s.at >= settled).collect();
    let protected = figures(window.iter().copied().filter(|s| s.protected));
    let standard = figures(window.iter().copied().filter(|s| !s.protected));
    assert!(
        protected.n > 200 && standard.n > 200,
        "{protected:?} {standard:?}"
    );
    assert!(protected.success >= 0.999, "{protected:?}");
    assert!(
        protected.p99 < delay / 4,
        "protected p99 {:?}",
        protected.p99
    );
    assert!(standard.success >= 0.99, "{standard:?}");
    upstream_view(&running, origins[1].addr).await;
    running.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killed_upstream_fails_no_protected_request() {
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
    assert!(protected.n > 300);
    let standard = figures(samples.iter().filter(|s| !s.protected));
    assert!(standard.success >= 0.999, "{standard:?}");
    assert!(share_of(&samples, killed_at + Duration::from_millis(200), "a") == 0.0);

    let killed = upstream_view(&running, dead).await;
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
        samples.iter().filter(|s| s.protected).count()
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
        let _ = tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf)).await;
    }
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
