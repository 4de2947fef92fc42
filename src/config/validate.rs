//! File structs -> validated [`Config`], collecting every error with its path.
//!
//! Follows sozu's layering (file format -> builder -> model) but, unlike sozu and River, never stops at
//! the first problem: each section and each array element is deserialized on its own, and semantic
//! checks run on whatever did parse, so `usher check` can list every mistake in one go. Array elements
//! that fail to parse keep their slot, so the indices in later messages still match the file.

use super::file::*;
use super::model::*;
use super::{ConfigError, ConfigErrors};
use crate::defaults as d;
use crate::matchers::PathPattern;
use crate::settings::{
    BudgetSettings, ConnectionLimits, EwmaSettings, OutlierSettings, StruggleRules,
};
use http::{HeaderName, HeaderValue, Method};
use ipnet::IpNet;
use serde::de::DeserializeOwned;
use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

const SECTIONS: &[&str] = &[
    "server",
    "access_log",
    "identity",
    "tiers",
    "experience",
    "pools",
    "routes",
    "outlier",
    "retries",
    "struggle",
    "balancing",
    "protection",
    "events",
    "funnels",
    "privacy",
    "state",
];

/// No duration in a config means more than a year; longer ones are mistakes, and near the limits of
/// `Instant` arithmetic.
const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);
/// The retry budget keeps a bucket per second of its window.
const MAX_BUDGET_WINDOW: Duration = Duration::from_secs(3600);
/// Routes and distinct upstreams: far beyond any real deployment, and what keeps per-route and
/// per-upstream tables small.
const MAX_ROUTES: usize = 10_000;
const MAX_UPSTREAMS: usize = 10_000;

/// Longest part of a value an error message quotes.
const QUOTE_MAX: usize = 80;

/// `v` quoted for an error message, cut to [`QUOTE_MAX`] characters: an error about a 50 MB value
/// must not be 50 MB.
fn quote(v: &str) -> String {
    match v.char_indices().nth(QUOTE_MAX) {
        None => format!("{v:?}"),
        Some((cut, _)) => format!("{:?}... ({} bytes in all)", &v[..cut], v.len()),
    }
}

/// A message from a parser, cut to a readable length (it may quote a value of any size).
fn cut(msg: &str) -> String {
    match msg.char_indices().nth(2 * QUOTE_MAX) {
        None => msg.to_string(),
        Some((at, _)) => format!("{}... (cut)", &msg[..at]),
    }
}

/// Longest Unix socket path (`sun_path` holds 108 bytes with its terminating zero).
const MAX_SOCKET_PATH: usize = 107;

/// Upper bounds that keep per-customer state and index types in range.
const MAX_JOURNEY_LEN: i64 = 255;
const MAX_TIERS: usize = 255;
const MAX_ID_LEN: i64 = 1024;

#[derive(Default)]
struct Errors(Vec<ConfigError>);

impl Errors {
    fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(ConfigError {
            path: path.into(),
            message: message.into(),
        });
    }
}

/// Parses and validates a whole configuration. `base_dir` anchors relative paths (tier tables).
pub fn parse(
    text: &str,
    base_dir: &Path,
    resolve: &mut Resolve<'_>,
) -> Result<Config, ConfigErrors> {
    let mut errs = Errors::default();
    let table: toml::Table = match toml::from_str(text) {
        Ok(t) => t,
        Err(e) => {
            errs.push("(file)", cut(e.message()) + &location(text, e.span()));
            return Err(ConfigErrors(errs.0));
        }
    };
    for key in table.keys() {
        if !SECTIONS.contains(&key.as_str()) {
            errs.push(
                key.clone(),
                format!("unknown section; expected one of {}", SECTIONS.join(", ")),
            );
        }
    }

    let server: ServerFile = section(&mut errs, &table, "server").unwrap_or_default();
    let identity: IdentityFile = section(&mut errs, &table, "identity").unwrap_or_default();
    let experience: ExperienceFile = section(&mut errs, &table, "experience").unwrap_or_default();
    let tiers: Vec<Option<TierFile>> = array(&mut errs, &table, "tiers");
    let pools: Vec<Option<PoolFile>> = array(&mut errs, &table, "pools");
    let routes: Vec<Option<RouteFile>> = array(&mut errs, &table, "routes");
    let outlier: OutlierFile = section(&mut errs, &table, "outlier").unwrap_or_default();
    let retries: RetriesFile = section(&mut errs, &table, "retries").unwrap_or_default();
    let struggle: StruggleFile = section(&mut errs, &table, "struggle").unwrap_or_default();
    let balancing: BalancingFile = section(&mut errs, &table, "balancing").unwrap_or_default();
    let protection: ProtectionFile = section(&mut errs, &table, "protection").unwrap_or_default();
    let events: EventsFile = section(&mut errs, &table, "events").unwrap_or_default();
    let funnels: Vec<Option<FunnelFile>> = array(&mut errs, &table, "funnels");
    let state: StateFile = section(&mut errs, &table, "state").unwrap_or_default();
    let privacy: PrivacyFile = section(&mut errs, &table, "privacy").unwrap_or_default();
    let access_log: Option<AccessLogFile> = section(&mut errs, &table, "access_log");

    let admin_tokens = server
        .admin_tokens
        .as_ref()
        .map(|t| admin_tokens(&mut errs, &base_dir.join(t)))
        .unwrap_or_default();
    let admin_audit_log = server.admin_audit_log.as_ref().map(|f| {
        let file = base_dir.join(f);
        if let Err(e) = can_write_file(&file).and_then(|()| not_a_link(&file)) {
            errs.push("server.admin_audit_log", e);
        }
        file
    });
    let server = server_config(&mut errs, server, base_dir);
    if let Some(a) = server.admin.filter(|a| !a.ip().is_loopback()) {
        if admin_tokens.is_empty() {
            errs.push(
                "server.admin",
                format!("{a} can be reached from other machines, and the admin API shows every customer's journey: give it tokens (server.admin_tokens) or use a loopback address such as 127.0.0.1:{}", a.port()),
            );
        }
    }
    let tiers = tier_list(&mut errs, &tiers);
    let identity = identity_config(&mut errs, identity, &tiers, base_dir);
    let experience = experience_config(&mut errs, experience);
    let (pools, upstreams) = pool_list(&mut errs, &pools, resolve, base_dir);
    let routes = route_list(&mut errs, &routes, &pools);
    let (outlier, sweep_interval) = outlier_config(&mut errs, outlier);
    let retries = retries_config(&mut errs, retries);
    let struggle = struggle_config(&mut errs, struggle);
    let privacy = privacy_config(&mut errs, privacy, base_dir);
    let mut identity = identity;
    identity.reserve_pseudonyms = privacy.pseudonyms.is_on();
    let balancing = balancing_config(&mut errs, balancing);
    let protection = protection_config(&mut errs, protection);
    let events = events_config(&mut errs, events, experience.degraded_below, base_dir);
    let funnels = funnel_list(&mut errs, &funnels);
    loops_to_self(&mut errs, &server, &pools);
    let state = StateConfig {
        dir: base_dir.join(state.dir.as_deref().unwrap_or(d::STATE_DIR)),
    };
    if let Err(e) = can_make_dir(&state.dir) {
        errs.push("state.dir", e);
    }
    // The graceful upgrade's socket lives there, and a socket path has a hard length limit.
    let sock = state.dir.join("upgrade.sock");
    if sock.as_os_str().len() > MAX_SOCKET_PATH {
        errs.push(
            "state.dir",
            format!(
                "{} is too long for the upgrade socket inside it ({} bytes, at most {MAX_SOCKET_PATH}); use a shorter path",
                state.dir.display(),
                sock.as_os_str().len()
            ),
        );
    }

    let access_log = access_log.map(|f| access_log_config(&mut errs, f, base_dir));
    id_in_kept_queries(&mut errs, &identity, &privacy, &routes, access_log.as_ref());

    if errs.0.is_empty() {
        Ok(Config {
            server,
            admin_tokens,
            admin_audit_log,
            identity,
            tiers,
            experience,
            pools,
            routes,
            upstreams,
            outlier,
            sweep_interval,
            retries,
            struggle,
            privacy,
            balancing,
            protection,
            events,
            funnels,
            state,
            access_log,
        })
    } else {
        Err(ConfigErrors(errs.0))
    }
}

fn location(text: &str, span: Option<std::ops::Range<usize>>) -> String {
    match span {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let col = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
            format!(" (line {line}, column {col})")
        }
        None => String::new(),
    }
}

/// Deserializes `value`, reporting each shape error with its full path. After an error the offending
/// key is removed and the rest tried again, so one typo does not hide the other mistakes in the same
/// table. What remains is returned, so the semantic checks still run on it (the errors already
/// recorded keep the config from being accepted).
fn deserialize<T: DeserializeOwned>(
    errs: &mut Errors,
    path: &str,
    value: &toml::Value,
) -> Option<T> {
    const MAX_ROUNDS: usize = 32;
    let mut value = value.clone();
    for _ in 0..MAX_ROUNDS {
        match serde_path_to_error::deserialize::<_, T>(value.clone()) {
            Ok(v) => return Some(v),
            Err(e) => {
                let segments: Vec<String> = e.path().iter().map(|s| s.to_string()).collect();
                let inner = e.path().to_string();
                let full = if inner == "." {
                    path.to_string()
                } else if inner.starts_with('[') {
                    format!("{path}{inner}")
                } else {
                    format!("{path}.{inner}")
                };
                // toml appends context on further lines; the first says it all. serde quotes the
                // value it could not take: cut it short.
                let msg = e.into_inner().to_string();
                errs.push(full, cut(msg.lines().next().unwrap_or("").trim()));
                if !remove_at(&mut value, &segments) {
                    return None;
                }
            }
        }
    }
    None
}

/// Removes the key (or array element) at `segments`; false when there is nothing to remove.
fn remove_at(value: &mut toml::Value, segments: &[String]) -> bool {
    let Some((last, parents)) = segments.split_last() else {
        return false;
    };
    let mut cur = value;
    for seg in parents {
        let next = match (cur, seg.strip_prefix('[').and_then(|s| s.strip_suffix(']'))) {
            (toml::Value::Array(a), Some(i)) => i.parse::<usize>().ok().and_then(|i| a.get_mut(i)),
            (toml::Value::Table(t), None) => t.get_mut(seg.as_str()),
            _ => None,
        };
        match next {
            Some(n) => cur = n,
            None => return false,
        }
    }
    match (
        cur,
        last.strip_prefix('[').and_then(|s| s.strip_suffix(']')),
    ) {
        (toml::Value::Array(a), Some(i)) => match i.parse::<usize>() {
            Ok(i) if i < a.len() => {
                a.remove(i);
                true
            }
            _ => false,
        },
        (toml::Value::Table(t), None) => t.remove(last.as_str()).is_some(),
        _ => false,
    }
}

