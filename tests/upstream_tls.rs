//! TLS towards upstreams: an https origin with its own CA (made here with rcgen), verified by
//! usher, with a client certificate it demands, over HTTP/1.1 and HTTP/2, and health checks
//! that follow the pool's scheme.

mod common;

use common::*;
use std::sync::Arc;
use tokio_rustls::rustls;

/// An https origin for `origin.test`: answers its protocol and whether the client showed a
/// certificate; demands one signed by `clients` when given. Counts its health checks.
async fn https_origin(
    server: &TestCa,
    clients: Option<&TestCa>,
    checks: Arc<std::sync::atomic::AtomicUsize>,
) -> std::net::SocketAddr {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
    let (cert, key) = server.issue(&["origin.test"], false);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap();
    let builder = match clients {
        Some(c) => {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(c.cert.der().clone()).unwrap();
            let v = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .unwrap();
            builder.with_client_cert_verifier(v)
        }
        None => builder.with_no_client_auth(),
    };
    let mut cfg = builder
        .with_single_cert(
            vec![CertificateDer::from(cert.der().to_vec())],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
        .unwrap();
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let (acceptor, checks) = (acceptor.clone(), checks.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(s).await else {
                    return;
                };
                let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
                let client_cert = tls.get_ref().1.peer_certificates().is_some();
                let svc = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let checks = checks.clone();
                        async move {
                            if req.uri().path() == "/healthz" {
                                checks.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            }
                            let body = serde_json::json!({
                                "version": format!("{:?}", req.version()),
                                "client_cert": client_cert,
                            })
                            .to_string();
                            Ok::<_, std::convert::Infallible>(hyper::Response::new(
                                http_body_util::Full::new(bytes::Bytes::from(body)),
                            ))
                        }
                    },
                );
                let io = hyper_util::rt::TokioIo::new(tls);
                if h2 {
                    let _ = hyper::server::conn::http2::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .serve_connection(io, svc)
                    .await;
                } else {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, svc)
                        .await;
                }
            });
        }
    });
    addr
}

fn pool_config(
    addr: std::net::SocketAddr,
    extra: &str,
    dir: &std::path::Path,
) -> Result<usher::Config, usher::config::ConfigErrors> {
    let text = format!(
        "[server]\nlisten = [\"{}\"]\nadmin = \"{}\"\n[[pools]]\nname = \"secure\"\nupstreams = [\"{addr}\"]\ntls = true\nsni = \"origin.test\"\nca_file = \"origin-ca.pem\"\nhealth_check = {{ path = \"/healthz\", interval = \"100ms\", timeout = \"100ms\" }}\n{extra}\n[[routes]]\nname = \"all\"\npool = \"secure\"\n",
        free_addr(),
        free_addr()
    );
    usher::Config::parse(&text, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_pool_is_verified_against_its_ca_with_a_client_certificate_over_h1_and_h2() {
    let dir = tempfile::tempdir().unwrap();
    let server_ca = TestCa::new(dir.path(), "origin-ca");
    let client_ca = TestCa::new(dir.path(), "client-ca");
    let (cert, key) = client_ca.issue(&["usher.test"], false);
    std::fs::write(dir.path().join("usher-client.pem"), cert.pem()).unwrap();
    std::fs::write(dir.path().join("usher-client.key"), key.serialize_pem()).unwrap();
    let checks = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let origin = https_origin(&server_ca, Some(&client_ca), checks.clone()).await;
    let mtls = "client_cert = \"usher-client.pem\"\nclient_key = \"usher-client.key\"";
    for (h2, version) in [(false, "HTTP/1.1"), (true, "HTTP/2.0")] {
        let extra = if h2 {
            format!("{mtls}\nh2 = true")
        } else {
            mtls.to_string()
        };
        let running =
            usher::server::spawn(pool_config(origin, &extra, dir.path()).unwrap()).unwrap();
        let (status, body) = get(&client(), format!("http://{}/x", running.listen()), &[]).await;
        assert_eq!(status, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            (v["version"].as_str(), v["client_cert"].as_bool()),
            (Some(version), Some(true)),
            "{v}"
        );
        // The health checks go over TLS too, and keep it up.
        let before = checks.load(std::sync::atomic::Ordering::Relaxed);
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        assert!(
            checks.load(std::sync::atomic::Ordering::Relaxed) > before,
            "health checks reached it"
        );
        let ups = json(
            &client(),
            format!("http://{}/upstreams", running.admin().unwrap()),
        )
        .await;
        assert_eq!(ups["upstreams"][0]["active_check"], "up", "{ups}");
        running.stop();
    }

    // Without its client certificate the origin refuses the handshake: a failure, not a success.
    let running = usher::server::spawn(pool_config(origin, "", dir.path()).unwrap()).unwrap();
    let (status, _) = get(&client(), format!("http://{}/x", running.listen()), &[]).await;
    assert_eq!(status, 502);
    running.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_whose_certificate_is_not_from_the_pool_s_ca_is_never_used() {
    let dir = tempfile::tempdir().unwrap();
    let _ours = TestCa::new(dir.path(), "origin-ca");
    let stranger = TestCa::new(dir.path(), "stranger-ca");
    let checks = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let origin = https_origin(&stranger, None, checks.clone()).await;
    let running = usher::server::spawn(pool_config(origin, "", dir.path()).unwrap()).unwrap();
    let (status, _) = get(&client(), format!("http://{}/x", running.listen()), &[]).await;
    assert_eq!(status, 502, "a certificate from another CA is refused");
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let ups = json(
        &client(),
        format!("http://{}/upstreams", running.admin().unwrap()),
    )
    .await;
    assert_eq!(ups["upstreams"][0]["active_check"], "down", "{ups}");
    assert_eq!(
        checks.load(std::sync::atomic::Ordering::Relaxed),
        0,
        "no check got through"
    );
    running.stop();
}

#[test]
fn check_reports_bad_upstream_tls_settings_with_their_paths() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path(), "origin-ca");
    let other = TestCa::new(dir.path(), "other-ca");
    let (cert, _) = ca.issue(&["usher.test"], false);
    let (_, wrong_key) = other.issue(&["x.test"], false);
    std::fs::write(dir.path().join("c.pem"), cert.pem()).unwrap();
    std::fs::write(dir.path().join("wrong.key"), wrong_key.serialize_pem()).unwrap();
    std::fs::write(dir.path().join("empty.pem"), "").unwrap();
    let addr: std::net::SocketAddr = "127.0.0.1:9443".parse().unwrap();
    let err = pool_config(
        addr,
        "client_cert = \"c.pem\"\nclient_key = \"wrong.key\"",
        dir.path(),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("pools[0].client_key:") && err.contains("is not the key of"),
        "{err}"
    );
    let text = format!(
        "[[pools]]\nname = \"a\"\nupstreams = [\"{addr}\"]\ntls = true\nca_file = \"empty.pem\"\n[[pools]]\nname = \"b\"\nupstreams = [\"{addr}\"]\nsni = \"x\"\n[[routes]]\nname = \"all\"\npool = \"a\"\n"
    );
    let err = usher::Config::parse(&text, dir.path())
        .unwrap_err()
        .to_string();
    for want in [
        "pools[0].sni: needs the name",
        "pools[0].ca_file:",
        "holds no PEM certificate",
        "pools[1].sni: only for a pool with tls = true",
    ] {
        assert!(err.contains(want), "missing {want:?} in:\n{err}");
    }
}
