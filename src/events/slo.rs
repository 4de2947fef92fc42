//! Route objectives and error-budget burn, judged with multiple windows as the Google SRE workbook
//! recommends: page when the last hour and the last 5 minutes both burn the budget over 14.4 times
//! too fast (2% of a 30-day budget in an hour), ticket when the last 6 hours and the last 30
//! minutes both burn it over 6 times too fast. The long window makes it significant, the short one
//! makes it current (it stops firing soon after the burn stops).
//!
//! A request is good when it did not fail and took no longer than the route's target. Counts are
//! kept per minute for six hours (under 3 KiB per route with an objective). Time is passed in.

use parking_lot::Mutex;

const MINUTES: usize = 360;

/// (long window, short window, burn-rate threshold, severity), in minutes.
pub const RULES: [(u64, u64, f64, &str); 2] = [(60, 5, 14.4, "page"), (360, 30, 6.0, "ticket")];

/// A burn found by [`SloTracker::evaluate`].
#[derive(Debug, Clone, PartialEq)]
pub struct Burn {
    pub route: usize,
    pub objective: f64,
    pub severity: &'static str,
    pub long_minutes: u64,
    pub short_minutes: u64,
    pub long_burn: f64,
    pub short_burn: f64,
    pub threshold: f64,
}

struct RouteSlo {
    objective: f64,
    /// (minute, good, total)
    minutes: Vec<(u64, u32, u32)>,
}

pub struct SloTracker {
    routes: Vec<Option<Mutex<RouteSlo>>>,
    /// Fewest requests in a short window for a burn to count: five bad requests out of six are
    /// not an outage.
    min_requests: u32,
}

impl SloTracker {
    /// `objectives[i]` is route i's objective (e.g. 0.999), if it has one.
    pub fn new(objectives: &[Option<f64>], min_requests: u32) -> Self {
        SloTracker {
            routes: objectives
                .iter()
                .map(|o| {
                    o.map(|objective| {
                        Mutex::new(RouteSlo {
                            objective,
                            minutes: vec![(u64::MAX, 0, 0); MINUTES],
                        })
                    })
                })
                .collect(),
            min_requests,
        }
    }

    pub fn record(&self, route: usize, good: bool, now_ms: u64) {
        let Some(Some(r)) = self.routes.get(route) else {
            return;
        };
        let minute = now_ms / 60_000;
        let mut r = r.lock();
        let slot = &mut r.minutes[(minute % MINUTES as u64) as usize];
        if slot.0 != minute {
            *slot = (minute, 0, 0);
        }
        slot.1 += u32::from(good);
        slot.2 += 1;
    }

    /// (good, total) over the last `minutes` minutes, the current one included.
    fn window(r: &RouteSlo, minutes: u64, now_ms: u64) -> (u64, u64) {
        let now = now_ms / 60_000;
        r.minutes
            .iter()
            .filter(|(m, _, _)| *m != u64::MAX && *m <= now && now - *m < minutes)
            .fold((0, 0), |(g, t), (_, good, total)| {
                (g + *good as u64, t + *total as u64)
            })
    }

    fn burn(r: &RouteSlo, minutes: u64, now_ms: u64) -> (f64, u64) {
        let (good, total) = Self::window(r, minutes, now_ms);
        if total == 0 {
            return (0.0, 0);
        }
        let bad = 1.0 - good as f64 / total as f64;
        (bad / (1.0 - r.objective).max(1e-9), total)
    }

    /// Every route burning its budget now, at most one burn (the most severe) per route.
    pub fn evaluate(&self, now_ms: u64) -> Vec<Burn> {
        let mut out = Vec::new();
        for (i, r) in self.routes.iter().enumerate() {
            let Some(r) = r else { continue };
            let r = r.lock();
            for (long, short, threshold, severity) in RULES {
                let (long_burn, _) = Self::burn(&r, long, now_ms);
                let (short_burn, short_n) = Self::burn(&r, short, now_ms);
                if long_burn > threshold
                    && short_burn > threshold
                    && short_n >= u64::from(self.min_requests)
                {
                    out.push(Burn {
                        route: i,
                        objective: r.objective,
                        severity,
                        long_minutes: long,
                        short_minutes: short,
                        long_burn,
                        short_burn,
                        threshold,
                    });
                    break;
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: u64 = 60_000;

    fn feed(t: &SloTracker, good: u32, bad: u32, at: u64) {
        for _ in 0..good {
            t.record(0, true, at);
        }
        for _ in 0..bad {
            t.record(0, false, at);
        }
    }

    #[test]
    fn a_fast_burn_pages_once_both_windows_agree() {
        let t = SloTracker::new(&[Some(0.999)], 10);
        // An hour at 0.1% bad: burning exactly at budget, nothing.
        for m in 0..60 {
            feed(&t, 999, 1, m * MIN);
        }
        assert!(t.evaluate(60 * MIN).is_empty());
        // Then 5 minutes at 10% bad: the 5-minute window burns 100x, the hour about 9x: no page yet
        // (the slower pair, 6 hours and 30 minutes, both over 6x, does open a ticket).
        for m in 60..65 {
            feed(&t, 900, 100, m * MIN);
        }
        let b = t.evaluate(64 * MIN);
        assert!(b.iter().all(|b| b.severity != "page"), "{b:?}");
        // Ten more minutes of it: the hour passes 14.4x too.
        for m in 65..75 {
            feed(&t, 900, 100, m * MIN);
        }
        let b = t.evaluate(74 * MIN);
        assert_eq!(b.len(), 1, "{b:?}");
        assert_eq!(
            (b[0].severity, b[0].long_minutes, b[0].short_minutes),
            ("page", 60, 5)
        );
        assert!(b[0].short_burn > 99.0 && b[0].long_burn > 14.4);
        // It stops soon after the burn stops: five clean minutes clear the short window.
        for m in 75..80 {
            feed(&t, 1000, 0, m * MIN);
        }
        assert!(t.evaluate(79 * MIN).iter().all(|b| b.severity != "page"));
    }

    #[test]
    fn a_slow_burn_opens_a_ticket() {
        let t = SloTracker::new(&[None, Some(0.99)], 10);
        // Six hours at 7% bad against a 1% budget: 7x, under the page threshold.
        for m in 0..360 {
            for _ in 0..93 {
                t.record(1, true, m * MIN);
            }
            for _ in 0..7 {
                t.record(1, false, m * MIN);
            }
        }
        let b = t.evaluate(359 * MIN);
        assert_eq!(b.len(), 1);
        assert_eq!((b[0].route, b[0].severity), (1, "ticket"));
        assert!((b[0].long_burn - 7.0).abs() < 0.01);
    }

    #[test]
    fn few_requests_are_not_an_outage_and_routes_without_objectives_are_ignored() {
        let t = SloTracker::new(&[Some(0.999)], 10);
        feed(&t, 0, 5, 0);
        assert!(t.evaluate(0).is_empty());
        t.record(7, false, 0);
        let none = SloTracker::new(&[None], 10);
        none.record(0, false, 0);
        assert!(none.evaluate(0).is_empty());
    }
}
