//! What usher shows of a person, and forgets on request, through the real binary: with a
//! pseudonym key no event and no access log line carries the customer's id, while the admin API
//! finds them by id or by pseudonym; an erasure answers what it took, and a `kill -9` right after
//! it does not bring the person back from the snapshot at the next start. Retention forgets an
//! idle customer.

mod common;

use common::process::Proc;
use common::*;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};
use usher::origin::Origin;
use usher::privacy::Pseudonyms;

const KEY: &str = "9f2c4a1e7b3d5f608192a3b4c5d6e7f80123456789abcdef0123456789abcdef";
const ALICE: &str = "alice@example.com";

fn shop(listen: SocketAddr, admin: SocketAddr, ok: &Origin, broken: &Origin, dir: &Path) -> String {
    format!(
        r#"[server]
listen = ["{listen}"]
admin = "{admin}"
[privacy]
pseudonym_key_file = "pseudonym.key"
[access_log]
path = "{access}"
[[tiers]]
name = "standard"
follow_up = "email"
notify_failures = true
[events]
cooldown = "10m"
[[events.sinks]]
type = "jsonl"
path = "{events}"
[[pools]]
name = "web"
upstreams = ["{ok}"]
[[pools]]
name = "payments"
upstreams = ["{broken}"]
[[routes]]
name = "pay"
match = {{ path_prefix = "/pay" }}
pool = "payments"
critical = true
[[routes]]
name = "site"
pool = "web"
[[funnels]]
name = "shop"
steps = [{{ name = "cart", path = "/cart" }}, {{ name = "pay", path = "/pay/**" }}, {{ name = "done", path = "/done" }}]
"#,
        access = dir.join("access.log").display(),
        events = dir.join("events.jsonl").display(),
        ok = ok.addr,
        broken = broken.addr,
    )
}

