//! The bounded customer store: per-customer score, counters and journey, for at most `track_max`
//! customers, the least recently seen evicted first.
//!
//! Sharded by hash of the customer id; each shard is a slab of customer records threaded on an
//! intrusive LRU list (u32 links) with a `hashbrown::HashTable` of slab indices as its index, so the id
//! is stored once and an update is one short lock, one hash lookup and a few index swaps, with no
//! allocation for a customer already tracked. Eviction is exact LRU within a shard; for small stores a
//! single shard makes it exact overall. A general concurrent map (dashmap) was the first choice but has
//! no notion of recency, so it cannot enforce the bound without a scan.
//!
//! The store is what usher learns, so it outlives configurations: the settings that judge and keep
//! a customer (half-life, journey length, thresholds) come with each call from the configuration in
//! force, and only the bound is held here (and may change). The number of shards is fixed when the
//! store is made. Tiers are interned ids (`crate::names`), not positions in a configuration.
//!
//! Time is passed in (wall-clock milliseconds), so decay and recency are testable without sleeping.

use super::journey::{Journey, Step};
use super::score::{Judgement, Score, ScoreModel};
use compact_str::CompactString;
use hashbrown::HashTable;
use parking_lot::Mutex;
use std::collections::BinaryHeap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

const NIL: u32 = u32::MAX;
const MAX_SHARDS: usize = 64;
/// Below this many customers per shard, fewer shards: exact LRU matters more than contention there.
const MIN_PER_SHARD: usize = 4096;

/// How the configuration in force judges and keeps customers.
#[derive(Debug, Clone, Copy)]
pub struct StoreSettings {
    pub journey_len: usize,
    pub model: ScoreModel,
    /// (rescue_below, rescue_for): a customer whose score falls below the first is marked rescued
    /// for the second.
    pub rescue: Option<(f64, std::time::Duration)>,
    /// A customer becomes degraded under the first and recovered at or over the second; the gap
    /// (hysteresis) keeps a score hovering at the threshold from flapping.
    pub degraded_below: f64,
    pub recover_above: f64,
    /// A customer with fewer requests than this is never degraded: one slow request from someone
    /// never seen before is noise, and anyone can send one under any id.
    pub min_requests: u32,
    pub struggle: super::StruggleRules,
}

/// A customer crossing into or out of the degraded state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    Degraded,
    Recovered,
}

/// What the request path needs to know about a customer before proxying.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Peek {
    pub score: f64,
    pub rescued: bool,
    pub requests: u32,
}

/// What one request contributes to its customer.
#[derive(Debug, Clone, Copy)]
pub struct Observation {
    /// Interned tier name.
    pub tier: u8,
    pub judgement: Judgement,
    pub failed: bool,
    pub step: Step,
    /// Struggle signals are read for this request (not for a shared anonymous id, a stream).
    pub struggle: bool,
}

/// The effect of recording one observation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Recorded {
    pub score_before: f64,
    pub score: f64,
    pub requests: u32,
    pub new_customer: bool,
    /// Tracking this customer pushed the least recently seen one out.
    pub evicted: bool,
    pub transition: Option<Transition>,
    /// The struggle signals this request showed (`super::struggle`).
    pub marks: super::Marks,
}

/// A copy of one customer's state, taken under the shard lock and read without it.
#[derive(Debug, Clone)]
pub struct CustomerSnapshot {
    pub id: String,
    /// Interned tier name.
    pub tier: u8,
    pub score: f64,
    pub requests: u32,
    pub errors: u32,
    pub frustrated: u32,
    pub first_seen_ms: u64,
    pub last_seen_ms: u64,
    /// Until when (Unix seconds) the customer gets rescue protection; 0 when never.
    pub rescued_until_s: u32,
    /// Oldest first.
    pub journey: Vec<Step>,
}

/// Everything the store holds about one customer, as written to and read from a snapshot.
#[derive(Debug, Clone, PartialEq)]
pub struct CustomerRecord {
    pub id: CompactString,
    pub tier: u8,
    pub score: Score,
    pub first_seen_ms: u64,
    pub requests: u32,
    pub errors: u32,
    pub frustrated: u32,
    pub rescued_until_s: u32,
    pub degraded: bool,
    /// Oldest first.
    pub journey: Vec<Step>,
}

/// The score distribution across all tracked customers at one moment.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Summary {
    pub tracked: u64,
    pub below: u64,
    /// Counts of customers with score <= 10, <= 20, ... <= 100 (cumulative, Prometheus style).
    pub buckets: [u64; 10],
    pub sum: f64,
}

/// 104 bytes: ids up to 24 bytes are stored inline; the journey is the only other allocation.
#[derive(Debug)]
struct Customer {
    id: CompactString,
    journey: Journey,
    /// Its timestamp is the last time the customer was seen.
    score: Score,
    first_seen_ms: u64,
    requests: u32,
    errors: u32,
    frustrated: u32,
    prev: u32,
    next: u32,
    /// Unix seconds; 0 when never rescued.
    rescued_until_s: u32,
    tier: u8,
    degraded: bool,
}

