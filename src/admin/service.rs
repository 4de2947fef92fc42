//! Serving the admin API from inside a Pingora server: an ordinary Pingora service, so usher's binary
//! and an embedding proxy add it to their `Server` the same way.

use super::{access, api};
use crate::defaults as d;
use crate::engine::{wall_ms, Usher};
use crate::settings::ConnectionLimits;
use crate::transport::{self, Guarded};
use async_trait::async_trait;
use pingora::apps::http_app::HttpServer;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use pingora::services::listening::Service;
use std::net::SocketAddr;
use std::sync::Arc;

pub struct AdminApp {
    usher: Arc<Usher>,
    refusals: access::Refusals,
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> http::Response<Vec<u8>> {
        transport::request_started(session.stream());
        let answer = self.answer(session).await;
        // The answer is small and written at once; the connection idles from here.
        transport::request_finished(session.stream());
        answer
    }
}

impl AdminApp {
    async fn answer(&self, session: &mut ServerSession) -> http::Response<Vec<u8>> {
        let req = session.req_header();
        let (method, path, query) = (
            req.method.as_str().to_string(),
            req.uri.path().to_string(),
            req.uri.query().map(str::to_string),
        );
        let source = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        let authorization = req
            .headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        let caller = api::Caller {
            loopback: source.is_some_and(|ip| ip.is_loopback()),
            role: access::role_of(&self.usher.generation().config.admin_tokens, authorization),
        };
        let presented = authorization.is_some();
        let usher = self.usher.clone();
        // Scans of a large store take milliseconds, and a reload reads and checks a file: keep them
        // off the admin listener's reactor.
        let reply = tokio::task::spawn_blocking(move || {
            api::handle(&usher, &method, &path, query.as_deref(), wall_ms(), caller)
        })
        .await
        .unwrap_or_else(|_| api::Reply {
            status: 500,
            content_type: "text/plain",
            body: b"admin handler failed\n".to_vec(),
        });
        if matches!(reply.status, 401 | 403) {
            if let Some(ip) = source.filter(|ip| self.refusals.should_log(*ip, wall_ms())) {
                let req = session.req_header();
                tracing::warn!(source = %ip, method = %req.method, path = req.uri.path(), token = presented, status = reply.status,
                    "admin API refused a caller (logged once a minute per source)");
            }
        }
        let is_head = session.req_header().method == http::Method::HEAD;
        let len = reply.body.len();
        let mut answer = http::Response::builder();
        if reply.status == 401 {
            answer = answer.header("www-authenticate", "Bearer");
        }
        answer
            .status(reply.status)
            .header("content-type", reply.content_type)
            .header("content-length", len)
            .header("cache-control", "no-store")
            .body(if is_head { Vec::new() } else { reply.body })
            .unwrap_or_default()
    }
}

/// The admin API as a Pingora service listening on `addr`: at most [`d::ADMIN_MAX_CONNECTIONS`]
/// connections, under the proxy's head and idle timeouts.
pub fn admin_service(
    usher: Arc<Usher>,
    addr: SocketAddr,
) -> Service<Guarded<HttpServer<AdminApp>>> {
    let connections = usher.state().admin_connections.clone();
    let limits = {
        let usher = usher.clone();
        Arc::new(move || ConnectionLimits {
            max: d::ADMIN_MAX_CONNECTIONS,
            ..usher.generation().config.server.connections
        })
    };
    let app = HttpServer::new_app(AdminApp {
        usher,
        refusals: access::Refusals::default(),
    });
    let mut svc = Service::new(
        "usher admin".to_string(),
        Guarded::new(app, connections, limits),
    );
    svc.add_tcp(&addr.to_string());
    svc
}