fn section<T: DeserializeOwned>(errs: &mut Errors, table: &toml::Table, key: &str) -> Option<T> {
    let value = table.get(key)?;
    if !value.is_table() {
        errs.push(key, format!("must be a table ([{key}])"));
        return None;
    }
    deserialize(errs, key, value)
}

fn array<T: DeserializeOwned>(errs: &mut Errors, table: &toml::Table, key: &str) -> Vec<Option<T>> {
    match table.get(key) {
        None => Vec::new(),
        Some(toml::Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, v)| deserialize(errs, &format!("{key}[{i}]"), v))
            .collect(),
        Some(_) => {
            errs.push(key, format!("must be an array of tables ([[{key}]])"));
            Vec::new()
        }
    }
}

fn duration(errs: &mut Errors, path: &str, value: Option<&String>, default: Duration) -> Duration {
    let Some(text) = value else { return default };
    match humantime::parse_duration(text) {
        Ok(d) if d.is_zero() => {
            errs.push(path, "must be longer than zero");
            default
        }
        Ok(d) if d > MAX_DURATION => {
            errs.push(
                path,
                format!("{} is too long; at most 365 days", quote(text)),
            );
            default
        }
        Ok(d) => d,
        Err(e) => {
            errs.push(
                path,
                format!(
                    "{} is not a duration ({e}); write e.g. \"300ms\", \"10s\", \"5m\"",
                    quote(text)
                ),
            );
            default
        }
    }
}

fn header_name(errs: &mut Errors, path: &str, name: &str) -> Option<HeaderName> {
    match HeaderName::from_bytes(name.as_bytes()) {
        Ok(h) => Some(h),
        Err(_) => {
            errs.push(path, format!("{} is not a valid header name", quote(name)));
            None
        }
    }
}

fn socket_addr(errs: &mut Errors, path: &str, text: &str) -> Option<SocketAddr> {
    match upstream_spec(text, &mut system_resolve) {
        Ok(spec) => spec.addrs().first().copied(),
        Err(message) => {
            errs.push(path, message);
            None
        }
    }
}

/// One upstream as written: an address, or a host name looked up now (and again later).
fn upstream_spec(text: &str, resolve: &mut Resolve<'_>) -> Result<UpstreamSpec, String> {
    if let Ok(a) = text.parse::<SocketAddr>() {
        return Ok(UpstreamSpec::Addr(a));
    }
    let not_an_address = || {
        format!(
            "{} is not an address; write host:port, e.g. \"127.0.0.1:8080\"",
            quote(text)
        )
    };
    let (host, port) = text.rsplit_once(':').ok_or_else(not_an_address)?;
    let port: u16 = port.parse().map_err(|_| not_an_address())?;
    if host.is_empty() || host.contains(|c: char| c.is_whitespace() || c == '/') {
        return Err(not_an_address());
    }
    match resolve(host, port) {
        Ok(addrs) if !addrs.is_empty() => Ok(UpstreamSpec::Name {
            host: host.to_string(),
            port,
            addrs,
        }),
        Ok(_) => Err(format!("{} has no addresses", quote(host))),
        Err(e) => Err(format!("cannot resolve {}: {e}", quote(host))),
    }
}

fn int_in(
    errs: &mut Errors,
    path: &str,
    value: Option<i64>,
    lo: i64,
    hi: i64,
    default: i64,
) -> i64 {
    match value {
        None => default,
        Some(v) if (lo..=hi).contains(&v) => v,
        Some(v) => {
            errs.push(
                path,
                format!("{v} is out of range; must be between {lo} and {hi}"),
            );
            default
        }
    }
}

fn server_config(errs: &mut Errors, f: ServerFile, base_dir: &Path) -> ServerConfig {
    let listen_text = f.listen.unwrap_or_else(|| vec![d::LISTEN.to_string()]);
    if listen_text.is_empty() {
        errs.push("server.listen", "needs at least one address");
    }
    let listen: Vec<SocketAddr> = listen_text
        .iter()
        .enumerate()
        .filter_map(|(i, a)| socket_addr(errs, &format!("server.listen[{i}]"), a))
        .collect();
    let admin = match f.admin.as_deref() {
        None => socket_addr(errs, "server.admin", d::ADMIN),
        Some("") | Some("off") => None,
        Some(a) => socket_addr(errs, "server.admin", a),
    };
    if let Some(a) = admin {
        if listen.contains(&a) {
            errs.push("server.admin", format!("{a} is also in server.listen"));
        }
    }
    let threads = int_in(errs, "server.threads", f.threads, 1, 1024, d::THREADS) as usize;
    let grace_period = duration(
        errs,
        "server.grace_period",
        f.grace_period.as_ref(),
        d::GRACE_PERIOD,
    );
    let max_header_bytes = int_in(
        errs,
        "server.max_header_bytes",
        f.max_header_bytes,
        1024,
        1 << 20,
        d::MAX_HEADER_BYTES,
    ) as usize;
    let upstream_idle_connections = int_in(
        errs,
        "server.upstream_idle_connections",
        f.upstream_idle_connections,
        1,
        1 << 20,
        d::UPSTREAM_IDLE_CONNECTIONS,
    ) as usize;
    let connections = ConnectionLimits {
        max: int_in(
            errs,
            "server.max_connections",
            f.max_connections,
            1,
            1 << 24,
            d::MAX_CONNECTIONS,
        ) as usize,
        head_timeout: duration(
            errs,
            "server.head_timeout",
            f.head_timeout.as_ref(),
            d::HEAD_TIMEOUT,
        ),
        idle_timeout: duration(
            errs,
            "server.idle_timeout",
            f.idle_timeout.as_ref(),
            d::IDLE_TIMEOUT_DOWNSTREAM,
        ),
    };
    let tls = f.tls.map(|t| tls_config(errs, t, base_dir, &listen, admin));
    let redirect_to_https = f.redirect_to_https.unwrap_or(d::REDIRECT_TO_HTTPS);
    if redirect_to_https && tls.is_none() {
        errs.push(
            "server.redirect_to_https",
            "needs TLS listeners ([server.tls] listen) to redirect to",
        );
    }
    ServerConfig {
        listen,
        admin,
        threads,
        grace_period,
        max_header_bytes,
        upstream_idle_connections,
        connections,
        h2c: f.h2c.unwrap_or(d::H2C),
        redirect_to_https,
        request_id_header: header_name(
            errs,
            "server.request_id_header",
            f.request_id_header
                .as_deref()
                .unwrap_or(d::REQUEST_ID_HEADER),
        )
        .unwrap_or_else(|| HeaderName::from_static(d::REQUEST_ID_HEADER)),
        tls,
    }
}

fn access_log_config(
    errs: &mut Errors,
    f: AccessLogFile,
    base_dir: &Path,
) -> crate::access_log::AccessLogConfig {
    use crate::access_log::Format;
    let path = match f.path.as_deref() {
        None => {
            errs.push(
                "access_log.path",
                "needs a file, or \"-\" for standard output",
            );
            None
        }
        Some("-") => None,
        Some(p) => {
            let p = base_dir.join(p);
            match p.parent().filter(|d| !d.as_os_str().is_empty()) {
                Some(dir) if !dir.is_dir() => errs.push(
                    "access_log.path",
                    format!("{} does not exist", dir.display()),
                ),
                Some(dir) if !p.exists() && !writable(dir) => errs.push(
                    "access_log.path",
                    format!("{} is not writable by this user", dir.display()),
                ),
                // A directory, a pipe or a device would stall or refuse the writer.
                _ if p.exists() && !std::fs::metadata(&p).is_ok_and(|m| m.is_file()) => errs.push(
                    "access_log.path",
                    format!("{} exists and is not a regular file", p.display()),
                ),
                _ => {}
            }
            Some(p)
        }
    };
    let format = match f.format.as_deref().unwrap_or(d::ACCESS_LOG_FORMAT) {
        "json" => Format::Json,
        "combined" => Format::Combined,
        other => {
            errs.push(
                "access_log.format",
                format!("{other:?} is not a format; use \"json\" or \"combined\""),
            );
            Format::Json
        }
    };
    crate::access_log::AccessLogConfig {
        path,
        format,
        queue: int_in(
            errs,
            "access_log.queue",
            f.queue,
            1,
            1 << 24,
            d::ACCESS_LOG_QUEUE,
        ) as usize,
        query: f.query.unwrap_or(d::ACCESS_LOG_QUERY),
    }
}

fn tls_config(
    errs: &mut Errors,
    f: TlsFile,
    base_dir: &Path,
    plain: &[SocketAddr],
    admin: Option<SocketAddr>,
) -> TlsConfig {
    let listen_text = f.listen.unwrap_or_default();
    if listen_text.is_empty() {
        errs.push("server.tls.listen", "needs at least one address");
    }
    let listen: Vec<SocketAddr> = listen_text
        .iter()
        .enumerate()
        .filter_map(|(i, a)| socket_addr(errs, &format!("server.tls.listen[{i}]"), a))
        .collect();
    for (i, a) in listen.iter().enumerate() {
        if plain.contains(a) || admin == Some(*a) {
            errs.push(
                format!("server.tls.listen[{i}]"),
                format!("{a} is also a plain or admin listener"),
            );
        }
    }
    let files = f.certificates.unwrap_or_default();
    if files.is_empty() {
        errs.push(
            "server.tls.certificates",
            "needs at least one certificate: [[server.tls.certificates]] cert = \"...\", key = \"...\"",
        );
    }
    let mut specs = Vec::new();
    for (i, c) in files.into_iter().enumerate() {
        let path = format!("server.tls.certificates[{i}]");
        let (Some(cert), Some(key)) = (c.cert, c.key) else {
            errs.push(path, "needs both cert and key (PEM files)");
            continue;
        };
        specs.push(crate::tls::CertSpec {
            cert: cert.into(),
            key: key.into(),
            names: c.names.unwrap_or_default(),
            default: c.default.unwrap_or(false),
        });
    }
    let now_secs = (crate::time::wall_ms() / 1000) as i64;
    let certs = match crate::tls::CertSet::load(&specs, base_dir, now_secs) {
        Ok(set) => set,
        Err(list) => {
            for (i, field, msg) in list {
                errs.push(format!("server.tls.certificates[{i}].{field}"), msg);
            }
            crate::tls::CertSet::default()
        }
    };
    TlsConfig {
        listen,
        h2: f.h2.unwrap_or(d::TLS_H2),
        specs,
        certs: std::sync::Arc::new(certs),
    }
}

