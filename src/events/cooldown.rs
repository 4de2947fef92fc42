//! No spam: at most one event of a type about a subject per cooldown period.
//!
//! Bounded: entries older than the period are forgotten on every sweep, and when the table is full
//! the oldest half is dropped at once (forgetting a cooldown risks one extra message, keeping
//! unbounded state risks the proxy). What lasts is when each event last went out; the period is the
//! configuration's and comes with each call, so a reload that shortens it applies at once. Time is
//! passed in.

use super::model::EventType;
use compact_str::CompactString;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::time::Duration;

pub struct Cooldown {
    last: Mutex<HashMap<(EventType, CompactString), u64>>,
    max: usize,
}

impl Cooldown {
    pub fn new(max: usize) -> Self {
        Cooldown {
            last: Mutex::new(HashMap::new()),
            max: max.max(2),
        }
    }

    /// Whether an event of `kind` about `subject` may go out now, `period` after the last one; if
    /// so, the cooldown starts.
    pub fn allow(&self, kind: EventType, subject: &str, now_ms: u64, period: Duration) -> bool {
        let period_ms = crate::time::millis(period);
        let mut last = self.last.lock();
        let key = (kind, CompactString::from(subject));
        if let Some(t) = last.get(&key) {
            if now_ms.saturating_sub(*t) < period_ms {
                return false;
            }
        }
        if last.len() >= self.max && !last.contains_key(&key) {
            let mut times: Vec<u64> = last.values().copied().collect();
            times.sort_unstable();
            let cut = times[times.len() / 2];
            last.retain(|_, t| *t > cut);
        }
        last.insert(key, now_ms);
        true
    }

    pub fn sweep(&self, now_ms: u64, period: Duration) {
        let period_ms = crate::time::millis(period);
        self.last
            .lock()
            .retain(|_, t| now_ms.saturating_sub(*t) < period_ms);
    }

    /// Every running cooldown: (type, subject, when the last event went out).
    pub fn entries(&self) -> Vec<(EventType, CompactString, u64)> {
        self.last
            .lock()
            .iter()
            .map(|((k, s), t)| (*k, s.clone(), *t))
            .collect()
    }

    /// Puts a cooldown back (from a snapshot), keeping the later time if one is running.
    pub fn restore(&self, kind: EventType, subject: CompactString, at_ms: u64) {
        let mut last = self.last.lock();
        if last.len() >= self.max {
            return;
        }
        let t = last.entry((kind, subject)).or_insert(at_ms);
        *t = (*t).max(at_ms);
    }

    /// Forgets every cooldown about `subject`.
    /// Forgets every cooldown of `subject`; how many there were.
    pub fn forget(&self, subject: &str) -> usize {
        let mut last = self.last.lock();
        let before = last.len();
        last.retain(|(_, s), _| s != subject);
        before - last.len()
    }

    pub fn len(&self) -> usize {
        self.last.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_per_type_and_subject_per_period() {
        let p = Duration::from_secs(600);
        let c = Cooldown::new(100);
        assert!(c.allow(EventType::CustomerDegraded, "a", 0, p));
        assert!(!c.allow(EventType::CustomerDegraded, "a", 599_999, p));
        assert!(
            c.allow(EventType::CustomerDegraded, "b", 1, p),
            "another customer"
        );
        assert!(c.allow(EventType::RequestFailed, "a", 1, p), "another type");
        assert!(
            c.allow(EventType::CustomerDegraded, "a", 600_000, p),
            "the period is over"
        );
        // A shorter period from a reload applies to cooldowns already running.
        assert!(c.allow(
            EventType::RequestFailed,
            "a",
            60_001,
            Duration::from_secs(60)
        ));
        // They survive a snapshot.
        let copy = Cooldown::new(100);
        for (k, s, t) in c.entries() {
            copy.restore(k, s, t);
        }
        assert!(!copy.allow(EventType::CustomerDegraded, "b", 2, p));
        copy.forget("b");
        assert!(copy.allow(EventType::CustomerDegraded, "b", 3, p));
    }

    #[test]
    fn stays_bounded() {
        let p = Duration::from_secs(600);
        let c = Cooldown::new(10);
        for i in 0..100u64 {
            assert!(c.allow(EventType::Rerouted, &format!("c{i}"), i, p));
        }
        assert!(c.len() <= 10);
        c.sweep(10_000_000, p);
        assert!(c.is_empty());
    }
}
