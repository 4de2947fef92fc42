//! The experience score: a time-decayed Apdex for one customer.
//!
//! Each request is judged against its route's target T, as Apdex does: satisfied (<= T), tolerating
//! (<= 4T) or frustrated (> 4T, or any serving failure). The score is the decayed weighted average of
//! those judgements (1, 0.5, 0), scaled to 0..100, plus a small prior of satisfied weight that does
//! not decay. The prior is what makes an old bad experience fade: as the customer's own judgements
//! decay with `half_life`, the score returns toward 100 by itself, while a fresh run of trouble
//! dominates it at once.
//!
//! Follows linkerd2-proxy's `ewma`: a plain value type, the caller passes `now`, reading never mutates,
//! and nothing here can produce NaN or leave 0..=100.

use std::time::Duration;

/// Satisfied weight that never decays: one frustrated request on a fresh customer gives 66.7, two give
/// 50, and a history of good requests softens a single bad one.
pub const PRIOR_WEIGHT: f64 = 2.0;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Judgement {
    Satisfied,
    Tolerating,
    Frustrated,
}

impl Judgement {
    /// Judges a request that took `latency` against target `target`; `failed` is a serving failure.
    pub fn of(latency: Duration, target: Duration, failed: bool) -> Judgement {
        if failed || latency > target.saturating_mul(4) {
            Judgement::Frustrated
        } else if latency > target {
            Judgement::Tolerating
        } else {
            Judgement::Satisfied
        }
    }

    fn value(self) -> f32 {
        match self {
            Judgement::Satisfied => 1.0,
            Judgement::Tolerating => 0.5,
            Judgement::Frustrated => 0.0,
        }
    }
}

/// How fast judgements fade.
#[derive(Debug, Clone, Copy)]
pub struct ScoreModel {
    half_life_ms: f64,
}

impl ScoreModel {
    pub fn new(half_life: Duration) -> Self {
        // A zero half-life would divide by zero; config validation forbids it, clamp anyway.
        ScoreModel {
            half_life_ms: (half_life.as_secs_f64() * 1000.0).max(1.0),
        }
    }

    /// The factor by which weight recorded at `then_ms` has shrunk at `now_ms`. A clock that went
    /// backwards counts as no time passing.
    fn decay(&self, then_ms: u64, now_ms: u64) -> f64 {
        let dt = now_ms.saturating_sub(then_ms) as f64;
        (-dt / self.half_life_ms).exp2()
    }
}

/// One customer's score state: 16 bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Score {
    good: f32,
    weight: f32,
    at_ms: u64,
}

impl Score {
    pub fn observe(&mut self, judgement: Judgement, now_ms: u64, model: &ScoreModel) {
        let d = model.decay(self.at_ms, now_ms) as f32;
        self.good = self.good * d + judgement.value();
        self.weight = self.weight * d + 1.0;
        self.at_ms = self.at_ms.max(now_ms);
        debug_assert!(self.good.is_finite() && self.weight.is_finite());
    }

    /// When the latest judgement was made.
    pub fn last_ms(&self) -> u64 {
        self.at_ms
    }

    /// `(good, weight, at_ms)`: the whole state, for a snapshot.
    pub fn parts(&self) -> (f32, f32, u64) {
        (self.good, self.weight, self.at_ms)
    }

    /// A score from [`Self::parts`]; `None` for values no score can hold (negative, not finite,
    /// more good than weight, or more weight than a billion requests at once).
    pub fn from_parts(good: f32, weight: f32, at_ms: u64) -> Option<Score> {
        const MAX_WEIGHT: f32 = 1e9;
        (good.is_finite()
            && weight.is_finite()
            && good >= 0.0
            && (0.0..=MAX_WEIGHT).contains(&weight)
            && good <= weight + 1e-3)
            .then_some(Score {
                good: good.min(weight),
                weight,
                at_ms,
            })
    }

    /// The score of both histories at once: judgements are decayed weights, so two scores of the
    /// same customer (two processes that each served them for a while) add up once brought to the
    /// same time.
    pub fn merge(&mut self, other: &Score, model: &ScoreModel) {
        let at = self.at_ms.max(other.at_ms);
        let (a, b) = (
            model.decay(self.at_ms, at) as f32,
            model.decay(other.at_ms, at) as f32,
        );
        self.good = self.good * a + other.good * b;
        self.weight = self.weight * a + other.weight * b;
        self.at_ms = at;
    }