impl Customer {
    fn fresh(id: &str, tier: u8, now_ms: u64) -> Customer {
        Customer {
            id: CompactString::from(id),
            journey: Journey::default(),
            score: Score::default(),
            first_seen_ms: now_ms,
            requests: 0,
            errors: 0,
            frustrated: 0,
            prev: NIL,
            next: NIL,
            rescued_until_s: 0,
            tier,
            degraded: false,
        }
    }

    fn record(&self) -> CustomerRecord {
        CustomerRecord {
            id: self.id.clone(),
            tier: self.tier,
            score: self.score,
            first_seen_ms: self.first_seen_ms,
            requests: self.requests,
            errors: self.errors,
            frustrated: self.frustrated,
            rescued_until_s: self.rescued_until_s,
            degraded: self.degraded,
            journey: self.journey.iter().copied().collect(),
        }
    }

    /// Folds `r` (the same customer's state from elsewhere: a snapshot, another process) in.
    fn absorb(&mut self, r: CustomerRecord, journey_len: usize, model: &ScoreModel) {
        if self.requests == 0 {
            self.score = r.score;
            self.degraded = r.degraded;
            self.tier = r.tier;
        } else {
            self.score.merge(&r.score, model);
            self.degraded |= r.degraded;
        }
        self.first_seen_ms = self.first_seen_ms.min(r.first_seen_ms);
        self.requests = self.requests.saturating_add(r.requests);
        self.errors = self.errors.saturating_add(r.errors);
        self.frustrated = self.frustrated.saturating_add(r.frustrated);
        self.rescued_until_s = self.rescued_until_s.max(r.rescued_until_s);
        let mut steps: Vec<Step> = self.journey.iter().copied().chain(r.journey).collect();
        steps.sort_by_key(|s| s.at_ms());
        self.journey = Journey::from_steps(&steps, journey_len);
    }
}

#[derive(Debug)]
struct Shard {
    index: HashTable<u32>,
    slots: Vec<Customer>,
    /// Most recently seen.
    head: u32,
    /// Least recently seen: the next to go.
    tail: u32,
}

pub struct CustomerStore {
    shards: Box<[Mutex<Shard>]>,
    hasher: foldhash::fast::RandomState,
    track_max: AtomicUsize,
    len: AtomicUsize,
    evicted: AtomicU64,
}

impl CustomerStore {
    /// A store for up to `track_max` customers; the shards are sized for that bound.
    pub fn new(track_max: usize) -> Self {
        let track_max = track_max.max(1);
        let wanted = (track_max / MIN_PER_SHARD).clamp(1, MAX_SHARDS);
        let n = if wanted.is_power_of_two() {
            wanted
        } else {
            wanted.next_power_of_two() / 2
        };
        let shards = (0..n)
            .map(|_| {
                Mutex::new(Shard {
                    index: HashTable::new(),
                    slots: Vec::new(),
                    head: NIL,
                    tail: NIL,
                })
            })
            .collect();
        CustomerStore {
            shards,
            hasher: foldhash::fast::RandomState::default(),
            track_max: AtomicUsize::new(track_max),
            len: AtomicUsize::new(0),
            evicted: AtomicU64::new(0),
        }
    }

    pub fn track_max(&self) -> usize {
        self.track_max.load(Ordering::Relaxed)
    }

    /// A new bound. A lower one is reached as new customers push old ones out, or at once with
    /// [`Self::trim`].
    pub fn set_track_max(&self, n: usize) {
        self.track_max.store(n.max(1), Ordering::Relaxed);
    }

    fn shard_of(&self, id: &str) -> (u64, &Mutex<Shard>) {
        let hash = self.hasher.hash_one(id);
        // High bits pick the shard; hashbrown uses the low bits and the top 7 for its control bytes,
        // which stay well mixed within a shard.
        let i = ((hash >> 32) as usize) & (self.shards.len() - 1);
        (hash, &self.shards[i])
    }

