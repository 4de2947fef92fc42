//! The operator's kit (`config/prometheus/`, `config/grafana/`, `config/systemd/`) held to usher.
//!
//! A dashboard or an alert that names a metric usher does not export shows an empty panel or never
//! fires, and nothing says so. So every PromQL expression of the dashboard and the rules is read
//! here, and each metric it names must be one that a real usher exported to this test (or a
//! recording rule of the rules file). The names come from the live `/metrics` of two real ushers
//! with origins, traffic, an ejection, a failed host name look-up and a restart from a snapshot,
//! rather than from the constants in `src/metrics.rs`: the exposition is what Prometheus sees,
//! with the `_bucket`/`_sum`/`_count` series of histograms and the names other modules register
//! (`usher_events_total`), and a name that is declared but never exported by the code fails here
//! too. A labelled family appears only once it has a sample, so the traffic gives every family the
//! kit uses one; a kit name that is declared in `src/metrics.rs` but missing from the exposition
//! is reported as a gap in this test's traffic, not as a typo.
//!
//! promtool (`promtool check rules`, `promtool test rules`, and a syntax check of every dashboard
//! expression) runs when it is installed, and is required when `CI` is set; `systemd-analyze
//! verify` checks the unit when the machine has it.

mod common;

use common::*;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use usher::origin::Origin;

const RULES: &str = "config/prometheus/usher-rules.yml";
const RULE_TESTS: &str = "config/prometheus/usher-rules.test.yml";
const DASHBOARD: &str = "config/grafana/usher-dashboard.json";
const UNIT: &str = "config/systemd/usher.service";
const EXAMPLE: &str = "config/usher.example.toml";

fn repo(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(p)
}

fn read(p: &str) -> String {
    std::fs::read_to_string(repo(p)).unwrap_or_else(|e| panic!("{p}: {e}"))
}

// ---------------------------------------------------------------------------------------------
// PromQL: the metric names an expression uses.

/// PromQL's functions and aggregation operators: an identifier followed by `(` must be one.
const FUNCTIONS: &[&str] = &[
    "abs",
    "absent",
    "absent_over_time",
    "acos",
    "acosh",
    "asin",
    "asinh",
    "atan",
    "atanh",
    "avg",
    "avg_over_time",
    "bottomk",
    "ceil",
    "changes",
    "clamp",
    "clamp_max",
    "clamp_min",
    "cos",
    "cosh",
    "count",
    "count_over_time",
    "count_values",
    "day_of_month",
    "day_of_week",
    "day_of_year",
    "days_in_month",
    "deg",
    "delta",
    "deriv",
    "double_exponential_smoothing",
    "end",
    "exp",
    "floor",
    "group",
    "histogram_avg",
    "histogram_count",
    "histogram_fraction",
    "histogram_quantile",
    "histogram_stddev",
    "histogram_stdvar",
    "histogram_sum",
    "holt_winters",
    "hour",
    "idelta",
    "increase",
    "irate",
    "label_join",
    "label_replace",
    "last_over_time",
    "limit_ratio",
    "limitk",
    "ln",
    "log10",
    "log2",
    "mad_over_time",
    "max",
    "max_over_time",
    "min",
    "min_over_time",
    "minute",
    "month",
    "pi",
    "predict_linear",
    "present_over_time",
    "quantile",
    "quantile_over_time",
    "rad",
    "rate",
    "resets",
    "round",
    "scalar",
    "sgn",
    "sin",
    "sinh",
    "sort",
    "sort_by_label",
    "sort_by_label_desc",
    "sort_desc",
    "sqrt",
    "start",
    "stddev",
    "stddev_over_time",
    "stdvar",
    "stdvar_over_time",
    "sum",
    "sum_over_time",
    "tan",
    "tanh",
    "time",
    "timestamp",
    "topk",
    "vector",
    "year",
];

/// Keywords; those in [`LABEL_LISTS`] are followed by a parenthesised list of label names.
const KEYWORDS: &[&str] = &[
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "atan2",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "inf",
    "nan",
];
const LABEL_LISTS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];
/// Aggregation operators, which may be followed by `by (...)` before their `(`.
const AGGREGATORS: &[&str] = &[
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
];

fn ident_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_' || c == ':'
}

fn ident_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

/// Index just past the bracket closing the one at `open` (`(`, `{` or `[`), skipping strings.
fn past_closing(s: &[char], open: usize) -> usize {
    let (o, c) = match s[open] {
        '(' => ('(', ')'),
        '{' => ('{', '}'),
        _ => ('[', ']'),
    };
    let mut depth = 0;
    let mut i = open;
    while i < s.len() {
        match s[i] {
            '"' | '\'' | '`' => i = past_string(s, i) - 1,
            x if x == o => depth += 1,
            x if x == c => {
                depth -= 1;
                if depth == 0 {
                    return i + 1;
                }
            }
            _ => {}
        }
        i += 1;
    }
    s.len()
}

