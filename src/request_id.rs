//! The request id: one name for one request in usher's access log, in the journey the admin API
//! shows, at the upstream and back at the client, so that a step of a customer's journey leads
//! to the application's own logs.
//!
//! An id the client (or a front in front of usher) sent is kept when it is a plausible id:
//! 1 to [`MAX_LEN`] visible ASCII characters. Anything else (empty, too long, spaces, control
//! characters) is replaced, so a client cannot push junk through to every log. A new id is the
//! trace id of a W3C `traceparent` the request carries, so the request id and the trace agree;
//! else 32 random hex digits, the same shape. `traceparent` itself is passed through untouched.
//!
//! A leaf module: it imports nothing of usher's.

use http::HeaderValue;

/// Longest id kept as sent.
pub const MAX_LEN: usize = 128;
/// The W3C trace context header, as a name made once (a `&str` key is parsed on every look-up).
pub const TRACEPARENT: http::HeaderName = http::HeaderName::from_static("traceparent");

/// The id for a request whose `header` value (the configured request-id header) and
/// `traceparent` are as given; `random` supplies 128 bits when a new one is needed. A header
/// value, made once: it is sent upstream, back to the client and logged as it is.
///
/// Marked sensitive, which HTTP/2's header compression reads as "never index": an id is new on
/// every request, so indexing it would only churn the connection's table (each id inserted,
/// evicting what the connection does send again) and cost the encoder a search and an insert.
pub fn of(
    header: Option<&HeaderValue>,
    traceparent: Option<&HeaderValue>,
    random: impl FnOnce() -> u128,
) -> HeaderValue {
    let mut id = made_or_kept(header, traceparent, random);
    id.set_sensitive(true);
    id
}

fn made_or_kept(
    header: Option<&HeaderValue>,
    traceparent: Option<&HeaderValue>,
    random: impl FnOnce() -> u128,
) -> HeaderValue {
    if let Some(v) = header.filter(|v| plausible(v.as_bytes())) {
        return v.clone();
    }
    let digits: [u8; 32] = match traceparent
        .and_then(|t| trace_id(t.as_bytes()))
        .and_then(|trace| trace.as_bytes().try_into().ok())
    {
        Some(trace) => trace,
        None => hex32(random()),
    };
    // One allocation whose clones (to the upstream, back to the client) only count references: a
    // vector-backed buffer would allocate again on its first clone to become shareable.
    let made = bytes::Bytes::from_owner(digits);
    // Hex digits are a header value; the buffer becomes the value's without a copy.
    HeaderValue::from_maybe_shared(made).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// `format!("{:032x}", v)` without the formatting machinery: on every request without an id, it
/// took about a tenth of usher's own work on a request. Also how a journey step spells a kept id
/// and how a pseudonym spells its HMAC (16 bytes as `u128::from_be_bytes`).
pub fn hex32(v: u128) -> [u8; 32] {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = DIGITS[((v >> (124 - 4 * i)) & 0xf) as usize];
    }
    out
}

fn plausible(v: &[u8]) -> bool {
    !v.is_empty() && v.len() <= MAX_LEN && v.iter().all(|b| b.is_ascii_graphic())
}

/// The trace id of a W3C `traceparent` (`00-<32 hex>-<16 hex>-<2 hex>`), unless it is the
/// all-zero invalid one.
fn trace_id(v: &[u8]) -> Option<&str> {
    let s = std::str::from_utf8(v).ok()?;
    let mut parts = s.trim().split('-');
    let (version, trace, parent, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    // Lower-case hex only, as the W3C spec writes it; version 00 has exactly four parts (later
    // versions may add more); neither id may be all zeros.
    let hex = |p: &str, n: usize| {
        p.len() == n
            && p.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    let nonzero = |p: &str| p.bytes().any(|b| b != b'0');
    (hex(version, 2)
        && version != "ff"
        && !(version == "00" && parts.next().is_some())
        && hex(trace, 32)
        && hex(parent, 16)
        && hex(flags, 2)
        && nonzero(trace)
        && nonzero(parent))
    .then_some(trace)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn of(
        header: Option<&[u8]>,
        traceparent: Option<&[u8]>,
        random: impl FnOnce() -> u128,
    ) -> String {
        let hv = |b: &[u8]| HeaderValue::from_bytes(b).expect("a value a header can hold");
        let (h, t) = (header.map(hv), traceparent.map(hv));
        super::of(h.as_ref(), t.as_ref(), random)
            .to_str()
            .unwrap()
            .to_string()
    }

    #[test]
    fn every_id_is_sent_never_indexed() {
        let kept = HeaderValue::from_static("abc-123");
        assert!(super::of(Some(&kept), None, || 0).is_sensitive());
        assert!(super::of(None, None, || 7).is_sensitive());
    }

    #[test]
    fn a_plausible_id_is_kept_anything_else_replaced() {
        assert_eq!(of(Some(b"abc-123"), None, || 0), "abc-123");
        let made = of(Some(b"has space"), None, || 0xabc);
        assert_eq!(made, "00000000000000000000000000000abc");
        assert_eq!(of(Some(&[b'a'; 129]), None, || 1).len(), 32);
        assert_eq!(of(Some(b""), None, || 1).len(), 32);
        assert_eq!(of(Some("ünicode".as_bytes()), None, || 1).len(), 32);
    }

    #[test]
    fn a_new_id_is_the_random_value_as_32_lower_case_hex_digits() {
        for v in [
            0,
            1,
            0xabc,
            u128::MAX,
            u128::MAX / 3,
            1 << 127,
            0x0123_4567_89ab_cdef,
        ] {
            assert_eq!(of(None, None, || v), format!("{v:032x}"));
        }
    }

    #[test]
    fn a_new_id_is_the_trace_id_of_a_valid_traceparent() {
        let tp = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(of(None, Some(tp), || 0), "4bf92f3577b34da6a3ce929d0e0e4736");
        let zero = b"00-00000000000000000000000000000000-00f067aa0ba902b7-01";
        assert_eq!(of(None, Some(zero), || 7), format!("{:032x}", 7));
        assert_eq!(of(None, Some(b"garbage"), || 7), format!("{:032x}", 7));
        assert_eq!(of(Some(b"mine"), Some(tp), || 0), "mine", "a sent id wins");
        for bad in [
            &b"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01"[..],
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-junk",
            b"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert_eq!(of(None, Some(bad), || 7), format!("{:032x}", 7), "{bad:?}");
        }
    }
}
