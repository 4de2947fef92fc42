//! The shipped helpdesk templates render to the JSON those APIs document, whatever the customer's
//! id holds; a template that cannot make a body says why instead of panicking.

use super::*;
use serde_json::{json, Value as Json};

const ZENDESK: &str = include_str!("../../config/templates/zendesk-ticket.json.j2");
const SALESFORCE: &str = include_str!("../../config/templates/salesforce-case.json.j2");

fn zendesk() -> BodyTemplate {
    BodyTemplate::compile("zendesk-ticket.json.j2", ZENDESK.to_string(), true).unwrap()
}

fn salesforce() -> BodyTemplate {
    BodyTemplate::compile("salesforce-case.json.j2", SALESFORCE.to_string(), true).unwrap()
}

fn render(t: &BodyTemplate, e: &Json) -> Json {
    let body = t.render(e).unwrap();
    serde_json::from_str(&body).unwrap_or_else(|err| panic!("{err}: {body}"))
}

fn keys(v: &Json) -> Vec<&str> {
    v.as_object().unwrap().keys().map(|k| k.as_str()).collect()
}

/// The sample event, with `f` applied to it.
fn event(f: impl FnOnce(&mut Json)) -> Json {
    let mut e = sample_event();
    f(&mut e);
    e
}

#[test]
fn a_gold_customers_abandonment_after_trouble_is_a_zendesk_ticket_that_says_where() {
    let v = render(&zendesk(), &sample_event());
    assert_eq!(keys(&v), vec!["ticket"]);
    let t = &v["ticket"];
    // Ticket properties as the Tickets API names them (POST /api/v2/tickets.json).
    for k in keys(t) {
        assert!(
            [
                "subject",
                "comment",
                "priority",
                "type",
                "status",
                "external_id",
                "tags"
            ]
            .contains(&k),
            "{k} is not a field this template means to send"
        );
    }
    assert_eq!(keys(&t["comment"]), vec!["body", "public"]);
    assert_eq!(t["comment"]["public"], false);
    assert_eq!(t["priority"], "high", "gold is high");
    assert_eq!(t["type"], "problem");
    assert_eq!(t["status"], "new");
    assert_eq!(t["external_id"], "0123456789abcdef0123456789abcdef");
    assert_eq!(
        t["subject"],
        "Customer cust-42 (gold) stuck at checkout in checkout"
    );
    assert_eq!(
        t["tags"],
        json!([
            "usher",
            "journey_abandoned",
            "tier_gold",
            "funnel_checkout",
            "after_trouble"
        ])
    );
    let body = t["comment"]["body"].as_str().unwrap();
    for said in [
        "Customer cust-42 (gold tier) abandoned the checkout funnel 32 minutes after",
        "Where they got stuck: step 2 of 4, \"checkout\".",
        "1 failed and 1 frustrating",
        "Last failing request: POST /pay answered 503 (upstream_5xx) in 2950.0 ms, route pay, upstream 10.0.0.3:8080",
        "Follow-up for the gold tier: phone within 1h.",
        "Their last steps:\n  2026-01-02T02:30:00.000Z  GET /cart  200  ok",
        "usher event 0123456789abcdef0123456789abcdef (usher.customer.journey_abandoned)",
    ] {
        assert!(body.contains(said), "no {said:?} in:\n{body}");
    }
}

#[test]
fn a_gold_customers_abandonment_after_trouble_is_a_salesforce_case_that_says_where() {
    let v = render(&salesforce(), &sample_event());
    // Case fields as the object reference names them (POST /services/data/vXX.X/sobjects/Case/).
    assert_eq!(
        keys(&v),
        vec![
            "Subject",
            "Description",
            "Priority",
            "Origin",
            "Status",
            "SuppliedName"
        ]
    );
    assert_eq!(
        v["Subject"],
        "Customer cust-42 (gold) stuck at checkout in checkout"
    );
    assert_eq!(v["Priority"], "High");
    assert_eq!(v["Origin"], "Web");
    assert_eq!(v["Status"], "New");
    assert_eq!(v["SuppliedName"], "cust-42");
    let d = v["Description"].as_str().unwrap();
    assert!(
        d.contains("Where they got stuck: step 2 of 4, \"checkout\"."),
        "{d}"
    );
    assert!(d.contains("POST /pay answered 503 (upstream_5xx)"), "{d}");
}