async fn send(c: &reqwest::Client, method: reqwest::Method, url: String) -> (u16, String) {
    let r = c.request(method, url).send().await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

async fn until(within: Duration, what: &str, mut ok: impl AsyncFnMut() -> bool) {
    let t = Instant::now();
    while !ok().await {
        assert!(t.elapsed() < within, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pseudonyms_keep_the_id_out_of_events_and_logs_and_an_erasure_survives_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let ok = Origin::start_local("web").await.unwrap();
    let broken = Origin::start_local("payments").await.unwrap();
    broken.behavior.set_failure_ratio(1.0);
    let (listen, admin) = (free_addr(), free_addr());
    let key = dir.path().join("pseudonym.key");
    std::fs::write(&key, format!("{KEY}\n")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let config = dir.path().join("usher.toml");
    std::fs::write(&config, shop(listen, admin, &ok, &broken, dir.path())).unwrap();
    let pseudonym = Pseudonyms::keyed(KEY.as_bytes()).of(ALICE).into_owned();
    assert!(Pseudonyms::looks_like(&pseudonym), "{pseudonym}");

    let mut first = Proc::run(&config, &[]);
    usher::server::wait_listening(admin, Duration::from_secs(20)).unwrap();
    let c = client();
    let shop_url = |p: &str| format!("http://{listen}{p}");
    let as_customer = |who: &str, method: reqwest::Method, p: &str| {
        c.request(method, shop_url(p)).header("x-customer-id", who)
    };
    for (who, method, path) in [
        (ALICE, reqwest::Method::GET, "/cart"),
        (ALICE, reqwest::Method::POST, "/pay/now"),
        (ALICE, reqwest::Method::POST, "/pay/now"),
        ("bob", reqwest::Method::GET, "/cart"),
    ] {
        as_customer(who, method, path).send().await.unwrap();
    }
    recorded(&c, admin, "alice%40example.com", 3).await;
    recorded(&c, admin, "bob", 1).await;
    let events = dir.path().join("events.jsonl");
    until(
        Duration::from_secs(10),
        "alice's events in the file",
        async || std::fs::read_to_string(&events).is_ok_and(|t| t.contains("request_failed")),
    )
    .await;
    let text = std::fs::read_to_string(&events).unwrap();
    assert!(!text.contains("alice"), "an id in the events: {text}");
    let failed: serde_json::Value = text
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|e| e["type"] == "usher.customer.request_failed")
        .unwrap();
    assert_eq!(failed["subject"], pseudonym.as_str());
    assert_eq!(failed["data"]["customer"], pseudonym.as_str());
    until(
        Duration::from_secs(10),
        "four access log lines",
        async || {
            std::fs::read_to_string(dir.path().join("access.log"))
                .is_ok_and(|t| t.lines().count() >= 4)
        },
    )
    .await;
    let log = std::fs::read_to_string(dir.path().join("access.log")).unwrap();
    assert!(!log.contains("alice"), "an id in the access log: {log}");
    let first_line: serde_json::Value = serde_json::from_str(log.lines().next().unwrap()).unwrap();
    assert_eq!(first_line["customer"], pseudonym.as_str());

    let (_, metrics) = get(&c, format!("http://{admin}/metrics"), &[]).await;
    assert!(
        !metrics.contains("alice") && !metrics.contains(&pseudonym),
        "a customer in the metrics"
    );

    // The page's lookup finds her by the id an agent is told, or by the pseudonym a ticket shows.
    let by_id = json(&c, format!("http://{admin}/customers/alice%40example.com")).await;
    assert_eq!(by_id["requests"], 3, "{by_id}");
    let by_pseudonym = json(&c, format!("http://{admin}/customers/{pseudonym}")).await;
    assert_eq!(by_pseudonym["id"], ALICE);
    let hers = json(&c, format!("http://{admin}/customers/{ALICE}/events")).await;
    assert!(!hers["events"].as_array().unwrap().is_empty(), "{hers}");

    let funnels = json(&c, format!("http://{admin}/funnels?window=1h")).await;
    assert!(
        funnels.to_string().contains(ALICE),
        "in the funnel view: {funnels}"
    );
    let now = json(&c, format!("http://{admin}/now")).await;
    assert!(
        now.to_string().contains(ALICE),
        "among the worst now: {now}"
    );

    // A restart carries her over in the snapshot.
    first.signal("TERM");
    first.wait(Duration::from_secs(15));
    let mut second = Proc::run(&config, &[]);
    usher::server::wait_listening(admin, Duration::from_secs(20)).unwrap();
    let (status, _) = get(&c, format!("http://{admin}/customers/{ALICE}"), &[]).await;
    assert_eq!(status, 200, "restored from the snapshot");

    // Erased by the pseudonym a helpdesk ticket carried.
    let (status, body) = send(
        &c,
        reqwest::Method::DELETE,
        format!("http://{admin}/customers/{pseudonym}"),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let erased: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(erased["erased"], ALICE, "{erased}");
    assert_eq!(erased["was_tracked"], true);
    assert_eq!(erased["snapshot"], "rewritten");
    assert!(erased["cooldowns"].as_u64().unwrap() >= 1, "{erased}");
    let (status, _) = get(&c, format!("http://{admin}/customers/{ALICE}"), &[]).await;
    assert_eq!(status, 404);
    for view in ["/funnels?window=1h", "/now", "/customers?worst=100"] {
        let v = json(&c, format!("http://{admin}{view}")).await;
        assert!(!v.to_string().contains(ALICE), "still in {view}: {v}");
    }
    let recent = json(&c, format!("http://{admin}/events?limit=1000")).await;
    assert!(
        !recent.to_string().contains(&pseudonym),
        "erased from the recent events: {recent}"
    );

    // A crash right after: the next start reads the rewritten snapshot, bob without alice.
    second.signal("KILL");
    second.wait_any(Duration::from_secs(5));
    let _third = Proc::run(&config, &[]);
    usher::server::wait_listening(admin, Duration::from_secs(20)).unwrap();
    let (bob, _) = get(&c, format!("http://{admin}/customers/bob"), &[]).await;
    let (alice, _) = get(&c, format!("http://{admin}/customers/{ALICE}"), &[]).await;
    assert_eq!((bob, alice), (200, 404), "kill -9 after the erasure");
}

#[test]
fn a_pseudonym_key_others_can_read_or_too_short_is_refused_with_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("k");
    let base = "[privacy]\npseudonym_key_file = \"k\"\n[[pools]]\nname = \"p\"\nupstreams = [\"127.0.0.1:9\"]\n[[routes]]\nname = \"r\"\npool = \"p\"\n";
    use std::os::unix::fs::PermissionsExt;
    for (content, mode, says) in [
        (KEY, 0o644, "every local user can read it"),
        ("short", 0o600, "at least 32"),
    ] {
        std::fs::write(&key, content).unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(mode)).unwrap();
        let e = usher::Config::parse(base, dir.path())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("privacy.pseudonym_key_file") && e.contains(says),
            "{e}"
        );
    }
    let empty = base.replace("pseudonym_key_file = \"k\"", "pseudonym_key_file = \"\"");
    let e = usher::Config::parse(&empty, dir.path())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("privacy.pseudonym_key_file") && e.contains("is empty"),
        "{e}"
    );
    std::fs::remove_file(&key).unwrap();
    let e = usher::Config::parse(base, dir.path())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("privacy.pseudonym_key_file") && e.contains("cannot read"),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_customer_idle_past_the_retention_is_forgotten() {
    let dir = tempfile::tempdir().unwrap();
    let origin = Origin::start_local("web").await.unwrap();
    let cfg = config(
        &format!(
            "[server]\nlisten = [\"{}\"]\nadmin = \"{}\"\n[privacy]\nretention = \"1h\"\n[[pools]]\nname = \"p\"\nupstreams = [\"{}\"]\n[[routes]]\nname = \"r\"\npool = \"p\"\n",
            free_addr(),
            free_addr(),
            origin.addr
        ),
        dir.path(),
    );
    let running = usher::server::spawn(cfg).unwrap();
    let c = client();
    get(
        &c,
        format!("http://{}/x", running.listen()),
        &[("x-customer-id", "idle")],
    )
    .await;
    recorded(&c, running.admin().unwrap(), "idle", 1).await;
    let u = running.usher().clone();
    let now = usher::time::wall_ms();
    assert_eq!(
        u.forget_past_retention(now + 59 * 60_000),
        0,
        "within the hour"
    );
    assert_eq!(u.forget_past_retention(now + 61 * 60_000), 1);
    let (status, _) = get(
        &c,
        format!("http://{}/customers/idle", running.admin().unwrap()),
        &[],
    )
    .await;
    assert_eq!(status, 404);
    let (_, metrics) = get(
        &c,
        format!("http://{}/metrics", running.admin().unwrap()),
        &[],
    )
    .await;
    assert_eq!(
        sample(&metrics, "usher_customers_expired_total", &[]),
        Some(1.0)
    );
    running.stop();
}

fn keyed(dir: &Path, extra: &str, origin: &Origin) -> usher::Config {
    let key = dir.join("pseudonym.key");
    std::fs::write(&key, KEY).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    config(
        &format!(
            "[server]\nlisten = [\"{}\"]\nadmin = \"{}\"\n[privacy]\npseudonym_key_file = \"pseudonym.key\"\n{extra}\n[[pools]]\nname = \"p\"\nupstreams = [\"{}\"]\n[[routes]]\nname = \"r\"\npool = \"p\"\n",
            free_addr(),
            free_addr(),
            origin.addr
        ),
        dir,
    )
}

/// Someone the store let go of (evicted) but a funnel and the recent events still hold, erased by
/// the pseudonym a ticket carried: gone from both, and never raised again by the funnel sweep.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pseudonym_erases_someone_the_store_no_longer_holds() {
    let dir = tempfile::tempdir().unwrap();
    let origin = Origin::start_local("web").await.unwrap();
    origin.behavior.set_failure_ratio(1.0);
    let running = usher::server::spawn(keyed(
        dir.path(),
        "[experience]\ntrack_max = 1\n[[tiers]]\nname = \"standard\"\nnotify_failures = true\n[[funnels]]\nname = \"shop\"\nabandon_after = \"1s\"\nsteps = [{ name = \"cart\", path = \"/cart\" }, { name = \"done\", path = \"/done\" }]\n",
        &origin,
    ))
    .unwrap();
    let (c, admin) = (client(), running.admin().unwrap());
    let shop = |p: &str| format!("http://{}{p}", running.listen());
    get(&c, shop("/cart"), &[("x-customer-id", ALICE)]).await;
    recorded(&c, admin, "alice%40example.com", 1).await;
    get(&c, shop("/x"), &[("x-customer-id", "bob")]).await;
    recorded(&c, admin, "bob", 1).await;
    let (status, _) = get(&c, format!("http://{admin}/customers/{ALICE}"), &[]).await;
    assert_eq!(status, 404, "evicted by bob (track_max = 1)");
    let p = Pseudonyms::keyed(KEY.as_bytes()).of(ALICE).into_owned();
    let (status, body) = send(
        &c,
        reqwest::Method::DELETE,
        format!("http://{admin}/customers/{p}"),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let erased: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (erased["funnels"].as_u64(), erased["pseudonym"].as_str()),
        (Some(1), Some(p.as_str())),
        "{erased}"
    );
    // The funnel would have reported her abandonment a second later.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    running.usher().sweep_events(usher::time::wall_ms());
    let recent = json(&c, format!("http://{admin}/events?limit=1000")).await;
    assert!(!recent.to_string().contains(&p), "{recent}");
    // And nobody can take her pseudonym as an id to pose as her.
    get(&c, shop("/x"), &[("x-customer-id", p.as_str())]).await;
    let (status, _) = get(&c, format!("http://{admin}/customers/{p}"), &[]).await;
    assert_eq!(
        status, 404,
        "a pseudonym-shaped id is refused while pseudonyms are on"
    );
    running.stop();
}

