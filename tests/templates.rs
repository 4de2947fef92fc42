//! Opening a helpdesk ticket: a real usher with the shipped Zendesk and Salesforce templates, a
//! checkout whose payment upstream fails, and real HTTP receivers standing in for the two APIs. Only
//! the gold customer who gave up after trouble gets a ticket; it says where they got stuck; a body
//! the template cannot make is dead-lettered, not lost.

mod common;

use common::*;
use std::time::Duration;
use usher::origin::Origin;

/// A gold customer's id that a naive template would let out of its JSON string (usher takes
/// printable ASCII without spaces as an id).
const HOSTILE: &str = r#"gold"},"priority":"low","x":"\back\slash{{7*7}}{%raw%}"#;

/// `id` as one path segment of the admin API.
fn escaped(id: &str) -> String {
    id.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn templates() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/templates")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gold_customer_who_gives_up_after_trouble_gets_a_zendesk_ticket_and_a_salesforce_case() {
    let dir = tempfile::tempdir().unwrap();
    let shop = Origin::start_local("shop").await.unwrap();
    let pay = Origin::start_local("pay").await.unwrap();
    pay.behavior.set_failure_ratio(1.0);
    let (zendesk, salesforce, fussy) = (
        Inbox::start().await,
        Inbox::start().await,
        Inbox::start().await,
    );
    std::fs::write(dir.path().join("zendesk.auth"), "Basic dXNoZXI6dG9rZW4=\n").unwrap();
    std::fs::write(dir.path().join("salesforce.auth"), "Bearer 00Dxx!token\n").unwrap();
    // Makes JSON of every event but the silver customer's.
    std::fs::write(
        dir.path().join("fussy.json.j2"),
        "{% if data.tier == \"silver\" %}not json{% else %}{\"who\": {{ subject }}}{% endif %}",
    )
    .unwrap();
    let t = templates();
    let text = format!(
        r#"
[identity]
tier = [{{ header = "x-tier", trusted_from = ["127.0.0.1/32"] }}]
[[tiers]]
name = "gold"
follow_up = "phone within 1h"
[[tiers]]
name = "silver"
[[tiers]]
name = "standard"
[events]
source = "usher://test"
spool_dir = "spool"
[[events.sinks]]
type = "webhook"
name = "zendesk"
url = "http://{zd}/api/v2/tickets.json"
template = "{zt}"
authorization_file = "zendesk.auth"
idempotency_header = "Idempotency-Key"
headers = {{ Accept = "application/json" }}
events = ["usher.customer.journey_abandoned"]
when = "data.after_trouble and data.tier == 'gold'"
[[events.sinks]]
type = "webhook"
name = "salesforce"
url = "http://{sf}/services/data/v62.0/sobjects/Case/"
template = "{st}"
authorization_file = "salesforce.auth"
events = ["usher.customer.journey_abandoned"]
when = "data.after_trouble and data.tier == 'gold'"
[[events.sinks]]
type = "webhook"
name = "fussy"
url = "http://{fu}/"
template = "fussy.json.j2"
events = ["usher.customer.journey_abandoned"]
[[pools]]
name = "shop"
upstreams = ["{shop}"]
[[pools]]
name = "pay"
upstreams = ["{pay}"]
[[routes]]
name = "pay"
match = {{ path_prefix = "/pay" }}
pool = "pay"
[[routes]]
name = "shop"
pool = "shop"
[[funnels]]
name = "checkout"
abandon_after = "1s"
steps = [
  {{ name = "cart", path = "/cart" }},
  {{ name = "checkout", path = "/checkout" }},
  {{ name = "pay", path = "/pay" }},
  {{ name = "done", path = "/done" }},
]
"#,
        zd = zendesk.addr,
        sf = salesforce.addr,
        fu = fussy.addr,
        zt = t.join("zendesk-ticket.json.j2").display(),
        st = t.join("salesforce-case.json.j2").display(),
        shop = shop.addr,
        pay = pay.addr,
    );
    let running = usher::server::spawn(config(&text, dir.path())).unwrap();
    let (proxy, admin) = (running.listen(), running.admin().unwrap());
    let c = client();
    // Three customers stop in the checkout: the gold one after the payment failed, a silver one
    // after the same failure, and a gold one who simply left.
    for (who, tier, steps) in [
        (HOSTILE, "gold", &["/cart", "/checkout", "/pay"][..]),
        ("silver-1", "silver", &["/cart", "/checkout", "/pay"][..]),
        ("gold-calm", "gold", &["/cart", "/checkout"][..]),
    ] {
        for p in steps {
            let (s, _) = get(
                &c,
                format!("http://{proxy}{p}"),
                &[("x-customer-id", who), ("x-tier", tier)],
            )
            .await;
            assert_eq!(s, if *p == "/pay" { 503 } else { 200 }, "{who} {p}");
        }
        recorded(&c, admin, &escaped(who), steps.len() as u64).await;
    }
    eventually(Duration::from_secs(15), "a ticket and a case", || {
        !zendesk.posted().is_empty() && !salesforce.posted().is_empty()
    })
    .await;
    eventually(
        Duration::from_secs(10),
        "the silver body dead-lettered",
        || {
            std::fs::read_to_string(dir.path().join("spool/fussy/dead.jsonl"))
                .is_ok_and(|t| t.contains("silver-1"))
        },
    )
    .await;
    eventually(Duration::from_secs(10), "the fussy sink's others", || {
        fussy.posted().len() == 2
    })
    .await;
    // What usher raised, to hold the bodies to.
    let events = json(&c, format!("http://{admin}/events?limit=100")).await;
    let abandoned: Vec<&serde_json::Value> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "usher.customer.journey_abandoned")
        .collect();
    assert_eq!(abandoned.len(), 3, "{events}");
    let gold = abandoned
        .iter()
        .find(|e| e["subject"] == HOSTILE)
        .expect("the gold customer's abandonment");
    let d = &gold["data"];
    assert_eq!(d["after_trouble"], true, "{gold}");
    let step = d["furthest_step"].as_str().unwrap();
    let step_no = d["furthest_step_index"].as_u64().unwrap() + 1;

    // Zendesk: one ticket, from the gold customer who had trouble only.
    let posted = zendesk.posted();
    assert_eq!(posted.len(), 1, "{posted:?}");
    let p = &posted[0];
    assert_eq!(p.path, "/api/v2/tickets.json");
    assert_eq!(p.headers["content-type"], "application/json");
    assert_eq!(p.headers["accept"], "application/json");
    assert_eq!(p.headers["authorization"], "Basic dXNoZXI6dG9rZW4=");
    assert_eq!(p.headers["idempotency-key"], gold["id"].as_str().unwrap());
    let v: serde_json::Value =
        serde_json::from_str(&p.body).unwrap_or_else(|e| panic!("{e}: {}", p.body));
    let ticket = &v["ticket"];
    assert_eq!(ticket["priority"], "high");
    assert_eq!(ticket["external_id"], gold["id"]);
    assert_eq!(
        ticket["subject"],
        format!("Customer {HOSTILE} (gold) stuck at {step} in checkout")
    );
    let body = ticket["comment"]["body"].as_str().unwrap();
    for said in [
        format!("Customer {HOSTILE} (gold tier) abandoned the checkout funnel"),
        format!("Where they got stuck: step {step_no} of 4, \"{step}\"."),
        "Last failing request: GET /pay answered 503".to_string(),
        format!("route pay, upstream {}", pay.addr),
        "Follow-up for the gold tier: phone within 1h.".to_string(),
    ] {
        assert!(body.contains(&said), "no {said:?} in:\n{body}");
    }

    // Salesforce: one case, the same customer.
    let posted = salesforce.posted();
    assert_eq!(posted.len(), 1, "{posted:?}");
    let p = &posted[0];
    assert_eq!(p.path, "/services/data/v62.0/sobjects/Case/");
    assert_eq!(p.headers["authorization"], "Bearer 00Dxx!token");
    assert!(p.headers.get("idempotency-key").is_none());
    let case: serde_json::Value =
        serde_json::from_str(&p.body).unwrap_or_else(|e| panic!("{e}: {}", p.body));
    assert_eq!(case["Priority"], "High");
    assert_eq!(case["Origin"], "Web");
    assert_eq!(case["Status"], "New");
    assert_eq!(case["SuppliedName"], HOSTILE);
    assert!(case["Description"]
        .as_str()
        .unwrap()
        .contains(&format!("Where they got stuck: step {step_no} of 4")));

    // The body the template could not make is counted dead-lettered, the others delivered.
    let (_, m) = get(&c, format!("http://{admin}/metrics"), &[]).await;
    let count = |sink: &str, outcome: &str| {
        sample(
            &m,
            "usher_events_total",
            &[
                ("sink", sink),
                ("type", "usher.customer.journey_abandoned"),
                ("outcome", outcome),
            ],
        )
        .unwrap_or(0.0)
    };
    assert_eq!(count("fussy", "dead_lettered"), 1.0, "{m}");
    assert_eq!(count("fussy", "delivered"), 2.0);
    assert_eq!(count("zendesk", "delivered"), 1.0);
    assert_eq!(count("zendesk", "queued"), 1.0, "the others never reach it");
    running.stop();
}