fn tier_list(errs: &mut Errors, tiers: &[Option<TierFile>]) -> Vec<Tier> {
    let mut out: Vec<Tier> = Vec::new();
    for (i, t) in tiers.iter().enumerate() {
        let Some(t) = t else { continue };
        let path = format!("tiers[{i}].name");
        match t.name.as_deref() {
            None | Some("") => errs.push(path, "every tier needs a name"),
            Some(n) if out.iter().any(|o| o.name == n) => {
                errs.push(path, format!("tier {} is defined twice", quote(n)))
            }
            Some(n) => out.push(Tier {
                name: n.to_string(),
                protected: t.protected.unwrap_or(false),
                follow_up: t.follow_up.clone(),
                notify_failures: t.notify_failures.unwrap_or(false),
            }),
        }
    }
    if out.is_empty() {
        out.push(Tier {
            name: d::DEFAULT_TIER.to_string(),
            protected: false,
            follow_up: None,
            notify_failures: false,
        });
    }
    if out.len() > MAX_TIERS {
        errs.push("tiers", format!("at most {MAX_TIERS} tiers"));
    }
    out
}

fn tier_by_name(tiers: &[Tier], name: &str) -> Option<TierId> {
    tiers
        .iter()
        .position(|t| t.name == name)
        .map(|i| i as TierId)
}

fn tier_names(tiers: &[Tier]) -> String {
    tiers
        .iter()
        .map(|t| format!("{:?}", t.name))
        .collect::<Vec<_>>()
        .join(", ")
}

fn identity_config(
    errs: &mut Errors,
    f: IdentityFile,
    tiers: &[Tier],
    base_dir: &Path,
) -> IdentityConfig {
    let trust_any = f.trust_any_peer.unwrap_or(false);
    let sources = f.customer_id.unwrap_or_else(|| {
        vec![IdSourceFile {
            header: Some(d::CUSTOMER_ID_HEADER.into()),
            ..Default::default()
        }]
    });
    let mut customer_id = Vec::new();
    for (i, s) in sources.iter().enumerate() {
        let path = format!("identity.customer_id[{i}]");
        if s.trusted_from.is_some() && s.header.is_none() {
            errs.push(
                format!("{path}.trusted_from"),
                "only applies to a header source",
            );
        }
        match (&s.header, &s.cookie, &s.query) {
            (Some(h), None, None) => {
                let trusted_from = s
                    .trusted_from
                    .as_ref()
                    .map(|t| trusted_nets(errs, &format!("{path}.trusted_from"), t, trust_any));
                if let Some(name) = header_name(errs, &format!("{path}.header"), h) {
                    customer_id.push(IdSource::Header { name, trusted_from });
                }
            }
            (None, Some(c), None) if !c.is_empty() => customer_id.push(IdSource::Cookie(c.clone())),
            (None, None, Some(q)) if !q.is_empty() => customer_id.push(IdSource::Query(q.clone())),
            _ => errs.push(
                path,
                "set exactly one of header, cookie or query, to a non-empty name",
            ),
        }
    }

    let mut tier = Vec::new();
    for (i, s) in f.tier.unwrap_or_default().iter().enumerate() {
        let path = format!("identity.tier[{i}]");
        match (&s.header, &s.table) {
            (Some(h), None) => {
                let name = header_name(errs, &format!("{path}.header"), h);
                let trusted_from = match &s.trusted_from {
                    Some(t) => trusted_nets(errs, &format!("{path}.trusted_from"), t, trust_any),
                    None => {
                        errs.push(
                            format!("{path}.trusted_from"),
                            "a tier header needs trusted_from: otherwise any client could promote itself",
                        );
                        Vec::new()
                    }
                };
                if s.verified_only.is_some() {
                    errs.push(
                        format!("{path}.verified_only"),
                        "only applies to a table source",
                    );
                }
                if let Some(name) = name {
                    tier.push(TierSource::Header { name, trusted_from });
                }
            }
            (None, Some(t)) => {
                if s.trusted_from.is_some() {
                    errs.push(
                        format!("{path}.trusted_from"),
                        "only applies to a header source",
                    );
                }
                let file = base_dir.join(t);
                if let Some(entries) = load_table(errs, &format!("{path}.table"), &file, tiers) {
                    tier.push(TierSource::Table {
                        path: file,
                        entries: std::sync::Arc::new(entries),
                        verified_only: s.verified_only.unwrap_or(false),
                    });
                }
            }
            _ => errs.push(path, "set exactly one of header or table"),
        }
    }

    let default_tier = match f.default_tier.as_deref() {
        None => tier_by_name(tiers, d::DEFAULT_TIER).unwrap_or((tiers.len() - 1) as TierId),
        Some(n) => tier_by_name(tiers, n).unwrap_or_else(|| {
            errs.push(
                "identity.default_tier",
                format!(
                    "no tier named {}; tiers are {}",
                    quote(n),
                    tier_names(tiers)
                ),
            );
            0
        }),
    };
    let max_id_len = int_in(
        errs,
        "identity.max_id_len",
        f.max_id_len,
        1,
        MAX_ID_LEN,
        d::MAX_ID_LEN,
    ) as usize;
    let jwt = f.jwt.as_ref().and_then(|j| jwt_config(errs, j, base_dir));
    IdentityConfig {
        customer_id,
        tier,
        default_tier,
        max_id_len,
        jwt,
        // Set once [privacy] is read.
        reserve_pseudonyms: false,
    }
}

/// A `trusted_from` list. One that covers every address trusts every client, which is what the
/// list exists to prevent: refused unless `identity.trust_any_peer` says it is meant.
fn trusted_nets(errs: &mut Errors, path: &str, list: &[String], trust_any: bool) -> Vec<IpNet> {
    let mut out = Vec::new();
    for (j, c) in list.iter().enumerate() {
        match parse_net(c) {
            Some(n) => {
                if n.prefix_len() == 0 && !trust_any {
                    errs.push(
                        format!("{path}[{j}]"),
                        format!("{} trusts every client to make this claim; list the addresses of what sits in front of usher, or set identity.trust_any_peer = true if that is really meant", quote(c)),
                    );
                }
                out.push(n);
            }
            None => errs.push(
                format!("{path}[{j}]"),
                format!(
                    "{} is not an address or CIDR block, e.g. \"10.0.0.0/8\"",
                    quote(c)
                ),
            ),
        }
    }
    out
}

fn jwt_config(errs: &mut Errors, f: &JwtFile, base_dir: &Path) -> Option<JwtConfig> {
    let path = "identity.jwt";
    let source = match (&f.header, &f.cookie) {
        (Some(h), None) => header_name(errs, &format!("{path}.header"), h).map(TokenSource::Header),
        (None, Some(c)) if !c.is_empty() => Some(TokenSource::Cookie(c.clone())),
        (None, None) => Some(TokenSource::Header(http::header::AUTHORIZATION)),
        _ => {
            errs.push(
                path,
                "set at most one of header or cookie (default: the authorization header)",
            );
            None
        }
    };
    let keys = match (&f.key_file, &f.jwks_file) {
        (Some(k), None) => {
            let file = base_dir.join(k);
            let alg = match f.algorithm.as_deref() {
                Some(a @ ("HS256" | "RS256" | "ES256")) => Some(a),
                Some(a) => {
                    errs.push(
                        format!("{path}.algorithm"),
                        format!("{} is not one of \"HS256\", \"RS256\", \"ES256\"", quote(a)),
                    );
                    None
                }
                None => {
                    errs.push(
                        format!("{path}.algorithm"),
                        "a key_file needs its algorithm: \"HS256\", \"RS256\" or \"ES256\"",
                    );
                    None
                }
            };
            alg.and_then(|a| match jwt_key_file(&file, a) {
                Ok(keys) => Some(keys),
                Err(e) => {
                    errs.push(
                        format!("{path}.key_file"),
                        format!("{}: {e}", file.display()),
                    );
                    None
                }
            })
        }
        (None, Some(k)) => {
            if f.algorithm.is_some() {
                errs.push(
                    format!("{path}.algorithm"),
                    "a JWKS names each key's algorithm: leave it out",
                );
            }
            let file = base_dir.join(k);
            match jwks_file(&file) {
                Ok(keys) => Some(keys),
                Err(e) => {
                    errs.push(
                        format!("{path}.jwks_file"),
                        format!("{}: {e}", file.display()),
                    );
                    None
                }
            }
        }
        _ => {
            errs.push(
                path,
                "set exactly one of key_file (with algorithm) or jwks_file",
            );
            None
        }
    };
    let leeway = duration(
        errs,
        &format!("{path}.leeway"),
        f.leeway.as_ref(),
        d::JWT_LEEWAY,
    );
    let list = |v: &Option<OneOrMany>| v.as_ref().map_or(Vec::new(), |x| x.as_slice().to_vec());
    Some(JwtConfig {
        source: source?,
        keys: std::sync::Arc::new(keys?),
        issuers: list(&f.issuer),
        audiences: list(&f.audience),
        customer_claim: f
            .customer_claim
            .clone()
            .unwrap_or_else(|| d::JWT_CUSTOMER_CLAIM.to_string()),
        tier_claim: f.tier_claim.clone(),
        leeway,
    })
}

/// The largest tier table read: a few million `id,tier` lines; past it, a mistake.
const MAX_TABLE_BYTES: u64 = 256 << 20;

/// Reads at most this much of a key file: keys are small, a huge file is a mistake.
const MAX_KEY_FILE: u64 = 1 << 20;

fn read_small(file: &Path) -> Result<Vec<u8>, String> {
    crate::files::read_regular(file, MAX_KEY_FILE).map_err(|e| match e {
        crate::files::ReadError::TooLarge(_) => {
            format!("larger than {MAX_KEY_FILE} bytes: not a key file")
        }
        e => e.to_string(),
    })
}

fn jwt_key_file(file: &Path, alg: &str) -> Result<crate::settings::JwtKeys, String> {
    use jsonwebtoken::{Algorithm, DecodingKey};
    let bytes = read_small(file)?;
    let (algorithm, key) = match alg {
        "HS256" => {
            let secret: Vec<u8> = bytes.trim_ascii().to_vec();
            if secret.len() < 32 {
                return Err("an HS256 secret needs at least 32 bytes".into());
            }
            (
                Algorithm::HS256,
                DecodingKey::from_secret(&secret)
                    .map_err(|e| format!("not a usable secret: {e}"))?,
            )
        }
        "RS256" => (
            Algorithm::RS256,
            DecodingKey::from_rsa_pem(&bytes)
                .map_err(|e| format!("not an RSA public key in PEM: {e}"))?,
        ),
        _ => (
            Algorithm::ES256,
            DecodingKey::from_ec_pem(&bytes)
                .map_err(|e| format!("not an EC (P-256) public key in PEM: {e}"))?,
        ),
    };
    Ok(crate::settings::JwtKeys {
        file: file.to_path_buf(),
        keys: vec![crate::settings::JwtKey {
            kid: None,
            algorithm,
            key,
        }],
    })
}

