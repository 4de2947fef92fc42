//! Memory per tracked customer, asserted: the customer store with the longest ids usher accepts
//! (`identity.max_id_len` = 128 bytes) and full journeys stays under a bound derived from its data
//! layout, and past `track_max` it evicts instead of growing.
//!
//! `benches/customer_memory.rs` measures the same thing at a million customers with short ids and
//! asserts nothing; this test counts the same way (every allocation at mimalloc's usable size, so
//! size-class rounding is included) but per thread, so that nothing else the test harness does
//! is counted, and it asserts. Memory is deterministic enough to assert on; time is not, and
//! nothing here measures it.

use std::alloc::{GlobalAlloc, Layout};
use std::cell::Cell;
use std::time::Duration;
use usher::experience::{CustomerStore, Judgement, Observation, ScoreModel, Step, StoreSettings};
use usher::measure::Outcome;

/// Counts the live heap of the current thread at the allocator's usable size. The store is
/// filled and dropped on the test's own thread, so every allocation it makes is counted there.
struct Counting;

thread_local! {
    // Const-initialised and without a destructor: reading it never allocates, so it is safe
    // inside the allocator.
    static LIVE: Cell<isize> = const { Cell::new(0) };
}

fn usable(p: *mut u8) -> usize {
    // SAFETY: p is a live allocation from mimalloc.
    unsafe { libmimalloc_sys::mi_usable_size(p as *const _) }
}

fn count(bytes: isize) {
    let _ = LIVE.try_with(|l| l.set(l.get() + bytes));
}

fn live() -> isize {
    LIVE.with(|l| l.get())
}

// SAFETY: every call is passed on to mimalloc unchanged; only the counter is added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = mimalloc::MiMalloc.alloc(layout);
        if !p.is_null() {
            count(usable(p) as isize);
        }
        p
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = mimalloc::MiMalloc.alloc_zeroed(layout);
        if !p.is_null() {
            count(usable(p) as isize);
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, layout: Layout) {
        count(-(usable(p) as isize));
        mimalloc::MiMalloc.dealloc(p, layout)
    }
    unsafe fn realloc(&self, p: *mut u8, layout: Layout, new: usize) -> *mut u8 {
        let old = usable(p) as isize;
        let q = mimalloc::MiMalloc.realloc(p, layout, new);
        if !q.is_null() {
            count(usable(q) as isize - old);
        }
        q
    }
}

/// usher's own allocator (`src/main.rs`), so that size classes are the production ones.
#[global_allocator]
static GLOBAL: Counting = Counting;

/// The longest id usher accepts (`identity.max_id_len`, `src/defaults.rs`).
const ID_BYTES: usize = 128;
const JOURNEY_LEN: usize = 16;

/// The bound on heap bytes per tracked customer, from the store's layout (`src/experience/`):
///
/// - the id: `CompactString` keeps up to 24 bytes inline; a longer id is one heap block of
///   exactly its length (compact_str 0.8 `allocate_ptr`), and 128 is one of mimalloc's size
///   classes: **128**;
/// - the journey: one boxed slice of 16 steps of 64 bytes, `Step` packed to alignment 1 so that
///   it fits mimalloc's 1024 class exactly (`journey.rs`): **1024**;
/// - the fixed part: one `Customer` slot of at most 104 bytes (`store.rs` asserts it) in its
///   shard's slab, a `Vec` grown by doubling, so at most twice that per customer: **208**;
/// - the map: one `u32` and one control byte (5 bytes) per `hashbrown` bucket; buckets are a
///   power of two filled to at most 7/8, so fewer than 16/7 buckets per customer after a fill,
///   and fewer than 32/7 once evictions have left tombstones (a table that runs out of room
///   with more than half its capacity in use doubles instead of rehashing in place): **22.9**;
/// - mimalloc's rounding of the two big blocks per shard (slab and map), which are not in the
///   small size classes: a large block (512 KiB to 2 MiB) is rounded up to 64 KiB, at most 1/8
///   (mimalloc v2, `_mi_os_good_alloc_size`), a medium one to its size class, 4 per doubling, at
///   most 1/4: 208 / 8 + 22.9 / 4 = **31.7**;
/// - the shards themselves (at most 64 `Mutex<Shard>` of a few dozen bytes, and 16 trailing
///   control bytes per map): a few KiB per store, under 1 byte per customer at these sizes.
///
/// 128 + 1024 + 208 + 22.9 + 31.7 + 1 = 1415.6. The README's figure for short (inline) ids at a
/// million customers, whose slabs are nearly full, plus 128 is the same store with these ids and
/// full slabs; the rest of the bound is the worst case of slab growth.
const BOUND_PER_CUSTOMER: f64 = 128.0 + 1024.0 + 208.0 + 32.0 / 7.0 * 5.0 + 31.7 + 1.0;

