//! Synthetic customers for the demo: people of different tiers, each walking a journey through the
//! shop with think time between steps and a pause before coming back, identified the ways real
//! sites identify them (header, cookie, query parameter, nothing at all). Most give up at the
//! first error; one tries again at once, as some people do (the struggle usher marks). The API
//! client never pauses: machines repeat themselves.

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::sync::watch;

#[derive(Debug, Clone, Copy)]
pub enum Ident {
    Header,
    Cookie,
    Query,
    Anonymous,
}

#[derive(Debug, Clone, Copy)]
pub struct Customer {
    pub id: &'static str,
    pub ident: Ident,
    /// Asserted through the trusted tier header (the demo's traffic comes from loopback, which the
    /// demo config trusts, as it would trust a CDN in front of the site).
    pub tier_header: Option<&'static str>,
    pub journey: &'static [(&'static str, &'static str)],
    /// Between two walks through the journey, in milliseconds: a person comes back later, not in
    /// a loop (so only real trouble reads as struggle).
    pub pause_ms: (u64, u64),
    /// Times a failed request is sent again, a second apart, before giving up.
    pub retries: u8,
}

const SHOPPER: &[(&str, &str)] = &[
    ("GET", "/"),
    ("GET", "/products/42"),
    ("POST", "/cart"),
    ("GET", "/checkout"),
    ("POST", "/checkout/pay"),
    ("GET", "/checkout/done"),
];
const BROWSER: &[(&str, &str)] = &[("GET", "/"), ("GET", "/products/7"), ("GET", "/products/9")];
const OPENER: &[(&str, &str)] = &[
    ("GET", "/account/open"),
    ("POST", "/account/open/details"),
    ("POST", "/account/open/confirm"),
];
/// The order export is slow on every origin (see `SLOW_EXPORT`): no upstream to route around,
/// so its user is the demo's degraded customer.
const API: &[(&str, &str)] = &[("GET", "/api/orders/export"), ("GET", "/api/profile")];

pub const CUSTOMERS: &[Customer] = &[
    Customer {
        id: "alice",
        ident: Ident::Header,
        tier_header: None,
        journey: SHOPPER,
        pause_ms: HUMAN,
        retries: 0,
    },
    Customer {
        id: "bob",
        ident: Ident::Cookie,
        tier_header: Some("gold"),
        journey: SHOPPER,
        pause_ms: HUMAN,
        retries: 0,
    },
    Customer {
        id: "carol",
        ident: Ident::Header,
        tier_header: None,
        journey: API,
        pause_ms: (0, 1),
        retries: 0,
    },
    Customer {
        id: "dave",
        ident: Ident::Query,
        tier_header: None,
        journey: OPENER,
        pause_ms: HUMAN,
        retries: 0,
    },
    Customer {
        id: "erin",
        ident: Ident::Cookie,
        tier_header: None,
        journey: SHOPPER,
        pause_ms: HUMAN,
        retries: 0,
    },
    Customer {
        id: "frank",
        ident: Ident::Header,
        tier_header: None,
        journey: SHOPPER,
        pause_ms: HUMAN,
        retries: 0,
    },
    Customer {
        id: "heidi",
        ident: Ident::Query,
        tier_header: None,
        journey: SHOPPER,
        pause_ms: HUMAN,
        retries: 0,
    },
    Customer {
        id: "",
        ident: Ident::Anonymous,
        tier_header: None,
        journey: BROWSER,
        pause_ms: HUMAN,
        retries: 0,
    },
    Customer {
        id: "ivan",
        ident: Ident::Header,
        tier_header: None,
        journey: SHOPPER,
        pause_ms: HUMAN,
        retries: 2,
    },
];

/// A person's pause between visits: long enough that three of the same page never fall within the
/// loop window (15 s) by the demo's pace alone.
const HUMAN: (u64, u64) = (8_000, 12_000);

