//! Funnels: named, ordered steps of a customer journey (cart, checkout, pay, done) and who abandoned
//! one.
//!
//! A customer enters a funnel on its first step; reaching a later step records the furthest step;
//! reaching the last step completes it. Whoever has entered and not completed within
//! `abandon_after` has abandoned it, and the sweep reports them with the furthest step and whether
//! they had failed or frustrated requests inside the funnel (abandonment after trouble is the case
//! that matters most). State is bounded by `max_tracked`: beyond it, new entries are not tracked and
//! are counted. Pure: time is passed in.
//!
//! What became of each journey (completed, or abandoned at its furthest step) is kept in a bounded
//! history, oldest out first, so that [`Funnels::report`] can say per step who reached it and who
//! dropped there in a window, split by trouble and by tier, with the customers behind each number:
//! the funnel report of an analytics tool, but with the latency and errors each customer met.

use crate::config::FunnelStep;
use compact_str::CompactString;
use http::Method;
use parking_lot::Mutex;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

/// A funnel of the configuration in force, with its interned name: progress is kept by that id, so
/// it carries over a reload that keeps the funnel's name.
#[derive(Debug, Clone)]
pub struct FunnelDef {
    pub id: u16,
    pub name: String,
    pub steps: Vec<FunnelStep>,
    pub abandon_after: Duration,
}

/// How far one customer got in one funnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    pub furthest: u8,
    /// Interned tier name.
    pub tier: u8,
    pub entered_ms: u64,
    pub last_ms: u64,
    pub errors: u16,
    pub frustrated: u16,
    /// The customer's id was verified when they entered.
    pub verified: bool,
}

/// A customer who entered a funnel and did not finish it in time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Abandoned {
    /// Position of the funnel in the definitions the sweep was given.
    pub funnel: usize,
    pub customer: CompactString,
    pub tier: u8,
    /// Index of the furthest step reached.
    pub furthest: usize,
    pub entered_ms: u64,
    /// When the customer was last seen inside the funnel.
    pub last_ms: u64,
    pub errors: u16,
    pub frustrated: u16,
    pub verified: bool,
}

/// How a journey through a funnel ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    Completed,
    Abandoned,
}

/// What became of one journey through a funnel, kept in the history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Interned funnel name (as [`FunnelDef::id`]).
    pub funnel: u16,
    pub customer: CompactString,
    /// Interned tier name.
    pub tier: u8,
    pub ending: Ending,
    /// Index of the furthest step reached: the last step when completed.
    pub furthest: u8,
    pub entered_ms: u64,
    /// When the customer was last seen inside the funnel (completion time when completed).
    pub last_ms: u64,
    pub errors: u16,
    pub frustrated: u16,
}

impl Outcome {
    /// Errors or frustrated requests inside the funnel.
    pub fn after_trouble(&self) -> bool {
        self.errors > 0 || self.frustrated > 0
    }
}

/// Most customer ids listed behind one number of a [`FunnelReport`].
pub const REPORT_IDS_MAX: usize = 100;

/// One number of a report and the customers behind it (the most recently seen first, at most
/// [`REPORT_IDS_MAX`]). Each customer counts once, however many journeys they made.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cell {
    pub count: usize,
    pub customers: Vec<CompactString>,
}

/// A number, split by trouble and by tier.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Split {
    pub all: Cell,
    /// With errors or frustrated requests inside the funnel.
    pub after_trouble: Cell,
    pub without_trouble: Cell,
    /// By interned tier name.
    pub by_tier: BTreeMap<u8, Cell>,
}

/// One step of a [`FunnelReport`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StepReport {
    /// Customers whose furthest step is this one or later: finished, abandoned or still in it.
    pub reached: Split,
    /// Customers who abandoned the funnel with this as their furthest step.
    pub dropped: Split,
}

/// One funnel over a window: see [`Funnels::report`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FunnelReport {
    /// Position of the funnel in the definitions the report was given.
    pub funnel: usize,
    pub completed: usize,
    pub abandoned: usize,
    pub in_progress: usize,
    pub steps: Vec<StepReport>,
}

