//! End to end: real origins on 127.0.0.1, usher on ephemeral ports, real HTTP from several customers;
//! the checks read usher's admin JSON and /metrics.

mod common;

use common::*;
use std::time::Duration;
use usher::origin::Origin;

fn shop_config(
    fast: &[&Origin],
    slow: &Origin,
    broken: &Origin,
    dir: &std::path::Path,
) -> usher::Config {
    std::fs::write(dir.join("tiers.csv"), "id,tier\nhappy,gold\n").unwrap();
    let fast: Vec<String> = fast.iter().map(|o| format!("\"{}\"", o.addr)).collect();
    config(
        &format!(
            r#"
[identity]
customer_id = [{{ header = "x-customer-id" }}, {{ cookie = "cid" }}]
tier = [{{ header = "x-customer-tier", trusted_from = ["10.0.0.0/8"] }}, {{ table = "tiers.csv" }}]
default_tier = "standard"
[[tiers]]
name = "gold"
[[tiers]]
name = "standard"
[experience]
half_life = "10m"
summary_interval = "100ms"
[[pools]]
name = "web"
upstreams = [{fast}]
[[pools]]
name = "slow"
upstreams = ["{slow}"]
[[pools]]
name = "broken"
upstreams = ["{broken}"]
[[pools]]
name = "dead"
upstreams = ["{dead}"]
connect_timeout = "300ms"
[[pools]]
name = "stuck"
upstreams = ["{slow}"]
read_timeout = "200ms"
[[routes]]
name = "checkout"
match = {{ path_prefix = "/checkout" }}
pool = "slow"
critical = true
target = "50ms"
[[routes]]
name = "flaky"
match = {{ path_prefix = "/flaky" }}
pool = "broken"
[[routes]]
name = "gone"
match = {{ path_prefix = "/gone" }}
pool = "dead"
[[routes]]
name = "stuck"
match = {{ path_prefix = "/stuck" }}
pool = "stuck"
[[routes]]
name = "site"
match = {{ path_prefix = "/", method = ["GET", "POST"] }}
pool = "web"
target = "100ms"
"#,
            fast = fast.join(", "),
            slow = slow.addr,
            broken = broken.addr,
            dead = dead_addr(),
        ),
        dir,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scores_customers_from_real_traffic() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (
        Origin::start_local("a").await.unwrap(),
        Origin::start_local("b").await.unwrap(),
    );
    let slow = Origin::start_local("slow").await.unwrap();
    slow.behavior
        .add_slow_path("/checkout", Duration::from_millis(250));
    slow.behavior
        .add_slow_path("/stuck", Duration::from_millis(1000));
    let broken = Origin::start_local("broken").await.unwrap();
    broken.behavior.set_failure_ratio(1.0);
    let cfg = shop_config(&[&a, &b], &slow, &broken, dir.path());
    let running = usher::server::spawn(cfg).unwrap();
    let (p, adm) = (running.listen(), running.admin().unwrap());
    let c = client();

    // happy: gold (from the table), fast pages only.
    for i in 0..10 {
        let (s, _) = get(
            &c,
            format!("http://{p}/products/{i}"),
            &[("x-customer-id", "happy")],
        )
        .await;
        assert_eq!(s, 200);
    }
    // slowpoke: the checkout takes 250 ms against a 50 ms target: frustrated (> 4T).
    for _ in 0..4 {
        let (s, _) = get(
            &c,
            format!("http://{p}/checkout/pay"),
            &[("cookie", "x=1; cid=slowpoke")],
        )
        .await;
        assert_eq!(s, 200);
    }
    // unlucky: every request hits the upstream that answers 503.
    for _ in 0..5 {
        let (s, _) = get(
            &c,
            format!("http://{p}/flaky/thing"),
            &[("x-customer-id", "unlucky")],
        )
        .await;
        assert_eq!(s, 503);
    }
    // Connect failure and timeout, as the client sees them.
    let (s, _) = get(
        &c,
        format!("http://{p}/gone"),
        &[("x-customer-id", "stranded")],
    )
    .await;
    assert_eq!(s, 502);
    let (s, _) = get(
        &c,
        format!("http://{p}/stuck"),
        &[("x-customer-id", "stranded")],
    )
    .await;
    assert_eq!(s, 504);
    // No route for DELETE: 404 with a body saying so.
    let resp = c
        .delete(format!("http://{p}/anything"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 404);
    assert!(resp.text().await.unwrap().contains("no route"));

    let happy = json(&c, format!("http://{adm}/customers/happy")).await;
    assert_eq!(happy["tier"], "gold");
    assert_eq!(happy["state"], "ok");
    assert_eq!(happy["score"], 100.0);
    assert_eq!(happy["requests"], 10);
    assert_eq!(happy["journey"].as_array().unwrap().len(), 10);
    let last = &happy["journey"][9];
    assert_eq!(
        (last["route"].as_str(), last["path"].as_str()),
        (Some("site"), Some("/products/9"))
    );
    let ups = [a.addr.to_string(), b.addr.to_string()];
    assert!(ups.contains(&last["upstream"].as_str().unwrap().to_string()));

    let slowpoke = json(&c, format!("http://{adm}/customers/slowpoke")).await;
    assert_eq!(slowpoke["tier"], "standard");
    assert_eq!(slowpoke["state"], "degraded");
    assert_eq!(slowpoke["frustrated"], 4);
    assert_eq!(slowpoke["errors"], 0);
    let step = &slowpoke["journey"][0];
    assert_eq!(step["route"], "checkout");
    assert!(step["latency_ms"].as_f64().unwrap() >= 250.0, "{step}");

    let unlucky = json(&c, format!("http://{adm}/customers/unlucky")).await;
    assert_eq!(unlucky["errors"], 5);
    assert_eq!(unlucky["state"], "degraded");
    assert_eq!(unlucky["journey"][4]["status"], 503);
    assert_eq!(unlucky["journey"][4]["outcome"], "upstream_5xx");
    assert_eq!(unlucky["journey"][4]["upstream"], broken.addr.to_string());

    let stranded = json(&c, format!("http://{adm}/customers/stranded")).await;
    let outcomes: Vec<&str> = stranded["journey"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, ["connect_failure", "timeout"]);

    // The worst customers: unlucky and slowpoke; happy is not among them.
    let worst = json(&c, format!("http://{adm}/customers?worst=2")).await;
    let ids: Vec<&str> = worst["customers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 2);
    assert!(
        ids.contains(&"unlucky") && ids.contains(&"slowpoke"),
        "{ids:?}"
    );
    let missing = c
        .get(format!("http://{adm}/customers/nobody"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status().as_u16(), 404);

    let routes = json(&c, format!("http://{adm}/routes")).await;
    let checkout = routes["routes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "checkout")
        .unwrap();
    assert_eq!(checkout["requests"], 4);
    assert!(checkout["p50_ms"].as_f64().unwrap() >= 250.0);
    let flaky = routes["routes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "flaky")
        .unwrap();
    assert_eq!(flaky["failure_rate"], 1.0);
    let site = routes["routes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "site")
        .unwrap();
    // Ten echo bodies of the fast origin went out on route "site".
    assert!(site["bytes_out"].as_u64().unwrap() > 10 * 60, "{site}");
    let upstreams = json(&c, format!("http://{adm}/upstreams")).await;
    let br = upstreams["upstreams"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["address"] == broken.addr.to_string())
        .unwrap();
    assert_eq!(
        (br["requests"].as_u64(), br["failures"].as_u64()),
        (Some(5), Some(5))
    );

    // Prometheus: outcomes by route and upstream, never a customer id.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, metrics) = get(&c, format!("http://{adm}/metrics"), &[]).await;
    let broken_s = broken.addr.to_string();
    assert_eq!(
        sample(
            &metrics,
            "usher_requests_total",
            &[
                ("route", "flaky"),
                ("upstream", &broken_s),
                ("outcome", "upstream_5xx")
            ]
        ),
        Some(5.0)
    );
    assert_eq!(
        sample(
            &metrics,
            "usher_requests_total",
            &[
                ("route", "none"),
                ("upstream", "none"),
                ("outcome", "client_error")
            ]
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &metrics,
            "usher_request_duration_seconds_count",
            &[("route", "checkout")]
        ),
        Some(4.0)
    );
    assert_eq!(
        sample(&metrics, "usher_customers_tracked", &[]),
        Some(5.0),
        "{metrics}"
    );
    // slowpoke and unlucky; stranded scores as low but with two requests, fewer than
    // experience.min_requests, counts as noise, not as degraded.
    assert_eq!(sample(&metrics, "usher_customers_degraded", &[]), Some(2.0));
    assert_eq!(
        sample(&metrics, "usher_customer_score_count", &[]),
        Some(5.0)
    );
    assert_eq!(
        sample(&metrics, "usher_customer_score_bucket", &[("le", "100")]),
        Some(5.0)
    );
    for id in ["happy", "slowpoke", "unlucky", "stranded"] {
        assert!(
            !metrics.contains(id),
            "customer id {id} leaked into /metrics"
        );
    }
    running.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spoofed_tier_header_is_ignored_and_removed() {
    let dir = tempfile::tempdir().unwrap();
    let o = Origin::start_local("o").await.unwrap();
    let text = |trusted: &str| {
        format!(
            r#"
[identity]
tier = [{{ header = "x-customer-tier", trusted_from = ["{trusted}"] }}]
[[tiers]]
name = "gold"
[[tiers]]
name = "standard"
[[pools]]
name = "web"
upstreams = ["{}"]
[[routes]]
name = "all"
pool = "web"
"#,
            o.addr
        )
    };
    let c = client();
    let claim = [
        ("x-customer-id", "mallory"),
        ("x-customer-tier", "gold"),
        ("x-usher-experience", "score=100"),
        ("x-other", "kept"),
    ];

    // The test client is on 127.0.0.1, which this config does not trust.
    let running = usher::server::spawn(config(&text("10.0.0.0/8"), dir.path())).unwrap();
    let (s, body) = get(&c, format!("http://{}/", running.listen()), &claim).await;
    assert_eq!(s, 200);
    let echo: serde_json::Value = serde_json::from_str(&body).unwrap();
    let fwd = echo["headers"].as_object().unwrap();
    assert!(
        !fwd.contains_key("x-customer-tier"),
        "untrusted tier claim forwarded: {fwd:?}"
    );
    assert!(
        !fwd.contains_key("x-usher-experience"),
        "client x-usher-* forwarded: {fwd:?}"
    );
    assert_eq!(fwd["x-other"], "kept");
    let m = json(
        &c,
        format!("http://{}/customers/mallory", running.admin().unwrap()),
    )
    .await;
    assert_eq!(m["tier"], "standard");
    running.stop();

    // The same request from a trusted peer is believed and passed on.
    let running = usher::server::spawn(config(&text("127.0.0.1/32"), dir.path())).unwrap();
    let (_, body) = get(&c, format!("http://{}/", running.listen()), &claim).await;
    let echo: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(echo["headers"]["x-customer-tier"], "gold");
    assert!(echo["headers"].get("x-usher-experience").is_none());
    let m = json(
        &c,
        format!("http://{}/customers/mallory", running.admin().unwrap()),
    )
    .await;
    assert_eq!(m["tier"], "gold");
    running.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_stays_within_track_max() {
    let dir = tempfile::tempdir().unwrap();
    let o = Origin::start_local("o").await.unwrap();
    let cfg = config(
        &format!(
            "[experience]\ntrack_max = 5\nsummary_interval = \"50ms\"\n[[pools]]\nname = \"w\"\nupstreams = [\"{}\"]\n[[routes]]\nname = \"r\"\npool = \"w\"\n",
            o.addr
        ),
        dir.path(),
    );
    let running = usher::server::spawn(cfg).unwrap();
    let c = client();
    for i in 0..12 {
        get(
            &c,
            format!("http://{}/", running.listen()),
            &[("x-customer-id", &format!("c{i}"))],
        )
        .await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let adm = running.admin().unwrap();
    let (_, metrics) = get(&c, format!("http://{adm}/metrics"), &[]).await;
    assert_eq!(sample(&metrics, "usher_customers_tracked", &[]), Some(5.0));
    assert_eq!(
        sample(&metrics, "usher_customers_evicted_total", &[]),
        Some(7.0)
    );
    // The least recently seen went first.
    assert_eq!(
        c.get(format!("http://{adm}/customers/c0"))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16(),
        404
    );
    assert_eq!(
        json(&c, format!("http://{adm}/customers/c11")).await["requests"],
        1
    );
    running.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_api_refuses_bad_requests_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let o = Origin::start_local("o").await.unwrap();
    let cfg = config(
        &format!("[[pools]]\nname = \"w\"\nupstreams = [\"{}\"]\n[[routes]]\nname = \"r\"\npool = \"w\"\n", o.addr),
        dir.path(),
    );
    let running = usher::server::spawn(cfg).unwrap();
    let adm = running.admin().unwrap();
    let c = client();
    for (url, want) in [
        (format!("http://{adm}/customers?worst=abc"), 400),
        (format!("http://{adm}/customers"), 400),
        (format!("http://{adm}/customers/%zz"), 400),
        (format!("http://{adm}/nope"), 404),
        (format!("http://{adm}/healthz"), 200),
        (format!("http://{adm}/"), 200),
    ] {
        assert_eq!(get(&c, url.clone(), &[]).await.0, want, "{url}");
    }
    let post = c
        .post(format!("http://{adm}/customers?worst=1"))
        .send()
        .await
        .unwrap();
    assert_eq!(post.status().as_u16(), 405);
    running.stop();
}

/// Writes `raw` on one connection and reads until `want` responses have arrived or the peer closes.
async fn raw_exchange(addr: std::net::SocketAddr, raw: &[u8], want: usize) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(raw).await.unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 65536];
    loop {
        let n = match tokio::time::timeout(Duration::from_secs(3), s.read(&mut buf)).await {
            Ok(Ok(n)) => n,
            _ => break,
        };
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
        if String::from_utf8_lossy(&out).matches("HTTP/1.1 ").count() >= want
            && String::from_utf8_lossy(&out).ends_with("}\n")
        {
            break;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_are_all_answered_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let o = Origin::start_local("o").await.unwrap();
    let cfg = config(
        &format!("[[pools]]\nname = \"w\"\nupstreams = [\"{}\"]\n[[routes]]\nname = \"r\"\npool = \"w\"\n", o.addr),
        dir.path(),
    );
    let running = usher::server::spawn(cfg).unwrap();
    let raw = b"GET /one HTTP/1.1\r\nHost: x\r\nx-customer-id: pipe\r\n\r\n\
GET /two HTTP/1.1\r\nHost: x\r\nx-customer-id: pipe\r\n\r\n\
GET /three HTTP/1.1\r\nHost: x\r\nx-customer-id: pipe\r\n\r\n";
    let out = raw_exchange(running.listen(), raw, 3).await;
    assert_eq!(out.matches("HTTP/1.1 200").count(), 3, "{out}");
    let (one, two, three) = (
        out.find("/one").unwrap(),
        out.find("/two").unwrap(),
        out.find("/three").unwrap(),
    );
    assert!(one < two && two < three, "{out}");
    running.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_oversized_requests_get_a_4xx() {
    let dir = tempfile::tempdir().unwrap();
    let o = Origin::start_local("o").await.unwrap();
    let cfg = config(
        &format!("[[pools]]\nname = \"w\"\nupstreams = [\"{}\"]\n[[routes]]\nname = \"r\"\npool = \"w\"\n", o.addr),
        dir.path(),
    );
    let running = usher::server::spawn(cfg).unwrap();
    let garbage = raw_exchange(running.listen(), b"GARBAGE\x01\x02 nonsense\r\n\r\n", 1).await;
    assert!(garbage.starts_with("HTTP/1.1 400"), "{garbage:?}");
    let big = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nx-big: {}\r\n\r\n",
        "a".repeat(200 * 1024)
    );
    let out = raw_exchange(running.listen(), big.as_bytes(), 1).await;
    assert!(
        out.starts_with("HTTP/1.1 431"),
        "{:?}",
        &out[..out.len().min(200)]
    );
    // Nothing reached the origin.
    assert_eq!(o.behavior.requests(), 0);
    running.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_site_is_told_about_a_customer_who_had_trouble() {
    let dir = tempfile::tempdir().unwrap();
    let good = Origin::start_local("good").await.unwrap();
    let bad = Origin::start_local("bad").await.unwrap();
    bad.behavior.set_failure_ratio(1.0);
    let cfg = config(
        &format!(
            r#"
[protection]
rescue_below = 48
experience_header = "x-usher-experience"
[[pools]]
name = "good"
upstreams = ["{}"]
[[pools]]
name = "bad"
upstreams = ["{}"]
[[routes]]
name = "broken"
match = {{ path_prefix = "/broken" }}
pool = "bad"
[[routes]]
name = "site"
pool = "good"
"#,
            good.addr, bad.addr
        ),
        dir.path(),
    );
    let running = usher::server::spawn(cfg).unwrap();
    let p = running.listen();
    let c = client();
    let kim = [("x-customer-id", "kim")];
    let told = |body: String| -> serde_json::Value {
        let echo: serde_json::Value = serde_json::from_str(&body).unwrap();
        echo["headers"]["x-usher-experience"].clone()
    };
    // Never seen: nothing to tell.
    assert_eq!(
        told(get(&c, format!("http://{p}/"), &kim).await.1),
        serde_json::Value::Null
    );
    let admin = running.admin().unwrap();
    recorded(&c, admin, "kim", 1).await;
    // One good request behind her.
    assert_eq!(
        told(get(&c, format!("http://{p}/"), &kim).await.1),
        "score=100; state=ok"
    );
    recorded(&c, admin, "kim", 2).await;
    for _ in 0..3 {
        assert_eq!(get(&c, format!("http://{p}/broken"), &kim).await.0, 503);
    }
    recorded(&c, admin, "kim", 5).await;
    // Two good, three failed: (2 + 2) / (5 + 2) = 57, degraded. A client cannot forge the header:
    // whatever it sends is replaced by usher's own.
    let forged = [
        ("x-customer-id", "kim"),
        ("x-usher-experience", "score=100; state=ok"),
    ];
    assert_eq!(
        told(get(&c, format!("http://{p}/"), &forged).await.1),
        "score=57; state=degraded"
    );
    let metrics_url = format!("http://{admin}/metrics");
    let rescued = |m: String| sample(&m, "usher_protected_requests_total", &[("why", "rescue")]);
    assert_eq!(
        rescued(get(&c, metrics_url.clone(), &[]).await.1),
        Some(0.0)
    );
    for _ in 0..3 {
        assert_eq!(get(&c, format!("http://{p}/broken"), &kim).await.0, 503);
    }
    recorded(&c, admin, "kim", 9).await;
    // (3 + 2) / (9 + 2) = 45, under rescue_below (48): her next request is protected.
    assert_eq!(
        told(get(&c, format!("http://{p}/"), &kim).await.1),
        "score=45; state=degraded"
    );
    assert_eq!(
        rescued(get(&c, metrics_url.clone(), &[]).await.1),
        Some(1.0)
    );
    running.stop();
}

/// More requests in flight than Pingora's default pool of 128 idle upstream connections: with
/// `server.upstream_idle_connections` raised, a second burst reuses the first one's connections
/// instead of connecting anew (with the default, 72 or more of the 200 are closed after the first
/// burst: 85 when measured).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_within_upstream_idle_connections_keeps_its_upstream_connections() {
    let dir = tempfile::tempdir().unwrap();
    let o = Origin::start_local("o").await.unwrap();
    // Long enough that all 200 requests of a burst are in flight at once.
    o.behavior.set_delay(Duration::from_millis(300));
    let cfg = config(
        &format!(
            "[server]\nlisten = [\"{}\"]\nadmin = \"{}\"\nupstream_idle_connections = 256\n[[pools]]\nname = \"w\"\nupstreams = [\"{}\"]\n[[routes]]\nname = \"r\"\npool = \"w\"\n",
            free_addr(),
            free_addr(),
            o.addr
        ),
        dir.path(),
    );
    let running = usher::server::spawn(cfg).unwrap();
    let url = format!("http://{}/", running.listen());
    let c = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .pool_max_idle_per_host(256)
        .build()
        .unwrap();
    let burst = || {
        futures::future::join_all((0..200).map(|i| {
            let (c, url) = (c.clone(), url.clone());
            async move { get(&c, url, &[("x-customer-id", &format!("c{i}"))]).await.0 }
        }))
    };
    assert!(burst().await.iter().all(|s| *s == 200));
    let first = o.behavior.connections();
    assert!(
        first >= 200,
        "a burst of 200 opened only {first} connections"
    );
    assert!(burst().await.iter().all(|s| *s == 200));
    let again = o.behavior.connections() - first;
    assert!(again <= 8, "the second burst connected anew {again} times");
    running.stop();
}
