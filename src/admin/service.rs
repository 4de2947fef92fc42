//! Serving the admin API from inside a Pingora server: an ordinary Pingora service, so usher's binary
//! and an embedding proxy add it to their `Server` the same way.

use super::{access, api, audit};
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
    audit: Arc<audit::AuditLog>,
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
        let g = self.usher.generation();
        let token = access::token_of(&g.config.admin_tokens, authorization);
        let caller = api::Caller {
            loopback: source.is_some_and(|ip| ip.is_loopback()),
            role: token.map(|t| t.role),
        };
        // Who the audit log says it was.
        let who = match token {
            Some(t) => (t.label(), t.role),
            None => ("loopback".to_string(), crate::config::Role::Operator),
        };
        let audit_to = g.config.admin_audit_log.clone();
        drop(g);
        let presented = authorization.is_some();
        let usher = self.usher.clone();
        let audit = self.audit.clone();
        // Scans of a large store take milliseconds, a reload reads and checks a file, and the
        // audit log is written and flushed: keep them off the admin listener's reactor.
        let reply = tokio::task::spawn_blocking(move || {
            let now_ms = wall_ms();
            let reply = api::handle(&usher, &method, &path, query.as_deref(), now_ms, caller);
            if let (Some(a), Some(file)) = (&reply.audit, &audit_to) {
                let record = audit::Record {
                    time: api::rfc3339(now_ms),
                    who: &who.0,
                    role: match who.1 {
                        crate::config::Role::Viewer => "viewer",
                        crate::config::Role::Operator => "operator",
                    },
                    from: source,
                    action: a.action,
                    customer: &a.customer,
                    status: reply.status,
                };
                audit.write(file, &record, now_ms, &usher.state().metrics);
            }
            reply
        })
        .await
        .unwrap_or_else(|_| api::Reply {
            status: 500,
            content_type: "text/plain",
            body: b"admin handler failed\n".to_vec(),
            audit: None,
        });
        if matches!(reply.status, 401 | 403) {
            if let Some(ip) = source.filter(|ip| self.refusals.should_log(*ip, wall_ms())) {
                let req = session.req_header();
                // A customer's id is not for the process log: the path says which endpoint only.
                let path = match req.uri.path() {
                    p if p.starts_with("/customers/") && p.ends_with("/events") => {
                        "/customers/{id}/events"
                    }
                    p if p.starts_with("/customers/") => "/customers/{id}",
                    p => p,
                };
                tracing::warn!(source = %ip, method = %req.method, path, token = presented, status = reply.status,
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
            .header("x-content-type-options", "nosniff")
            .header("content-security-policy", super::page::CSP)
            .header("referrer-policy", "no-referrer")
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
        audit: Arc::new(audit::AuditLog::default()),
    });
    let mut svc = Service::new(
        "usher admin".to_string(),
        Guarded::new(app, connections, limits),
    );
    svc.add_tcp(&addr.to_string());
    svc
}
