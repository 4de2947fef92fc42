//! Who gets protected treatment: the single healthiest upstream (and a reserved pool, if the route has
//! one), never a probe.
//!
//! Protected tiers on critical routes always; per config, protected tiers on every route, and everyone
//! on critical routes; and, for `rescue_for` after their score fell below `rescue_below`, any customer
//! who just had a bad time, so their next request does not go back into the upstream that hurt them.
//! Pure policy: the facts come from identity, routing and the experience store.

use crate::config::ProtectionConfig;

/// Why a request is protected: also the `why` label of `usher_protected_requests_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protection {
    /// A protected tier on a critical route.
    TierOnCritical,
    /// A protected tier elsewhere (`protected_anywhere`).
    Tier,
    /// Anyone on a critical route (`critical_for_everyone`).
    Critical,
    /// A customer whose score recently fell below `rescue_below`.
    Rescue,
}

impl Protection {
    pub const ALL: [Protection; 4] = [
        Protection::TierOnCritical,
        Protection::Tier,
        Protection::Critical,
        Protection::Rescue,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Protection::TierOnCritical => "tier_on_critical",
            Protection::Tier => "tier",
            Protection::Critical => "critical",
            Protection::Rescue => "rescue",
        }
    }
}

pub fn decide(
    cfg: &ProtectionConfig,
    tier_protected: bool,
    route_critical: bool,
    rescued: bool,
) -> Option<Protection> {
    if tier_protected && route_critical {
        Some(Protection::TierOnCritical)
    } else if tier_protected && cfg.protected_anywhere {
        Some(Protection::Tier)
    } else if route_critical && cfg.critical_for_everyone {
        Some(Protection::Critical)
    } else if rescued {
        Some(Protection::Rescue)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn cfg(anywhere: bool, everyone: bool) -> ProtectionConfig {
        ProtectionConfig {
            protected_anywhere: anywhere,
            critical_for_everyone: everyone,
            rescue_below: Some(40.0),
            rescue_for: Duration::from_secs(600),
            experience_header: None,
            try_timeout_factor: 4.0,
            try_timeout_floor: Duration::from_millis(50),
        }
    }

    #[test]
    fn protected_tiers_on_critical_routes_by_default_only() {
        let c = cfg(false, false);
        assert_eq!(
            decide(&c, true, true, false),
            Some(Protection::TierOnCritical)
        );
        assert_eq!(decide(&c, true, false, false), None);
        assert_eq!(decide(&c, false, true, false), None);
        assert_eq!(decide(&c, false, false, true), Some(Protection::Rescue));
    }

    #[test]
    fn options_widen_it() {
        assert_eq!(
            decide(&cfg(true, false), true, false, false),
            Some(Protection::Tier)
        );
        assert_eq!(
            decide(&cfg(false, true), false, true, false),
            Some(Protection::Critical)
        );
        assert_eq!(decide(&cfg(true, true), false, false, false), None);
    }
}
