//! The TLS rows: a test certificate, a full-handshake load generator, and the keep-alive load
//! generators (wrk for HTTP/1.1, oha for HTTP/2) run over TLS.
//!
//! Full handshakes need a client that never resumes: oha and most clients keep a session cache
//! (rustls' default), and rustls servers (usher, bare Pingora) and nginx all issue TLS 1.3 tickets,
//! so a "new connection per request" run with them measures resumed handshakes. This generator is
//! rustls with `Resumption::disabled()`, X25519 only (what every contestant picks first, with no
//! post-quantum share one side could do and the other not) and no certificate verification (the
//! certificate is self-signed; verifying it would only spend the load core's time).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The test certificate and key every contestant serves.
#[derive(Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// An ECDSA P-256 self-signed certificate for `localhost` and 127.0.0.1, made with openssl.
pub fn make_cert(dir: &Path) -> anyhow::Result<TlsFiles> {
    let files = TlsFiles {
        cert: dir.join("bench-cert.pem"),
        key: dir.join("bench-key.pem"),
    };
    let out = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
        ])
        .args(["-nodes", "-days", "2", "-subj", "/CN=localhost"])
        .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
        .arg("-keyout")
        .arg(&files.key)
        .arg("-out")
        .arg(&files.cert)
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "openssl req failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(files)
}

#[derive(Debug)]
struct AcceptAny(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A client config that never resumes a session, offering `h2` or `http/1.1` by ALPN.
pub fn client_config(h2: bool) -> Arc<rustls::ClientConfig> {
    let mut provider = rustls::crypto::ring::default_provider();
    provider.kx_groups = vec![rustls::crypto::ring::kx_group::X25519];
    let provider = Arc::new(provider);
    let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .expect("TLS 1.2 and 1.3")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAny(provider)))
        .with_no_client_auth();
    config.resumption = rustls::client::Resumption::disabled();
    config.alpn_protocols = vec![if h2 {
        b"h2".to_vec()
    } else {
        b"http/1.1".to_vec()
    }];
    Arc::new(config)
}

/// What a handshake run measured.
#[derive(Debug, Default, Clone)]
pub struct HandshakeRun {
    /// Connections that did the handshake and got a 200.
    pub ok: u64,
    pub errors: u64,
    pub secs: f64,
    /// The first error seen, to say why a run failed.
    pub first_error: Option<String>,
    /// Sorted: connect to end of the handshake.
    pub handshake: Vec<Duration>,
}

impl HandshakeRun {
    pub fn per_second(&self) -> f64 {
        self.ok as f64 / self.secs.max(1e-9)
    }
}

/// One new connection: TCP connect, full TLS handshake, one GET, close.
async fn one(
    target: SocketAddr,
    connector: &tokio_rustls::TlsConnector,
    h2: bool,
) -> anyhow::Result<Duration> {
    let t0 = Instant::now();
    let tcp = TcpStream::connect(target).await?;
    tcp.set_nodelay(true)?;
    let name = rustls::pki_types::ServerName::try_from("localhost")?;
    let mut tls = connector.connect(name, tcp).await?;
    let handshake = t0.elapsed();
    if h2 {
        anyhow::ensure!(
            tls.get_ref().1.alpn_protocol() == Some(b"h2"),
            "the server did not choose h2 by ALPN"
        );
        let (mut client, conn) = h2::client::handshake(tls).await?;
        let driver = tokio::spawn(async move {
            let _ = conn.await;
        });
        let req = http::Request::get("https://localhost/").body(())?;
        let (resp, _) = client.send_request(req, true)?;
        let resp = resp.await?;
        let status = resp.status();
        let mut body = resp.into_body();
        while let Some(chunk) = body.data().await {
            let chunk = chunk?;
            let _ = body.flow_control().release_capacity(chunk.len());
        }
        drop(client);
        driver.abort();
        anyhow::ensure!(status == 200, "status {status}");
    } else {
        tls.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .await?;
        let mut buf = Vec::with_capacity(512);
        // Read to the server's close; an unclean TLS close after a full answer still counts.
        let _ = tls.read_to_end(&mut buf).await;
        anyhow::ensure!(
            buf.starts_with(b"HTTP/1.1 200"),
            "answer {:?}",
            String::from_utf8_lossy(&buf[..buf.len().min(40)])
        );
    }
    Ok(handshake)
}