/// More shoppers, so that the checkout sees as many customers as it would with fewer, faster ones:
/// a third of them gold.
const CROWD: &[&str] = &[
    "kai", "lena", "milo", "nora", "omar", "pia", "quinn", "rosa", "sami", "tess", "uma", "viktor",
];

/// Everyone the demo runs: the named customers and the crowd.
pub fn everyone() -> Vec<Customer> {
    let crowd = CROWD.iter().enumerate().map(|(i, id)| Customer {
        id,
        ident: if i % 2 == 0 {
            Ident::Header
        } else {
            Ident::Cookie
        },
        tier_header: (i % 3 == 0).then_some("gold"),
        journey: SHOPPER,
        pause_ms: HUMAN,
        retries: 0,
    });
    CUSTOMERS.iter().copied().chain(crowd).collect()
}

/// How long a customer who hit an error stays away before starting over.
const GIVE_UP_FOR: Duration = Duration::from_secs(30);

/// Runs every customer until `stop` turns true.
pub async fn run(proxy: SocketAddr, stop: watch::Receiver<bool>) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap_or_default();
    let tasks: Vec<_> = everyone()
        .into_iter()
        .enumerate()
        .map(|(i, c)| tokio::spawn(walk(client.clone(), proxy, c, i as u64, stop.clone())))
        .collect();
    for t in tasks {
        let _ = t.await;
    }
}

async fn walk(
    client: reqwest::Client,
    proxy: SocketAddr,
    c: Customer,
    seed: u64,
    mut stop: watch::Receiver<bool>,
) {
    let mut rng = SmallRng::seed_from_u64(seed);
    // Everyone starts at a different moment, as on a real site.
    let start = Duration::from_millis(rng.gen_range(0..=c.pause_ms.1.min(3_000)));
    tokio::select! {
        _ = tokio::time::sleep(start) => {}
        _ = stop.changed() => return,
    }
    loop {
        for (method, path) in c.journey {
            if *stop.borrow() {
                return;
            }
            let mut failed = send(&client, proxy, &c, method, path).await;
            for _ in 0..c.retries {
                if !failed {
                    break;
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = stop.changed() => return,
                }
                failed = send(&client, proxy, &c, method, path).await;
            }
            if failed {
                // A customer who hits an error gives up on this journey for a while, as people do:
                // the abandonment usher is there to catch.
                tokio::select! {
                    _ = tokio::time::sleep(GIVE_UP_FOR) => {}
                    _ = stop.changed() => return,
                }
                break;
            }
            let think = Duration::from_millis(rng.gen_range(150..700));
            tokio::select! {
                _ = tokio::time::sleep(think) => {}
                _ = stop.changed() => return,
            }
        }
        let pause = Duration::from_millis(rng.gen_range(c.pause_ms.0..c.pause_ms.1));
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = stop.changed() => return,
        }
    }
}

/// One request as `c` sends it; whether it failed (a 5xx or no answer).
async fn send(
    client: &reqwest::Client,
    proxy: SocketAddr,
    c: &Customer,
    method: &str,
    path: &str,
) -> bool {
    let url = match c.ident {
        Ident::Query => format!("http://{proxy}{path}?cid={}", c.id),
        _ => format!("http://{proxy}{path}"),
    };
    let mut req = client.request(method.parse().unwrap_or(reqwest::Method::GET), url);
    req = match c.ident {
        Ident::Header => req.header("x-customer-id", c.id),
        Ident::Cookie => req.header("cookie", format!("cid={}", c.id)),
        Ident::Query | Ident::Anonymous => req,
    };
    if let Some(t) = c.tier_header {
        req = req.header("x-customer-tier", t);
    }
    if method == "POST" {
        req = req.body("{}");
    }
    match req.send().await {
        Ok(resp) => {
            let server_error = resp.status().is_server_error();
            let _ = resp.bytes().await;
            server_error
        }
        Err(_) => true,
    }
}
