//! The Pingora glue: the only part of usher that knows Pingora's request phases.
//!
//! [`UsherHooks`] is the plugin API: one call per phase, taking Pingora's types and the request's
//! [`crate::Exchange`], so that any `ProxyHttp` can embed usher while keeping its own server, CTX type
//! and routing. [`UsherProxy`] is usher's own `ProxyHttp`, built on nothing but those hooks.

mod errors;
mod hooks;
mod service;
mod upstream_tls;

pub use errors::{outcome_of, status_for};
pub use hooks::UsherHooks;
pub use service::UsherProxy;