/// Builds a [`Split`]: distinct customers per cell, most recent first.
#[derive(Default)]
struct SplitBuilder {
    all: CellBuilder,
    after_trouble: CellBuilder,
    without_trouble: CellBuilder,
    by_tier: BTreeMap<u8, CellBuilder>,
}

/// A customer of one report: a number for counting them once per cell, the id for listing them.
#[derive(Clone, Copy)]
struct Who<'a> {
    n: u32,
    id: &'a CompactString,
}

#[derive(Default)]
struct CellBuilder {
    /// By number, not by id: a report counts hundreds of thousands of journeys, and hashing a
    /// number is what keeps it from costing seconds.
    seen: HashSet<u32>,
    customers: Vec<CompactString>,
}

impl CellBuilder {
    fn add(&mut self, who: Who<'_>) {
        if self.seen.insert(who.n) && self.customers.len() < REPORT_IDS_MAX {
            self.customers.push(who.id.clone());
        }
    }

    fn build(self) -> Cell {
        Cell {
            count: self.seen.len(),
            customers: self.customers,
        }
    }
}

impl SplitBuilder {
    fn add(&mut self, who: Who<'_>, tier: u8, trouble: bool) {
        self.all.add(who);
        if trouble {
            self.after_trouble.add(who);
        } else {
            self.without_trouble.add(who);
        }
        self.by_tier.entry(tier).or_default().add(who);
    }

    fn build(self) -> Split {
        Split {
            all: self.all.build(),
            after_trouble: self.after_trouble.build(),
            without_trouble: self.without_trouble.build(),
            by_tier: self
                .by_tier
                .into_iter()
                .map(|(t, c)| (t, c.build()))
                .collect(),
        }
    }
}

/// Who is in which funnel now, and what became of recent journeys: what usher learns, kept across
/// configurations. The definitions come with each call, from the configuration in force.
pub struct Funnels {
    progress: Mutex<HashMap<(u16, CompactString), Progress>>,
    untracked: AtomicU64,
    /// Oldest first, at most `history_max`.
    history: Mutex<VecDeque<Outcome>>,
    history_max: AtomicUsize,
}

impl Default for Funnels {
    fn default() -> Self {
        Funnels {
            progress: Mutex::default(),
            untracked: AtomicU64::new(0),
            history: Mutex::default(),
            history_max: AtomicUsize::new(crate::defaults::FUNNEL_HISTORY_MAX as usize),
        }
    }
}

impl Funnels {
    pub fn new() -> Self {
        Self::default()
    }

    /// Outcomes kept in the history at most (`events.funnel_history_max`); the oldest go first.
    pub fn set_history_max(&self, n: usize) {
        self.history_max.store(n, Ordering::Relaxed);
        let mut h = self.history.lock();
        while h.len() > n {
            h.pop_front();
        }
    }

    /// Forgets the journeys that ended before `before_ms` (the retention limit); how many. The
    /// history is oldest first, so only its front is looked at.
    pub fn forget_ended_before(&self, before_ms: u64) -> usize {
        let mut h = self.history.lock();
        let keep = h
            .iter()
            .position(|o| o.last_ms >= before_ms)
            .unwrap_or(h.len());
        h.drain(..keep);
        keep
    }

    /// Outcomes in the history now.
    pub fn history_len(&self) -> usize {
        self.history.lock().len()
    }

    fn remember(&self, outcomes: impl IntoIterator<Item = Outcome>) {
        let max = self.history_max.load(Ordering::Relaxed);
        if max == 0 {
            return;
        }
        let mut h = self.history.lock();
        for o in outcomes {
            while h.len() >= max {
                h.pop_front();
            }
            h.push_back(o);
        }
    }

    /// Entries refused because `max_tracked` was reached.
    pub fn untracked(&self) -> u64 {
        self.untracked.load(Ordering::Relaxed)
    }

    pub fn tracked(&self) -> usize {
        self.progress.lock().len()
    }