    /// The slot of `id` in shard `s`, made (or taken from the least recently seen customer) if the
    /// customer is new: `(slot, new, evicted)`. The slot is unlinked from the LRU list.
    fn slot_for(
        &self,
        s: &mut Shard,
        hash: u64,
        id: &str,
        fresh: impl FnOnce() -> Customer,
    ) -> (u32, bool, bool) {
        let hasher = &self.hasher;
        if let Some(&i) = s.index.find(hash, |&i| s.slots[i as usize].id == id) {
            s.unlink(i);
            return (i, false, false);
        }
        let admitted = self.admit();
        if admitted || s.tail == NIL {
            if !admitted {
                // Full, but this shard has no one to evict: the documented overshoot.
                self.len.fetch_add(1, Ordering::Relaxed);
            }
            s.slots.push(fresh());
            let i = (s.slots.len() - 1) as u32;
            s.index.insert_unique(hash, i, |&j| {
                hasher.hash_one(s.slots[j as usize].id.as_str())
            });
            (i, true, false)
        } else {
            // Reuse the least recently seen customer's slot.
            let victim = s.tail;
            s.unlink(victim);
            s.forget(victim, hasher);
            s.slots[victim as usize] = fresh();
            s.index.insert_unique(hash, victim, |&j| {
                hasher.hash_one(s.slots[j as usize].id.as_str())
            });
            self.evicted.fetch_add(1, Ordering::Relaxed);
            (victim, true, true)
        }
    }

    /// Records one request of customer `id`.
    pub fn record(&self, id: &str, obs: &Observation, now_ms: u64, st: &StoreSettings) -> Recorded {
        let (hash, shard) = self.shard_of(id);
        let mut guard = shard.lock();
        let s = &mut *guard;
        let model = &st.model;
        let (slot, new_customer, evicted) =
            self.slot_for(s, hash, id, || Customer::fresh(id, obs.tier, now_ms));
        s.push_front(slot);

        let c = &mut s.slots[slot as usize];
        let score_before = c.score.value(now_ms, model);
        let mut step = obs.step;
        let marks = if obs.struggle {
            super::struggle::marks(&st.struggle, &c.journey, &step)
        } else {
            super::Marks::empty()
        };
        step.set_marks(marks);
        let judgement = if st.struggle.in_score && !marks.is_empty() {
            Judgement::Frustrated
        } else {
            obs.judgement
        };
        // The step keeps the request's own judgement; the score takes the struggle's.
        step.set_frustrated(obs.judgement == Judgement::Frustrated);
        c.score.observe(judgement, now_ms, model);
        c.tier = obs.tier;
        c.requests = c.requests.saturating_add(1);
        c.errors = c.errors.saturating_add(u32::from(obs.failed));
        c.frustrated = c
            .frustrated
            .saturating_add(u32::from(judgement == Judgement::Frustrated));
        let score = c.score.value(now_ms, model);
        step.set_score(score);
        c.journey.push(step, st.journey_len);
        if let Some((below, duration)) = st.rescue {
            if score < below {
                let until = now_ms.saturating_add(duration.as_millis() as u64) / 1000;
                c.rescued_until_s = until.min(u32::MAX as u64) as u32;
            }
        }
        let transition =
            if !c.degraded && score < st.degraded_below && c.requests >= st.min_requests {
                c.degraded = true;
                Some(Transition::Degraded)
            } else if c.degraded && score >= st.recover_above {
                c.degraded = false;
                Some(Transition::Recovered)
            } else {
                None
            };
        Recorded {
            transition,
            score_before,
            score,
            requests: c.requests,
            new_customer,
            evicted,
            marks,
        }
    }

