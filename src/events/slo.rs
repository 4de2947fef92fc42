//! Route objectives and error-budget burn, judged with multiple windows as the Google SRE workbook
//! recommends: page when the last hour and the last 5 minutes both burn the budget over 14.4 times
//! too fast (2% of a 30-day budget in an hour), ticket when the last 6 hours and the last 30
//! minutes both burn it over 6 times too fast. The long window makes it significant, the short one
//! makes it current (it stops firing soon after the burn stops).
//!
//! A request is good when it did not fail and took no longer than the route's target. Counts are
//! kept per minute for six hours (under 6 KiB per route with an objective). Time is passed in.

const MINUTES: usize = 360;

/// (long window, short window, burn-rate threshold, severity), in minutes.
pub const RULES: [(u64, u64, f64, &str); 2] = [(60, 5, 14.4, "page"), (360, 30, 6.0, "ticket")];

/// A burn found by [`evaluate`].
#[derive(Debug, Clone, PartialEq)]
pub struct Burn {
    pub objective: f64,
    pub severity: &'static str,
    pub long_minutes: u64,
    pub short_minutes: u64,
    pub long_burn: f64,
    pub short_burn: f64,
    pub threshold: f64,
}

/// One route's good and total requests per minute over the last six hours: what lasts of an
/// objective across a reload (the objective itself is the configuration's).
#[derive(Debug, Clone)]
pub struct SloWindow {
    /// (minute, good, total)
    minutes: Vec<(u64, u32, u32)>,
}

impl Default for SloWindow {
    fn default() -> Self {
        SloWindow {
            minutes: vec![(u64::MAX, 0, 0); MINUTES],
        }
    }
}

impl SloWindow {
    pub fn record(&mut self, good: bool, now_ms: u64) {
        self.add(now_ms / 60_000, u32::from(good), 1);
    }

    fn add(&mut self, minute: u64, good: u32, total: u32) {
        let slot = &mut self.minutes[(minute % MINUTES as u64) as usize];
        if slot.0 != minute {
            *slot = (minute, 0, 0);
        }
        slot.1 = slot.1.saturating_add(good);
        slot.2 = slot.2.saturating_add(total);
    }

    /// (good, total) over the last `minutes` minutes, the current one included.
    fn window(&self, minutes: u64, now_ms: u64) -> (u64, u64) {
        let now = now_ms / 60_000;
        self.minutes
            .iter()
            .filter(|(m, _, _)| *m != u64::MAX && *m <= now && now - *m < minutes)
            .fold((0, 0), |(g, t), (_, good, total)| {
                (g + *good as u64, t + *total as u64)
            })
    }

    /// How fast the last `minutes` minutes burn `objective`'s error budget (1: exactly as fast as
    /// the budget allows), with the requests it rests on.
    pub fn burn(&self, objective: f64, minutes: u64, now_ms: u64) -> (f64, u64) {
        let (good, total) = self.window(minutes, now_ms);
        if total == 0 {
            return (0.0, 0);
        }
        let bad = 1.0 - good as f64 / total as f64;
        (bad / (1.0 - objective).max(1e-9), total)
    }

    /// The minutes with requests: (minute, good, total), for a snapshot.
    pub fn entries(&self) -> Vec<(u64, u32, u32)> {
        self.minutes
            .iter()
            .copied()
            .filter(|(m, _, _)| *m != u64::MAX)
            .collect()
    }

    /// Adds counts back (from a snapshot).
    pub fn restore(&mut self, minute: u64, good: u32, total: u32) {
        self.add(minute, good.min(total), total);
    }
}

/// Whether `window` burns `objective`'s budget now: the most severe rule that fires, if any.
pub fn evaluate(
    objective: f64,
    window: &SloWindow,
    min_requests: u32,
    now_ms: u64,
) -> Option<Burn> {
    RULES
        .iter()
        .find_map(|&(long, short, threshold, severity)| {
            let (long_burn, _) = window.burn(objective, long, now_ms);
            let (short_burn, short_n) = window.burn(objective, short, now_ms);
            (long_burn > threshold && short_burn > threshold && short_n >= u64::from(min_requests))
                .then_some(Burn {
                    objective,
                    severity,
                    long_minutes: long,
                    short_minutes: short,
                    long_burn,
                    short_burn,
                    threshold,
                })
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: u64 = 60_000;

    fn feed(t: &mut SloWindow, good: u32, bad: u32, at: u64) {
        for _ in 0..good {
            t.record(true, at);
        }
        for _ in 0..bad {
            t.record(false, at);
        }
    }

    fn eval(t: &SloWindow, objective: f64, at: u64) -> Vec<Burn> {
        evaluate(objective, t, 10, at).into_iter().collect()
    }

    #[test]
    fn a_fast_burn_pages_once_both_windows_agree() {
        let mut t = SloWindow::default();
        // An hour at 0.1% bad: burning exactly at budget, nothing.
        for m in 0..60 {
            feed(&mut t, 999, 1, m * MIN);
        }
        assert!(eval(&t, 0.999, 60 * MIN).is_empty());
        // Then 5 minutes at 10% bad: the 5-minute window burns 100x, the hour about 9x: no page yet
        // (the slower pair, 6 hours and 30 minutes, both over 6x, does open a ticket).
        for m in 60..65 {
            feed(&mut t, 900, 100, m * MIN);
        }
        let b = eval(&t, 0.999, 64 * MIN);
        assert!(b.iter().all(|b| b.severity != "page"), "{b:?}");
        // Ten more minutes of it: the hour passes 14.4x too.
        for m in 65..75 {
            feed(&mut t, 900, 100, m * MIN);
        }
        let b = eval(&t, 0.999, 74 * MIN);
        assert_eq!(b.len(), 1, "{b:?}");
        assert_eq!(
            (b[0].severity, b[0].long_minutes, b[0].short_minutes),
            ("page", 60, 5)
        );
        assert!(b[0].short_burn > 99.0 && b[0].long_burn > 14.4);
        // It stops soon after the burn stops: five clean minutes clear the short window.
        for m in 75..80 {
            feed(&mut t, 1000, 0, m * MIN);
        }
        assert!(eval(&t, 0.999, 79 * MIN)
            .iter()
            .all(|b| b.severity != "page"));
        // The counts survive a snapshot.
        let mut copy = SloWindow::default();
        for (m, g, n) in t.entries() {
            copy.restore(m, g, n);
        }
        assert_eq!(eval(&copy, 0.999, 74 * MIN), eval(&t, 0.999, 74 * MIN));
    }

    #[test]
    fn a_slow_burn_opens_a_ticket() {
        let mut t = SloWindow::default();
        // Six hours at 7% bad against a 1% budget: 7x, under the page threshold.
        for m in 0..360 {
            feed(&mut t, 93, 7, m * MIN);
        }
        let b = eval(&t, 0.99, 359 * MIN);
        assert_eq!(b.len(), 1);
        assert_eq!(b[0].severity, "ticket");
        assert!((b[0].long_burn - 7.0).abs() < 0.01);
    }

    #[test]
    fn few_requests_are_not_an_outage() {
        let mut t = SloWindow::default();
        feed(&mut t, 0, 5, 0);
        assert!(eval(&t, 0.999, 0).is_empty());
    }
}
