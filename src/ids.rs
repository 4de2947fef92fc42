//! Positions in one compiled configuration: which tier, pool, route or upstream of *that*
//! configuration a request or a decision is about. A leaf module shared by configuration, routing,
//! upstream selection and metrics.
//!
//! These are only meaningful together with the configuration (the generation) they came from, and
//! nothing that outlives a generation is keyed by them: customers, upstream health and statistics
//! are keyed by names and addresses, and journey steps carry interned names ([`crate::names`]).

/// Index of a tier.
pub type TierId = u8;
/// Index of a pool.
pub type PoolId = u16;
/// Index of a route.
pub type RouteId = u16;
/// Index of a distinct upstream address; the same address in two pools is one upstream.
pub type UpstreamId = u16;