    /// Takes a place in the store for a new customer, if there is one left.
    fn admit(&self) -> bool {
        let max = self.track_max();
        self.len
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < max).then_some(n + 1)
            })
            .is_ok()
    }

    pub fn get(&self, id: &str, now_ms: u64, model: &ScoreModel) -> Option<CustomerSnapshot> {
        let (hash, shard) = self.shard_of(id);
        let s = shard.lock();
        let i = *s.index.find(hash, |&i| s.slots[i as usize].id == id)?;
        Some(snapshot(&s.slots[i as usize], now_ms, model))
    }

    pub fn contains(&self, id: &str) -> bool {
        let (hash, shard) = self.shard_of(id);
        let s = shard.lock();
        s.index
            .find(hash, |&i| s.slots[i as usize].id == id)
            .is_some()
    }

    /// Forgets customer `id` altogether (score, counters, journey); false when not tracked.
    pub fn erase(&self, id: &str) -> bool {
        let (hash, shard) = self.shard_of(id);
        let mut s = shard.lock();
        let Some(&i) = s.index.find(hash, |&i| s.slots[i as usize].id == id) else {
            return false;
        };
        s.remove_slot(i, &self.hasher);
        self.len.fetch_sub(1, Ordering::Relaxed);
        true
    }

    /// Forgets every customer last seen before `before_ms` (the retention limit); how many. Each
    /// shard's least recently seen customers are at its tail, so this takes only them.
    pub fn forget_idle(&self, before_ms: u64) -> usize {
        let mut gone = 0;
        for shard in self.shards.iter() {
            let mut s = shard.lock();
            while s.tail != NIL && s.slots[s.tail as usize].score.last_ms() < before_ms {
                let victim = s.tail;
                s.remove_slot(victim, &self.hasher);
                gone += 1;
            }
        }
        self.len.fetch_sub(gone, Ordering::Relaxed);
        gone
    }

    /// The id of a tracked customer for whom `matches` holds, if any. Ids are copied out one
    /// shard at a time and tested without its lock, so requests wait only for the copy.
    pub fn find_id(&self, matches: impl Fn(&str) -> bool) -> Option<String> {
        let mut ids: Vec<CompactString> = Vec::new();
        for shard in self.shards.iter() {
            ids.clear();
            ids.extend(shard.lock().slots.iter().map(|c| c.id.clone()));
            if let Some(id) = ids.iter().find(|id| matches(id)) {
                return Some(id.to_string());
            }
        }
        None
    }

    /// The current score of `id` and whether it is being rescued; `None` when not tracked.
    pub fn peek(&self, id: &str, now_ms: u64, model: &ScoreModel) -> Option<Peek> {
        let (hash, shard) = self.shard_of(id);
        let s = shard.lock();
        let i = *s.index.find(hash, |&i| s.slots[i as usize].id == id)?;
        let c = &s.slots[i as usize];
        Some(Peek {
            score: c.score.value(now_ms, model),
            rescued: u64::from(c.rescued_until_s) * 1000 > now_ms,
            requests: c.requests,
        })
    }

    /// The `n` customers with the lowest scores now, among those with at least `min_requests`,
    /// lowest first. Scans every shard, one lock at a time.
    pub fn worst(
        &self,
        n: usize,
        min_requests: u32,
        now_ms: u64,
        model: &ScoreModel,
    ) -> Vec<CustomerSnapshot> {
        if n == 0 {
            return Vec::new();
        }
        // Max-heap on score keeps the n lowest seen so far.
        let mut heap: BinaryHeap<Ranked> = BinaryHeap::with_capacity(n + 1);
        for shard in self.shards.iter() {
            let s = shard.lock();
            for c in s.slots.iter().filter(|c| c.requests >= min_requests) {
                let score = c.score.value(now_ms, model);
                if heap.len() < n || heap.peek().is_some_and(|top| score < top.score) {
                    heap.push(Ranked {
                        score,
                        snapshot: snapshot(c, now_ms, model),
                    });
                    if heap.len() > n {
                        heap.pop();
                    }
                }
            }
        }
        let mut out: Vec<CustomerSnapshot> = heap.into_iter().map(|r| r.snapshot).collect();
        out.sort_by(|a, b| a.score.total_cmp(&b.score).then_with(|| a.id.cmp(&b.id)));
        out
    }

    /// Score distribution, and the number of customers with at least `min_requests` scoring below
    /// `threshold` (the degraded ones).
    pub fn summary(
        &self,
        threshold: f64,
        min_requests: u32,
        now_ms: u64,
        model: &ScoreModel,
    ) -> Summary {
        let mut sum = Summary::default();
        for shard in self.shards.iter() {
            let s = shard.lock();
            for c in &s.slots {
                let v = c.score.value(now_ms, model);
                sum.tracked += 1;
                sum.sum += v;
                if v < threshold && c.requests >= min_requests {
                    sum.below += 1;
                }
                let first = ((v / 10.0).ceil() as usize).clamp(1, 10) - 1;
                for b in &mut sum.buckets[first..] {
                    *b += 1;
                }
            }
        }
        sum
    }

    /// Evicts the least recently seen customers until the store is within its bound; returns how
    /// many went.
    pub fn trim(&self) -> usize {
        let max = self.track_max();
        // Each shard down to its share of the bound, least recently seen first, one lock at a time.
        let share = max.div_ceil(self.shards.len());
        let mut gone = 0;
        for shard in self.shards.iter() {
            let mut s = shard.lock();
            while s.slots.len() > share && self.len() > max && s.evict_lru(&self.hasher) {
                self.len.fetch_sub(1, Ordering::Relaxed);
                self.evicted.fetch_add(1, Ordering::Relaxed);
                gone += 1;
            }
        }
        // Shards are not filled evenly: take what is still over the bound round the shards.
        while self.len() > max {
            let before = gone;
            for shard in self.shards.iter() {
                if self.len() <= max {
                    break;
                }
                if shard.lock().evict_lru(&self.hasher) {
                    self.len.fetch_sub(1, Ordering::Relaxed);
                    self.evicted.fetch_add(1, Ordering::Relaxed);
                    gone += 1;
                }
            }
            if gone == before {
                break;
            }
        }
        gone
    }

    pub fn shards(&self) -> usize {
        self.shards.len()
    }

    /// Calls `f` with every customer of shard `i`, least recently seen first, under that shard's
    /// lock only: a snapshot is written one shard at a time, never as a second copy of the store.
    pub fn for_each_in_shard(&self, i: usize, mut f: impl FnMut(CustomerRecord)) {
        let Some(shard) = self.shards.get(i) else {
            return;
        };
        let s = shard.lock();
        let mut at = s.tail;
        while at != NIL {
            let c = &s.slots[at as usize];
            f(c.record());
            at = c.prev;
        }
    }

    /// Puts a customer back (from a snapshot) as the most recently seen, merged with what is known
    /// of them already. Within the bound as [`Self::record`] is. Returns whether one was evicted.
    pub fn restore(&self, r: CustomerRecord, journey_len: usize, model: &ScoreModel) -> bool {
        let (hash, shard) = self.shard_of(&r.id);
        let mut guard = shard.lock();
        let s = &mut *guard;
        let (slot, _, evicted) = self.slot_for(s, hash, &r.id, || {
            Customer::fresh(&r.id, r.tier, r.first_seen_ms)
        });
        s.push_front(slot);
        s.slots[slot as usize].absorb(r, journey_len, model);
        evicted
    }

    /// Puts each shard's customers in the order they were last seen. A snapshot is read in the
    /// order it was written, shard by shard of another process's hashing, not in the order its
    /// customers came; retention and eviction take the least recently seen from each shard's
    /// tail and stop at the first who is not, so after a restore they would stop at a recent
    /// customer with idle ones behind. Run once when a snapshot has been read.
    pub fn order_by_last_seen(&self) {
        for shard in self.shards.iter() {
            shard.lock().order_by_last_seen();
        }
    }

    pub fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The store's own accounting of its heap: slabs, indexes and journeys.
    pub fn heap_bytes(&self) -> usize {
        self.shards
            .iter()
            .map(|sh| {
                let s = sh.lock();
                s.slots.capacity() * std::mem::size_of::<Customer>()
                    + s.index.capacity() * (std::mem::size_of::<u32>() + 1)
                    + s.slots
                        .iter()
                        .map(|c| c.journey.heap_bytes())
                        .sum::<usize>()
            })
            .sum()
    }

    pub fn evicted(&self) -> u64 {
        self.evicted.load(Ordering::Relaxed)
    }
}

