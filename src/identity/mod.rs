//! Who the customer is, which tier they are in, and how far each claim can be trusted.
//!
//! The customer id comes from a valid customer token when one is configured (`jwt.rs`: a verified
//! id), else from the first configured source that holds a usable value (header, cookie, query
//! parameter), else from the client address (`anon:<ip>`). A header usher trusts only from some
//! peers (a tier header, an id header with `trusted_from`: a CDN or load balancer in front of usher)
//! is believed only from them; from anyone else it is ignored and, with every lookalike spelling,
//! removed before forwarding (`headers.rs`), so a client can neither promote itself nor pass the
//! claim on to the application. An id from a valid token or a trusted id header is *verified*; a
//! tier table can be limited to verified ids, so that nobody gets gold by knowing an id. This module
//! only decides; stripping headers is the proxy's job.

pub mod headers;
pub mod jwt;

use crate::config::{IdSource, IdentityConfig, Tier, TierId, TierSource, TokenSource};
use crate::urlencoded;
use compact_str::CompactString;
use http::{HeaderMap, HeaderName, Uri};
use ipnet::IpNet;
use jwt::{TokenCheck, Verifier};
use std::net::IpAddr;

/// The customer behind one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub id: CompactString,
    pub tier: TierId,
    /// The id came from a valid token or from a trusted id header, not merely from a claim.
    pub verified: bool,
    /// Bit `i` set: the peer is trusted to send guarded header `i`
    /// ([`IdentityResolver::guarded`]).
    pub trusted: u64,
    /// How the request's token checked out, when tokens are configured.
    pub token: Option<TokenCheck>,
}

impl Identity {
    /// An identity for a request that failed before it could be identified.
    pub fn unknown(tier: TierId) -> Identity {
        Identity {
            id: "anon:unknown".into(),
            tier,
            verified: false,
            trusted: 0,
            token: None,
        }
    }
}

/// Guarded headers beyond this many are never trusted (and so always stripped).
const MAX_GUARDED: usize = 64;

pub struct IdentityResolver {
    config: IdentityConfig,
    /// Headers believed from some peers only, and from which: trusted id headers, then tier
    /// headers, in configuration order.
    guarded: Vec<HeaderName>,
    guarded_from: Vec<Vec<IpNet>>,
    tier_names: Vec<String>,
    jwt: Option<Verifier>,
}

impl IdentityResolver {
    pub fn new(config: &IdentityConfig, tiers: &[Tier]) -> Self {
        let mut guarded = Vec::new();
        let mut guarded_from = Vec::new();
        for s in &config.customer_id {
            if let IdSource::Header {
                name,
                trusted_from: Some(nets),
            } = s
            {
                guarded.push(name.clone());
                guarded_from.push(nets.clone());
            }
        }
        for s in &config.tier {
            if let TierSource::Header { name, trusted_from } = s {
                guarded.push(name.clone());
                guarded_from.push(trusted_from.clone());
            }
        }
        IdentityResolver {
            jwt: config.jwt.as_ref().map(Verifier::new),
            config: config.clone(),
            guarded,
            guarded_from,
            tier_names: tiers.iter().map(|t| t.name.clone()).collect(),
        }
    }

    /// Headers usher believes only from some peers: to be removed, lookalikes included, unless
    /// [`Identity::trusted`] says the peer may send them.
    pub fn guarded(&self) -> &[HeaderName] {
        &self.guarded
    }

