//! For the unit tests of the modules built on the engine (admin API, snapshot, events): one whole
//! request through [`Usher`] without a socket, as the proxy hooks would drive it.

use super::{Exchange, Finish, RequestHead, Usher};
use crate::ids::UpstreamId;
use http::{HeaderMap, Method, Uri};
use rand::SeedableRng;
use std::time::{Duration, Instant};

/// One request of `who` (claiming `tier`, when given, through `x-customer-tier`) from 127.0.0.1:
/// admitted at wall time `now_ms`, sent to the upstream usher chooses at `at`, answered `status`
/// `latency` later. The upstream it went to, if any.
#[allow(clippy::too_many_arguments)]
pub(crate) fn request(
    u: &Usher,
    method: &Method,
    path: &str,
    who: &str,
    tier: Option<&str>,
    status: u16,
    latency: Duration,
    now_ms: u64,
    at: Instant,
) -> Option<UpstreamId> {
    let mut h = HeaderMap::new();
    h.insert("x-customer-id", who.parse().unwrap());
    h.insert("host", "shop.example".parse().unwrap());
    if let Some(t) = tier {
        h.insert("x-customer-tier", t.parse().unwrap());
    }
    let uri: Uri = path.parse().unwrap();
    let mut ex = Exchange::new();
    u.begin(
        &mut ex,
        &RequestHead {
            version: http::Version::HTTP_11,
            method,
            uri: &uri,
            headers: &h,
            peer: Some("127.0.0.1".parse().unwrap()),
        },
        now_ms,
    );
    let up = u.choose_upstream(&mut ex, at, &mut rand::rngs::SmallRng::seed_from_u64(3));
    u.response_head(&mut ex, status, at + latency);
    u.finish(
        &mut ex,
        &Finish {
            method,
            path,
            status,
            failure: None,
            bytes_in: 0,
            bytes_out: 0,
            now: at + latency,
            now_ms,
        },
    );
    up
}