#[test]
fn the_priority_follows_the_tier() {
    for (tier, zendesk_p, salesforce_p) in [
        ("platinum", "urgent", "High"),
        ("gold", "high", "High"),
        ("silver", "normal", "Medium"),
        ("standard", "low", "Low"),
    ] {
        let e = event(|e| e["data"]["tier"] = json!(tier));
        assert_eq!(render(&zendesk(), &e)["ticket"]["priority"], zendesk_p);
        assert_eq!(render(&salesforce(), &e)["Priority"], salesforce_p);
    }
}

#[test]
fn a_hostile_customer_id_stays_inside_its_strings() {
    let hostile = "x\", \"priority\": \"low\"}, \"evil\": {\"a\": \"\\ \n\r\t {{ 7 * 7 }} {% raw %} \u{2028} </script>";
    let e = event(|e| {
        e["subject"] = json!(hostile);
        e["data"]["customer"] = json!(hostile);
        e["data"]["journey"][2]["path"] = json!(format!("/pay/{hostile}"));
    });
    let z = render(&zendesk(), &e);
    assert_eq!(keys(&z), vec!["ticket"]);
    assert_eq!(z["ticket"]["priority"], "high");
    let subject = z["ticket"]["subject"].as_str().unwrap();
    assert!(
        subject.starts_with(&format!("Customer {}", &hostile[..20])),
        "{subject}"
    );
    let body = z["ticket"]["comment"]["body"].as_str().unwrap();
    assert!(body.contains(hostile), "the id verbatim: {body}");
    assert!(
        body.contains("{{ 7 * 7 }}") && !body.contains("49"),
        "{body}"
    );
    assert!(body.contains(&format!("POST /pay/{hostile} answered 503")));
    let s = render(&salesforce(), &e);
    assert_eq!(s["Priority"], "High");
    assert_eq!(
        s["SuppliedName"].as_str().unwrap(),
        hostile.chars().take(80).collect::<String>()
    );
    assert!(s["Description"].as_str().unwrap().contains(hostile));
}

#[test]
fn a_json_body_is_escaped_whatever_the_file_is_called() {
    let t = BodyTemplate::compile("t.txt", "{\"who\": {{ subject }}}".into(), true).unwrap();
    let e = event(|e| e["subject"] = json!("a\"b\\c\nd"));
    assert_eq!(render(&t, &e)["who"], "a\"b\\c\nd");
    // Not JSON: plain text, as written.
    let t = BodyTemplate::compile("t.txt", "Hello {{ subject }}".into(), false).unwrap();
    assert_eq!(t.render(&e).unwrap(), "Hello a\"b\\c\nd");
}

#[test]
fn events_without_a_journey_or_data_still_make_valid_tickets() {
    let quiet = event(|e| {
        e["data"]["journey"] = json!([]);
        e["data"]["after_trouble"] = json!(false);
        e["data"]["follow_up"] = Json::Null;
    });
    let body = render(&zendesk(), &quiet)["ticket"]["comment"]["body"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        body.contains("No failing request among their last steps."),
        "{body}"
    );
    assert!(
        body.contains("No failed or slow requests in the funnel."),
        "{body}"
    );
    assert!(
        body.contains("Follow-up for the gold tier: none set."),
        "{body}"
    );
    assert!(!body.contains("Their last steps"), "{body}");
    let bare =
        json!({"id": "1", "type": "usher.upstream.ejected", "subject": "10.0.0.1:80", "data": {}});
    render(&zendesk(), &bare);
    render(&salesforce(), &bare);
}

