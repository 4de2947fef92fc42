//! Active health: the rise/fall rule applied to periodic health-check results.
//!
//! An upstream starts up (traffic should not wait for the first check), goes down after `fall`
//! failed checks in a row and comes back after `rise` good ones, as HAProxy, nginx plus and Pingora's
//! `HttpHealthCheck` do. Pure; the checks themselves are `checker.rs`.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ActiveState {
    up: bool,
    run: u32,
}

impl Default for ActiveState {
    fn default() -> Self {
        ActiveState { up: true, run: 0 }
    }
}

impl ActiveState {
    pub fn is_up(&self) -> bool {
        self.up
    }

    /// Records one check; returns the new state when it changed.
    pub fn record(&mut self, ok: bool, rise: u32, fall: u32) -> Option<bool> {
        if ok == self.up {
            self.run = 0;
            return None;
        }
        self.run += 1;
        let needed = if ok { rise } else { fall };
        if self.run >= needed.max(1) {
            self.up = ok;
            self.run = 0;
            Some(ok)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn falls_after_fall_failures_and_rises_after_rise_successes() {
        let mut a = ActiveState::default();
        assert!(a.is_up());
        assert_eq!(a.record(false, 2, 3), None);
        assert_eq!(a.record(false, 2, 3), None);
        assert_eq!(a.record(true, 2, 3), None, "a success breaks the run");
        assert_eq!(a.record(false, 2, 3), None);
        assert_eq!(a.record(false, 2, 3), None);
        assert_eq!(a.record(false, 2, 3), Some(false));
        assert_eq!(a.record(true, 2, 3), None);
        assert_eq!(a.record(true, 2, 3), Some(true));
        assert!(a.is_up());
    }
}
