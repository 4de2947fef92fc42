//! TLS and HTTP/2 on usher's listeners, with certificates made here, real clients (curl, openssl
//! s_client, a rustls connection held across a reload) and a real origin behind.

mod common;

use common::*;
use std::path::Path;
use std::process::Command;
use usher::origin::Origin;

fn tls_config(
    origin: &Origin,
    plain: std::net::SocketAddr,
    tls: std::net::SocketAddr,
    extra: &str,
) -> String {
    format!(
        r#"
[server]
listen = ["{plain}"]
admin = "{admin}"
h2c = true
{extra}
[server.tls]
listen = ["{tls}"]
[[server.tls.certificates]]
cert = "shop.pem"
key = "shop.key"
[[server.tls.certificates]]
cert = "api.pem"
key = "api.key"
names = ["api.test"]
[[server.tls.certificates]]
cert = "fallback.pem"
key = "fallback.key"
default = true
[identity]
tier = [{{ header = "x-customer-tier", trusted_from = ["127.0.0.1/32"] }}]
[[tiers]]
name = "gold"
protected = true
[[tiers]]
name = "standard"
[[pools]]
name = "web"
upstreams = ["{origin}"]
[[routes]]
name = "checkout"
match = {{ path_prefix = "/checkout" }}
pool = "web"
critical = true
[[routes]]
name = "site"
pool = "web"
"#,
        admin = free_addr(),
        origin = origin.addr,
    )
}

fn curl(args: &[&str]) -> (String, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10"])
        .args(args)
        .output()
        .expect("curl is installed (scripts/test installs it)");
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The subject of the certificate usher presents for `servername` (none: no SNI at all).
fn presented(tls: std::net::SocketAddr, servername: Option<&str>) -> String {
    let mut cmd = Command::new("openssl");
    cmd.args(["s_client", "-connect", &tls.to_string()]);
    match servername {
        Some(n) => cmd.args(["-servername", n]),
        None => cmd.arg("-noservername"),
    };
    let out = cmd
        .stdin(std::process::Stdio::null())
        .output()
        .expect("openssl is installed (scripts/test installs it)");
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix("subject="))
        .unwrap_or_else(|| {
            panic!(
                "no certificate: {text} {}",
                String::from_utf8_lossy(&out.stderr)
            )
        })
        .to_string()
}

