use super::*;
use std::path::Path;
use std::time::Duration;

fn parse(text: &str) -> Result<Config, ConfigErrors> {
    Config::parse(text, Path::new("."))
}

const MINIMAL: &str = r#"
[[pools]]
name = "web"
upstreams = ["127.0.0.1:9001", "127.0.0.1:9002"]
[[routes]]
name = "all"
pool = "web"
"#;

#[test]
fn minimal_config_gets_documented_defaults() {
    let c = parse(MINIMAL).unwrap();
    assert_eq!(c.server.listen, vec!["127.0.0.1:8080".parse().unwrap()]);
    assert_eq!(c.server.admin, Some("127.0.0.1:9190".parse().unwrap()));
    assert_eq!(c.server.threads, 1);
    assert_eq!(c.server.upstream_idle_connections, 128);
    assert_eq!(c.tiers.len(), 1);
    assert_eq!(c.experience.half_life, Duration::from_secs(600));
    assert_eq!(c.experience.track_max, 1_000_000);
    assert_eq!(c.experience.journey_len, 16);
    assert_eq!(c.routes[0].target, Duration::from_millis(500));
    assert_eq!(c.pools[0].connect_timeout, Duration::from_secs(1));
    assert_eq!(c.upstreams.len(), 2);
    assert_eq!(
        c.identity.customer_id,
        vec![IdSource::Header {
            name: http::HeaderName::from_static("x-customer-id"),
            trusted_from: None
        }]
    );
}

#[test]
fn reports_every_error_at_once_each_with_its_path() {
    let text = r#"
[server]
listen = ["nowhere"]
threads = 0
colour = "blue"

[identity]
default_tier = "platinum"
customer_id = [{ header = "x-id", cookie = "cid" }]
tier = [{ header = "x-tier" }]

[[tiers]]
name = "gold"
[[tiers]]
name = "gold"

[experience]
half_life = "soon"
degraded_below = 170

[[pools]]
name = "web"
upstreams = []
[[pools]]
name = "api"
upstreams = ["127.0.0.1:1"]
read_timeout = 5

[[routes]]
name = "checkout"
match = { path_prefix = "checkout", method = "FETCH THIS" }
pool = "web"
target = "0s"
[[routes]]
name = "x"
pool = "web"
[[routes]]
name = "y"
pool = "web2"
[[routes]]
name = "z"
pol = "web"

[whatever]
"#;
    let errs = parse(text).unwrap_err();
    let paths = errs.paths();
    for expected in [
        "whatever",
        "server.colour",
        "pools[1].read_timeout",
        "routes[3].pol",
        "server.listen[0]",
        "server.threads",
        "tiers[1].name",
        "identity.customer_id[0]",
        "identity.tier[0].trusted_from",
        "identity.default_tier",
        "experience.half_life",
        "experience.degraded_below",
        "pools[0].upstreams",
        "routes[0].match.path_prefix",
        "routes[0].match.method[0]",
        "routes[0].target",
        "routes[2].pool",
    ] {
        assert!(
            paths.contains(&expected),
            "missing {expected:?} in:\n{errs}"
        );
    }
    let pool = errs.0.iter().find(|e| e.path == "routes[2].pool").unwrap();
    assert_eq!(
        pool.message,
        r#"no pool named "web2"; pools are "web", "api""#
    );
    let unknown = errs.0.iter().find(|e| e.path == "routes[3].pol").unwrap();
    assert!(unknown.message.contains("unknown field `pol`"), "{unknown}");
    let text_form = errs.to_string();
    assert!(text_form.contains("routes[2].pool: no pool named \"web2\""));
}

#[test]
fn syntax_error_has_a_line_number() {
    let errs = parse("[server]\nlisten = [\"127.0.0.1:1\"\nthreads = 2\n").unwrap_err();
    assert_eq!(errs.0.len(), 1);
    assert!(errs.0[0].message.contains("line"), "{errs}");
}

#[test]
fn unknown_keys_inside_nested_tables_are_reported_with_full_path() {
    let text = format!(
        "{MINIMAL}\n[[routes]]\nname = \"b\"\npool = \"web\"\nmatch = {{ path_prefx = \"/b\" }}\n"
    );
    let errs = parse(&text).unwrap_err();
    assert_eq!(errs.0.len(), 1, "{errs}");
    assert_eq!(errs.0[0].path, "routes[1].match.path_prefx");
    assert!(errs.0[0].message.contains("path_prefx"));
}