    /// Who the customer behind this request is, at `now_ms` (Unix milliseconds; a token's
    /// expiry is judged by it).
    pub fn resolve(
        &self,
        uri: &Uri,
        headers: &HeaderMap,
        peer: Option<IpAddr>,
        now_ms: u64,
    ) -> Identity {
        let trusted = self
            .guarded_from
            .iter()
            .take(MAX_GUARDED)
            .enumerate()
            .filter(|(_, nets)| peer.is_some_and(|p| nets.iter().any(|n| n.contains(&p))))
            .fold(0u64, |m, (i, _)| m | (1 << i));
        let (claims, token) = match &self.jwt {
            None => (None, None),
            Some(v) => match token_of(headers, &v.config().source) {
                None => (None, Some(TokenCheck::Missing)),
                Some(t) => match v.check(t, now_ms / 1000) {
                    Ok(c) if self.usable_id(&c.customer) => (Some(c), Some(TokenCheck::Valid)),
                    Ok(_) => (None, Some(TokenCheck::Malformed)),
                    Err(e) => (None, Some(e)),
                },
            },
        };
        let (id, verified) = match &claims {
            Some(c) => (c.customer.clone(), true),
            None => self
                .id_from_sources(uri, headers, trusted)
                .unwrap_or_else(|| (anonymous(peer), false)),
        };

        let mut tier = claims
            .as_ref()
            .and_then(|c| c.tier.as_deref())
            .and_then(|t| self.tier_id(t));
        let first_tier_header = self.guarded.len() - self.tier_header_count();
        let mut header_at = first_tier_header;
        for source in &self.config.tier {
            match source {
                TierSource::Header { name, .. } => {
                    let bit = header_at;
                    header_at += 1;
                    let Some(value) = headers.get(name) else {
                        continue;
                    };
                    if bit >= MAX_GUARDED || trusted & (1 << bit) == 0 {
                        continue;
                    }
                    if tier.is_none() {
                        tier = value.to_str().ok().and_then(|v| self.tier_id(v.trim()));
                    }
                }
                TierSource::Table {
                    entries,
                    verified_only,
                    ..
                } => {
                    if tier.is_none() && (verified || !verified_only) {
                        tier = entries.get(id.as_str()).copied();
                    }
                }
            }
        }
        Identity {
            id,
            tier: tier.unwrap_or(self.config.default_tier),
            verified,
            trusted,
            token,
        }
    }

    fn tier_header_count(&self) -> usize {
        self.config
            .tier
            .iter()
            .filter(|s| matches!(s, TierSource::Header { .. }))
            .count()
    }

    fn tier_id(&self, name: &str) -> Option<TierId> {
        self.tier_names
            .iter()
            .position(|t| t == name)
            .map(|i| i as TierId)
    }

    /// The first usable id of the configured sources, and whether it is verified (a trusted id
    /// header from a peer trusted to send it).
    fn id_from_sources(
        &self,
        uri: &Uri,
        headers: &HeaderMap,
        trusted: u64,
    ) -> Option<(CompactString, bool)> {
        let mut guarded_at = 0;
        for source in &self.config.customer_id {
            let (raw, verified) = match source {
                IdSource::Header { name, trusted_from } => {
                    let trusted_source = trusted_from.is_some();
                    let bit = guarded_at;
                    if trusted_source {
                        guarded_at += 1;
                        if bit >= MAX_GUARDED || trusted & (1 << bit) == 0 {
                            continue;
                        }
                    }
                    let v = headers
                        .get(name)
                        .and_then(|v| v.to_str().ok())
                        .map(|v| CompactString::from(v.trim()));
                    (v, trusted_source)
                }
                IdSource::Cookie(name) => (cookie(headers, name).map(CompactString::from), false),
                IdSource::Query(name) => (
                    uri.query().and_then(|q| urlencoded::query_param(q, name)),
                    false,
                ),
            };
            if let Some(v) = raw.filter(|v| self.usable_id(v)) {
                return Some((v, verified));
            }
        }
        None
    }

    /// Ids become map keys and JSON output: bound their length and keep them printable.
    fn usable_id(&self, v: &str) -> bool {
        !v.is_empty()
            && v.len() <= self.config.max_id_len
            && v.bytes().all(|b| (0x21..=0x7e).contains(&b))
            && !v.starts_with("anon:")
            && !(self.config.reserve_pseudonyms && crate::privacy::Pseudonyms::looks_like(v))
    }
}

