//! TLS on the proxy listeners: the certificates, which one a handshake gets, and swapping them on
//! a reload without touching a connection.
//!
//! The handshake itself is Pingora's (its `rustls` backend: no system OpenSSL to match, the same
//! library usher's webhooks and NATS already use). What is usher's is the choice of certificate:
//! each certificate serves the names it is configured for (or, by default, the DNS names in its
//! subject alternative names), exact names before wildcards (`*.shop.example` covers one label),
//! and a client that sends no server name, or one nobody serves, gets the default certificate.
//! The set is loaded whole by the configuration (so `usher check` finds a missing file, a key
//! that does not belong to its certificate, or an expired one, each with its path) and swapped
//! whole into the [`Resolver`] the listeners were built with: handshakes after a reload get the
//! new certificates, connections already open keep theirs.
//!
//! What this module deliberately isn't: an ACME client, OCSP stapling, or client-certificate
//! authentication of customers.

use arc_swap::ArcSwap;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// No certificate chain or key is this large: a larger file (or `/dev/zero`) is a mistake.
pub const MAX_PEM_BYTES: u64 = 1 << 20;

/// Reads a PEM file: a regular file (a pipe or a device would hang or never end), at most
/// [`MAX_PEM_BYTES`].
pub fn read_pem_file(path: &Path) -> std::io::Result<Vec<u8>> {
    use crate::files::ReadError;
    let bytes = crate::files::read_regular(path, MAX_PEM_BYTES).map_err(|e| match e {
        ReadError::Io(e) => e,
        ReadError::NotAFile => std::io::Error::other("not a regular file"),
        ReadError::TooLarge(_) => {
            std::io::Error::other(format!("larger than {} MiB", MAX_PEM_BYTES >> 20))
        }
    })?;
    Ok(bytes)
}

/// One certificate as the configuration names it.
#[derive(Debug, Clone, PartialEq)]
pub struct CertSpec {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Names it serves; empty: the DNS names in the certificate.
    pub names: Vec<String>,
    pub default: bool,
}

/// One loaded certificate: its chain and key, the names it serves, when it expires.
pub struct Loaded {
    pub key: Arc<CertifiedKey>,
    pub names: Vec<String>,
    pub cert: PathBuf,
    /// Seconds since the epoch.
    pub not_after: i64,
}

/// Every certificate of one configuration, and the default.
#[derive(Default)]
pub struct CertSet {
    certs: Vec<Loaded>,
    default: Option<usize>,
}

impl std::fmt::Debug for CertSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.certs.iter().map(|c| (&c.cert, &c.names)))
            .finish()
    }
}

impl PartialEq for CertSet {
    /// The same files serving the same names: what a reload compares.
    fn eq(&self, other: &Self) -> bool {
        self.certs.len() == other.certs.len()
            && self.default == other.default
            && self
                .certs
                .iter()
                .zip(&other.certs)
                .all(|(a, b)| a.cert == b.cert && a.names == b.names && a.key.cert == b.key.cert)
    }
}

impl CertSet {
    /// Loads `specs` (relative paths from `base`); every problem, with the index of the
    /// certificate it concerns and which field, at once.
    pub fn load(
        specs: &[CertSpec],
        base: &Path,
        now_secs: i64,
    ) -> Result<CertSet, Vec<(usize, &'static str, String)>> {
        let mut errs = Vec::new();
        let mut certs = Vec::new();
        for (i, s) in specs.iter().enumerate() {
            match load_one(s, base, now_secs) {
                Ok(c) => certs.push(c),
                Err((field, msg)) => errs.push((i, field, msg)),
            }
        }
        let defaults: Vec<usize> = specs
            .iter()
            .enumerate()
            .filter(|(_, s)| s.default)
            .map(|(i, _)| i)
            .collect();
        if defaults.len() > 1 {
            errs.push((
                defaults[1],
                "default",
                format!("certificates[{}] is already the default", defaults[0]),
            ));
        }
        if !errs.is_empty() {
            return Err(errs);
        }
        let default = defaults
            .first()
            .copied()
            .or((!certs.is_empty()).then_some(0));
        Ok(CertSet { certs, default })
    }

    pub fn is_empty(&self) -> bool {
        self.certs.is_empty()
    }

    pub fn certs(&self) -> &[Loaded] {
        &self.certs
    }

    /// The certificate for a handshake that asked for `server_name`.
    pub fn choose(&self, server_name: Option<&str>) -> Option<&Arc<CertifiedKey>> {
        let by_name = server_name.and_then(|sni| {
            let sni = sni.trim_end_matches('.').to_ascii_lowercase();
            self.find(|n| *n == sni)
                .or_else(|| self.find(|n| wildcard_covers(n, &sni)))
        });
        by_name
            .or_else(|| self.default.and_then(|d| self.certs.get(d)))
            .map(|c| &c.key)
    }