fn pki_with_three(dir: &Path) -> TestCa {
    let pki = TestCa::new(dir, "ca");
    pki.issue_files("shop", &["shop.test", "*.shop.test"], false);
    pki.issue_files("api", &["api.test"], false);
    pki.issue_files("fallback", &["fallback.test"], false);
    pki
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_listeners_choose_the_certificate_by_name_and_speak_http1_and_http2() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki_with_three(dir.path());
    let origin = Origin::start_local("web").await.unwrap();
    let (plain, tls) = (free_addr(), free_addr());
    let cfg = usher::Config::parse(
        &tls_config(&origin, plain, tls, "max_header_bytes = 8192"),
        dir.path(),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let running = usher::server::spawn(cfg).unwrap();
    let port = tls.port();
    let ca = pki.path().display().to_string();
    let resolve = |name: &str| format!("{name}:{port}:127.0.0.1");

    // SNI: each name gets its certificate, a wildcard covers one label, and a client that sends
    // no name, or one nobody serves, gets the default.
    let cn = |s: String| s.contains("CN = ") || s.contains("CN=");
    let shop = presented(tls, Some("shop.test"));
    assert!(cn(shop.clone()) && shop.contains("shop.test"), "{shop}");
    assert!(presented(tls, Some("www.shop.test")).contains("shop.test"));
    assert!(presented(tls, Some("api.test")).contains("api.test"));
    assert!(presented(tls, Some("other.test")).contains("fallback.test"));
    assert!(presented(tls, None).contains("fallback.test"));

    // curl, verifying against the test CA, over HTTP/1.1 and HTTP/2 (ALPN).
    for (flag, version) in [("--http1.1", "1.1"), ("--http2", "2")] {
        let (out, err) = curl(&[
            flag,
            "--cacert",
            &ca,
            "--resolve",
            &resolve("shop.test"),
            "-H",
            "x-customer-id: tess",
            "-H",
            "x-customer-tier: gold",
            "-w",
            "\n%{http_code} %{http_version}",
            &format!("https://shop.test:{port}/checkout/cart"),
        ]);
        let last = out.lines().last().unwrap_or_default().to_string();
        assert_eq!(last, format!("200 {version}"), "{out} {err}");
        assert!(out.contains("\"origin\":\"web\""), "{out}");
    }
    // h2c with prior knowledge on the plain listener, and HTTP/1.1 there still.
    for flag in ["--http2-prior-knowledge", "--http1.1"] {
        let (out, err) = curl(&[
            flag,
            "-H",
            "x-customer-id: tess",
            "-w",
            "\n%{http_code} %{http_version}",
            &format!("http://{plain}/products/1"),
        ]);
        let expect = if flag == "--http1.1" {
            "200 1.1"
        } else {
            "200 2"
        };
        assert_eq!(out.lines().last(), Some(expect), "{out} {err}");
    }
    // Each of them was a request of tess's: measured, and the HTTP/2 checkout protected.
    let adm = running.admin().unwrap();
    let tess = json(&client(), format!("http://{adm}/customers/tess")).await;
    assert_eq!(tess["requests"], 4, "{tess}");
    let (_, metrics) = get(&client(), format!("http://{adm}/metrics"), &[]).await;
    assert_eq!(
        sample(
            &metrics,
            "usher_protected_requests_total",
            &[("why", "tier_on_critical")]
        ),
        Some(2.0),
        "both checkouts, over HTTP/1.1 and HTTP/2"
    );
    // Every handshake is counted by its result; a client that is not speaking TLS, and one that
    // goes away mid-handshake, are counted as failures.
    {
        use std::io::{Read, Write};
        let mut plain_http = std::net::TcpStream::connect(tls).unwrap();
        plain_http
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut buf = Vec::new();
        let _ = plain_http.read_to_end(&mut buf);
        drop(std::net::TcpStream::connect(tls).unwrap());
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let metrics = loop {
        let (_, m) = get(&client(), format!("http://{adm}/metrics"), &[]).await;
        let failed = ["closed", "refused", "malformed", "other"]
            .iter()
            .filter_map(|r| sample(&m, "usher_tls_handshakes_total", &[("result", r)]))
            .sum::<f64>();
        if failed >= 2.0 || std::time::Instant::now() > deadline {
            break m;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    let count =
        |r: &str| sample(&metrics, "usher_tls_handshakes_total", &[("result", r)]).unwrap_or(0.0);
    assert!(count("tls1.3") >= 7.0, "{metrics}");
    assert_eq!(
        (count("malformed"), count("closed")),
        (1.0, 1.0),
        "{metrics}"
    );
    assert_eq!(count("timeout"), 0.0);
    eprintln!(
        "handshakes: tls1.3 {} closed {} refused {} other {}",
        count("tls1.3"),
        count("closed"),
        count("refused"),
        count("other")
    );
    // An HTTP/2 header block past max_header_bytes is refused as HTTP/1.1's is.
    let big = format!("x-big: {}", "a".repeat(10_000));
    let (out, err) = curl(&[
        "--http2",
        "--cacert",
        &ca,
        "--resolve",
        &resolve("shop.test"),
        "-H",
        &big,
        "-w",
        "\n%{http_code}",
        &format!("https://shop.test:{port}/"),
    ]);
    assert_eq!(out.lines().last(), Some("431"), "{out} {err}");
    running.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_swaps_certificates_for_new_handshakes_and_keeps_open_connections() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let pki = pki_with_three(dir.path());
    let origin = Origin::start_local("web").await.unwrap();
    let (plain, tls) = (free_addr(), free_addr());
    let path = dir.path().join("usher.toml");
    std::fs::write(&path, tls_config(&origin, plain, tls, "")).unwrap();
    let (cfg, text) = usher::Config::load_with_text(&path).unwrap();
    let source =
        usher::engine::Source::of_text(Some(path.clone()), &text, usher::time::wall_ms(), "start");
    let running = usher::server::spawn_usher(usher::Usher::with_source(
        cfg,
        source,
        std::time::Instant::now(),
    ))
    .unwrap();
    let before = presented(tls, Some("shop.test"));

    // A kept-alive HTTPS connection, open across the reload.
    let connector = tokio_rustls::TlsConnector::from(trusting(&pki));
    let tcp = tokio::net::TcpStream::connect(tls).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("shop.test").unwrap();
    let mut conn = connector.connect(name, tcp).await.unwrap();
    let ask = b"GET /a HTTP/1.1\r\nHost: shop.test\r\n\r\n";
    let read_answer = |buf: &mut Vec<u8>| String::from_utf8_lossy(buf).to_string();
    conn.write_all(ask).await.unwrap();
    let mut buf = vec![0u8; 8192];
    let n = conn.read(&mut buf).await.unwrap();
    assert!(read_answer(&mut buf[..n].to_vec()).starts_with("HTTP/1.1 200"));

    // It is counted among the open connections as HTTPS (HTTP/1.1 over TLS).
    let (_, metrics) = get(
        &client(),
        format!("http://{}/metrics", running.admin().unwrap()),
        &[],
    )
    .await;
    assert_eq!(
        sample(
            &metrics,
            "usher_connections_open_by_protocol",
            &[("listener", "proxy"), ("protocol", "https")]
        ),
        Some(1.0),
        "{metrics}"
    );
    // A new certificate for the shop, with another name besides.
    pki.issue_files(
        "shop",
        &["shop.test", "new.shop.test", "www.shop.test"],
        false,
    );
    let reloaded = running.usher().reload().expect("the reload is accepted");
    assert_eq!(reloaded.generation, 2);
    let after = presented(tls, Some("shop.test"));
    assert_eq!(before, after, "the same subject...");
    let serial = |sni: &str| {
        let out = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "openssl s_client -connect {tls} -servername {sni} </dev/null 2>/dev/null | openssl x509 -noout -serial"
            ))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let new_serial = serial("shop.test");
    assert!(new_serial.starts_with("serial="), "{new_serial}");
    let on_disk = Command::new("openssl")
        .args(["x509", "-noout", "-serial", "-in"])
        .arg(dir.path().join("shop.pem"))
        .output()
        .unwrap();
    assert_eq!(
        new_serial,
        String::from_utf8_lossy(&on_disk.stdout).trim(),
        "...but the new certificate"
    );
    // The connection opened before is served on.
    conn.write_all(ask).await.unwrap();
    let n = conn.read(&mut buf).await.unwrap();
    assert!(read_answer(&mut buf[..n].to_vec()).starts_with("HTTP/1.1 200"));

    // A reload with a key that is not the certificate's is refused whole; the certificates in
    // force stay.
    std::fs::copy(dir.path().join("api.key"), dir.path().join("shop.key")).unwrap();
    let err = running
        .usher()
        .reload()
        .expect_err("a mismatched key is refused");
    let text = err.to_string();
    assert!(
        text.contains("server.tls.certificates[0].key") && text.contains("is not the key of"),
        "{text}"
    );
    assert_eq!(serial("shop.test"), new_serial);
    running.stop();
}

#[test]
fn check_reports_every_certificate_problem_with_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestCa::new(dir.path(), "ca");
    pki.issue_files("good", &["shop.test"], false);
    pki.issue_files("old", &["old.test"], true);
    pki.issue_files("other", &["other.test"], false);
    let text = format!(
        r#"
[server]
listen = ["{}"]
redirect_to_https = false
[server.tls]
listen = ["{}"]
[[server.tls.certificates]]
cert = "missing.pem"
key = "good.key"
[[server.tls.certificates]]
cert = "good.pem"
key = "other.key"
[[server.tls.certificates]]
cert = "old.pem"
key = "old.key"
[[server.tls.certificates]]
cert = "good.pem"
key = "good.key"
names = ["api.test"]
[[server.tls.certificates]]
cert = "other.pem"
[[pools]]
name = "web"
upstreams = ["127.0.0.1:9"]
[[routes]]
name = "all"
pool = "web"
"#,
        free_addr(),
        free_addr()
    );
    let err = usher::Config::parse(&text, dir.path())
        .unwrap_err()
        .to_string();
    for want in [
        "server.tls.certificates[0].cert: cannot read",
        "server.tls.certificates[1].key:",
        "is not the key of the certificate",
        "server.tls.certificates[2].cert:",
        "expired",
        "server.tls.certificates[3].names: api.test is not among the names",
        "server.tls.certificates[4]: needs both cert and key",
    ] {
        assert!(err.contains(want), "missing {want:?} in:\n{err}");
    }
    // A device or a pipe where a PEM file should be is refused at once, not read for ever.
    let fifo = dir.path().join("key.fifo");
    assert!(Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let text2 = text
        .replace("cert = \"missing.pem\"", "cert = \"/dev/zero\"")
        .replace(
            "key = \"old.key\"",
            &format!("key = \"{}\"", fifo.display()),
        );
    let err = usher::Config::parse(&text2, dir.path())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("server.tls.certificates[0].cert: cannot read /dev/zero: not a regular file"),
        "{err}"
    );
    assert!(
        err.contains("server.tls.certificates[2].key: cannot read")
            && err.contains("not a regular file"),
        "{err}"
    );
    // Redirecting to https with no TLS listener to redirect to is an error too.
    let text = format!(
        "[server]\nlisten = [\"{}\"]\nredirect_to_https = true\n[[pools]]\nname = \"web\"\nupstreams = [\"127.0.0.1:9\"]\n[[routes]]\nname = \"all\"\npool = \"web\"\n",
        free_addr()
    );
    let err = usher::Config::parse(&text, dir.path())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("server.redirect_to_https: needs TLS listeners"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_listener_can_send_everyone_to_https() {
    let dir = tempfile::tempdir().unwrap();
    let _pki = pki_with_three(dir.path());
    let origin = Origin::start_local("web").await.unwrap();
    let (plain, tls) = (free_addr(), free_addr());
    let cfg = usher::Config::parse(
        &tls_config(&origin, plain, tls, "redirect_to_https = true"),
        dir.path(),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let running = usher::server::spawn(cfg).unwrap();
    let (out, err) = curl(&[
        "-H",
        "host: shop.test",
        "-w",
        "%{http_code} %{redirect_url}",
        &format!("http://{plain}/checkout/pay?step=2"),
    ]);
    assert_eq!(
        out,
        format!("308 https://shop.test:{}/checkout/pay?step=2", tls.port()),
        "{err}"
    );
    assert_eq!(origin.behavior.requests(), 0, "nothing was proxied");
    running.stop();
}

/// A rustls client configuration that trusts the test CA and offers no ALPN (HTTP/1.1).
fn trusting(pki: &TestCa) -> std::sync::Arc<tokio_rustls::rustls::ClientConfig> {
    let mut roots = tokio_rustls::rustls::RootCertStore::empty();
    use rustls::pki_types::pem::PemObject;
    for c in rustls::pki_types::CertificateDer::pem_file_iter(pki.path()).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let config = tokio_rustls::rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        tokio_rustls::rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    std::sync::Arc::new(config)
}

/// One whole HTTP/1.1 response read off `conn` (its head and a `content-length` or chunked body),
/// leaving the connection ready for the next request.
async fn read_response<S: tokio::io::AsyncRead + Unpin>(conn: &mut S) -> String {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&got[..end]).to_ascii_lowercase();
            let length = head.lines().find_map(|l| {
                l.strip_prefix("content-length:")
                    .and_then(|v| v.trim().parse::<usize>().ok())
            });
            let done = match length {
                Some(n) => got.len() >= end + 4 + n,
                None => got.ends_with(b"0\r\n\r\n"),
            };
            if done {
                return String::from_utf8_lossy(&got).into_owned();
            }
        }
        let n = tokio::time::timeout(std::time::Duration::from_secs(10), conn.read(&mut buf))
            .await
            .expect("the response comes within 10 s")
            .expect("the connection reads");
        assert!(
            n > 0,
            "closed mid-response: {}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
    }
}

/// A TLS connection to `tls` for shop.test that has completed its handshake and one request.
async fn served_over_tls(
    connector: &tokio_rustls::TlsConnector,
    tls: std::net::SocketAddr,
    path: &str,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    use tokio::io::AsyncWriteExt;
    let tcp = tokio::net::TcpStream::connect(tls).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("shop.test").unwrap();
    let mut conn = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        connector.connect(name, tcp),
    )
    .await
    .expect("the handshake is done within 10 s")
    .expect("the handshake succeeds");
    let ask = format!("GET {path} HTTP/1.1\r\nHost: shop.test\r\nx-customer-id: tess\r\n\r\n");
    conn.write_all(ask.as_bytes()).await.unwrap();
    let answer = read_response(&mut conn).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("\"origin\":\"web\""), "{answer}");
    conn
}

/// What a raw TCP client sending `hello` to `addr` is sent back, read until the server closes
/// (a reset ends it too: what arrived before it is kept); `None` if it is still open after 5 s.
async fn answer_to(addr: std::net::SocketAddr, hello: &[u8]) -> Option<Vec<u8>> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    // The server may have closed already: the write may then fail, the read says what came.
    let _ = tcp.write_all(hello).await;
    let mut got = Vec::new();
    let read = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        let mut buf = [0u8; 4096];
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    read.ok().map(|()| got)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_listener_at_capacity_closes_new_clients_without_a_plaintext_503() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki_with_three(dir.path());
    let origin = Origin::start_local("web").await.unwrap();
    let (plain, tls) = (free_addr(), free_addr());
    let cfg = usher::Config::parse(
        &tls_config(&origin, plain, tls, "max_connections = 2"),
        dir.path(),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let running = usher::server::spawn(cfg).unwrap();
    let adm = running.admin().unwrap();
    let metrics = || async { get(&client(), format!("http://{adm}/metrics"), &[]).await.1 };
    let proxy = |m: &str, name: &str, labels: &[(&str, &str)]| {
        let mut all = vec![("listener", "proxy")];
        all.extend_from_slice(labels);
        sample(m, name, &all).unwrap_or(0.0)
    };
    let refused = |m: &str| {
        proxy(
            m,
            "usher_connections_refused_total",
            &[("reason", "capacity")],
        )
    };
    let config = trusting(&pki);
    let connector = tokio_rustls::TlsConnector::from(config.clone());

    // Two TLS connections take the two slots, each served once and held open (kept alive).
    let first = served_over_tls(&connector, tls, "/a").await;
    let mut second = served_over_tls(&connector, tls, "/b").await;
    let m = metrics().await;
    assert_eq!(
        proxy(&m, "usher_connections_open", &[]),
        2.0,
        "both held: {m}"
    );
    let refused_before = refused(&m);

    // A third TLS client is turned away: its handshake fails, whatever the way it is closed.
    let tcp = tokio::net::TcpStream::connect(tls).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("shop.test").unwrap();
    let third = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        connector.connect(name.clone(), tcp),
    )
    .await
    .expect("a client past the cap is closed, not left waiting");
    let err = third.expect_err("a handshake past the cap fails");
    eprintln!("third TLS client: {err}");

    // What the server sends a client past the cap that opens with a real ClientHello: nothing
    // that is HTTP (a plaintext 503 is garbage to a TLS client mid-handshake).
    let mut hello_conn =
        tokio_rustls::rustls::ClientConnection::new(config.clone(), name.to_owned()).unwrap();
    let mut hello = Vec::new();
    while hello_conn.wants_write() {
        hello_conn.write_tls(&mut hello).unwrap();
    }
    assert_eq!(
        (hello.first(), hello.get(5)),
        (Some(&0x16), Some(&0x01)),
        "a handshake record holding a ClientHello"
    );
    let answer = answer_to(tls, &hello)
        .await
        .expect("a client past the cap is closed, not left waiting");
    let shown = String::from_utf8_lossy(&answer).into_owned();
    assert!(
        !answer.starts_with(b"HTTP/1.1 503"),
        "a plaintext 503 on TLS: {shown:?}"
    );
    assert!(
        answer.is_empty() || answer[0] == 0x15,
        "nothing, or at most a TLS alert: {answer:02x?} {shown:?}"
    );
    // The same probe on the plain listener, which shares the cap, does read the 503: the check
    // above would have seen one.
    let control = answer_to(plain, &hello)
        .await
        .expect("the plain listener's refusal closes too");
    let control = String::from_utf8_lossy(&control).into_owned();
    assert!(control.starts_with("HTTP/1.1 503"), "{control:?}");
    assert!(control.contains("retry-after: 1"), "{control:?}");

    // All three refusals are counted as at capacity.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let m = loop {
        let m = metrics().await;
        if refused(&m) >= refused_before + 3.0 || std::time::Instant::now() > deadline {
            break m;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_eq!(refused(&m), refused_before + 3.0, "{m}");
    assert_eq!(
        proxy(&m, "usher_connections_open", &[]),
        2.0,
        "the held two are open still"
    );

    // The connections held are served on, and once one closes its slot is a new client's.
    {
        use tokio::io::AsyncWriteExt;
        second
            .write_all(b"GET /c HTTP/1.1\r\nHost: shop.test\r\n\r\n")
            .await
            .unwrap();
        let again = read_response(&mut second).await;
        assert!(again.starts_with("HTTP/1.1 200"), "{again}");
    }
    drop(first);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let m = metrics().await;
        if proxy(&m, "usher_connections_open", &[]) < 2.0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the closed connection's slot is given back within 5 s: {m}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let _fourth = served_over_tls(&connector, tls, "/d").await;
    drop(second);
    running.stop();
}

/// One HTTP/2 connection (hyper's client over `io`) with a request every 250 ms for 3 s: the
/// statuses, the connection's sender (it closes when dropped) and its driver (finished when the
/// connection is).
async fn h2_requests_over_time<I>(
    io: I,
    base: &str,
) -> (
    Vec<u16>,
    hyper::client::conn::http2::SendRequest<http_body_util::Empty<bytes::Bytes>>,
    tokio::task::JoinHandle<hyper::Result<()>>,
)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(io),
    )
    .await
    .unwrap();
    let driver = tokio::spawn(conn);
    let mut statuses = Vec::new();
    for i in 0..12 {
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        let req = hyper::Request::builder()
            .uri(format!("{base}/page/{i}"))
            .header("x-customer-id", "hana")
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .unwrap();
        match send.send_request(req).await {
            Ok(r) => statuses.push(r.status().as_u16()),
            Err(e) => panic!("request {i} on the connection failed: {e}"),
        }
    }
    (statuses, send, driver)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_connection_in_use_outlives_the_head_timeout_over_tls_and_h2c() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki_with_three(dir.path());
    let origin = Origin::start_local("web").await.unwrap();
    let (plain, tls) = (free_addr(), free_addr());
    let cfg = usher::Config::parse(
        &tls_config(
            &origin,
            plain,
            tls,
            "head_timeout = \"1s\"\nidle_timeout = \"2s\"",
        ),
        dir.path(),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let running = usher::server::spawn(cfg).unwrap();

    // HTTP/2 by ALPN: the head timeout covers the handshake and the first request only; the
    // connection then serves for as long as it is used.
    let mut config = (*trusting(&pki)).clone();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(tls).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("shop.test").unwrap();
    let conn = connector.connect(name, tcp).await.unwrap();
    assert_eq!(conn.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (statuses, _send, driver) = h2_requests_over_time(conn, "https://shop.test").await;
    assert_eq!(statuses, vec![200; 12], "3 s of requests on one connection");
    assert!(
        !driver.is_finished(),
        "the connection is still up after 3 s, past the 1 s head timeout"
    );

    // h2c with prior knowledge, the same; and once it idles, it is closed at the idle timeout,
    // not earlier.
    let tcp = tokio::net::TcpStream::connect(plain).await.unwrap();
    let (statuses, _send, driver) = h2_requests_over_time(tcp, &format!("http://{plain}")).await;
    assert_eq!(statuses, vec![200; 12]);
    let idle_from = std::time::Instant::now();
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    assert!(!driver.is_finished(), "closed before the 2 s idle timeout");
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), driver).await;
    let idled = idle_from.elapsed();
    assert!(
        idled >= std::time::Duration::from_millis(1900)
            && idled < std::time::Duration::from_secs(5),
        "closed after {idled:?} idle, with a 2 s idle timeout"
    );
    running.stop();
}