fn snapshot(c: &Customer, now_ms: u64, model: &ScoreModel) -> CustomerSnapshot {
    CustomerSnapshot {
        id: c.id.to_string(),
        tier: c.tier,
        score: c.score.value(now_ms, model),
        requests: c.requests,
        errors: c.errors,
        frustrated: c.frustrated,
        first_seen_ms: c.first_seen_ms,
        last_seen_ms: c.score.last_ms(),
        rescued_until_s: c.rescued_until_s,
        journey: c.journey.iter().copied().collect(),
    }
}

struct Ranked {
    score: f64,
    snapshot: CustomerSnapshot,
}

impl PartialEq for Ranked {
    fn eq(&self, o: &Self) -> bool {
        self.score.total_cmp(&o.score).is_eq()
    }
}
impl Eq for Ranked {}
impl PartialOrd for Ranked {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Ranked {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        self.score.total_cmp(&o.score)
    }
}

impl Shard {
    /// Removes slot `i` from the index (its id is about to be replaced or the slot removed).
    fn forget(&mut self, i: u32, hasher: &foldhash::fast::RandomState) {
        let old_hash = hasher.hash_one(self.slots[i as usize].id.as_str());
        if let Ok(entry) = self.index.find_entry(old_hash, |&j| j == i) {
            entry.remove();
        }
    }

    /// Removes the least recently seen customer; false when the shard is empty.
    fn evict_lru(&mut self, hasher: &foldhash::fast::RandomState) -> bool {
        let victim = self.tail;
        if victim == NIL {
            return false;
        }
        self.remove_slot(victim, hasher);
        true
    }

    /// Removes the customer in slot `victim`, moving the last slot into its place.
    fn remove_slot(&mut self, victim: u32, hasher: &foldhash::fast::RandomState) {
        self.unlink(victim);
        self.forget(victim, hasher);
        let last = (self.slots.len() - 1) as u32;
        if victim != last {
            // Move the last slot into the victim's: relink its neighbours and re-point its index.
            self.forget(last, hasher);
            let (prev, next) = (
                self.slots[last as usize].prev,
                self.slots[last as usize].next,
            );
            self.slots.swap(victim as usize, last as usize);
            match prev {
                NIL => self.head = victim,
                p => self.slots[p as usize].next = victim,
            }
            match next {
                NIL => self.tail = victim,
                n => self.slots[n as usize].prev = victim,
            }
            let hash = hasher.hash_one(self.slots[victim as usize].id.as_str());
            let slots = &self.slots;
            self.index.insert_unique(hash, victim, |&j| {
                hasher.hash_one(slots[j as usize].id.as_str())
            });
        }
        self.slots.pop();
    }

    fn unlink(&mut self, i: u32) {
        let (prev, next) = {
            let c = &self.slots[i as usize];
            (c.prev, c.next)
        };
        match prev {
            NIL => self.head = next,
            p => self.slots[p as usize].next = next,
        }
        match next {
            NIL => self.tail = prev,
            n => self.slots[n as usize].prev = prev,
        }
        let c = &mut self.slots[i as usize];
        c.prev = NIL;
        c.next = NIL;
    }

