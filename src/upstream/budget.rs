//! The retry budget: retries may add at most `ratio` extra requests per pool over a sliding window,
//! plus a floor of `min_per_sec`, so that retries help through a blip but cannot turn an outage into a
//! retry storm.
//!
//! Finagle's `RetryBudget` and Linkerd's defaults (20% extra, 10 retries per second floor, 10 s
//! window). Counts live in one-second buckets; time is passed in.

pub use crate::settings::BudgetSettings;
use std::time::Instant;

#[derive(Debug)]
pub struct RetryBudget {
    settings: BudgetSettings,
    origin: Instant,
    /// (second, requests, retries), one per second of the window.
    buckets: Vec<(u64, u64, u64)>,
}

impl RetryBudget {
    pub fn settings(&self) -> &BudgetSettings {
        &self.settings
    }

    pub fn new(settings: BudgetSettings, now: Instant) -> Self {
        let n = settings.window.as_secs().max(1) as usize;
        RetryBudget {
            settings,
            origin: now,
            buckets: vec![(u64::MAX, 0, 0); n],
        }
    }

    fn bucket(&mut self, now: Instant) -> &mut (u64, u64, u64) {
        let sec = now.saturating_duration_since(self.origin).as_secs();
        let n = self.buckets.len();
        let b = &mut self.buckets[(sec % n as u64) as usize];
        if b.0 != sec {
            *b = (sec, 0, 0);
        }
        b
    }

    fn totals(&self, now: Instant) -> (u64, u64) {
        let sec = now.saturating_duration_since(self.origin).as_secs();
        let n = self.buckets.len() as u64;
        self.buckets
            .iter()
            .filter(|b| b.0 != u64::MAX && b.0 <= sec && sec - b.0 < n)
            .fold((0, 0), |(r, t), b| (r + b.1, t + b.2))
    }

    /// Counts one original request (not a retry).
    pub fn request(&mut self, now: Instant) {
        self.bucket(now).1 += 1;
    }

    /// Whether a retry would be granted now, without taking it.
    pub fn has_room(&self, now: Instant) -> bool {
        let (requests, retries) = self.totals(now);
        let allowed = self.settings.min_per_sec * self.settings.window.as_secs_f64()
            + self.settings.ratio * requests as f64;
        (retries as f64) < allowed
    }

    /// Takes one retry from the budget if there is one left; false means the retry must not happen.
    pub fn try_retry(&mut self, now: Instant) -> bool {
        let room = self.has_room(now);
        if room {
            self.bucket(now).2 += 1;
        }
        room
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn settings() -> BudgetSettings {
        BudgetSettings {
            ratio: 0.2,
            min_per_sec: 1.0,
            window: Duration::from_secs(10),
        }
    }

    #[test]
    fn floor_allows_a_few_retries_without_traffic() {
        let t0 = Instant::now();
        let mut b = RetryBudget::new(settings(), t0);
        let allowed = (0..20).filter(|_| b.try_retry(t0)).count();
        assert_eq!(allowed, 10, "1 per second over a 10 s window");
    }

    #[test]
    fn ratio_caps_extra_load_under_a_storm() {
        let t0 = Instant::now();
        let mut b = RetryBudget::new(settings(), t0);
        let mut retries = 0;
        for i in 0..1000u64 {
            let now = t0 + Duration::from_millis(i * 5);
            b.request(now);
            // Every request fails and wants a retry.
            if b.try_retry(now) {
                retries += 1;
            }
        }
        // 5 s of traffic: floor 10 plus 20% of 1000.
        assert!((200..=210).contains(&retries), "{retries}");
    }

    #[test]
    fn old_traffic_leaves_the_window() {
        let t0 = Instant::now();
        let mut b = RetryBudget::new(settings(), t0);
        for _ in 0..1000 {
            b.request(t0);
        }
        while b.try_retry(t0) {}
        assert!(!b.try_retry(t0 + Duration::from_secs(5)));
        // Eleven seconds on, both the requests and the retries have aged out: only the floor is left.
        let later = t0 + Duration::from_secs(11);
        let allowed = (0..50).filter(|_| b.try_retry(later)).count();
        assert_eq!(allowed, 10);
    }
}