fn jwks_file(file: &Path) -> Result<crate::settings::JwtKeys, String> {
    use jsonwebtoken::jwk::JwkSet;
    use jsonwebtoken::{Algorithm, DecodingKey};
    let bytes = read_small(file)?;
    let set: JwkSet = serde_json::from_slice(&bytes).map_err(|e| format!("not a JWKS: {e}"))?;
    let mut keys = Vec::new();
    for (i, jwk) in set.keys.iter().enumerate() {
        let kid = jwk.common.key_id.clone();
        let algorithm = match jwk.common.key_algorithm.map(|a| a.to_string()) {
            Some(a) if a == "HS256" => Algorithm::HS256,
            Some(a) if a == "RS256" => Algorithm::RS256,
            Some(a) if a == "ES256" => Algorithm::ES256,
            Some(a) => {
                return Err(format!(
                    "key {i}: algorithm {a} is not one of HS256, RS256, ES256"
                ))
            }
            None => return Err(format!("key {i} has no \"alg\"")),
        };
        let key = DecodingKey::from_jwk(jwk).map_err(|e| format!("key {i}: {e}"))?;
        keys.push(crate::settings::JwtKey {
            kid,
            algorithm,
            key,
        });
    }
    if keys.is_empty() {
        return Err("no keys".into());
    }
    Ok(crate::settings::JwtKeys {
        file: file.to_path_buf(),
        keys,
    })
}

/// An upstream that is one of usher's own listeners sends every request back to usher, which
/// sends it on again until the descriptors run out.
fn loops_to_self(errs: &mut Errors, server: &ServerConfig, pools: &[PoolConfig]) {
    let own: Vec<SocketAddr> = server
        .listen
        .iter()
        .chain(server.admin.iter())
        .copied()
        .collect();
    let is_own = |u: &SocketAddr| {
        own.iter().any(|l| {
            l.port() == u.port()
                && (l.ip() == u.ip()
                    || l.ip().is_unspecified() && (u.ip().is_loopback() || u.ip().is_unspecified()))
        })
    };
    for (i, p) in pools.iter().enumerate() {
        for (j, spec) in p.specs.iter().enumerate() {
            if let Some(a) = spec.addrs().iter().find(|a| is_own(a)) {
                errs.push(
                    format!("pools[{i}].upstreams[{j}]"),
                    format!("{a} is usher's own listener: every request would come back to usher"),
                );
            }
        }
    }
}

/// Whether the running user may create and write files in `dir`.
fn writable(dir: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: a NUL-terminated path; access only reads it.
    unsafe { libc::access(c.as_ptr(), libc::W_OK | libc::X_OK) == 0 }
}

/// A folder usher keeps files in: if it exists, a writable directory; if not, a writable parent
/// to make it in (usher makes the folder itself, saying so in its docs; nothing more).
fn can_make_dir(dir: &Path) -> Result<(), String> {
    match std::fs::metadata(dir) {
        Ok(m) if !m.is_dir() => Err(format!("{} exists and is not a directory", dir.display())),
        Ok(_) if !writable(dir) => Err(format!("{} is not writable by this user", dir.display())),
        Ok(_) => Ok(()),
        Err(_) => match dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            Some(parent) if !parent.is_dir() => Err(format!(
                "{} does not exist, and neither does {}",
                dir.display(),
                parent.display()
            )),
            Some(parent) if !writable(parent) => Err(format!(
                "{} does not exist and cannot be made: {} is not writable by this user",
                dir.display(),
                parent.display()
            )),
            _ => Ok(()),
        },
    }
}

/// A file usher appends to: its folder must exist and be writable (it is not made silently), and
/// the file itself, if there, must be a regular file.
fn can_write_file(file: &Path) -> Result<(), String> {
    let dir = file
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if !dir.is_dir() {
        return Err(format!("its folder {} does not exist", dir.display()));
    }
    if !writable(dir) {
        return Err(format!(
            "its folder {} is not writable by this user",
            dir.display()
        ));
    }
    match std::fs::metadata(file) {
        Ok(m) if !m.is_file() => Err(format!("{} is not a regular file", file.display())),
        _ => Ok(()),
    }
}

/// The audit log is opened without following a link (one planted where it goes must not send
/// the record of who looked whom up elsewhere), so a link there is refused here already.
fn not_a_link(file: &Path) -> Result<(), String> {
    match std::fs::symlink_metadata(file) {
        Ok(m) if m.file_type().is_symlink() => Err(format!(
            "{} is a symbolic link: name the file itself",
            file.display()
        )),
        _ => Ok(()),
    }
}

/// Shortest admin token accepted: long enough that guessing is hopeless.
const MIN_TOKEN_LEN: usize = 24;

/// Reads `role token [name]` lines (`viewer` or `operator`; the name, for the audit log, is the
/// rest of the line; blank lines and `#` comments skipped).
fn admin_tokens(errs: &mut Errors, file: &Path) -> Vec<AdminToken> {
    use sha2::Digest;
    let path = "server.admin_tokens";
    let text = match read_small(file)
        .and_then(|b| String::from_utf8(b).map_err(|_| "not UTF-8 text".to_string()))
    {
        Ok(t) => t,
        Err(e) => {
            errs.push(path, format!("{}: {e}", file.display()));
            return Vec::new();
        }
    };
    let mut out = Vec::new();
    let mut lines: HashMap<[u8; 32], usize> = HashMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let at = format!("{}:{}", file.display(), n + 1);
        let Some((role, token)) = line.split_once(char::is_whitespace) else {
            errs.push(
                path,
                format!("{at}: expected `viewer <token>` or `operator <token>`"),
            );
            continue;
        };
        let role = match role {
            "viewer" => Role::Viewer,
            "operator" => Role::Operator,
            other => {
                errs.push(
                    path,
                    format!(
                        "{at}: unknown role {}; use viewer or operator",
                        quote(other)
                    ),
                );
                continue;
            }
        };
        let (token, name) = match token.trim().split_once(char::is_whitespace) {
            Some((t, n)) => (t, Some(n.trim().to_string())),
            None => (token.trim(), None),
        };
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            errs.push(
                path,
                format!(
                    "{at}: a token is printable ASCII, no spaces (e.g. `openssl rand -hex 24`)"
                ),
            );
            continue;
        }
        if token.len() < MIN_TOKEN_LEN {
            errs.push(path, format!("{at}: a token needs at least {MIN_TOKEN_LEN} characters (e.g. `openssl rand -hex 24`)"));
            continue;
        }
        let sha256: [u8; 32] = sha2::Sha256::digest(token.as_bytes()).into();
        // Listed twice it would carry the higher role whatever the lines say: a viewer line
        // added to demote an operator's token would do nothing.
        if let Some(first) = lines.get(&sha256) {
            errs.push(
                path,
                format!("{at}: the same token as line {first}; list each token once"),
            );
            continue;
        }
        lines.insert(sha256, n + 1);
        out.push(AdminToken { role, sha256, name });
    }
    if out.is_empty() && errs.0.iter().all(|e| e.path != path) {
        errs.push(path, format!("{}: no tokens in it", file.display()));
    }
    out
}

fn parse_net(text: &str) -> Option<IpNet> {
    text.parse::<IpNet>()
        .ok()
        .or_else(|| text.parse::<IpAddr>().ok().map(IpNet::from))
}

/// Loads `id,tier` lines. A header line `id,tier`, blank lines and `#` comments are skipped.
fn load_table(
    errs: &mut Errors,
    path: &str,
    file: &Path,
    tiers: &[Tier],
) -> Option<HashMap<Box<str>, TierId>> {
    const MAX_REPORTED: usize = 10;
    let text = match crate::files::read_regular(file, MAX_TABLE_BYTES)
        .map_err(|e| e.to_string())
        .and_then(|b| String::from_utf8(b).map_err(|_| "not UTF-8 text".to_string()))
    {
        Ok(t) => t,
        Err(e) => {
            errs.push(path, format!("cannot read {}: {e}", file.display()));
            return None;
        }
    };
    let mut entries = HashMap::new();
    let mut bad = 0usize;
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || (n == 0 && line == "id,tier") {
            continue;
        }
        let problem = match line.split_once(',') {
            None => Some("expected id,tier".to_string()),
            Some((id, t)) => match tier_by_name(tiers, t.trim()) {
                Some(tid) if !id.trim().is_empty() => {
                    entries.insert(id.trim().into(), tid);
                    None
                }
                Some(_) => Some("empty customer id".to_string()),
                None => Some(format!(
                    "unknown tier {}; tiers are {}",
                    quote(t.trim()),
                    tier_names(tiers)
                )),
            },
        };
        if let Some(p) = problem {
            bad += 1;
            if bad <= MAX_REPORTED {
                errs.push(path, format!("{}:{}: {p}", file.display(), n + 1));
            }
        }
    }
    if bad > MAX_REPORTED {
        errs.push(
            path,
            format!("... and {} more bad lines", bad - MAX_REPORTED),
        );
    }
    (bad == 0).then_some(entries)
}

fn experience_config(errs: &mut Errors, f: ExperienceFile) -> ExperienceConfig {
    let half_life = duration(
        errs,
        "experience.half_life",
        f.half_life.as_ref(),
        d::HALF_LIFE,
    );
    let degraded_below = match f.degraded_below {
        None => d::DEGRADED_BELOW,
        Some(v) if (0.0..=100.0).contains(&v) => v,
        Some(v) => {
            errs.push(
                "experience.degraded_below",
                format!("{v} is out of range; scores run from 0 to 100"),
            );
            d::DEGRADED_BELOW
        }
    };
    let track_max = int_in(
        errs,
        "experience.track_max",
        f.track_max,
        1,
        u32::MAX as i64 - 1,
        d::TRACK_MAX,
    ) as usize;
    let journey_len = int_in(
        errs,
        "experience.journey_len",
        f.journey_len,
        1,
        MAX_JOURNEY_LEN,
        d::JOURNEY_LEN,
    ) as usize;
    let min_requests = int_in(
        errs,
        "experience.min_requests",
        f.min_requests,
        1,
        u32::MAX as i64,
        d::MIN_REQUESTS,
    ) as u32;
    let summary_interval = duration(
        errs,
        "experience.summary_interval",
        f.summary_interval.as_ref(),
        d::SUMMARY_INTERVAL,
    );
    ExperienceConfig {
        half_life,
        degraded_below,
        track_max,
        journey_len,
        min_requests,
        summary_interval,
    }
}

