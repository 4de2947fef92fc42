//! Verified identity: a customer token (JWT) signed by the site's identity provider says who the
//! customer is, and perhaps their tier. Checked with `jsonwebtoken`: the signature against the
//! configured key (or the JWKS key its `kid` names), `exp` and `nbf` with the configured leeway,
//! `iss` and `aud` when configured. HS256, RS256 and ES256 only: `none` and every algorithm the
//! keys were not made for are refused (a token does not choose how it is checked).
//!
//! Checking a signature costs tens of microseconds, most of a request's budget, and a client sends
//! the same token with every request: a token that checked out is remembered, by its hash, until
//! it expires. Only valid tokens are remembered, so a flood of forged ones costs the forger, not
//! the cache; the cache is bounded and emptied when full.

use crate::config::JwtConfig;
use compact_str::CompactString;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::hash::BuildHasher;

/// Valid tokens remembered at once.
const CACHE_MAX: usize = 10_000;

/// How a request's token checked out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenCheck {
    Valid,
    /// No token in the request.
    Missing,
    Expired,
    /// Not yet valid (`nbf`).
    Early,
    BadSignature,
    WrongIssuer,
    WrongAudience,
    /// Not a JWT, an algorithm the keys do not allow, an unknown `kid`, or no customer claim.
    Malformed,
}

impl TokenCheck {
    pub const ALL: [TokenCheck; 8] = [
        TokenCheck::Valid,
        TokenCheck::Missing,
        TokenCheck::Expired,
        TokenCheck::Early,
        TokenCheck::BadSignature,
        TokenCheck::WrongIssuer,
        TokenCheck::WrongAudience,
        TokenCheck::Malformed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TokenCheck::Valid => "valid",
            TokenCheck::Missing => "missing",
            TokenCheck::Expired => "expired",
            TokenCheck::Early => "not_yet_valid",
            TokenCheck::BadSignature => "bad_signature",
            TokenCheck::WrongIssuer => "wrong_issuer",
            TokenCheck::WrongAudience => "wrong_audience",
            TokenCheck::Malformed => "malformed",
        }
    }
}

/// What a valid token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    pub customer: CompactString,
    /// The tier claim's value, if the configuration names one and the token has it.
    pub tier: Option<CompactString>,
    /// `exp`, Unix seconds.
    pub exp: u64,
}

pub struct Verifier {
    config: JwtConfig,
    validations: Vec<Validation>,
    cache: Mutex<HashMap<u64, Claims>>,
    hasher: foldhash::fast::RandomState,
}

impl Verifier {
    pub fn new(config: &JwtConfig) -> Self {
        let validations = config
            .keys
            .keys
            .iter()
            .map(|k| {
                let mut v = Validation::new(k.algorithm);
                // `exp` and `nbf` are judged here against the time passed in (see `verify`), so that
                // cached and fresh tokens see the same clock.
                v.validate_exp = false;
                v.validate_nbf = false;
                v.required_spec_claims.clear();
                if !config.issuers.is_empty() {
                    v.set_issuer(&config.issuers);
                    v.required_spec_claims.insert("iss".into());
                }
                if config.audiences.is_empty() {
                    v.validate_aud = false;
                } else {
                    v.set_audience(&config.audiences);
                    v.required_spec_claims.insert("aud".into());
                }
                v
            })
            .collect();
        Verifier {
            config: config.clone(),
            validations,
            cache: Mutex::new(HashMap::new()),
            hasher: foldhash::fast::RandomState::default(),
        }
    }

    pub fn config(&self) -> &JwtConfig {
        &self.config
    }

    /// Checks `token` at `now_s` (Unix seconds).
    pub fn check(&self, token: &str, now_s: u64) -> Result<Claims, TokenCheck> {
        let key = self.hasher.hash_one(token);
        if let Some(c) = self.cache.lock().get(&key) {
            // The signature checked out before; the clock may have moved past `exp` since.
            if c.exp.saturating_add(self.config.leeway.as_secs()) < now_s {
                return Err(TokenCheck::Expired);
            }
            return Ok(c.clone());
        }
        let claims = self.verify(token, now_s)?;
        let mut cache = self.cache.lock();
        if cache.len() >= CACHE_MAX {
            cache.clear();
        }
        cache.insert(key, claims.clone());
        Ok(claims)
    }

    fn verify(&self, token: &str, now_s: u64) -> Result<Claims, TokenCheck> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| TokenCheck::Malformed)?;
        let keys = &self.config.keys.keys;
        let at = keys
            .iter()
            .position(|k| {
                k.algorithm == header.alg
                    && match (&k.kid, &header.kid) {
                        (None, _) => true,
                        (Some(want), Some(got)) => want == got,
                        (Some(_), None) => keys.len() == 1,
                    }
            })
            .ok_or(TokenCheck::Malformed)?;
        let data = jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(
            token,
            &keys[at].key,
            &self.validations[at],
        )
        .map_err(|e| match e.kind() {
            ErrorKind::ExpiredSignature => TokenCheck::Expired,
            ErrorKind::ImmatureSignature => TokenCheck::Early,
            ErrorKind::InvalidSignature => TokenCheck::BadSignature,
            ErrorKind::InvalidIssuer => TokenCheck::WrongIssuer,
            ErrorKind::InvalidAudience => TokenCheck::WrongAudience,
            ErrorKind::MissingRequiredClaim(c) if c == "iss" => TokenCheck::WrongIssuer,
            ErrorKind::MissingRequiredClaim(c) if c == "aud" => TokenCheck::WrongAudience,
            _ => TokenCheck::Malformed,
        })?;
        debug_assert!(matches!(
            data.header.alg,
            Algorithm::HS256 | Algorithm::RS256 | Algorithm::ES256
        ));
        let text = |v: &serde_json::Value| match v {
            serde_json::Value::String(s) => Some(CompactString::from(s.as_str())),
            serde_json::Value::Number(n) => Some(CompactString::from(n.to_string())),
            _ => None,
        };
        let claims = &data.claims;
        let customer = claims
            .get(&self.config.customer_claim)
            .and_then(text)
            .ok_or(TokenCheck::Malformed)?;
        let tier = self
            .config
            .tier_claim
            .as_ref()
            .and_then(|c| claims.get(c))
            .and_then(text);
        let leeway = self.config.leeway.as_secs();
        // A token that never expires is a password in a header: refused.
        let exp = claims
            .get("exp")
            .and_then(|v| v.as_u64())
            .ok_or(TokenCheck::Malformed)?;
        if exp.saturating_add(leeway) < now_s {
            return Err(TokenCheck::Expired);
        }
        if let Some(nbf) = claims.get("nbf") {
            let nbf = nbf.as_u64().ok_or(TokenCheck::Malformed)?;
            if nbf > now_s.saturating_add(leeway) {
                return Err(TokenCheck::Early);
            }
        }
        Ok(Claims {
            customer,
            tier,
            exp,
        })
    }
}