/// What every customer holds at least: its id, its journey and its slot.
const FLOOR_PER_CUSTOMER: f64 = 128.0 + 1024.0 + 104.0;

fn settings() -> StoreSettings {
    StoreSettings {
        journey_len: JOURNEY_LEN,
        model: ScoreModel::new(Duration::from_secs(600)),
        rescue: Some((40.0, Duration::from_secs(600))),
        degraded_below: 70.0,
        recover_above: 80.0,
        min_requests: 3,
        struggle: Default::default(),
    }
}

/// Customer `i`'s id, exactly 128 bytes.
fn id(i: usize) -> String {
    let s = format!("customer-{i:0>119}");
    assert_eq!(s.len(), ID_BYTES);
    s
}

/// Records one request of `id` at `at_ms`, with a path longer than a step keeps (it is cut to 27
/// bytes, as the longest real paths are).
fn record(store: &CustomerStore, id: &str, at_ms: u64, st: &StoreSettings) {
    let step = Step::new(
        at_ms,
        Some(1),
        &http::Method::POST,
        "/checkout/payment/confirm-and-pay",
        200,
        12_345,
        Some(2),
        Outcome::Ok,
        b"4bf92f3577b34da6a3ce929d0e0e4736",
    );
    let judgement = if at_ms.is_multiple_of(7) {
        Judgement::Frustrated
    } else {
        Judgement::Satisfied
    };
    store.record(
        id,
        &Observation {
            tier: 0,
            judgement,
            failed: false,
            step,
            struggle: true,
        },
        at_ms,
        st,
    );
}

/// 24,000 customers, each with a 128-byte id and a full 16-step journey: the store's heap per
/// customer lies between what each customer must hold (1000 bytes) and the layout's bound.
#[test]
fn memory_per_customer_with_128_byte_ids_is_bounded() {
    const N: usize = 24_000;
    let st = settings();
    // The ids are made before counting starts: the store's own copies are what is measured.
    let ids: Vec<String> = (0..N).map(id).collect();
    let before = live();
    let store = CustomerStore::new(N);
    // Round by round, as the bench does, so every customer ends with a full journey.
    for round in 0..JOURNEY_LEN as u64 {
        for (i, id) in ids.iter().enumerate() {
            record(&store, id, round * 1000 + i as u64, &st);
        }
    }
    let heap = (live() - before) as f64;
    let per = heap / N as f64;
    eprintln!(
        "{N} customers, {ID_BYTES}-byte ids, {JOURNEY_LEN}-step journeys, {} shards: {heap} bytes \
         of heap, {per:.1} per customer (bound {BOUND_PER_CUSTOMER:.1}); the store's own \
         accounting (requested sizes, without ids): {:.1} per customer",
        store.shards(),
        store.heap_bytes() as f64 / N as f64
    );
    assert_eq!(store.len(), N);
    assert_eq!(store.evicted(), 0);
    for i in [0, N / 2, N - 1] {
        let c = store.get(&ids[i], 16_000 + N as u64, &st.model).unwrap();
        assert_eq!(
            (c.requests as usize, c.journey.len()),
            (JOURNEY_LEN, JOURNEY_LEN)
        );
        assert_eq!(c.id, ids[i]);
    }
    assert!(
        per <= BOUND_PER_CUSTOMER,
        "{per:.1} bytes of heap per customer, over the layout's bound of {BOUND_PER_CUSTOMER:.1}"
    );
    // Counting works (a counter that saw nothing would pass any upper bound).
    assert!(
        per >= FLOOR_PER_CUSTOMER,
        "{per:.1} bytes per customer, less than its id, journey and slot: nothing was counted?"
    );
    // Every byte counted was the store's: dropping it gives them all back. (Compared as what the
    // drop frees, not with the count before the store was made: printing, captured by the test
    // harness, allocates on this thread too.)
    let held = live();
    drop(store);
    assert_eq!(
        (held - live()) as f64,
        heap,
        "dropping the store did not give back what it was counted to hold"
    );
}