fn past_string(s: &[char], open: usize) -> usize {
    let q = s[open];
    let mut i = open + 1;
    while i < s.len() && s[i] != q {
        if s[i] == '\\' && q != '`' {
            i += 1;
        }
        i += 1;
    }
    i + 1
}

/// The metric names (and recording rule names) that a PromQL expression selects, or what is
/// wrong with it: an identifier that is neither a function, a keyword nor inside a label matcher,
/// a range or a label list is a metric name. Grafana variables (`$route`, `[$__rate_interval]`)
/// are skipped.
fn promql_metrics(expr: &str) -> Result<Vec<String>, String> {
    let s: Vec<char> = expr.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < s.len() {
        let c = s[i];
        if c == '"' || c == '\'' || c == '`' {
            i = past_string(&s, i);
        } else if c == '{' || c == '[' {
            i = past_closing(&s, i);
        } else if c == '#' {
            // A comment runs to the end of the line.
            while i < s.len() && s[i] != '\n' {
                i += 1;
            }
        } else if c == '$' {
            i += 1;
            if i < s.len() && s[i] == '{' {
                i = past_closing(&s, i);
            } else {
                while i < s.len() && ident_char(s[i]) {
                    i += 1;
                }
            }
        } else if c.is_ascii_digit() || (c == '.' && s.get(i + 1).is_some_and(char::is_ascii_digit))
        {
            // A number or a duration (5m, 1e3, 0x1f).
            while i < s.len() && (s[i].is_ascii_alphanumeric() || s[i] == '.' || s[i] == '_') {
                i += 1;
            }
        } else if ident_start(c) {
            let start = i;
            while i < s.len() && ident_char(s[i]) {
                i += 1;
            }
            let word: String = s[start..i].iter().collect();
            let mut j = i;
            while j < s.len() && s[j].is_whitespace() {
                j += 1;
            }
            let called = s.get(j) == Some(&'(');
            let lower = word.to_ascii_lowercase();
            if LABEL_LISTS.contains(&lower.as_str()) {
                if called {
                    i = past_closing(&s, j);
                }
            } else if KEYWORDS.contains(&lower.as_str()) || AGGREGATORS.contains(&word.as_str()) {
            } else if called {
                if !FUNCTIONS.contains(&word.as_str()) {
                    return Err(format!("`{word}(` is not a PromQL function"));
                }
            } else {
                out.push(word);
            }
        } else {
            i += 1;
        }
    }
    Ok(out)
}

/// A Grafana variable query: `label_values(selector, label)` selects with its first argument
/// only; anything else is PromQL.
fn variable_query_promql(q: &str) -> Option<String> {
    let q = q.trim();
    let Some(args) = q
        .strip_prefix("label_values(")
        .and_then(|r| r.strip_suffix(')'))
    else {
        return Some(q.to_string());
    };
    // The label is the last argument; `label_values(label)` names no metric.
    let chars: Vec<char> = args.chars().collect();
    let (mut depth, mut i, mut last_comma) = (0, 0, None);
    while i < chars.len() {
        match chars[i] {
            '"' | '\'' | '`' => i = past_string(&chars, i) - 1,
            '(' | '{' | '[' => depth += 1,
            ')' | '}' | ']' => depth -= 1,
            ',' if depth == 0 => last_comma = Some(i),
            _ => {}
        }
        i += 1;
    }
    last_comma.map(|c| chars[..c].iter().collect())
}

// ---------------------------------------------------------------------------------------------
// The kit's files, read with plain string handling (no YAML crate: `expr:`, `record:` and
// `alert:` keys, each a plain, quoted or block scalar).

#[derive(Debug)]
struct Rule {
    /// `record` or `alert`.
    kind: &'static str,
    name: String,
    expr: String,
    /// The text of the rule's entry, for finding its labels and annotations.
    text: String,
}

fn yaml_scalar(lines: &[&str], at: usize, key: &str) -> String {
    let line = lines[at];
    let indent = line.len() - line.trim_start().len();
    let rest = line.trim_start().trim_start_matches("- ");
    let value = rest[key.len() + 1..].trim();
    if value.starts_with('|') || value.starts_with('>') {
        let body: Vec<&str> = lines[at + 1..]
            .iter()
            .take_while(|l| l.trim().is_empty() || l.len() - l.trim_start().len() > indent)
            .map(|l| l.trim())
            .collect();
        let sep = if value.starts_with('|') { "\n" } else { " " };
        return body.join(sep).trim().to_string();
    }
    if let Some(v) = value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')) {
        return v.replace("''", "'");
    }
    if let Some(v) = value.strip_prefix('"').and_then(|v| v.strip_suffix('"')) {
        return v.replace("\\\"", "\"").replace("\\\\", "\\");
    }
    value.to_string()
}

