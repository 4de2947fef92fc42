//! What usher learned, written to disk when it stops and read back when it starts, so that a
//! restart (or a graceful upgrade) keeps every customer's score and journey, funnels in progress
//! (a pending abandonment is still reported), cooldowns, objective windows and upstream ejections.
//!
//! Streamed both ways: the store is written one shard at a time (each shard encoded under its lock,
//! written after it), never copied whole, and read record by record. The file is bounded by
//! `experience.track_max` customers. Ids in the file (routes, tiers, funnels and upstream
//! addresses of journey steps) are the writing process's interned ids, so the names tables go first
//! and every id is mapped to this process's on the way in: a step names its route even if this
//! configuration has no such route. Loading merges into what is already known (see
//! `CustomerStore::restore`), so the same code serves a fresh start and an upgrade's hand-over.
//!
//! What it is not: a journal. What happens between the last snapshot and a `kill -9` is lost.

mod frame;

pub use frame::FrameError;

use crate::engine::Usher;
use crate::events::funnels::Progress;
use crate::events::EventType;
use crate::experience::{CustomerRecord, Score, Step};
use crate::upstream::HealthRecord;
use compact_str::CompactString;
use frame::{FrameReader, FrameWriter};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The snapshot's name in `state.dir`.
pub const FILE: &str = "usher.snapshot";

const HEADER: u8 = 1;
const NAMES: u8 = 2;
const CUSTOMER: u8 = 3;
const FUNNEL: u8 = 4;
const COOLDOWN: u8 = 5;
const ROUTE: u8 = 6;
const UPSTREAM: u8 = 7;

#[derive(Serialize, Deserialize)]
struct Header {
    written_ms: u64,
    pid: u32,
    usher: String,
}

#[derive(Serialize, Deserialize)]
struct Names {
    routes: Vec<String>,
    tiers: Vec<String>,
    funnels: Vec<String>,
    addrs: Vec<String>,
}

#[derive(Serialize, Deserialize)]
struct Customer {
    id: CompactString,
    tier: u8,
    good: f32,
    weight: f32,
    at_ms: u64,
    first_seen_ms: u64,
    requests: u32,
    errors: u32,
    frustrated: u32,
    rescued_until_s: u32,
    degraded: bool,
    /// Journey steps, oldest first, `journey::STEP_BYTES` each (48 in format 1).
    #[serde(with = "serde_bytes")]
    steps: Vec<u8>,
}

#[derive(Serialize, Deserialize)]
struct Funnel {
    funnel: u16,
    customer: CompactString,
    furthest: u8,
    tier: u8,
    entered_ms: u64,
    last_ms: u64,
    errors: u16,
    frustrated: u16,
    verified: bool,
}

#[derive(Serialize, Deserialize)]
struct Cooldown {
    kind: EventType,
    subject: CompactString,
    at_ms: u64,
}

#[derive(Serialize, Deserialize)]
struct Route {
    name: String,
    /// (minute, good, total)
    slo: Vec<(u64, u32, u32)>,
    alerted: [u64; 2],
}

#[derive(Serialize, Deserialize)]
struct Upstream {
    addr: String,
    health: HealthRecord,
}

/// What [`write`] wrote.
#[derive(Debug, Clone)]
pub struct Written {
    pub path: PathBuf,
    pub customers: u64,
    pub bytes: u64,
    pub took: Duration,
}

/// What [`load`] read.
#[derive(Debug, Clone, Default)]
pub struct Loaded {
    pub customers: u64,
    pub funnels: u64,
    pub cooldowns: u64,
    pub routes: u64,
    pub upstreams: u64,
    /// Unix milliseconds when it was written, and by which process.
    pub written_ms: u64,
    pub pid: u32,
    pub took: Duration,
}

/// What became of the snapshot on disk after an erasure.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AfterErasure {
    /// Written again without the person.
    Rewritten,
    /// There is none: nothing to take them out of.
    NoneOnDisk,
    /// Another process owns the state folder (an upgrade in progress); its snapshot is its own.
    NotOurs,
    /// It could not be written; the old one, which still holds them, is removed instead.
    Removed(String),
    /// It could not be written and the old one stays (after retention: tried again later).
    Kept(String),
}