fn pool_list(
    errs: &mut Errors,
    pools: &[Option<PoolFile>],
    resolve: &mut Resolve<'_>,
    base_dir: &Path,
) -> (Vec<PoolConfig>, Vec<SocketAddr>) {
    let mut out: Vec<PoolConfig> = Vec::new();
    let mut names = HashSet::new();
    for (i, p) in pools.iter().enumerate() {
        let path = format!("pools[{i}]");
        let Some(p) = p else {
            // Keep the slot so that route -> pool indices stay aligned with names below.
            out.push(placeholder_pool());
            continue;
        };
        let name = match p.name.as_deref() {
            None | Some("") => {
                errs.push(format!("{path}.name"), "every pool needs a name");
                String::new()
            }
            Some(n) => {
                if !names.insert(n.to_string()) {
                    errs.push(
                        format!("{path}.name"),
                        format!("pool {} is defined twice", quote(n)),
                    );
                }
                n.to_string()
            }
        };
        let mut specs: Vec<UpstreamSpec> = Vec::new();
        match &p.upstreams {
            None => errs.push(
                format!("{path}.upstreams"),
                "a pool needs at least one upstream",
            ),
            Some(list) if list.is_empty() => errs.push(
                format!("{path}.upstreams"),
                "a pool needs at least one upstream",
            ),
            Some(list) => {
                for (j, u) in list.iter().enumerate() {
                    let upath = format!("{path}.upstreams[{j}]");
                    match upstream_spec(u, resolve) {
                        Ok(spec) if specs.contains(&spec) => {
                            errs.push(upath, format!("{u} is listed twice in this pool"))
                        }
                        Ok(spec) => specs.push(spec),
                        Err(message) => errs.push(upath, message),
                    }
                }
            }
        }
        let timeout = |errs: &mut Errors, key: &str, v: &Option<String>, default| {
            duration(errs, &format!("{path}.{key}"), v.as_ref(), default)
        };
        let tls = upstream_tls(errs, &path, p, &specs, base_dir);
        out.push(PoolConfig {
            name,
            upstreams: Vec::new(),
            specs,
            resolve_interval: timeout(
                errs,
                "resolve_interval",
                &p.resolve_interval,
                d::RESOLVE_INTERVAL,
            ),
            connect_timeout: timeout(
                errs,
                "connect_timeout",
                &p.connect_timeout,
                d::CONNECT_TIMEOUT,
            ),
            read_timeout: timeout(errs, "read_timeout", &p.read_timeout, d::READ_TIMEOUT),
            write_timeout: timeout(errs, "write_timeout", &p.write_timeout, d::WRITE_TIMEOUT),
            idle_timeout: timeout(errs, "idle_timeout", &p.idle_timeout, d::IDLE_TIMEOUT),
            health_check: p
                .health_check
                .as_ref()
                .map(|h| health_check(errs, &format!("{path}.health_check"), h)),
            tls,
        });
    }
    let upstreams = index_pools(&mut out);
    if upstreams.len() > MAX_UPSTREAMS {
        errs.push(
            "pools",
            format!(
                "{} distinct upstreams; at most {MAX_UPSTREAMS}",
                upstreams.len()
            ),
        );
    }
    (out, upstreams)
}

fn placeholder_pool() -> PoolConfig {
    PoolConfig {
        name: String::new(),
        upstreams: Vec::new(),
        specs: Vec::new(),
        resolve_interval: d::RESOLVE_INTERVAL,
        connect_timeout: d::CONNECT_TIMEOUT,
        read_timeout: d::READ_TIMEOUT,
        write_timeout: d::WRITE_TIMEOUT,
        idle_timeout: d::IDLE_TIMEOUT,
        health_check: None,
        tls: None,
    }
}

/// A pool's TLS towards its upstreams, with its files read and checked now: a CA file that holds
/// no certificate, a client key that is not its certificate's, or no name to verify by is an
/// error here, not a failed handshake on the first request.
fn upstream_tls(
    errs: &mut Errors,
    path: &str,
    p: &PoolFile,
    specs: &[UpstreamSpec],
    base_dir: &Path,
) -> Option<UpstreamTls> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let tls_keys = [
        ("sni", p.sni.is_some()),
        ("ca_file", p.ca_file.is_some()),
        ("client_cert", p.client_cert.is_some()),
        ("client_key", p.client_key.is_some()),
        ("h2", p.h2.is_some()),
    ];
    if !p.tls.unwrap_or(d::UPSTREAM_TLS) {
        for (key, set) in tls_keys {
            if set {
                errs.push(format!("{path}.{key}"), "only for a pool with tls = true");
            }
        }
        return None;
    }
    let host = specs.iter().find_map(|s| match s {
        UpstreamSpec::Name { host, .. } => Some(host.clone()),
        UpstreamSpec::Addr(_) => None,
    });
    let sni = match p.sni.clone().or(host) {
        Some(s) if !s.is_empty() => s,
        _ => {
            errs.push(
                format!("{path}.sni"),
                "needs the name the upstreams' certificates are for (their upstreams are addresses)",
            );
            String::new()
        }
    };
    let read_certs =
        |errs: &mut Errors, key: &str, file: &str| -> Option<(Vec<Vec<u8>>, Vec<u8>)> {
            let f = base_dir.join(file);
            let pem = match crate::tls::read_pem_file(&f) {
                Ok(b) => b,
                Err(e) => {
                    errs.push(
                        format!("{path}.{key}"),
                        format!("cannot read {}: {e}", f.display()),
                    );
                    return None;
                }
            };
            let ders: Result<Vec<CertificateDer>, _> =
                CertificateDer::pem_slice_iter(&pem).collect();
            match ders {
                Ok(d)
                    if !d.is_empty()
                        && d.iter()
                            .all(|c| x509_parser::parse_x509_certificate(c.as_ref()).is_ok()) =>
                {
                    Some((d.into_iter().map(|c| c.as_ref().to_vec()).collect(), pem))
                }
                _ => {
                    errs.push(
                        format!("{path}.{key}"),
                        format!("{} holds no PEM certificate usher can read", f.display()),
                    );
                    None
                }
            }
        };
    let (ca, ca_pem) = match &p.ca_file {
        None => (Vec::new(), None),
        Some(file) => match read_certs(errs, "ca_file", file) {
            Some((ders, pem)) => (ders, Some(pem)),
            None => (Vec::new(), None),
        },
    };
    let client = match (&p.client_cert, &p.client_key) {
        (None, None) => None,
        (Some(_), None) | (None, Some(_)) => {
            errs.push(
                format!("{path}.client_cert"),
                "client_cert and client_key go together",
            );
            None
        }
        (Some(cert), Some(key)) => {
            let chain = read_certs(errs, "client_cert", cert);
            let kf = base_dir.join(key);
            let key_pem = crate::tls::read_pem_file(&kf).ok();
            let key_der = key_pem
                .as_deref()
                .and_then(|b| PrivateKeyDer::from_pem_slice(b).ok());
            match (chain, key_der, key_pem) {
                (Some((chain, cert_pem)), Some(key_der), Some(key_pem)) => {
                    let signer = rustls::crypto::ring::sign::any_supported_type(&key_der);
                    let leaf = CertificateDer::from(chain[0].clone());
                    let matches = signer.is_ok_and(|s| {
                        rustls::sign::CertifiedKey::new(vec![leaf], s)
                            .keys_match()
                            .is_ok()
                    });
                    if matches {
                        let mut pem = cert_pem;
                        pem.extend_from_slice(&key_pem);
                        Some(ClientCert {
                            chain,
                            key: key_der.secret_der().to_vec(),
                            pem,
                        })
                    } else {
                        errs.push(
                            format!("{path}.client_key"),
                            format!("{} is not the key of {cert}", kf.display()),
                        );
                        None
                    }
                }
                (_, None, _) => {
                    errs.push(
                        format!("{path}.client_key"),
                        format!("{}: no private key read", kf.display()),
                    );
                    None
                }
                _ => None,
            }
        }
    };
    Some(UpstreamTls {
        sni,
        h2: p.h2.unwrap_or(d::UPSTREAM_H2),
        ca,
        ca_pem,
        client,
    })
}

fn health_check(errs: &mut Errors, path: &str, h: &HealthCheckFile) -> HealthCheck {
    let check_path = h.path.clone().unwrap_or_else(|| d::CHECK_PATH.to_string());
    if !check_path.starts_with('/') {
        errs.push(
            format!("{path}.path"),
            format!("{} must start with '/'", quote(&check_path)),
        );
    }
    let interval = duration(
        errs,
        &format!("{path}.interval"),
        h.interval.as_ref(),
        d::CHECK_INTERVAL,
    );
    let timeout = duration(
        errs,
        &format!("{path}.timeout"),
        h.timeout.as_ref(),
        d::CHECK_TIMEOUT,
    );
    if timeout > interval {
        errs.push(
            format!("{path}.timeout"),
            "must not be longer than the interval",
        );
    }
    HealthCheck {
        path: check_path,
        interval,
        timeout,
        rise: int_in(errs, &format!("{path}.rise"), h.rise, 1, 100, d::CHECK_RISE) as u32,
        fall: int_in(errs, &format!("{path}.fall"), h.fall, 1, 100, d::CHECK_FALL) as u32,
    }
}

fn share(errs: &mut Errors, path: &str, v: Option<f64>, default: f64) -> f64 {
    match v {
        None => default,
        Some(x) if (0.0..=1.0).contains(&x) => x,
        Some(x) => {
            errs.push(
                path,
                format!("{x} is out of range; a share runs from 0.0 to 1.0"),
            );
            default
        }
    }
}

fn outlier_config(errs: &mut Errors, f: OutlierFile) -> (OutlierSettings, Duration) {
    let d = OutlierSettings::default();
    let s = OutlierSettings {
        consecutive_failures: int_in(
            errs,
            "outlier.consecutive_failures",
            f.consecutive_failures,
            1,
            1000,
            d.consecutive_failures as i64,
        ) as u32,
        failure_rate: share(errs, "outlier.failure_rate", f.failure_rate, d.failure_rate),
        min_requests: int_in(
            errs,
            "outlier.min_requests",
            f.min_requests,
            1,
            1_000_000,
            d.min_requests as i64,
        ) as u32,
        memory: int_in(errs, "outlier.memory", f.memory, 1, 10_000, d.memory as i64) as u32,
        connect_failures: int_in(
            errs,
            "outlier.connect_failures",
            f.connect_failures,
            1,
            1000,
            d.connect_failures as i64,
        ) as u32,
        sample_interval: duration(
            errs,
            "outlier.sample_interval",
            f.sample_interval.as_ref(),
            d.sample_interval,
        ),
        latency_factor: match f.latency_factor {
            None => d.latency_factor,
            Some(x) if x >= 1.0 && x.is_finite() => x,
            Some(x) => {
                errs.push(
                    "outlier.latency_factor",
                    format!("{x} must be at least 1.0"),
                );
                d.latency_factor
            }
        },
        latency_min_delta: duration(
            errs,
            "outlier.latency_min_delta",
            f.latency_min_delta.as_ref(),
            d.latency_min_delta,
        ),
        latency_min_samples: int_in(
            errs,
            "outlier.latency_min_samples",
            f.latency_min_samples,
            1,
            1_000_000,
            d.latency_min_samples as i64,
        ) as u32,
        base_ejection: duration(
            errs,
            "outlier.base_ejection",
            f.base_ejection.as_ref(),
            d.base_ejection,
        ),
        max_ejection: duration(
            errs,
            "outlier.max_ejection",
            f.max_ejection.as_ref(),
            d.max_ejection,
        ),
        jitter: share(errs, "outlier.jitter", f.jitter, d.jitter),
        max_ejected_share: share(
            errs,
            "outlier.max_ejected_share",
            f.max_ejected_share,
            d.max_ejected_share,
        ),
        probe_successes: int_in(
            errs,
            "outlier.probe_successes",
            f.probe_successes,
            1,
            1000,
            d.probe_successes as i64,
        ) as u32,
        panic_below: share(errs, "outlier.panic_below", f.panic_below, d.panic_below),
        hung_factor: match f.hung_factor {
            None => d.hung_factor,
            Some(x) if x >= 1.0 && x.is_finite() => x,
            Some(x) => {
                errs.push("outlier.hung_factor", format!("{x} must be at least 1.0"));
                d.hung_factor
            }
        },
        hung_floor: duration(
            errs,
            "outlier.hung_floor",
            f.hung_floor.as_ref(),
            d.hung_floor,
        ),
    };
    if s.max_ejection < s.base_ejection {
        errs.push(
            "outlier.max_ejection",
            "must not be shorter than base_ejection",
        );
    }
    let sweep = duration(
        errs,
        "outlier.sweep_interval",
        f.sweep_interval.as_ref(),
        d::SWEEP_INTERVAL,
    );
    (s, sweep)
}

