//! The state snapshot at scale: a million customers, each with a full 16-step journey, written as
//! usher writes it at SIGTERM and read back as it reads it at start (checked whole, then streamed
//! into the store). Prints the time of each, the file's size, and the process's resident memory
//! before and after writing (the write is streamed: no second copy of the store).
//!
//! `cargo bench --bench snapshot [-- CUSTOMERS]` (default 1,000,000).

use http::Method;
use std::path::Path;
use std::time::Instant;
use usher::config::Config;
use usher::experience::{Judgement, Observation, Step};
use usher::measure::Outcome;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn rss_mib() -> f64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: f64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0.0);
    pages * 4096.0 / (1 << 20) as f64
}

fn main() {
    let n: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "[experience]\ntrack_max = {n}\n[state]\ndir = \"{}\"\n[[pools]]\nname = \"web\"\nupstreams = [\"127.0.0.1:9001\", \"127.0.0.1:9002\"]\n[[routes]]\nname = \"checkout\"\npool = \"web\"\n",
        dir.path().display()
    );
    let cfg = Config::parse(&text, Path::new(".")).unwrap();
    let usher = usher::Usher::new(cfg.clone());
    let g = usher.generation();
    let settings = *g.store_settings();
    let store = &usher.state().store;
    let t = Instant::now();
    for round in 0..16u64 {
        for i in 0..n {
            let step = Step::new(
                1_700_000_000_000 + round,
                Some(0),
                &Method::POST,
                "/checkout/payment/confirm-and-pay",
                200,
                12_345,
                Some(1),
                Outcome::Ok,
                b"4bf92f3577b34da6a3ce929d0e0e4736",
            );
            let j = if i % 7 == 0 {
                Judgement::Frustrated
            } else {
                Judgement::Satisfied
            };
            let obs = Observation {
                tier: 0,
                judgement: j,
                failed: false,
                step,
                struggle: true,
            };
            store.record(
                &format!("customer-{i:08}@shop.example"),
                &obs,
                1_700_000_000_000 + round * 1000,
                &settings,
            );
        }
    }
    println!(
        "{} customers tracked, 16 steps each, in {:.1} s; RSS {:.0} MiB",
        store.len(),
        t.elapsed().as_secs_f64(),
        rss_mib()
    );
    let path = dir.path().join(usher::snapshot::FILE);
    let before = rss_mib();
    let w = usher::snapshot::write(&usher, &path).unwrap();
    println!(
        "write: {} customers, {:.0} MiB, {:.2} s; RSS {:.0} -> {:.0} MiB",
        w.customers,
        w.bytes as f64 / (1 << 20) as f64,
        w.took.as_secs_f64(),
        before,
        rss_mib()
    );
    drop(g);
    drop(usher);
    let fresh = usher::Usher::new(cfg);
    let l = usher::snapshot::load(&fresh, &path).unwrap();
    println!(
        "read (checked whole, then loaded): {} customers in {:.2} s; {} tracked",
        l.customers,
        l.took.as_secs_f64(),
        fresh.state().store.len()
    );
}