    fn find(&self, matches: impl Fn(&String) -> bool) -> Option<&Loaded> {
        self.certs.iter().find(|c| c.names.iter().any(&matches))
    }
}

/// `*.shop.example` covers `a.shop.example`, not `shop.example` nor `a.b.shop.example` (as
/// browsers read a certificate's wildcard).
fn wildcard_covers(pattern: &str, name: &str) -> bool {
    pattern
        .strip_prefix("*.")
        .and_then(|suffix| {
            let (label, rest) = name.split_once('.')?;
            Some(!label.is_empty() && rest == suffix)
        })
        .unwrap_or(false)
}

fn load_one(s: &CertSpec, base: &Path, now_secs: i64) -> Result<Loaded, (&'static str, String)> {
    let cert_path = base.join(&s.cert);
    let key_path = base.join(&s.key);
    let cert_pem = read_pem_file(&cert_path)
        .map_err(|e| ("cert", format!("cannot read {}: {e}", cert_path.display())))?;
    let key_pem = read_pem_file(&key_path)
        .map_err(|e| ("key", format!("cannot read {}: {e}", key_path.display())))?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .map(|c| c.map(|c| c.into_owned()))
        .collect::<Result<_, _>>()
        .map_err(|e| {
            (
                "cert",
                format!("{}: not PEM certificates: {e}", cert_path.display()),
            )
        })?;
    let Some(leaf) = chain.first() else {
        return Err((
            "cert",
            format!("{} holds no certificate", cert_path.display()),
        ));
    };
    let key_der = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
        let encrypted = String::from_utf8_lossy(&key_pem).contains("ENCRYPTED");
        (
            "key",
            if encrypted {
                format!("{} is an encrypted key; usher needs it unencrypted (readable only by usher's user)", key_path.display())
            } else {
                format!("{}: no private key read: {e}", key_path.display())
            },
        )
    })?;
    let signer = rustls::crypto::ring::sign::any_supported_type(&key_der).map_err(|e| {
        (
            "key",
            format!("{}: unsupported private key: {e}", key_path.display()),
        )
    })?;
    let (_, parsed) = x509_parser::parse_x509_certificate(leaf.as_ref())
        .map_err(|e| ("cert", format!("{}: {e}", cert_path.display())))?;
    let not_after = parsed.validity().not_after.timestamp();
    if not_after < now_secs {
        return Err((
            "cert",
            format!(
                "{} expired on {}",
                cert_path.display(),
                parsed.validity().not_after
            ),
        ));
    }
    let key = CertifiedKey::new(chain.clone(), signer);
    key.keys_match().map_err(|_| {
        (
            "key",
            format!(
                "{} is not the key of the certificate in {}",
                key_path.display(),
                cert_path.display()
            ),
        )
    })?;
    let in_cert: Vec<String> = parsed
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|g| match g {
                    x509_parser::extensions::GeneralName::DNSName(n) => {
                        Some(n.to_ascii_lowercase())
                    }
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    let names = if s.names.is_empty() {
        in_cert
    } else {
        let mut names = Vec::new();
        for n in &s.names {
            let n = n.trim_end_matches('.').to_ascii_lowercase();
            let covered = in_cert
                .iter()
                .any(|c| *c == n || (!n.starts_with("*.") && wildcard_covers(c, &n)));
            if !covered {
                return Err((
                    "names",
                    format!(
                        "{n} is not among the names of the certificate in {} ({})",
                        cert_path.display(),
                        if in_cert.is_empty() {
                            "it names none".to_string()
                        } else {
                            in_cert.join(", ")
                        }
                    ),
                ));
            }
            names.push(n);
        }
        names
    };
    Ok(Loaded {
        key: Arc::new(key),
        names,
        cert: cert_path,
        not_after,
    })
}

/// What the TLS listeners ask for a certificate: built once with the listeners, given each
/// configuration's [`CertSet`] as it comes into force.
#[derive(Default)]
pub struct Resolver {
    set: ArcSwap<CertSet>,
}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resolver")
            .field("set", &*self.set.load())
            .finish()
    }
}

impl Resolver {
    pub fn set(&self, certs: Arc<CertSet>) {
        self.set.store(certs);
    }
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.set.load().choose(hello.server_name()).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_cover_one_label() {
        assert!(wildcard_covers("*.shop.example", "a.shop.example"));
        assert!(!wildcard_covers("*.shop.example", "shop.example"));
        assert!(!wildcard_covers("*.shop.example", "a.b.shop.example"));
        assert!(!wildcard_covers("*.shop.example", ".shop.example"));
        assert!(!wildcard_covers("shop.example", "shop.example"));
    }
}
