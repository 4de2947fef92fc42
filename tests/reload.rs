//! Live configuration: 50 reloads in a row under real traffic, alternating two valid files that add
//! and remove a route, add and remove an upstream and change targets, with invalid files in
//! between. No request fails, every customer's history keeps growing, new routes answer at once,
//! an invalid file changes nothing, and the metrics count it all.

mod common;

use common::*;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use usher::engine::Source;
use usher::origin::Origin;
use usher::Config;

/// A configuration with `upstreams` in its one pool; `extra` is one more route, and the checkout
/// target differs so that the two files really differ in what they decide.
fn file(
    server: &str,
    upstreams: &[SocketAddr],
    extra: &str,
    target: &str,
    events: &Path,
) -> String {
    let ups: Vec<String> = upstreams.iter().map(|u| format!("\"{u}\"")).collect();
    format!(
        r#"{server}
[experience]
summary_interval = "100ms"
[[events.sinks]]
type = "jsonl"
path = "{events}"
[[funnels]]
name = "checkout"
steps = [{{ name = "cart", path = "/site/cart" }}, {{ name = "pay", path = "/checkout/pay" }}, {{ name = "done", path = "/checkout/done" }}]
[[pools]]
name = "web"
upstreams = [{ups}]
[[routes]]
name = "checkout"
match = {{ path_prefix = "/checkout" }}
pool = "web"
critical = true
target = "{target}"
[[routes]]
name = "{extra}"
match = {{ path_prefix = "/{extra}" }}
pool = "web"
[[routes]]
name = "site"
match = {{ path_prefix = "/site" }}
pool = "web"
"#,
        ups = ups.join(", "),
        events = events.display(),
    )
}

