//! usher's own `ProxyHttp`: every phase delegates to [`UsherHooks`], the same API embedders use.

use super::errors::status_for;
use super::hooks::UsherHooks;
use crate::engine::Exchange;
use crate::transport;
use async_trait::async_trait;
use bytes::Bytes;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::protocols::Digest;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, Result};

pub struct UsherProxy {
    hooks: UsherHooks,
}

impl UsherProxy {
    pub fn new(hooks: UsherHooks) -> Self {
        UsherProxy { hooks }
    }
}

#[async_trait]
impl ProxyHttp for UsherProxy {
    type CTX = Exchange;

    fn new_ctx(&self) -> Exchange {
        Exchange::new()
    }

    async fn early_request_filter(&self, session: &mut Session, _ex: &mut Exchange) -> Result<()> {
        transport::request_started(session.stream());
        // RFC 9112 9.3.2: a server must answer pipelined requests in order. Pingora drops the
        // second and later ones unless told otherwise (it closes after the first); the setting
        // sticks for the rest of the connection.
        session.set_pipelining_enabled(true);
        // Pingora waits for ever on a client that stops taking the response: a stall as long as
        // the idle timeout ends it.
        let idle = self
            .hooks
            .usher()
            .generation()
            .config
            .server
            .connections
            .idle_timeout;
        session.set_write_timeout(Some(idle));
        Ok(())
    }

    async fn request_filter(&self, session: &mut Session, ex: &mut Exchange) -> Result<bool> {
        let admission = self.hooks.on_request(session, ex);
        // After admission, so that the redirect has its request id and is on the customer's
        // journey (it is what they saw).
        if let Some(location) = https_redirect(&self.hooks.usher().generation().config, session) {
            let mut resp = ResponseHeader::build(308, Some(3))?;
            resp.insert_header("location", location)?;
            resp.insert_header("content-length", "0")?;
            self.hooks.on_response(&mut resp, ex)?;
            session.write_response_header(Box::new(resp), true).await?;
            return Ok(true);
        }
        let Some((status, body)) = admission.refusal() else {
            return Ok(false);
        };
        let mut resp = ResponseHeader::build(status, Some(4))?;
        resp.insert_header("content-type", "text/plain")?;
        if status == 503 {
            resp.insert_header("retry-after", "1")?;
        }
        self.hooks.on_response(&mut resp, ex)?;
        resp.insert_header("content-length", body.len().to_string())?;
        session.write_response_header(Box::new(resp), false).await?;
        session
            .write_response_body(Some(Bytes::from_static(body.as_bytes())), true)
            .await?;
        Ok(true)
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ex: &mut Exchange,
    ) -> Result<Box<HttpPeer>> {
        self.hooks.upstream_peer(ex)
    }

    async fn connected_to_upstream(
        &self,
        _session: &mut Session,
        _reused: bool,
        _peer: &HttpPeer,
        #[cfg(unix)] _fd: std::os::unix::io::RawFd,
        #[cfg(windows)] _sock: std::os::windows::io::RawSocket,
        _digest: Option<&Digest>,
        ex: &mut Exchange,
    ) -> Result<()> {
        self.hooks.on_connected(ex);
        Ok(())
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        req: &mut RequestHeader,
        ex: &mut Exchange,
    ) -> Result<()> {
        self.hooks.on_upstream_request(req, ex)
    }

    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ex: &mut Exchange,
    ) -> Result<()> {
        self.hooks.on_upstream_response(session, resp, ex)
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        resp: &mut ResponseHeader,
        ex: &mut Exchange,
    ) -> Result<()> {
        self.hooks.on_response(resp, ex)
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ex: &mut Exchange,
        e: Box<Error>,
    ) -> Box<Error> {
        self.hooks.fail_to_connect(e, ex)
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ex: &mut Exchange,
        client_reused: bool,
    ) -> Box<Error> {
        let e = e.more_context(format!("Peer: {peer}"));
        self.hooks.error_while_proxy(session, e, client_reused, ex)
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        _ex: &mut Exchange,
    ) -> FailToProxy {
        let code = status_for(e);
        if code > 0 {
            // The client may be gone already; then there is no one left to tell.
            let _ = session.respond_error(code).await;
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ex: &mut Exchange) {
        self.hooks.on_logging(session, e, ex);
        transport::request_finished(session.stream());
    }
}

/// Where a request that came in plain must go when `server.redirect_to_https` is on: the same
/// host and path on the first TLS listener's port (left out when it is 443). `None` when it came
/// over TLS, when nothing is redirected, or when it named no host (it is then served as usual,
/// and refused for its missing host like any other).
fn https_redirect(config: &crate::config::Config, session: &Session) -> Option<String> {
    if !config.server.redirect_to_https || session.digest().is_some_and(|d| d.ssl_digest.is_some())
    {
        return None;
    }
    let port = config.server.tls.as_ref()?.listen.first()?.port();
    let req = session.req_header();
    let host = req
        .uri
        .authority()
        .map(|a| a.host().to_string())
        .or_else(|| {
            let h = req.headers.get(http::header::HOST)?.to_str().ok()?;
            let authority: http::uri::Authority = h.parse().ok()?;
            Some(authority.host().to_string())
        })?;
    let path = req.uri.path_and_query().map_or("/", |p| p.as_str());
    Some(if port == 443 {
        format!("https://{host}{path}")
    } else {
        format!("https://{host}:{port}{path}")
    })
}