fn retries_config(errs: &mut Errors, f: RetriesFile) -> RetriesConfig {
    let d = BudgetSettings::default();
    let min_per_sec = match f.budget_min_per_sec {
        None => d.min_per_sec,
        Some(x) if x >= 0.0 && x.is_finite() => x,
        Some(x) => {
            errs.push(
                "retries.budget_min_per_sec",
                format!("{x} must be zero or more"),
            );
            d.min_per_sec
        }
    };
    let budget = BudgetSettings {
        ratio: share(errs, "retries.budget_ratio", f.budget_ratio, d.ratio),
        min_per_sec,
        window: duration(
            errs,
            "retries.budget_window",
            f.budget_window.as_ref(),
            d.window,
        ),
    };
    if budget.window < Duration::from_secs(1) || budget.window > MAX_BUDGET_WINDOW {
        errs.push("retries.budget_window", "must be between 1s and 1h");
    }
    RetriesConfig {
        enabled: f.enabled.unwrap_or(d::RETRIES_ENABLED),
        budget,
    }
}

/// With pseudonyms on, a query string kept in journeys or the access log would carry the very id
/// they hide when the id is read from a query parameter: refused rather than half-hidden.
fn id_in_kept_queries(
    errs: &mut Errors,
    identity: &IdentityConfig,
    privacy: &PrivacyConfig,
    routes: &[RouteConfig],
    access_log: Option<&crate::access_log::AccessLogConfig>,
) {
    let Some(param) = identity.customer_id.iter().find_map(|s| match s {
        IdSource::Query(p) => Some(p),
        _ => None,
    }) else {
        return;
    };
    if !privacy.pseudonyms.is_on() {
        return;
    }
    let why = format!("the customer id is read from the query parameter {param:?} and privacy.pseudonym_key_file is set: the kept query would carry the id the pseudonyms hide");
    for (i, r) in routes.iter().enumerate().filter(|(_, r)| r.keep_query) {
        errs.push(
            format!("routes[{i}].keep_query"),
            format!("{why} (route {})", r.name),
        );
    }
    if access_log.is_some_and(|a| a.query) {
        errs.push("access_log.query", why);
    }
}

/// A pseudonym key shorter than this could be guessed: HMAC-SHA-256's own block of strength.
const MIN_PSEUDONYM_KEY: usize = 32;
/// Retention shorter than this is a mistake, not a policy.
const MIN_RETENTION: Duration = Duration::from_secs(60);

fn privacy_config(errs: &mut Errors, f: PrivacyFile, base_dir: &Path) -> PrivacyConfig {
    let retention = duration(
        errs,
        "privacy.retention",
        f.retention.as_ref(),
        d::RETENTION,
    );
    if retention < MIN_RETENTION {
        errs.push(
            "privacy.retention",
            format!("at least {}s: shorter forgets everyone between two requests, and with them every score and struggle", MIN_RETENTION.as_secs()),
        );
    }
    let pseudonyms = match &f.pseudonym_key_file {
        None => crate::privacy::Pseudonyms::off(),
        Some(file) if file.trim().is_empty() => {
            errs.push(
                "privacy.pseudonym_key_file",
                "is empty; name the key file, or leave the setting out for no pseudonyms",
            );
            crate::privacy::Pseudonyms::off()
        }
        Some(file) => {
            let file = base_dir.join(file);
            match pseudonym_key(&file) {
                Ok(key) => crate::privacy::Pseudonyms::keyed(&key),
                Err(e) => {
                    errs.push(
                        "privacy.pseudonym_key_file",
                        format!("{}: {e}", file.display()),
                    );
                    crate::privacy::Pseudonyms::off()
                }
            }
        }
    };
    PrivacyConfig {
        pseudonyms,
        retention,
    }
}

fn pseudonym_key(file: &Path) -> Result<Vec<u8>, String> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(file).map_err(|e| format!("cannot read it: {e}"))?;
    if !meta.is_file() {
        return Err("not a regular file".into());
    }
    if meta.permissions().mode() & 0o004 != 0 {
        return Err(
            "every local user can read it, and with it undo the pseudonyms; chmod 600 or 640"
                .into(),
        );
    }
    let key = read_small(file)?.trim_ascii().to_vec();
    if key.len() < MIN_PSEUDONYM_KEY {
        return Err(format!(
            "{} bytes; a pseudonym key needs at least {MIN_PSEUDONYM_KEY} (e.g. `openssl rand -hex 32`)",
            key.len()
        ));
    }
    Ok(key)
}

/// Counts of one request over a window: two is the least that is a repetition, and a journey
/// holds at most 255 steps to count in.
fn struggle_config(errs: &mut Errors, f: StruggleFile) -> StruggleRules {
    let d = StruggleRules::default();
    let count = |errs: &mut Errors, path: &str, v: Option<i64>, default: u8| {
        int_in(errs, path, v, 2, MAX_JOURNEY_LEN, default as i64) as u8
    };
    let window = duration;
    StruggleRules {
        loop_count: count(errs, "struggle.loop_count", f.loop_count, d.loop_count),
        loop_window: window(
            errs,
            "struggle.loop_window",
            f.loop_window.as_ref(),
            d.loop_window,
        ),
        retry_window: window(
            errs,
            "struggle.retry_window",
            f.retry_window.as_ref(),
            d.retry_window,
        ),
        form_loop_count: count(
            errs,
            "struggle.form_loop_count",
            f.form_loop_count,
            d.form_loop_count,
        ),
        form_loop_window: window(
            errs,
            "struggle.form_loop_window",
            f.form_loop_window.as_ref(),
            d.form_loop_window,
        ),
        in_score: f.in_score.unwrap_or(d.in_score),
    }
}

fn balancing_config(errs: &mut Errors, f: BalancingFile) -> EwmaSettings {
    let d = EwmaSettings::default();
    EwmaSettings {
        decay: duration(errs, "balancing.decay", f.decay.as_ref(), d.decay),
        default_rtt: duration(
            errs,
            "balancing.default_rtt",
            f.default_rtt.as_ref(),
            d.default_rtt,
        ),
        failure_penalty: duration(
            errs,
            "balancing.failure_penalty",
            f.failure_penalty.as_ref(),
            d.failure_penalty,
        ),
    }
}

fn protection_config(errs: &mut Errors, f: ProtectionFile) -> ProtectionConfig {
    let rescue_below = match f.rescue_below {
        None => None,
        Some(x) if (0.0..=100.0).contains(&x) => Some(x),
        Some(x) => {
            errs.push(
                "protection.rescue_below",
                format!("{x} is out of range; scores run from 0 to 100"),
            );
            None
        }
    };
    let experience_header = f
        .experience_header
        .as_deref()
        .and_then(|h| header_name(errs, "protection.experience_header", h));
    if let Some(h) = &experience_header {
        if !h.as_str().starts_with("x-usher-") {
            // Only x-usher-* headers are stripped from clients; any other name could be forged.
            errs.push(
                "protection.experience_header",
                format!(
                    "{:?} must start with \"x-usher-\" so that clients cannot forge it",
                    h.as_str()
                ),
            );
        }
    }
    let try_timeout_factor = match f.try_timeout_factor {
        None => d::TRY_TIMEOUT_FACTOR,
        Some(x) if x == 0.0 || (1.0..=1000.0).contains(&x) => x,
        Some(x) => {
            // Under 1x the route's own p99, a healthy upstream's ordinary answers would be cut off.
            errs.push(
                "protection.try_timeout_factor",
                format!("{x} is out of range: 0 (off) or 1 to 1000"),
            );
            d::TRY_TIMEOUT_FACTOR
        }
    };
    ProtectionConfig {
        protected_anywhere: f.protected_anywhere.unwrap_or(false),
        critical_for_everyone: f.critical_for_everyone.unwrap_or(false),
        rescue_below,
        rescue_for: duration(
            errs,
            "protection.rescue_for",
            f.rescue_for.as_ref(),
            d::RESCUE_FOR,
        ),
        experience_header,
        try_timeout_factor,
        try_timeout_floor: duration(
            errs,
            "protection.try_timeout_floor",
            f.try_timeout_floor.as_ref(),
            d::TRY_TIMEOUT_FLOOR,
        ),
    }
}

fn route_list(
    errs: &mut Errors,
    routes: &[Option<RouteFile>],
    pools: &[PoolConfig],
) -> Vec<RouteConfig> {
    let mut out = Vec::new();
    let mut names = HashSet::new();
    if routes.is_empty() {
        errs.push(
            "routes",
            "no routes: every request would get a 404; add at least one [[routes]]",
        );
    }
    for (i, r) in routes.iter().enumerate() {
        let path = format!("routes[{i}]");
        let Some(r) = r else { continue };
        let name = match r.name.as_deref() {
            None | Some("") => {
                errs.push(format!("{path}.name"), "every route needs a name");
                String::new()
            }
            Some(n) => {
                if !names.insert(n.to_string()) {
                    errs.push(
                        format!("{path}.name"),
                        format!("route {} is defined twice", quote(n)),
                    );
                }
                n.to_string()
            }
        };
        let pool = match r.pool.as_deref() {
            None => {
                errs.push(format!("{path}.pool"), "every route needs a pool");
                0
            }
            Some(p) => pool_by_name(errs, &format!("{path}.pool"), p, pools).unwrap_or(0),
        };
        let reserved_pool = r
            .reserved_pool
            .as_deref()
            .and_then(|p| pool_by_name(errs, &format!("{path}.reserved_pool"), p, pools));
        if reserved_pool.is_some() && reserved_pool == Some(pool) {
            errs.push(format!("{path}.reserved_pool"), "is the route's own pool");
        }
        let matcher = route_match(errs, &format!("{path}.match"), r.matcher.as_ref());
        let target = duration(
            errs,
            &format!("{path}.target"),
            r.target.as_ref(),
            d::TARGET,
        );
        out.push(RouteConfig {
            name,
            matcher,
            pool,
            reserved_pool,
            slo: match r.slo {
                None => None,
                Some(x) if x > 0.0 && x < 1.0 => Some(x),
                Some(x) => {
                    errs.push(
                        format!("{path}.slo"),
                        format!(
                            "{x} is not an objective; write the share of good requests, e.g. 0.999"
                        ),
                    );
                    None
                }
            },
            critical: r.critical.unwrap_or(false),
            target,
            streaming: r.streaming.unwrap_or(d::STREAMING),
            keep_query: r.keep_query.unwrap_or(d::KEEP_QUERY),
        });
    }
    if out.len() > MAX_ROUTES {
        errs.push(
            "routes",
            format!("{} routes; at most {MAX_ROUTES}", out.len()),
        );
    }
    out
}

