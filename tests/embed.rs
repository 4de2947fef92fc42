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
async fn the_embedders_balancer_skips_what_usher_ejected_and_protected_customers_get_ushers_choice()
{
    let dir = tempfile::tempdir().unwrap();
    let fast = Origin::start_local("fast").await.unwrap();
    let slower = Origin::start_local("slower").await.unwrap();
    let broken = Origin::start_local("broken").await.unwrap();
    // Slower, but not enough to be ejected (the latency rule wants 50 ms more than the rest).
    slower.behavior.set_delay(Duration::from_millis(20));
    broken.behavior.set_failure_ratio(1.0);
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
            fast.addr, slower.addr, broken.addr
        ),
        dir.path(),
    );
    let listen = free_addr();
    let admin = cfg.server.admin.unwrap();
    let (server, usher) = embed::build_server(cfg, listen);
    let running = usher::server::spawn_server(server, usher, &[listen, admin]).unwrap();
    let c = client();
    let send = |who: &'static str, tier: Option<&'static str>| {
        let c = c.clone();
        async move {
            let mut h = vec![("x-customer-id", who)];
            if let Some(t) = tier {
                h.push(("x-customer-tier", t));
            }
            get(&c, format!("http://{listen}/checkout"), &h).await.0
        }
    };

    // Round robin reaches the broken origin; each 503 is retried elsewhere, so the customer sees
    // none of them, and five in a row get it ejected.
    for i in 0..30 {
        assert_eq!(send("sam", None).await, 200, "request {i}");
    }
    let ups = json(&c, format!("http://{admin}/upstreams")).await;
    let b = ups["upstreams"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["address"] == broken.addr.to_string())
        .unwrap()
        .clone();
    assert_eq!(b["state"], "ejected", "{b}");
    assert_eq!(b["why"]["rule"], "consecutive_failures");
    assert_eq!(
        broken.behavior.requests(),
        5,
        "ejected after five failures in a row"
    );

    // From now on the embedder's own balancer never picks it: it gets nothing.
    let (f0, s0) = (fast.behavior.requests(), slower.behavior.requests());
    for i in 0..40 {
        assert_eq!(send("sam", None).await, 200, "request {i}");
    }
    assert_eq!(
        broken.behavior.requests(),
        5,
        "an ejected upstream gets nothing"
    );
    let (f1, s1) = (fast.behavior.requests(), slower.behavior.requests());
    assert_eq!(
        (f1 - f0) + (s1 - s0),
        40,
        "one attempt each, no retries needed"
    );
    assert!(
        f1 - f0 >= 15 && s1 - s0 >= 15,
        "round robin over the two left: {} and {}",
        f1 - f0,
        s1 - s0
    );

    // A protected customer is routed by usher itself: the cheapest healthy upstream, every time,
    // where round robin would have sent half to the slower one.
    for _ in 0..10 {
        assert_eq!(send("gia", Some("gold")).await, 200);
    }
    assert_eq!(
        fast.behavior.requests(),
        f1 + 10,
        "usher's choice: the fast origin"
    );
    assert_eq!(slower.behavior.requests(), s1);
    assert_eq!(broken.behavior.requests(), 5);

    let (_, metrics) = get(&c, format!("http://{admin}/metrics"), &[]).await;
    assert_eq!(
        sample(
            &metrics,
            "usher_protected_requests_total",
            &[("why", "tier_on_critical")]
        ),
        Some(10.0)
    );
    assert_eq!(
        sample(&metrics, "usher_retries_total", &[("outcome", "succeeded")]),
        Some(5.0),
        "each 503 of the broken origin was retried once, successfully"
    );
    running.stop();
}
