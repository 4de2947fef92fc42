//! Micro benchmarks of what usher does per request, with criterion:
//! score update, customer store insert and lookup at 1M customers, route match, upstream
//! selection, and the event hand-off (the only thing the request path does for events).
//!
//! `cargo bench --bench hot_path`

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use http::{HeaderMap, Method, Uri};
use rand::rngs::SmallRng;
use rand::SeedableRng;
use std::path::Path;
use std::time::{Duration, Instant};
use usher::config::Config;
use usher::events::model::{CloudEvent, EventType};
use usher::experience::{
    CustomerStore, Judgement, Observation, Score, ScoreModel, Step, StoreSettings,
};
use usher::measure::Outcome;
use usher::routing::RouteTable;
use usher::upstream::{AttemptResult, PoolSpec, Registry, Settings};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const CONFIG: &str = r#"
[[pools]]
name = "web"
upstreams = ["127.0.0.1:9001", "127.0.0.1:9002", "127.0.0.1:9003"]
[[routes]]
name = "api-post"
match = { path_prefix = "/api", method = ["POST", "PUT"] }
pool = "web"
[[routes]]
name = "shop"
match = { host = "*.shop.example", path_prefix = "/catalog" }
pool = "web"
[[routes]]
name = "account"
match = { path_prefix = "/account/open" }
pool = "web"
[[routes]]
name = "checkout"
match = { path_prefix = "/checkout" }
pool = "web"
critical = true
[[routes]]
name = "site"
pool = "web"
[[events.sinks]]
type = "jsonl"
[[events.sinks]]
type = "webhook"
url = "http://127.0.0.1:1/"
"#;

fn config() -> Config {
    Config::parse(CONFIG, Path::new("/tmp")).expect("bench config")
}

fn step(at: u64) -> Step {
    Step::new(
        at,
        Some(3),
        &Method::POST,
        "/checkout/pay",
        200,
        1234,
        Some(1),
        Outcome::Ok,
        b"4bf92f3577b34da6a3ce929d0e0e4736",
    )
}

fn score(c: &mut Criterion) {
    let model = ScoreModel::new(Duration::from_secs(600));
    let mut s = Score::default();
    let mut t = 0u64;
    c.bench_function("score update", |b| {
        b.iter(|| {
            t += 7;
            s.observe(black_box(Judgement::Tolerating), t, &model);
            black_box(s.value(t, &model))
        })
    });
}

fn store(c: &mut Criterion) {
    let n = 1_000_000;
    let settings = StoreSettings {
        journey_len: 16,
        model: ScoreModel::new(Duration::from_secs(600)),
        rescue: Some((40.0, Duration::from_secs(600))),
        degraded_below: 70.0,
        recover_above: 80.0,
        min_requests: 3,
        struggle: Default::default(),
    };
    let store = CustomerStore::new(n);
    let ids: Vec<String> = (0..n).map(|i| format!("customer-{i:08}")).collect();
    let obs = |at| Observation {
        tier: 0,
        judgement: Judgement::Satisfied,
        failed: false,
        step: step(at),
        struggle: true,
    };
    for (i, id) in ids.iter().enumerate() {
        store.record(id, &obs(i as u64), i as u64, &settings);
    }
    let mut i = 0usize;
    c.bench_function("store record, 1M customers tracked", |b| {
        b.iter(|| {
            i = (i + 7919) % n;
            black_box(store.record(&ids[i], &obs(i as u64), 2_000_000 + i as u64, &settings))
        })
    });
    c.bench_function("store peek, 1M customers tracked", |b| {
        b.iter(|| {
            i = (i + 7919) % n;
            black_box(store.peek(&ids[i], 3_000_000, &settings.model))
        })
    });
    // Inserting new customers into a full store: each evicts the least recently seen.
    let mut k = 0u64;
    c.bench_function("store insert with eviction, at 1M", |b| {
        b.iter(|| {
            k += 1;
            black_box(store.record(&format!("new-{k}"), &obs(k), 4_000_000 + k, &settings))
        })
    });
}

fn routing(c: &mut Criterion) {
    let cfg = config();
    let table = RouteTable::new(&cfg.routes);
    let uri: Uri = "/checkout/pay".parse().unwrap();
    let mut h = HeaderMap::new();
    h.insert("host", "www.shop.example".parse().unwrap());
    c.bench_function("route match (4th of 5 routes)", |b| {
        b.iter(|| black_box(table.find(black_box(&Method::GET), black_box(&uri), &h)))
    });
}

fn selection(c: &mut Criterion) {
    let cfg = config();
    let t0 = Instant::now();
    let pools: Vec<PoolSpec<'_>> = cfg
        .pools
        .iter()
        .map(|p| PoolSpec {
            name: &p.name,
            members: &p.upstreams,
            checked: false,
        })
        .collect();
    let up = Registry::new(t0).reconcile(&cfg.upstreams, &pools, &[], Settings::default(), t0);
    let mut rng = SmallRng::seed_from_u64(1);
    for u in 0..3 {
        for _ in 0..10 {
            up.observe(
                u,
                AttemptResult::Ok,
                Duration::from_millis(1 + u as u64),
                t0,
                &mut rng,
            );
        }
    }
    c.bench_function("upstream pick (P2C, peak EWMA)", |b| {
        b.iter(|| black_box(up.pick(0, None, false, false, &[], t0, &mut rng)))
    });
    c.bench_function("upstream pick (protected: cheapest)", |b| {
        b.iter(|| black_box(up.pick(0, None, true, false, &[], t0, &mut rng)))
    });
    c.bench_function("upstream observe", |b| {
        b.iter(|| {
            black_box(up.observe(1, AttemptResult::Ok, Duration::from_millis(2), t0, &mut rng))
        })
    });
}

fn handoff(c: &mut Criterion) {
    let cfg = config();
    let usher = usher::Usher::new(cfg);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    // Drain both sinks' queues as a running proxy would, so the hand-off never finds them full...
    let drain = usher.clone();
    let dir = tempfile::tempdir().unwrap();
    std::env::set_current_dir(dir.path()).unwrap();
    rt.spawn(async move { drain.state().events.run().await });
    let ev = CloudEvent::new(
        "usher://bench",
        EventType::UpstreamEjected,
        "127.0.0.1:9001",
        1,
        "",
        serde_json::json!({ "rule": "latency" }),
    );
    c.bench_function("event hand-off to 2 sinks (emit)", |b| {
        // No budget: these measure the sinks, not the flood limit.
        let policy = usher::events::Policy {
            cooldown: Duration::from_secs(600),
            recent: 1000,
            budget_per_sec: 0.0,
            source: "usher://bench",
        };
        b.iter(|| black_box(usher.state().events.emit(ev.clone(), 1, &policy)))
    });
    // ...and the cost of the event itself, which only transitions pay.
    c.bench_function("event build (CloudEvent::new)", |b| {
        b.iter(|| {
            black_box(CloudEvent::new(
                "usher://bench",
                EventType::UpstreamEjected,
                "127.0.0.1:9001",
                black_box(1),
                "",
                serde_json::json!({ "rule": "latency" }),
            ))
        })
    });
    drop(rt);
}

criterion_group!(benches, score, store, routing, selection, handoff);
criterion_main!(benches);
