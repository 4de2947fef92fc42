//! `application/x-www-form-urlencoded` reading, as found in query strings: the one piece of parsing
//! that identity (customer id from a query parameter) and the admin API (ids in paths, `?worst=N`)
//! share.

use compact_str::CompactString;

/// The first value of parameter `name` in query string `query`, decoded. Malformed escapes make the
/// value unusable (`None`) rather than guessed at.
pub fn query_param(query: &str, name: &str) -> Option<CompactString> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then(|| decode(v)).flatten()
    })
}

/// Decodes `%XX` and `+` (a query value); `None` for malformed escapes or a result that is not
/// UTF-8.
pub fn decode(v: &str) -> Option<CompactString> {
    decode_with(v, true)
}

/// Decodes `%XX` only (a path segment: there `+` is a plus).
pub fn decode_path(v: &str) -> Option<CompactString> {
    decode_with(v, false)
}

fn decode_with(v: &str, plus_is_space: bool) -> Option<CompactString> {
    if !(v.contains('%') || plus_is_space && v.contains('+')) {
        return Some(CompactString::from(v));
    }
    let bytes = v.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes.get(i + 1..i + 3)?;
                // from_str_radix would take "+1" as a number: two hex digits or nothing.
                if !hex.iter().all(u8::is_ascii_hexdigit) {
                    return None;
                }
                out.push(u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?);
                i += 3;
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok().map(CompactString::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_and_decodes() {
        assert_eq!(
            query_param("a=1&cid=x%2Fy+z&b", "cid").as_deref(),
            Some("x/y z")
        );
        assert_eq!(query_param("a=1&b", "b").as_deref(), Some(""));
        assert_eq!(query_param("a=1", "cid"), None);
        assert_eq!(query_param("cid=%zz", "cid"), None);
        assert_eq!(query_param("cid=%4", "cid"), None);
        assert_eq!(decode("%C3%A9").as_deref(), Some("é"));
        assert_eq!(decode("%FF"), None);
        assert_eq!(decode("%+1"), None);
        assert_eq!(decode("%-1"), None);
        assert_eq!(decode_path("a+b").as_deref(), Some("a+b"));
        assert_eq!(decode_path("a%2Bb").as_deref(), Some("a+b"));
    }
}
