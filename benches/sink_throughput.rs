//! How many events per second each sink sustains, end to end through its real task: the JSONL file,
//! the webhook (to a local receiver that acknowledges every batch) and NATS JetStream (to a local
//! `nats-server -js`, when one is installed). Each run pushes N events into the sink's queue as fast
//! as the hand-off allows and waits until the last one is delivered.
//!
//! `cargo bench --bench sink_throughput` (or `-- 50000` for another N).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use usher::events::model::{CloudEvent, EventType};
use usher::Config;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn event(i: u64) -> CloudEvent {
    CloudEvent::new(
        "usher://bench",
        EventType::CustomerDegraded,
        &format!("customer-{i}"),
        1_700_000_000_000 + i,
        "",
        serde_json::json!({ "customer": format!("customer-{i}"), "tier": "gold", "score": 42.0, "follow_up": "phone within 1h",
                            "journey": [{ "route": "checkout", "method": "POST", "path": "/checkout/pay", "status": 503, "latency_ms": 12.5 }] }),
    )
}

/// Pushes `n` distinct events through the sink configured by `sinks`, waits for delivery.
async fn run(
    name: &str,
    sinks: &str,
    dir: &std::path::Path,
    n: u64,
    delivered: impl Fn(&usher::Usher) -> u64,
) {
    let text = format!("[events]\nspool_dir = \"spool\"\n{sinks}\n[[pools]]\nname = \"p\"\nupstreams = [\"127.0.0.1:1\"]\n[[routes]]\nname = \"r\"\npool = \"p\"\n");
    let cfg = Config::parse(&text, dir).expect("bench config");
    let u = usher::Usher::new(cfg);
    let runner = {
        let u = u.clone();
        tokio::spawn(async move { u.state().events.run().await })
    };
    // No budget: these measure the sinks, not the flood limit.
    let policy = usher::events::Policy {
        cooldown: Duration::from_secs(600),
        recent: 1000,
        budget_per_sec: 0.0,
        source: "usher://bench",
    };
    let start = Instant::now();
    let mut dropped = 0;
    for i in 0..n {
        // Customer events are subject to a cooldown per customer: distinct customers, all pass.
        while !u
            .state()
            .events
            .emit(event(i), 1_700_000_000_000 + i, &policy)
        {
            dropped += 1;
        }
        if i % 1024 == 0 {
            tokio::task::yield_now().await;
        }
    }
    let queued = start.elapsed();
    while delivered(&u) < n {
        tokio::time::sleep(Duration::from_millis(2)).await;
        if start.elapsed() > Duration::from_secs(120) {
            println!(
                "{name}: gave up after 120 s, {} of {n} delivered",
                delivered(&u)
            );
            break;
        }
    }
    let total = start.elapsed();
    u.state().events.close();
    let _ = runner.await;
    println!(
        "{name:8} {n} events delivered in {:.2} s: {:.0} events/s (hand-off of all {n}: {:.0} ms){}",
        total.as_secs_f64(),
        n as f64 / total.as_secs_f64(),
        queued.as_secs_f64() * 1000.0,
        if dropped > 0 { format!(", {dropped} dropped") } else { String::new() }
    );
}

fn delivered_count(u: &usher::Usher, sink: &str) -> u64 {
    let text = u.state().metrics.encode();
    let needle =
        format!("outcome=\"delivered\",sink=\"{sink}\",type=\"usher.customer.degraded\"}} ");
    text.lines()
        .find_map(|l| {
            l.split_once(&needle)
                .and_then(|(_, v)| v.trim().parse::<f64>().ok())
        })
        .unwrap_or(0.0) as u64
}

/// A webhook receiver that acknowledges every batch and counts its events.
async fn receiver() -> (SocketAddr, Arc<AtomicU64>) {
    use http_body_util::BodyExt;
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let count = Arc::new(AtomicU64::new(0));
    let c = count.clone();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else {
                continue;
            };
            let c = c.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let c = c.clone();
                        async move {
                            let body = req
                                .into_body()
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            let n = serde_json::from_slice::<Vec<serde_json::Value>>(&body)
                                .map(|v| v.len())
                                .unwrap_or(0);
                            c.fetch_add(n as u64, Ordering::Relaxed);
                            Ok::<_, std::convert::Infallible>(hyper::Response::new(
                                http_body_util::Full::new(bytes::Bytes::new()),
                            ))
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    (addr, count)
}

fn main() {
    let n: u64 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(100_000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        run("jsonl", "[[events.sinks]]\ntype = \"jsonl\"\npath = \"ev.jsonl\"\nqueue = 1000000\n", dir.path(), n, |u| delivered_count(u, "jsonl")).await;

        let (addr, _) = receiver().await;
        let sinks = format!("[[events.sinks]]\ntype = \"webhook\"\nurl = \"http://{addr}/\"\nbatch = 500\nqueue = 1000000\n");
        let dir = tempfile::tempdir().unwrap();
        run("webhook", &sinks, dir.path(), n, |u| delivered_count(u, "webhook")).await;

        let nats_dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        match std::process::Command::new("nats-server")
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
            .arg(nats_dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
        {
            Ok(mut child) => {
                let _ = usher::server::wait_listening(SocketAddr::from(([127, 0, 0, 1], port)), Duration::from_secs(10));
                let sinks = format!("[[events.sinks]]\ntype = \"nats\"\nurl = \"nats://127.0.0.1:{port}\"\nqueue = 1000000\n");
                let dir = tempfile::tempdir().unwrap();
                run("nats", &sinks, dir.path(), n, |u| delivered_count(u, "nats")).await;
                let _ = child.kill();
                let _ = child.wait();
            }
            Err(_) => println!("nats     skipped: nats-server is not installed"),
        }
    });
}
