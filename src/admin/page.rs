//! The live page: one HTML file, one stylesheet and one script, embedded in the binary (no build
//! step, no framework, no chart library). It holds no data, so it loads without a token; when a
//! data call is refused without one (`server.admin_tokens` is set) it asks for one, keeps it in
//! `sessionStorage`, and sends it as `Authorization: Bearer` with every data call (polling with `fetch`: `EventSource` cannot send that header). Everything it shows is set
//! with `textContent` or SVG attributes, never parsed as HTML: customer ids and paths come from
//! whoever sends requests. The service serves it under a strict Content-Security-Policy (scripts
//! and styles from the page's own address only, nothing inline).

use super::api::Reply;

const INDEX_HTML: &str = include_str!("ui/index.html");
const APP_JS: &str = include_str!("ui/app.js");
const APP_CSS: &str = include_str!("ui/app.css");

/// The page's content security policy: its own script and stylesheet, data from its own address,
/// and nothing else (no inline script or style, no frames, no forms posting elsewhere).
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The page's file at `path`, if it is one.
pub(crate) fn asset(path: &str) -> Option<Reply> {
    let (content_type, body) = match path {
        "/ui" | "/ui/" => ("text/html; charset=utf-8", INDEX_HTML),
        "/ui/app.js" => ("text/javascript; charset=utf-8", APP_JS),
        "/ui/app.css" => ("text/css; charset=utf-8", APP_CSS),
        _ => return None,
    };
    Some(Reply {
        status: 200,
        content_type,
        body: body.as_bytes().to_vec(),
        audit: None,
    })
}
