//! The event model: CloudEvents 1.0 in JSON (structured mode), usher's event types, and the data a
//! person needs to act on one.
//!
//! An event's id is derived from what happened (type, subject, time, and a discriminator such as
//! the funnel or the upstream), not drawn at random: a consumer that sees the same id twice is
//! seeing the same fact delivered twice (delivery is at least once), and can drop it. The id is the
//! first 128 bits of SHA-256 over `type \n subject \n time_ms (decimal) \n discriminator`, in hex:
//! the same on every platform, Rust release and usher version, so duplicates are recognised across
//! restarts and upgrades too.

use serde::{Deserialize, Serialize};

pub const SPEC_VERSION: &str = "1.0";

pub use crate::event_types::EventType;

/// A CloudEvents 1.0 event in structured JSON form.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CloudEvent {
    pub specversion: String,
    pub id: String,
    pub source: String,
    #[serde(rename = "type")]
    pub kind: EventType,
    /// RFC 3339.
    pub time: String,
    /// The customer id, the upstream address or the route name.
    pub subject: String,
    pub datacontenttype: String,
    pub data: serde_json::Value,
}

impl CloudEvent {
    /// `discriminator` separates distinct facts of the same type about the same subject at the
    /// same millisecond (a funnel name, an upstream).
    pub fn new(
        source: &str,
        kind: EventType,
        subject: &str,
        time_ms: u64,
        discriminator: &str,
        data: serde_json::Value,
    ) -> CloudEvent {
        CloudEvent {
            specversion: SPEC_VERSION.to_string(),
            id: event_id(kind, subject, time_ms, discriminator),
            source: source.to_string(),
            kind,
            time: crate::time::rfc3339(time_ms),
            subject: subject.to_string(),
            datacontenttype: "application/json".to_string(),
            data,
        }
    }

    pub fn to_json_line(&self) -> String {
        let mut s = serde_json::to_string(self).unwrap_or_default();
        s.push('\n');
        s
    }
}

/// 128 bits of SHA-256 of what happened, as 32 hex digits (see the module's docs).
pub fn event_id(kind: EventType, subject: &str, time_ms: u64, discriminator: &str) -> String {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    h.update(kind.as_str().as_bytes());
    h.update(b"\n");
    h.update(subject.as_bytes());
    h.update(b"\n");
    h.update(time_ms.to_string().as_bytes());
    h.update(b"\n");
    h.update(discriminator.as_bytes());
    h.finalize()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn is_a_cloudevent_in_json() {
        let e = CloudEvent::new(
            "usher://edge-1",
            EventType::CustomerDegraded,
            "alice",
            1_700_000_000_000,
            "",
            serde_json::json!({ "score": 42.0 }),
        );
        let v: serde_json::Value = serde_json::from_str(&e.to_json_line()).unwrap();
        assert_eq!(v["specversion"], "1.0");
        assert_eq!(v["type"], "usher.customer.degraded");
        assert_eq!(v["source"], "usher://edge-1");
        assert_eq!(v["subject"], "alice");
        assert_eq!(v["time"], "2023-11-14T22:13:20.000Z");
        assert_eq!(v["datacontenttype"], "application/json");
        assert_eq!(v["data"]["score"], 42.0);
        assert_eq!(v["id"].as_str().unwrap().len(), 32);
        let back: CloudEvent = serde_json::from_value(v).unwrap();
        assert_eq!(back, e);
    }

    #[test]
    fn ids_are_the_documented_hash() {
        // printf 'usher.customer.degraded\nalice\n1700000000000\ndegraded' | sha256sum | cut -c1-32
        assert_eq!(
            event_id(
                EventType::CustomerDegraded,
                "alice",
                1_700_000_000_000,
                "degraded"
            ),
            "9a5756c25de2086e432348320f995c68"
        );
    }

    #[test]
    fn ids_are_stable_for_the_same_fact_and_differ_otherwise() {
        let a = event_id(EventType::Rerouted, "bob", 5, "");
        assert_eq!(a, event_id(EventType::Rerouted, "bob", 5, ""));
        assert_ne!(a, event_id(EventType::Rerouted, "bob", 6, ""));
        assert_ne!(a, event_id(EventType::Rerouted, "rob", 5, ""));
        assert_ne!(a, event_id(EventType::RequestFailed, "bob", 5, ""));
        assert_ne!(a, event_id(EventType::Rerouted, "bob", 5, "checkout"));
        for t in EventType::ALL {
            assert_eq!(serde_json::to_value(t).unwrap(), t.as_str());
        }
    }
}
