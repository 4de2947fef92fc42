//! No spam: at most one event of a type about a subject per cooldown period.
//!
//! Bounded: entries older than the period are forgotten on every sweep, and when the table is full
//! the oldest half is dropped at once (forgetting a cooldown risks one extra message, keeping
//! unbounded state risks the proxy). Time is passed in.

use super::model::EventType;
use compact_str::CompactString;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::time::Duration;

pub struct Cooldown {
    period_ms: u64,
    last: Mutex<HashMap<(EventType, CompactString), u64>>,
    max: usize,
}

impl Cooldown {
    pub fn new(period: Duration, max: usize) -> Self {
        Cooldown {
            period_ms: period.as_millis() as u64,
            last: Mutex::new(HashMap::new()),
            max: max.max(2),
        }
    }

    /// Whether an event of `kind` about `subject` may go out now; if so, the cooldown starts.
    pub fn allow(&self, kind: EventType, subject: &str, now_ms: u64) -> bool {
        let mut last = self.last.lock();
        let key = (kind, CompactString::from(subject));
        if let Some(t) = last.get(&key) {
            if now_ms.saturating_sub(*t) < self.period_ms {
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

    pub fn sweep(&self, now_ms: u64) {
        self.last
            .lock()
            .retain(|_, t| now_ms.saturating_sub(*t) < self.period_ms);
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
        let c = Cooldown::new(Duration::from_secs(600), 100);
        assert!(c.allow(EventType::CustomerDegraded, "a", 0));
        assert!(!c.allow(EventType::CustomerDegraded, "a", 599_999));
        assert!(
            c.allow(EventType::CustomerDegraded, "b", 1),
            "another customer"
        );
        assert!(c.allow(EventType::RequestFailed, "a", 1), "another type");
        assert!(
            c.allow(EventType::CustomerDegraded, "a", 600_000),
            "the period is over"
        );
    }

    #[test]
    fn stays_bounded() {
        let c = Cooldown::new(Duration::from_secs(600), 10);
        for i in 0..100u64 {
            assert!(c.allow(EventType::Rerouted, &format!("c{i}"), i));
        }
        assert!(c.len() <= 10);
        c.sweep(10_000_000);
        assert!(c.is_empty());
    }
}
