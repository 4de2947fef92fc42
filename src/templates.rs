//! Templates over one event: the body a webhook sends instead of a CloudEvents batch (a Zendesk
//! ticket, a Salesforce case) and the condition (`when`) that says which events a sink takes.
//!
//! Both are [MiniJinja](https://docs.rs/minijinja) (Jinja2 syntax), compiled when the configuration
//! loads, so `usher check` finds a syntax error, an unknown filter or a body that is not JSON before
//! any event does: every template is rendered once against [`sample_event`] at load. A JSON body is
//! always auto-escaped as JSON, whatever the file is called: `{{ data.customer }}` writes a JSON
//! string, quotes, backslashes, newlines and `{{` included, so a hostile customer id cannot break out
//! of its field. That is the difference from a plain text template (and from the `tojson` filter,
//! which a template author can forget): escaping is not left to each expression.
//!
//! A template sees the CloudEvent's attributes at the top level (`id`, `type`, `time`, `subject`,
//! `source`, `data`), the whole event as `event`, and `last_failure`: the newest step of
//! `data.journey` marked `failed` (a 5xx, no connection, a timeout; not a 4xx, which is the
//! request's own doing), none if there is none: where a customer got stuck.
//!
//! Not here: which events are raised (`engine`), or sending them (`events::sink::webhook`). This
//! module imports nothing of usher's: the event comes in as anything serde can serialize, so the
//! configuration can compile templates without knowing the events module.

use minijinja::{AutoEscape, Environment, UndefinedBehavior, Value};
use serde::Serialize;
use std::sync::OnceLock;

/// No body template is this large; a larger file is a mistake.
pub const MAX_TEMPLATE_BYTES: usize = 256 << 10;
/// Instructions one render or condition may run (MiniJinja's fuel): a ticket over a five-step
/// journey takes a few thousand; a loop over a hostile 20 KB path inside another would take
/// minutes of the sinks' thread, and is cut off here instead (the event is dead-lettered, or
/// `usher check` says why).
pub const TEMPLATE_FUEL: u64 = 200_000;
/// No helpdesk takes a body this large; a template that makes one is a mistake.
pub const MAX_BODY_BYTES: usize = 1 << 20;

/// A compiled body template.
pub struct BodyTemplate {
    name: String,
    source: String,
    json: bool,
    env: Environment<'static>,
}

impl std::fmt::Debug for BodyTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BodyTemplate")
            .field("name", &self.name)
            .field("json", &self.json)
            .field("source_bytes", &self.source.len())
            .finish()
    }
}

/// Two templates are the same when they would render the same bodies.
impl PartialEq for BodyTemplate {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name && self.json == other.json && self.source == other.source
    }
}

/// Whether a content type is JSON: `application/json` or any `+json` type, parameters aside.
pub fn is_json(content_type: &str) -> bool {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json" || essence.ends_with("+json")
}

fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    // A misspelt attribute renders as nothing (null in JSON) rather than failing every event:
    // events of different types carry different data, and one template may serve several.
    env.set_undefined_behavior(UndefinedBehavior::Lenient);
    env.set_fuel(Some(TEMPLATE_FUEL));
    env
}

impl BodyTemplate {
    /// Compiles `source` (named `name`, the file it came from, in messages) and renders it once
    /// against [`sample_event`]. `json`: the body is JSON, auto-escaped as JSON and checked to be
    /// JSON; otherwise the file's extension decides the escaping (`.html`: HTML, else none).
    pub fn compile(name: &str, source: String, json: bool) -> Result<BodyTemplate, String> {
        if source.len() > MAX_TEMPLATE_BYTES {
            return Err(format!(
                "larger than {MAX_TEMPLATE_BYTES} bytes: not a body template"
            ));
        }
        let mut env = environment();
        if json {
            env.set_auto_escape_callback(|_| AutoEscape::Json);
        }
        env.add_template_owned(name.to_string(), source.clone())
            .map_err(describe)?;
        let t = BodyTemplate {
            name: name.to_string(),
            source,
            json,
            env,
        };
        t.render(&sample_event())
            .map_err(|e| format!("rendering a sample event: {e}"))?;
        Ok(t)
    }

    /// The body for `event`; an error says why there is none (the template failed, or a JSON body
    /// is not JSON). Never panics.
    pub fn render<E: Serialize>(&self, event: &E) -> Result<String, String> {
        let tmpl = self.env.get_template(&self.name).map_err(describe)?;
        let body = tmpl.render(context(event)?).map_err(describe)?;
        if body.len() > MAX_BODY_BYTES {
            return Err(format!(
                "the body is {} bytes, more than {MAX_BODY_BYTES}",
                body.len()
            ));
        }
        if self.json {
            if let Err(e) = serde_json::from_str::<serde::de::IgnoredAny>(&body) {
                return Err(format!("the body is not JSON ({e}): {}", excerpt(&body)));
            }
        }
        Ok(body)
    }
}

/// A compiled `when`: an expression over the same context as a body template.
pub struct Condition {
    source: String,
    expr: minijinja::Expression<'static, 'static>,
}

