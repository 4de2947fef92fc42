//! The plugin API, exercised by the embedding example itself: a custom Pingora proxy with its own CTX
//! and load balancer, usher inside it. Real traffic goes through it; the scores come back from
//! usher's admin API.

mod common;

#[path = "../examples/embed.rs"]
#[allow(dead_code)]
mod embed;

use common::*;
use std::time::Duration;
use usher::origin::Origin;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedding_proxy_scores_customers() {
    let dir = tempfile::tempdir().unwrap();
    let fast = Origin::start_local("fast").await.unwrap();
    let slow = Origin::start_local("slow").await.unwrap();
    slow.behavior.set_delay(Duration::from_millis(150));
    let cfg = config(
        &format!(
            r#"
[experience]
summary_interval = "50ms"
[[pools]]
name = "shop"
upstreams = ["{}", "{}"]
[[routes]]
name = "checkout"
match = {{ path_prefix = "/checkout" }}
pool = "shop"
target = "30ms"
"#,
            fast.addr, slow.addr
        ),
        dir.path(),
    );
    let listen = free_addr();
    let admin = cfg.server.admin.unwrap();
    let (server, usher) = embed::build_server(cfg, listen);
    let running = usher::server::spawn_server(server, usher, &[listen, admin]).unwrap();

    let c = client();
    for _ in 0..6 {
        let (s, body) = get(
            &c,
            format!("http://{listen}/checkout"),
            &[("x-customer-id", "zoe")],
        )
        .await;
        assert_eq!(s, 200);
        // The embedding proxy's own header made it through: this really is the example's proxy.
        assert!(body.contains("\"x-shop-proxy\":\"1\""), "{body}");
    }
    // A path outside usher's routes is still proxied by the embedder, measured as route "none".
    let (s, _) = get(
        &c,
        format!("http://{listen}/elsewhere"),
        &[("x-customer-id", "zoe")],
    )
    .await;
    assert_eq!(s, 200);

    let zoe = json(&c, format!("http://{admin}/customers/zoe")).await;
    assert_eq!(zoe["requests"], 7);
    // Round robin over a fast and a slow upstream: the three slow checkouts are frustrated (> 4T).
    assert_eq!(zoe["frustrated"], 3, "{zoe}");
    assert!(zoe["score"].as_f64().unwrap() < 100.0);
    let steps = zoe["journey"].as_array().unwrap();
    let slow_s = slow.addr.to_string();
    let on_slow: Vec<_> = steps
        .iter()
        .filter(|s| s["route"] == "checkout" && s["upstream"] == slow_s.as_str())
        .collect();
    assert_eq!(on_slow.len(), 3, "{zoe}");
    assert!(on_slow
        .iter()
        .all(|s| s["latency_ms"].as_f64().unwrap() >= 150.0));
    assert_eq!(steps[6]["route"], serde_json::Value::Null);

    tokio::time::sleep(Duration::from_millis(150)).await;
    let (_, metrics) = get(&c, format!("http://{admin}/metrics"), &[]).await;
    assert_eq!(
        sample(
            &metrics,
            "usher_requests_total",
            &[
                ("route", "checkout"),
                ("upstream", &slow_s),
                ("outcome", "ok")
            ]
        ),
        Some(3.0)
    );
    assert_eq!(sample(&metrics, "usher_customers_tracked", &[]), Some(1.0));
    running.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedding_proxy_gets_usher_health_retries_and_protection() {
    let dir = tempfile::tempdir().unwrap();
    let a = Origin::start_local("a").await.unwrap();
    let b = Origin::start_local("b").await.unwrap();
    let dead = dead_addr();
    let cfg = config(
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
name = "shop"
upstreams = ["{}", "{}", "{}"]
[[routes]]
name = "checkout"
match = {{ path_prefix = "/checkout" }}
pool = "shop"
critical = true
"#,
            dead, a.addr, b.addr
        ),
        dir.path(),
    );
    let listen = free_addr();
    let admin = cfg.server.admin.unwrap();
    let (server, usher) = embed::build_server(cfg, listen);
    let running = usher::server::spawn_server(server, usher, &[listen, admin]).unwrap();
    let c = client();

    // The embedder's round robin reaches the dead upstream: usher ejects it on the refused
    // connection, grants a retry, and the balancer's accept filter skips it from then on.
    for i in 0..12 {
        let (s, _) = get(
            &c,
            format!("http://{listen}/checkout"),
            &[("x-customer-id", "sam")],
        )
        .await;
        assert_eq!(s, 200, "request {i}");
    }
    let ups = json(&c, format!("http://{admin}/upstreams")).await;
    let d = ups["upstreams"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["address"] == dead.to_string())
        .unwrap();
    assert_eq!(d["state"], "ejected", "{d}");
    assert_eq!(d["why"]["rule"], "connect_failure");

    // A protected customer is routed by usher itself: the cheapest healthy upstream.
    for _ in 0..5 {
        let (s, _) = get(
            &c,
            format!("http://{listen}/checkout"),
            &[("x-customer-id", "gia"), ("x-customer-tier", "gold")],
        )
        .await;
        assert_eq!(s, 200);
    }
    let (_, metrics) = get(&c, format!("http://{admin}/metrics"), &[]).await;
    assert_eq!(
        sample(
            &metrics,
            "usher_protected_requests_total",
            &[("why", "tier_on_critical")]
        ),
        Some(5.0)
    );
    assert!(sample(&metrics, "usher_retries_total", &[("outcome", "succeeded")]).unwrap() >= 1.0);
    running.stop();
}
