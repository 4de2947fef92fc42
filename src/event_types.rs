//! usher's event types: the vocabulary that the configuration (which types to limit), the events
//! module (which raises them) and the counters share. A leaf module: it imports nothing of usher's.

use serde::{Deserialize, Serialize};

/// usher's event types. The string forms are the CloudEvents `type` attribute.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EventType {
    #[serde(rename = "usher.customer.degraded")]
    CustomerDegraded,
    #[serde(rename = "usher.customer.recovered")]
    CustomerRecovered,
    #[serde(rename = "usher.customer.request_failed")]
    RequestFailed,
    #[serde(rename = "usher.customer.journey_abandoned")]
    JourneyAbandoned,
    #[serde(rename = "usher.customer.rerouted")]
    Rerouted,
    #[serde(rename = "usher.customer.struggling")]
    Struggling,
    #[serde(rename = "usher.upstream.ejected")]
    UpstreamEjected,
    #[serde(rename = "usher.upstream.restored")]
    UpstreamRestored,
    #[serde(rename = "usher.route.slo_burn")]
    SloBurn,
    #[serde(rename = "usher.events.budget_exhausted")]
    BudgetExhausted,
}

impl EventType {
    pub const ALL: [EventType; 10] = [
        EventType::CustomerDegraded,
        EventType::CustomerRecovered,
        EventType::RequestFailed,
        EventType::JourneyAbandoned,
        EventType::Rerouted,
        EventType::Struggling,
        EventType::UpstreamEjected,
        EventType::UpstreamRestored,
        EventType::SloBurn,
        EventType::BudgetExhausted,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventType::CustomerDegraded => "usher.customer.degraded",
            EventType::CustomerRecovered => "usher.customer.recovered",
            EventType::RequestFailed => "usher.customer.request_failed",
            EventType::JourneyAbandoned => "usher.customer.journey_abandoned",
            EventType::Rerouted => "usher.customer.rerouted",
            EventType::Struggling => "usher.customer.struggling",
            EventType::UpstreamEjected => "usher.upstream.ejected",
            EventType::UpstreamRestored => "usher.upstream.restored",
            EventType::SloBurn => "usher.route.slo_burn",
            EventType::BudgetExhausted => "usher.events.budget_exhausted",
        }
    }

    /// The type named `name` (its CloudEvents `type`).
    pub fn named(name: &str) -> Option<EventType> {
        EventType::ALL.into_iter().find(|t| t.as_str() == name)
    }

    /// Events about a customer are subject to the per-customer cooldown.
    pub fn about_customer(self) -> bool {
        matches!(
            self,
            EventType::CustomerDegraded
                | EventType::CustomerRecovered
                | EventType::RequestFailed
                | EventType::JourneyAbandoned
                | EventType::Rerouted
                | EventType::Struggling
        )
    }
}