/// After an erasure the snapshot on disk still holds the person until it is next written, and a
/// crash before then would bring them back at the next start: so it is written again at once
/// (seconds at a million customers; the admin API calls this off the runtime). When that fails,
/// the old file goes: losing what was learned is better than keeping someone who asked to go.
pub fn rewrite_after_erasure(usher: &Usher) -> AfterErasure {
    rewrite(usher, "an erasure", true)
}

/// After retention forgot customers, the snapshot on disk still holds them until it is next
/// written, which may be weeks away: it is written again at the first summary after, then at
/// most every [`RETENTION_REWRITE_EVERY`] while more are forgotten. The hour is claimed before
/// writing, so a rewrite that fails (a full disk) is tried again an hour later, not at every
/// summary, and two never run at once; a failed one keeps the old file (what it holds is old,
/// not asked to be erased). While another process owns the state folder (an upgrade) nothing is
/// written and the question waits. `None` when nothing was due.
pub fn rewrite_after_retention(usher: &Usher, now_ms: u64) -> Option<AfterErasure> {
    use std::sync::atomic::Ordering;
    let st = usher.state();
    if !st.retention_forgot.load(Ordering::Acquire) || !st.owns_state_dir() {
        return None;
    }
    let last = st.retention_rewritten_ms.load(Ordering::Acquire);
    let every = RETENTION_REWRITE_EVERY.as_millis() as u64;
    if last != 0 && now_ms < last.saturating_add(every) {
        return None;
    }
    st.retention_rewritten_ms
        .compare_exchange(last, now_ms, Ordering::AcqRel, Ordering::Acquire)
        .ok()?;
    st.retention_forgot.store(false, Ordering::Release);
    let done = rewrite(usher, "retention", false);
    if matches!(done, AfterErasure::Kept(_)) {
        st.retention_forgot.store(true, Ordering::Release);
    }
    Some(done)
}

/// How often at most the snapshot is written again for customers retention forgot: a rewrite
/// takes seconds at a million customers, and retention is counted in days.
pub const RETENTION_REWRITE_EVERY: Duration = Duration::from_secs(3600);

fn rewrite(usher: &Usher, after: &str, remove_on_failure: bool) -> AfterErasure {
    let path = path_of(usher);
    let _one = WRITING.lock();
    if !path.exists() {
        return AfterErasure::NoneOnDisk;
    }
    if !usher.state().owns_state_dir() {
        return AfterErasure::NotOurs;
    }
    match write_locked(usher, &path) {
        Ok(_) => {
            usher.state().metrics.snapshot("write", "success");
            AfterErasure::Rewritten
        }
        Err(e) if remove_on_failure => {
            usher.state().metrics.snapshot("write", "failure");
            let removed = std::fs::remove_file(&path);
            tracing::error!(path = %path.display(), "cannot rewrite the state snapshot after {after} ({e}); removed it: {removed:?}");
            AfterErasure::Removed(e.to_string())
        }
        Err(e) => {
            usher.state().metrics.snapshot("write", "failure");
            tracing::error!(path = %path.display(), "cannot rewrite the state snapshot after {after} ({e}); kept it, to try again");
            AfterErasure::Kept(e.to_string())
        }
    }
}

/// Where the configuration in force keeps its snapshot.
pub fn path_of(usher: &Usher) -> PathBuf {
    usher.generation().config.state.dir.join(FILE)
}

/// Writes everything worth keeping to `path` (atomically: a crash leaves the previous file).
/// Blocking, and seconds at a million customers: run it off the request path.
/// One writer at a time: an erasure's rewrite and the shutdown's write share the temporary file,
/// and an erasure must not find "no snapshot" while one is being written.
static WRITING: parking_lot::Mutex<()> = parking_lot::Mutex::new(());

pub fn write(usher: &Usher, path: &Path) -> std::io::Result<Written> {
    let _one = WRITING.lock();
    write_locked(usher, path)
}

