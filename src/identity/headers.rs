//! Which request headers must not reach the application: anything that reads as one of usher's
//! own (`x-usher-*`, the bare prefix included) or as a header usher believes only from some peers
//! (a tier header, a trusted id header), once case is folded and `_` is read as `-`. A WSGI or CGI
//! application reads `x_customer_tier` exactly as `x-customer-tier`, so a lookalike is the same
//! claim. The one exception is the trusted header itself, spelled as configured, from a peer that
//! was trusted to send it. Comparing byte by byte, with no allocation for a request that needs
//! nothing removed.

use http::{HeaderMap, HeaderName};

/// Prefix of headers that only usher may set toward the upstream.
pub const RESERVED_PREFIX: &str = "x-usher-";
/// The ushers a request has passed, by instance id, comma-separated: how a loop is caught.
pub const HOP_HEADER: &str = "x-usher-hop";
/// The same as a header name, for look-ups on the request path: a `&str` key is parsed and
/// checked on every look-up.
const HOP: HeaderName = HeaderName::from_static(HOP_HEADER);
/// A request that has passed this many ushers is looping, whatever the ids say.
pub const MAX_HOPS: usize = 8;

/// The instance ids in a request's hop header (only what looks like one: 16 hex digits).
pub fn hops(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(HOP)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|h| h.len() == 16 && h.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// One byte as a header name compares: lower case, `_` as `-`.
fn fold(b: u8) -> u8 {
    match b {
        b'_' => b'-',
        b => b.to_ascii_lowercase(),
    }
}

/// Whether `name` reads as `configured` (already lower case).
pub fn same_name(name: &str, configured: &str) -> bool {
    name.len() == configured.len()
        && name
            .bytes()
            .zip(configured.bytes())
            .all(|(a, b)| fold(a) == fold(b))
}

/// Whether `name` reads as one of usher's own headers.
pub fn reserved(name: &str) -> bool {
    name.len() >= RESERVED_PREFIX.len()
        && same_name(&name[..RESERVED_PREFIX.len()], RESERVED_PREFIX)
}

/// The headers of `headers` to remove. `guarded[i]` is a header usher trusts from some peers, and
/// `trusted & (1 << i)` says this request's peer was one of them.
pub fn to_strip(headers: &HeaderMap, guarded: &[HeaderName], trusted: u64) -> Vec<HeaderName> {
    let mut out = Vec::new();
    for name in headers.keys() {
        let n = name.as_str();
        let strip = reserved(n)
            || guarded
                .iter()
                .enumerate()
                .any(|(i, g)| same_name(n, g.as_str()) && !(name == g && trusted & (1 << i) != 0));
        if strip && !out.contains(name) {
            out.push(name.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(names: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for n in names {
            h.append(
                HeaderName::from_bytes(n.as_bytes()).unwrap(),
                "v".parse().unwrap(),
            );
        }
        h
    }

    #[test]
    fn lookalikes_of_trusted_and_reserved_headers_are_stripped() {
        let tier = HeaderName::from_static("x-customer-tier");
        let h = headers(&[
            "x-customer-tier",
            "x_customer_tier",
            "X_Customer-Tier",
            "x-usher-experience",
            "x_usher_experience",
            "x-usher-",
            "x_usher_",
            "x-usher",
            "x-customer-tiers",
            "accept",
        ]);
        let names =
            |v: Vec<HeaderName>| v.iter().map(|n| n.as_str().to_string()).collect::<Vec<_>>();
        // From a trusted peer the configured spelling stays; every lookalike goes.
        assert_eq!(
            names(to_strip(&h, std::slice::from_ref(&tier), 1)),
            [
                "x_customer_tier",
                "x_customer-tier",
                "x-usher-experience",
                "x_usher_experience",
                "x-usher-",
                "x_usher_"
            ]
        );
        // From anyone else the configured spelling goes too.
        let untrusted = names(to_strip(&h, std::slice::from_ref(&tier), 0));
        assert_eq!(untrusted[0], "x-customer-tier");
        assert_eq!(untrusted.len(), 7);
        assert!(to_strip(&headers(&["accept", "x-usher"]), &[tier], 0).is_empty());
    }
}