fn parse_rules(text: &str) -> Vec<Rule> {
    let lines: Vec<&str> = text.lines().collect();
    let mut rules: Vec<Rule> = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let t = line.trim_start();
        for (kind, key) in [("record", "record:"), ("alert", "alert:")] {
            if t.starts_with(&format!("- {key}")) {
                rules.push(Rule {
                    kind,
                    name: yaml_scalar(&lines, i, &key[..key.len() - 1]),
                    expr: String::new(),
                    text: String::new(),
                });
            }
        }
        if let Some(r) = rules.last_mut() {
            if t.starts_with("expr:") || t.starts_with("- expr:") {
                assert!(r.expr.is_empty(), "{}: two exprs", r.name);
                r.expr = yaml_scalar(&lines, i, "expr");
            }
            r.text.push_str(line);
            r.text.push('\n');
        }
    }
    for r in &rules {
        assert!(!r.expr.is_empty(), "{} {} has no expr", r.kind, r.name);
    }
    rules
}

fn dashboard() -> serde_json::Value {
    serde_json::from_str(&read(DASHBOARD)).unwrap_or_else(|e| panic!("{DASHBOARD}: {e}"))
}

/// Every panel, those inside rows included.
fn panels(d: &serde_json::Value) -> Vec<&serde_json::Value> {
    fn walk<'a>(ps: &'a serde_json::Value, out: &mut Vec<&'a serde_json::Value>) {
        for p in ps.as_array().into_iter().flatten() {
            out.push(p);
            walk(&p["panels"], out);
        }
    }
    let mut out = Vec::new();
    walk(&d["panels"], &mut out);
    out
}

