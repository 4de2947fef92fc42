//! Who the customer is, which tier they are in, and how far each claim can be trusted.
//!
//! The customer id comes from the first configured source that holds a usable value (header, cookie,
//! query parameter), else from the client address (`anon:<ip>`). A tier header is believed only when
//! the peer is inside `trusted_from` (a CDN or load balancer in front of usher): from anyone else it is
//! ignored and flagged for removal, so a client can neither promote itself nor pass the claim on to the
//! application. This module only decides; stripping headers is the proxy's job.

use crate::config::{IdSource, IdentityConfig, Tier, TierId, TierSource};
use crate::urlencoded;
use compact_str::CompactString;
use http::{HeaderMap, HeaderName, Uri};
use std::net::IpAddr;

/// The customer behind one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub id: CompactString,
    pub tier: TierId,
    /// The request carried a tier header from a peer that may not set it.
    pub untrusted_tier_header: bool,
}

#[derive(Debug, Clone)]
pub struct IdentityResolver {
    config: IdentityConfig,
    tier_headers: Vec<HeaderName>,
    tier_names: Vec<String>,
}

impl IdentityResolver {
    pub fn new(config: &IdentityConfig, tiers: &[Tier]) -> Self {
        let tier_headers = config
            .tier
            .iter()
            .filter_map(|s| match s {
                TierSource::Header { name, .. } => Some(name.clone()),
                TierSource::Table { .. } => None,
            })
            .collect();
        IdentityResolver {
            config: config.clone(),
            tier_headers,
            tier_names: tiers.iter().map(|t| t.name.clone()).collect(),
        }
    }

    /// Headers that carry tier claims: to be removed when [`Identity::untrusted_tier_header`] is set.
    pub fn tier_headers(&self) -> &[HeaderName] {
        &self.tier_headers
    }

    pub fn resolve(&self, uri: &Uri, headers: &HeaderMap, peer: Option<IpAddr>) -> Identity {
        let id = self
            .config
            .customer_id
            .iter()
            .find_map(|s| self.id_from(s, uri, headers))
            .unwrap_or_else(|| anonymous(peer));

        let mut untrusted = false;
        let mut tier = None;
        for source in &self.config.tier {
            match source {
                TierSource::Header { name, trusted_from } => {
                    let Some(value) = headers.get(name) else {
                        continue;
                    };
                    if !peer.is_some_and(|p| trusted_from.iter().any(|n| n.contains(&p))) {
                        untrusted = true;
                        continue;
                    }
                    if tier.is_none() {
                        tier = value.to_str().ok().and_then(|v| self.tier_id(v.trim()));
                    }
                }
                TierSource::Table { entries, .. } => {
                    if tier.is_none() {
                        tier = entries.get(id.as_str()).copied();
                    }
                }
            }
        }
        Identity {
            id,
            tier: tier.unwrap_or(self.config.default_tier),
            untrusted_tier_header: untrusted,
        }
    }

    fn tier_id(&self, name: &str) -> Option<TierId> {
        self.tier_names
            .iter()
            .position(|t| t == name)
            .map(|i| i as TierId)
    }

    fn id_from(&self, source: &IdSource, uri: &Uri, headers: &HeaderMap) -> Option<CompactString> {
        let raw: Option<CompactString> = match source {
            IdSource::Header(name) => headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(|v| CompactString::from(v.trim())),
            IdSource::Cookie(name) => cookie(headers, name).map(CompactString::from),
            IdSource::Query(name) => uri.query().and_then(|q| urlencoded::query_param(q, name)),
        };
        raw.filter(|v| self.usable_id(v))
    }

    /// Ids become map keys and JSON output: bound their length and keep them printable.
    fn usable_id(&self, v: &str) -> bool {
        !v.is_empty()
            && v.len() <= self.config.max_id_len
            && v.bytes().all(|b| (0x21..=0x7e).contains(&b))
            && !v.starts_with("anon:")
    }
}

fn anonymous(peer: Option<IpAddr>) -> CompactString {
    use std::fmt::Write;
    let mut s = CompactString::const_new("anon:");
    match peer {
        Some(ip) => {
            let _ = write!(s, "{ip}");
        }
        None => s.push_str("unknown"),
    }
    s
}

fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (k, v) = pair.trim().split_once('=')?;
            (k.trim() == name).then(|| v.trim().trim_matches('"'))
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn resolver(extra: &str) -> IdentityResolver {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("t.csv"), "vip,gold\n").unwrap();
        let text = format!(
            r#"
[identity]
customer_id = [{{ header = "x-customer-id" }}, {{ cookie = "cid" }}, {{ query = "cid" }}]
tier = [{{ header = "x-customer-tier", trusted_from = ["10.0.0.0/8", "::1"] }}, {{ table = "t.csv" }}]
default_tier = "standard"
{extra}
[[tiers]]
name = "gold"
[[tiers]]
name = "standard"
[[pools]]
name = "p"
upstreams = ["127.0.0.1:1"]
[[routes]]
name = "r"
pool = "p"
"#
        );
        let cfg = Config::parse(&text, dir.path()).unwrap();
        IdentityResolver::new(&cfg.identity, &cfg.tiers)
    }

    fn resolve(r: &IdentityResolver, uri: &str, headers: &[(&str, &str)], peer: &str) -> Identity {
        let mut h = HeaderMap::new();
        for (k, v) in headers {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        r.resolve(&uri.parse().unwrap(), &h, Some(peer.parse().unwrap()))
    }

    const GOLD: TierId = 0;
    const STANDARD: TierId = 1;

    #[test]
    fn id_sources_in_order_then_anonymous() {
        let r = resolver("");
        let both = [("x-customer-id", "h1"), ("cookie", "a=1; cid=c1")];
        assert_eq!(resolve(&r, "/?cid=q1", &both, "1.2.3.4").id, "h1");
        assert_eq!(resolve(&r, "/?cid=q1", &both[1..], "1.2.3.4").id, "c1");
        assert_eq!(resolve(&r, "/?x=1&cid=q%2F1", &[], "1.2.3.4").id, "q/1");
        // Spaces are not printable id characters: the query value is refused, anonymous remains.
        assert_eq!(resolve(&r, "/?cid=q+1", &[], "1.2.3.4").id, "anon:1.2.3.4");
        assert_eq!(resolve(&r, "/", &[], "1.2.3.4").id, "anon:1.2.3.4");
        assert_eq!(resolve(&r, "/", &[], "2001:db8::1").id, "anon:2001:db8::1");
    }

    #[test]
    fn unusable_ids_fall_through_to_the_next_source() {
        let r = resolver("");
        let long = "x".repeat(200);
        assert_eq!(
            resolve(
                &r,
                "/",
                &[("x-customer-id", &long), ("cookie", "cid=c1")],
                "1.2.3.4"
            )
            .id,
            "c1"
        );
        // A client must not impersonate the anonymous bucket of another address.
        assert_eq!(
            resolve(&r, "/", &[("x-customer-id", "anon:9.9.9.9")], "1.2.3.4").id,
            "anon:1.2.3.4"
        );
        assert_eq!(
            resolve(&r, "/", &[("x-customer-id", "")], "1.2.3.4").id,
            "anon:1.2.3.4"
        );
    }

    #[test]
    fn tier_header_is_believed_only_from_trusted_peers() {
        let r = resolver("");
        let claim = [("x-customer-id", "joe"), ("x-customer-tier", "gold")];
        let trusted = resolve(&r, "/", &claim, "10.1.2.3");
        assert_eq!((trusted.tier, trusted.untrusted_tier_header), (GOLD, false));
        let v6 = resolve(&r, "/", &claim, "::1");
        assert_eq!(v6.tier, GOLD);
        let spoofed = resolve(&r, "/", &claim, "192.168.1.1");
        assert_eq!(
            (spoofed.tier, spoofed.untrusted_tier_header),
            (STANDARD, true)
        );
        assert_eq!(
            r.tier_headers(),
            &[HeaderName::from_static("x-customer-tier")]
        );
    }

    #[test]
    fn table_then_default() {
        let r = resolver("");
        assert_eq!(
            resolve(&r, "/", &[("x-customer-id", "vip")], "1.1.1.1").tier,
            GOLD
        );
        assert_eq!(
            resolve(&r, "/", &[("x-customer-id", "nobody")], "1.1.1.1").tier,
            STANDARD
        );
        // An unknown tier name from a trusted peer is ignored, not an error: the table still applies.
        let odd = [("x-customer-id", "vip"), ("x-customer-tier", "diamond")];
        assert_eq!(resolve(&r, "/", &odd, "10.0.0.1").tier, GOLD);
    }

    #[test]
    fn no_peer_address_is_anonymous_unknown_and_untrusted() {
        let r = resolver("");
        let mut h = HeaderMap::new();
        h.insert("x-customer-tier", "gold".parse().unwrap());
        let i = r.resolve(&"/".parse().unwrap(), &h, None);
        assert_eq!(i.id, "anon:unknown");
        assert_eq!((i.tier, i.untrusted_tier_header), (STANDARD, true));
    }
}