async fn post(c: &reqwest::Client, url: String) -> (u16, serde_json::Value) {
    let r = c.post(url).send().await.expect("admin API answers");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_reloads_under_load_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let a = Origin::start_local("a").await.unwrap();
    let b = Origin::start_local("b").await.unwrap();
    let c3 = Origin::start_local("c").await.unwrap();
    let (listen, admin) = (free_addr(), free_addr());
    let server = format!("[server]\nlisten = [\"{listen}\"]\nadmin = \"{admin}\"\n");
    let events = dir.path().join("events.jsonl");
    let x = file(&server, &[a.addr, b.addr], "promo", "300ms", &events);
    let y = file(&server, &[a.addr, c3.addr], "beta", "200ms", &events);
    let invalid = [
        "[[routes]\nname = \"broken".to_string(),
        y.replace(
            "pool = \"web\"\n[[routes]]\nname = \"site\"",
            "pool = \"nowhere\"\n[[routes]]\nname = \"site\"",
        ),
        x.replace(&listen.to_string(), &free_addr().to_string()),
    ];
    let path = dir.path().join("usher.toml");
    std::fs::write(&path, &x).unwrap();
    let (cfg, text) = Config::load_with_text(&path).unwrap();
    let source = Source::of_text(Some(path.clone()), &text, usher::time::wall_ms(), "start");
    let usher = usher::Usher::with_source(cfg, source, std::time::Instant::now());
    let running = usher::server::spawn_usher(usher).unwrap();
    let c = client();

    // Customers on the routes every file has, closed loop, until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let customers: [&'static str; 6] = ["ann", "bob", "cat", "dan", "eve", "fay"];
    let traffic: Vec<_> = customers
        .into_iter()
        .enumerate()
        .map(|(i, who)| {
            let (c, stop) = (client(), stop.clone());
            let path = ["/checkout/pay", "/site/cart", "/site/home"][i % 3];
            tokio::spawn(async move {
                let (mut ok, mut failed) = (0u64, Vec::new());
                while !stop.load(Ordering::Relaxed) {
                    let r = c
                        .get(format!("http://{listen}{path}"))
                        .header("x-customer-id", who)
                        .send()
                        .await;
                    match r {
                        Ok(r) if r.status() == 200 => ok += 1,
                        Ok(r) => failed.push(r.status().to_string()),
                        Err(e) => failed.push(e.to_string()),
                    }
                    tokio::time::sleep(Duration::from_millis(3)).await;
                }
                (ok, failed)
            })
        })
        .collect();

    let requests_of = |c: reqwest::Client, who: &'static str| async move {
        let (s, body) = get(&c, format!("http://{admin}/customers/{who}"), &[]).await;
        if s != 200 {
            return 0;
        }
        serde_json::from_str::<serde_json::Value>(&body).unwrap()["requests"]
            .as_u64()
            .unwrap()
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut seen: Vec<u64> = Vec::new();
    for who in customers {
        seen.push(requests_of(c.clone(), who).await);
    }
    let mut refused = 0;
    let mut generation = 1;
    let mut took = Vec::new();
    for round in 0..50 {
        let (next, added, removed) = if round % 2 == 0 {
            (&y, "beta", "promo")
        } else {
            (&x, "promo", "beta")
        };
        // An invalid file first: refused, with its errors; nothing changes.
        let bad = &invalid[round % invalid.len()];
        std::fs::write(&path, bad).unwrap();
        let before = json(&c, format!("http://{admin}/config")).await;
        let (status, answer) = post(&c, format!("http://{admin}/reload")).await;
        assert!(
            status == 422 || status == 409,
            "round {round}: {status} {answer}"
        );
        assert_eq!(answer["reloaded"], false);
        refused += 1;
        let after = json(&c, format!("http://{admin}/config")).await;
        assert_eq!(
            after, before,
            "round {round}: an invalid file changed nothing"
        );
        if status == 422 {
            assert!(!answer["errors"].as_array().unwrap().is_empty(), "{answer}");
        } else {
            assert!(
                answer["error"].as_str().unwrap().contains("server.listen"),
                "{answer}"
            );
        }

        std::fs::write(&path, next).unwrap();
        let asked = std::time::Instant::now();
        let (status, answer) = post(&c, format!("http://{admin}/reload")).await;
        took.push(asked.elapsed());
        assert_eq!(status, 200, "round {round}: {answer}");
        generation += 1;
        assert_eq!(answer["generation"], generation);
        // The route the new file adds answers at once; the one it removes is gone.
        let (s, _) = get(
            &c,
            format!("http://{listen}/{added}/x"),
            &[("x-customer-id", "zed")],
        )
        .await;
        assert_eq!(s, 200, "round {round}: /{added} right after the reload");
        let (s, _) = get(
            &c,
            format!("http://{listen}/{removed}/x"),
            &[("x-customer-id", "zed")],
        )
        .await;
        assert_eq!(s, 404, "round {round}: /{removed} is gone");
        // Every customer's history carried over and keeps growing.
        tokio::time::sleep(Duration::from_millis(20)).await;
        for (i, who) in customers.iter().enumerate() {
            let n = requests_of(c.clone(), who).await;
            assert!(
                n > seen[i],
                "round {round}: {who} had {} requests, now {n}",
                seen[i]
            );
            seen[i] = n;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let mut total = 0;
    for t in traffic {
        let (ok, failed) = t.await.unwrap();
        assert!(
            failed.is_empty(),
            "failed requests across reloads: {failed:?}"
        );
        total += ok;
    }
    assert!(total > 300, "traffic ran throughout: {total} requests");
    took.sort();
    println!(
        "50 reloads under {total} requests, none failed; POST /reload answered in {:?} (median), {:?} (max)",
        took[took.len() / 2],
        took[took.len() - 1]
    );

    let cfg = json(&c, format!("http://{admin}/config")).await;
    assert_eq!(cfg["generation"], 51);
    assert_eq!(
        cfg["routes"],
        serde_json::json!(["checkout", "promo", "site"])
    );
    let (_, metrics) = get(&c, format!("http://{admin}/metrics"), &[]).await;
    assert_eq!(
        sample(
            &metrics,
            "usher_config_reloads_total",
            &[("result", "success")]
        ),
        Some(50.0)
    );
    assert_eq!(
        sample(
            &metrics,
            "usher_config_reloads_total",
            &[("result", "failure")]
        ),
        Some(refused as f64)
    );
    assert_eq!(sample(&metrics, "usher_config_generation", &[]), Some(51.0));
    let loaded = sample(
        &metrics,
        "usher_config_last_reload_success_timestamp_seconds",
        &[],
    )
    .unwrap();
    assert!((loaded - usher::time::wall_ms() as f64 / 1000.0).abs() < 60.0);
    // Upstream a was in every file: its figures ran on; c, removed by the last file, is gone.
    let ups = json(&c, format!("http://{admin}/upstreams")).await;
    let addrs: Vec<&str> = ups["upstreams"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["address"].as_str().unwrap())
        .collect();
    assert_eq!(addrs, [a.addr.to_string(), b.addr.to_string()]);
    let a_attempts = ups["upstreams"][0]["requests"].as_u64().unwrap();
    assert!(
        a_attempts as f64 > a.behavior.requests() as f64 * 0.9,
        "a kept its figures: {a_attempts} of {}",
        a.behavior.requests()
    );
    assert!(
        !metrics.contains(&format!(
            "usher_upstream_state{{state=\"healthy\",upstream=\"{}\"}}",
            c3.addr
        )),
        "a removed upstream's gauge is gone"
    );
    // Stopped as SIGTERM stops it: the state is saved next to the file.
    running.stop_gracefully();
    assert!(dir.path().join("usher-state/usher.snapshot").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_is_refused_for_a_usher_without_a_file_and_on_get() {
    let dir = tempfile::tempdir().unwrap();
    let a = Origin::start_local("a").await.unwrap();
    let cfg = config(
        &format!("[[pools]]\nname = \"p\"\nupstreams = [\"{}\"]\n[[routes]]\nname = \"r\"\npool = \"p\"\n", a.addr),
        dir.path(),
    );
    let admin = cfg.server.admin.unwrap();
    let running = usher::server::spawn(cfg).unwrap();
    let c = client();
    let (status, answer) = post(&c, format!("http://{admin}/reload")).await;
    assert_eq!(status, 409, "{answer}");
    assert!(answer["error"]
        .as_str()
        .unwrap()
        .contains("not started from a file"));
    let r = c
        .get(format!("http://{admin}/reload"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 405);
    running.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_may_name_a_host_and_every_address_it_has_is_an_upstream() {
    let dir = tempfile::tempdir().unwrap();
    let a = Origin::start_local("a").await.unwrap();
    let cfg = config(
        &format!(
            "[[pools]]\nname = \"p\"\nupstreams = [\"localhost:{}\"]\nresolve_interval = \"1s\"\n[[routes]]\nname = \"r\"\npool = \"p\"\n",
            a.addr.port()
        ),
        dir.path(),
    );
    let admin = cfg.server.admin.unwrap();
    let running = usher::server::spawn(cfg).unwrap();
    let c = client();
    let listen = running.listen();
    for _ in 0..5 {
        let (s, body) = get(
            &c,
            format!("http://{listen}/x"),
            &[("x-customer-id", "ann")],
        )
        .await;
        assert_eq!(s, 200, "{body}");
    }
    let v = json(&c, format!("http://{admin}/config")).await;
    let ups: Vec<&str> = v["pools"][0]["upstreams"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u.as_str().unwrap())
        .collect();
    assert!(ups.contains(&a.addr.to_string().as_str()), "{v}");
    // Looked up again every second: the same addresses, so the same generation.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (_, m) = get(&c, format!("http://{admin}/metrics"), &[]).await;
    assert!(
        sample(
            &m,
            "usher_upstream_resolutions_total",
            &[("result", "unchanged")]
        )
        .unwrap_or(0.0)
            >= 1.0,
        "{m}"
    );
    assert_eq!(
        json(&c, format!("http://{admin}/config")).await["generation"],
        1
    );
    running.stop();
}