fn write_locked(usher: &Usher, path: &Path) -> std::io::Result<Written> {
    let started = Instant::now();
    let st = usher.state();
    let g = usher.generation();
    let mut w = FrameWriter::create(path)?;
    w.write(
        HEADER,
        &Header {
            written_ms: crate::time::wall_ms(),
            pid: std::process::id(),
            usher: env!("CARGO_PKG_VERSION").to_string(),
        },
    )?;
    let strings = |v: Vec<Arc<str>>| v.iter().map(|s| s.to_string()).collect();
    w.write(
        NAMES,
        &Names {
            routes: strings(st.route_names.all()),
            tiers: strings(st.tier_names.all()),
            funnels: strings(st.funnel_names.all()),
            addrs: st
                .upstreams
                .addrs()
                .all()
                .iter()
                .map(|a| a.to_string())
                .collect(),
        },
    )?;
    let mut customers = 0u64;
    let mut buf = Vec::new();
    for shard in 0..st.store.shards() {
        buf.clear();
        let mut n = 0u64;
        let mut failed = None;
        st.store.for_each_in_shard(shard, |c| {
            let (good, weight, at_ms) = c.score.parts();
            let rec = Customer {
                id: c.id,
                tier: c.tier,
                good,
                weight,
                at_ms,
                first_seen_ms: c.first_seen_ms,
                requests: c.requests,
                errors: c.errors,
                frustrated: c.frustrated,
                rescued_until_s: c.rescued_until_s,
                degraded: c.degraded,
                steps: c.journey.iter().flat_map(|s| s.to_bytes()).collect(),
            };
            match FrameWriter::encode(&mut buf, CUSTOMER, &rec) {
                Ok(()) => n += 1,
                Err(e) => failed = Some(e),
            }
        });
        if let Some(e) = failed {
            return Err(e);
        }
        w.write_encoded(&buf, n)?;
        customers += n;
    }
    for (funnel, customer, p) in st.events.funnels.entries() {
        w.write(
            FUNNEL,
            &Funnel {
                funnel,
                customer,
                furthest: p.furthest,
                tier: p.tier,
                entered_ms: p.entered_ms,
                last_ms: p.last_ms,
                errors: p.errors,
                frustrated: p.frustrated,
                verified: p.verified,
            },
        )?;
    }
    for (kind, subject, at_ms) in st.events.cooldown().entries() {
        w.write(
            COOLDOWN,
            &Cooldown {
                kind,
                subject,
                at_ms,
            },
        )?;
    }
    for (r, rs) in g.config.routes.iter().zip(&g.route_states) {
        w.write(
            ROUTE,
            &Route {
                name: r.name.clone(),
                slo: rs.slo.lock().entries(),
                alerted: *rs.slo_alerted.lock(),
            },
        )?;
    }
    let now = Instant::now();
    for u in 0..g.upstreams().len() as u16 {
        let node = g.upstreams().node(u);
        if let Some(health) = node.health_record(now) {
            w.write(
                UPSTREAM,
                &Upstream {
                    addr: node.addr().to_string(),
                    health,
                },
            )?;
        }
    }
    let bytes = w.finish()?;
    Ok(Written {
        path: path.to_path_buf(),
        customers,
        bytes,
        took: started.elapsed(),
    })
}

/// When and by whom the snapshot at `path` was written, if it is one (its header only; nothing
/// else is checked).
pub fn written_by(path: &Path) -> Option<(u64, u32)> {
    let mut r = FrameReader::open(path).ok()?;
    let mut buf = Vec::new();
    match r.next_record(&mut buf).ok()? {
        Some(HEADER) => frame::decode::<Header>(&buf)
            .ok()
            .map(|h| (h.written_ms, h.pid)),
        _ => None,
    }
}

/// Reads the snapshot at `path` into usher's state, merged with what is already known. The whole
/// file is checked first, framing and checksum and then every record decoded and judged: a
/// snapshot that is cut short, corrupt, of another format, or with a record no usher would write,
/// is refused and nothing of it is taken. Blocking.
pub fn load(usher: &Usher, path: &Path) -> Result<Loaded, FrameError> {
    let started = Instant::now();
    frame::verify(path)?;
    read(usher, path, false)?;
    let mut out = read(usher, path, true)?;
    usher.state().store.order_by_last_seen();
    out.took = started.elapsed();
    Ok(out)
}

/// Whether `id` could be a customer id usher tracks (what identity accepts).
fn usable_id(id: &str, max_len: usize) -> bool {
    !id.is_empty() && id.len() <= max_len && id.bytes().all(|b| (0x21..=0x7e).contains(&b))
}