fn pool_by_name(errs: &mut Errors, path: &str, name: &str, pools: &[PoolConfig]) -> Option<PoolId> {
    match pools
        .iter()
        .position(|x| x.name == name && !name.is_empty())
    {
        Some(id) => Some(id as PoolId),
        None => {
            let known: Vec<String> = pools
                .iter()
                .filter(|x| !x.name.is_empty())
                .map(|x| format!("{:?}", x.name))
                .collect();
            errs.push(
                path,
                format!(
                    "no pool named {}; pools are {}",
                    quote(name),
                    known.join(", ")
                ),
            );
            None
        }
    }
}

fn route_match(errs: &mut Errors, path: &str, m: Option<&MatchFile>) -> RouteMatch {
    let Some(m) = m else {
        return RouteMatch::default();
    };
    let host = m.host.as_deref().and_then(|h| {
        let h = h.trim().to_ascii_lowercase();
        if h.is_empty() || h.contains('/') || h.contains(' ') {
            errs.push(
                format!("{path}.host"),
                format!("{} is not a host name", quote(&h)),
            );
            None
        } else if let Some(rest) = h.strip_prefix("*.") {
            Some(HostMatch::Suffix(format!(".{rest}")))
        } else {
            Some(HostMatch::Exact(h))
        }
    });
    let path_prefix = m.path_prefix.as_deref().and_then(|p| {
        if p.starts_with('/') {
            Some(p.to_string())
        } else {
            errs.push(
                format!("{path}.path_prefix"),
                format!("{} must start with '/'", quote(p)),
            );
            None
        }
    });
    let mut methods = Vec::new();
    for (j, text) in m.method.iter().flat_map(|x| x.as_slice()).enumerate() {
        let upper = text.to_ascii_uppercase();
        match Method::from_bytes(upper.as_bytes()) {
            Ok(me) if !upper.is_empty() => methods.push(me),
            _ => errs.push(
                format!("{path}.method[{j}]"),
                format!("{} is not an HTTP method", quote(text)),
            ),
        }
    }
    let header = m.header.as_ref().and_then(|h| {
        let hpath = format!("{path}.header");
        let name = match &h.name {
            None => {
                errs.push(format!("{hpath}.name"), "a header match needs a name");
                None
            }
            Some(n) => header_name(errs, &format!("{hpath}.name"), n),
        };
        let value = match &h.value {
            None => None,
            Some(v) => match HeaderValue::from_str(v) {
                Ok(v) => Some(v),
                Err(_) => {
                    errs.push(
                        format!("{hpath}.value"),
                        format!("{} is not a valid header value", quote(v)),
                    );
                    None
                }
            },
        };
        name.map(|name| HeaderMatch { name, value })
    });
    RouteMatch {
        host,
        path_prefix,
        methods,
        header,
    }
}

fn events_config(
    errs: &mut Errors,
    f: EventsFile,
    degraded_below: f64,
    base_dir: &Path,
) -> EventsConfig {
    let source = f.source.clone().unwrap_or_else(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|h| h.trim().to_string())
            .filter(|h| !h.is_empty())
            .or_else(|| std::env::var("HOSTNAME").ok())
            .unwrap_or_else(|| "localhost".to_string());
        format!("usher://{host}")
    });
    if source.is_empty() {
        errs.push(
            "events.source",
            "must not be empty (a URI reference, e.g. \"usher://edge-1\")",
        );
    }
    let recover_above = match f.recover_above {
        None => (degraded_below + d::RECOVER_MARGIN).min(100.0),
        Some(x) if (degraded_below..=100.0).contains(&x) => x,
        Some(x) => {
            errs.push(
                "events.recover_above",
                format!("{x} must be between experience.degraded_below ({degraded_below}) and 100"),
            );
            degraded_below
        }
    };
    let spool_dir = base_dir.join(f.spool_dir.as_deref().unwrap_or(d::SPOOL_DIR));
    let mut sinks: Vec<SinkConfig> = Vec::new();
    for (i, k) in f.sinks.iter().flatten().enumerate() {
        let path = format!("events.sinks[{i}]");
        if let Some(sink) = sink_config(errs, &path, k, base_dir) {
            if sinks.iter().any(|s| s.name == sink.name) {
                errs.push(
                    format!("{path}.name"),
                    format!(
                        "sink {} is defined twice; give one a different name",
                        quote(&sink.name)
                    ),
                );
            }
            match &sink.kind {
                SinkKind::Jsonl { path: file, .. } => {
                    if let Err(e) = can_write_file(file) {
                        errs.push(format!("{path}.path"), format!("{}: {e}", file.display()));
                    }
                }
                SinkKind::Webhook { .. } | SinkKind::Nats { .. } => {
                    if let Err(e) = can_make_dir(&spool_dir) {
                        errs.push(
                            "events.spool_dir",
                            format!("the {} sink spools there: {e}", quote(&sink.name)),
                        );
                    }
                }
            }
            sinks.push(sink);
        }
    }
    let budget_per_sec = match f.budget_per_second {
        None => d::EVENT_BUDGET_PER_SEC,
        Some(x) if x.is_finite() && (0.0..=1_000_000.0).contains(&x) => x,
        Some(x) => {
            errs.push(
                "events.budget_per_second",
                format!("{x} is out of range: 0 (no limit) to 1000000"),
            );
            d::EVENT_BUDGET_PER_SEC
        }
    };
    let mut verified_only = Vec::new();
    for (i, name) in f.verified_only.iter().flatten().enumerate() {
        use crate::event_types::EventType;
        match EventType::named(name) {
            Some(t) if t.about_customer() => verified_only.push(t),
            _ => errs.push(
                format!("events.verified_only[{i}]"),
                format!(
                    "{} is not an event about a customer; use {}",
                    quote(name),
                    EventType::ALL
                        .iter()
                        .filter(|t| t.about_customer())
                        .map(|t| format!("{:?}", t.as_str()))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ),
        }
    }
    EventsConfig {
        budget_per_sec,
        verified_only,
        source,
        cooldown: duration(errs, "events.cooldown", f.cooldown.as_ref(), d::COOLDOWN),
        recover_above,
        recent: int_in(
            errs,
            "events.recent",
            f.recent,
            0,
            100_000,
            d::RECENT_EVENTS,
        ) as usize,
        funnel_track_max: int_in(
            errs,
            "events.funnel_track_max",
            f.funnel_track_max,
            1,
            100_000_000,
            d::FUNNEL_TRACK_MAX,
        ) as usize,
        funnel_history_max: int_in(
            errs,
            "events.funnel_history_max",
            f.funnel_history_max,
            0,
            100_000_000,
            d::FUNNEL_HISTORY_MAX,
        ) as usize,
        spool_dir,
        slo_min_requests: int_in(
            errs,
            "events.slo_min_requests",
            f.slo_min_requests,
            1,
            1_000_000,
            d::SLO_MIN_REQUESTS,
        ) as u32,
        slo_realert: duration(
            errs,
            "events.slo_realert",
            f.slo_realert.as_ref(),
            d::SLO_REALERT,
        ),
        sinks,
    }
}