    /// Links every customer in the order they were last seen, the most recent at the head.
    fn order_by_last_seen(&mut self) {
        let mut order: Vec<u32> = (0..self.slots.len() as u32).collect();
        order.sort_unstable_by_key(|&i| self.slots[i as usize].score.last_ms());
        self.head = NIL;
        self.tail = NIL;
        for i in order {
            self.push_front(i);
        }
    }

    fn push_front(&mut self, i: u32) {
        let old = self.head;
        {
            let c = &mut self.slots[i as usize];
            c.prev = NIL;
            c.next = old;
        }
        if old != NIL {
            self.slots[old as usize].prev = i;
        }
        self.head = i;
        if self.tail == NIL {
            self.tail = i;
        }
    }
}

const _: () = assert!(std::mem::size_of::<Customer>() <= 104);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::measure::Outcome;
    use http::Method;
    use std::time::Duration;

    fn set() -> StoreSettings {
        StoreSettings {
            journey_len: 4,
            model: ScoreModel::new(Duration::from_secs(600)),
            rescue: Some((40.0, Duration::from_secs(60))),
            degraded_below: 70.0,
            recover_above: 80.0,
            min_requests: 1,
            struggle: Default::default(),
        }
    }

    fn store(track_max: usize) -> CustomerStore {
        CustomerStore::new(track_max)
    }

    #[test]
    fn customers_idle_past_the_retention_are_forgotten_and_the_rest_stay() {
        let st = store(100);
        for (who, at) in [("old", 1_000), ("older", 500), ("new", 9_000)] {
            st.record(who, &obs(Judgement::Satisfied, "/", at), at, &set());
        }
        // "old" came back later: seen last at 9_500, it stays.
        st.record("old", &obs(Judgement::Satisfied, "/", 9_500), 9_500, &set());
        assert_eq!(st.forget_idle(5_000), 1);
        assert_eq!(st.len(), 2);
        assert!(st.get("older", 10_000, &set().model).is_none());
        assert!(st.get("old", 10_000, &set().model).is_some());
        assert_eq!(st.forget_idle(5_000), 0);
        assert_eq!(
            st.find_id(|id| id.starts_with("ne")).as_deref(),
            Some("new")
        );
        assert_eq!(st.find_id(|id| id == "older"), None);
    }

    #[test]
    fn nobody_is_degraded_on_fewer_than_min_requests() {
        let st = store(10);
        let strict = StoreSettings {
            min_requests: 3,
            ..set()
        };
        let t = |at| {
            st.record("new", &obs(Judgement::Frustrated, "/", at), at, &strict)
                .transition
        };
        assert_eq!(
            t(1),
            None,
            "one bad request from someone never seen is noise"
        );
        assert_eq!(t(2), None);
        assert_eq!(t(3), Some(Transition::Degraded));
        assert_eq!(st.summary(70.0, 3, 3, &set().model).below, 1);
        st.record("once", &obs(Judgement::Frustrated, "/", 4), 4, &strict);
        assert_eq!(
            st.summary(70.0, 3, 4, &set().model).below,
            1,
            "not counted as degraded either"
        );
    }

    #[test]
    fn an_erased_customer_is_gone_and_the_others_stay_findable() {
        let st = store(100);
        // One shard is enough to exercise the slot moves: several ids land in each.
        let ids: Vec<String> = (0..40).map(|i| format!("c{i}")).collect();
        for (i, id) in ids.iter().enumerate() {
            st.record(
                id,
                &obs(Judgement::Satisfied, "/", i as u64),
                i as u64,
                &set(),
            );
        }
        assert!(st.erase("c7"));
        assert!(!st.erase("c7"), "already gone");
        assert!(!st.erase("never-seen"));
        assert_eq!(st.len(), 39);
        assert!(st.get("c7", 50, &set().model).is_none());
        for id in ids.iter().filter(|id| *id != "c7") {
            assert!(st.get(id, 50, &set().model).is_some(), "{id} lost");
        }
        // Coming back starts afresh.
        st.record("c7", &obs(Judgement::Satisfied, "/", 60), 60, &set());
        assert_eq!(st.get("c7", 60, &set().model).unwrap().requests, 1);
        // The recency list survived the moves: trimming to nothing walks all of it.
        st.set_track_max(1);
        st.trim();
        assert_eq!(st.len(), 1);
    }

    #[test]
    fn degraded_and_recovered_with_hysteresis() {
        let st = store(10);
        let t = |j, at: u64| st.record("h", &obs(j, "/", at), at, &set()).transition;
        assert_eq!(t(Judgement::Satisfied, 0), None);
        // (1 + 2) / (2 + 2) = 75: not under 70.
        assert_eq!(t(Judgement::Frustrated, 0), None);
        // 3 / 5 = 60.
        assert_eq!(t(Judgement::Frustrated, 0), Some(Transition::Degraded));
        assert_eq!(t(Judgement::Frustrated, 0), None, "already degraded");
        // One good and three failed leave 50; then good requests: 57, 62.5, 67, 70, 73, 75, 77,
        // 79, 80 (recover_above), 82 ...: only the crossing of 80 recovers.
        let mut seen = Vec::new();
        for _ in 0..12 {
            seen.push(t(Judgement::Satisfied, 0));
        }
        assert_eq!(seen.iter().filter(|x| x.is_some()).count(), 1, "{seen:?}");
        assert_eq!(seen.iter().flatten().next(), Some(&Transition::Recovered));
        let s = st.get("h", 0, &set().model).unwrap().score;
        assert!(s >= 80.0);
        // Hovering between 70 and 80 does not flap.
        assert_eq!(t(Judgement::Frustrated, 0), None);
    }

    #[test]
    fn snapshots_restore_and_merge_customers_and_trim_to_a_lower_bound() {
        let st = store(10);
        for (i, id) in ["a", "b", "c"].iter().enumerate() {
            st.record(
                id,
                &obs(Judgement::Frustrated, "/x", i as u64),
                i as u64,
                &set(),
            );
        }
        let mut out = Vec::new();
        st.for_each_in_shard(0, |r| out.push(r));
        assert_eq!(
            out.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
            ["a", "b", "c"],
            "least recently seen first"
        );
        let other = store(10);
        other.record("b", &obs(Judgement::Satisfied, "/y", 10), 10, &set());
        for r in out.clone() {
            other.restore(r, 4, &set().model);
        }
        assert_eq!(other.len(), 3);
        let b = other.get("b", 10, &set().model).unwrap();
        assert_eq!((b.requests, b.frustrated), (2, 1));
        let paths: Vec<&str> = b.journey.iter().map(|s| s.path().0).collect();
        assert_eq!(paths, ["/x", "/y"], "journeys merge in time order");
        assert_eq!(b.first_seen_ms, 1);
        let c = other.get("c", 10, &set().model).unwrap();
        let orig = st.get("c", 10, &set().model).unwrap();
        assert_eq!((c.score, c.requests, c.journey.len()), (orig.score, 1, 1));
        // Most recently restored is most recently seen: lowering the bound drops "a" then "b".
        other.set_track_max(1);
        assert_eq!(other.trim(), 2);
        assert_eq!(other.len(), 1);
        assert!(other.get("c", 10, &set().model).is_some());
        assert!(other.get("a", 10, &set().model).is_none());
        other.record("d", &obs(Judgement::Satisfied, "/", 11), 11, &set());
        assert_eq!(other.len(), 1, "the lower bound holds for new customers");
    }

    #[test]
    fn trimming_keeps_every_remaining_customer_findable() {
        let st = store(100_000);
        for i in 0..20_000u64 {
            st.record(
                &format!("c{i}"),
                &obs(Judgement::Satisfied, "/", i),
                i,
                &set(),
            );
        }
        st.set_track_max(5_000);
        assert_eq!(st.trim(), 15_000);
        let found = (0..20_000u64)
            .filter(|i| st.get(&format!("c{i}"), 0, &set().model).is_some())
            .count();
        assert_eq!(found, 5_000);
        for i in 19_000..20_000u64 {
            assert!(
                st.get(&format!("c{i}"), 0, &set().model).is_some(),
                "recent ones stay"
            );
        }
    }

    fn obs(j: Judgement, path: &str, at: u64) -> Observation {
        Observation {
            tier: 1,
            judgement: j,
            failed: j == Judgement::Frustrated,
            step: Step::new(
                at,
                Some(0),
                &Method::GET,
                path,
                200,
                10,
                Some(0),
                Outcome::Ok,
                b"",
            ),
            struggle: true,
        }
    }

    #[test]
    fn records_counters_score_and_journey() {
        let st = store(10);
        let r = st.record("alice", &obs(Judgement::Satisfied, "/a", 1), 1, &set());
        assert!(r.new_customer && !r.evicted && r.score == 100.0);
        st.record("alice", &obs(Judgement::Frustrated, "/b", 2), 2, &set());
        let r = st.record("alice", &obs(Judgement::Tolerating, "/c", 3), 3, &set());
        assert!(!r.new_customer);
        assert_eq!(r.requests, 3);
        let c = st.get("alice", 3, &set().model).unwrap();
        assert_eq!((c.requests, c.errors, c.frustrated), (3, 1, 1));
        assert_eq!((c.first_seen_ms, c.last_seen_ms), (1, 3));
        // (1 + 0 + 0.5 + prior 2) / (3 + 2)
        assert!((c.score - 70.0).abs() < 0.01, "{}", c.score);
        let paths: Vec<&str> = c.journey.iter().map(|s| s.path().0).collect();
        assert_eq!(paths, ["/a", "/b", "/c"]);
        assert!(st.get("bob", 3, &set().model).is_none());
    }

    #[test]
    fn a_customer_who_falls_below_rescue_is_rescued_for_a_while() {
        let st = store(10);
        st.record("r", &obs(Judgement::Satisfied, "/", 1_000), 1_000, &set());
        assert_eq!(
            st.peek("r", 1_000, &set().model).map(|p| p.rescued),
            Some(false)
        );
        for _ in 0..4 {
            st.record("r", &obs(Judgement::Frustrated, "/", 2_000), 2_000, &set());
        }
        // (1 + 2) / (5 + 2) = 43: not yet under 40.
        assert_eq!(
            st.peek("r", 2_000, &set().model).map(|p| p.rescued),
            Some(false)
        );
        st.record("r", &obs(Judgement::Frustrated, "/", 2_000), 2_000, &set());
        let p = st.peek("r", 2_000, &set().model).unwrap();
        assert!(p.rescued && p.score < 40.0);
        assert!(st.peek("r", 61_000, &set().model).unwrap().rescued);
        assert!(
            !st.peek("r", 62_000, &set().model).unwrap().rescued,
            "rescue lasts rescue_for"
        );
        assert!(st.peek("nobody", 0, &set().model).is_none());
    }

    #[test]
    fn evicts_least_recently_seen_at_the_bound() {
        let st = store(3);
        for (t, id) in ["a", "b", "c"].iter().enumerate() {
            st.record(
                id,
                &obs(Judgement::Satisfied, "/", t as u64),
                t as u64,
                &set(),
            );
        }
        // Touch "a" so "b" becomes the oldest.
        st.record("a", &obs(Judgement::Satisfied, "/", 10), 10, &set());
        let r = st.record("d", &obs(Judgement::Satisfied, "/", 11), 11, &set());
        assert!(r.evicted);
        assert_eq!(st.len(), 3);
        assert_eq!(st.evicted(), 1);
        assert!(st.get("b", 11, &set().model).is_none());
        for id in ["a", "c", "d"] {
            assert!(st.get(id, 11, &set().model).is_some(), "{id}");
        }
        st.record("e", &obs(Judgement::Satisfied, "/", 12), 12, &set());
        assert!(st.get("c", 12, &set().model).is_none());
        assert!(st.get("e", 12, &set().model).unwrap().requests == 1);
    }

    #[test]
    fn bound_holds_across_shards_under_churn() {
        let st = store(100_000);
        assert!(st.shards.len() > 1);
        for i in 0..300_000u64 {
            st.record(
                &format!("c{i}"),
                &obs(Judgement::Satisfied, "/", i),
                i,
                &set(),
            );
        }
        assert_eq!(st.len(), 100_000);
        assert_eq!(st.evicted(), 200_000);
        // The most recent are all still there.
        for i in 299_000..300_000u64 {
            assert!(st.get(&format!("c{i}"), 300_000, &set().model).is_some());
        }
    }

    #[test]
    fn worst_lists_lowest_scores_with_enough_requests() {
        let st = store(100);
        for i in 0..20 {
            let id = format!("c{i}");
            for k in 0..5 {
                let j = if k < i % 5 {
                    Judgement::Frustrated
                } else {
                    Judgement::Satisfied
                };
                st.record(&id, &obs(j, "/", 1), 1, &set());
            }
        }
        // Two requests only: left out however bad.
        st.record("newbie", &obs(Judgement::Frustrated, "/", 1), 1, &set());
        st.record("newbie", &obs(Judgement::Frustrated, "/", 1), 1, &set());
        let w = st.worst(4, 3, 1, &set().model);
        assert_eq!(w.len(), 4);
        assert!(w.windows(2).all(|p| p[0].score <= p[1].score));
        assert!(w.iter().all(|c| c.frustrated == 4), "{w:?}");
        assert!(w.iter().all(|c| c.id != "newbie"));
        assert_eq!(st.worst(0, 1, 1, &set().model).len(), 0);
    }

    #[test]
    fn summary_counts_buckets_and_threshold() {
        let st = store(10);
        st.record("ok", &obs(Judgement::Satisfied, "/", 1), 1, &set());
        for _ in 0..8 {
            st.record("bad", &obs(Judgement::Frustrated, "/", 1), 1, &set());
        }
        let s = st.summary(70.0, 1, 1, &set().model);
        assert_eq!((s.tracked, s.below), (2, 1));
        // "bad" scores 20: in the <= 20 bucket and every one after; "ok" only in <= 100.
        assert_eq!(s.buckets[0], 0);
        assert_eq!(s.buckets[1], 1);
        assert_eq!(s.buckets[9], 2);
        assert!((s.sum - 120.0).abs() < 0.01);
    }
}