    /// Records one request. Takes the lock only when the request is a step of some funnel.
    #[allow(clippy::too_many_arguments)]
    pub fn observe(
        &self,
        defs: &[FunnelDef],
        max_tracked: usize,
        customer: &str,
        tier: u8,
        verified: bool,
        method: &Method,
        path: &str,
        failed: bool,
        frustrated: bool,
        now_ms: u64,
    ) {
        for f in defs {
            let Some(step) = f.steps.iter().position(|s| s.matches(method, path)) else {
                continue;
            };
            let last = f.steps.len() - 1;
            let key = (f.id, CompactString::from(customer));
            let mut map = self.progress.lock();
            match map.get_mut(&key) {
                Some(p) => {
                    if step == last {
                        let p = *p;
                        map.remove(&key);
                        drop(map);
                        self.remember([Outcome {
                            funnel: f.id,
                            customer: key.1,
                            tier: p.tier,
                            ending: Ending::Completed,
                            furthest: last as u8,
                            entered_ms: p.entered_ms,
                            last_ms: p.last_ms.max(now_ms),
                            errors: p.errors.saturating_add(u16::from(failed)),
                            frustrated: p.frustrated.saturating_add(u16::from(frustrated)),
                        }]);
                        continue;
                    }
                    p.furthest = p.furthest.max(step as u8);
                    p.last_ms = p.last_ms.max(now_ms);
                    p.errors = p.errors.saturating_add(u16::from(failed));
                    p.frustrated = p.frustrated.saturating_add(u16::from(frustrated));
                }
                None if step == 0 && last > 0 => {
                    if map.len() >= max_tracked {
                        self.untracked.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    map.insert(
                        key,
                        Progress {
                            furthest: 0,
                            tier,
                            entered_ms: now_ms,
                            last_ms: now_ms,
                            errors: u16::from(failed),
                            frustrated: u16::from(frustrated),
                            verified,
                        },
                    );
                }
                // A later step without having entered: not in the funnel.
                None => {}
            }
        }
    }

    /// The funnels of `defs` that `customer` is in now: (position in `defs`, furthest step).
    pub fn progress_of(&self, defs: &[FunnelDef], customer: &str) -> Vec<(usize, usize)> {
        if defs.is_empty() {
            return Vec::new();
        }
        let map = self.progress.lock();
        let who = CompactString::from(customer);
        defs.iter()
            .enumerate()
            .filter_map(|(i, f)| {
                let p = map.get(&(f.id, who.clone()))?;
                Some((
                    i,
                    (p.furthest as usize).min(f.steps.len().saturating_sub(2)),
                ))
            })
            .collect()
    }

    /// Removes and returns everyone who has been in a funnel of `defs` longer than its
    /// `abandon_after`. Progress in a funnel that is no longer configured is dropped: nobody asked
    /// to hear about it any more.
    pub fn sweep(&self, defs: &[FunnelDef], now_ms: u64) -> Vec<Abandoned> {
        let mut out = Vec::new();
        self.progress.lock().retain(|(id, customer), p| {
            let Some((fi, f)) = defs.iter().enumerate().find(|(_, f)| f.id == *id) else {
                return false;
            };
            if now_ms.saturating_sub(p.entered_ms) < crate::time::millis(f.abandon_after) {
                return true;
            }
            out.push(Abandoned {
                funnel: fi,
                customer: customer.clone(),
                tier: p.tier,
                // A reload may have shortened the funnel: the furthest step is one of its own.
                furthest: (p.furthest as usize).min(f.steps.len().saturating_sub(2)),
                entered_ms: p.entered_ms,
                last_ms: p.last_ms,
                errors: p.errors,
                frustrated: p.frustrated,
                verified: p.verified,
            });
            false
        });
        out.sort_by(|a, b| {
            a.entered_ms
                .cmp(&b.entered_ms)
                .then_with(|| a.customer.cmp(&b.customer))
        });
        self.remember(out.iter().filter_map(|a| {
            Some(Outcome {
                funnel: defs.get(a.funnel)?.id,
                customer: a.customer.clone(),
                tier: a.tier,
                ending: Ending::Abandoned,
                furthest: a.furthest as u8,
                entered_ms: a.entered_ms,
                last_ms: a.last_ms,
                errors: a.errors,
                frustrated: a.frustrated,
            })
        }));
        out
    }

    /// Where `customer` is in each funnel of `defs` now: (position in `defs`, progress, with its
    /// furthest step clamped to the funnel as it is now).
    pub fn progress_detail(&self, defs: &[FunnelDef], customer: &str) -> Vec<(usize, Progress)> {
        if defs.is_empty() {
            return Vec::new();
        }
        let map = self.progress.lock();
        let who = CompactString::from(customer);
        defs.iter()
            .enumerate()
            .filter_map(|(i, f)| {
                let mut p = *map.get(&(f.id, who.clone()))?;
                p.furthest = p.furthest.min(f.steps.len().saturating_sub(2) as u8);
                Some((i, p))
            })
            .collect()
    }

    /// What became of `customer`'s journeys still in the history, newest first, at most `limit`.
    pub fn history_of(&self, customer: &str, limit: usize) -> Vec<Outcome> {
        self.history
            .lock()
            .iter()
            .rev()
            .filter(|o| o.customer == customer)
            .take(limit)
            .cloned()
            .collect()
    }

    /// Per funnel of `defs` and per step: the customers who reached it and the customers who
    /// dropped there, among journeys last seen in the funnel from `from_ms` to `to_ms` (both
    /// included): those that ended (from the history) and those still in progress. Each number is
    /// split by trouble and by tier, with the customers behind it. A journey in the history made
    /// under a longer funnel counts at the last step that funnel still has before its end.
    pub fn report(&self, defs: &[FunnelDef], from_ms: u64, to_ms: u64) -> Vec<FunnelReport> {
        struct Acc {
            completed: usize,
            abandoned: usize,
            in_progress: usize,
            reached: Vec<SplitBuilder>,
            dropped: Vec<SplitBuilder>,
        }
        let mut acc: Vec<Acc> = defs
            .iter()
            .map(|f| Acc {
                completed: 0,
                abandoned: 0,
                in_progress: 0,
                reached: f.steps.iter().map(|_| SplitBuilder::default()).collect(),
                dropped: f.steps.iter().map(|_| SplitBuilder::default()).collect(),
            })
            .collect();
        let position: HashMap<u16, usize> =
            defs.iter().enumerate().map(|(i, f)| (f.id, i)).collect();
        let within = |t: u64| (from_ms..=to_ms).contains(&t);
        /// One journey in the window: ended (from the history) or in progress (`ending: None`).
        struct Seen {
            last_ms: u64,
            funnel: usize,
            customer: CompactString,
            tier: u8,
            furthest: usize,
            trouble: bool,
            ending: Option<Ending>,
        }
        let mut seen: Vec<Seen> = Vec::new();
        for o in self.history.lock().iter() {
            if let (Some(&funnel), true) = (position.get(&o.funnel), within(o.last_ms)) {
                seen.push(Seen {
                    last_ms: o.last_ms,
                    funnel,
                    customer: o.customer.clone(),
                    tier: o.tier,
                    furthest: o.furthest as usize,
                    trouble: o.after_trouble(),
                    ending: Some(o.ending),
                });
            }
        }
        for ((id, who), p) in self.progress.lock().iter() {
            if let (Some(&funnel), true) = (position.get(id), within(p.last_ms)) {
                seen.push(Seen {
                    last_ms: p.last_ms,
                    funnel,
                    customer: who.clone(),
                    tier: p.tier,
                    furthest: p.furthest as usize,
                    trouble: p.errors > 0 || p.frustrated > 0,
                    ending: None,
                });
            }
        }
        // Most recent first, so the customers listed behind a number are the latest ones.
        seen.sort_by(|a, b| {
            b.last_ms
                .cmp(&a.last_ms)
                .then_with(|| a.customer.cmp(&b.customer))
        });
        let mut numbers: HashMap<&str, u32> = HashMap::with_capacity(seen.len());
        for j in &seen {
            let next = numbers.len() as u32;
            let n = *numbers.entry(j.customer.as_str()).or_insert(next);
            let who = Who { n, id: &j.customer };
            let (fi, tier, trouble, ending) = (&j.funnel, &j.tier, &j.trouble, &j.ending);
            let furthest = &j.furthest;
            let (a, steps) = (&mut acc[*fi], defs[*fi].steps.len());
            let last = steps.saturating_sub(1);
            let furthest = match ending {
                Some(Ending::Completed) => last,
                _ => (*furthest).min(steps.saturating_sub(2)),
            };
            match ending {
                Some(Ending::Completed) => a.completed += 1,
                Some(Ending::Abandoned) => a.abandoned += 1,
                None => a.in_progress += 1,
            }
            for r in a.reached.iter_mut().take(furthest + 1) {
                r.add(who, *tier, *trouble);
            }
            if *ending == Some(Ending::Abandoned) {
                if let Some(d) = a.dropped.get_mut(furthest) {
                    d.add(who, *tier, *trouble);
                }
            }
        }
        acc.into_iter()
            .enumerate()
            .map(|(i, a)| FunnelReport {
                funnel: i,
                completed: a.completed,
                abandoned: a.abandoned,
                in_progress: a.in_progress,
                steps: a
                    .reached
                    .into_iter()
                    .zip(a.dropped)
                    .map(|(r, d)| StepReport {
                        reached: r.build(),
                        dropped: d.build(),
                    })
                    .collect(),
            })
            .collect()
    }

    /// Every customer in a funnel: (interned funnel name, customer, progress), for a snapshot.
    pub fn entries(&self) -> Vec<(u16, CompactString, Progress)> {
        self.progress
            .lock()
            .iter()
            .map(|((f, c), p)| (*f, c.clone(), *p))
            .collect()
    }

    /// Puts progress back (from a snapshot): the earlier entry and the further step win.
    pub fn restore(&self, funnel: u16, customer: CompactString, p: Progress, max_tracked: usize) {
        let mut map = self.progress.lock();
        let len = map.len();
        match map.get_mut(&(funnel, customer.clone())) {
            Some(q) => {
                q.furthest = q.furthest.max(p.furthest);
                q.entered_ms = q.entered_ms.min(p.entered_ms);
                q.last_ms = q.last_ms.max(p.last_ms);
                q.errors = q.errors.saturating_add(p.errors);
                q.frustrated = q.frustrated.saturating_add(p.frustrated);
            }
            None if len < max_tracked => {
                map.insert((funnel, customer), p);
            }
            None => {
                self.untracked.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Forgets `customer` in every funnel: progress and history.
    /// Forgets `customer` in every funnel and in the history: (funnels they were in, outcomes of
    /// theirs the history held).
    pub fn forget(&self, customer: &str) -> (usize, usize) {
        self.forget_where(|c| c == customer)
    }

    /// As [`Self::forget`], for every customer `is` holds for (someone known only by a pseudonym).
    pub fn forget_where(&self, is: impl Fn(&str) -> bool) -> (usize, usize) {
        let mut progress = self.progress.lock();
        let before = progress.len();
        progress.retain(|(_, c), _| !is(c));
        let entries = before - progress.len();
        drop(progress);
        let mut h = self.history.lock();
        let before = h.len();
        h.retain(|o| !is(&o.customer));
        (entries, before - h.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use std::path::Path;

    struct F {
        defs: Vec<FunnelDef>,
        max: usize,
        state: Funnels,
    }

    impl F {
        fn observe(&self, who: &str, m: &Method, path: &str, failed: bool, at: u64) {
            self.state.observe(
                &self.defs, self.max, who, 1, true, m, path, failed, false, at,
            );
        }
        fn sweep(&self, at: u64) -> Vec<Abandoned> {
            self.state.sweep(&self.defs, at)
        }
        fn tracked(&self) -> usize {
            self.state.tracked()
        }
    }

    fn funnels(max: usize) -> F {
        let cfg = Config::parse(
            r#"
[[pools]]
name = "p"
upstreams = ["127.0.0.1:1"]
[[routes]]
name = "r"
pool = "p"
[[funnels]]
name = "checkout"
abandon_after = "30m"
steps = [
  { name = "cart", method = "POST", path = "/cart" },
  { name = "checkout", path = "/checkout" },
  { name = "pay", method = "POST", path = "/checkout/pay" },
  { name = "done", path = "/checkout/done/*" },
]
"#,
            Path::new("."),
        )
        .unwrap();
        let defs = cfg
            .funnels
            .into_iter()
            .enumerate()
            .map(|(i, f)| FunnelDef {
                id: i as u16 + 7,
                name: f.name,
                steps: f.steps,
                abandon_after: f.abandon_after,
            })
            .collect();
        F {
            defs,
            max,
            state: Funnels::new(),
        }
    }

    const MIN: u64 = 60_000;

    fn obs(f: &F, who: &str, m: Method, path: &str, failed: bool, at: u64) {
        f.observe(who, &m, path, failed, at);
    }

    #[test]
    fn completing_the_funnel_is_not_abandoning_it() {
        let f = funnels(100);
        obs(&f, "a", Method::POST, "/cart", false, 0);
        obs(&f, "a", Method::GET, "/checkout", false, MIN);
        obs(&f, "a", Method::POST, "/checkout/pay", false, 2 * MIN);
        obs(&f, "a", Method::GET, "/checkout/done/42", false, 3 * MIN);
        assert_eq!(f.tracked(), 0);
        assert!(f.sweep(100 * MIN).is_empty());
    }

    #[test]
    fn abandonment_reports_the_furthest_step_and_the_trouble() {
        let f = funnels(100);
        obs(&f, "b", Method::POST, "/cart", false, 0);
        obs(&f, "b", Method::GET, "/checkout", false, MIN);
        obs(&f, "b", Method::POST, "/checkout/pay", true, 2 * MIN);
        // Going back a step does not lower the furthest step.
        obs(&f, "b", Method::GET, "/checkout", false, 3 * MIN);
        assert!(
            f.sweep(30 * MIN - 1).is_empty(),
            "not yet: abandon_after is 30 minutes"
        );
        let a = f.sweep(30 * MIN);
        assert_eq!(a.len(), 1);
        let a = &a[0];
        assert_eq!((a.customer.as_str(), a.furthest, a.errors), ("b", 2, 1));
        assert_eq!((a.entered_ms, a.last_ms), (0, 3 * MIN));
        assert!(f.sweep(100 * MIN).is_empty(), "reported once");
    }

    #[test]
    fn only_the_first_step_enters_and_methods_must_match() {
        let f = funnels(100);
        obs(&f, "c", Method::GET, "/checkout", false, 0);
        obs(&f, "c", Method::GET, "/cart", false, 0);
        assert_eq!(f.tracked(), 0);
        obs(&f, "c", Method::POST, "/cart", false, 0);
        assert_eq!(f.tracked(), 1);
    }

    #[test]
    fn tracking_is_bounded_and_overflow_counted() {
        let f = funnels(2);
        for who in ["x", "y", "z", "w"] {
            obs(&f, who, Method::POST, "/cart", false, 0);
        }
        assert_eq!(f.tracked(), 2);
        assert_eq!(f.state.untracked(), 2);
    }

    #[test]
    fn progress_outlives_the_definitions_it_was_made_under() {
        let f = funnels(100);
        obs(&f, "d", Method::POST, "/cart", false, 0);
        obs(&f, "d", Method::POST, "/checkout/pay", true, MIN);
        // A reload shortens the funnel to two steps: the furthest step is clamped to one of its own.
        let mut short = f.defs.clone();
        short[0].steps.truncate(2);
        assert_eq!(f.state.progress_of(&short, "d"), vec![(0, 0)]);
        // A snapshot carries it to another process.
        let copy = Funnels::new();
        for (id, who, p) in f.state.entries() {
            copy.restore(id, who, p, 100);
        }
        let a = copy.sweep(&f.defs, 30 * MIN);
        assert_eq!((a.len(), a[0].furthest, a[0].errors), (1, 2, 1));
        // Progress in a funnel that is no longer configured is dropped, not reported.
        obs(&f, "e", Method::POST, "/cart", false, 0);
        assert!(f.state.sweep(&[], 100 * MIN).is_empty());
        assert_eq!(f.tracked(), 0);
    }

    fn ids(c: &Cell) -> Vec<&str> {
        c.customers.iter().map(|c| c.as_str()).collect()
    }

    #[test]
    fn the_history_says_who_reached_each_step_and_who_dropped_there() {
        let f = funnels(100);
        // a completes; b drops at pay after an error; c is still at checkout; d dropped at cart
        // long before the window.
        obs(&f, "d", Method::POST, "/cart", false, 0);
        f.sweep(31 * MIN);
        let t = 100 * MIN;
        for who in ["a", "b"] {
            obs(&f, who, Method::POST, "/cart", false, t);
            obs(&f, who, Method::GET, "/checkout", false, t + MIN);
        }
        obs(&f, "a", Method::POST, "/checkout/pay", false, t + 2 * MIN);
        obs(&f, "a", Method::GET, "/checkout/done/1", false, t + 3 * MIN);
        obs(&f, "b", Method::POST, "/checkout/pay", true, t + 2 * MIN);
        // c enters later, so only b is over abandon_after at the sweep.
        obs(&f, "c", Method::POST, "/cart", false, t + 10 * MIN);
        obs(&f, "c", Method::GET, "/checkout", false, t + 20 * MIN);
        assert_eq!(f.sweep(t + 31 * MIN).len(), 1);
        assert_eq!(f.state.history_len(), 3, "d, a and b");

        let r = &f.state.report(&f.defs, t, t + 60 * MIN)[0];
        assert_eq!((r.completed, r.abandoned, r.in_progress), (1, 1, 1));
        let reached: Vec<usize> = r.steps.iter().map(|s| s.reached.all.count).collect();
        assert_eq!(reached, vec![3, 3, 2, 1]);
        let dropped: Vec<usize> = r.steps.iter().map(|s| s.dropped.all.count).collect();
        assert_eq!(dropped, vec![0, 0, 1, 0]);
        let pay = &r.steps[2];
        assert_eq!(ids(&pay.dropped.after_trouble), vec!["b"]);
        assert_eq!(pay.dropped.without_trouble.count, 0);
        assert_eq!(ids(&pay.reached.without_trouble), vec!["a"]);
        // Every test customer is of tier 1.
        assert_eq!(pay.reached.by_tier.get(&1).map(|c| c.count), Some(2));
        // Most recently seen in the funnel first: c (t + 20 min), a (t + 3), b (t + 2).
        assert_eq!(ids(&r.steps[0].reached.all), vec!["c", "a", "b"]);
        // The whole history: d's drop at the cart too.
        let all = &f.state.report(&f.defs, 0, u64::MAX)[0];
        assert_eq!(ids(&all.steps[0].dropped.all), vec!["d"]);
        // A window with nobody in it.
        let none = &f.state.report(&f.defs, t + 61 * MIN, t + 90 * MIN)[0];
        assert_eq!(none.steps[0].reached.all.count, 0);
    }

    #[test]
    fn the_history_is_bounded_and_erasure_reaches_it() {
        let f = funnels(100);
        f.state.set_history_max(2);
        for (i, who) in ["x", "y", "z"].iter().enumerate() {
            obs(&f, who, Method::POST, "/cart", false, i as u64);
            obs(
                &f,
                who,
                Method::GET,
                "/checkout/done/1",
                false,
                i as u64 + 1,
            );
        }
        assert_eq!(f.state.history_len(), 2, "the oldest went first");
        assert!(f.state.history_of("x", 10).is_empty());
        let z = f.state.history_of("z", 10);
        assert_eq!(
            (z.len(), z[0].ending, z[0].furthest),
            (1, Ending::Completed, 3)
        );
        obs(&f, "z", Method::POST, "/cart", false, 10);
        f.state.forget("z");
        assert!(f.state.history_of("z", 10).is_empty());
        assert!(f.state.progress_detail(&f.defs, "z").is_empty());
        assert_eq!(f.state.history_len(), 1);
        // A customer who went through twice counts once per number.
        f.state.set_history_max(100);
        for at in [100, 200] {
            obs(&f, "w", Method::POST, "/cart", false, at);
            obs(&f, "w", Method::GET, "/checkout/done/1", false, at + 1);
        }
        let r = &f.state.report(&f.defs, 0, 1000)[0];
        assert_eq!((r.completed, r.steps[3].reached.all.count), (3, 2));
    }

    #[test]
    fn progress_detail_says_when_and_after_what() {
        let f = funnels(100);
        obs(&f, "p", Method::POST, "/cart", true, 0);
        obs(&f, "p", Method::POST, "/checkout/pay", true, MIN);
        let d = f.state.progress_detail(&f.defs, "p");
        assert_eq!(d.len(), 1);
        let (fi, p) = d[0];
        assert_eq!((fi, p.furthest, p.errors, p.last_ms), (0, 2, 2, MIN));
    }
}