    /// The score at `now_ms`, 0..=100; 100 for a customer with no history.
    pub fn value(&self, now_ms: u64, model: &ScoreModel) -> f64 {
        let d = model.decay(self.at_ms, now_ms);
        let good = self.good as f64 * d;
        let weight = self.weight as f64 * d;
        let v = 100.0 * (good + PRIOR_WEIGHT) / (weight + PRIOR_WEIGHT);
        debug_assert!(v.is_finite());
        v.clamp(0.0, 100.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MIN: u64 = 60_000;

    fn model() -> ScoreModel {
        ScoreModel::new(Duration::from_secs(600))
    }

    #[test]
    fn judges_against_target() {
        let t = Duration::from_millis(300);
        assert_eq!(
            Judgement::of(Duration::from_millis(300), t, false),
            Judgement::Satisfied
        );
        assert_eq!(
            Judgement::of(Duration::from_millis(301), t, false),
            Judgement::Tolerating
        );
        assert_eq!(
            Judgement::of(Duration::from_millis(1200), t, false),
            Judgement::Tolerating
        );
        assert_eq!(
            Judgement::of(Duration::from_millis(1201), t, false),
            Judgement::Frustrated
        );
        assert_eq!(
            Judgement::of(Duration::from_millis(1), t, true),
            Judgement::Frustrated
        );
    }

    #[test]
    fn fresh_customer_scores_100_and_one_failure_hurts() {
        let m = model();
        let mut s = Score::default();
        assert_eq!(s.value(0, &m), 100.0);
        s.observe(Judgement::Frustrated, 1_000, &m);
        let v = s.value(1_000, &m);
        assert!((v - 66.666).abs() < 0.01, "{v}");
        s.observe(Judgement::Frustrated, 1_000, &m);
        assert!((s.value(1_000, &m) - 50.0).abs() < 0.01);
    }

    #[test]
    fn tolerating_counts_half() {
        let m = model();
        let mut s = Score::default();
        for _ in 0..1000 {
            s.observe(Judgement::Tolerating, 5_000, &m);
        }
        assert!((s.value(5_000, &m) - 50.0).abs() < 0.1);
    }

    #[test]
    fn bad_experience_fades_with_half_life() {
        let m = model();
        let mut s = Score::default();
        for _ in 0..8 {
            s.observe(Judgement::Frustrated, 0, &m);
        }
        // 8 frustrated + prior 2: 20.
        assert!((s.value(0, &m) - 20.0).abs() < 0.01);
        // One half-life later the 8 count as 4: 2/6.
        assert!((s.value(10 * MIN, &m) - 33.333).abs() < 0.01);
        // Long after, the prior dominates.
        assert!(s.value(200 * MIN, &m) > 99.9);
    }

    #[test]
    fn recent_good_requests_outweigh_old_bad_ones() {
        let m = model();
        let mut s = Score::default();
        for _ in 0..10 {
            s.observe(Judgement::Frustrated, 0, &m);
        }
        for _ in 0..10 {
            s.observe(Judgement::Satisfied, 20 * MIN, &m);
        }
        // Old weight 10 decayed to 2.5 (frustrated), new 10 satisfied + prior 2: 12/14.5.
        assert!((s.value(20 * MIN, &m) - 100.0 * 12.0 / 14.5).abs() < 0.05);
    }

    #[test]
    fn two_histories_merge_into_one() {
        let m = model();
        let (mut a, mut b, mut both) = (Score::default(), Score::default(), Score::default());
        for t in [0, MIN, 2 * MIN] {
            a.observe(Judgement::Frustrated, t, &m);
            both.observe(Judgement::Frustrated, t, &m);
        }
        for t in [3 * MIN, 4 * MIN] {
            b.observe(Judgement::Satisfied, t, &m);
            both.observe(Judgement::Satisfied, t, &m);
        }
        a.merge(&b, &m);
        assert!((a.value(5 * MIN, &m) - both.value(5 * MIN, &m)).abs() < 0.01);
        let (g, w, at) = a.parts();
        assert_eq!(Score::from_parts(g, w, at), Some(a));
        assert_eq!(Score::from_parts(2.0, 1.0, 0), None);
        assert_eq!(Score::from_parts(f32::NAN, 1.0, 0), None);
    }

    #[test]
    fn clock_going_backwards_is_no_time() {
        let m = model();
        let mut s = Score::default();
        s.observe(Judgement::Frustrated, 10 * MIN, &m);
        let before = s.value(10 * MIN, &m);
        assert_eq!(s.value(0, &m), before);
        s.observe(Judgement::Frustrated, 5 * MIN, &m);
        assert!(s.value(10 * MIN, &m) < before);
    }

    fn judgement() -> impl Strategy<Value = Judgement> {
        prop_oneof![
            Just(Judgement::Satisfied),
            Just(Judgement::Tolerating),
            Just(Judgement::Frustrated)
        ]
    }

    proptest! {
        #[test]
        fn score_stays_in_range(events in proptest::collection::vec((judgement(), 0u64..10_000_000), 0..200),
                                half_life_ms in 1u64..100_000_000, probe in 0u64..u64::MAX / 2) {
            let m = ScoreModel::new(Duration::from_millis(half_life_ms));
            let mut s = Score::default();
            let mut now = 0;
            for (j, dt) in events {
                now += dt;
                s.observe(j, now, &m);
                let v = s.value(now, &m);
                prop_assert!(v.is_finite() && (0.0..=100.0).contains(&v));
            }
            let v = s.value(probe, &m);
            prop_assert!(v.is_finite() && (0.0..=100.0).contains(&v));
        }

        #[test]
        fn frustration_never_raises_and_satisfaction_never_lowers(
            events in proptest::collection::vec((judgement(), 0u64..1_000_000), 0..50)) {
            let m = model();
            let mut s = Score::default();
            let mut now = 0;
            for (j, dt) in events {
                now += dt;
                s.observe(j, now, &m);
            }
            let v = s.value(now, &m);
            let mut worse = s;
            worse.observe(Judgement::Frustrated, now, &m);
            prop_assert!(worse.value(now, &m) <= v + 1e-6);
            let mut better = s;
            better.observe(Judgement::Satisfied, now, &m);
            prop_assert!(better.value(now, &m) >= v - 1e-6);
        }

        #[test]
        fn time_only_heals(events in proptest::collection::vec((judgement(), 0u64..1_000_000), 1..50),
                           wait in 0u64..100_000_000) {
            let m = model();
            let mut s = Score::default();
            let mut now = 0;
            for (j, dt) in events {
                now += dt;
                s.observe(j, now, &m);
            }
            prop_assert!(s.value(now + wait, &m) >= s.value(now, &m) - 1e-6);
        }
    }
}
