//! Funnels: named, ordered steps of a customer journey (cart, checkout, pay, done) and who abandoned
//! one.
//!
//! A customer enters a funnel on its first step; reaching a later step records the furthest step;
//! reaching the last step completes it. Whoever has entered and not completed within
//! `abandon_after` has abandoned it, and the sweep reports them with the furthest step and whether
//! they had failed or frustrated requests inside the funnel (abandonment after trouble is the case
//! that matters most). State is bounded by `max_tracked`: beyond it, new entries are not tracked and
//! are counted. Pure: time is passed in.

use crate::config::{Funnel, TierId};
use compact_str::CompactString;
use http::Method;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Progress {
    furthest: u8,
    tier: TierId,
    entered_ms: u64,
    last_ms: u64,
    errors: u16,
    frustrated: u16,
}

/// A customer who entered a funnel and did not finish it in time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Abandoned {
    pub funnel: usize,
    pub customer: CompactString,
    pub tier: TierId,
    /// Index of the furthest step reached.
    pub furthest: usize,
    pub entered_ms: u64,
    /// When the customer was last seen inside the funnel.
    pub last_ms: u64,
    pub errors: u16,
    pub frustrated: u16,
}

pub struct Funnels {
    defs: Vec<Funnel>,
    progress: Mutex<HashMap<(u16, CompactString), Progress>>,
    max_tracked: usize,
    untracked: AtomicU64,
}

impl Funnels {
    pub fn new(defs: Vec<Funnel>, max_tracked: usize) -> Self {
        Funnels {
            defs,
            progress: Mutex::new(HashMap::new()),
            max_tracked,
            untracked: AtomicU64::new(0),
        }
    }

    pub fn defs(&self) -> &[Funnel] {
        &self.defs
    }

    pub fn is_empty(&self) -> bool {
        self.defs.is_empty()
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
        customer: &str,
        tier: TierId,
        method: &Method,
        path: &str,
        failed: bool,
        frustrated: bool,
        now_ms: u64,
    ) {
        for (fi, f) in self.defs.iter().enumerate() {
            let Some(step) = f.steps.iter().position(|s| s.matches(method, path)) else {
                continue;
            };
            let last = f.steps.len() - 1;
            let key = (fi as u16, CompactString::from(customer));
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
                    if map.len() >= self.max_tracked {
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
                        },
                    );
                }
                // A later step without having entered: not in the funnel.
                None => {}
            }
        }
    }

    /// The funnels `customer` is in now, with the furthest step reached in each.
    pub fn progress_of(&self, customer: &str) -> Vec<(usize, usize)> {
        if self.defs.is_empty() {
            return Vec::new();
        }
        let map = self.progress.lock();
        (0..self.defs.len())
            .filter_map(|f| {
                map.get(&(f as u16, CompactString::from(customer)))
                    .map(|p| (f, p.furthest as usize))
            })
            .collect()
    }

    /// Removes and returns everyone who has been in a funnel longer than its `abandon_after`.
    pub fn sweep(&self, now_ms: u64) -> Vec<Abandoned> {
        let mut out = Vec::new();
        self.progress.lock().retain(|(fi, customer), p| {
            let Some(f) = self.defs.get(*fi as usize) else {
                return false;
            };
            if now_ms.saturating_sub(p.entered_ms) < f.abandon_after.as_millis() as u64 {
                return true;
            }
            out.push(Abandoned {
                funnel: *fi as usize,
                customer: customer.clone(),
                tier: p.tier,
                furthest: p.furthest as usize,
                entered_ms: p.entered_ms,
                last_ms: p.last_ms,
                errors: p.errors,
                frustrated: p.frustrated,
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use std::path::Path;

    fn funnels(max: usize) -> Funnels {
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
        Funnels::new(cfg.funnels, max)
    }

    const MIN: u64 = 60_000;

    fn obs(f: &Funnels, who: &str, m: Method, path: &str, failed: bool, at: u64) {
        f.observe(who, 1, &m, path, failed, false, at);
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
        assert_eq!(f.untracked(), 2);
    }
}
