//! Follow-up events through real sinks: a JSONL file, a webhook receiver that goes down and comes
//! back, a restart of usher with events still spooled, and a real `nats-server` with JetStream.

mod common;

use common::*;
use std::collections::HashSet;
use std::time::Duration;
use usher::origin::Origin;

/// A config whose `/broken` route always answers 503, with `sinks` as the events sinks.
fn with_sinks(broken: &Origin, sinks: &str, dir: &std::path::Path) -> usher::Config {
    config(
        &format!(
            r#"
[events]
source = "usher://test"
spool_dir = "spool"
{sinks}
[[pools]]
name = "broken"
upstreams = ["{}"]
[[routes]]
name = "broken"
pool = "broken"
"#,
            broken.addr
        ),
        dir,
    )
}

/// Makes `n` customers degraded (three 503s each): one `usher.customer.degraded` event per customer.
async fn degrade(proxy: std::net::SocketAddr, from: usize, n: usize) {
    let c = client();
    for i in from..from + n {
        let id = format!("cust-{i}");
        for _ in 0..3 {
            let (s, _) = get(&c, format!("http://{proxy}/x"), &[("x-customer-id", &id)]).await;
            assert_eq!(s, 503);
        }
    }
}

/// Every event usher raised (the customers' degraded events, and the broken upstream's ejection),
/// and how many of them are customers degraded.
fn expected_ids(running: &usher::server::Running) -> (HashSet<String>, usize) {
    let all = running.usher().state().events.recent(100_000);
    let degraded = all
        .iter()
        .filter(|e| e.kind == usher::events::EventType::CustomerDegraded)
        .count();
    (all.iter().map(|e| e.id.clone()).collect(), degraded)
}

