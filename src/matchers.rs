//! Path matching shared by routes (a segment-aware prefix) and funnel steps (a pattern with
//! wildcards). A leaf module: configuration compiles patterns with it, routing and funnels match
//! with it, and it imports nothing of usher's. No regexes: operators read these at 3 a.m.

/// A path with wildcards: `*` is any one segment, a final `**` any rest (none included).
/// `/products/*` matches `/products/42`; `/account/**` matches `/account` and `/account/a/b`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathPattern {
    segments: Vec<String>,
    rest: bool,
}

impl PathPattern {
    /// `None` when the pattern does not start with '/' or uses `**` other than at the end.
    pub fn parse(p: &str) -> Option<PathPattern> {
        let body = p.strip_prefix('/')?;
        let mut segments: Vec<String> = if body.is_empty() {
            Vec::new()
        } else {
            body.split('/').map(str::to_string).collect()
        };
        let rest = segments.last().is_some_and(|s| s == "**");
        if rest {
            segments.pop();
        }
        if segments.iter().any(|s| s.contains("**")) {
            return None;
        }
        Some(PathPattern { segments, rest })
    }

    pub fn matches(&self, path: &str) -> bool {
        let body = path.strip_prefix('/').unwrap_or(path);
        // "/" has no segments at all, not one empty one.
        let mut parts = (!body.is_empty())
            .then(|| body.split('/'))
            .into_iter()
            .flatten();
        for seg in &self.segments {
            match parts.next() {
                Some(part) if seg == "*" || seg == part => {}
                _ => return false,
            }
        }
        self.rest || parts.next().is_none()
    }
}

/// Segment-aware prefix test.
pub fn path_has_prefix(path: &str, prefix: &str) -> bool {
    match path.strip_prefix(prefix) {
        None => false,
        Some(rest) => rest.is_empty() || prefix.ends_with('/') || rest.starts_with('/'),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_prefix_matches_whole_segments() {
        assert!(path_has_prefix("/checkout", "/checkout"));
        assert!(path_has_prefix("/checkout/pay", "/checkout"));
        assert!(!path_has_prefix("/checkouts", "/checkout"));
        assert!(path_has_prefix("/static/app.js", "/static/"));
        assert!(path_has_prefix("/anything", "/"));
        assert!(!path_has_prefix("/chec", "/checkout"));
    }

    #[test]
    fn path_patterns() {
        let p = |s: &str| PathPattern::parse(s).unwrap();
        assert!(p("/cart").matches("/cart"));
        assert!(!p("/cart").matches("/cart/x"));
        assert!(!p("/cart").matches("/carts"));
        assert!(p("/products/*").matches("/products/42"));
        assert!(!p("/products/*").matches("/products"));
        assert!(!p("/products/*").matches("/products/42/reviews"));
        assert!(p("/account/**").matches("/account"));
        assert!(p("/account/**").matches("/account/open/confirm"));
        assert!(p("/").matches("/"));
        assert!(!p("/").matches("/x"));
        assert!(p("/**").matches("/anything/at/all"));
        assert!(PathPattern::parse("cart").is_none());
        assert!(PathPattern::parse("/a/**/b").is_none());
    }
}
