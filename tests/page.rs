//! The live page in a real browser: the usher binary with a viewer token in front of origins that
//! make a slow checkout, a failing API and a funnel drop-off, and Debian's headless Chromium
//! driven over the DevTools protocol (a websocket, `tokio-tungstenite`; no driver crate). Signs in
//! with the viewer token, watches the worst-customers list change while traffic runs, looks up the
//! customer whose checkout was slow and finds the step marked, opens a funnel drop-off and follows
//! it to the customer ids. A screenshot of each view lands in `target/tmp/page-test/`
//! (`USHER_UPDATE_SCREENSHOTS=1` also copies two to `docs/screenshots/` for the README).
//!
//! Chromium is required, not optional: without it this test fails and says how to install it
//! (`scripts/test` installs it when missing).

mod common;

use common::*;
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use usher::origin::Origin;

const USHER: &str = env!("CARGO_BIN_EXE_usher");
const VIEWER: &str = "viewer-page-test-0123456789abcdef";
const OPERATOR: &str = "operator-page-test-0123456789abcdef";
/// Generous: a shared two-core CI machine builds, runs usher, origins and Chromium at once.
const PATIENCE: Duration = Duration::from_secs(60);
const SLOW_CHECKOUT: Duration = Duration::from_millis(1500);

fn chromium() -> PathBuf {
    for c in ["/usr/bin/chromium", "/usr/bin/chromium-browser"] {
        if Path::new(c).exists() {
            return PathBuf::from(c);
        }
    }
    panic!(
        "tests/page.rs needs Debian's chromium (headless) to drive the live page, and it is not \
         installed: run scripts/test (it installs it), or `sudo apt-get install chromium`"
    );
}

fn out_dir() -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join("page-test");
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Kills what it holds when the test ends, however it ends.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A DevTools protocol session with one page.
struct Cdp {
    ws: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    next: u64,
}

impl Cdp {
    async fn call(&mut self, method: &str, params: Value) -> Value {
        self.next += 1;
        let id = self.next;
        let msg = json!({ "id": id, "method": method, "params": params }).to_string();
        self.ws
            .send(tokio_tungstenite::tungstenite::Message::Text(msg))
            .await
            .expect("send to Chromium");
        let deadline = Instant::now() + PATIENCE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let m = tokio::time::timeout(left, self.ws.next())
                .await
                .unwrap_or_else(|_| panic!("Chromium did not answer {method}"))
                .expect("Chromium closed the DevTools connection")
                .expect("DevTools message");
            let Ok(text) = m.into_text() else { continue };
            let Ok(v) = serde_json::from_str::<Value>(&text) else {
                continue;
            };
            if v["id"].as_u64() == Some(id) {
                if let Some(e) = v.get("error") {
                    panic!("{method}: {e}");
                }
                return v["result"].clone();
            }
        }
    }

    /// Evaluates `js` in the page (promises awaited) and returns its value.
    async fn eval(&mut self, js: &str) -> Value {
        let r = self
            .call(
                "Runtime.evaluate",
                json!({ "expression": js, "returnByValue": true, "awaitPromise": true }),
            )
            .await;
        if let Some(e) = r.get("exceptionDetails") {
            panic!("{js}: {e}");
        }
        r["result"]["value"].clone()
    }

    /// Polls `js` until it is truthy; fails saying `what` after [`PATIENCE`].
    async fn until(&mut self, what: &str, js: &str) -> Value {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let v = self.eval(js).await;
            let truthy = match &v {
                Value::Null => false,
                Value::Bool(b) => *b,
                Value::String(s) => !s.is_empty(),
                Value::Number(n) => n.as_f64() != Some(0.0),
                _ => true,
            };
            if truthy {
                return v;
            }
            if Instant::now() > deadline {
                let body = self.eval("document.body.innerText").await;
                panic!("timed out waiting for {what}; the page shows:\n{body}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn screenshot(&mut self, name: &str) -> PathBuf {
        let r = self
            .call("Page.captureScreenshot", json!({ "format": "png" }))
            .await;
        let png = base64_decode(r["data"].as_str().expect("screenshot data"));
        assert!(png.starts_with(b"\x89PNG"), "a PNG");
        let path = out_dir().join(name);
        std::fs::write(&path, png).unwrap();
        path
    }
}

/// Standard base64, as the DevTools protocol sends binary data.
fn base64_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    };
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0);
    for v in s.bytes().filter_map(val) {
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}

