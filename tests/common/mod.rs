//! Helpers shared by the integration tests: free loopback ports, configs, HTTP calls.
#![allow(dead_code)]

pub mod process;

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::time::Duration;
use usher::Config;

/// A loopback address with a port that was free a moment ago, and that no earlier call in this
/// test process handed out: the kernel may give a just-released port again, and a test that asked
/// for a listener and an admin port once got the same one for both (a CI run failed on it).
pub fn free_addr() -> SocketAddr {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
        let addr = l.local_addr().unwrap();
        if !given.contains(&addr.port()) {
            given.push(addr.port());
            return addr;
        }
    }
}

/// An address that refuses connections for as long as the test process runs: its port is held
/// by a socket that is bound but never listens (Linux answers a connect with a reset), so no
/// other test's listener can be handed that port, as it could be a port merely released.
pub fn dead_addr() -> SocketAddr {
    static HELD: std::sync::Mutex<Vec<tokio::net::TcpSocket>> = std::sync::Mutex::new(Vec::new());
    let socket = tokio::net::TcpSocket::new_v4().expect("a socket");
    socket
        .bind("127.0.0.1:0".parse().unwrap())
        .expect("bind an ephemeral port");
    let addr = socket.local_addr().unwrap();
    HELD.lock().unwrap().push(socket);
    addr
}

/// Parses a test config, with `[server]` filled in with fresh ports unless the text has its own.
pub fn config(text: &str, dir: &Path) -> Config {
    let text = if text.contains("[server]") {
        text.to_string()
    } else {
        format!(
            "[server]\nlisten = [\"{}\"]\nadmin = \"{}\"\n{text}",
            free_addr(),
            free_addr()
        )
    };
    Config::parse(&text, dir).unwrap_or_else(|e| panic!("test config invalid:\n{e}\n---\n{text}"))
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .pool_max_idle_per_host(8)
        .build()
        .unwrap()
}

pub async fn get(c: &reqwest::Client, url: String, headers: &[(&str, &str)]) -> (u16, String) {
    let mut req = c.get(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.expect("request reaches usher");
    let status = resp.status().as_u16();
    (status, resp.text().await.unwrap_or_default())
}

pub async fn json(c: &reqwest::Client, url: String) -> serde_json::Value {
    let (status, body) = get(c, url.clone(), &[]).await;
    assert_eq!(status, 200, "{url}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{url}: {e}: {body}"))
}

/// The value of one Prometheus sample line with exactly these labels (in any order).
pub fn sample(metrics: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    metrics.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?;
        let (labelpart, value) = if let Some(r) = rest.strip_prefix('{') {
            let (l, v) = r.split_once("} ")?;
            (l, v)
        } else {
            ("", rest.strip_prefix(' ')?)
        };
        let have: Vec<&str> = if labelpart.is_empty() {
            vec![]
        } else {
            labelpart.split(',').collect()
        };
        let want: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
        (have.len() == want.len() && want.iter().all(|w| have.contains(&w.as_str())))
            .then(|| value.trim().parse().ok())
            .flatten()
    })
}

/// One simulated customer: a closed loop of requests with a short think time.
#[derive(Clone, Debug)]
pub struct Worker {
    pub customer: String,
    pub tier: Option<&'static str>,
    pub path: &'static str,
    pub protected: bool,
}

#[derive(Clone, Debug)]
pub struct Sample {
    pub at: std::time::Instant,
    pub path: &'static str,
    pub latency: Duration,
    /// 0 when the request failed at the transport level.
    pub status: u16,
    pub origin: String,
    pub protected: bool,
}

