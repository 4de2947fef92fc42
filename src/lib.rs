//! usher: an experience-aware edge proxy on Pingora.
//!
//! It measures every customer's real request latency and errors inline, keeps a live experience score
//! per customer, and exposes who is suffering, where, right now.
//!
//! Layout follows the request's path through the proxy, one way only:
//! [`identity`] (who) -> [`routing`] (which route) -> [`upstream`] (which server) -> [`measure`] (what
//! happened) -> [`experience`] (what it did to the customer) and [`stats`]/[`metrics`] (what it did to
//! the aggregates). What a configuration decides is a [`generation`] (compiled once, swapped whole on
//! reload); what usher learns is the [`state`] (it lasts, keyed by names and addresses, and
//! [`snapshot`] carries it across restarts). [`engine`] wires them as plain Rust. Leaf modules hold
//! the shared vocabulary and import no other part of usher: [`ids`], [`names`], [`settings`],
//! [`defaults`], [`time`], [`matchers`], [`event_types`]. [`proxy`] is the only module that knows
//! Pingora's phases and is also the plugin API for embedding usher in another Pingora proxy; [`admin`]
//! serves what usher knows; [`transport`] caps and times the downstream connections under both;
//! [`server`] assembles a runnable server, [`process`] readying the process first; [`origin`] and [`demo`] are the
//! programmable origins and synthetic traffic behind `usher demo` and the tests; [`templates`] shape a
//! webhook's body per event (a helpdesk ticket) and decide which events a sink takes.

pub mod access_log;
pub mod admin;
pub mod config;
pub mod defaults;
pub mod demo;
pub mod engine;
pub mod event_types;
pub mod events;
pub mod experience;
pub mod files;
pub mod generation;
pub mod identity;
pub mod ids;
pub mod matchers;
pub mod measure;
pub mod metrics;
pub mod names;
pub mod origin;
pub mod privacy;
pub mod process;
pub mod protection;
pub mod proxy;
pub mod request_id;
pub mod routing;
pub mod server;
pub mod settings;
pub mod snapshot;
pub mod state;
pub mod stats;
pub mod tasks;
pub mod templates;
pub mod time;
pub mod tls;
pub mod transport;
pub mod upstream;
pub mod urlencoded;
pub mod views;

pub use config::{Config, ConfigError, ConfigErrors};
pub use engine::{Exchange, Generation, Usher};
pub use proxy::{UsherHooks, UsherProxy};