/// Starts headless Chromium with a fresh profile and connects to its first page.
async fn browser(profile: &Path) -> (Killed, Cdp) {
    let mut child = Command::new(chromium())
        .args([
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--no-default-browser-check",
            "--remote-debugging-port=0",
            "--window-size=1280,1000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg("about:blank")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start chromium");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if let Some(url) = line.split("DevTools listening on ").nth(1) {
                let _ = tx.send(url.trim().to_string());
            }
        }
    });
    let child = Killed(child);
    let browser_ws = rx
        .recv_timeout(PATIENCE)
        .expect("Chromium never said where its DevTools listen");
    // ws://127.0.0.1:PORT/devtools/browser/ID: the page list is at http://127.0.0.1:PORT/json.
    let host = browser_ws
        .trim_start_matches("ws://")
        .split('/')
        .next()
        .unwrap()
        .to_string();
    let c = client();
    let deadline = Instant::now() + PATIENCE;
    let page_ws = loop {
        if let Ok(r) = c.get(format!("http://{host}/json/list")).send().await {
            if let Ok(list) = r.json::<Vec<Value>>().await {
                if let Some(p) = list.iter().find(|p| p["type"] == "page") {
                    break p["webSocketDebuggerUrl"].as_str().unwrap().to_string();
                }
            }
        }
        assert!(Instant::now() < deadline, "Chromium shows no page");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let (ws, _) = tokio_tungstenite::connect_async(page_ws.as_str())
        .await
        .expect("connect to the page's DevTools");
    let mut cdp = Cdp { ws, next: 0 };
    cdp.call("Page.enable", json!({})).await;
    cdp.call("Runtime.enable", json!({})).await;
    (child, cdp)
}

/// One request of customer `who`.
async fn send(
    c: &reqwest::Client,
    proxy: std::net::SocketAddr,
    method: reqwest::Method,
    path: &str,
    who: &str,
    tier: Option<&str>,
) -> u16 {
    let mut req = c
        .request(method, format!("http://{proxy}{path}"))
        .header("x-customer-id", who);
    if let Some(t) = tier {
        req = req.header("x-customer-tier", t);
    }
    match req.send().await {
        Ok(r) => {
            let s = r.status().as_u16();
            let _ = r.bytes().await;
            s
        }
        Err(_) => 0,
    }
}

