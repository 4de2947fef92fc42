//! The admin API: what usher knows, for people and scrapers. `/metrics`, `/healthz`, customers by id,
//! the worst customers right now, per-route and per-upstream figures, funnels, and the live page
//! (`/ui`) that shows all of it to a person; customer look-ups go to an audit log.
//!
//! Listens on its own address (loopback by default), apart from proxied traffic: customer journeys
//! are personal data and must not be reachable through the proxy's public listener.

pub mod access;
pub mod api;
pub mod audit;
mod funnels;
mod lookup;
mod now;
mod page;
mod service;

pub use service::{admin_service, AdminApp};