/// Every event usher raised, once `degraded` customers have been: a request is recorded just
/// after its answer is sent, so the last one may still be on its way.
async fn settled_ids(running: &usher::server::Running, degraded: usize) -> HashSet<String> {
    for _ in 0..200 {
        let (ids, n) = expected_ids(running);
        if n >= degraded {
            assert_eq!(n, degraded, "more customers degraded than made to");
            return ids;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("fewer than {degraded} customers degraded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jsonl_sink_writes_cloudevents_lines() {
    let dir = tempfile::tempdir().unwrap();
    let broken = Origin::start_local("broken").await.unwrap();
    broken.behavior.set_failure_ratio(1.0);
    let sinks = "[[events.sinks]]\ntype = \"jsonl\"\npath = \"events.jsonl\"\n";
    let running = usher::server::spawn(with_sinks(&broken, sinks, dir.path())).unwrap();
    degrade(running.listen(), 0, 3).await;
    let path = dir.path().join("events.jsonl");
    // Flushed at least every second.
    let want = settled_ids(&running, 3).await;
    eventually(Duration::from_secs(5), "every event in the file", || {
        std::fs::read_to_string(&path)
            .map(|s| s.lines().count() == want.len())
            .unwrap_or(false)
    })
    .await;
    for line in std::fs::read_to_string(&path).unwrap().lines() {
        let e: serde_json::Value = serde_json::from_str(line).unwrap();
        assert!(want.contains(e["id"].as_str().unwrap()));
        // The failing requests again and again are also retries after failure: struggle.
        if e["type"] == "usher.upstream.ejected" || e["type"] == "usher.customer.struggling" {
            continue;
        }
        assert_eq!(e["specversion"], "1.0");
        assert_eq!(e["type"], "usher.customer.degraded");
        assert_eq!(e["datacontenttype"], "application/json");
        assert!(e["subject"].as_str().unwrap().starts_with("cust-"));
        assert_eq!(e["data"]["state"], "degraded");
    }
    let ev = json(
        &client(),
        format!("http://{}/events?limit=2", running.admin().unwrap()),
    )
    .await;
    assert_eq!(ev["events"].as_array().unwrap().len(), 2);
    running.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_receiver_down_for_a_while_gets_every_event() {
    let dir = tempfile::tempdir().unwrap();
    let broken = Origin::start_local("broken").await.unwrap();
    broken.behavior.set_failure_ratio(1.0);
    let mut receiver = Receiver::new(free_addr());
    let sinks = format!(
        "[[events.sinks]]\ntype = \"webhook\"\nurl = \"http://{}/events\"\nbatch = 7\ntimeout = \"1s\"\n",
        receiver.addr
    );
    let running = usher::server::spawn(with_sinks(&broken, &sinks, dir.path())).unwrap();
    let proxy = running.listen();

    receiver.start().await;
    degrade(proxy, 0, 10).await;
    eventually(Duration::from_secs(10), "the first ten", || {
        receiver.ids().len() >= 10
    })
    .await;

    // Down: events pile up in the spool.
    receiver.stop();
    degrade(proxy, 10, 25).await;
    let adm = running.admin().unwrap();
    let c = client();
    let mut spooled = 0.0;
    for _ in 0..50 {
        let (_, m) = get(&c, format!("http://{adm}/metrics"), &[]).await;
        spooled = sample(&m, "usher_event_spool_bytes", &[("sink", "webhook")]).unwrap_or(0.0);
        if spooled > 0.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        spooled > 0.0,
        "events wait on disk while the receiver is down"
    );

    // Back: everything arrives, once per id at least, nothing else.
    tokio::time::sleep(Duration::from_millis(500)).await;
    receiver.start().await;
    let want = settled_ids(&running, 35).await;
    eventually(
        Duration::from_secs(40),
        "every event after the receiver came back",
        || receiver.ids().into_iter().collect::<HashSet<_>>() == want,
    )
    .await;
    let got = receiver.ids();
    assert!(
        got.iter().all(|id| want.contains(id)),
        "only usher's events, duplicates only by id"
    );
    let (_, m) = get(&c, format!("http://{adm}/metrics"), &[]).await;
    let delivered = sample(
        &m,
        "usher_events_total",
        &[
            ("type", "usher.customer.degraded"),
            ("sink", "webhook"),
            ("outcome", "delivered"),
        ],
    );
    assert!(delivered.unwrap() >= 35.0, "{delivered:?}");
    running.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_delivers_what_was_spooled() {
    let dir = tempfile::tempdir().unwrap();
    let broken = Origin::start_local("broken").await.unwrap();
    broken.behavior.set_failure_ratio(1.0);
    let mut receiver = Receiver::new(free_addr());
    let sinks = format!(
        "[[events.sinks]]\ntype = \"webhook\"\nurl = \"http://{}/events\"\ntimeout = \"500ms\"\n",
        receiver.addr
    );
    // First run: the receiver is down the whole time.
    let first = usher::server::spawn(with_sinks(&broken, &sinks, dir.path())).unwrap();
    degrade(first.listen(), 0, 8).await;
    let want = settled_ids(&first, 8).await;
    // Every event is on disk within a second of being raised, whatever the receiver does: after
    // that, stopping at once (no drain) loses nothing.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    first.stop();
    let spool = dir.path().join("spool").join("webhook");
    let spooled: usize = std::fs::read_dir(&spool)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".jsonl"))
        .map(|e| std::fs::read_to_string(e.path()).unwrap().lines().count())
        .sum();
    assert_eq!(spooled, want.len(), "every event on disk after the stop");

    // Second run, same spool, receiver up: the first run's events arrive with their ids.
    receiver.start().await;
    let second = usher::server::spawn(with_sinks(&broken, &sinks, dir.path())).unwrap();
    eventually(Duration::from_secs(10), "the spooled events", || {
        receiver.ids().into_iter().collect::<HashSet<_>>() == want
    })
    .await;
    second.stop();
}

/// A nats-server with JetStream on a free port, stopped on drop.
struct NatsServer {
    child: std::process::Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl NatsServer {
    fn start() -> NatsServer {
        let addr = free_addr();
        let dir = tempfile::tempdir().unwrap();
        let child = std::process::Command::new("nats-server")
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &addr.port().to_string(),
                "-js",
                "-sd",
            ])
            .arg(dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("nats-server is installed (scripts/test installs it)");
        usher::server::wait_listening(addr, Duration::from_secs(10)).unwrap();
        NatsServer {
            child,
            url: format!("nats://{addr}"),
            _dir: dir,
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_jetstream_consumers_read_the_events() {
    use futures::StreamExt;
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let broken = Origin::start_local("broken").await.unwrap();
    broken.behavior.set_failure_ratio(1.0);
    let sinks = format!(
        "[[events.sinks]]\ntype = \"nats\"\nurl = \"{}\"\nstream = \"USHER_TEST\"\nsubject = \"usher.test.events\"\n",
        nats.url
    );
    let running = usher::server::spawn(with_sinks(&broken, &sinks, dir.path())).unwrap();
    degrade(running.listen(), 0, 12).await;
    let want = settled_ids(&running, 12).await;

    let js = async_nats::jetstream::new(async_nats::connect(nats.url.as_str()).await.unwrap());
    let mut got: HashSet<String> = HashSet::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while got != want && std::time::Instant::now() < deadline {
        let Ok(mut stream) = js.get_stream("USHER_TEST").await else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        let n = stream.info().await.unwrap().state.messages;
        if n < want.len() as u64 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        }
        let consumer = stream
            .create_consumer(async_nats::jetstream::consumer::pull::Config::default())
            .await
            .unwrap();
        let mut msgs = consumer.fetch().max_messages(100).messages().await.unwrap();
        while let Some(Ok(m)) = msgs.next().await {
            let e: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
            assert_eq!(e["specversion"], "1.0");
            got.insert(e["id"].as_str().unwrap().to_string());
            let _ = m.ack().await;
        }
    }
    assert_eq!(got, want);
    running.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_keeps_an_unchanged_sink_and_moves_a_changed_one_without_losing_an_event() {
    let dir = tempfile::tempdir().unwrap();
    let broken = Origin::start_local("broken").await.unwrap();
    broken.behavior.set_failure_ratio(1.0);
    // The CRM's old address is down; its new one is up.
    let old_crm = free_addr();
    let mut new_crm = Receiver::new(free_addr());
    new_crm.start().await;
    let events = dir.path().join("events.jsonl");
    let sinks = |crm: std::net::SocketAddr| {
        format!(
            "[[events.sinks]]\ntype = \"jsonl\"\npath = \"{}\"\n[[events.sinks]]\ntype = \"webhook\"\nname = \"crm\"\nurl = \"http://{crm}/events\"\ntimeout = \"300ms\"\n",
            events.display()
        )
    };
    let first = with_sinks(&broken, &sinks(old_crm), dir.path());
    let server = format!(
        "[server]\nlisten = [\"{}\"]\nadmin = \"{}\"\n",
        first.server.listen[0],
        first.server.admin.unwrap()
    );
    let running = usher::server::spawn(first).unwrap();
    let proxy = running.listen();
    degrade(proxy, 0, 20).await;

    // The reload points the CRM sink elsewhere: its events move with it, through its spool.
    let text = format!(
        "{server}[events]\nsource = \"usher://test\"\nspool_dir = \"spool\"\n{}[[pools]]\nname = \"broken\"\nupstreams = [\"{}\"]\n[[routes]]\nname = \"broken\"\npool = \"broken\"\n",
        sinks(new_crm.addr),
        broken.addr
    );
    let next = usher::Config::parse(&text, dir.path()).unwrap();
    let source = usher::engine::Source {
        path: None,
        hash: String::new(),
        loaded_ms: 0,
        cause: "reload",
    };
    running.usher().apply(next, source).unwrap();
    degrade(proxy, 20, 15).await;
    let want = settled_ids(&running, 35).await;
    eventually(
        Duration::from_secs(30),
        "every event at the CRM's new address",
        || new_crm.ids().into_iter().collect::<HashSet<_>>() == want,
    )
    .await;
    // The file sink did not change: one queue throughout, every event written once.
    eventually(Duration::from_secs(5), "the file sink", || {
        std::fs::read_to_string(&events).map_or(0, |t| t.lines().count()) >= want.len()
    })
    .await;
    let lines = std::fs::read_to_string(&events).unwrap();
    let ids: Vec<String> = lines
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(ids.len(), want.len(), "each event once in the file");
    assert_eq!(ids.into_iter().collect::<HashSet<_>>(), want);
    running.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_batch_is_dead_lettered_and_what_follows_is_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let broken = Origin::start_local("broken").await.unwrap();
    broken.behavior.set_failure_ratio(1.0);
    let mut receiver = Receiver::new(free_addr());
    receiver
        .refuse
        .store(1, std::sync::atomic::Ordering::SeqCst);
    receiver.start().await;
    let sinks = format!(
        "[[events.sinks]]\ntype = \"webhook\"\nname = \"crm\"\nurl = \"http://{}/events\"\nbatch = 5\n",
        receiver.addr
    );
    let running = usher::server::spawn(with_sinks(&broken, &sinks, dir.path())).unwrap();
    let proxy = running.listen();
    let adm = running.admin().unwrap();
    // The first batch is refused for good: 400. It must not hold back the rest.
    degrade(proxy, 0, 3).await;
    eventually(
        Duration::from_secs(10),
        "the refused batch dead-lettered",
        || {
            std::fs::read_to_string(dir.path().join("spool/crm/dead.jsonl"))
                .is_ok_and(|t| !t.is_empty())
        },
    )
    .await;
    degrade(proxy, 3, 10).await;
    let want = settled_ids(&running, 13).await;
    let c = client();
    let dead = json(&c, format!("http://{adm}/events/dead")).await;
    let dead_ids: HashSet<String> = dead["sinks"][0]["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_string())
        .collect();
    assert!(!dead_ids.is_empty() && dead_ids.len() <= 5, "{dead}");
    eventually(Duration::from_secs(20), "everything else delivered", || {
        let got: HashSet<String> = receiver.ids().into_iter().collect();
        got.len() + dead_ids.len() == want.len() && got.is_disjoint(&dead_ids)
    })
    .await;
    let (_, m) = get(&c, format!("http://{adm}/metrics"), &[]).await;
    let dead_counted: f64 = m
        .lines()
        .filter(|l| l.starts_with("usher_events_total") && l.contains("outcome=\"dead_lettered\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(dead_counted as usize, dead_ids.len());
    running.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_webhook_is_verified_against_its_ca_and_gets_every_event() {
    let dir = tempfile::tempdir().unwrap();
    let broken = Origin::start_local("broken").await.unwrap();
    broken.behavior.set_failure_ratio(1.0);
    let mut receiver = Receiver::new_tls(free_addr());
    receiver.start().await;
    std::fs::copy(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/test-ca.pem"),
        dir.path().join("ca.pem"),
    )
    .unwrap();
    let sinks = format!(
        "[[events.sinks]]\ntype = \"webhook\"\nurl = \"https://127.0.0.1:{}/events\"\nca_file = \"ca.pem\"\n",
        receiver.addr.port()
    );
    let running = usher::server::spawn(with_sinks(&broken, &sinks, dir.path())).unwrap();
    degrade(running.listen(), 0, 5).await;
    let want = settled_ids(&running, 5).await;
    eventually(Duration::from_secs(15), "every event over https", || {
        receiver.ids().into_iter().collect::<HashSet<_>>() == want
    })
    .await;
    running.stop();
    // Without the CA the receiver's certificate is not trusted: nothing is delivered, all spooled.
    let dir2 = tempfile::tempdir().unwrap();
    let untrusting = format!(
        "[[events.sinks]]\ntype = \"webhook\"\nurl = \"https://127.0.0.1:{}/events\"\ntimeout = \"1s\"\n",
        receiver.addr.port()
    );
    let before = receiver.ids().len();
    let running = usher::server::spawn(with_sinks(&broken, &untrusting, dir2.path())).unwrap();
    degrade(running.listen(), 100, 3).await;
    let adm = running.admin().unwrap();
    let c = client();
    let mut spooled = 0.0;
    for _ in 0..50 {
        let (_, m) = get(&c, format!("http://{adm}/metrics"), &[]).await;
        spooled = sample(&m, "usher_event_spool_bytes", &[("sink", "webhook")]).unwrap_or(0.0);
        if spooled > 0.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(spooled > 0.0);
    assert_eq!(
        receiver.ids().len(),
        before,
        "an unverified receiver gets nothing"
    );
    running.stop();
}

/// The follow-up events in the jsonl file at `path` of type `kind` (none if there is no file yet).
fn in_file(path: &std::path::Path, kind: &str) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["type"] == kind)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_customer_who_stops_mid_funnel_and_sends_nothing_more_is_reported_by_the_sweep() {
    let dir = tempfile::tempdir().unwrap();
    let shop = Origin::start_local("shop").await.unwrap();
    let text = format!(
        r#"
[events]
source = "usher://test"
[[events.sinks]]
type = "jsonl"
path = "events.jsonl"
[[pools]]
name = "shop"
upstreams = ["{}"]
[[routes]]
name = "shop"
pool = "shop"
[[funnels]]
name = "checkout"
abandon_after = "1s"
steps = [
  {{ name = "cart", path = "/cart" }},
  {{ name = "checkout", path = "/checkout" }},
  {{ name = "done", path = "/checkout/done" }},
]
"#,
        shop.addr
    );
    let running = usher::server::spawn(config(&text, dir.path())).unwrap();
    let (proxy, admin) = (running.listen(), running.admin().unwrap());
    let c = client();
    let walk = |who: &'static str, steps: &'static [&'static str]| {
        let c = c.clone();
        async move {
            for p in steps {
                let (s, _) = get(&c, format!("http://{proxy}{p}"), &[("x-customer-id", who)]).await;
                assert_eq!(s, 200, "{who} {p}");
            }
            recorded(&c, admin, who, steps.len() as u64).await;
        }
    };
    // One customer goes all the way; another stops at the checkout.
    walk("finisher", &["/cart", "/checkout", "/checkout/done"]).await;
    walk("quitter", &["/cart", "/checkout"]).await;
    // From here on usher gets no request at all: only its own periodic sweep can find that the
    // quitter has been in the funnel longer than abandon_after.
    let path = dir.path().join("events.jsonl");
    let kind = "usher.customer.journey_abandoned";
    eventually(
        Duration::from_secs(8),
        "the abandonment in the file",
        || !in_file(&path, kind).is_empty(),
    )
    .await;
    let a = in_file(&path, kind);
    assert_eq!(a.len(), 1, "only the quitter: {a:?}");
    let (e, d) = (&a[0], &a[0]["data"]);
    assert_eq!(e["subject"], "quitter");
    assert_eq!(d["funnel"], "checkout");
    assert_eq!(d["furthest_step"], "checkout");
    assert_eq!(d["steps"], 3);
    assert_eq!(d["errors_in_funnel"], 0);
    assert_eq!(d["after_trouble"], false);
    running.stop();
}

/// Sum over event types of `usher_events_total` for `sink` and `outcome`.
fn events_total(metrics: &str, sink: &str, outcome: &str) -> u64 {
    let (sink, outcome) = (format!("sink=\"{sink}\""), format!("outcome=\"{outcome}\""));
    metrics
        .lines()
        .filter(|l| {
            l.starts_with("usher_events_total{") && l.contains(&sink) && l.contains(&outcome)
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_no_bound_can_hold_is_counted_dropped_and_nothing_disappears_uncounted() {
    let dir = tempfile::tempdir().unwrap();
    let broken = Origin::start_local("broken").await.unwrap();
    broken.behavior.set_failure_ratio(1.0);
    let mut receiver = Receiver::new(free_addr());
    // The smallest bounds the configuration allows: a queue of one event and 4096 bytes of spool,
    // a few events' worth. The receiver is down.
    let sinks = format!(
        "[[events.sinks]]\ntype = \"webhook\"\nname = \"crm\"\nurl = \"http://{}/events\"\nqueue = 1\nmax_spool_bytes = 4096\ntimeout = \"1s\"\n",
        receiver.addr
    );
    // Another process holds the sink's spool (as the old one does during a graceful upgrade): the
    // sink waits for it, and meanwhile only its queue holds events.
    let spool = dir.path().join("spool").join("crm");
    std::fs::create_dir_all(&spool).unwrap();
    let held = std::fs::File::create(spool.join("lock")).unwrap();
    held.try_lock().unwrap();

    let running = usher::server::spawn(with_sinks(&broken, &sinks, dir.path())).unwrap();
    let (proxy, adm) = (running.listen(), running.admin().unwrap());
    let c = client();
    let metrics = || {
        let c = c.clone();
        async move { get(&c, format!("http://{adm}/metrics"), &[]).await.1 }
    };
    let total = |m: &str, outcome: &str| events_total(m, "crm", outcome);
    let gauge = |m: &str, name: &str| sample(m, name, &[("sink", "crm")]);

    // 1. The queue overflows: one event in it, every other one dropped as it is raised.
    degrade(proxy, 0, 10).await;
    let first = settled_ids(&running, 10).await.len() as u64;
    let m = metrics().await;
    assert_eq!(
        (total(&m, "queued"), total(&m, "dropped")),
        (1, first - 1),
        "a queue of one, {first} events raised"
    );

    // 2. The spool comes free: the queued event goes to it and waits there for the receiver.
    drop(held);
    let mut spooled = 0.0;
    for _ in 0..100 {
        spooled = gauge(&metrics().await, "usher_event_spool_bytes").unwrap_or(0.0);
        if spooled > 0.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(spooled > 0.0, "the queued event reached the spool");

    // 3. The spool overflows: 4096 bytes hold a few events, the rest are dropped.
    degrade(proxy, 10, 30).await;
    let raised = settled_ids(&running, 40).await;

    // 4. The receiver comes back: what the spool held is delivered, and then nothing is left.
    receiver.start().await;
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let m = loop {
        let m = metrics().await;
        let delivered = total(&m, "delivered");
        let got: HashSet<String> = receiver.ids().into_iter().collect();
        let empty = gauge(&m, "usher_event_spool_bytes") == Some(0.0)
            && gauge(&m, "usher_event_queue_depth") == Some(0.0);
        if empty && delivered > 0 && delivered as usize == got.len() {
            break m;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the spooled events never all arrived: {delivered} delivered, {} received",
            got.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let (all, _) = expected_ids(&running);
    assert_eq!(all, raised, "no event raised since");
    let got: HashSet<String> = receiver.ids().into_iter().collect();
    assert!(got.is_subset(&raised), "only usher's events");
    let raised = raised.len() as u64;
    let (queued, delivered, dropped, dead) = (
        total(&m, "queued"),
        total(&m, "delivered"),
        total(&m, "dropped"),
        total(&m, "dead_lettered"),
    );
    assert!(queued <= raised, "{queued} queued of {raised} raised");
    let at_queue = raised - queued;
    println!(
        "raised {raised}: queued {queued}, delivered {delivered}, dropped {dropped} ({at_queue} by \
         the queue, {} by the spool), dead-lettered {dead}, received {}",
        dropped.saturating_sub(at_queue),
        got.len()
    );
    assert!(at_queue >= first - 1, "the queue's drops stay counted");
    assert!(
        dropped > at_queue,
        "4096 bytes of spool cannot hold 30 events"
    );
    // An event raised for the sink is taken by its queue (`queued`) or dropped there; a queued
    // one is then delivered, dead-lettered, dropped (the spool was full) or still waiting. With
    // nothing waiting: raised = delivered + dead-lettered + dropped, and nothing disappeared
    // without being counted.
    assert_eq!(
        delivered + dead + dropped,
        raised,
        "raised = delivered + dead-lettered + dropped"
    );
    assert_eq!(
        raised - got.len() as u64,
        dropped,
        "dropped is exactly what never arrived"
    );
    running.stop();
}