#[test]
fn a_body_that_is_not_json_is_an_error_not_a_request() {
    // Caught when the configuration loads: the sample event renders to something that is not JSON.
    let e = BodyTemplate::compile("t.json.j2", "{\"x\": {{ subject | safe }}}".into(), true)
        .unwrap_err();
    assert!(e.contains("not JSON"), "{e}");
    // Or only for some events, at run time.
    let t = BodyTemplate::compile(
        "t.json.j2",
        "{% if subject == \"boom\" %}oops{% else %}{}{% endif %}".into(),
        true,
    )
    .unwrap();
    let err = t
        .render(&event(|e| e["subject"] = json!("boom")))
        .unwrap_err();
    assert!(err.contains("not JSON") && err.contains("oops"), "{err}");
}

#[test]
fn template_mistakes_say_where() {
    let e =
        BodyTemplate::compile("t.json.j2", "{\n\"x\": {{ subject }\n}".into(), true).unwrap_err();
    assert!(
        e.contains("syntax error") && e.contains("(in t.json.j2:2)"),
        "{e}"
    );
    let e = BodyTemplate::compile("t.json.j2", "{{ subject | nosuchfilter }}".into(), true)
        .unwrap_err();
    assert!(e.contains("nosuchfilter"), "{e}");
    let big = "x".repeat(MAX_TEMPLATE_BYTES + 1);
    assert!(BodyTemplate::compile("t", big, false).is_err());
}

#[test]
fn conditions_pick_the_events_a_helpdesk_wants() {
    let c =
        Condition::compile("data.after_trouble and data.tier in [\"gold\", \"platinum\"]").unwrap();
    assert!(c.eval(&sample_event()).unwrap());
    assert!(!c
        .eval(&event(|e| e["data"]["tier"] = json!("silver")))
        .unwrap());
    assert!(!c
        .eval(&event(|e| e["data"]["after_trouble"] = json!(false)))
        .unwrap());
    assert!(!c
        .eval(&json!({"type": "usher.upstream.ejected", "data": {}}))
        .unwrap());
    let c = Condition::compile("last_failure.status >= 500").unwrap();
    assert!(c.eval(&sample_event()).unwrap());
    assert!(Condition::compile("data.tier ==").is_err());
    assert_eq!(
        Condition::compile("a == 1").unwrap(),
        Condition::compile("a == 1").unwrap()
    );
}

#[test]
fn content_types_that_are_json() {
    assert!(is_json("application/json"));
    assert!(is_json("Application/JSON; charset=utf-8"));
    assert!(is_json("application/vnd.api+json"));
    assert!(!is_json("text/plain"));
    assert!(!is_json("application/jsonl"));
}

#[test]
fn a_template_that_would_run_for_minutes_or_grow_without_end_is_cut_off() {
    // Quadratic in a hostile 20 KB path: cut off by the fuel, at run time.
    let t = BodyTemplate::compile(
        "t.json.j2",
        "{\"a\": {% for c in data.path %}{% for d in data.path %}{% endfor %}{% endfor %}1}".into(),
        true,
    )
    .unwrap();
    let started = std::time::Instant::now();
    let err = t
        .render(&event(|e| e["data"]["path"] = json!("/".repeat(20_000))))
        .unwrap_err();
    assert!(err.contains("fuel"), "{err}");
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    // And at load, where the sample event is enough to run out.
    let e = BodyTemplate::compile(
        "t.json.j2",
        "{\"a\": {% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}1}"
            .into(),
        true,
    )
    .unwrap_err();
    assert!(e.contains("fuel"), "{e}");
    // A body past the bound is an error, not a request.
    let big = BodyTemplate::compile("t.txt", "{{ 'x' * 2000000 }}".into(), false).unwrap_err();
    assert!(big.contains("more than"), "{big}");
}
