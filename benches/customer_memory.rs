//! Memory per tracked customer, measured two ways on the real store:
//! - heap bytes the allocator hands out (usable size, so size-class rounding is included), counted
//!   by a wrapping global allocator while N customers with full journeys are recorded;
//! - resident set growth of the process over the same inserts (/proc/self/statm).
//!
//! `cargo bench --bench customer_memory` (or `-- 100000` for another N). Prints bytes per customer.

use std::alloc::{GlobalAlloc, Layout};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::Duration;
use usher::experience::{CustomerStore, Judgement, Observation, ScoreModel, Step, StoreSettings};
use usher::measure::Outcome;

struct Counting;

fn usable(p: *mut u8) -> usize {
    // SAFETY: p is a live allocation from mimalloc.
    unsafe { libmimalloc_sys::mi_usable_size(p as *const _) }
}

static LIVE: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = mimalloc::MiMalloc.alloc(layout);
        if !p.is_null() {
            LIVE.fetch_add(usable(p) as isize, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, layout: Layout) {
        LIVE.fetch_sub(usable(p) as isize, Ordering::Relaxed);
        mimalloc::MiMalloc.dealloc(p, layout)
    }
    unsafe fn realloc(&self, p: *mut u8, layout: Layout, new: usize) -> *mut u8 {
        let old = usable(p) as isize;
        let q = mimalloc::MiMalloc.realloc(p, layout, new);
        if !q.is_null() {
            LIVE.fetch_add(usable(q) as isize - old, Ordering::Relaxed);
        }
        q
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn rss_bytes() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: usize = statm
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

fn main() {
    let n: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let journey_len = 16;
    let ids: Vec<String> = (0..n).map(|i| format!("customer-{i:08}")).collect();
    let heap0 = LIVE.load(Ordering::Relaxed);
    let rss0 = rss_bytes();
    let settings = StoreSettings {
        journey_len,
        model: ScoreModel::new(Duration::from_secs(600)),
        rescue: Some((40.0, Duration::from_secs(600))),
        degraded_below: 70.0,
        recover_above: 80.0,
        min_requests: 3,
        struggle: Default::default(),
    };
    let store = CustomerStore::new(n);
    let path = "/checkout/payment/confirm-and-pay";
    for round in 0..journey_len as u64 {
        for (i, id) in ids.iter().enumerate() {
            let step = Step::new(
                round,
                Some(1),
                &http::Method::POST,
                path,
                200,
                12_345,
                Some(2),
                Outcome::Ok,
                b"4bf92f3577b34da6a3ce929d0e0e4736",
            );
            let j = if i % 7 == 0 {
                Judgement::Frustrated
            } else {
                Judgement::Satisfied
            };
            store.record(
                id,
                &Observation {
                    tier: 0,
                    judgement: j,
                    failed: false,
                    step,
                    struggle: true,
                },
                round * 1000,
                &settings,
            );
        }
    }
    let heap = (LIVE.load(Ordering::Relaxed) - heap0) as f64;
    let rss = rss_bytes().saturating_sub(rss0) as f64;
    assert_eq!(store.len(), n);
    let own = store.heap_bytes() as f64;
    println!("customers tracked:       {n} (journey_len {journey_len}, every journey full)");
    println!("id length:               {} bytes", ids[0].len());
    println!(
        "heap per customer:       {:.0} bytes (allocator usable size, all allocations)",
        heap / n as f64
    );
    println!("rss growth per customer: {:.0} bytes", rss / n as f64);
    println!(
        "store's own accounting:  {:.0} bytes (requested sizes, before allocator rounding)",
        own / n as f64
    );
    println!(
        "journey alone:           {} bytes (16 steps x {} bytes)",
        journey_len * std::mem::size_of::<Step>(),
        std::mem::size_of::<Step>()
    );
    drop(ids);
}