#[test]
fn a_kept_query_that_would_carry_the_id_is_refused_and_the_key_cannot_change_by_reload() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("k");
    std::fs::write(&key, KEY).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let text = "[identity]\ncustomer_id = [{ query = \"cid\" }]\n[privacy]\npseudonym_key_file = \"k\"\n[access_log]\npath = \"-\"\nquery = true\n[[pools]]\nname = \"p\"\nupstreams = [\"127.0.0.1:9\"]\n[[routes]]\nname = \"r\"\npool = \"p\"\nkeep_query = true\n";
    let e = usher::Config::parse(text, dir.path())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("routes[0].keep_query") && e.contains("access_log.query"),
        "{e}"
    );
    let base = "[[pools]]\nname = \"p\"\nupstreams = [\"127.0.0.1:9\"]\n[[routes]]\nname = \"r\"\npool = \"p\"\n";
    let u = usher::engine::Usher::new(usher::Config::parse(base, dir.path()).unwrap());
    let with_key = usher::Config::parse(
        &format!("[privacy]\npseudonym_key_file = \"k\"\n{base}"),
        dir.path(),
    )
    .unwrap();
    let source = usher::generation::Source {
        path: None,
        hash: String::new(),
        loaded_ms: 0,
        cause: "reload",
    };
    let err = u.apply(with_key, source).unwrap_err().to_string();
    assert!(err.contains("privacy.pseudonym_key_file"), "{err}");
}
