//! Struggle signals: what a customer does when the site is failing them, read from their requests
//! alone. A *loop* is the same request again and again in a short time (a page reloaded, a button
//! pressed until something happens); a *retry* is the same request soon after it failed or
//! frustrated; a *form loop* is a form (a POST) that a route keeps refusing with 4xx answers.
//!
//! Judged against the customer's journey before the new step joins it, so it costs a walk over at
//! most `journey_len` steps under the shard lock the step is recorded under, and nothing is kept
//! besides the journey itself. What it deliberately is not: a session replay or a click-level
//! signal (usher sees requests, not the page), and it never looks past the journey: a loop longer
//! than the journey holds is counted as one as long as the journey still holds enough of it.
//! Pure: time is the steps' own.

use super::journey::{Journey, Marks, Step};
use crate::measure::Outcome;
pub use crate::settings::StruggleRules;
use std::time::Duration;

/// The struggle marks `step` earns after `before` (the journey without it). A step earlier than
/// `step` by more than a window, or recorded after it (a clock step back), does not count.
pub fn marks(rules: &StruggleRules, before: &Journey, step: &Step) -> Marks {
    if step.is_probe() {
        return Marks::empty();
    }
    let now = step.at_ms();
    let within = |s: &Step, w: Duration| {
        s.at_ms() <= now && now - s.at_ms() <= w.as_millis().min(u64::MAX as u128) as u64
    };
    let mut same = 1usize;
    let mut refused = 1usize;
    let mut retry = false;
    let form = step.is_post() && step.outcome() == Outcome::ClientError;
    for s in before.iter() {
        if s.same_request(step) {
            same += usize::from(within(s, rules.loop_window));
            retry |= s.bad() && within(s, rules.retry_window);
        }
        if form
            && s.is_post()
            && s.outcome() == Outcome::ClientError
            && s.route() == step.route()
            && within(s, rules.form_loop_window)
        {
            refused += 1;
        }
    }
    let mut m = Marks::empty();
    if same >= rules.loop_count as usize {
        m = m.with(Marks::LOOP);
    }
    if retry {
        m = m.with(Marks::RETRY);
    }
    if form && refused >= rules.form_loop_count as usize {
        m = m.with(Marks::FORM_LOOP);
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Method;

    fn at(ms: u64, method: &Method, path: &str, outcome: Outcome, status: u16) -> Step {
        Step::new(ms, Some(1), method, path, status, 1_000, None, outcome, b"")
    }

    fn get(ms: u64, path: &str) -> Step {
        at(ms, &Method::GET, path, Outcome::Ok, 200)
    }

    fn journey(steps: &[Step]) -> Journey {
        Journey::from_steps(steps, 16)
    }

    #[test]
    fn the_same_page_three_times_within_15_s_is_a_loop_and_spread_out_is_not() {
        let r = StruggleRules::default();
        let j = journey(&[get(0, "/cart"), get(7_000, "/cart")]);
        assert_eq!(marks(&r, &j, &get(15_000, "/cart")), Marks::LOOP);
        assert_eq!(marks(&r, &j, &get(15_001, "/cart")), Marks::empty());
        assert_eq!(marks(&r, &j, &get(10_000, "/cart/x")), Marks::empty());
        let post = at(10_000, &Method::POST, "/cart", Outcome::Ok, 200);
        assert_eq!(marks(&r, &j, &post), Marks::empty(), "another method");
    }

    #[test]
    fn the_same_request_soon_after_a_failure_or_frustration_is_a_retry() {
        let r = StruggleRules::default();
        let failed = at(0, &Method::GET, "/pay", Outcome::Upstream5xx, 503);
        let j = journey(&[failed]);
        assert_eq!(marks(&r, &j, &get(10_000, "/pay")), Marks::RETRY);
        assert_eq!(marks(&r, &j, &get(10_001, "/pay")), Marks::empty());
        let mut slow = get(0, "/pay");
        slow.set_frustrated(true);
        assert_eq!(
            marks(&r, &journey(&[slow]), &get(3_000, "/pay")),
            Marks::RETRY
        );
        assert_eq!(
            marks(&r, &journey(&[get(0, "/pay")]), &get(3_000, "/pay")),
            Marks::empty(),
            "after a good answer it is just a second look"
        );
    }

    #[test]
    fn a_form_refused_three_times_on_one_route_is_a_form_loop() {
        let r = StruggleRules::default();
        let refused = |ms, path| at(ms, &Method::POST, path, Outcome::ClientError, 422);
        // Different paths of the same route: the form's action may carry an id.
        let j = journey(&[refused(0, "/signup/1"), refused(20_000, "/signup/2")]);
        assert!(marks(&r, &j, &refused(40_000, "/signup/3")).contains(Marks::FORM_LOOP));
        assert!(!marks(&r, &j, &refused(60_001, "/signup/3")).contains(Marks::FORM_LOOP));
        let accepted = at(40_000, &Method::POST, "/signup/3", Outcome::Ok, 201);
        assert_eq!(marks(&r, &j, &accepted), Marks::empty());
        let other_route = Step::new(
            40_000,
            Some(2),
            &Method::POST,
            "/signup/3",
            422,
            1_000,
            None,
            Outcome::ClientError,
            b"",
        );
        assert_eq!(marks(&r, &j, &other_route), Marks::empty());
    }

    #[test]
    fn signals_combine_and_thresholds_come_from_the_rules() {
        let r = StruggleRules {
            loop_count: 2,
            ..StruggleRules::default()
        };
        let failed = at(0, &Method::POST, "/pay", Outcome::ClientError, 400);
        let j = journey(&[failed, failed]);
        let again = at(1_000, &Method::POST, "/pay", Outcome::ClientError, 400);
        let m = marks(&r, &j, &again);
        assert_eq!(m.names().collect::<Vec<_>>(), vec!["loop", "form_loop"]);
        assert_eq!(
            marks(&r, &journey(&[]), &again),
            Marks::empty(),
            "a first request is no struggle"
        );
    }

    #[test]
    fn probes_and_paths_cut_short_are_never_a_loop() {
        let r = StruggleRules::default();
        for m in [Method::HEAD, Method::OPTIONS] {
            let j = journey(&[
                at(0, &m, "/api/x", Outcome::Ok, 204),
                at(1, &m, "/api/x", Outcome::Ok, 204),
            ]);
            assert_eq!(
                marks(&r, &j, &at(2, &m, "/api/x", Outcome::Ok, 204)),
                Marks::empty()
            );
        }
        // Three products whose paths share their first 25 bytes.
        let j = journey(&[
            get(0, "/api/v1/catalog/products/101"),
            get(1, "/api/v1/catalog/products/202"),
        ]);
        assert_eq!(
            marks(&r, &j, &get(2, "/api/v1/catalog/products/303")),
            Marks::empty()
        );
    }

    #[test]
    fn a_step_from_the_future_does_not_count() {
        let r = StruggleRules::default();
        let j = journey(&[get(50_000, "/cart"), get(50_001, "/cart")]);
        assert_eq!(marks(&r, &j, &get(1_000, "/cart")), Marks::empty());
    }
}