/// Runs `workers` against `proxy` for `duration`; `think` between requests of one worker.
pub async fn load(
    proxy: SocketAddr,
    workers: &[Worker],
    duration: Duration,
    think: Duration,
) -> Vec<Sample> {
    let deadline = std::time::Instant::now() + duration;
    let tasks: Vec<_> = workers
        .iter()
        .cloned()
        .map(|w| {
            tokio::spawn(async move {
                let c = client();
                let mut out = Vec::new();
                while std::time::Instant::now() < deadline {
                    let mut req = c
                        .get(format!("http://{proxy}{}", w.path))
                        .header("x-customer-id", &w.customer);
                    if let Some(t) = w.tier {
                        req = req.header("x-customer-tier", t);
                    }
                    let at = std::time::Instant::now();
                    let (status, origin) = match req.send().await {
                        Ok(r) => {
                            let s = r.status().as_u16();
                            let o = r
                                .headers()
                                .get("x-origin")
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or("")
                                .to_string();
                            let _ = r.bytes().await;
                            (s, o)
                        }
                        Err(_) => (0, String::new()),
                    };
                    out.push(Sample {
                        at,
                        path: w.path,
                        latency: at.elapsed(),
                        status,
                        origin,
                        protected: w.protected,
                    });
                    tokio::time::sleep(think).await;
                }
                out
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all
}

/// Summary of a set of samples.
#[derive(Debug)]
pub struct Figures {
    pub n: usize,
    pub success: f64,
    pub p50: Duration,
    pub p99: Duration,
    pub max: Duration,
}

pub fn figures<'a>(samples: impl Iterator<Item = &'a Sample>) -> Figures {
    let mut lat: Vec<Duration> = Vec::new();
    let mut ok = 0;
    for s in samples {
        lat.push(s.latency);
        if (200..400).contains(&s.status) {
            ok += 1;
        }
    }
    lat.sort();
    let q = |p: f64| {
        lat.get(((lat.len() as f64 * p).ceil() as usize).saturating_sub(1))
            .copied()
            .unwrap_or_default()
    };
    Figures {
        n: lat.len(),
        success: if lat.is_empty() {
            0.0
        } else {
            ok as f64 / lat.len() as f64
        },
        p50: q(0.50),
        p99: q(0.99),
        max: lat.last().copied().unwrap_or_default(),
    }
}

/// A webhook receiver on a fixed address that records every event it is POSTed and can be
/// stopped and started again on the same port; optionally over TLS, and refusing (400) the next
/// `refuse` batches.
pub struct Receiver {
    pub addr: SocketAddr,
    pub events: std::sync::Arc<parking_lot::Mutex<Vec<serde_json::Value>>>,
    /// Batches still to answer 400 (a receiver that will never take them).
    pub refuse: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    stop: Option<tokio::sync::watch::Sender<bool>>,
}

impl Receiver {
    pub fn new(addr: SocketAddr) -> Receiver {
        Receiver {
            addr,
            events: Default::default(),
            refuse: Default::default(),
            tls: None,
            stop: None,
        }
    }

    /// The same, serving HTTPS with the test certificate for 127.0.0.1 (signed by
    /// `tests/fixtures/test-ca.pem`).
    pub fn new_tls(addr: SocketAddr) -> Receiver {
        use tokio_rustls::rustls::pki_types::pem::PemObject;
        use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
        let certs: Vec<CertificateDer> = CertificateDer::pem_file_iter(dir.join("receiver.pem"))
            .unwrap()
            .map(|c| c.unwrap())
            .collect();
        let key = PrivateKeyDer::from_pem_file(dir.join("receiver.pk8")).unwrap();
        let provider = std::sync::Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
        let config = tokio_rustls::rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap();
        Receiver {
            tls: Some(tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config))),
            ..Receiver::new(addr)
        }
    }

    pub async fn start(&mut self) {
        use http_body_util::BodyExt;
        let listener = loop {
            match tokio::net::TcpListener::bind(self.addr).await {
                Ok(l) => break l,
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        };
        let (tx, rx) = tokio::sync::watch::channel(false);
        self.stop = Some(tx);
        let (events, refuse, tls) = (self.events.clone(), self.refuse.clone(), self.tls.clone());
        tokio::spawn(async move {
            let mut stop_accept = rx.clone();
            loop {
                let (stream, _) = tokio::select! {
                    c = listener.accept() => match c { Ok(c) => c, Err(_) => continue },
                    _ = stop_accept.changed() => return,
                };
                let (events, refuse, tls, mut stop) =
                    (events.clone(), refuse.clone(), tls.clone(), rx.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(
                        move |req: hyper::Request<hyper::body::Incoming>| {
                            let (events, refuse) = (events.clone(), refuse.clone());
                            async move {
                                let ct = req
                                    .headers()
                                    .get("content-type")
                                    .and_then(|v| v.to_str().ok())
                                    .unwrap_or("")
                                    .to_string();
                                let body = req
                                    .into_body()
                                    .collect()
                                    .await
                                    .map(|b| b.to_bytes())
                                    .unwrap_or_default();
                                let refused = refuse
                                    .fetch_update(
                                        std::sync::atomic::Ordering::SeqCst,
                                        std::sync::atomic::Ordering::SeqCst,
                                        |n| n.checked_sub(1),
                                    )
                                    .is_ok();
                                let status =
                                    match serde_json::from_slice::<Vec<serde_json::Value>>(&body) {
                                        _ if refused => 400,
                                        Ok(batch) if ct == "application/cloudevents-batch+json" => {
                                            events.lock().extend(batch);
                                            200
                                        }
                                        _ => 400,
                                    };
                                let mut resp = hyper::Response::new(http_body_util::Full::new(
                                    bytes::Bytes::new(),
                                ));
                                *resp.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
                                Ok::<_, std::convert::Infallible>(resp)
                            }
                        },
                    );
                    let http = hyper::server::conn::http1::Builder::new();
                    match tls {
                        Some(acceptor) => {
                            let Ok(stream) = acceptor.accept(stream).await else {
                                return;
                            };
                            let conn =
                                http.serve_connection(hyper_util::rt::TokioIo::new(stream), svc);
                            tokio::select! { _ = conn => {}, _ = stop.changed() => {} }
                        }
                        None => {
                            let conn =
                                http.serve_connection(hyper_util::rt::TokioIo::new(stream), svc);
                            tokio::select! { _ = conn => {}, _ = stop.changed() => {} }
                        }
                    }
                });
            }
        });
    }

    pub fn stop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(true);
        }
    }

    pub fn ids(&self) -> Vec<String> {
        self.events
            .lock()
            .iter()
            .filter_map(|e| e["id"].as_str().map(str::to_string))
            .collect()
    }
}

