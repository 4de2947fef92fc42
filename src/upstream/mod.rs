//! Upstream pools and the choice of an upstream for a request.
//!
//! Deliberately free of Pingora types: a choice is an [`UpstreamId`], and the proxy turns it into a
//! peer. Round robin for now; health and latency-aware selection build on the same `pick`.

use crate::config::{Config, PoolId, UpstreamId};
use std::sync::atomic::{AtomicUsize, Ordering};

pub struct Pool {
    members: Vec<UpstreamId>,
    next: AtomicUsize,
}

impl Pool {
    pub fn new(members: Vec<UpstreamId>) -> Self {
        Pool {
            members,
            next: AtomicUsize::new(0),
        }
    }

    /// The next upstream in turn, skipping those in `exclude` (already tried for this request) when
    /// any other is left.
    pub fn pick(&self, exclude: &[UpstreamId]) -> Option<UpstreamId> {
        let n = self.members.len();
        if n == 0 {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..n)
            .map(|k| self.members[(start + k) % n])
            .find(|u| !exclude.contains(u))
            .or(Some(self.members[start % n]))
    }

    pub fn members(&self) -> &[UpstreamId] {
        &self.members
    }
}

pub struct Pools {
    pools: Vec<Pool>,
}

impl Pools {
    pub fn new(config: &Config) -> Self {
        Pools {
            pools: config
                .pools
                .iter()
                .map(|p| Pool::new(p.upstreams.clone()))
                .collect(),
        }
    }

    pub fn get(&self, id: PoolId) -> Option<&Pool> {
        self.pools.get(id as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_robin_visits_every_member_in_turn() {
        let p = Pool::new(vec![0, 1, 2]);
        let picks: Vec<_> = (0..6).map(|_| p.pick(&[]).unwrap()).collect();
        assert_eq!(picks, vec![0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn skips_excluded_unless_nothing_else_is_left() {
        let p = Pool::new(vec![0, 1]);
        for _ in 0..4 {
            assert_eq!(p.pick(&[0]), Some(1));
        }
        assert!(p.pick(&[0, 1]).is_some());
        assert_eq!(Pool::new(vec![]).pick(&[]), None);
    }
}
