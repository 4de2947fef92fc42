//! Funnels: named, ordered steps of a customer journey (cart, checkout, pay, done) and who abandoned
//! one.
//!
//! A customer enters a funnel on its first step; reaching a later step records the furthest step;
//! reaching the last step completes it. Whoever has entered and not completed within
//! `abandon_after` has abandoned it, and the sweep reports them with the furthest step and whether
//! they had failed or frustrated requests inside the funnel (abandonment after trouble is the case
//! that matters most). State is bounded by `max_tracked`: beyond it, new entries are not tracked and
//! are counted. Pure: time is passed in.

use crate::config::FunnelStep;
use compact_str::CompactString;
use http::Method;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
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

/// Who is in which funnel now: what usher learns, kept across configurations. The definitions come
/// with each call, from the configuration in force.
#[derive(Default)]
pub struct Funnels {
    progress: Mutex<HashMap<(u16, CompactString), Progress>>,
    untracked: AtomicU64,
}

impl Funnels {
    pub fn new() -> Self {
        Self::default()
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
                        map.remove(&key);
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
        out
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

    /// Forgets `customer` in every funnel.
    pub fn forget(&self, customer: &str) {
        self.progress.lock().retain(|(_, c), _| c != customer);
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
}
