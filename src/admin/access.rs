//! Who may use the admin API. With tokens configured (`server.admin_tokens`), every endpoint but
//! `/healthz` and the live page's files needs `Authorization: Bearer <token>`: a viewer token
//! reads, an operator token also reloads and erases. Without tokens the admin API serves loopback callers only (and `usher check` refuses an
//! address other machines can reach). Tokens are kept as SHA-256 digests and compared in constant
//! time (`subtle`), every token each time, so an answer's timing says nothing about how close a
//! guess was. A refused caller is logged once per address per minute, however often it tries.

use crate::config::{AdminToken, Role};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::net::IpAddr;
use subtle::ConstantTimeEq;

/// The role the `Authorization` header's bearer token carries, if it is one of `tokens`.
pub fn role_of(tokens: &[AdminToken], authorization: Option<&str>) -> Option<Role> {
    token_of(tokens, authorization).map(|t| t.role)
}

/// The configured token the `Authorization` header's bearer token is (the highest role, if it
/// is listed twice).
pub fn token_of<'t>(
    tokens: &'t [AdminToken],
    authorization: Option<&str>,
) -> Option<&'t AdminToken> {
    use sha2::Digest;
    let (scheme, token) = authorization?.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let digest: [u8; 32] = sha2::Sha256::digest(token.trim().as_bytes()).into();
    let mut found: Option<&AdminToken> = None;
    for t in tokens {
        if bool::from(t.sha256.ct_eq(&digest)) && found.is_none_or(|f| f.role < t.role) {
            found = Some(t);
        }
    }
    found
}

/// Refused attempts logged at most once per source per this long.
const LOG_EVERY_MS: u64 = 60_000;
/// Sources remembered for that; beyond it the table starts over.
const SOURCES_MAX: usize = 10_000;

/// Logs refused attempts, once per source per minute.
#[derive(Default)]
pub struct Refusals {
    last: Mutex<HashMap<IpAddr, u64>>,
}

impl Refusals {
    /// Whether a refusal of `source` at `now_ms` should be logged.
    pub fn should_log(&self, source: IpAddr, now_ms: u64) -> bool {
        let mut last = self.last.lock();
        if let Some(t) = last.get(&source) {
            if now_ms.saturating_sub(*t) < LOG_EVERY_MS {
                return false;
            }
        }
        if last.len() >= SOURCES_MAX {
            last.clear();
        }
        last.insert(source, now_ms);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::Digest;

    fn token(role: Role, t: &str) -> AdminToken {
        AdminToken {
            role,
            sha256: sha2::Sha256::digest(t.as_bytes()).into(),
            name: None,
        }
    }

    #[test]
    fn bearer_tokens_carry_their_role_and_nothing_else_does() {
        let tokens = [
            token(Role::Viewer, "viewer-token-0123456789abcdef"),
            token(Role::Operator, "operator-token-0123456789abcdef"),
        ];
        assert_eq!(
            role_of(&tokens, Some("Bearer viewer-token-0123456789abcdef")),
            Some(Role::Viewer)
        );
        assert_eq!(
            role_of(&tokens, Some("bearer operator-token-0123456789abcdef")),
            Some(Role::Operator)
        );
        assert_eq!(
            role_of(&tokens, Some("Bearer viewer-token-0123456789abcdeX")),
            None
        );
        assert_eq!(
            role_of(&tokens, Some("Basic viewer-token-0123456789abcdef")),
            None
        );
        assert_eq!(
            role_of(&tokens, Some("viewer-token-0123456789abcdef")),
            None
        );
        assert_eq!(role_of(&tokens, None), None);
        assert_eq!(
            role_of(&[], Some("Bearer anything-at-all-000000000000")),
            None
        );
    }

    #[test]
    fn refusals_are_logged_once_per_source_per_minute() {
        let r = Refusals::default();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        assert!(r.should_log(a, 0));
        assert!(!r.should_log(a, 59_999));
        assert!(r.should_log(b, 1));
        assert!(r.should_log(a, 60_000));
    }
}
