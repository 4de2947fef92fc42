//! Per-customer experience: the score model, journeys and the bounded store that holds them.
//!
//! What usher learns about customers, kept across configurations: ids are customer ids, tiers,
//! routes and upstreams are interned names, never positions in a configuration.
//!
//! Pure Rust, no I/O and no clock of its own: callers pass time in, so every rule here is testable
//! deterministically. Knows nothing of Pingora, HTTP servers or metrics.

pub mod journey;
pub mod score;
pub mod store;
pub mod struggle;

pub use journey::{Journey, Marks, Step};
pub use score::{Judgement, Score, ScoreModel};
pub use store::{
    CustomerRecord, CustomerSnapshot, CustomerStore, Observation, Peek, Recorded, StoreSettings,
    Summary, Transition,
};
pub use struggle::StruggleRules;
