//! How long the live page's customer lookup takes with a full store: one million customers with
//! 16-step journeys, 100,000 ended journeys in the funnel history and 50,000 in progress. Times
//! `GET /customers/{id}` (what the page's lookup calls), the same by pseudonym (every tracked id
//! tried), `GET /customers/{id}/events` and `GET /funnels` through the admin API's own handler.
//!
//! `cargo bench --bench admin_lookup` (or `-- 200000` for another number of customers). Prints the
//! median and the slowest of each.

use http::Method;
use std::time::{Duration, Instant};
use usher::admin::api::{handle, Caller};
use usher::engine::Usher;
use usher::experience::{Judgement, Observation, Step};
use usher::measure::Outcome;
use usher::privacy::Pseudonyms;

const KEY: &str = "5f1e0c3b9a8d7e6f5a4b3c2d1e0f9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f";

fn main() {
    let n: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("key");
    std::fs::write(&key, KEY).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let text = format!(
        r#"[experience]
track_max = {n}
[privacy]
pseudonym_key_file = "key"
[events]
funnel_track_max = 100000
funnel_history_max = 100000
[[pools]]
name = "web"
upstreams = ["127.0.0.1:9001"]
[[routes]]
name = "checkout"
match = {{ path_prefix = "/checkout" }}
pool = "web"
target = "300ms"
[[routes]]
name = "site"
pool = "web"
[[funnels]]
name = "checkout"
steps = [{{ name = "cart", path = "/cart" }}, {{ name = "pay", path = "/checkout/pay" }}, {{ name = "done", path = "/checkout/done" }}]
"#
    );
    let cfg = usher::Config::parse(&text, dir.path()).unwrap();
    let u = Usher::new(cfg);
    let g = u.generation();
    let st = u.state();
    let settings = *g.store_settings();
    let now = usher::time::wall_ms();
    let t = Instant::now();
    let paths = [
        "/",
        "/products/42",
        "/cart",
        "/checkout",
        "/checkout/pay",
        "/checkout/done",
    ];
    for i in 0..n {
        let id = format!("customer-{i:07}@example.com");
        for k in 0..16u64 {
            let at = now - 60_000 + k * 1_000;
            let step = Step::new(
                at,
                Some(0),
                &Method::GET,
                paths[k as usize % paths.len()],
                200,
                12_000,
                Some(0),
                Outcome::Ok,
                b"4bf92f3577b34da6a3ce929d0e0e4736",
            );
            let obs = Observation {
                tier: 0,
                judgement: if k % 5 == 0 {
                    Judgement::Frustrated
                } else {
                    Judgement::Satisfied
                },
                failed: false,
                step,
                struggle: true,
            };
            st.store.record(&id, &obs, at, &settings);
        }
        if i < 150_000 {
            let f = &st.events.funnels;
            f.observe(
                g.funnels(),
                100_000,
                &id,
                0,
                false,
                &Method::GET,
                "/cart",
                false,
                false,
                now - 30_000,
            );
            if i < 100_000 {
                f.observe(
                    g.funnels(),
                    100_000,
                    &id,
                    0,
                    false,
                    &Method::GET,
                    "/checkout/done",
                    false,
                    false,
                    now - 20_000,
                );
            }
        }
    }
    println!(
        "{n} customers, {} ended journeys in the funnel history, {} in progress: filled in {:.1} s",
        st.events.funnels.history_len(),
        st.events.funnels.tracked(),
        t.elapsed().as_secs_f64()
    );
    let caller = Caller {
        loopback: true,
        role: None,
    };
    let pseudonyms = Pseudonyms::keyed(KEY.as_bytes());
    let time = |what: &str, rounds: usize, path: &dyn Fn(usize) -> String, query: Option<&str>| {
        let mut took: Vec<Duration> = (0..rounds)
            .map(|r| {
                let p = path(r);
                let t = Instant::now();
                let reply = handle(&u, "GET", &p, query, now, caller);
                let d = t.elapsed();
                assert_eq!(reply.status, 200, "{p}");
                d
            })
            .collect();
        took.sort();
        println!(
            "{what}: median {:.3} ms, slowest {:.3} ms ({rounds} lookups)",
            took[rounds / 2].as_secs_f64() * 1e3,
            took[rounds - 1].as_secs_f64() * 1e3
        );
    };
    let id = |r: usize| format!("customer-{:07}@example.com", (r * 7919) % n);
    time(
        "GET /customers/{id}",
        200,
        &|r| format!("/customers/{}", id(r)),
        None,
    );
    time(
        "GET /customers/{id}/events",
        200,
        &|r| format!("/customers/{}/events", id(r)),
        None,
    );
    time(
        "GET /customers/{pseudonym}",
        5,
        &|r| format!("/customers/{}", pseudonyms.of(&id(r))),
        None,
    );
    time(
        "GET /funnels?window=1h",
        5,
        &|_| "/funnels".to_string(),
        Some("window=1h"),
    );
}
