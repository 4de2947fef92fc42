//! The side-by-side harness: usher against a bare Pingora proxy, nginx and HAProxy, on one machine,
//! in one run, with the proxy under test pinned to one core and everything else on the other.

pub mod contestants;
pub mod loadgen;
pub mod procs;
pub mod report;
pub mod tls;