/// Waits until `cond` holds, polling; panics with `what` after `within`.
pub async fn eventually(within: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + within;
    while !cond() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits (at most two seconds) until usher has recorded `n` requests of customer `who`: a request
/// is recorded just after its answer is sent, so the next request may otherwise see the state of
/// the one before.
pub async fn recorded(c: &reqwest::Client, admin: SocketAddr, who: &str, n: u64) {
    for _ in 0..200 {
        let (s, body) = get(c, format!("http://{admin}/customers/{who}"), &[]).await;
        if s == 200 {
            let v: serde_json::Value = serde_json::from_str(&body).unwrap();
            if v["requests"].as_u64() >= Some(n) {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{who}'s {n} requests were never all recorded");
}

/// A certificate authority made for one test, and certificates it signs (rcgen), as PEM files in
/// a folder.
pub struct TestCa {
    pub dir: std::path::PathBuf,
    pub cert: rcgen::Certificate,
    key: rcgen::KeyPair,
    name: String,
}

impl TestCa {
    /// A CA called `name`, written to `dir/name.pem`.
    pub fn new(dir: &Path, name: &str) -> TestCa {
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.distinguished_name.push(rcgen::DnType::CommonName, name);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = p.self_signed(&key).unwrap();
        std::fs::write(dir.join(format!("{name}.pem")), cert.pem()).unwrap();
        TestCa {
            dir: dir.to_path_buf(),
            cert,
            key,
            name: name.to_string(),
        }
    }

    /// The CA's own certificate file.
    pub fn path(&self) -> std::path::PathBuf {
        self.dir.join(format!("{}.pem", self.name))
    }

    /// A certificate for `names` (the first is also its common name); `expired` in 2021.
    pub fn issue(&self, names: &[&str], expired: bool) -> (rcgen::Certificate, rcgen::KeyPair) {
        let mut p =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        p.distinguished_name
            .push(rcgen::DnType::CommonName, names[0]);
        if expired {
            p.not_before = rcgen::date_time_ymd(2020, 1, 1);
            p.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        let key = rcgen::KeyPair::generate().unwrap();
        (p.signed_by(&key, &self.cert, &self.key).unwrap(), key)
    }

    /// As [`TestCa::issue`], written to `file.pem` and `file.key` in the CA's folder.
    pub fn issue_files(&self, file: &str, names: &[&str], expired: bool) {
        let (cert, key) = self.issue(names, expired);
        std::fs::write(self.dir.join(format!("{file}.pem")), cert.pem()).unwrap();
        std::fs::write(self.dir.join(format!("{file}.key")), key.serialize_pem()).unwrap();
    }
}

/// One request an [`Inbox`] was sent.
#[derive(Debug, Clone)]
pub struct Posted {
    pub path: String,
    pub headers: http::HeaderMap,
    pub body: String,
}

/// An HTTP receiver that records every request as sent (a helpdesk's API, as far as usher can tell)
/// and answers 201 Created, on an ephemeral port.
pub struct Inbox {
    pub addr: SocketAddr,
    pub posted: std::sync::Arc<parking_lot::Mutex<Vec<Posted>>>,
}

impl Inbox {
    pub async fn start() -> Inbox {
        use http_body_util::BodyExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let posted: std::sync::Arc<parking_lot::Mutex<Vec<Posted>>> = Default::default();
        let keep = posted.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let keep = keep.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(
                        move |req: hyper::Request<hyper::body::Incoming>| {
                            let keep = keep.clone();
                            async move {
                                let path = req.uri().path().to_string();
                                let headers = req.headers().clone();
                                let body = req
                                    .into_body()
                                    .collect()
                                    .await
                                    .map(|b| b.to_bytes())
                                    .unwrap_or_default();
                                keep.lock().push(Posted {
                                    path,
                                    headers,
                                    body: String::from_utf8_lossy(&body).into_owned(),
                                });
                                let mut resp = hyper::Response::new(http_body_util::Full::new(
                                    bytes::Bytes::from_static(b"{}"),
                                ));
                                *resp.status_mut() = hyper::StatusCode::CREATED;
                                Ok::<_, std::convert::Infallible>(resp)
                            }
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Inbox { addr, posted }
    }

    pub fn posted(&self) -> Vec<Posted> {
        self.posted.lock().clone()
    }
}