#[test]
fn tier_table_is_loaded_relative_to_the_config_and_checked() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("c.csv"),
        "id,tier\nalice,gold\n\n# comment\nbob,standard\ncarol,platinum\nnocomma\n",
    )
    .unwrap();
    let text = format!(
        "{MINIMAL}\n[identity]\ntier = [{{ table = \"c.csv\" }}]\n[[tiers]]\nname = \"gold\"\n[[tiers]]\nname = \"standard\"\n"
    );
    std::fs::write(dir.path().join("u.toml"), &text).unwrap();
    let errs = Config::load(&dir.path().join("u.toml")).unwrap_err();
    assert_eq!(errs.0.len(), 2, "{errs}");
    assert!(
        errs.0[0]
            .message
            .contains("c.csv:6: unknown tier \"platinum\""),
        "{errs}"
    );
    assert!(
        errs.0[1].message.contains("c.csv:7: expected id,tier"),
        "{errs}"
    );

    std::fs::write(dir.path().join("c.csv"), "alice,gold\nbob,standard\n").unwrap();
    let c = Config::load(&dir.path().join("u.toml")).unwrap();
    match &c.identity.tier[0] {
        TierSource::Table { entries, .. } => {
            assert_eq!(entries.get("alice"), Some(&0));
            assert_eq!(entries.get("bob"), Some(&1));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        c.identity.default_tier, 1,
        "defaults to the tier named standard"
    );
}

#[test]
fn missing_table_file_is_an_error_not_a_panic() {
    let text = format!("{MINIMAL}\n[identity]\ntier = [{{ table = \"nope.csv\" }}]\n");
    let errs = parse(&text).unwrap_err();
    assert_eq!(errs.paths(), vec!["identity.tier[0].table"]);
}

#[test]
fn same_upstream_in_two_pools_is_one_upstream() {
    let text = r#"
[[pools]]
name = "a"
upstreams = ["127.0.0.1:9001", "127.0.0.1:9002"]
[[pools]]
name = "b"
upstreams = ["127.0.0.1:9002"]
[[routes]]
name = "r"
pool = "b"
"#;
    let c = parse(text).unwrap();
    assert_eq!(c.upstreams.len(), 2);
    assert_eq!(c.pools[1].upstreams, vec![1]);
    assert_eq!(c.routes[0].pool, 1);
}

#[test]
fn shipped_configs_are_valid() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let p = entry.unwrap().path();
        if p.extension().is_some_and(|e| e == "toml") {
            Config::load(&p).unwrap_or_else(|e| panic!("{}:\n{e}", p.display()));
            seen += 1;
        }
    }
    assert!(seen >= 1);
}

#[test]
fn absurd_values_are_refused_not_left_to_overflow_later() {
    let text = format!(
        "{MINIMAL}\n[outlier]\nbase_ejection = \"500000000000y\"\nmax_ejection = \"2y\"\n[retries]\nbudget_window = \"2d\"\n[protection]\nrescue_for = \"400d\"\ntry_timeout_factor = 0.5\ntry_timeout_floor = \"soon\"\n"
    );
    let errs = parse(&text).unwrap_err();
    for p in [
        "outlier.base_ejection",
        "outlier.max_ejection",
        "retries.budget_window",
        "protection.rescue_for",
        "protection.try_timeout_factor",
        "protection.try_timeout_floor",
    ] {
        assert!(errs.paths().contains(&p), "missing {p}: {errs}");
    }
}

#[test]
fn a_webhook_template_is_compiled_at_load_and_every_mistake_has_its_path() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("bad.json.j2"), "{\n\"x\": {{ subject }\n}").unwrap();
    std::fs::write(dir.path().join("ok.json.j2"), "{\"x\": {{ subject }}}").unwrap();
    let text = format!(
        r#"{MINIMAL}
[[events.sinks]]
type = "webhook"
name = "a"
url = "http://127.0.0.1:1/"
template = "missing.json.j2"
[[events.sinks]]
type = "webhook"
name = "b"
url = "http://127.0.0.1:1/"
template = "bad.json.j2"
[[events.sinks]]
type = "webhook"
name = "c"
url = "http://127.0.0.1:1/"
template = "ok.json.j2"
batch = 10
content_type = "json"
authorization_file = "nope.secret"
headers = {{ Authorization = "Bearer inline", "bad header" = "x", x-ok = "1" }}
events = ["usher.customer.journey_abandoned", "usher.customer.lost"]
when = "data.tier =="
[[events.sinks]]
type = "webhook"
name = "d"
url = "http://127.0.0.1:1/"
content_type = "application/json"
idempotency_header = "Idempotency-Key"
events = []
[[events.sinks]]
type = "jsonl"
name = "e"
path = "e.jsonl"
template = "ok.json.j2"
"#
    );
    std::fs::write(dir.path().join("u.toml"), &text).unwrap();
    let errs = Config::load(&dir.path().join("u.toml")).unwrap_err();
    let want = [
        "events.sinks[0].template",
        "events.sinks[1].template",
        "events.sinks[2].batch",
        "events.sinks[2].content_type",
        "events.sinks[2].authorization_file",
        "events.sinks[2].headers.Authorization",
        "events.sinks[2].headers.bad header",
        "events.sinks[2].events[1]",
        "events.sinks[2].when",
        "events.sinks[3].content_type",
        "events.sinks[3].idempotency_header",
        "events.sinks[3].events",
        "events.sinks[4].template",
    ];
    let mut got = errs.paths();
    got.sort();
    let mut sorted = want.to_vec();
    sorted.sort();
    assert_eq!(got, sorted, "{errs}");
    let text = errs.to_string();
    assert!(text.contains("missing.json.j2: cannot read it"), "{text}");
    assert!(text.contains("bad.json.j2: syntax error"), "{text}");
    assert!(text.contains("(in bad.json.j2:2)"), "{text}");
    assert!(text.contains("authorization_file"), "{text}");
    assert!(
        text.contains("events.sinks[4].template: does not apply to a jsonl sink"),
        "{text}"
    );
}