/// The token in the request, if any: `Authorization: Bearer <token>`, another header's value, or
/// a cookie's.
fn token_of<'a>(headers: &'a HeaderMap, source: &TokenSource) -> Option<&'a str> {
    match source {
        TokenSource::Header(name) => {
            let v = headers.get(name)?.to_str().ok()?.trim();
            if name == http::header::AUTHORIZATION {
                let (scheme, token) = v.split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
            } else {
                Some(v)
            }
        }
        TokenSource::Cookie(name) => cookie(headers, name),
    }
    .filter(|t| !t.is_empty())
}

fn anonymous(peer: Option<IpAddr>) -> CompactString {
    use std::fmt::Write;
    let mut s = CompactString::const_new("anon:");
    match peer {
        // Every request without an id comes here: dotted decimal by hand, as `Display` writes it,
        // without the formatting machinery (it was a tenth of usher's own work on such a request).
        Some(IpAddr::V4(v4)) => {
            let mut buf = [0u8; 15];
            let mut len = 0;
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    buf[len] = b'.';
                    len += 1;
                }
                let digits = [octet / 100, octet / 10 % 10, octet % 10].map(|d| b'0' + d);
                let skip = match octet {
                    0..=9 => 2,
                    10..=99 => 1,
                    _ => 0,
                };
                let digits = &digits[skip..];
                buf[len..len + digits.len()].copy_from_slice(digits);
                len += digits.len();
            }
            s.push_str(std::str::from_utf8(&buf[..len]).unwrap_or_default());
        }
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
        r.resolve(
            &uri.parse().unwrap(),
            &h,
            Some(peer.parse().unwrap()),
            NOW_MS,
        )
    }

    const NOW_MS: u64 = 1_800_000_000_000;
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
        assert_eq!((trusted.tier, trusted.trusted), (GOLD, 1));
        let v6 = resolve(&r, "/", &claim, "::1");
        assert_eq!(v6.tier, GOLD);
        let spoofed = resolve(&r, "/", &claim, "192.168.1.1");
        assert_eq!((spoofed.tier, spoofed.trusted), (STANDARD, 0));
        assert_eq!(r.guarded(), &[HeaderName::from_static("x-customer-tier")]);
        // A lookalike spelling is not the header, and is never read as the tier.
        let lookalike = [("x-customer-id", "joe"), ("x_customer_tier", "gold")];
        assert_eq!(resolve(&r, "/", &lookalike, "10.1.2.3").tier, STANDARD);
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
    fn an_anonymous_id_spells_the_address_as_display_does() {
        for ip in [
            "0.0.0.0",
            "1.2.3.4",
            "9.10.99.100",
            "127.0.0.1",
            "255.255.255.255",
            "10.200.3.45",
            "::1",
            "::ffff:1.2.3.4",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(anonymous(Some(ip)), format!("anon:{ip}"));
        }
        for n in [0u32, 7, 255, 256, 65_535, 16_777_216, u32::MAX, 0x0a00_0001] {
            let ip = IpAddr::V4(n.into());
            assert_eq!(anonymous(Some(ip)), format!("anon:{ip}"));
        }
    }

    #[test]
    fn no_peer_address_is_anonymous_unknown_and_untrusted() {
        let r = resolver("");
        let mut h = HeaderMap::new();
        h.insert("x-customer-tier", "gold".parse().unwrap());
        let i = r.resolve(&"/".parse().unwrap(), &h, None, NOW_MS);
        assert_eq!(i.id, "anon:unknown");
        assert_eq!((i.tier, i.trusted, i.verified), (STANDARD, 0, false));
    }

    mod tokens {
        use super::*;
        use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
        use serde_json::json;

        fn fixture(name: &str) -> Vec<u8> {
            std::fs::read(
                Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("tests/fixtures")
                    .join(name),
            )
            .unwrap()
        }

        use std::path::Path;

        /// A resolver that takes tokens checked with `jwt` (a TOML inline table), a table that
        /// gives "vip" gold for verified ids only, and an id header as the fallback.
        fn with_jwt(jwt: &str, dir: &Path) -> IdentityResolver {
            for f in ["jwt-rs256.pub", "jwt-es256.pub"] {
                std::fs::write(dir.join(f), fixture(f)).unwrap();
            }
            std::fs::write(dir.join("hs.secret"), "0123456789abcdef0123456789abcdef\n").unwrap();
            std::fs::write(dir.join("t.csv"), "vip,gold\n").unwrap();
            let text = format!(
                r#"
[identity]
customer_id = [{{ header = "x-customer-id" }}]
tier = [{{ table = "t.csv", verified_only = true }}]
jwt = {jwt}
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
            let cfg = Config::parse(&text, dir).unwrap_or_else(|e| panic!("{e}"));
            IdentityResolver::new(&cfg.identity, &cfg.tiers)
        }

        fn token(
            alg: Algorithm,
            key: &EncodingKey,
            kid: Option<&str>,
            claims: serde_json::Value,
        ) -> String {
            let mut h = Header::new(alg);
            h.kid = kid.map(str::to_string);
            encode(&h, &claims, key).unwrap()
        }

        const NOW_S: u64 = NOW_MS / 1000;

        fn ask(r: &IdentityResolver, headers: &[(&str, &str)]) -> Identity {
            resolve(r, "/", headers, "1.2.3.4")
        }

        #[test]
        fn rs256_tokens_are_checked_for_signature_time_issuer_and_audience() {
            let dir = tempfile::tempdir().unwrap();
            let r = with_jwt(
                r#"{ key_file = "jwt-rs256.pub", algorithm = "RS256", issuer = "https://id.shop.example", audience = "shop", tier_claim = "tier" }"#,
                dir.path(),
            );
            let key = EncodingKey::from_rsa_pem(&fixture("jwt-rs256.key")).unwrap();
            let other = EncodingKey::from_rsa_pem(&fixture("other-rs256.key")).unwrap();
            let claims = |exp: u64, iss: &str, aud: &str| json!({ "sub": "vip", "tier": "gold", "exp": exp, "iss": iss, "aud": aud });
            let good = token(
                Algorithm::RS256,
                &key,
                None,
                claims(NOW_S + 600, "https://id.shop.example", "shop"),
            );
            let bearer = |t: &str| format!("Bearer {t}");
            let i = ask(
                &r,
                &[
                    ("authorization", &bearer(&good)),
                    ("x-customer-id", "someone"),
                ],
            );
            assert_eq!(
                (i.id.as_str(), i.tier, i.verified, i.token),
                ("vip", GOLD, true, Some(TokenCheck::Valid))
            );
            // Again: from the cache of tokens that checked out, the same answer.
            assert_eq!(ask(&r, &[("authorization", &bearer(&good))]), i);

            let cases = [
                (
                    token(
                        Algorithm::RS256,
                        &key,
                        None,
                        claims(NOW_S - 600, "https://id.shop.example", "shop"),
                    ),
                    TokenCheck::Expired,
                ),
                (
                    token(
                        Algorithm::RS256,
                        &other,
                        None,
                        claims(NOW_S + 600, "https://id.shop.example", "shop"),
                    ),
                    TokenCheck::BadSignature,
                ),
                (
                    token(
                        Algorithm::RS256,
                        &key,
                        None,
                        claims(NOW_S + 600, "https://evil.example", "shop"),
                    ),
                    TokenCheck::WrongIssuer,
                ),
                (
                    token(
                        Algorithm::RS256,
                        &key,
                        None,
                        claims(NOW_S + 600, "https://id.shop.example", "other"),
                    ),
                    TokenCheck::WrongAudience,
                ),
                // An HMAC token keyed with the RSA public key: the classic confusion attack.
                (
                    token(
                        Algorithm::HS256,
                        &EncodingKey::from_secret(&fixture("jwt-rs256.pub")).unwrap(),
                        None,
                        claims(NOW_S + 600, "https://id.shop.example", "shop"),
                    ),
                    TokenCheck::Malformed,
                ),
                (
                    token(
                        Algorithm::RS256,
                        &key,
                        None,
                        json!({ "sub": "vip", "iss": "https://id.shop.example", "aud": "shop" }),
                    ),
                    TokenCheck::Malformed,
                ),
                ("not.a.token".to_string(), TokenCheck::Malformed),
            ];
            for (t, want) in cases {
                let i = ask(
                    &r,
                    &[("authorization", &bearer(&t)), ("x-customer-id", "vip")],
                );
                assert_eq!(i.token, Some(want), "{t}");
                // The header's "vip" is a claim, not a verified id: no gold from the table.
                assert_eq!(
                    (i.id.as_str(), i.tier, i.verified),
                    ("vip", STANDARD, false)
                );
            }
            let none = ask(&r, &[("x-customer-id", "vip")]);
            assert_eq!(
                (none.token, none.tier, none.verified),
                (Some(TokenCheck::Missing), STANDARD, false)
            );
            // Not yet valid.
            let early = token(
                Algorithm::RS256,
                &key,
                None,
                json!({ "sub": "vip", "exp": NOW_S + 9000, "nbf": NOW_S + 3000, "iss": "https://id.shop.example", "aud": "shop" }),
            );
            assert_eq!(
                ask(&r, &[("authorization", &bearer(&early))]).token,
                Some(TokenCheck::Early)
            );
        }

        #[test]
        fn es256_hs256_and_jwks_keys_and_a_cookie() {
            let dir = tempfile::tempdir().unwrap();
            let es = EncodingKey::from_ec_pem(&fixture("jwt-es256.pk8")).unwrap();
            let r = with_jwt(
                r#"{ key_file = "jwt-es256.pub", algorithm = "ES256", cookie = "session" }"#,
                dir.path(),
            );
            let t = token(
                Algorithm::ES256,
                &es,
                None,
                json!({ "sub": "ann", "exp": NOW_S + 60 }),
            );
            let i = ask(&r, &[("cookie", &format!("a=1; session={t}"))]);
            assert_eq!((i.id.as_str(), i.verified), ("ann", true));

            let hs = EncodingKey::from_secret(b"0123456789abcdef0123456789abcdef").unwrap();
            let r = with_jwt(
                r#"{ key_file = "hs.secret", algorithm = "HS256", header = "x-token", customer_claim = "cid" }"#,
                dir.path(),
            );
            let t = token(
                Algorithm::HS256,
                &hs,
                None,
                json!({ "cid": 42, "exp": NOW_S + 60 }),
            );
            let i = ask(&r, &[("x-token", &t)]);
            assert_eq!((i.id.as_str(), i.verified), ("42", true));

            // A JWKS: the token's kid chooses the key.
            let rs = EncodingKey::from_rsa_pem(&fixture("jwt-rs256.key")).unwrap();
            let mut a = jsonwebtoken::jwk::Jwk::from_encoding_key(&rs, Algorithm::RS256).unwrap();
            a.common.key_id = Some("a".into());
            let mut b = jsonwebtoken::jwk::Jwk::from_encoding_key(&es, Algorithm::ES256).unwrap();
            b.common.key_id = Some("b".into());
            let set = jsonwebtoken::jwk::JwkSet { keys: vec![a, b] };
            std::fs::write(
                dir.path().join("keys.json"),
                serde_json::to_vec(&set).unwrap(),
            )
            .unwrap();
            let r = with_jwt(r#"{ jwks_file = "keys.json" }"#, dir.path());
            for (alg, key, kid) in [(Algorithm::RS256, &rs, "a"), (Algorithm::ES256, &es, "b")] {
                let t = token(
                    alg,
                    key,
                    Some(kid),
                    json!({ "sub": kid, "exp": NOW_S + 60 }),
                );
                let i = ask(&r, &[("authorization", &format!("Bearer {t}"))]);
                assert_eq!((i.id.as_str(), i.verified), (kid, true));
            }
            let wrong_kid = token(
                Algorithm::RS256,
                &rs,
                Some("b"),
                json!({ "sub": "x", "exp": NOW_S + 60 }),
            );
            assert_eq!(
                ask(&r, &[("authorization", &format!("Bearer {wrong_kid}"))]).token,
                Some(TokenCheck::Malformed)
            );
        }

        #[test]
        fn a_trusted_id_header_is_verified_and_believed_only_from_its_peers() {
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(dir.path().join("t.csv"), "vip,gold\n").unwrap();
            let text = r#"
[identity]
customer_id = [{ header = "x-authenticated-id", trusted_from = ["10.0.0.0/8"] }, { header = "x-customer-id" }]
tier = [{ table = "t.csv", verified_only = true }]
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
"#;
            let cfg = Config::parse(text, dir.path()).unwrap();
            let r = IdentityResolver::new(&cfg.identity, &cfg.tiers);
            let h = [("x-authenticated-id", "vip"), ("x-customer-id", "someone")];
            let front = resolve(&r, "/", &h, "10.0.0.7");
            assert_eq!(
                (front.id.as_str(), front.tier, front.verified, front.trusted),
                ("vip", GOLD, true, 1)
            );
            let client = resolve(&r, "/", &h, "203.0.113.9");
            assert_eq!(
                (
                    client.id.as_str(),
                    client.tier,
                    client.verified,
                    client.trusted
                ),
                ("someone", STANDARD, false, 0)
            );
        }

        #[test]
        fn dangerous_token_and_trust_settings_are_refused_with_their_paths() {
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(dir.path().join("short.secret"), "tooshort").unwrap();
            std::fs::write(dir.path().join("not.pem"), "hello").unwrap();
            let base = "[[pools]]\nname = \"p\"\nupstreams = [\"127.0.0.1:1\"]\n[[routes]]\nname = \"r\"\npool = \"p\"\n";
            let bad = [
                (
                    r#"[identity]
jwt = { key_file = "short.secret", algorithm = "HS256" }"#,
                    "identity.jwt.key_file",
                ),
                (
                    r#"[identity]
jwt = { key_file = "not.pem", algorithm = "RS256" }"#,
                    "identity.jwt.key_file",
                ),
                (
                    r#"[identity]
jwt = { key_file = "not.pem", algorithm = "none" }"#,
                    "identity.jwt.algorithm",
                ),
                (
                    r#"[identity]
jwt = { key_file = "missing.pem", algorithm = "RS256" }"#,
                    "identity.jwt.key_file",
                ),
                (
                    r#"[identity]
jwt = { algorithm = "RS256" }"#,
                    "identity.jwt",
                ),
                (
                    r#"[identity]
tier = [{ header = "x-tier", trusted_from = ["0.0.0.0/0"] }]"#,
                    "identity.tier[0].trusted_from[0]",
                ),
                (
                    r#"[identity]
customer_id = [{ header = "x-id", trusted_from = ["::/0"] }]"#,
                    "identity.customer_id[0].trusted_from[0]",
                ),
            ];
            for (section, path) in bad {
                let errs = Config::parse(&format!("{section}\n{base}"), dir.path()).unwrap_err();
                assert!(errs.paths().contains(&path), "{section}: {errs}");
            }
            let confirmed = "[identity]\ntrust_any_peer = true\ntier = [{ header = \"x-tier\", trusted_from = [\"0.0.0.0/0\"] }]\n";
            assert!(Config::parse(&format!("{confirmed}{base}"), dir.path()).is_ok());
        }
    }
}
