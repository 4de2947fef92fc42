//! The route table: which route a request belongs to, and so its pool, criticality and latency target.
//!
//! First match wins, in config order. A path prefix matches whole segments: `/checkout` matches
//! `/checkout` and `/checkout/pay` but not `/checkouts` (Envoy's plain string prefix would), because
//! a route is what a customer journey step is judged by, and a near-miss name is a different page.
//! Matching allocates nothing. No regexes: operators read these tables at 3 a.m.

use crate::config::{HeaderMatch, HostMatch, RouteConfig, RouteId, RouteMatch};
use crate::matchers::path_has_prefix;
use http::{HeaderMap, Method, Uri};

#[derive(Debug, Clone)]
pub struct RouteTable {
    matchers: Vec<RouteMatch>,
}

impl RouteTable {
    pub fn new(routes: &[RouteConfig]) -> Self {
        RouteTable {
            matchers: routes.iter().map(|r| r.matcher.clone()).collect(),
        }
    }

    pub fn find(&self, method: &Method, uri: &Uri, headers: &HeaderMap) -> Option<RouteId> {
        let path = uri.path();
        let host = request_host(uri, headers);
        self.matchers
            .iter()
            .position(|m| matches(m, method, path, host, headers))
            .map(|i| i as RouteId)
    }
}

fn matches(
    m: &RouteMatch,
    method: &Method,
    path: &str,
    host: Option<&str>,
    headers: &HeaderMap,
) -> bool {
    if !m.methods.is_empty() && !m.methods.contains(method) {
        return false;
    }
    if let Some(prefix) = &m.path_prefix {
        if !path_has_prefix(path, prefix) {
            return false;
        }
    }
    if let Some(hm) = &m.host {
        if !host.is_some_and(|h| host_matches(hm, h)) {
            return false;
        }
    }
    if let Some(HeaderMatch { name, value }) = &m.header {
        let ok = match value {
            None => headers.contains_key(name),
            Some(v) => headers.get_all(name).iter().any(|x| x == v),
        };
        if !ok {
            return false;
        }
    }
    true
}

fn host_matches(m: &HostMatch, host: &str) -> bool {
    match m {
        HostMatch::Exact(h) => host.eq_ignore_ascii_case(h),
        HostMatch::Suffix(s) => {
            host.len() > s.len() && host[host.len() - s.len()..].eq_ignore_ascii_case(s)
        }
    }
}

/// The host the client asked for, without port: the URI authority if present (absolute form),
/// else the Host header.
fn request_host<'a>(uri: &'a Uri, headers: &'a HeaderMap) -> Option<&'a str> {
    let raw = match uri.authority() {
        Some(a) => a.host(),
        None => headers.get(http::header::HOST)?.to_str().ok()?,
    };
    Some(strip_port(raw))
}

fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        // [v6]:port
        return host.split_once(']').map_or(host, |(h, _)| &h[1..]);
    }
    match host.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use std::path::Path;

    fn table(toml: &str) -> (Config, RouteTable) {
        let cfg = Config::parse(toml, Path::new(".")).expect("valid config");
        let t = RouteTable::new(&cfg.routes);
        (cfg, t)
    }

    fn req(method: &str, uri: &str, headers: &[(&str, &str)]) -> (Method, Uri, HeaderMap) {
        let mut h = HeaderMap::new();
        for (k, v) in headers {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        (method.parse().unwrap(), uri.parse().unwrap(), h)
    }

    const ROUTES: &str = r#"
[[pools]]
name = "web"
upstreams = ["127.0.0.1:1"]
[[routes]]
name = "api-post"
match = { path_prefix = "/api", method = ["POST", "put"] }
pool = "web"
[[routes]]
name = "shop"
match = { host = "*.shop.example", path_prefix = "/checkout" }
pool = "web"
[[routes]]
name = "beta"
match = { header = { name = "x-beta", value = "1" } }
pool = "web"
[[routes]]
name = "admin-host"
match = { host = "Admin.Example" }
pool = "web"
[[routes]]
name = "root-slash"
match = { path_prefix = "/static/" }
pool = "web"
"#;

    fn find(t: &RouteTable, cfg: &Config, m: &str, u: &str, h: &[(&str, &str)]) -> Option<String> {
        let (m, u, h) = req(m, u, h);
        t.find(&m, &u, &h)
            .map(|i| cfg.routes[i as usize].name.clone())
    }

    #[test]
    fn first_match_wins_and_every_condition_must_hold() {
        let (cfg, t) = table(ROUTES);
        assert_eq!(
            find(&t, &cfg, "POST", "/api/orders", &[]).as_deref(),
            Some("api-post")
        );
        assert_eq!(
            find(&t, &cfg, "PUT", "/api", &[]).as_deref(),
            Some("api-post")
        );
        assert_eq!(find(&t, &cfg, "GET", "/api/orders", &[]), None);
        assert_eq!(
            find(
                &t,
                &cfg,
                "GET",
                "/checkout/pay",
                &[("host", "eu.shop.example:8443")]
            )
            .as_deref(),
            Some("shop")
        );
        // The wildcard covers subdomains, not the apex.
        assert_eq!(
            find(&t, &cfg, "GET", "/checkout", &[("host", "shop.example")]),
            None
        );
        assert_eq!(
            find(&t, &cfg, "GET", "/x", &[("x-beta", "1")]).as_deref(),
            Some("beta")
        );
        assert_eq!(find(&t, &cfg, "GET", "/x", &[("x-beta", "2")]), None);
        assert_eq!(
            find(&t, &cfg, "GET", "/", &[("host", "admin.example")]).as_deref(),
            Some("admin-host")
        );
        assert_eq!(
            find(&t, &cfg, "GET", "http://ADMIN.example:81/", &[]).as_deref(),
            Some("admin-host")
        );
    }

    #[test]
    fn query_string_does_not_affect_path_match() {
        let (cfg, t) = table(ROUTES);
        assert_eq!(
            find(&t, &cfg, "POST", "/api?x=/y", &[]).as_deref(),
            Some("api-post")
        );
    }

    #[test]
    fn strips_ports_from_hosts() {
        assert_eq!(strip_port("example.com:80"), "example.com");
        assert_eq!(strip_port("[::1]:8080"), "::1");
        assert_eq!(strip_port("example.com"), "example.com");
    }
}
