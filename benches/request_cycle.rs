//! The engine's whole work for one request, without a socket: admission (identity, route,
//! protection), upstream choice, the response head, and the finish (metrics, figures, the
//! customer's score and journey, funnels, objective), with everything on as the bench harness runs
//! usher. What the proxy adds on top is Pingora's own.
//!
//! `cargo bench --bench request_cycle`

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use http::{HeaderMap, Method, Uri};
use rand::rngs::SmallRng;
use rand::SeedableRng;
use std::path::Path;
use std::time::Instant;
use usher::config::Config;
use usher::engine::{Exchange, Finish, RequestHead};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const CONFIG: &str = r#"
[identity]
customer_id = [{ header = "x-customer-id" }, { cookie = "cid" }]
tier = [{ header = "x-customer-tier", trusted_from = ["127.0.0.1/32"] }]
default_tier = "standard"
[[tiers]]
name = "gold"
protected = true
follow_up = "phone within 1h"
notify_failures = true
[[tiers]]
name = "standard"
follow_up = "email"
[protection]
rescue_below = 50
experience_header = "x-usher-experience"
[[funnels]]
name = "checkout"
abandon_after = "30m"
steps = [{ name = "cart", path = "/cart" }, { name = "checkout", path = "/checkout" }, { name = "done", path = "/checkout/done" }]
[[pools]]
name = "web"
upstreams = ["127.0.0.1:9001", "127.0.0.1:9002", "127.0.0.1:9003"]
[[routes]]
name = "checkout"
match = { path_prefix = "/checkout" }
pool = "web"
critical = true
target = "100ms"
slo = 0.999
[[routes]]
name = "site"
pool = "web"
target = "200ms"
"#;

fn cycle(c: &mut Criterion) {
    let cfg = Config::parse(CONFIG, Path::new(".")).unwrap();
    let u = usher::Usher::new(cfg);
    let ids: Vec<String> = (0..1000).map(|i| format!("customer-{i:04}")).collect();
    let headers: Vec<HeaderMap> = ids
        .iter()
        .map(|id| {
            let mut h = HeaderMap::new();
            h.insert("x-customer-id", id.parse().unwrap());
            h.insert("host", "shop.example".parse().unwrap());
            h
        })
        .collect();
    let uri: Uri = "/site/products/42".parse().unwrap();
    let mut rng = SmallRng::seed_from_u64(1);
    let mut i = 0usize;
    let mut now_ms = 1_700_000_000_000u64;
    c.bench_function("engine request cycle (1k customers, everything on)", |b| {
        b.iter(|| {
            i = (i + 1) % ids.len();
            now_ms += 1;
            let now = Instant::now();
            let mut ex = Exchange::starting_at(now);
            u.begin(
                &mut ex,
                &RequestHead {
                    version: http::Version::HTTP_11,
                    method: &Method::GET,
                    uri: &uri,
                    headers: &headers[i],
                    peer: Some("127.0.0.1".parse().unwrap()),
                },
                now_ms,
            );
            black_box(u.choose_upstream(&mut ex, now, &mut rng));
            u.connected(&mut ex, now);
            u.response_head(&mut ex, 200, now);
            black_box(u.finish(
                &mut ex,
                &Finish {
                    method: &Method::GET,
                    path: uri.path(),
                    status: 200,
                    failure: None,
                    bytes_in: 0,
                    bytes_out: 120,
                    now,
                    now_ms,
                },
            ))
        })
    });
}

/// The bench harness's TLS keep-alive rows: no id header, so the customer is `anon:<client ip>`,
/// and no request id, so a new one is made for every request.
fn anonymous_cycle(c: &mut Criterion) {
    let cfg = Config::parse(CONFIG, Path::new(".")).unwrap();
    let u = usher::Usher::new(cfg);
    let mut headers = HeaderMap::new();
    headers.insert("host", "shop.example".parse().unwrap());
    headers.insert("user-agent", "bench".parse().unwrap());
    let uri: Uri = "/site/products/42".parse().unwrap();
    let peer = Some("127.0.0.1".parse().unwrap());
    let mut rng = SmallRng::seed_from_u64(1);
    let mut now_ms = 1_700_000_000_000u64;
    c.bench_function("engine request cycle (anonymous, new request id)", |b| {
        b.iter(|| {
            now_ms += 1;
            let now = Instant::now();
            let mut ex = Exchange::starting_at(now);
            u.begin(
                &mut ex,
                &RequestHead {
                    version: http::Version::HTTP_11,
                    method: &Method::GET,
                    uri: &uri,
                    headers: &headers,
                    peer,
                },
                now_ms,
            );
            black_box(u.choose_upstream(&mut ex, now, &mut rng));
            u.connected(&mut ex, now);
            u.response_head(&mut ex, 200, now);
            black_box(u.finish(
                &mut ex,
                &Finish {
                    method: &Method::GET,
                    path: uri.path(),
                    status: 200,
                    failure: None,
                    bytes_in: 0,
                    bytes_out: 120,
                    now,
                    now_ms,
                },
            ))
        })
    });
}

criterion_group!(benches, cycle, anonymous_cycle);
criterion_main!(benches);