impl std::fmt::Debug for Condition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Condition").field(&self.source).finish()
    }
}

impl PartialEq for Condition {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

/// Conditions need no per-sink settings, so they share one environment, which lets a compiled
/// expression borrow it for ever.
fn expression_env() -> &'static Environment<'static> {
    static ENV: OnceLock<Environment<'static>> = OnceLock::new();
    ENV.get_or_init(environment)
}

impl Condition {
    /// Compiles `source` and evaluates it once against [`sample_event`].
    pub fn compile(source: &str) -> Result<Condition, String> {
        let expr = expression_env()
            .compile_expression_owned(source.to_string())
            .map_err(describe)?;
        let c = Condition {
            source: source.to_string(),
            expr,
        };
        c.eval(&sample_event())
            .map_err(|e| format!("evaluating it on a sample event: {e}"))?;
        Ok(c)
    }

    /// Whether `event` meets the condition (Jinja truth: false, none, 0, "" and empty lists are not).
    pub fn eval<E: Serialize>(&self, event: &E) -> Result<bool, String> {
        Ok(self.expr.eval(context(event)?).map_err(describe)?.is_true())
    }
}

/// What a template sees of `event`; see the module's docs.
fn context<E: Serialize>(event: &E) -> Result<Value, String> {
    let mut top = match serde_json::to_value(event) {
        Ok(serde_json::Value::Object(m)) => m,
        Ok(_) => return Err("the event is not an object".into()),
        Err(e) => return Err(format!("cannot read the event: {e}")),
    };
    let last_failure = top
        .get("data")
        .and_then(|d| d.get("journey"))
        .and_then(|j| j.as_array())
        .and_then(|steps| {
            steps.iter().rev().find(|s| {
                s.get("marks")
                    .and_then(|m| m.as_array())
                    .is_some_and(|m| m.iter().any(|m| m == "failed"))
            })
        })
        .cloned()
        .unwrap_or(serde_json::Value::Null);
    let whole = serde_json::Value::Object(top.clone());
    top.insert("event".into(), whole);
    top.insert("last_failure".into(), last_failure);
    Ok(Value::from_serialize(serde_json::Value::Object(top)))
}

/// MiniJinja's error with its line, and what caused it.
fn describe(e: minijinja::Error) -> String {
    let mut s = e.to_string();
    let mut cause = std::error::Error::source(&e);
    while let Some(c) = cause {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cause = c.source();
    }
    s
}

fn excerpt(body: &str) -> String {
    const MAX: usize = 200;
    match body.char_indices().nth(MAX) {
        None => format!("{body:?}"),
        Some((cut, _)) => format!("{:?}... ({} bytes in all)", &body[..cut], body.len()),
    }
}

/// A gold customer's abandonment of the checkout after trouble, as usher raises it: what every
/// template and condition is tried on when the configuration loads, and what the tests render.
pub fn sample_event() -> serde_json::Value {
    serde_json::json!({
        "specversion": "1.0",
        "id": "0123456789abcdef0123456789abcdef",
        "source": "usher://edge-1",
        "type": "usher.customer.journey_abandoned",
        "time": "2026-01-02T03:04:05.000Z",
        "subject": "cust-42",
        "datacontenttype": "application/json",
        "data": {
            "customer": "cust-42",
            "tier": "gold",
            "score": 41.5,
            "state": "degraded",
            "follow_up": "phone within 1h",
            "journey": [
                {"at": "2026-01-02T02:30:00.000Z", "route": "shop", "method": "GET", "path": "/cart",
                 "status": 200, "latency_ms": 38.0, "upstream": "10.0.0.1:8080", "outcome": "ok",
                 "target_ms": 500.0, "marks": []},
                {"at": "2026-01-02T02:31:00.000Z", "route": "checkout", "method": "POST", "path": "/checkout",
                 "status": 200, "latency_ms": 52.0, "upstream": "10.0.0.2:8080", "outcome": "ok",
                 "target_ms": 300.0, "marks": []},
                {"at": "2026-01-02T02:32:00.000Z", "route": "pay", "method": "POST", "path": "/pay",
                 "status": 503, "latency_ms": 2950.0, "upstream": "10.0.0.3:8080", "outcome": "upstream_5xx",
                 "target_ms": 300.0, "marks": ["failed", "slow"]},
                {"at": "2026-01-02T02:32:20.000Z", "route": "pay", "method": "POST", "path": "/pay/card",
                 "status": 422, "latency_ms": 41.0, "upstream": "10.0.0.3:8080", "outcome": "client_error",
                 "target_ms": 300.0, "marks": []}
            ],
            "funnels": [{"name": "checkout", "furthest_step": "checkout"}],
            "funnel": "checkout",
            "furthest_step": "checkout",
            "furthest_step_index": 1,
            "steps": 4,
            "entered_at": "2026-01-02T02:30:00.000Z",
            "last_seen_in_funnel": "2026-01-02T02:32:00.000Z",
            "minutes_since_last_step": 32,
            "errors_in_funnel": 1,
            "frustrated_in_funnel": 1,
            "after_trouble": true
        }
    })
}

#[cfg(test)]
mod tests;
