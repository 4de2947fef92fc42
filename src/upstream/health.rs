//! One passive-health state machine ([`Passive`]) with the atomics the request path reads without
//! its lock: an upstream's health as a whole (in its [`super::Node`]) or on one route (in its
//! [`super::Lane`]). Both follow the same rules; only the evidence differs.

use super::outlier::{Change, OutlierSettings, Passive, Reason, State};
use parking_lot::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::time::Instant;

pub(crate) const HEALTHY: u8 = 0;
pub(crate) const PROBING: u8 = 1;
pub(crate) const EJECTED: u8 = 2;

pub(crate) struct Health {
    state: AtomicU8,
    probe_busy: AtomicBool,
    /// An ejection was suppressed and reported; reported again only after the state changes.
    suppressed: AtomicBool,
    pub(crate) passive: Mutex<Passive>,
}

/// What applying a [`Change`] did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Applied {
    Ejected {
        reason: Reason,
        until: Instant,
    },
    /// The rules wanted it out but its pool could not spare it; reported once per episode.
    Suppressed {
        reason: Reason,
    },
    Probing,
    Restored,
}

impl Health {
    pub(crate) fn new(now: Instant) -> Self {
        Health {
            state: AtomicU8::new(HEALTHY),
            probe_busy: AtomicBool::new(false),
            suppressed: AtomicBool::new(false),
            passive: Mutex::new(Passive::new(now)),
        }
    }

    pub(crate) fn state(&self) -> u8 {
        self.state.load(Ordering::Relaxed)
    }

    pub(crate) fn healthy(&self) -> bool {
        self.state() == HEALTHY
    }

    /// Takes the one probe slot, if it is free.
    pub(crate) fn try_probe(&self) -> bool {
        self.probe_busy
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
    }

    pub(crate) fn release_probe(&self) {
        self.probe_busy.store(false, Ordering::Release);
    }

    /// Applies `change`; `can_spare` says whether the pool can do without this upstream (here).
    pub(crate) fn apply(
        &self,
        change: Change,
        can_spare: bool,
        now: Instant,
        jitter_draw: f64,
        s: &OutlierSettings,
    ) -> Option<Applied> {
        match change {
            Change::Eject(reason) => {
                // A failed probe is already out of service: re-ejecting takes nobody's place.
                if self.state() != PROBING && !can_spare {
                    // Every sweep would say it again: once per episode is enough.
                    let first = !self.suppressed.swap(true, Ordering::Relaxed);
                    return first.then_some(Applied::Suppressed { reason });
                }
                self.suppressed.store(false, Ordering::Relaxed);
                let until = self.passive.lock().eject(reason, now, jitter_draw, s);
                self.state.store(EJECTED, Ordering::Relaxed);
                Some(Applied::Ejected { reason, until })
            }
            Change::Probing => {
                self.state.store(PROBING, Ordering::Relaxed);
                Some(Applied::Probing)
            }
            Change::Restored => {
                self.suppressed.store(false, Ordering::Relaxed);
                self.state.store(HEALTHY, Ordering::Relaxed);
                Some(Applied::Restored)
            }
        }
    }

    /// Puts back a state a snapshot kept (see `Passive::restore_from`).
    pub(crate) fn restore(&self, state: State, ejections: u32) {
        self.passive.lock().restore_from(state, ejections);
        let flag = match state {
            State::Healthy => HEALTHY,
            State::Probing { .. } => PROBING,
            State::Ejected { .. } => EJECTED,
        };
        self.state.store(flag, Ordering::Relaxed);
    }
}
