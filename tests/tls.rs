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
    let mut roots = tokio_rustls::rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_file_iter(pki.path()).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    use rustls::pki_types::pem::PemObject;
    let config = tokio_rustls::rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        tokio_rustls::rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
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