/// A closed loop of `conns` clients, each opening a new TLS connection per request (full
/// handshake, one GET, close) for `duration`. A throughput ceiling, not a latency measurement.
pub async fn handshakes(
    target: SocketAddr,
    h2: bool,
    conns: usize,
    duration: Duration,
) -> HandshakeRun {
    let connector = tokio_rustls::TlsConnector::from(client_config(h2));
    let start = Instant::now();
    let deadline = start + duration;
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let connector = connector.clone();
        tasks.push(tokio::spawn(async move {
            let mut r = HandshakeRun::default();
            while Instant::now() < deadline {
                match tokio::time::timeout(Duration::from_secs(5), one(target, &connector, h2))
                    .await
                {
                    Ok(Ok(d)) => {
                        r.ok += 1;
                        r.handshake.push(d);
                    }
                    Ok(Err(e)) => {
                        r.errors += 1;
                        r.first_error.get_or_insert_with(|| e.to_string());
                    }
                    Err(_) => {
                        r.errors += 1;
                        r.first_error.get_or_insert_with(|| "timed out".into());
                    }
                }
            }
            r
        }));
    }
    let mut all = HandshakeRun::default();
    for t in tasks {
        if let Ok(r) = t.await {
            all.ok += r.ok;
            all.errors += r.errors;
            all.handshake.extend(r.handshake);
            if all.first_error.is_none() {
                all.first_error = r.first_error;
            }
        }
    }
    all.secs = start.elapsed().as_secs_f64();
    all.handshake.sort();
    all
}

/// A keep-alive run's figures.
#[derive(Debug, Clone, Default)]
pub struct KeepAliveRun {
    pub rps: f64,
    pub requests: u64,
    pub errors: u64,
}

/// `wrk -t1 -c{conns}` over TLS (OpenSSL, HTTP/1.1, keep-alive), or over plain HTTP/1.1 when
/// `tls` is false: the same client and requests, so the two rates differ by TLS alone.
pub fn wrk_keepalive(
    target: SocketAddr,
    tls: bool,
    conns: usize,
    secs: u64,
) -> anyhow::Result<KeepAliveRun> {
    let scheme = if tls { "https" } else { "http" };
    let out = Command::new("wrk")
        .args(["-t1", &format!("-c{conns}"), &format!("-d{secs}s")])
        .arg(format!("{scheme}://{target}/"))
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let rps = text
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| anyhow::anyhow!("wrk printed no Requests/sec:\n{text}"))?;
    let requests = text
        .lines()
        .find_map(|l| {
            l.trim()
                .split_once(" requests in")
                .map(|(n, _)| n.trim().to_string())
        })
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    let errors = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Non-2xx or 3xx responses:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0);
    Ok(KeepAliveRun {
        rps,
        requests,
        errors,
    })
}

/// `oha --http2 -c{conns} -p{streams}` over TLS (rustls, keep-alive), closed loop.
pub fn oha_h2(
    oha: &Path,
    target: SocketAddr,
    conns: usize,
    streams: usize,
    secs: u64,
) -> anyhow::Result<KeepAliveRun> {
    oha_run(
        oha,
        &format!("https://{target}/"),
        Some(streams),
        conns,
        &["-z", &format!("{secs}s")],
    )
}

/// Exactly `n` requests by oha over `conns` keep-alive connections: HTTP/2 with `streams` each
/// when given, else HTTP/1.1; to `https://` or `http://` `target` as `tls` says.
pub fn oha_requests(
    oha: &Path,
    target: SocketAddr,
    tls: bool,
    h2_streams: Option<usize>,
    conns: usize,
    n: u64,
) -> anyhow::Result<KeepAliveRun> {
    let scheme = if tls { "https" } else { "http" };
    oha_run(
        oha,
        &format!("{scheme}://{target}/"),
        h2_streams,
        conns,
        &["-n", &n.to_string()],
    )
}

fn oha_run(
    oha: &Path,
    url: &str,
    h2_streams: Option<usize>,
    conns: usize,
    how_much: &[&str],
) -> anyhow::Result<KeepAliveRun> {
    let mut cmd = Command::new(oha);
    cmd.args(["--no-tui", "--insecure", "--output-format", "json"])
        .args(["-c", &conns.to_string()]);
    if let Some(streams) = h2_streams {
        cmd.args(["--http2", "-p", &streams.to_string()]);
    }
    let out = cmd.args(how_much).arg(url).output()?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).map_err(|e| {
        anyhow::anyhow!(
            "oha printed no JSON ({e}): {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    let codes = &v["statusCodeDistribution"];
    let ok = codes["200"].as_u64().unwrap_or(0);
    let all: u64 = codes
        .as_object()
        .map(|m| m.values().filter_map(|n| n.as_u64()).sum())
        .unwrap_or(0);
    // Requests still in flight when `-z` ends are counted as "aborted due to deadline": not errors.
    let failed: u64 = v["errorDistribution"]
        .as_object()
        .map(|m| {
            m.iter()
                .filter(|(k, _)| !k.contains("deadline"))
                .filter_map(|(_, n)| n.as_u64())
                .sum()
        })
        .unwrap_or(0);
    let total = v["summary"]["total"].as_f64().unwrap_or(1.0);
    Ok(KeepAliveRun {
        rps: ok as f64 / total.max(1e-9),
        requests: ok,
        errors: all - ok + failed,
    })
}