fn sink_config(errs: &mut Errors, path: &str, f: &SinkFile, base_dir: &Path) -> Option<SinkConfig> {
    const KINDS: &str = "\"jsonl\", \"webhook\" or \"nats\"";
    let kind_name = match f.kind.as_deref() {
        Some(k @ ("jsonl" | "webhook" | "nats")) => k,
        Some(k) => {
            errs.push(
                format!("{path}.type"),
                format!("unknown sink type {}; use {KINDS}", quote(k)),
            );
            return None;
        }
        None => {
            errs.push(
                format!("{path}.type"),
                format!("every sink needs a type: {KINDS}"),
            );
            return None;
        }
    };
    // Keys that belong to other sink types are mistakes, not options.
    let present: &[(&str, bool)] = &[
        ("path", f.path.is_some()),
        ("max_bytes", f.max_bytes.is_some()),
        ("keep", f.keep.is_some()),
        ("url", f.url.is_some()),
        ("batch", f.batch.is_some()),
        ("timeout", f.timeout.is_some()),
        ("max_spool_bytes", f.max_spool_bytes.is_some()),
        ("stream", f.stream.is_some()),
        ("subject", f.subject.is_some()),
        ("ca_file", f.ca_file.is_some()),
        ("template", f.template.is_some()),
        ("content_type", f.content_type.is_some()),
        ("headers", f.headers.is_some()),
        ("authorization_file", f.authorization_file.is_some()),
        ("idempotency_header", f.idempotency_header.is_some()),
    ];
    let allowed: &[&str] = match kind_name {
        "jsonl" => &["path", "max_bytes", "keep"],
        "webhook" => &[
            "url",
            "batch",
            "timeout",
            "max_spool_bytes",
            "ca_file",
            "template",
            "content_type",
            "headers",
            "authorization_file",
            "idempotency_header",
        ],
        _ => &["url", "stream", "subject", "timeout", "max_spool_bytes"],
    };
    for (key, set) in present {
        if *set && !allowed.contains(key) {
            errs.push(
                format!("{path}.{key}"),
                format!("does not apply to a {kind_name} sink"),
            );
        }
    }
    let name = f.name.clone().unwrap_or_else(|| kind_name.to_string());
    let queue = int_in(
        errs,
        &format!("{path}.queue"),
        f.queue,
        1,
        10_000_000,
        d::SINK_QUEUE,
    ) as usize;
    let timeout = duration(
        errs,
        &format!("{path}.timeout"),
        f.timeout.as_ref(),
        d::SINK_TIMEOUT,
    );
    let max_spool_bytes = int_in(
        errs,
        &format!("{path}.max_spool_bytes"),
        f.max_spool_bytes,
        4096,
        i64::MAX,
        d::MAX_SPOOL_BYTES,
    ) as u64;
    let url = |errs: &mut Errors, schemes: &[&str]| -> Option<String> {
        match &f.url {
            None => {
                errs.push(
                    format!("{path}.url"),
                    format!("a {kind_name} sink needs a url"),
                );
                None
            }
            Some(u) if schemes.iter().any(|s| u.starts_with(s)) => Some(u.clone()),
            Some(u) => {
                errs.push(
                    format!("{path}.url"),
                    format!("{} must start with {}", quote(u), schemes.join(" or ")),
                );
                None
            }
        }
    };
    let mut kind = match kind_name {
        "jsonl" => SinkKind::Jsonl {
            path: base_dir.join(f.path.as_deref().unwrap_or(d::JSONL_PATH)),
            max_bytes: int_in(
                errs,
                &format!("{path}.max_bytes"),
                f.max_bytes,
                1024,
                i64::MAX,
                d::JSONL_MAX_BYTES,
            ) as u64,
            keep: int_in(
                errs,
                &format!("{path}.keep"),
                f.keep,
                0,
                1000,
                d::JSONL_KEEP,
            ) as u32,
        },
        "webhook" => SinkKind::Webhook {
            url: url(errs, &["http://", "https://"])?,
            batch: int_in(
                errs,
                &format!("{path}.batch"),
                f.batch,
                1,
                10_000,
                d::WEBHOOK_BATCH,
            ) as usize,
            body: webhook_body(errs, path, f, base_dir),
            headers: webhook_headers(errs, path, f),
            authorization: f.authorization_file.as_ref().and_then(|a| {
                let file = base_dir.join(a);
                let value = read_small(&file).and_then(|b| {
                    let v = String::from_utf8(b).map_err(|_| "not UTF-8".to_string())?;
                    let v = v.trim().to_string();
                    match HeaderValue::from_str(&v) {
                        Ok(_) if !v.is_empty() => Ok(v),
                        _ => Err("not a header value: one line such as \"Bearer <token>\" or \"Basic <base64>\"".to_string()),
                    }
                });
                match value {
                    Ok(v) => Some(Secret(v)),
                    Err(e) => {
                        errs.push(
                            format!("{path}.authorization_file"),
                            format!("{}: {e}", file.display()),
                        );
                        None
                    }
                }
            }),
            timeout,
            max_spool_bytes,
            ca: f.ca_file.as_ref().and_then(|c| {
                let file = base_dir.join(c);
                let pem =
                    read_small(&file).and_then(|b| {
                        match reqwest::Certificate::from_pem_bundle(&b) {
                            Ok(certs) if !certs.is_empty() => Ok(b),
                            _ => Err("no PEM certificate in it".to_string()),
                        }
                    });
                match pem {
                    Ok(b) => Some(std::sync::Arc::new(b)),
                    Err(e) => {
                        errs.push(
                            format!("{path}.ca_file"),
                            format!("{}: {e}", file.display()),
                        );
                        None
                    }
                }
            }),
        },
        _ => SinkKind::Nats {
            url: url(errs, &["nats://"])?,
            stream: f
                .stream
                .clone()
                .unwrap_or_else(|| d::NATS_STREAM.to_string()),
            subject: f
                .subject
                .clone()
                .unwrap_or_else(|| d::NATS_SUBJECT.to_string()),
            timeout,
            max_spool_bytes,
        },
    };
    if let SinkKind::Nats {
        stream, subject, ..
    } = &kind
    {
        if stream.is_empty() || stream.contains(['.', ' ', '*', '>']) {
            errs.push(
                format!("{path}.stream"),
                format!("{} is not a JetStream stream name", quote(stream)),
            );
        }
        if subject.is_empty() || subject.contains([' ', '*', '>']) {
            errs.push(
                format!("{path}.subject"),
                format!("{} is not a subject to publish to", quote(subject)),
            );
        }
    }
    if let SinkKind::Webhook {
        body: Some(_),
        batch,
        ..
    } = &mut kind
    {
        // Helpdesk APIs create one ticket per request: each event is its own request, and is
        // acknowledged (or dead-lettered) alone, so a retry never sends one twice on purpose.
        if f.batch.is_some() {
            errs.push(
                format!("{path}.batch"),
                "a webhook with a template sends one request per event; remove batch",
            );
        }
        *batch = 1;
    }
    let takes = sink_filter(errs, path, f);
    Some(SinkConfig {
        name,
        queue,
        takes,
        kind,
    })
}

/// `events` and `when`: which events a sink takes.
fn sink_filter(errs: &mut Errors, path: &str, f: &SinkFile) -> SinkFilter {
    use crate::event_types::EventType;
    let mut types = Vec::new();
    for (i, name) in f.events.iter().flatten().enumerate() {
        match EventType::named(name) {
            Some(t) if !types.contains(&t) => types.push(t),
            Some(_) => errs.push(
                format!("{path}.events[{i}]"),
                format!("{} is listed twice", quote(name)),
            ),
            None => errs.push(
                format!("{path}.events[{i}]"),
                format!(
                    "{} is not an event type; use {}",
                    quote(name),
                    EventType::ALL
                        .iter()
                        .map(|t| format!("{:?}", t.as_str()))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ),
        }
    }
    if f.events.as_ref().is_some_and(|e| e.is_empty()) {
        errs.push(
            format!("{path}.events"),
            "an empty list takes no event; leave events out to take every type",
        );
    }
    let when = f
        .when
        .as_deref()
        .and_then(|w| match crate::templates::Condition::compile(w) {
            Ok(c) => Some(std::sync::Arc::new(c)),
            Err(e) => {
                errs.push(format!("{path}.when"), format!("{}: {e}", quote(w)));
                None
            }
        });
    SinkFilter { types, when }
}

/// `template`, `content_type` and `idempotency_header`: a webhook body of its own per event.
fn webhook_body(
    errs: &mut Errors,
    path: &str,
    f: &SinkFile,
    base_dir: &Path,
) -> Option<WebhookBody> {
    let Some(t) = &f.template else {
        for (key, set) in [
            ("content_type", f.content_type.is_some()),
            ("idempotency_header", f.idempotency_header.is_some()),
        ] {
            if set {
                errs.push(
                    format!("{path}.{key}"),
                    "applies only with a template; without one the body is a CloudEvents batch",
                );
            }
        }
        return None;
    };
    let content_type = f
        .content_type
        .clone()
        .unwrap_or_else(|| d::WEBHOOK_TEMPLATE_CONTENT_TYPE.to_string());
    if HeaderValue::from_str(&content_type).is_err() || !content_type.contains('/') {
        errs.push(
            format!("{path}.content_type"),
            format!(
                "{} is not a media type such as \"application/json\"",
                quote(&content_type)
            ),
        );
    }
    let idempotency_header =
        f.idempotency_header
            .as_ref()
            .and_then(|h| match HeaderName::from_bytes(h.as_bytes()) {
                Ok(n) => Some(n.as_str().to_string()),
                Err(_) => {
                    errs.push(
                        format!("{path}.idempotency_header"),
                        format!("{} is not a header name", quote(h)),
                    );
                    None
                }
            });
    let file = base_dir.join(t);
    // One byte over the bound is read, so that the template's own check says it is too large.
    let source = crate::files::read_regular(&file, crate::templates::MAX_TEMPLATE_BYTES as u64 + 1)
        .map_err(|e| e.to_string())
        .and_then(|b| String::from_utf8(b).map_err(|_| "not UTF-8 text".to_string()));
    let name = file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| t.clone());
    let json = crate::templates::is_json(&content_type);
    match source.and_then(|s| crate::templates::BodyTemplate::compile(&name, s, json)) {
        Ok(template) => Some(WebhookBody {
            template: std::sync::Arc::new(template),
            content_type,
            idempotency_header,
        }),
        Err(e) => {
            errs.push(
                format!("{path}.template"),
                format!("{}: {e}", file.display()),
            );
            None
        }
    }
}

/// `headers`: sent as given, but not the ones usher sets itself or the secret one.
fn webhook_headers(errs: &mut Errors, path: &str, f: &SinkFile) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (k, v) in f.headers.iter().flatten() {
        let at = format!("{path}.headers.{k}");
        let Ok(name) = HeaderName::from_bytes(k.as_bytes()) else {
            errs.push(at, format!("{} is not a header name", quote(k)));
            continue;
        };
        match name.as_str() {
            "authorization" | "proxy-authorization" => errs.push(
                at,
                "secrets do not belong in the configuration: put the value in a file and name it in authorization_file",
            ),
            "content-type" => errs.push(at, "set content_type (with a template) instead"),
            "content-length" | "host" | "transfer-encoding" | "connection" => {
                errs.push(at, "usher sets this header itself")
            }
            n => match HeaderValue::from_str(v) {
                Ok(_) => out.push((n.to_string(), v.clone())),
                Err(_) => errs.push(at, format!("{} is not a header value", quote(v))),
            },
        }
    }
    out
}

fn funnel_list(errs: &mut Errors, funnels: &[Option<FunnelFile>]) -> Vec<Funnel> {
    let mut out: Vec<Funnel> = Vec::new();
    for (i, f) in funnels.iter().enumerate() {
        let Some(f) = f else { continue };
        let path = format!("funnels[{i}]");
        let name = match f.name.as_deref() {
            None | Some("") => {
                errs.push(format!("{path}.name"), "every funnel needs a name");
                String::new()
            }
            Some(n) => {
                if out.iter().any(|o| o.name == n) {
                    errs.push(
                        format!("{path}.name"),
                        format!("funnel {} is defined twice", quote(n)),
                    );
                }
                n.to_string()
            }
        };
        let mut steps = Vec::new();
        let raw = f.steps.as_deref().unwrap_or(&[]);
        if raw.len() < 2 {
            errs.push(format!("{path}.steps"), "a funnel needs at least two steps");
        }
        for (j, st) in raw.iter().enumerate() {
            let spath = format!("{path}.steps[{j}]");
            let method = st.method.as_deref().and_then(|m| {
                Method::from_bytes(m.to_ascii_uppercase().as_bytes())
                    .map_err(|_| {
                        errs.push(
                            format!("{spath}.method"),
                            format!("{} is not an HTTP method", quote(m)),
                        )
                    })
                    .ok()
            });
            let pattern = match st.path.as_deref() {
                None => {
                    errs.push(format!("{spath}.path"), "every step needs a path");
                    None
                }
                Some(p) => {
                    let parsed = PathPattern::parse(p);
                    if parsed.is_none() {
                        errs.push(
                            format!("{spath}.path"),
                            format!("{} is not a path pattern: start with '/', '*' for one segment, '**' only at the end", quote(p)),
                        );
                    }
                    parsed
                }
            };
            if let Some(path_pattern) = pattern {
                steps.push(FunnelStep {
                    name: st.name.clone().unwrap_or_else(|| format!("step {}", j + 1)),
                    method,
                    path: path_pattern,
                });
            }
        }
        if steps.len() > u8::MAX as usize {
            errs.push(format!("{path}.steps"), "at most 255 steps");
        }
        out.push(Funnel {
            name,
            steps,
            abandon_after: duration(
                errs,
                &format!("{path}.abandon_after"),
                f.abandon_after.as_ref(),
                d::ABANDON_AFTER,
            ),
        });
    }
    out
}