async fn admin_get(
    c: &reqwest::Client,
    admin: std::net::SocketAddr,
    path: &str,
    token: Option<&str>,
) -> (u16, String) {
    let mut req = c.get(format!("http://{admin}{path}"));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let r = req.send().await.expect("admin API answers");
    (r.status().as_u16(), r.text().await.unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_live_page_shows_a_slow_checkout_the_worst_customers_and_a_funnel_drop_off() {
    let chromium = chromium();
    assert!(chromium.exists());
    let dir = tempfile::tempdir().unwrap();
    let web = Origin::start_local("web").await.unwrap();
    web.behavior.add_slow_path("/checkout", SLOW_CHECKOUT);
    let api = Origin::start_local("api").await.unwrap();
    api.behavior.set_failure_ratio(1.0);
    let (listen, admin) = (free_addr(), free_addr());
    std::fs::write(
        dir.path().join("tokens"),
        format!("viewer {VIEWER} page-test\noperator {OPERATOR} ops\n"),
    )
    .unwrap();
    let config = format!(
        r#"
[server]
listen = ["{listen}"]
admin = "{admin}"
admin_tokens = "tokens"
admin_audit_log = "audit.jsonl"
[identity]
customer_id = [{{ header = "x-customer-id" }}]
tier = [{{ header = "x-customer-tier", trusted_from = ["127.0.0.1/32"] }}]
[[tiers]]
name = "gold"
protected = true
follow_up = "phone within 1h"
[[tiers]]
name = "standard"
follow_up = "email"
[experience]
min_requests = 2
summary_interval = "1s"
[state]
dir = "state"
[[pools]]
name = "web"
upstreams = ["{}"]
[[pools]]
name = "api"
upstreams = ["{}"]
[[routes]]
name = "checkout"
match = {{ path_prefix = "/checkout" }}
pool = "web"
critical = true
target = "300ms"
[[routes]]
name = "api"
match = {{ path_prefix = "/api" }}
pool = "api"
target = "200ms"
slo = 0.99
[[routes]]
name = "site"
pool = "web"
target = "500ms"
[[funnels]]
name = "shop"
abandon_after = "10s"
steps = [
  {{ name = "cart", method = "POST", path = "/cart" }},
  {{ name = "checkout", method = "GET", path = "/checkout" }},
  {{ name = "pay", method = "POST", path = "/checkout/pay" }},
  {{ name = "done", method = "GET", path = "/checkout/done" }},
]
"#,
        web.addr, api.addr
    );
    let path = dir.path().join("usher.toml");
    std::fs::write(&path, config).unwrap();
    let _usher = Killed(
        Command::new(USHER)
            .args(["run", "--config"])
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    usher::server::wait_listening(admin, PATIENCE).expect("usher's admin API comes up");
    usher::server::wait_listening(listen, PATIENCE).expect("usher's proxy comes up");
    let c = client();

    // Refused without a token, and a viewer may not erase or reload.
    assert_eq!(admin_get(&c, admin, "/now", None).await.0, 401);
    assert_eq!(admin_get(&c, admin, "/funnels", None).await.0, 401);
    assert_eq!(
        admin_get(&c, admin, "/customers/x/events", None).await.0,
        401
    );
    let erase = c
        .delete(format!("http://{admin}/customers/x"))
        .bearer_auth(VIEWER)
        .send()
        .await
        .unwrap();
    assert_eq!(erase.status().as_u16(), 403);
    let reload = c
        .post(format!("http://{admin}/reload"))
        .bearer_auth(VIEWER)
        .send()
        .await
        .unwrap();
    assert_eq!(reload.status().as_u16(), 403);
    // The page itself loads without one, under a strict policy.
    let page = c.get(format!("http://{admin}/ui")).send().await.unwrap();
    assert_eq!(page.status().as_u16(), 200);
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"),
        "{csp}"
    );
    assert_eq!(page.headers()["x-content-type-options"], "nosniff");

    // The story: sam puts something in the cart and waits 1.5 s for the checkout (target 300 ms),
    // then gives up; gia (gold) goes all the way through; a few browse in the background.
    let get = reqwest::Method::GET;
    let post = reqwest::Method::POST;
    send(&c, listen, post.clone(), "/cart", "sam-slow", None).await;
    send(&c, listen, get.clone(), "/checkout", "sam-slow", None).await;
    for (m, p) in [
        (post.clone(), "/cart"),
        (get.clone(), "/checkout"),
        (post.clone(), "/checkout/pay"),
        (get.clone(), "/checkout/done"),
    ] {
        send(&c, listen, m, p, "gia", Some("gold")).await;
    }
    let running = Arc::new(AtomicBool::new(true));
    let background = {
        let running = running.clone();
        tokio::spawn(async move {
            let c = client();
            while running.load(Ordering::Relaxed) {
                for who in ["bea", "cal", "dot"] {
                    send(&c, listen, reqwest::Method::GET, "/", who, None).await;
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        })
    };

    let profile = dir.path().join("chromium");
    let (_chromium, mut page) = browser(&profile).await;
    page.call(
        "Page.navigate",
        json!({ "url": format!("http://{admin}/ui") }),
    )
    .await;
    page.until(
        "the sign-in form",
        "document.readyState === 'complete' && document.getElementById('login')?.hidden === false",
    )
    .await;
    // Data calls from the page without a token are refused too.
    assert_eq!(
        page.eval("fetch('/now').then(r => r.status)").await,
        json!(401)
    );

    // Sign in with the viewer token.
    page.eval(&format!(
        "document.getElementById('token').value = '{VIEWER}'; \
         document.getElementById('login-form').requestSubmit(); true"
    ))
    .await;
    page.until(
        "the now view with customers in it",
        "!document.getElementById('view-now').hidden && \
         document.querySelectorAll('#worst tbody tr').length > 0",
    )
    .await;
    let first = page
        .eval("[...document.querySelectorAll('#worst tbody tr')].map(r => r.dataset.customer).join(',')")
        .await;
    assert!(
        !first.as_str().unwrap().contains("lou"),
        "lou has not come yet: {first}"
    );

    // lou arrives and every API call fails: the worst-customers list changes under our eyes.
    let lou = {
        let running = running.clone();
        tokio::spawn(async move {
            let c = client();
            while running.load(Ordering::Relaxed) {
                send(&c, listen, reqwest::Method::GET, "/api/orders", "lou", None).await;
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        })
    };
    let stamp = page
        .eval("document.getElementById('updated').textContent")
        .await;
    page.until(
        "lou at the top of the worst customers",
        "(() => { const r = document.querySelector('#worst tbody tr'); \
           return r && r.dataset.customer === 'lou'; })()",
    )
    .await;
    let later = page
        .eval("document.getElementById('updated').textContent")
        .await;
    assert!(later.as_str().unwrap().starts_with("updated "), "{later}");
    assert_ne!(stamp, later, "the time of the last update moves");
    page.until(
        "a degraded standard customer counted",
        "/standard: [1-9]/.test(document.getElementById('degraded').textContent)",
    )
    .await;
    page.until(
        "the api route's burn rate",
        "[...document.querySelectorAll('#routes tbody tr')].some(r => r.textContent.startsWith('api') && /\\d \\/ \\d/.test(r.textContent))",
    )
    .await;
    let now_png = page.screenshot("now.png").await;

    // Look up sam: the slow checkout is marked on the timeline.
    page.eval(
        "location.hash = '#customer'; \
         document.getElementById('customer-id').value = 'sam-slow'; \
         document.getElementById('lookup-form').requestSubmit(); true",
    )
    .await;
    let marked = page
        .until(
            "sam's checkout marked slow on the timeline",
            "(() => { const s = [...document.querySelectorAll('#timeline li')] \
               .find(li => li.dataset.marks.split(' ').includes('slow')); \
               return s ? s.textContent : ''; })()",
        )
        .await;
    let marked = marked.as_str().unwrap();
    assert!(
        marked.contains("/checkout") && marked.contains("target of 300 ms"),
        "{marked}"
    );
    assert!(marked.contains(&web.addr.to_string()), "{marked}");
    page.until(
        "sam's funnel position",
        "document.getElementById('c-funnels').textContent.includes('checkout')",
    )
    .await;
    let follow_up = page
        .eval("document.getElementById('c-follow-up').textContent")
        .await;
    assert!(follow_up.as_str().unwrap().contains("email"), "{follow_up}");
    let customer_png = page.screenshot("customer.png").await;
    // The same on a phone.
    page.call(
        "Emulation.setDeviceMetricsOverride",
        json!({ "width": 390, "height": 844, "deviceScaleFactor": 2, "mobile": true }),
    )
    .await;
    page.until(
        "the timeline laid out for a phone",
        "document.getElementById('timeline').getBoundingClientRect().width <= 390",
    )
    .await;
    page.screenshot("customer-phone.png").await;
    page.call("Emulation.clearDeviceMetricsOverride", json!({}))
        .await;

    // sam's drop at the checkout reaches the funnel report once abandon_after (10 s) is over.
    let deadline = Instant::now() + PATIENCE;
    loop {
        let (_, body) = admin_get(&c, admin, "/funnels?window=1h", Some(VIEWER)).await;
        let v: Value = serde_json::from_str(&body).unwrap_or_default();
        let dropped = &v["funnels"][0]["steps"][1]["dropped"]["customers"];
        if dropped
            .as_array()
            .is_some_and(|a| a.contains(&json!("sam-slow")))
        {
            break;
        }
        assert!(Instant::now() < deadline, "sam never dropped: {body}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    page.eval("location.hash = '#funnels'; true").await;
    page.until(
        "the shop funnel's drop-off at the checkout",
        "!!document.querySelector('[data-testid=\"shop-checkout-dropped\"]')",
    )
    .await;
    page.eval("document.querySelector('[data-testid=\"shop-checkout-dropped\"]').click(); true")
        .await;
    let ids = page
        .until(
            "the customer ids behind the drop-off",
            "(() => { const l = document.getElementById('ids-list'); \
               return !document.getElementById('ids').hidden && l.textContent.includes('sam-slow') \
               ? l.textContent : ''; })()",
        )
        .await;
    assert!(ids.as_str().unwrap().contains("sam-slow"), "{ids}");
    let done = page
        .eval("document.querySelector('tr[data-step=\"done\"]').textContent")
        .await;
    assert!(done.as_str().unwrap().contains('1'), "gia finished: {done}");
    page.screenshot("funnels.png").await;
    // One click on an id opens that customer.
    page.eval("document.querySelector('#ids-list a').click(); true")
        .await;
    page.until(
        "sam's lookup from the funnel",
        "!document.getElementById('view-customer').hidden && \
         document.getElementById('c-id').textContent === 'sam-slow'",
    )
    .await;

    running.store(false, Ordering::Relaxed);
    let _ = background.await;
    let _ = lou.await;

    // Every lookup was audited: who (the viewer token's name), whom, when, from where.
    let audit = std::fs::read_to_string(dir.path().join("audit.jsonl")).unwrap_or_default();
    let lines: Vec<Value> = audit
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(
        lines.iter().any(|l| l["customer"] == "sam-slow"
            && l["who"] == "page-test"
            && l["role"] == "viewer"
            && l["action"] == "lookup"
            && l["from"] == "127.0.0.1"),
        "{audit}"
    );
    let (_, metrics) = admin_get(&c, admin, "/metrics", Some(VIEWER)).await;
    assert!(
        sample(
            &metrics,
            "usher_admin_audit_records_total",
            &[("result", "written")]
        )
        .unwrap_or(0.0)
            >= 1.0
    );

    if std::env::var_os("USHER_UPDATE_SCREENSHOTS").is_some() {
        let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/screenshots");
        std::fs::create_dir_all(&docs).unwrap();
        std::fs::copy(&now_png, docs.join("now.png")).unwrap();
        std::fs::copy(&customer_png, docs.join("customer.png")).unwrap();
    }
    println!("screenshots in {}", out_dir().display());
}

/// Without `server.admin_tokens` the admin API answers callers on usher's own machine: the page
/// opens straight on its views, asks for no token, and offers no sign-out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_admin_tokens_the_page_opens_on_loopback_without_asking() {
    let dir = tempfile::tempdir().unwrap();
    let web = Origin::start_local("web").await.unwrap();
    let (listen, admin) = (free_addr(), free_addr());
    let path = dir.path().join("usher.toml");
    std::fs::write(
        &path,
        format!(
            "[server]\nlisten = [\"{listen}\"]\nadmin = \"{admin}\"\n[identity]\ncustomer_id = [{{ header = \"x-customer-id\" }}]\n[experience]\ndegraded_below = 50\n[[pools]]\nname = \"web\"\nupstreams = [\"{}\"]\n[[routes]]\nname = \"site\"\npool = \"web\"\n",
            web.addr
        ),
    )
    .unwrap();
    let _usher = Killed(
        Command::new(USHER)
            .args(["run", "--config"])
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    usher::server::wait_listening(admin, PATIENCE).expect("usher's admin API comes up");
    usher::server::wait_listening(listen, PATIENCE).expect("usher's proxy comes up");
    let c = client();
    for _ in 0..3 {
        send(&c, listen, reqwest::Method::GET, "/", "ola", None).await;
    }
    let profile = dir.path().join("chromium");
    let (_chromium, mut page) = browser(&profile).await;
    page.call(
        "Page.navigate",
        json!({ "url": format!("http://{admin}/ui") }),
    )
    .await;
    page.until(
        "the now view with ola in it",
        // Until the navigation lands the document is still about:blank, without the view.
        "document.getElementById('view-now')?.hidden === false && \
         document.querySelectorAll('#worst tbody tr').length > 0",
    )
    .await;
    assert_eq!(
        page.eval(
            "[document.getElementById('login').hidden, document.getElementById('signout').hidden]"
        )
        .await,
        json!([true, true]),
        "no sign-in form, no sign-out"
    );
    page.eval("location.hash = '#customer/ola'; true").await;
    // The score graph's line is where this configuration calls a customer degraded: 50 of 100
    // is halfway up the 40-high graph.
    let line = page
        .until(
            "ola's score graph",
            "(() => { const l = document.querySelector('#c-spark line'); \
               return l ? l.getAttribute('y1') : ''; })()",
        )
        .await;
    assert_eq!(line, json!("20"));

    // Views changed while their data is on its way leave one poller behind, not one each: twenty
    // changes in a row, then the now view polls every two seconds as if opened once.
    page.eval(
        "(async () => { \
           window.nowCalls = 0; const f = window.fetch; \
           window.fetch = (u, o) => { if (String(u).startsWith('/now')) window.nowCalls++; return f(u, o); }; \
           for (let i = 0; i < 10; i++) { \
             location.hash = '#funnels'; await new Promise(r => setTimeout(r, 0)); \
             location.hash = '#now'; await new Promise(r => setTimeout(r, 0)); } \
           await new Promise(r => setTimeout(r, 1000)); \
           window.nowCalls = 0; \
           await new Promise(r => setTimeout(r, 4500)); \
           return true; })()",
    )
    .await;
    let calls = page.eval("window.nowCalls").await.as_u64().unwrap();
    assert!(
        (1..=4).contains(&calls),
        "{calls} calls to /now in 4.5 s: pollers left running"
    );
}