/// Three times `track_max` customers, each with a full journey: the store keeps `track_max` of
/// them, evicts the rest, and its heap stays within the bound for `track_max` customers however
/// many came and went.
#[test]
fn the_store_keeps_track_max_customers_and_no_more_memory() {
    const TRACK_MAX: usize = 10_000;
    const CUSTOMERS: usize = 3 * TRACK_MAX;
    let st = settings();
    let ids: Vec<String> = (0..CUSTOMERS).map(id).collect();
    let before = live();
    let store = CustomerStore::new(TRACK_MAX);
    let mut at_ms = 0;
    let mut heap_at_full = 0.0;
    for (i, id) in ids.iter().enumerate() {
        // A customer's whole visit at once: a full journey, then the next customer.
        for _ in 0..JOURNEY_LEN {
            at_ms += 1;
            record(&store, id, at_ms, &st);
        }
        assert!(store.len() <= TRACK_MAX, "{} tracked", store.len());
        if i + 1 == TRACK_MAX {
            heap_at_full = (live() - before) as f64;
        }
    }
    let heap = (live() - before) as f64;
    eprintln!(
        "track_max {TRACK_MAX}, {CUSTOMERS} customers seen, {} shards: {:.1} bytes per tracked \
         customer when first full, {:.1} after {} evictions (bound {BOUND_PER_CUSTOMER:.1})",
        store.shards(),
        heap_at_full / TRACK_MAX as f64,
        heap / TRACK_MAX as f64,
        store.evicted()
    );
    assert_eq!(store.len(), TRACK_MAX);
    assert_eq!(store.evicted(), (CUSTOMERS - TRACK_MAX) as u64);
    // Least recently seen go first: the first track_max customers are all gone (each shard has
    // since taken about twice its size in newer ones), the very latest is there, journey full.
    let now = at_ms + 1;
    assert!((0..TRACK_MAX).all(|i| store.get(&ids[i], now, &st.model).is_none()));
    let last = store.get(&ids[CUSTOMERS - 1], now, &st.model).unwrap();
    assert_eq!(last.journey.len(), JOURNEY_LEN);
    // A copy (its id and journey are counted too): gone before the store's bytes are summed up.
    drop(last);
    let bound = BOUND_PER_CUSTOMER * TRACK_MAX as f64;
    assert!(
        heap_at_full <= bound,
        "{heap_at_full} bytes for {TRACK_MAX} customers, over {bound:.0}"
    );
    assert!(
        heap <= bound,
        "{heap} bytes after {} evictions: the store grew past the bound for track_max ({bound:.0})",
        store.evicted()
    );
    assert!(heap >= FLOOR_PER_CUSTOMER * TRACK_MAX as f64);
    // Every byte counted was the store's: dropping it gives them all back. (Compared as what the
    // drop frees, not with the count before the store was made: printing, captured by the test
    // harness, allocates on this thread too.)
    let held = live();
    drop(store);
    assert_eq!(
        (held - live()) as f64,
        heap,
        "dropping the store did not give back what it was counted to hold"
    );
}
