//! The admin API: what usher knows, for people and scrapers. `/metrics`, `/healthz`, customers by id,
//! the worst customers right now, and per-route and per-upstream figures.
//!
//! Listens on its own address (loopback by default), apart from proxied traffic: customer journeys
//! are personal data and must not be reachable through the proxy's public listener.

pub mod access;
pub mod api;
mod service;

pub use service::{admin_service, AdminApp};