/// (where, PromQL) for every query of the dashboard: panel targets and variable queries.
fn dashboard_queries(d: &serde_json::Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for p in panels(d) {
        for (i, t) in p["targets"].as_array().into_iter().flatten().enumerate() {
            let expr = t["expr"].as_str().unwrap_or_else(|| {
                panic!("panel {:?} target {i} has no expr", p["title"].as_str())
            });
            out.push((
                format!("panel {:?}", p["title"].as_str().unwrap_or("")),
                expr.to_string(),
            ));
        }
    }
    for v in d["templating"]["list"].as_array().into_iter().flatten() {
        let name = v["name"].as_str().unwrap_or("");
        let q = match &v["query"] {
            serde_json::Value::String(s) => s.clone(),
            q => q["query"].as_str().unwrap_or("").to_string(),
        };
        if v["type"] == "query" {
            if let Some(promql) = variable_query_promql(&q) {
                out.push((format!("variable ${name}"), promql));
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// The exposition.

/// Every series name an exposition holds: each `# TYPE` family with the names its type implies,
/// and every sample's name.
fn exported_names(exposition: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in exposition.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            let (Some(name), Some(kind)) = (parts.next(), parts.next()) else {
                continue;
            };
            match kind {
                "histogram" => {
                    for suffix in ["_bucket", "_sum", "_count"] {
                        names.insert(format!("{name}{suffix}"));
                    }
                }
                "summary" => {
                    names.insert(name.to_string());
                    names.insert(format!("{name}_sum"));
                    names.insert(format!("{name}_count"));
                }
                _ => {
                    names.insert(name.to_string());
                }
            }
        } else if !line.starts_with('#') && !line.trim().is_empty() {
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            names.insert(line[..end].to_string());
        }
    }
    names
}

/// The metric names declared in `src/metrics.rs`'s `names` module (for telling a typo from a
/// family this test did not make usher export).
fn declared_names() -> BTreeSet<String> {
    let src = read("src/metrics.rs");
    let start = src
        .find("pub mod names {")
        .expect("src/metrics.rs has `pub mod names`");
    let block = &src[start..start + src[start..].find("\n}").unwrap()];
    block
        .split('"')
        .skip(1)
        .step_by(2)
        .filter(|s| s.starts_with("usher_"))
        .map(String::from)
        .collect()
}

/// What the kit names that is neither exported nor recorded, with why.
fn unknown_names(
    queries: &[(String, String)],
    exported: &BTreeSet<String>,
    recorded: &BTreeSet<String>,
) -> Vec<String> {
    let declared = declared_names();
    let mut problems = Vec::new();
    for (at, expr) in queries {
        match promql_metrics(expr) {
            Err(e) => problems.push(format!("{at}: {e} in `{expr}`")),
            Ok(names) => {
                if names.is_empty() {
                    problems.push(format!("{at}: names no metric: `{expr}`"));
                }
                for n in names {
                    if exported.contains(&n) || recorded.contains(&n) {
                        continue;
                    }
                    let base = ["_bucket", "_sum", "_count"]
                        .iter()
                        .find_map(|s| n.strip_suffix(s))
                        .unwrap_or(&n);
                    if declared.contains(&n) || declared.contains(base) {
                        problems.push(format!(
                            "{at}: {n} is declared in src/metrics.rs but this test's usher did not export it: give it a sample in kit_names_only_metrics_usher_exports"
                        ));
                    } else {
                        problems.push(format!(
                            "{at}: {n} is neither a metric usher exports nor a recording rule of {RULES}"
                        ));
                    }
                }
            }
        }
    }
    problems
}

// ---------------------------------------------------------------------------------------------
// The example's routes and their Apdex rules.

/// (name, target, path prefix) of each route of the example config.
fn example_routes() -> Vec<(String, Duration, String)> {
    let v: toml::Value = toml::from_str(&read(EXAMPLE)).unwrap();
    v["routes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let target = r
                .get("target")
                .and_then(|t| t.as_str())
                .map(|t| humantime::parse_duration(t).unwrap())
                .unwrap_or(usher::defaults::TARGET);
            let prefix = r
                .get("match")
                .and_then(|m| m.get("path_prefix"))
                .and_then(|p| p.as_str())
                .unwrap_or("/");
            (
                r["name"].as_str().unwrap().to_string(),
                target,
                prefix.to_string(),
            )
        })
        .collect()
}

/// How usher writes a bucket boundary of `d` seconds in `le` (the prometheus crate's f64 Display).
fn le_of(d: Duration) -> String {
    (d.as_nanos() as f64 / 1e9).to_string()
}

/// The values an `le` matcher accepts: `le="0.3"`, or `le=~"2|2\\.0"` read as literal alternatives.
fn le_values(matcher: &str) -> Vec<String> {
    if let Some(v) = matcher.strip_prefix("le=\"") {
        return vec![v.trim_end_matches('"').to_string()];
    }
    let v = matcher.strip_prefix("le=~\"").expect("an le matcher");
    v.trim_end_matches('"')
        .replace("\\\\.", ".")
        .replace("\\.", ".")
        .split('|')
        .map(String::from)
        .collect()
}

/// Per route: the `le` values of each bucket selector of its Apdex rule (satisfied, tolerated).
fn apdex_rules(rules: &[Rule]) -> BTreeMap<String, Vec<Vec<String>>> {
    let mut out = BTreeMap::new();
    for r in rules
        .iter()
        .filter(|r| r.name == "route:usher_apdex:ratio5m")
    {
        let mut routes = BTreeSet::new();
        let mut les = Vec::new();
        for sel in r.expr.split("usher_request_duration_seconds_").skip(1) {
            // `bucket{route="checkout", le="0.3"}[5m]` or `count{route="checkout"}[5m]`.
            let Some(matchers) = sel
                .split_once('{')
                .and_then(|(_, m)| m.split_once('}'))
                .map(|(m, _)| m)
            else {
                continue;
            };
            for m in matchers.split(',').map(str::trim) {
                if let Some(route) = m.strip_prefix("route=\"") {
                    routes.insert(route.trim_end_matches('"').to_string());
                } else if m.starts_with("le=") {
                    les.push(le_values(m));
                }
            }
        }
        assert_eq!(routes.len(), 1, "one route per Apdex rule: {}", r.expr);
        out.insert(routes.into_iter().next().unwrap(), les);
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Tests.

#[test]
fn the_metric_finder_finds_metrics_and_misspellings() {
    let m = |e: &str| promql_metrics(e).unwrap();
    assert_eq!(
        m(r#"sum by (job, route) (rate(usher_requests_total{route!="none", outcome=~"a|b"}[5m]))"#),
        ["usher_requests_total"]
    );
    assert_eq!(
        m("usher_customers_degraded / clamp_min(usher_customers_tracked, 1) > 0.05 and on (job) x:y:z"),
        ["usher_customers_degraded", "usher_customers_tracked", "x:y:z"]
    );
    assert_eq!(
        m(
            r#"histogram_quantile(0.99, sum by (route, le) (rate(usher_request_duration_seconds_bucket{job=~"$job"}[$__rate_interval])))"#
        ),
        ["usher_request_duration_seconds_bucket"]
    );
    assert_eq!(
        m("a * on (route) group_left (target) b offset 5m unless bool c"),
        ["a", "b", "c"]
    );
    assert_eq!(m("sum(rate(x[5m])) without (instance) * 1e3"), ["x"]);
    assert!(promql_metrics("rat(usher_requests_total[5m])").is_err());
    assert_eq!(
        variable_query_promql(r#"label_values(usher_requests_total{job=~"$job"}, route)"#)
            .as_deref(),
        Some(r#"usher_requests_total{job=~"$job"}"#)
    );
    assert_eq!(variable_query_promql("label_values(job)"), None);

    // A misspelt metric is caught, and told apart from a family the test did not exercise.
    let exported: BTreeSet<String> = ["usher_requests_total".to_string()].into();
    let q = |e: &str| vec![("panel".to_string(), e.to_string())];
    assert!(unknown_names(
        &q("rate(usher_requests_total[5m])"),
        &exported,
        &BTreeSet::new()
    )
    .is_empty());
    let typo = unknown_names(
        &q("rate(usher_request_total[5m])"),
        &exported,
        &BTreeSet::new(),
    );
    assert!(
        typo[0].contains("neither a metric usher exports"),
        "{typo:?}"
    );
    let gap = unknown_names(&q("usher_pool_panic"), &exported, &BTreeSet::new());
    assert!(gap[0].contains("declared in src/metrics.rs"), "{gap:?}");
}

/// Starts usher with the example config's routes and targets, origins, gold customers through a
/// trusted tier header, an upstream that refuses connections, a jsonl sink, a failed look-up of a
/// pool's host name, and a restart from the snapshot; collects every name the two ushers export
/// and holds the dashboard and the rules to them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kit_names_only_metrics_usher_exports() {
    let dir = tempfile::tempdir().unwrap();
    let origins = [
        Origin::start_local("a").await.unwrap(),
        Origin::start_local("b").await.unwrap(),
        Origin::start_local("c").await.unwrap(),
    ];
    let c_addr = origins[2].addr;
    let routes: String = example_routes()
        .iter()
        .map(|(name, target, prefix)| {
            format!(
                "[[routes]]\nname = \"{name}\"\nmatch = {{ path_prefix = \"{prefix}\" }}\npool = \"web\"\ncritical = {}\ntarget = \"{}ms\"\n",
                name == "checkout",
                target.as_millis()
            )
        })
        .collect();
    let dead = dead_addr();
    // Each usher on its own ports: the first one's listeners may linger a moment after it stopped.
    let text = |listen: std::net::SocketAddr, admin: std::net::SocketAddr| {
        format!(
            r#"[server]
listen = ["{listen}"]
admin = "{admin}"
grace_period = "1s"
[identity]
tier = [{{ header = "x-customer-tier", trusted_from = ["127.0.0.1/32"] }}]
[[tiers]]
name = "gold"
protected = true
notify_failures = true
follow_up = "phone within 1h"
[[tiers]]
name = "standard"
[state]
dir = "state"
[[events.sinks]]
type = "jsonl"
path = "events.jsonl"
[[pools]]
name = "web"
upstreams = ["{a}", "{b}", "origin-c.internal:{c_port}", "{dead}"]
resolve_interval = "1h"
connect_timeout = "200ms"
{routes}"#,
            a = origins[0].addr,
            b = origins[1].addr,
            c_port = c_addr.port(),
            dead = dead,
        )
    };
    let mut resolve = |host: &str, port: u16| -> std::io::Result<Vec<std::net::SocketAddr>> {
        assert_eq!(host, "origin-c.internal");
        Ok(vec![std::net::SocketAddr::new(c_addr.ip(), port)])
    };
    let parse = |resolve: &mut usher::config::Resolve<'_>| {
        let text = text(free_addr(), free_addr());
        usher::Config::parse_with(&text, dir.path(), resolve)
            .unwrap_or_else(|e| panic!("test config invalid:\n{e}\n---\n{text}"))
    };
    let running = usher::server::spawn(parse(&mut resolve)).unwrap();
    let proxy = running.listen();
    let admin = running.admin().unwrap();
    let c = client();
    for i in 0..60 {
        let (who, tier) = match i % 3 {
            0 => ("gold-1", Some("gold")),
            1 => ("std-1", None),
            _ => ("std-2", None),
        };
        let path = if i % 2 == 0 {
            "/checkout/pay"
        } else {
            "/products/1"
        };
        let mut headers = vec![("x-customer-id", who)];
        if let Some(t) = tier {
            headers.push(("x-customer-tier", t));
        }
        // The refused upstream costs a retry on another one, never the customer's request.
        let (status, body) = get(&c, format!("http://{proxy}{path}"), &headers).await;
        assert_eq!(status, 200, "{path}: {body}");
    }
    // The refused upstream is tried, and ejected. Balancing alone may never pick it (it looks
    // slower than the measured ones from the start), but each `outlier.sample_interval` the
    // idlest upstream gets a request: so the loop must last a few intervals, not be done in a
    // burst that fits in one.
    let mut ejected = false;
    for _ in 0..200 {
        let m = get(&c, format!("http://{admin}/metrics"), &[]).await.1;
        if m.contains("usher_ejections_total{") {
            ejected = true;
            break;
        }
        let _ = get(
            &c,
            format!("http://{proxy}/products/2"),
            &[("x-customer-id", "std-3")],
        )
        .await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(ejected, "the refused upstream was never ejected");
    // A look-up of the pool's host name fails, as the periodic one would with DNS down.
    let u = running.usher().clone();
    tokio::task::spawn_blocking(move || {
        u.re_resolve(&mut |_: &str, _: u16| Err(std::io::Error::other("no such host")))
    })
    .await
    .unwrap();
    let first = get(&c, format!("http://{admin}/metrics"), &[]).await.1;

    // A restart: the snapshot written on the way out is read by the next usher.
    tokio::task::spawn_blocking(move || running.stop_gracefully())
        .await
        .unwrap();
    let again = usher::Usher::new(parse(&mut resolve));
    usher::server::load_snapshot(&again);
    let running = usher::server::spawn_usher(again).unwrap();
    let admin = running.admin().unwrap();
    let second = get(&c, format!("http://{admin}/metrics"), &[]).await.1;
    tokio::task::spawn_blocking(move || running.stop())
        .await
        .unwrap();
    assert!(
        sample(
            &second,
            "usher_state_snapshots_total",
            &[("op", "read"), ("result", "success")]
        ) == Some(1.0),
        "the second usher read the first one's snapshot:\n{second}"
    );

    let mut exported = exported_names(&first);
    exported.extend(exported_names(&second));
    let rules = parse_rules(&read(RULES));
    let recorded: BTreeSet<String> = rules
        .iter()
        .filter(|r| r.kind == "record")
        .map(|r| r.name.clone())
        .collect();
    let mut queries: Vec<(String, String)> = rules
        .iter()
        .map(|r| (format!("{} {}", r.kind, r.name), r.expr.clone()))
        .collect();
    let dash = dashboard();
    queries.extend(dashboard_queries(&dash));
    let problems = unknown_names(&queries, &exported, &recorded);
    assert!(
        problems.is_empty(),
        "the kit names what usher does not export:\n  {}\nexported: {exported:?}",
        problems.join("\n  ")
    );
    let used: BTreeSet<String> = queries
        .iter()
        .flat_map(|(_, e)| promql_metrics(e).unwrap())
        .collect();
    let unused: Vec<&String> = exported
        .iter()
        .filter(|n| n.starts_with("usher_") && !used.contains(*n))
        .collect();
    eprintln!("exported by usher, on no panel and in no rule: {unused:?}");

    // Each example route's Apdex rule selects buckets that usher exports for that route.
    let mut buckets: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in first
        .lines()
        .filter(|l| l.starts_with("usher_request_duration_seconds_bucket{"))
    {
        let field = |k: &str| {
            let at = line.find(&format!("{k}=\""))? + k.len() + 2;
            Some(line[at..at + line[at..].find('"')?].to_string())
        };
        if let (Some(r), Some(le)) = (field("route"), field("le")) {
            buckets.entry(r).or_default().insert(le);
        }
    }
    let apdex = apdex_rules(&rules);
    for (route, _, _) in example_routes() {
        let exported = buckets
            .get(&route)
            .unwrap_or_else(|| panic!("no buckets for route {route}"));
        for values in &apdex[&route] {
            assert!(
                values.iter().any(|v| exported.contains(v)),
                "route {route}: the Apdex rule's le={values:?} is no bucket usher exports: {exported:?}"
            );
        }
    }
}

#[test]
fn every_example_route_has_its_apdex_rule() {
    let rules = parse_rules(&read(RULES));
    let apdex = apdex_rules(&rules);
    for (route, target, _) in example_routes() {
        let les = apdex.get(&route).unwrap_or_else(|| {
            panic!("{RULES}: no route:usher_apdex:ratio5m rule for route {route} of {EXAMPLE}")
        });
        assert_eq!(
            les.len(),
            2,
            "route {route}: the buckets at T and 4T: {les:?}"
        );
        for (bound, values) in [(target, &les[0]), (target * 4, &les[1])] {
            assert!(
                values.contains(&le_of(bound)),
                "route {route}: expected le=\"{}\" (target {target:?}), the rule has {values:?}",
                le_of(bound)
            );
        }
        let rule = rules
            .iter()
            .find(|r| {
                r.name == "route:usher_apdex:ratio5m"
                    && r.expr.contains(&format!("route=\"{route}\""))
            })
            .unwrap();
        assert!(
            rule.text
                .contains(&format!("target_seconds: \"{}\"", le_of(target))),
            "route {route}: target_seconds label\n{}",
            rule.text
        );
    }
}

#[test]
fn the_kit_covers_what_an_operator_watches() {
    let rules = parse_rules(&read(RULES));
    let alerts: Vec<&Rule> = rules.iter().filter(|r| r.kind == "alert").collect();
    for a in &alerts {
        for needed in ["for:", "severity:", "summary:", "description:"] {
            assert!(
                a.text.contains(needed),
                "alert {} has no {needed}\n{}",
                a.name,
                a.text
            );
        }
    }
    // An alert on each of these, by the metric it watches.
    for metric in [
        "usher_customers_degraded",
        "usher_ejections_total",
        "usher_retry_budget_exhausted_total",
        "usher_events_total{outcome=\"dropped\"}",
        "usher_config_reloads_total{result=\"failure\"}",
        "usher.route.slo_burn",
        "route:usher_apdex:ratio5m",
        "usher_pool_panic",
        "usher_connections_refused_total",
    ] {
        assert!(
            alerts.iter().any(|a| a.expr.contains(metric)),
            "no alert watches {metric}"
        );
    }
    let d = dashboard();
    assert!(d["schemaVersion"].as_u64().unwrap() >= 36);
    assert!(d["__inputs"]
        .as_array()
        .unwrap()
        .iter()
        .any(|i| i["name"] == "DS_PROMETHEUS" && i["pluginId"] == "prometheus"));
    let mut ids = BTreeSet::new();
    for p in panels(&d) {
        assert!(
            ids.insert(p["id"].as_u64().unwrap()),
            "panel ids are unique"
        );
        if p["type"] != "row" {
            assert_eq!(p["datasource"]["uid"], "${DS_PROMETHEUS}", "{}", p["title"]);
            for t in p["targets"].as_array().unwrap() {
                assert_eq!(t["datasource"]["uid"], "${DS_PROMETHEUS}", "{}", p["title"]);
            }
        }
    }
    let exprs: Vec<String> = dashboard_queries(&d).into_iter().map(|(_, e)| e).collect();
    for metric in [
        "usher_requests_total",
        "usher_request_duration_seconds_bucket",
        "route:usher_apdex:ratio5m",
        "usher_customers_degraded",
        "usher_protected_requests_total",
        "usher_upstream_state",
        "usher_ejections_total",
        "usher_pool_panic",
        "usher_retries_total",
        "usher_retry_budget_exhausted_total",
        "usher_events_total",
        "usher_connections_open",
        "usher_connections_limit",
        "usher_connections_refused_total",
        "usher_config_reloads_total",
    ] {
        assert!(
            exprs
                .iter()
                .any(|e| promql_metrics(e).unwrap().iter().any(|m| m == metric)),
            "no dashboard panel shows {metric}"
        );
    }
}

fn have(tool: &str, arg: &str) -> bool {
    Command::new(tool)
        .arg(arg)
        .output()
        .is_ok_and(|o| o.status.success())
}

fn run(cmd: &mut Command) -> (bool, String) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn promtool_checks_and_tests_the_rules() {
    if !have("promtool", "--version") {
        assert!(
            std::env::var_os("CI").is_none(),
            "promtool is not installed and CI is set: scripts/test installs it (Debian package prometheus)"
        );
        eprintln!("promtool is not installed: skipped (apt-get install prometheus)");
        return;
    }
    let (ok, out) = run(Command::new("promtool")
        .args(["check", "rules"])
        .arg(repo(RULES)));
    assert!(ok, "promtool check rules:\n{out}");
    let rules = parse_rules(&read(RULES));
    assert!(
        out.contains(&format!("SUCCESS: {} rules found", rules.len())),
        "this test reads {} rules, promtool found other:\n{out}",
        rules.len()
    );
    let (ok, out) = run(Command::new("promtool")
        .args(["test", "rules"])
        .arg(repo(RULE_TESTS)));
    assert!(ok, "promtool test rules:\n{out}");

    // Every dashboard query is valid PromQL once Grafana's variables are filled in: checked as the
    // expressions of recording rules.
    let dir = tempfile::tempdir().unwrap();
    let mut file = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, (_, expr)) in dashboard_queries(&dashboard()).iter().enumerate() {
        let expr = expr
            .replace("$__rate_interval", "5m")
            .replace("$__interval", "1m")
            .replace("$__range", "1h");
        file.push_str(&format!(
            "      - record: dashboard:query{i}\n        expr: '{}'\n",
            expr.replace('\'', "''")
        ));
    }
    let path = dir.path().join("dashboard-queries.yml");
    std::fs::write(&path, &file).unwrap();
    let (ok, out) = run(Command::new("promtool").args(["check", "rules"]).arg(&path));
    assert!(ok, "a dashboard query is not valid PromQL:\n{out}\n{file}");
}

/// `systemd-analyze verify` loads the unit as systemd would, offline (no running systemd needed).
/// The unit names /usr/local/bin/usher, which is not installed here, so it is verified with this
/// build's binary in its place; every other line is the file's own.
#[test]
fn systemd_unit_verifies() {
    let unit = read(UNIT);
    let setting = |key: &str| -> Vec<String> {
        unit.lines()
            .filter_map(|l| l.strip_prefix(&format!("{key}=")))
            .map(String::from)
            .collect()
    };
    assert_eq!(setting("Type"), ["simple"]);
    assert_eq!(
        setting("ExecStart"),
        ["/usr/local/bin/usher run --config /etc/usher/usher.toml"]
    );
    assert!(setting("ExecReload").contains(&"/bin/kill -HUP $MAINPID".to_string()));
    assert_eq!(setting("KillSignal"), ["SIGTERM"]);
    assert_eq!(setting("Restart"), ["on-failure"]);
    assert_eq!(setting("StateDirectory"), ["usher usher/spool"]);
    assert!(unit.contains("dir = \"/var/lib/usher\""));
    // Stopping may take the grace period plus what Pingora allows for the sinks and the snapshot.
    let close_budget: u64 = read("src/server.rs")
        .lines()
        .find_map(|l| l.strip_prefix("const CLOSE_BUDGET_SECS: u64 = "))
        .and_then(|v| v.trim_end_matches(';').parse().ok())
        .expect("src/server.rs: CLOSE_BUDGET_SECS");
    let stop = humantime::parse_duration(&setting("TimeoutStopSec")[0]).unwrap();
    assert!(
        stop > usher::defaults::GRACE_PERIOD + Duration::from_secs(close_budget),
        "TimeoutStopSec={stop:?} must exceed the default grace period and the close budget ({close_budget} s)"
    );
    // The open-files limit carries the default connection cap; systemd's default would not.
    let nofile: u64 = setting("LimitNOFILE")[0].parse().unwrap();
    let idle = (usher::defaults::UPSTREAM_IDLE_CONNECTIONS * usher::defaults::THREADS) as u64;
    let cap = usher::defaults::MAX_CONNECTIONS as usize;
    assert!(usher::transport::fd_budget(nofile, idle) >= cap);
    assert!(usher::transport::fd_budget(1024, idle) < cap);

    if !have("systemd-analyze", "--version") {
        eprintln!("systemd-analyze is not installed: the unit was not verified");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let bin = env!("CARGO_BIN_EXE_usher");
    let here = unit.replace("/usr/local/bin/usher", bin);
    // The upgrade variant its comment describes: PIDFile= and the two ExecReload= lines swapped in.
    let variant_lines: Vec<&str> = unit
        .lines()
        .filter_map(|l| l.strip_prefix("#   "))
        .filter(|l| l.starts_with("PIDFile=") || l.starts_with("ExecReload="))
        .collect();
    assert_eq!(
        variant_lines.len(),
        3,
        "the upgrade variant's lines: {variant_lines:?}"
    );
    let mut variant: Vec<String> = Vec::new();
    for l in unit.lines() {
        if l.starts_with("ExecReload=") {
            continue;
        }
        variant.push(l.to_string());
        if l.starts_with("ExecStart=") {
            variant.extend(variant_lines.iter().map(|v| v.to_string()));
        }
    }
    let variant = variant.join("\n").replace("/usr/local/bin/usher", bin);
    for (name, text) in [("usher.service", here), ("usher-upgrade.service", variant)] {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        let (ok, out) = run(Command::new("systemd-analyze").arg("verify").arg(&path));
        // What the file itself gets wrong names it: `usher.service:12: Unknown key ...`,
        // `usher.service: Command ... is not executable`. Only messages that do not name it may
        // be the machine's (a container without systemd's directories, no D-Bus); those are
        // tolerated, and only those.
        let about_unit: Vec<&str> = out.lines().filter(|l| l.contains(name)).collect();
        assert!(
            about_unit.is_empty(),
            "systemd-analyze verify {name}:\n{out}"
        );
        if !ok {
            const ENVIRONMENTAL: &[&str] = &[
                "Failed to initialize manager",
                "Failed to connect to bus",
                "Failed to setup working directory",
                "System has not been booted with systemd",
                "Operation not permitted",
            ];
            assert!(
                out.lines()
                    .all(|l| ENVIRONMENTAL.iter().any(|e| l.contains(e))),
                "systemd-analyze verify {name} failed:\n{out}"
            );
            eprintln!("systemd-analyze cannot run here, the unit was not verified:\n{out}");
        }
    }
}
