//! What usher shows of a person outside its own memory: the customer id as events, the access log
//! and the process log carry it. With a key (`privacy.pseudonym_key_file`) that is a keyed
//! pseudonym, `p_` and 32 hex digits of HMAC-SHA-256(key, id): stable, so that a helpdesk ticket,
//! a log line and the live page agree on who it is, and not reversible without the key.
//!
//! Deliberately not here: the admin API and the snapshot keep the real id (the page's lookup is
//! for people allowed to know whom they are helping, and a restart must find the customer again),
//! and the pseudonym is not encryption: anyone with the key and a candidate id can check it.

use ring::hmac;
use std::borrow::Cow;

/// Marks a pseudonym, so it can be told from an id at a glance and in a lookup.
pub const PREFIX: &str = "p_";
/// Bytes of the HMAC kept: 128 bits, as a UUID, no collision in any realistic customer base.
const KEPT: usize = 16;

#[derive(Clone)]
pub struct Pseudonyms {
    key: Option<hmac::Key>,
}

impl std::fmt::Debug for Pseudonyms {
    // Never the key, whatever debug output it ends up in.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.key {
            Some(_) => f.write_str("Pseudonyms(keyed)"),
            None => f.write_str("Pseudonyms(off)"),
        }
    }
}

impl PartialEq for Pseudonyms {
    fn eq(&self, other: &Self) -> bool {
        let probe = "usher:key-check";
        self.key.is_some() == other.key.is_some() && self.of(probe) == other.of(probe)
    }
}

impl Pseudonyms {
    pub fn off() -> Self {
        Pseudonyms { key: None }
    }

    pub fn keyed(key: &[u8]) -> Self {
        Pseudonyms {
            key: Some(hmac::Key::new(hmac::HMAC_SHA256, key)),
        }
    }

    pub fn is_on(&self) -> bool {
        self.key.is_some()
    }

    /// What the world outside usher sees of customer `id`: its pseudonym, or `id` itself when
    /// pseudonyms are off.
    pub fn of<'a>(&self, id: &'a str) -> Cow<'a, str> {
        let Some(key) = &self.key else {
            return Cow::Borrowed(id);
        };
        let tag = hmac::sign(key, id.as_bytes());
        let mut kept = [0u8; KEPT];
        kept.copy_from_slice(&tag.as_ref()[..KEPT]);
        let hex = crate::request_id::hex32(u128::from_be_bytes(kept));
        let mut out = String::with_capacity(PREFIX.len() + hex.len());
        out.push_str(PREFIX);
        out.push_str(std::str::from_utf8(&hex).unwrap_or_default());
        Cow::Owned(out)
    }

    /// Whether `text` has a pseudonym's shape (it may still be an id someone chose).
    pub fn looks_like(text: &str) -> bool {
        text.len() == PREFIX.len() + 2 * KEPT
            && text.starts_with(PREFIX)
            && text[PREFIX.len()..]
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pseudonym_is_stable_keyed_and_shaped() {
        let a = Pseudonyms::keyed(b"0123456789abcdef0123456789abcdef");
        let b = Pseudonyms::keyed(b"another key, another pseudonym!!");
        let p = a.of("alice@example.com");
        assert_eq!(p, a.of("alice@example.com"));
        assert_ne!(p, b.of("alice@example.com"));
        assert_ne!(p, a.of("alice@example.org"));
        assert!(Pseudonyms::looks_like(&p), "{p}");
        assert!(!p.contains("alice"));
        assert_eq!(Pseudonyms::off().of("alice"), "alice");
        assert!(!Pseudonyms::looks_like("alice"));
        assert_eq!(format!("{a:?}"), "Pseudonyms(keyed)");
        assert_ne!(a, b);
        assert_eq!(a, Pseudonyms::keyed(b"0123456789abcdef0123456789abcdef"));
    }

    #[test]
    fn the_pseudonym_is_hmac_sha256_as_documented() {
        // RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?".
        let p = Pseudonyms::keyed(b"Jefe").of("what do ya want for nothing?");
        assert_eq!(p, "p_5bdcc146bf60754e6a042426089575c7");
    }
}
