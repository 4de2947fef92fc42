//! Hostile clients and hostile configurations, through real sockets: lookalike trust headers,
//! forged, expired and foreign customer tokens, a request without Host, a loop between two ushers,
//! and the configurations `usher check` must refuse.

mod common;

use common::*;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use std::io::{Read, Write};
use std::path::Path;
use std::process::Command;
use std::time::Duration;
use usher::origin::Origin;

const USHER: &str = env!("CARGO_BIN_EXE_usher");

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(name),
    )
    .unwrap()
}

/// A customer's view once the request just answered has been recorded (that happens after the
/// answer is sent).
async fn tracked(c: &reqwest::Client, admin: std::net::SocketAddr, who: &str) -> serde_json::Value {
    for _ in 0..100 {
        let (s, body) = get(c, format!("http://{admin}/customers/{who}"), &[]).await;
        if s == 200 {
            return serde_json::from_str(&body).unwrap();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{who} was never recorded");
}

/// Waits (at most two seconds) for `probe` to answer `want`: a request is recorded just after its
/// answer is sent.
async fn usher_eventually<F, Fut>(probe: F, want: u16)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = u16>,
{
    for _ in 0..100 {
        if probe().await == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("never answered {want}");
}

fn echoed(body: &str) -> serde_json::Value {
    serde_json::from_str::<serde_json::Value>(body).unwrap()["headers"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookalikes_of_trusted_and_reserved_headers_never_reach_the_application() {
    let dir = tempfile::tempdir().unwrap();
    let origin = Origin::start_local("o").await.unwrap();
    let cfg = config(
        &format!(
            r#"
[identity]
tier = [{{ header = "x-customer-tier", trusted_from = ["10.0.0.0/8"] }}]
[[tiers]]
name = "gold"
[[tiers]]
name = "standard"
[protection]
experience_header = "x-usher-experience"
[[pools]]
name = "p"
upstreams = ["{}"]
[[routes]]
name = "r"
pool = "p"
"#,
            origin.addr
        ),
        dir.path(),
    );
    let running = usher::server::spawn(cfg).unwrap();
    let listen = running.listen();
    let forged = [
        ("x-customer-id", "eve"),
        ("x-customer-tier", "gold"),
        ("x_customer_tier", "gold"),
        ("X_Customer_Tier", "gold"),
        ("x-usher-experience", "score=100; state=ok"),
        ("x_usher_experience", "score=100; state=ok"),
        ("x-usher-", "1"),
        ("x_usher_", "1"),
        ("x-usher-hop", "not-an-id, 0123456789abcdef"),
        ("x-harmless", "kept"),
    ];
    let c = client();
    let (s, _) = get(&c, format!("http://{listen}/warm"), &forged[..1]).await;
    assert_eq!(s, 200);
    let (s, body) = get(&c, format!("http://{listen}/x"), &forged).await;
    assert_eq!(s, 200, "{body}");
    let h = echoed(&body);
    let names: Vec<&str> = h.as_object().unwrap().keys().map(|k| k.as_str()).collect();
    for gone in [
        "x-customer-tier",
        "x_customer_tier",
        "x-usher-",
        "x_usher_",
        "x_usher_experience",
    ] {
        assert!(
            !names.contains(&gone),
            "{gone} reached the application: {h}"
        );
    }
    assert_eq!(h["x-harmless"], "kept");
    // usher's own experience header replaced the forged one, and its hop header lists only what
    // looks like a usher before it, then itself.
    assert_eq!(h["x-usher-experience"], "score=100; state=ok");
    let hops: Vec<&str> = h["x-usher-hop"].as_str().unwrap().split(", ").collect();
    assert_eq!(hops[0], "0123456789abcdef");
    assert_eq!(hops[1], running.usher().state().instance);
    // The forged tier was not believed either.
    let admin = running.admin().unwrap();
    assert_eq!(tracked(&c, admin, "eve").await["tier"], "standard");
    running.stop();
}

/// One raw request on its own connection; the status line's code.
fn raw(addr: std::net::SocketAddr, request: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.get(9..12).unwrap_or("").to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stalls_its_body_gets_408_and_no_upstream_is_blamed() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (
        Origin::start_local("a").await.unwrap(),
        Origin::start_local("b").await.unwrap(),
    );
    let cfg = config(
        &format!(
            "[[pools]]\nname = \"p\"\nupstreams = [\"{}\", \"{}\"]\nread_timeout = \"300ms\"\n[[routes]]\nname = \"r\"\npool = \"p\"\n",
            a.addr, b.addr
        ),
        dir.path(),
    );
    let running = usher::server::spawn(cfg).unwrap();
    let listen = running.listen();
    // Twelve clients each promise 100 bytes of body and send one: both origins wait for the rest
    // until the pool's read timeout. Five failures in a row would eject an upstream.
    let stalls: Vec<_> = (0..12)
        .map(|i| {
            std::thread::spawn(move || {
                let mut s = std::net::TcpStream::connect(listen).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                write!(
                    s,
                    "POST /upload HTTP/1.1\r\nHost: x\r\nx-customer-id: slow{i}\r\ncontent-length: 100\r\n\r\nx"
                )
                .unwrap();
                let mut out = Vec::new();
                let _ = s.read_to_end(&mut out);
                String::from_utf8_lossy(&out).get(9..12).unwrap_or("").to_string()
            })
        })
        .collect();
    for t in stalls {
        assert_eq!(t.join().unwrap(), "408");
    }
    let c = client();
    let admin = running.admin().unwrap();
    let view = json(&c, format!("http://{admin}/upstreams")).await;
    for u in view["upstreams"].as_array().unwrap() {
        assert_eq!(u["state"], "healthy", "{u}");
    }
    let (_, metrics) = get(&c, format!("http://{admin}/metrics"), &[]).await;
    assert!(
        !metrics.contains("usher_ejections_total{"),
        "nothing ejected: {metrics}"
    );
    running.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_1_1_without_host_is_400_and_1_0_without_host_is_served() {
    let dir = tempfile::tempdir().unwrap();
    let origin = Origin::start_local("o").await.unwrap();
    let cfg = config(
        &format!("[[pools]]\nname = \"p\"\nupstreams = [\"{}\"]\n[[routes]]\nname = \"r\"\npool = \"p\"\n", origin.addr),
        dir.path(),
    );
    let running = usher::server::spawn(cfg).unwrap();
    let listen = running.listen();
    let before = origin.behavior.requests();
    assert_eq!(
        raw(listen, "GET /x HTTP/1.1\r\nConnection: close\r\n\r\n"),
        "400"
    );
    assert_eq!(
        origin.behavior.requests(),
        before,
        "never reached the origin"
    );
    assert_eq!(
        raw(
            listen,
            "GET /x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
        ),
        "200"
    );
    assert_eq!(raw(listen, "GET /x HTTP/1.0\r\n\r\n"), "200");
    running.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn customer_tokens_are_verified_and_only_verified_ids_get_their_table_tier() {
    let dir = tempfile::tempdir().unwrap();
    let origin = Origin::start_local("o").await.unwrap();
    std::fs::write(dir.path().join("jwt.pub"), fixture("jwt-rs256.pub")).unwrap();
    std::fs::write(dir.path().join("tiers.csv"), "vip,gold\n").unwrap();
    let cfg = config(
        &format!(
            r#"
[identity]
customer_id = [{{ header = "x-customer-id" }}]
tier = [{{ table = "tiers.csv", verified_only = true }}]
jwt = {{ key_file = "jwt.pub", algorithm = "RS256", issuer = "https://id.shop.example", audience = "shop" }}
[[tiers]]
name = "gold"
protected = true
[[tiers]]
name = "standard"
[[pools]]
name = "p"
upstreams = ["{}"]
[[routes]]
name = "checkout"
pool = "p"
critical = true
"#,
            origin.addr
        ),
        dir.path(),
    );
    let running = usher::server::spawn(cfg).unwrap();
    let (listen, admin) = (running.listen(), running.admin().unwrap());
    let now = usher::time::wall_ms() / 1000;
    let key = EncodingKey::from_rsa_pem(&fixture("jwt-rs256.key")).unwrap();
    let other = EncodingKey::from_rsa_pem(&fixture("other-rs256.key")).unwrap();
    let token = |sub: &str, exp: u64, aud: &str, key: &EncodingKey| {
        let claims = serde_json::json!({ "sub": sub, "exp": exp, "iss": "https://id.shop.example", "aud": aud });
        encode(&Header::new(Algorithm::RS256), &claims, key).unwrap()
    };
    let c = client();
    let ask = |auth: String, id: &'static str| {
        let c = c.clone();
        async move {
            get(
                &c,
                format!("http://{listen}/checkout"),
                &[("authorization", &auth), ("x-customer-id", id)],
            )
            .await
            .0
        }
    };
    // A valid token: verified "vip", gold from the table, protected on the critical route.
    assert_eq!(
        ask(
            format!("Bearer {}", token("vip", now + 300, "shop", &key)),
            "nobody"
        )
        .await,
        200
    );
    let vip = tracked(&c, admin, "vip").await;
    assert_eq!(vip["tier"], "gold", "{vip}");
    assert!(
        get(&c, format!("http://{admin}/customers/nobody"), &[])
            .await
            .0
            == 404,
        "the token's id won"
    );
    // Expired, signed by another key, for another audience, or none at all: the header's "vip"
    // is only a claim, and claims get no gold from a verified-only table.
    for (auth, why) in [
        (
            format!("Bearer {}", token("vip", now - 300, "shop", &key)),
            "expired",
        ),
        (
            format!("Bearer {}", token("vip", now + 300, "shop", &other)),
            "bad_signature",
        ),
        (
            format!("Bearer {}", token("vip", now + 300, "elsewhere", &key)),
            "wrong_audience",
        ),
        ("Bearer not.a.token".to_string(), "malformed"),
        (String::new(), "missing"),
    ] {
        assert_eq!(
            ask(auth, "mallory").await,
            200,
            "{why}: still served, as an unverified customer"
        );
        let m = tracked(&c, admin, "mallory").await;
        assert_eq!(m["tier"], "standard", "{why}");
    }
    let (_, metrics) = get(&c, format!("http://{admin}/metrics"), &[]).await;
    for (result, n) in [
        ("valid", 1.0),
        ("expired", 1.0),
        ("bad_signature", 1.0),
        ("wrong_audience", 1.0),
        ("malformed", 1.0),
        ("missing", 1.0),
    ] {
        assert_eq!(
            sample(
                &metrics,
                "usher_identity_tokens_total",
                &[("result", result)]
            ),
            Some(n),
            "{result}"
        );
    }
    assert_eq!(
        sample(
            &metrics,
            "usher_protected_requests_total",
            &[("why", "tier_on_critical")]
        ),
        Some(1.0),
        "only the verified gold customer was protected"
    );
    running.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loop_between_two_ushers_is_caught_and_answered_508() {
    let dir = tempfile::tempdir().unwrap();
    let (a_listen, b_listen) = (free_addr(), free_addr());
    let conf = |listen: std::net::SocketAddr, next: std::net::SocketAddr| {
        config(
            &format!("[server]\nlisten = [\"{listen}\"]\nadmin = \"off\"\n[[pools]]\nname = \"p\"\nupstreams = [\"{next}\"]\n[[routes]]\nname = \"r\"\npool = \"p\"\n"),
            dir.path(),
        )
    };
    let a = usher::server::spawn(conf(a_listen, b_listen)).unwrap();
    let b = usher::server::spawn(conf(b_listen, a_listen)).unwrap();
    let (s, body) = get(&client(), format!("http://{a_listen}/x"), &[]).await;
    assert_eq!(s, 508, "{body}");
    a.stop();
    b.stop();
}

fn check(dir: &Path, text: &str) -> (i32, String) {
    let path = dir.join("u.toml");
    std::fs::write(&path, text).unwrap();
    check_file(&path)
}

fn check_file(path: &Path) -> (i32, String) {
    let out = Command::new(USHER)
        .args(["check", "--config"])
        .arg(path)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn dangerous_configurations_are_refused_each_with_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("a-file"), "").unwrap();
    let base = "[[pools]]\nname = \"p\"\nupstreams = [\"127.0.0.1:9001\"]\n[[routes]]\nname = \"r\"\npool = \"p\"\n";
    let cases: [(String, &str); 7] = [
        (
            "[server]\nlisten = [\"127.0.0.1:18080\"]\n[[pools]]\nname = \"p\"\nupstreams = [\"127.0.0.1:9001\", \"127.0.0.1:18080\"]\n[[routes]]\nname = \"r\"\npool = \"p\"\n".into(),
            "pools[0].upstreams[1]: 127.0.0.1:18080 is usher's own listener",
        ),
        (
            "[server]\nlisten = [\"0.0.0.0:18081\"]\n[[pools]]\nname = \"p\"\nupstreams = [\"127.0.0.1:18081\"]\n[[routes]]\nname = \"r\"\npool = \"p\"\n".into(),
            "pools[0].upstreams[0]: 127.0.0.1:18081 is usher's own listener",
        ),
        (
            format!("[identity]\ntier = [{{ header = \"x-tier\", trusted_from = [\"0.0.0.0/0\"] }}]\n{base}"),
            "identity.tier[0].trusted_from[0]: \"0.0.0.0/0\" trusts every client",
        ),
        (
            format!("[[events.sinks]]\ntype = \"jsonl\"\npath = \"missing/events.jsonl\"\n{base}"),
            "events.sinks[0].path:",
        ),
        (
            format!("[events]\nspool_dir = \"a-file/spool\"\n[[events.sinks]]\ntype = \"webhook\"\nurl = \"http://127.0.0.1:1/\"\n{base}"),
            "events.spool_dir: the \"webhook\" sink spools there:",
        ),
        (
            format!("[state]\ndir = \"a-file\"\n{base}"),
            "state.dir: ",
        ),
        (
            format!("[server]\nthreads = \"{}\"\n{base}", "9".repeat(50_000)),
            "server.threads: invalid type",
        ),
    ];
    for (text, want) in &cases {
        let (code, err) = check(d, text);
        assert_eq!(code, 2, "{err}");
        assert!(err.contains(want), "want {want:?} in:\n{err}");
        assert!(
            err.len() < 2_000,
            "an error quotes a value of 50,000 bytes: {} bytes",
            err.len()
        );
    }
    // A long value quoted in an error is cut at 80 characters.
    let (_, err) = check(
        d,
        &format!("[server]\nlisten = [\"{}\"]\n{base}", "a".repeat(10_000)),
    );
    assert!(err.contains("... (10000 bytes in all)"), "{err}");
    // Not a configuration at all: too large, endless, or not text.
    let big = d.join("big.toml");
    std::fs::write(&big, vec![b'#'; 17 << 20]).unwrap();
    let (code, err) = check_file(&big);
    assert!(code == 2 && err.contains("larger than 16 MiB"), "{err}");
    let (code, err) = check_file(Path::new("/dev/zero"));
    assert!(code == 2 && err.contains("not a regular file"), "{err}");
    let binary = d.join("binary.toml");
    std::fs::write(&binary, b"[server]\nthreads = 1\n# \xff\xfe\n").unwrap();
    let (code, err) = check_file(&binary);
    assert!(code == 2 && err.contains("line 3 is not UTF-8"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flood_of_random_ids_to_a_failing_critical_route_stays_within_the_event_budget() {
    let dir = tempfile::tempdir().unwrap();
    let broken = Origin::start_local("broken").await.unwrap();
    broken.behavior.set_failure_ratio(1.0);
    let cfg = config(
        &format!(
            r#"
[events]
budget_per_second = 50
verified_only = ["usher.customer.rerouted"]
[[events.sinks]]
type = "jsonl"
path = "events.jsonl"
[[tiers]]
name = "standard"
notify_failures = true
[outlier]
consecutive_failures = 1000
failure_rate = 1.0
[retries]
enabled = false
[[pools]]
name = "p"
upstreams = ["{}"]
[[routes]]
name = "pay"
pool = "p"
critical = true
"#,
            broken.addr
        ),
        dir.path(),
    );
    let running = usher::server::spawn(cfg).unwrap();
    let (listen, admin) = (running.listen(), running.admin().unwrap());
    let started = std::time::Instant::now();
    let senders: Vec<_> = (0..16)
        .map(|w| {
            tokio::spawn(async move {
                let c = client();
                for i in 0..1250 {
                    let id = format!("flood-{w}-{i}-{}", rand::random::<u32>());
                    let (s, _) = get(
                        &c,
                        format!("http://{listen}/pay"),
                        &[("x-customer-id", &id)],
                    )
                    .await;
                    assert_eq!(s, 503);
                }
            })
        })
        .collect();
    for s in senders {
        s.await.unwrap();
    }
    let secs = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let c = client();
    let (_, m) = get(&c, format!("http://{admin}/metrics"), &[]).await;
    let count = |outcome: &str, sink: &str| {
        sample(
            &m,
            "usher_events_total",
            &[
                ("type", "usher.customer.request_failed"),
                ("sink", sink),
                ("outcome", outcome),
            ],
        )
        .unwrap_or(0.0)
    };
    let out = count("queued", "jsonl");
    let suppressed = count("suppressed", "none");
    println!("20,000 failing requests from 20,000 ids in {secs:.1} s: {out} request_failed events let out, {suppressed} suppressed");
    assert!(
        out <= 50.0 * (secs + 1.0) + 1.0,
        "{out} events in {secs:.1} s against a budget of 50/s"
    );
    assert!(out >= 50.0, "the budget lets its share out: {out}");
    assert_eq!(out + suppressed, 20_000.0, "every one is counted");
    let lines = std::fs::read_to_string(dir.path().join("events.jsonl")).unwrap();
    let reports = lines
        .lines()
        .filter(|l| l.contains("usher.events.budget_exhausted"))
        .count();
    assert!(
        reports >= 1 && reports as f64 <= secs / 60.0 + 1.0,
        "{reports} flood reports"
    );
    // A new id is never degraded by one request: no degraded events at all.
    assert_eq!(count("queued", "jsonl").max(0.0), out);
    assert!(
        !lines.contains("usher.customer.degraded"),
        "nobody degraded on one request"
    );
    running.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_takes_tokens_by_role_and_refuses_everyone_else() {
    let dir = tempfile::tempdir().unwrap();
    let origin = Origin::start_local("o").await.unwrap();
    let (viewer, operator) = (
        "v-0123456789abcdef0123456789",
        "o-0123456789abcdef0123456789",
    );
    std::fs::write(
        dir.path().join("tokens"),
        format!("# who may use the admin API\nviewer {viewer}\noperator {operator}\n"),
    )
    .unwrap();
    let (listen, admin) = (free_addr(), free_addr());
    let text = format!(
        "[server]\nlisten = [\"{listen}\"]\nadmin = \"{admin}\"\nadmin_tokens = \"tokens\"\n[[pools]]\nname = \"p\"\nupstreams = [\"{}\"]\n[[routes]]\nname = \"r\"\npool = \"p\"\n",
        origin.addr
    );
    let path = dir.path().join("usher.toml");
    std::fs::write(&path, &text).unwrap();
    let (cfg, bytes) = usher::Config::load_with_text(&path).unwrap();
    let source = usher::engine::Source::of_text(Some(path.clone()), &bytes, 0, "start");
    let running = usher::server::spawn_usher(usher::Usher::with_source(
        cfg,
        source,
        std::time::Instant::now(),
    ))
    .unwrap();
    let c = client();
    let call = |method: reqwest::Method, path: &'static str, token: Option<&'static str>| {
        let c = c.clone();
        async move {
            let mut r = c.request(method, format!("http://{admin}{path}"));
            if let Some(t) = token {
                r = r.bearer_auth(t);
            }
            let resp = r.send().await.unwrap();
            let www = resp.headers().get("www-authenticate").is_some();
            (resp.status().as_u16(), www)
        }
    };
    use reqwest::Method;
    assert_eq!(
        call(Method::GET, "/healthz", None).await.0,
        200,
        "liveness needs no token"
    );
    assert_eq!(
        call(Method::GET, "/customers?worst=3", None).await,
        (401, true)
    );
    assert_eq!(
        call(
            Method::GET,
            "/metrics",
            Some("v-0123456789abcdef0123456780")
        )
        .await
        .0,
        401,
        "a near miss"
    );
    assert_eq!(
        call(Method::GET, "/customers?worst=3", Some(viewer))
            .await
            .0,
        200
    );
    assert_eq!(call(Method::GET, "/config", Some(viewer)).await.0, 200);
    assert_eq!(
        call(Method::POST, "/reload", Some(viewer)).await.0,
        403,
        "a viewer cannot reload"
    );
    assert_eq!(call(Method::POST, "/reload", Some(operator)).await.0, 200);
    assert_eq!(call(Method::POST, "/reload", None).await.0, 401);

    // Erasure is an operator's: a viewer cannot, and afterwards usher knows nothing of them.
    let (s, _) = get(
        &c,
        format!("http://{listen}/"),
        &[("x-customer-id", "erin")],
    )
    .await;
    assert_eq!(s, 200);
    let seen = |token| {
        let c = c.clone();
        async move {
            let r = c
                .get(format!("http://{admin}/customers/erin"))
                .bearer_auth(token)
                .send()
                .await
                .unwrap();
            r.status().as_u16()
        }
    };
    usher_eventually(|| seen(viewer), 200).await;
    assert_eq!(
        call(Method::DELETE, "/customers/erin", Some(viewer))
            .await
            .0,
        403
    );
    assert_eq!(call(Method::DELETE, "/customers/erin", None).await.0, 401);
    assert_eq!(
        call(Method::DELETE, "/customers/erin", Some(operator))
            .await
            .0,
        200
    );
    assert_eq!(seen(viewer).await, 404, "erased");
    running.stop();

    // Off loopback without tokens: refused by check.
    let open = "[server]\nadmin = \"0.0.0.0:19999\"\n[[pools]]\nname = \"p\"\nupstreams = [\"127.0.0.1:9001\"]\n[[routes]]\nname = \"r\"\npool = \"p\"\n";
    let (code, err) = check(dir.path(), open);
    assert_eq!(code, 2);
    assert!(
        err.contains("server.admin: 0.0.0.0:19999 can be reached from other machines"),
        "{err}"
    );
    let (code, err) = check(
        dir.path(),
        &open.replace("[server]\n", "[server]\nadmin_tokens = \"tokens\"\n"),
    );
    assert_eq!(code, 0, "{err}");
    std::fs::write(
        dir.path().join("weak"),
        "operator short\nroot 0123456789abcdef0123456789\nviewer 0123456789abcdef0123456é\n\
         operator 0123456789abcdef0123456789 ops\nviewer 0123456789abcdef0123456789 demoted\n",
    )
    .unwrap();
    let (code, err) = check(
        dir.path(),
        &open.replace("[server]\n", "[server]\nadmin_tokens = \"weak\"\n"),
    );
    assert_eq!(code, 2);
    for said in [
        "weak:1: a token needs at least 24",
        "weak:2: unknown role \"root\"",
        "weak:3: a token is printable ASCII",
        // A viewer line does not demote an operator's token: the same token twice is refused.
        "weak:5: the same token as line 4",
    ] {
        assert!(err.contains(said), "no {said:?} in {err}");
    }
}