/// One pass over the records; with `apply` false, every record is decoded and judged and nothing
/// is changed.
fn read(usher: &Usher, path: &Path, apply: bool) -> Result<Loaded, FrameError> {
    let st = usher.state();
    let g = usher.generation();
    let journey_len = g.store_settings().journey_len;
    let model = g.store_settings().model;
    let max_funnels = g.config.events.funnel_track_max;
    let max_id = crate::defaults::MAX_ID_LEN.max(g.config.identity.max_id_len as i64) as usize;
    let mut out = Loaded::default();
    let mut r = FrameReader::open(path)?;
    let step_bytes = match r.version() {
        1 => crate::experience::journey::STEP_BYTES_V1,
        _ => crate::experience::journey::STEP_BYTES,
    };
    let mut buf = Vec::new();
    // The writer's ids, mapped to this process's.
    let mut routes: Vec<Option<u16>> = Vec::new();
    // The writer's routes' targets in the configuration in force, to judge a step written before
    // version 3 kept its judgement.
    let mut targets: Vec<std::time::Duration> = Vec::new();
    let mut tiers: Vec<u8> = Vec::new();
    let mut funnels: Vec<Option<u16>> = Vec::new();
    let mut addrs: Vec<Option<u16>> = Vec::new();
    let now = Instant::now();
    while let Some(kind) = r.next_record(&mut buf)? {
        match kind {
            HEADER => {
                let h: Header = frame::decode(&buf)?;
                out.written_ms = h.written_ms;
                out.pid = h.pid;
            }
            NAMES => {
                let n: Names = frame::decode(&buf)?;
                if !apply {
                    continue;
                }
                let intern =
                    |names: &crate::names::Interner<Arc<str>>, v: &[String]| -> Vec<Option<u16>> {
                        v.iter()
                            .map(|s| names.intern(&Arc::from(s.as_str())))
                            .collect()
                    };
                routes = intern(&st.route_names, &n.routes);
                targets = n
                    .routes
                    .iter()
                    .map(|name| {
                        g.config
                            .routes
                            .iter()
                            .find(|r| &r.name == name)
                            .map_or(crate::defaults::TARGET, |r| r.target)
                    })
                    .collect();
                funnels = intern(&st.funnel_names, &n.funnels);
                tiers = intern(&st.tier_names, &n.tiers)
                    .into_iter()
                    .map(|t| t.map_or(u8::MAX, |t| t as u8))
                    .collect();
                addrs = n
                    .addrs
                    .iter()
                    .map(|a| a.parse().ok().and_then(|a| st.upstreams.addrs().intern(&a)))
                    .collect();
            }
            CUSTOMER => {
                let c: Customer = frame::decode(&buf)?;
                let Some(score) = Score::from_parts(c.good, c.weight, c.at_ms) else {
                    return Err(FrameError::Corrupt(format!(
                        "customer {:?} has an impossible score",
                        c.id
                    )));
                };
                if !usable_id(&c.id, max_id) {
                    return Err(FrameError::Corrupt(format!(
                        "{:?} is not a customer id",
                        c.id
                    )));
                }
                if !c.steps.len().is_multiple_of(step_bytes) {
                    return Err(FrameError::Corrupt(format!(
                        "customer {:?} has a torn journey",
                        c.id
                    )));
                }
                if !apply {
                    out.customers += 1;
                    continue;
                }
                let map = |ids: &[Option<u16>], id: Option<u16>| {
                    id.and_then(|i| ids.get(i as usize).copied().flatten())
                };
                let journey = c
                    .steps
                    .chunks_exact(step_bytes)
                    .filter_map(|b| match r.version() {
                        1 => Step::from_v1_bytes(b.try_into().ok()?),
                        _ => Step::from_bytes(b.try_into().ok()?),
                    })
                    .map(|mut s| {
                        if r.version() < 3 {
                            let target = s
                                .route()
                                .and_then(|r| targets.get(r as usize).copied())
                                .unwrap_or(crate::defaults::TARGET);
                            s.judge_again(target);
                        }
                        s.relabel(|r, u| (map(&routes, r), map(&addrs, u)))
                    })
                    .collect();
                let evicted = st.store.restore(
                    CustomerRecord {
                        id: c.id,
                        tier: tiers.get(c.tier as usize).copied().unwrap_or(u8::MAX),
                        score,
                        first_seen_ms: c.first_seen_ms,
                        requests: c.requests,
                        errors: c.errors,
                        frustrated: c.frustrated,
                        rescued_until_s: c.rescued_until_s,
                        degraded: c.degraded,
                        journey,
                    },
                    journey_len,
                    &model,
                );
                if evicted {
                    st.metrics.customers_evicted.inc();
                }
                out.customers += 1;
            }
            FUNNEL => {
                let f: Funnel = frame::decode(&buf)?;
                if !apply {
                    continue;
                }
                if let Some(id) = funnels.get(f.funnel as usize).copied().flatten() {
                    let p = Progress {
                        furthest: f.furthest,
                        tier: tiers.get(f.tier as usize).copied().unwrap_or(u8::MAX),
                        entered_ms: f.entered_ms,
                        last_ms: f.last_ms,
                        errors: f.errors,
                        frustrated: f.frustrated,
                        verified: f.verified,
                    };
                    st.events.funnels.restore(id, f.customer, p, max_funnels);
                    out.funnels += 1;
                }
            }
            COOLDOWN => {
                let c: Cooldown = frame::decode(&buf)?;
                if !apply {
                    continue;
                }
                st.events.cooldown().restore(c.kind, c.subject, c.at_ms);
                out.cooldowns += 1;
            }
            ROUTE => {
                let rt: Route = frame::decode(&buf)?;
                if !apply {
                    continue;
                }
                if let Some(rs) = st.route(&rt.name) {
                    let mut w = rs.slo.lock();
                    for (m, good, total) in rt.slo {
                        w.restore(m, good, total);
                    }
                    let mut a = rs.slo_alerted.lock();
                    for (mine, theirs) in a.iter_mut().zip(rt.alerted) {
                        *mine = (*mine).max(theirs);
                    }
                    out.routes += 1;
                }
            }
            UPSTREAM => {
                let u: Upstream = frame::decode(&buf)?;
                if !apply {
                    continue;
                }
                let node = u.addr.parse().ok().and_then(|a| st.upstreams.node(a));
                if let Some(node) = node {
                    node.restore_health(&u.health, now);
                    out.upstreams += 1;
                }
            }
            // A record kind this version does not know: a newer writer's addition, skipped.
            _ => {}
        }
    }
    if apply {
        g.refresh_upstream_states(now);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::upstream::AttemptResult;
    use crate::views::CustomerJson;
    use http::Method;
    use rand::SeedableRng;

    fn config(routes_first: &str) -> Config {
        let text = format!(
            r#"
[[tiers]]
name = "{routes_first}"
[[tiers]]
name = "gold"
[[tiers]]
name = "standard"
[[pools]]
name = "web"
upstreams = ["127.0.0.1:9001", "127.0.0.1:9002"]
[[routes]]
name = "{routes_first}"
match = {{ path_prefix = "/{routes_first}" }}
pool = "web"
[[routes]]
name = "checkout"
match = {{ path_prefix = "/checkout" }}
pool = "web"
critical = true
slo = 0.99
[[routes]]
name = "site"
pool = "web"
[[funnels]]
name = "checkout"
steps = [{{ name = "cart", path = "/cart" }}, {{ name = "pay", path = "/checkout/pay" }}, {{ name = "done", path = "/checkout/done" }}]
"#
        );
        Config::parse(&text, Path::new(".")).unwrap()
    }

    fn request(u: &Usher, path: &str, who: &str, status: u16, at: u64) {
        let (post, zero) = (Method::POST, Duration::ZERO);
        crate::engine::testing::request(
            u,
            &post,
            path,
            who,
            None,
            status,
            zero,
            at,
            Instant::now(),
        );
    }

    fn view(u: &Usher, who: &str) -> serde_json::Value {
        let g = u.generation();
        let c = u
            .state()
            .store
            .get(who, 100_000, &g.store_settings().model)
            .unwrap();
        serde_json::to_value(CustomerJson::new(u.state(), &g, &c)).unwrap()
    }

    #[test]
    fn what_was_learned_round_trips_into_a_process_with_other_ids() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE);
        let a = Usher::new(config("promo"));
        for (i, who) in ["ann", "bob", "cid"].iter().enumerate() {
            request(&a, "/promo/x", who, 200, 1_000 + i as u64);
            request(&a, "/checkout/pay", who, 503, 2_000 + i as u64);
        }
        request(&a, "/cart", "dee", 200, 3_000);
        let g = a.generation();
        let up = g
            .upstreams()
            .find("127.0.0.1:9002".parse().unwrap())
            .unwrap();
        g.upstreams().observe(
            up,
            AttemptResult::ConnectFailed,
            Duration::from_millis(1),
            Instant::now(),
            &mut rand::rngs::SmallRng::seed_from_u64(1),
        );
        a.state().events.cooldown().allow(
            EventType::CustomerDegraded,
            "ann",
            5_000,
            Duration::from_secs(600),
        );
        let w = write(&a, &path).unwrap();
        assert_eq!(w.customers, 4);
        assert_eq!(
            written_by(&path).map(|(_, pid)| pid),
            Some(std::process::id())
        );

        // Another process whose configuration interns names in another order.
        let b = Usher::new(config("beta"));
        let l = load(&b, &path).unwrap();
        // Routes by name: b has no promo route, so two of three.
        assert_eq!(
            (l.customers, l.funnels, l.cooldowns, l.routes, l.upstreams),
            (4, 1, 1, 2, 1)
        );
        // What a step's route targets is read from the configuration in force, which differs.
        let learned = |u: &Usher, who: &str| {
            let mut v = view(u, who);
            for s in v["journey"].as_array_mut().unwrap() {
                s.as_object_mut().unwrap().remove("target_ms");
            }
            v
        };
        for who in ["ann", "bob", "cid", "dee"] {
            assert_eq!(learned(&b, who), learned(&a, who), "{who}");
        }
        assert_eq!(
            view(&b, "ann")["journey"][0]["route"],
            "promo",
            "a route b does not have"
        );
        let bg = b.generation();
        assert_eq!(
            b.state().events.funnels.progress_of(bg.funnels(), "dee"),
            vec![(0, 0)]
        );
        assert!(!b.state().events.cooldown().allow(
            EventType::CustomerDegraded,
            "ann",
            6_000,
            Duration::from_secs(600)
        ));
        let checkout = b.state().route("checkout").unwrap();
        assert_eq!(
            checkout.slo.lock().entries(),
            g.route_state(1).unwrap().slo.lock().entries()
        );
        let up = bg
            .upstreams()
            .find("127.0.0.1:9002".parse().unwrap())
            .unwrap();
        assert_eq!(bg.upstreams().view(up, Instant::now()).state, "ejected");
    }

    #[test]
    fn a_damaged_snapshot_is_refused_whole_and_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE);
        let a = Usher::new(config("promo"));
        for i in 0..50 {
            request(&a, "/checkout/pay", &format!("c{i}"), 200, 1_000 + i);
        }
        write(&a, &path).unwrap();
        let good = std::fs::read(&path).unwrap();
        let b = Usher::new(config("promo"));
        std::fs::write(&path, &good[..good.len() * 2 / 3]).unwrap();
        assert!(matches!(load(&b, &path), Err(FrameError::Truncated(_))));
        let mut bad = good.clone();
        let at = bad.len() / 2;
        bad[at] ^= 0xff;
        std::fs::write(&path, &bad).unwrap();
        assert!(load(&b, &path).is_err());
        assert!(
            b.state().store.is_empty(),
            "nothing of a bad snapshot is taken"
        );
        std::fs::write(&path, &good).unwrap();
        assert_eq!(load(&b, &path).unwrap().customers, 50);
    }

    #[test]
    fn a_well_framed_snapshot_with_an_impossible_record_is_refused_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE);
        let customer = |id: &str, weight: f32| Customer {
            id: id.into(),
            tier: 0,
            good: 1.0,
            weight,
            at_ms: 1,
            first_seen_ms: 1,
            requests: 1,
            errors: 0,
            frustrated: 0,
            rescued_until_s: 0,
            degraded: false,
            steps: Vec::new(),
        };
        for bad in [
            customer("z", f32::NAN),
            customer("z", 1e30),
            customer("has space", 1.0),
            customer("", 1.0),
        ] {
            let mut w = FrameWriter::create(&path).unwrap();
            w.write(
                HEADER,
                &Header {
                    written_ms: 1,
                    pid: 1,
                    usher: "test".into(),
                },
            )
            .unwrap();
            w.write(
                NAMES,
                &Names {
                    routes: vec![],
                    tiers: vec!["gold".into()],
                    funnels: vec![],
                    addrs: vec![],
                },
            )
            .unwrap();
            w.write(CUSTOMER, &customer("a", 1.0)).unwrap();
            w.write(CUSTOMER, &bad).unwrap();
            w.finish().unwrap();
            let b = Usher::new(config("promo"));
            let r = load(&b, &path);
            assert!(
                matches!(r, Err(FrameError::Corrupt(_))),
                "{:?}",
                r.map(|l| l.customers)
            );
            assert!(
                b.state().store.is_empty(),
                "not even the good record before the bad one"
            );
        }
    }

    #[test]
    fn whoever_retention_forgets_leaves_the_snapshot_on_disk_too() {
        use crate::engine::testing::request;
        const MIN: u64 = 60_000;
        let dir = tempfile::tempdir().unwrap();
        let cfg = Config::parse(
            "[privacy]\nretention = \"1h\"\n[[pools]]\nname = \"p\"\nupstreams = [\"127.0.0.1:9001\"]\n[[routes]]\nname = \"r\"\npool = \"p\"\n",
            dir.path(),
        )
        .unwrap();
        let t = Instant::now();
        let now = crate::time::wall_ms();
        let a = Usher::new(cfg.clone());
        let ms5 = Duration::from_millis(5);
        request(
            &a,
            &Method::GET,
            "/",
            "gone-quiet",
            None,
            200,
            ms5,
            now - 120 * MIN,
            t,
        );
        request(&a, &Method::GET, "/", "still-here", None, 200, ms5, now, t);
        let path = path_of(&a);
        write(&a, &path).unwrap();
        let holds = |who: &str| {
            let bytes = std::fs::read(&path).unwrap();
            bytes.windows(who.len()).any(|w| w == who.as_bytes())
        };
        assert!(holds("gone-quiet") && holds("still-here"));

        // Loading it forgets whoever went idle past the retention while usher was down...
        let b = Usher::new(cfg);
        crate::server::load_snapshot(&b);
        assert!(b.state().store.contains("still-here"));
        assert!(!b.state().store.contains("gone-quiet"));
        // ...and the next summary writes it again without them, once.
        assert_eq!(
            rewrite_after_retention(&b, now),
            Some(AfterErasure::Rewritten)
        );
        assert!(!holds("gone-quiet") && holds("still-here"));
        assert_eq!(
            rewrite_after_retention(&b, now),
            None,
            "nothing more forgotten"
        );
        // Forgotten within the hour after that rewrite: written again when the hour is up.
        assert_eq!(b.forget_past_retention(now + 61 * MIN), 1);
        assert_eq!(rewrite_after_retention(&b, now + 30 * MIN), None);
        assert!(holds("still-here"), "not yet");
        assert_eq!(
            rewrite_after_retention(&b, now + 61 * MIN),
            Some(AfterErasure::Rewritten)
        );
        assert!(!holds("still-here"));
    }

    #[test]
    fn after_a_restore_the_least_recently_seen_go_first_whatever_the_file_order() {
        use crate::engine::testing::request;
        let dir = tempfile::tempdir().unwrap();
        let cfg = Config::parse(
            "[privacy]\nretention = \"1h\"\n[experience]\ntrack_max = 300\n[[pools]]\nname = \"p\"\nupstreams = [\"127.0.0.1:9001\"]\n[[routes]]\nname = \"r\"\npool = \"p\"\n",
            dir.path(),
        )
        .unwrap();
        let t = Instant::now();
        let now = crate::time::wall_ms();
        let a = Usher::new(cfg.clone());
        let ms5 = Duration::from_millis(5);
        for k in 0..150u64 {
            // Idle for two hours, or seen a minute ago, in the order they came.
            let at = now - 2 * 3_600_000 + k;
            request(
                &a,
                &Method::GET,
                "/",
                &format!("idle-{k}"),
                None,
                200,
                ms5,
                at,
                t,
            );
            let at = now - 60_000 + k;
            request(
                &a,
                &Method::GET,
                "/",
                &format!("seen-{k}"),
                None,
                200,
                ms5,
                at,
                t,
            );
        }
        let path = path_of(&a);
        write(&a, &path).unwrap();
        let b = Usher::new(cfg);
        assert_eq!(load(&b, &path).unwrap().customers, 300);
        assert_eq!(
            b.forget_past_retention(now),
            150,
            "every idle one, none else"
        );
        assert!((0..150).all(|k| b.state().store.contains(&format!("seen-{k}"))));
        // And eviction takes the least recently seen: ten more, and the ten oldest go.
        for k in 0..160u64 {
            let at = now + k;
            request(
                &b,
                &Method::GET,
                "/",
                &format!("new-{k}"),
                None,
                200,
                ms5,
                at,
                t,
            );
        }
        b.state().store.trim();
        assert!((0..10).all(|k| !b.state().store.contains(&format!("seen-{k}"))));
        assert!((10..150).all(|k| b.state().store.contains(&format!("seen-{k}"))));
    }

    #[test]
    fn a_version_1_snapshot_is_read_whole_after_an_upgrade() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE);
        // What usher wrote before steps carried request ids: a 48-byte step with a 27-byte path.
        let mut v1 = [0u8; crate::experience::journey::STEP_BYTES_V1];
        v1[0..8].copy_from_slice(&1_000u64.to_le_bytes());
        v1[8..12].copy_from_slice(&1_500u32.to_le_bytes());
        v1[12..14].copy_from_slice(&503u16.to_le_bytes());
        v1[14..16].copy_from_slice(&0u16.to_le_bytes());
        v1[16..18].copy_from_slice(&u16::MAX.to_le_bytes());
        v1[18] = 1;
        v1[19] = crate::measure::Outcome::Upstream5xx as u8;
        v1[20] = 13;
        v1[21..34].copy_from_slice(b"/checkout/pay");
        // A slow page view: 2.1 s against the default target of the route it names.
        let mut slow = v1;
        slow[8..12].copy_from_slice(&2_100_000u32.to_le_bytes());
        slow[12..14].copy_from_slice(&200u16.to_le_bytes());
        slow[19] = crate::measure::Outcome::Ok as u8;
        let mut w = FrameWriter::create_version(&path, 1).unwrap();
        w.write(
            HEADER,
            &Header {
                written_ms: 1,
                pid: 1,
                usher: "0.1.0".into(),
            },
        )
        .unwrap();
        w.write(
            NAMES,
            &Names {
                routes: vec!["checkout".into()],
                tiers: vec!["gold".into()],
                funnels: vec![],
                addrs: vec![],
            },
        )
        .unwrap();
        w.write(
            CUSTOMER,
            &Customer {
                id: "ann".into(),
                tier: 0,
                good: 0.5,
                weight: 1.0,
                at_ms: 1_000,
                first_seen_ms: 1_000,
                requests: 2,
                errors: 2,
                frustrated: 0,
                rescued_until_s: 0,
                degraded: false,
                steps: [v1, v1, slow].concat(),
            },
        )
        .unwrap();
        w.finish().unwrap();
        let b = Usher::new(config("promo"));
        assert_eq!(load(&b, &path).unwrap().customers, 1);
        let ann = view(&b, "ann");
        let journey = ann["journey"].as_array().unwrap();
        assert_eq!(journey.len(), 3);
        // Judged as it loads, against the route's target now: version 1 kept no judgement.
        assert_eq!(journey[0]["marks"], serde_json::json!(["failed"]));
        assert_eq!(
            journey[2]["marks"],
            serde_json::json!(["slow", "frustrated"])
        );
        assert_eq!(journey[0]["path"], "/checkout/pay");
        assert_eq!(journey[0]["status"], 503);
        assert_eq!(journey[0]["route"], "checkout");
        assert!(journey[0].get("request_id").is_none());
        // And what this usher writes is the new format, read back with its judgements.
        write(&b, &path).unwrap();
        assert_eq!(FrameReader::open(&path).unwrap().version(), frame::VERSION);
        let c = Usher::new(config("promo"));
        assert_eq!(load(&c, &path).unwrap().customers, 1);
        assert_eq!(
            view(&c, "ann")["journey"],
            ann["journey"],
            "every step, the slow one too"
        );
    }
}