#[test]
fn a_templated_webhook_sends_one_event_per_request_with_its_secret_kept_out_of_sight() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("t.json.j2"), "{\"x\": {{ subject }}}").unwrap();
    std::fs::write(dir.path().join("zd.auth"), "Basic c2VjcmV0OnNlY3JldA==\n").unwrap();
    let text = format!(
        r#"{MINIMAL}
[[events.sinks]]
type = "webhook"
name = "zendesk"
url = "https://example.zendesk.com/api/v2/tickets.json"
template = "t.json.j2"
authorization_file = "zd.auth"
idempotency_header = "Idempotency-Key"
headers = {{ Accept = "application/json" }}
events = ["usher.customer.journey_abandoned"]
when = "data.after_trouble"
"#
    );
    std::fs::write(dir.path().join("u.toml"), &text).unwrap();
    let c = Config::load(&dir.path().join("u.toml")).unwrap_or_else(|e| panic!("{e}"));
    let s = &c.events.sinks[0];
    assert_eq!(
        s.takes.types,
        vec![crate::event_types::EventType::JourneyAbandoned]
    );
    assert!(s.takes.when.is_some());
    match &s.kind {
        SinkKind::Webhook {
            batch,
            body: Some(body),
            headers,
            authorization: Some(auth),
            ..
        } => {
            assert_eq!(*batch, 1);
            assert_eq!(
                body.content_type,
                crate::defaults::WEBHOOK_TEMPLATE_CONTENT_TYPE
            );
            assert_eq!(body.idempotency_header.as_deref(), Some("idempotency-key"));
            assert_eq!(
                headers,
                &vec![("accept".to_string(), "application/json".to_string())]
            );
            assert_eq!(auth.0, "Basic c2VjcmV0OnNlY3JldA==");
        }
        other => panic!("{other:?}"),
    }
    assert!(
        !format!("{c:?}").contains("c2VjcmV0"),
        "the secret in Debug"
    );
    // The same files give the same sink (a reload keeps it); a changed template does not.
    let again = Config::load(&dir.path().join("u.toml")).unwrap();
    assert_eq!(again.events.sinks[0], c.events.sinks[0]);
    std::fs::write(dir.path().join("t.json.j2"), "{\"y\": {{ subject }}}").unwrap();
    let changed = Config::load(&dir.path().join("u.toml")).unwrap();
    assert_ne!(changed.events.sinks[0], c.events.sinks[0]);
}

#[test]
fn an_audit_log_that_is_a_link_or_not_a_file_is_refused_with_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let real = dir.path().join("real.jsonl");
    std::fs::write(&real, "").unwrap();
    std::os::unix::fs::symlink(&real, dir.path().join("audit.jsonl")).unwrap();
    std::fs::create_dir(dir.path().join("a-folder")).unwrap();
    for (file, says) in [
        ("audit.jsonl", "is a symbolic link"),
        ("a-folder", "is not a regular file"),
        ("missing/audit.jsonl", "does not exist"),
    ] {
        let text = format!("[server]\nadmin_audit_log = \"{file}\"\n{MINIMAL}");
        let errs = Config::parse(&text, dir.path()).unwrap_err();
        assert_eq!(errs.paths(), vec!["server.admin_audit_log"], "{file}");
        assert!(errs.to_string().contains(says), "{file}: {errs}");
    }
    let text = format!("[server]\nadmin_audit_log = \"real.jsonl\"\n{MINIMAL}");
    assert!(Config::parse(&text, dir.path()).is_ok(), "the file itself");
}

#[test]
fn a_pipe_where_a_file_is_named_is_refused_at_once_not_waited_on() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["tokens", "tiers.csv", "t.json.j2"] {
        let c =
            std::ffi::CString::new(dir.path().join(name).as_os_str().as_encoded_bytes()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    }
    let text = format!(
        "[server]\nadmin_tokens = \"tokens\"\n[identity]\ntier = [{{ table = \"tiers.csv\" }}]\n[[events.sinks]]\ntype = \"webhook\"\nname = \"w\"\nurl = \"http://127.0.0.1:9/\"\ntemplate = \"t.json.j2\"\n{MINIMAL}"
    );
    let errs = Config::parse(&text, dir.path()).unwrap_err();
    assert_eq!(
        errs.paths(),
        vec![
            "server.admin_tokens",
            "identity.tier[0].table",
            "events.sinks[0].template"
        ],
        "{errs}"
    );
    assert_eq!(
        errs.0
            .iter()
            .filter(|e| e.message.contains("not a regular file"))
            .count(),
        3,
        "{errs}"
    );
}
