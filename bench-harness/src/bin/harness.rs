//! Runs every comparison and writes `bench-harness/RESULTS.md` and `bench-harness/brownout.svg`.
//!
//! Started by `bench-harness/run`, pinned to core 1 with the load generators and origins; every
//! proxy under test is pinned to core 0. Contestants take turns within each round, so the ratios
//! come from the same minutes. `--quick` shortens everything (a smoke run, not for publishing).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};
use usher::origin::Origin;
use usher_bench_harness::contestants::{Contestant, Tools, LOAD_CORE};
use usher_bench_harness::loadgen::{open_loop, Class, Request, Sample};
use usher_bench_harness::procs::{busy_between, core_ticks, ticks_per_second};
use usher_bench_harness::report::{chart, figures, ms, pct, per_second, table, Figures};
use usher_bench_harness::tls::{handshakes, make_cert, oha_h2, oha_requests, wrk_keepalive};

struct Opts {
    runs: usize,
    /// More rounds for latency than for throughput: a stall of the shared machine moves a p99
    /// far more than a median rate, and two of three rounds have been seen hit in one run.
    latency_rounds: usize,
    secs: u64,
    fault_secs: u64,
    fault_rate: f64,
    customers: Vec<u64>,
    quick: bool,
}

fn which(cmd: &str) -> anyhow::Result<PathBuf> {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {cmd}"))
        .output()?;
    let p = String::from_utf8_lossy(&out.stdout).trim().to_string();
    anyhow::ensure!(
        !p.is_empty(),
        "{cmd} is not installed (bench-harness/run installs it)"
    );
    Ok(PathBuf::from(p))
}

fn first_line(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .map(|o| {
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
            text.lines().next().unwrap_or("").trim().to_string()
        })
        .unwrap_or_else(|_| "?".into())
}

/// wrk's figures for one run.
struct WrkRun {
    rps: f64,
    requests: u64,
}

fn wrk(target: SocketAddr, secs: u64, script: &Path) -> anyhow::Result<WrkRun> {
    let out = Command::new("wrk")
        .args(["-t1", "-c32", &format!("-d{secs}s"), "-s"])
        .arg(script)
        .arg(format!("http://{target}/"))
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let rps = text
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| anyhow::anyhow!("wrk printed no Requests/sec:\n{text}"))?;
    let requests = text
        .lines()
        .find_map(|l| {
            l.trim()
                .split_once(" requests in")
                .map(|(n, _)| n.trim().to_string())
        })
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    Ok(WrkRun { rps, requests })
}

/// A wrk script that names one of `n` customers in each request.
fn customers_script(dir: &Path, n: u64) -> anyhow::Result<PathBuf> {
    let path = dir.join(format!("customers-{n}.lua"));
    std::fs::write(
        &path,
        format!(
            "local i = 0\nrequest = function()\n  i = i + 1\n  return wrk.format(\"GET\", \"/products/\" .. (i % 97), {{ [\"x-customer-id\"] = \"c\" .. (i % {n}) }})\nend\n"
        ),
    )?;
    Ok(path)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        0.0
    } else {
        v[v.len() / 2]
    }
}

fn http_get(addr: SocketAddr, path: &str) -> String {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(addr) else {
        return String::new();
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    let _ = write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    );
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
}

/// What the throughput table lists, in order.
fn throughput_contestants(tools: &Tools) -> Vec<Contestant> {
    let mut v = vec![
        Contestant::Direct,
        Contestant::Bare,
        Contestant::BareTimeouts,
        Contestant::Usher,
        Contestant::UsherReloading,
    ];
    if tools.usher_before.is_some() {
        v.push(Contestant::UsherBefore);
    }
    v.extend([Contestant::Nginx, Contestant::Haproxy]);
    v
}

/// The configuration generation a usher's admin API reports.
fn admin_generation(admin: SocketAddr) -> anyhow::Result<u64> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(admin)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET /config HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    let body = out.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    let v: serde_json::Value = serde_json::from_str(body)?;
    v["generation"]
        .as_u64()
        .ok_or_else(|| anyhow::anyhow!("no generation in {body}"))
}

#[derive(Default)]
struct Throughput {
    /// Per round of the reloading usher: reloads asked for, and the generation it reached.
    reloads: Vec<(u32, u64)>,
    rps: BTreeMap<&'static str, Vec<f64>>,
    cpu_us: BTreeMap<&'static str, Vec<f64>>,
    peak_rss_kb: BTreeMap<&'static str, u64>,
}

fn throughput(
    tools: &Tools,
    origin: SocketAddr,
    o: &Opts,
    work: &Path,
) -> anyhow::Result<Throughput> {
    let script = customers_script(work, 1000)?;
    let mut t = Throughput::default();
    let contestants = throughput_contestants(tools);
    for round in 0..o.runs {
        for &c in &contestants {
            let running = tools.start(c, &[origin], &format!("tp{round}"))?;
            wrk(running.target, 1, &script)?;
            let before = running.proc.as_ref().map(|p| p.cpu_ticks());
            let r = wrk(running.target, o.secs, &script)?;
            if let Some(rel) = running.reloader {
                let sent = rel.finish();
                let generation = running
                    .admin
                    .and_then(|a| admin_generation(a).ok())
                    .unwrap_or(0);
                eprintln!("  round {round}: {sent} reloads asked for, configuration generation {generation}");
                t.reloads.push((sent, generation));
            }
            if let (Some(p), Some(b)) = (&running.proc, before) {
                let cpu_s = (p.cpu_ticks() - b) as f64 / ticks_per_second();
                t.cpu_us
                    .entry(c.name())
                    .or_default()
                    .push(cpu_s * 1e6 / r.requests.max(1) as f64);
                let peak = t.peak_rss_kb.entry(c.name()).or_default();
                *peak = (*peak).max(p.peak_rss_kb());
            }
            eprintln!("  round {round}: {:>12} {:>9.0} req/s", c.name(), r.rps);
            t.rps.entry(c.name()).or_default().push(r.rps);
        }
    }
    Ok(t)
}

struct LatencyRow {
    rate: f64,
    /// Per proxy, the figures of the round with the median p99 and how busy the load core was in it.
    by: BTreeMap<&'static str, (Figures, f64)>,
}

/// One open-loop run: what it measured, and the share of the load core it took. A load core near
/// 100% means the generator, the origin and the loopback TCP stack were the limit, not the proxy.
struct LatencyRun {
    rate: f64,
    contestant: Contestant,
    samples: Vec<Sample>,
    load_busy: f64,
}

fn latency(
    rt: &tokio::runtime::Runtime,
    tools: &Tools,
    origin: SocketAddr,
    rates: &[f64],
    o: &Opts,
) -> anyhow::Result<Vec<LatencyRow>> {
    // Rounds interleaved like the throughput runs; per rate and proxy, the round with the median
    // p99 is reported, so that one stall of the shared machine (seen for every proxy, ~50 ms,
    // about one run in five, sometimes in bursts) does not decide a row.
    let mut runs: BTreeMap<(u64, &'static str), Vec<(Figures, f64)>> = BTreeMap::new();
    for round in 0..o.latency_rounds {
        eprintln!("  round {round}");
        for r in latency_runs(rt, tools, origin, rates, &Contestant::ALL, o.secs)? {
            runs.entry((r.rate as u64, r.contestant.name()))
                .or_default()
                .push((figures(r.samples.iter()), r.load_busy));
        }
    }
    let mut rows = Vec::new();
    for &rate in rates {
        let mut by = BTreeMap::new();
        for c in Contestant::ALL {
            if let Some(mut v) = runs.remove(&(rate as u64, c.name())) {
                v.sort_by_key(|f| f.0.p99);
                by.insert(c.name(), v.swap_remove(v.len() / 2));
            }
        }
        rows.push(LatencyRow { rate, by });
    }
    Ok(rows)
}

/// The highest open-loop rate every proxy sustains here. wrk's closed loop cannot overload a
/// proxy: it waits for answers. Open-loop arrivals keep coming, and well below wrk's rate the
/// Pingora proxies fall into a queue they do not leave within the run, though neither core is
/// saturated. Each proxy is tried from the lowest ceiling found so far (at most 90% of its wrk
/// rate), stepping down by 10% until a 3 s run keeps p99 under 10 ms, with a second try at each
/// step so that one stall of the shared machine does not lower it.
fn open_loop_ceiling(
    rt: &tokio::runtime::Runtime,
    tools: &Tools,
    origin: SocketAddr,
    wrk_rps: &BTreeMap<&str, f64>,
) -> anyhow::Result<f64> {
    let mut proxies = Contestant::PROXIES.to_vec();
    proxies.sort_by(|a, b| wrk_rps[a.name()].total_cmp(&wrk_rps[b.name()]));
    let mut ceiling = f64::MAX;
    for c in proxies {
        let mut rate = ((wrk_rps[c.name()] * 0.9).min(ceiling) / 100.0).round() * 100.0;
        'step: while rate >= 1000.0 {
            for _ in 0..2 {
                let r = latency_runs(rt, tools, origin, &[rate], &[c], 3)?;
                let f = figures(r.iter().flat_map(|r| r.samples.iter()));
                if f.success >= 0.999 && f.p99 < Duration::from_millis(10) {
                    break 'step;
                }
            }
            rate = (rate * 0.9 / 100.0).round() * 100.0;
        }
        ceiling = ceiling.min(rate);
    }
    Ok(ceiling)
}

/// Open-loop runs of `secs` measured seconds at each rate against each contestant, in that order.
fn latency_runs(
    rt: &tokio::runtime::Runtime,
    tools: &Tools,
    origin: SocketAddr,
    rates: &[f64],
    contestants: &[Contestant],
    secs: u64,
) -> anyhow::Result<Vec<LatencyRun>> {
    let reqs: Arc<Vec<Request>> = Arc::new(
        (0..1000)
            .map(|i| Request {
                path: format!("/products/{}", i % 97),
                headers: vec![("x-customer-id".into(), format!("c{i}"))],
                class: Class::Standard,
            })
            .collect(),
    );
    let mut out = Vec::new();
    for &rate in rates {
        for &c in contestants {
            let running = tools.start(c, &[origin], &format!("lat{rate:.0}"))?;
            // One run: its first second (connections being opened, a backlog they leave that a
            // proxy near its limit takes a while to work off) warms up, the rest is measured.
            let warm = Duration::from_secs(1);
            let before = core_ticks(LOAD_CORE);
            let samples: Vec<Sample> = rt
                .block_on(open_loop(
                    running.target,
                    rate,
                    warm + Duration::from_secs(secs),
                    256,
                    reqs.clone(),
                    Duration::from_secs(10),
                ))
                .into_iter()
                .filter(|x| x.due >= warm)
                .map(|x| Sample {
                    due: x.due - warm,
                    ..x
                })
                .collect();
            let load_busy = busy_between(before, core_ticks(LOAD_CORE));
            let f = figures(samples.iter());
            eprintln!(
                "  {rate:>7.0} req/s {:>12}: p50 {} p99 {} p99.9 {} load core {:.0}%",
                c.name(),
                ms(f.p50),
                ms(f.p99),
                ms(f.p999),
                load_busy * 100.0
            );
            out.push(LatencyRun {
                rate,
                contestant: c,
                samples,
                load_busy,
            });
        }
    }
    Ok(out)
}

struct CustomerRow {
    n: u64,
    rps: f64,
    tracked: f64,
    rss_kb: u64,
}

fn customers(
    tools: &Tools,
    origin: SocketAddr,
    o: &Opts,
    work: &Path,
) -> anyhow::Result<Vec<CustomerRow>> {
    let mut rows = Vec::new();
    for &n in &o.customers {
        let script = customers_script(work, n)?;
        let running = tools.start(Contestant::Usher, &[origin], &format!("cust{n}"))?;
        // Enough requests that every one of the n customers is tracked before measuring.
        let warm = (n as f64 / 20_000.0 * 1.5).ceil().max(2.0) as u64;
        wrk(running.target, warm, &script)?;
        let r = wrk(running.target, o.secs, &script)?;
        let m = http_get(running.admin.expect("usher has an admin API"), "/metrics");
        let tracked = metric(&m, "usher_customers_tracked").unwrap_or(0.0);
        let rss = running.proc.as_ref().map_or(0, |p| p.rss_kb());
        eprintln!(
            "  {n:>8} customers: {:.0} req/s, {tracked} tracked, rss {rss} KiB",
            r.rps
        );
        rows.push(CustomerRow {
            n,
            rps: r.rps,
            tracked,
            rss_kb: rss,
        });
    }
    Ok(rows)
}

#[derive(Clone, Copy, Debug)]
enum Fault {
    Brownout,
    Slow,
    Kill,
}

impl Fault {
    fn name(self) -> &'static str {
        match self {
            Fault::Brownout => "brownout: 50% 503, the rest 2 s late, health check green",
            Fault::Slow => "slow upstream: +300 ms on every answer, no errors",
            Fault::Kill => "one upstream killed mid-run",
        }
    }
}

struct FaultRun {
    samples: Vec<Sample>,
    /// Seconds after the fault until the bad upstream got under 1% of the traffic for good.
    stopped_after: Option<f64>,
}

const FAULT_AT: u64 = 5;

fn fault_run(
    rt: &tokio::runtime::Runtime,
    tools: &Tools,
    c: Contestant,
    fault: Fault,
    o: &Opts,
) -> anyhow::Result<FaultRun> {
    let mut origins: Vec<Origin> = rt.block_on(async {
        let mut v = Vec::new();
        for name in ["a", "b", "c"] {
            v.push(Origin::start_local(name).await?);
        }
        Ok::<_, std::io::Error>(v)
    })?;
    let addrs: Vec<SocketAddr> = origins.iter().map(|x| x.addr).collect();
    let running = tools.start(c, &addrs, &format!("{fault:?}"))?;
    let reqs: Arc<Vec<Request>> = Arc::new(
        (0..200)
            .map(|i| {
                if i % 2 == 0 {
                    Request {
                        path: "/checkout/pay".into(),
                        headers: vec![
                            ("x-customer-id".into(), format!("gold-{i}")),
                            ("x-customer-tier".into(), "gold".into()),
                        ],
                        class: Class::Protected,
                    }
                } else {
                    Request {
                        path: format!("/products/{i}"),
                        headers: vec![("x-customer-id".into(), format!("std-{i}"))],
                        class: Class::Standard,
                    }
                }
            })
            .collect(),
    );
    let bad = origins[1].behavior.clone();
    let samples = rt.block_on(async {
        let load = tokio::spawn(open_loop(
            running.target,
            o.fault_rate,
            Duration::from_secs(o.fault_secs),
            1024,
            reqs,
            Duration::from_secs(15),
        ));
        tokio::time::sleep(Duration::from_millis(50) + Duration::from_secs(FAULT_AT)).await;
        match fault {
            Fault::Brownout => bad.set_brownout(0.5, Duration::from_secs(2)),
            Fault::Slow => bad.set_delay(Duration::from_millis(300)),
            Fault::Kill => drop(origins.remove(1)),
        }
        load.await.unwrap_or_default()
    });
    drop(running);
    // When did the bad upstream ("b") stop getting traffic?
    let secs = o.fault_secs as usize;
    let share: Vec<f64> = (0..secs)
        .map(|s| {
            let lo = Duration::from_secs(s as u64);
            let in_sec: Vec<&Sample> = samples
                .iter()
                .filter(|x| x.due >= lo && x.due < lo + Duration::from_secs(1))
                .collect();
            let from_b = in_sec
                .iter()
                .filter(|x| x.origin.as_deref() == Some("b"))
                .count();
            from_b as f64 / in_sec.len().max(1) as f64
        })
        .collect();
    let stopped_after = match fault {
        // A killed upstream answers nothing: the question is how soon requests stop failing on it.
        Fault::Kill => {
            let last_fail = samples
                .iter()
                .filter(|x| {
                    x.due >= Duration::from_secs(FAULT_AT) && (x.status == 0 || x.status >= 500)
                })
                .map(|x| x.due)
                .max();
            match last_fail {
                None => Some(0.0),
                // Still failing in the run's last second: it never stopped.
                Some(d) if d + Duration::from_secs(1) >= Duration::from_secs(secs as u64) => None,
                Some(d) => Some((d.as_secs_f64() - FAULT_AT as f64).max(0.0)),
            }
        }
        _ => (FAULT_AT as usize..secs)
            .find(|&s| share[s..].iter().all(|v| *v < 0.01))
            .map(|s| (s - FAULT_AT as usize) as f64),
    };
    Ok(FaultRun {
        samples,
        stopped_after,
    })
}

/// `--only FAULT PROXY` (e.g. `--only slow nginx`): one fault run, figures per second. For looking
/// into one scenario without the whole run.
fn contestant(name: &str) -> anyhow::Result<Contestant> {
    Contestant::ALL
        .into_iter()
        .find(|c| c.name().replace(' ', "-").eq_ignore_ascii_case(name))
        .ok_or_else(|| anyhow::anyhow!("no contestant {name}"))
}

/// `--only latency PROXY RATE`: one latency run, second by second, to look into a tail.
fn only_latency(
    rt: &tokio::runtime::Runtime,
    tools: &Tools,
    o: &Opts,
    proxy: &str,
    rate: f64,
) -> anyhow::Result<()> {
    let c = contestant(proxy)?;
    let (_origin_proc, origin) = tools.nginx_origin(LOAD_CORE)?;
    let mut rows = latency_runs(rt, tools, origin, &[rate], &[c], o.secs)?;
    let samples = rows.pop().map(|r| r.samples).unwrap_or_default();
    for s in 0..o.secs {
        let lo = Duration::from_secs(s);
        let f = figures(
            samples
                .iter()
                .filter(|x| x.due >= lo && x.due < lo + Duration::from_secs(1)),
        );
        println!(
            "{s:>3}s n={:>6} ok={} p50={} p99={} max={}",
            f.n,
            pct(f.success),
            ms(f.p50),
            ms(f.p99),
            ms(f.max)
        );
    }
    Ok(())
}

/// `--only throughput`: the throughput rows alone (with `USHER_BEFORE`, an earlier usher beside
/// this one), printed rather than written to RESULTS.md.
fn only_throughput(tools: &Tools, o: &Opts, work: &Path) -> anyhow::Result<()> {
    let (origin_proc, origin) = tools.nginx_origin(LOAD_CORE)?;
    let tp = throughput(tools, origin, o, work)?;
    drop(origin_proc);
    let rps = |n: &str| tp.rps.get(n).map(|v| median(v.clone())).unwrap_or(0.0);
    let (bare, usher) = (rps("bare Pingora"), rps("usher"));
    println!(
        "median of {} interleaved runs of wrk -t1 -c32 -d{}s, 1,000 customers",
        o.runs, o.secs
    );
    for c in throughput_contestants(tools) {
        let n = c.name();
        let cpu = tp.cpu_us.get(n).map_or(0.0, |v| median(v.clone()));
        println!(
            "{n:>28}: {:>8.0} req/s  {:.2}x bare Pingora  {:.2}x usher  {cpu:.1} us CPU per request",
            rps(n),
            rps(n) / bare,
            rps(n) / usher
        );
    }
    for (round, (sent, generation)) in tp.reloads.iter().enumerate() {
        println!(
            "reloading usher, round {round}: {sent} SIGHUPs, generation {generation} at the end"
        );
    }
    Ok(())
}

fn only(
    rt: &tokio::runtime::Runtime,
    tools: &Tools,
    o: &Opts,
    fault: &str,
    proxy: &str,
) -> anyhow::Result<()> {
    let fault = match fault {
        "brownout" => Fault::Brownout,
        "slow" => Fault::Slow,
        _ => Fault::Kill,
    };
    let c = contestant(proxy)?;
    let r = fault_run(rt, tools, c, fault, o)?;
    for s in 0..o.fault_secs {
        let lo = Duration::from_secs(s);
        let sec: Vec<&Sample> = r
            .samples
            .iter()
            .filter(|x| x.due >= lo && x.due < lo + Duration::from_secs(1))
            .collect();
        let f = figures(sec.iter().copied());
        let p = figures(sec.iter().copied().filter(|x| x.class == Class::Protected));
        let b = sec
            .iter()
            .filter(|x| x.origin.as_deref() == Some("b"))
            .count();
        println!(
            "{s:>3}s n={:>5} ok={} p50={} p99={} max={} protected max={} from b={b}",
            f.n,
            pct(f.success),
            ms(f.p50),
            ms(f.p99),
            ms(f.max),
            ms(p.max)
        );
    }
    Ok(())
}

/// The TLS rows: what is measured on each contestant's TLS listener, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum TlsKind {
    HandshakeH1,
    HandshakeH2,
    KeepAliveH1,
    KeepAliveH2,
    /// The HTTP/1.1 keep-alive row on the same proxy's plain listener: with `KeepAliveH1`, what
    /// TLS itself costs each proxy, apart from the work it does per request either way.
    PlainH1,
}

impl TlsKind {
    const ALL: [TlsKind; 5] = [
        TlsKind::HandshakeH1,
        TlsKind::HandshakeH2,
        TlsKind::KeepAliveH1,
        TlsKind::KeepAliveH2,
        TlsKind::PlainH1,
    ];
    fn name(self) -> &'static str {
        match self {
            TlsKind::HandshakeH1 => "full handshakes/s, HTTP/1.1",
            TlsKind::HandshakeH2 => "full handshakes/s, HTTP/2",
            TlsKind::KeepAliveH1 => "keep-alive req/s, HTTP/1.1",
            TlsKind::KeepAliveH2 => "keep-alive req/s, HTTP/2",
            TlsKind::PlainH1 => "keep-alive req/s, plain HTTP/1.1 (no TLS)",
        }
    }
}

/// Concurrent clients of the handshake generator, and of wrk; oha's HTTP/2 connections and
/// streams on each (the same 32 requests in flight).
const TLS_CLIENTS: usize = 32;
const OHA_CONNS: usize = 4;
const OHA_STREAMS: usize = 8;
/// Bare Pingora with timeouts too: usher sets its peers' timeouts, and what they cost by
/// themselves is part of the gap to bare Pingora.
const TLS_CONTESTANTS: [Contestant; 4] = [
    Contestant::Bare,
    Contestant::BareTimeouts,
    Contestant::Usher,
    Contestant::Nginx,
];

/// One measurement: rate, the proxy's CPU per request, the load core's busy share, errors.
#[derive(Clone, Copy, Default)]
struct TlsMeasure {
    rate: f64,
    cpu_us: f64,
    load_busy: f64,
    errors: u64,
}

fn tls_measure(
    rt: &tokio::runtime::Runtime,
    oha: &Path,
    running: &usher_bench_harness::contestants::Running,
    kind: TlsKind,
    secs: u64,
) -> anyhow::Result<TlsMeasure> {
    let target = running.target;
    let run = |secs: u64| -> anyhow::Result<(f64, u64, u64)> {
        Ok(match kind {
            TlsKind::HandshakeH1 | TlsKind::HandshakeH2 => {
                let r = rt.block_on(handshakes(
                    target,
                    kind == TlsKind::HandshakeH2,
                    TLS_CLIENTS,
                    Duration::from_secs(secs),
                ));
                if r.ok == 0 {
                    anyhow::bail!("no handshake succeeded: {:?}", r.first_error);
                }
                (r.per_second(), r.ok, r.errors)
            }
            TlsKind::KeepAliveH1 => {
                let r = wrk_keepalive(target, true, TLS_CLIENTS, secs)?;
                (r.rps, r.requests, r.errors)
            }
            TlsKind::PlainH1 => {
                let plain = running
                    .plain
                    .ok_or_else(|| anyhow::anyhow!("no plain listener beside the TLS one"))?;
                let r = wrk_keepalive(plain, false, TLS_CLIENTS, secs)?;
                (r.rps, r.requests, r.errors)
            }
            TlsKind::KeepAliveH2 => {
                let r = oha_h2(oha, target, OHA_CONNS, OHA_STREAMS, secs)?;
                (r.rps, r.requests, r.errors)
            }
        })
    };
    run(1)?;
    let proc = running.proc.as_ref().expect("a proxy");
    let (cpu0, core0) = (proc.cpu_ticks(), core_ticks(LOAD_CORE));
    let (rate, n, errors) = run(secs)?;
    let cpu_s = (proc.cpu_ticks() - cpu0) as f64 / ticks_per_second();
    Ok(TlsMeasure {
        rate,
        cpu_us: cpu_s * 1e6 / n.max(1) as f64,
        load_busy: busy_between(core0, core_ticks(LOAD_CORE)),
        errors,
    })
}

/// `--tls`: the TLS rows alone, written into RESULTS.md's TLS section (the rest left as it is).
fn tls_rows(
    rt: &tokio::runtime::Runtime,
    tools: &Tools,
    o: &Opts,
    root: &Path,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let oha = std::env::var_os("OHA")
        .map(PathBuf::from)
        .map_or_else(|| which("oha"), Ok)?;
    let files = make_cert(&tools.work)?;
    let (_origin_proc, origin) = tools.nginx_origin(LOAD_CORE)?;
    let rounds = if o.quick { 1 } else { 3 };
    let secs = if o.quick { 2 } else { 5 };
    // Counted first: the quicker part, and the one that fails on a proxy's error.
    let counted = tls_instructions(tools, &oha, origin, &files, o.quick)?;
    let mut all: BTreeMap<(TlsKind, &'static str), Vec<TlsMeasure>> = BTreeMap::new();
    for round in 0..rounds {
        for c in TLS_CONTESTANTS {
            let running = tools.start_tls(c, origin, &files, &format!("tls{round}"))?;
            for kind in TlsKind::ALL {
                let m = tls_measure(rt, &oha, &running, kind, secs)?;
                eprintln!(
                    "  round {round}: {:>12} {:<28} {:>8.0}/s  {:>6.1} us CPU each  load core {:>3.0}%  errors {}",
                    c.name(),
                    kind.name(),
                    m.rate,
                    m.cpu_us,
                    m.load_busy * 100.0,
                    m.errors
                );
                all.entry((kind, c.name())).or_default().push(m);
            }
        }
    }
    // Per kind and proxy, the round with the median rate.
    let pick = |kind: TlsKind, c: Contestant| -> TlsMeasure {
        let mut v = all.get(&(kind, c.name())).cloned().unwrap_or_default();
        v.sort_by(|a, b| a.rate.total_cmp(&b.rate));
        v.get(v.len() / 2).copied().unwrap_or_default()
    };
    let mut rows = Vec::new();
    for kind in TlsKind::ALL {
        let bare = pick(kind, Contestant::Bare);
        let nginx = pick(kind, Contestant::Nginx);
        for c in TLS_CONTESTANTS {
            let m = pick(kind, c);
            rows.push(vec![
                kind.name().to_string(),
                c.name().to_string(),
                format!("{:.0}", m.rate),
                format!("{:.2}x", m.rate / bare.rate),
                format!("{:.2}x", m.rate / nginx.rate),
                format!("{:.1} us", m.cpu_us),
                format!("{:.0}%", m.load_busy * 100.0),
                m.errors.to_string(),
            ]);
        }
    }
    let ratio = |kind: TlsKind, than: Contestant| {
        pick(kind, Contestant::Usher).rate / pick(kind, than).rate
    };
    let verdict = |v: f64, target: f64| if v >= target { "met" } else { "missed" };
    let (ka1, ka2) = (
        ratio(TlsKind::KeepAliveH1, Contestant::Bare),
        ratio(TlsKind::KeepAliveH2, Contestant::Bare),
    );
    let (kt1, kt2) = (
        ratio(TlsKind::KeepAliveH1, Contestant::BareTimeouts),
        ratio(TlsKind::KeepAliveH2, Contestant::BareTimeouts),
    );
    let (hs1, hs2) = (
        ratio(TlsKind::HandshakeH1, Contestant::Nginx),
        ratio(TlsKind::HandshakeH2, Contestant::Nginx),
    );
    let plain_ratio = ratio(TlsKind::PlainH1, Contestant::Bare);
    let instr = |c: Contestant, k: usize| {
        counted
            .iter()
            .find(|(x, _)| *x == c)
            .map_or(f64::NAN, |(_, v)| v[k])
    };
    let counted_rows: Vec<Vec<String>> = counted
        .iter()
        .map(|(c, v)| {
            vec![
                c.name().to_string(),
                format!("{:.1}k", v[0] / 1e3),
                format!("{:.1}k", v[1] / 1e3),
                format!("{:.1}k", v[2] / 1e3),
                format!("{:+.1}k", (v[1] - v[0]) / 1e3),
                format!("{:.2}x", instr(Contestant::Bare, 1) / v[1]),
            ]
        })
        .collect();
    let mut md = String::new();
    let _ = writeln!(md, "{TLS_BEGIN}\n## TLS\n");
    let _ = writeln!(
        md,
        "Generated by `bench-harness/run tls{}` on {} in {:.0} minutes; do not edit by hand.\n",
        if o.quick { " --quick" } else { "" },
        first_line("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
        started.elapsed().as_secs_f64() / 60.0
    );
    let _ = writeln!(
        md,
        "- machine: {} cores, {}; {}",
        cores(),
        first_line(
            "sh",
            &["-c", "grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"]
        ),
        first_line("uname", &["-sr"])
    );
    let _ = writeln!(md, "- usher `{}` with everything on (the throughput rows' configuration) plus a TLS listener; bare Pingora with a TLS listener (`bare --tls`); both Pingora 0.9.1's `rustls` backend (rustls 0.23, ring), HTTP/2 and HTTP/1.1 by ALPN; nginx {} with OpenSSL ({}), `peers/nginx-tls.conf`", first_line("git", &["rev-parse", "--short", "HEAD"]), first_line("nginx", &["-v"]).trim_start_matches("nginx version: "), first_line("openssl", &["version"]));
    let _ = writeln!(md, "- the same ECDSA P-256 self-signed certificate and key for all (`openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1`), TLS 1.3 negotiated, X25519; the same nginx `return 200` origin behind them over plain HTTP/1.1 keep-alive");
    let _ = writeln!(md, "- each proxy one worker pinned to core 0; load generators and the origin on core 1. {rounds} interleaved rounds of {secs} s (after 1 s of warm-up) per row; per row and proxy the round with the median rate");
    let _ = writeln!(md, "- **full handshakes**: the harness's own client (`src/tls.rs`: rustls, session resumption disabled, so no ticket or session id is ever offered), a closed loop of {TLS_CLIENTS} clients each doing connect, full handshake, one GET, close: a throughput ceiling, not a latency figure. HTTP/1.1 sends `Connection: close`; HTTP/2 is chosen by ALPN, one stream, then the client closes");
    let _ = writeln!(md, "- **keep-alive**: HTTP/1.1 `wrk -t1 -c{TLS_CLIENTS}` (OpenSSL client); HTTP/2 `oha --http2 --insecure -c {OHA_CONNS} -p {OHA_STREAMS}` ({}, rustls client); both closed loop, so throughput ceilings\n", first_line(&oha.display().to_string(), &["--version"]));
    md.push_str(&table(
        &[
            "row",
            "proxy",
            "per second",
            "vs bare Pingora",
            "vs nginx",
            "proxy CPU each",
            "load core busy",
            "errors",
        ],
        &rows,
    ));
    let _ = writeln!(md, "\nInstructions per request, counted by callgrind (`valgrind --tool=callgrind`, counting only while the load runs): the same binaries and configurations, {} requests by oha over {COUNT_CONNS} keep-alive connections per row (HTTP/2: {COUNT_H2_CONNS} connections of {COUNT_H2_STREAMS} streams) after a warm-up, the connections' full handshakes included. Unlike a rate, a count is the same on a busy machine as on a quiet one.\n", counted_requests(o.quick));
    md.push_str(&table(
        &[
            "proxy",
            "plain HTTP/1.1",
            "TLS HTTP/1.1",
            "TLS HTTP/2",
            "added by TLS (HTTP/1.1)",
            "bare Pingora's / this one's (TLS HTTP/1.1)",
        ],
        &counted_rows,
    ));
    let _ = writeln!(md, "\nTargets (issue 14), usher's ratios from this run:\n");
    let _ = writeln!(md, "- TLS keep-alive throughput >= 0.95x bare Pingora with TLS: HTTP/1.1 {ka1:.2}x ({}), HTTP/2 {ka2:.2}x ({})", verdict(ka1, 0.95), verdict(ka2, 0.95));
    let _ = writeln!(md, "  - against bare Pingora with usher's default peer timeouts (connect 1 s, read and write 10 s, `bare --timeouts --tls`), which usher always sets: HTTP/1.1 {kt1:.2}x, HTTP/2 {kt2:.2}x");
    let _ = writeln!(md, "  - without TLS, on the same processes: {plain_ratio:.2}x. By instructions, usher does {:.1}k more than bare Pingora per plain request and {:.1}k more per TLS request: the gap is usher's own work per request (identity, scoring and journeys, balancing and health, metrics, the headers it adds), the same with TLS or without", (instr(Contestant::Usher, 0) - instr(Contestant::Bare, 0)) / 1e3, (instr(Contestant::Usher, 1) - instr(Contestant::Bare, 1)) / 1e3);
    let _ = writeln!(md, "  - TLS itself adds {:.1}k instructions to an HTTP/1.1 request through usher and {:.1}k through bare Pingora: usher terminates TLS as cheaply as Pingora's own listener", (instr(Contestant::Usher, 1) - instr(Contestant::Usher, 0)) / 1e3, (instr(Contestant::Bare, 1) - instr(Contestant::Bare, 0)) / 1e3);
    let _ = writeln!(md, "- full handshakes per second >= 0.9x nginx: HTTP/1.1 {hs1:.2}x ({}), HTTP/2 {hs2:.2}x ({})", verdict(hs1, 0.9), verdict(hs2, 0.9));
    let _ = writeln!(md, "\nWhere the load core is near 100% the rate is the load generator's limit as much as the proxy's; the proxy's CPU per request (per handshake, in the handshake rows) is then the fairer comparison.\n");
    let _ = writeln!(md, "Reproduce (about {:.0} minutes; installs nginx, wrk, valgrind and `cargo install oha` when missing):\n\n```sh\nbench-harness/run tls\n```\n{TLS_END}", started.elapsed().as_secs_f64() / 60.0 + 1.0);
    let path = root.join("RESULTS.md");
    let old = std::fs::read_to_string(&path).unwrap_or_default();
    std::fs::write(&path, with_tls_section(&old, Some(&md)))?;
    print!("{md}");
    eprintln!("wrote the TLS section of {}", path.display());
    Ok(())
}

/// Connections (and HTTP/2 streams on each) of the counted runs: a handful, as under valgrind a
/// proxy serves a few hundred requests a second.
const COUNT_CONNS: usize = 8;
const COUNT_H2_CONNS: usize = 2;
const COUNT_H2_STREAMS: usize = 4;

fn counted_requests(quick: bool) -> u64 {
    if quick {
        2_000
    } else {
        20_000
    }
}

/// Instructions per request of each TLS contestant under callgrind: plain HTTP/1.1, TLS
/// HTTP/1.1, TLS HTTP/2, in that order.
fn tls_instructions(
    tools: &Tools,
    oha: &Path,
    origin: SocketAddr,
    files: &usher_bench_harness::tls::TlsFiles,
    quick: bool,
) -> anyhow::Result<Vec<(Contestant, [f64; 3])>> {
    let n = counted_requests(quick);
    let mut all = Vec::new();
    for c in TLS_CONTESTANTS {
        let dir = tools
            .work
            .join(format!("counted-{}", c.name().replace(' ', "-")));
        std::fs::create_dir_all(&dir)?;
        let out = dir.join("callgrind.out");
        let running = tools.start_tls_as(c, origin, files, "counted", Some(&out))?;
        let proc = running.proc.as_ref().expect("a proxy");
        let plain = running
            .plain
            .ok_or_else(|| anyhow::anyhow!("no plain listener beside the TLS one"))?;
        let rows = [
            (plain, false, None, COUNT_CONNS),
            (running.target, true, None, COUNT_CONNS),
            (running.target, true, Some(COUNT_H2_STREAMS), COUNT_H2_CONNS),
        ];
        let mut per = [0.0; 3];
        for (i, (target, tls, h2, conns)) in rows.into_iter().enumerate() {
            // Pools, caches and lazily made things are made before anything is counted.
            oha_requests(oha, target, tls, h2, conns, 200)?;
            let (instructions, run) =
                proc.count_instructions(&out, || oha_requests(oha, target, tls, h2, conns, n))?;
            anyhow::ensure!(
                run.requests > 0 && run.errors == 0,
                "{}: {} answered, {} errors in a counted run",
                c.name(),
                run.requests,
                run.errors
            );
            per[i] = instructions as f64 / run.requests as f64;
            eprintln!(
                "  counted: {:>24} {:<16} {:>8.0} instructions a request",
                c.name(),
                ["plain HTTP/1.1", "TLS HTTP/1.1", "TLS HTTP/2"][i],
                per[i]
            );
        }
        all.push((c, per));
    }
    Ok(all)
}

const TLS_BEGIN: &str = "<!-- tls:begin -->";
const TLS_END: &str = "<!-- tls:end -->";

/// `text` with its TLS section replaced by `section` (appended when it has none; removed when
/// `None`).
fn with_tls_section(text: &str, section: Option<&str>) -> String {
    let (before, after) = match (text.find(TLS_BEGIN), text.find(TLS_END)) {
        (Some(b), Some(e)) if e > b => (&text[..b], &text[e + TLS_END.len()..]),
        _ => (text, ""),
    };
    let mut out = before.trim_end().to_string();
    out.push_str("\n\n");
    if let Some(s) = section {
        out.push_str(s.trim_end());
        out.push('\n');
    }
    out.push_str(after.trim_start());
    out
}

/// The TLS section of `old` (RESULTS.md before a full run), kept at the end of `new`.
fn keep_tls_section(old: &str, new: &str) -> String {
    match (old.find(TLS_BEGIN), old.find(TLS_END)) {
        (Some(b), Some(e)) if e > b => with_tls_section(new, Some(&old[b..e + TLS_END.len()])),
        _ => new.to_string(),
    }
}

fn cores() -> usize {
    // The harness itself runs pinned to one core: count the machine's, not its own.
    std::fs::read_to_string("/proc/cpuinfo")
        .map(|c| c.lines().filter(|l| l.starts_with("processor")).count())
        .unwrap_or(0)
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let o = if quick {
        Opts {
            runs: 1,
            latency_rounds: 1,
            secs: 3,
            fault_secs: 12,
            fault_rate: 500.0,
            customers: vec![1_000, 100_000],
            quick,
        }
    } else {
        Opts {
            runs: 3,
            latency_rounds: 5,
            secs: 8,
            fault_secs: 20,
            fault_rate: 1000.0,
            customers: vec![1_000, 100_000, 1_000_000],
            quick,
        }
    };
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let work = std::env::temp_dir().join(format!("usher-bench-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let tools = Tools {
        usher: root.join("../target/release/usher"),
        usher_before: std::env::var_os("USHER_BEFORE").map(PathBuf::from),
        bare: root.join("target/release/bare"),
        nginx: which("nginx")?,
        haproxy: which("haproxy")?,
        peers: root.join("peers"),
        work: work.clone(),
    };
    anyhow::ensure!(
        tools.usher.exists(),
        "build usher first: cargo build --release (bench-harness/run does)"
    );
    which("wrk")?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    if args.iter().any(|a| a == "--tls" || a == "tls") {
        let r = tls_rows(&rt, &tools, &o, &root);
        let _ = std::fs::remove_dir_all(&work);
        return r;
    }
    if let Some(i) = args.iter().position(|a| a == "--only") {
        let f = args.get(i + 1).cloned().unwrap_or_default();
        let p = args.get(i + 2).cloned().unwrap_or_default();
        if f == "throughput" {
            return only_throughput(&tools, &o, &work);
        }
        if f == "latency" {
            let rate = args
                .get(i + 3)
                .and_then(|r| r.parse().ok())
                .unwrap_or(10_000.0);
            return only_latency(&rt, &tools, &o, &p, rate);
        }
        return only(&rt, &tools, &o, &f, &p);
    }
    let started = Instant::now();

    eprintln!(
        "== throughput (wrk -t1 -c32, {} runs of {} s, 1k customers)",
        o.runs, o.secs
    );
    let (origin_proc, origin) = tools.nginx_origin(LOAD_CORE)?;
    let tp = throughput(&tools, origin, &o, &work)?;
    let rps: BTreeMap<&str, f64> = tp
        .rps
        .iter()
        .map(|(k, v)| (*k, median(v.clone())))
        .collect();
    let weakest = Contestant::PROXIES
        .iter()
        .map(|c| rps[c.name()])
        .fold(f64::MAX, f64::min);
    eprintln!("== open-loop ceiling (each proxy, stepping down from 90% of its wrk rate)");
    let ceiling = open_loop_ceiling(&rt, &tools, origin, &rps)?;
    eprintln!("  {ceiling:.0} req/s");
    let max = weakest.min(ceiling);
    let rates: Vec<f64> = [0.25, 0.5, 0.75]
        .iter()
        .map(|f| (max * f / 100.0).round() * 100.0)
        .collect();

    eprintln!(
        "== latency at fixed rates {rates:?} (open loop, corrected for coordinated omission)"
    );
    let lat = latency(&rt, &tools, origin, &rates, &o)?;

    eprintln!("== customers");
    let cust = customers(&tools, origin, &o, &work)?;
    drop(origin_proc);

    eprintln!(
        "== faults (3 upstreams, {} req/s open loop, fault at {FAULT_AT} s)",
        o.fault_rate
    );
    let mut faults: Vec<(Fault, Vec<(Contestant, FaultRun)>)> = Vec::new();
    for fault in [Fault::Brownout, Fault::Slow, Fault::Kill] {
        let mut runs = Vec::new();
        for c in [
            Contestant::Nginx,
            Contestant::Haproxy,
            Contestant::Bare,
            Contestant::Usher,
        ] {
            let r = fault_run(&rt, &tools, c, fault, &o)?;
            let post: Vec<&Sample> = r
                .samples
                .iter()
                .filter(|s| s.due >= Duration::from_secs(FAULT_AT))
                .collect();
            let p = figures(post.iter().copied().filter(|s| s.class == Class::Protected));
            eprintln!(
                "  {:>12} {fault:?}: protected {} p99 {} max {}",
                c.name(),
                pct(p.success),
                ms(p.p99),
                ms(p.max)
            );
            runs.push((c, r));
        }
        faults.push((fault, runs));
    }

    // ---- RESULTS.md ----
    let mut md = String::new();
    let cpu = first_line(
        "sh",
        &["-c", "grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"],
    );
    let _ = writeln!(md, "# usher side by side: results\n");
    let _ = writeln!(
        md,
        "Generated by `bench-harness/run`{} on {} in {:.0} minutes; do not edit by hand.\n",
        if o.quick {
            " --quick (a smoke run: short, one round)"
        } else {
            ""
        },
        first_line("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
        started.elapsed().as_secs_f64() / 60.0
    );
    let _ = writeln!(
        md,
        "- machine: {} cores, {}, {}",
        cores(),
        cpu.trim(),
        first_line("uname", &["-sr"])
    );
    let _ = writeln!(md, "- usher {} (`{}`), Pingora 0.9.1; bare Pingora built with the same release profile (fat LTO, codegen-units 1, mimalloc)", env!("CARGO_PKG_VERSION"), first_line("git", &["-C", root.to_str().unwrap_or("."), "rev-parse", "--short", "HEAD"]));
    let _ = writeln!(
        md,
        "- {}; {}; {}",
        first_line("nginx", &["-v"]),
        first_line("haproxy", &["-v"]),
        first_line("wrk", &["-v"])
    );
    let _ = writeln!(md, "- every proxy runs one worker pinned to core 0 (`taskset -c 0`); wrk, the open-loop generator and the origins run on core 1; upstream keep-alive everywhere; peer configs in `bench-harness/peers/`");
    let _ = writeln!(md, "- usher runs with everything on: identity and trusted tiers, scoring and journeys, protection and rescue, the experience header, latency-aware balancing, passive and active health, retries, metrics, events to a JSON-lines file, a funnel and an objective\n");

    let _ = writeln!(md, "## Throughput\n\n`wrk -t1 -c32 -d{}s` against an nginx `return 200` origin, 1,000 distinct customers in the `x-customer-id` header, median of {} interleaved runs; CPU time per request and peak RSS of the proxy process. *bare Pingora + timeouts* is the baseline with usher's default peer timeouts (connect 1 s, read and write 10 s): what timeouts cost by themselves, apart from usher's own work. *usher, reload every second* is usher sent SIGHUP every second of the run: each reload reads and checks the file and puts a whole new generation in force.\n", o.secs, o.runs);
    let direct = rps["direct"];
    let bare = rps["bare Pingora"];
    let listed = throughput_contestants(&tools);
    let rows: Vec<Vec<String>> = listed
        .iter()
        .map(|c| {
            let n = c.name();
            let cpu = tp
                .cpu_us
                .get(n)
                .map(|v| format!("{:.1} us", median(v.clone())))
                .unwrap_or("-".into());
            let rss = tp
                .peak_rss_kb
                .get(n)
                .map(|k| format!("{:.1} MiB", *k as f64 / 1024.0))
                .unwrap_or("-".into());
            vec![
                n.to_string(),
                format!("{:.0}", rps[n]),
                format!("{:.2}x", rps[n] / direct),
                format!("{:.2}x", rps[n] / bare),
                cpu,
                rss,
            ]
        })
        .collect();
    md.push_str(&table(
        &[
            "",
            "requests/s",
            "vs direct",
            "vs bare Pingora",
            "CPU per request",
            "peak RSS",
        ],
        &rows,
    ));

    let _ = writeln!(md, "\n## Latency at fixed rates\n\nOpen loop (each request sent when due on any idle connection, up to 256; counted from when it was due if it had to wait for one), a warm-up second then {} s measured, at 25/50/75% of the weakest proxy's maximum. That maximum is the open-loop one: the highest rate at which every proxy kept p99 under 10 ms in a 3 s run ({:.0} req/s here), not wrk's {:.0}: wrk waits for answers and cannot overload a proxy; open-loop arrivals keep coming, and well below wrk's rate the Pingora proxies (bare and usher alike) fall into a queue they do not leave within the run, though neither core is saturated. {} interleaved rounds, and per rate and proxy the round with the median p99; what each proxy adds over going direct, and how busy the load core was (near 100%, the figure is the load core's limit, not the proxy's).\n", o.secs, ceiling, weakest, o.latency_rounds);
    let mut rows = Vec::new();
    for row in &lat {
        let d = &row.by["direct"].0;
        for c in Contestant::PROXIES {
            let (f, busy) = &row.by[c.name()];
            let add = |a: Duration, b: Duration| format!("+{}", ms(a.saturating_sub(b)));
            rows.push(vec![
                format!("{:.0}", row.rate),
                c.name().to_string(),
                add(f.p50, d.p50),
                add(f.p99, d.p99),
                add(f.p999, d.p999),
                pct(f.success),
                format!("{:.0}%", busy * 100.0),
            ]);
        }
    }
    md.push_str(&table(
        &[
            "req/s",
            "proxy",
            "p50 added",
            "p99 added",
            "p99.9 added",
            "success",
            "load core busy",
        ],
        &rows,
    ));

    let _ = writeln!(md, "\n## Customers\n\nusher's throughput with this many distinct customers (all tracked, each with a 16-step journey), and its resident memory. Memory per tracked customer is the RSS growth between the smallest and largest run divided by the customers added.\n");
    let rows: Vec<Vec<String>> = cust
        .iter()
        .map(|r| {
            vec![
                format!("{}", r.n),
                format!("{:.0}", r.rps),
                format!("{:.2}x", r.rps / cust[0].rps),
                format!("{:.0}", r.tracked),
                format!("{:.0} MiB", r.rss_kb as f64 / 1024.0),
            ]
        })
        .collect();
    md.push_str(&table(
        &["customers", "requests/s", "vs fewest", "tracked", "RSS"],
        &rows,
    ));
    if let (Some(a), Some(b)) = (cust.first(), cust.last()) {
        if b.tracked > a.tracked {
            let _ = writeln!(md, "\nMemory per tracked customer: {:.0} bytes (RSS). The allocation count (`cargo bench --bench customer_memory`) gives the heap alone.", (b.rss_kb as f64 - a.rss_kb as f64) * 1024.0 / (b.tracked - a.tracked));
        }
    }

    let _ = writeln!(md, "\n## Faults\n\nThree upstreams (usher's programmable origins); {} requests/s open loop for {} s, half from gold customers on `/checkout/pay` (usher's protected customers on a critical route; the other proxies treat everyone alike), half from standard customers browsing. The fault starts at {FAULT_AT} s; figures are for everything after it. nginx: `max_fails=1 fail_timeout=10s` and `proxy_next_upstream`; HAProxy: `observe layer7`, `on-error mark-down`, `option redispatch`, `retries 1`, health check; bare Pingora: round robin; usher: defaults.\n", o.fault_rate, o.fault_secs);
    for (fault, runs) in &faults {
        let _ = writeln!(md, "### {}\n", fault.name());
        let mut rows = Vec::new();
        for (c, r) in runs {
            let post: Vec<&Sample> = r
                .samples
                .iter()
                .filter(|s| s.due >= Duration::from_secs(FAULT_AT))
                .collect();
            let settled: Vec<&Sample> = post
                .iter()
                .copied()
                .filter(|s| s.due >= Duration::from_secs(FAULT_AT + 1))
                .collect();
            for (class, label) in [
                (Class::Protected, "protected"),
                (Class::Standard, "standard"),
            ] {
                let f = figures(post.iter().copied().filter(|s| s.class == class));
                let fs = figures(settled.iter().copied().filter(|s| s.class == class));
                let stop = match (class, r.stopped_after) {
                    (Class::Protected, Some(s)) => format!("{s:.0} s"),
                    (Class::Protected, None) => "never".into(),
                    _ => String::new(),
                };
                rows.push(vec![
                    c.name().into(),
                    label.into(),
                    pct(f.success),
                    ms(f.p50),
                    ms(f.p99),
                    ms(f.max),
                    pct(fs.success),
                    ms(fs.p99),
                    ms(fs.max),
                    stop,
                ]);
            }
        }
        md.push_str(&table(
            &[
                "proxy",
                "customers",
                "success",
                "p50",
                "p99",
                "max",
                "success after 1 s",
                "p99 after 1 s",
                "max after 1 s",
                "bad upstream out after",
            ],
            &rows,
        ));
        md.push('\n');
    }
    let (_, brown) = &faults[0];
    let series: Vec<(String, Vec<(f64, Duration)>)> = brown
        .iter()
        .map(|(c, r)| {
            (
                c.name().to_string(),
                per_second(&r.samples, o.fault_secs as usize, None),
            )
        })
        .collect();
    std::fs::write(
        root.join("brownout.svg"),
        chart(
            "Brownout at 5 s: one of three upstreams answers 50% 503 and 2 s late",
            &series,
            FAULT_AT as usize,
        ),
    )?;
    let _ = writeln!(
        md,
        "![brownout: success rate and p99 per second, one line per proxy](brownout.svg)\n"
    );
    let _ = writeln!(md, "## Reproduce\n\n```sh\nbench-harness/run{}\n```\n\nMicro benchmarks of the hot path: `cargo bench --bench hot_path`; memory per customer: `cargo bench --bench customer_memory`; sinks: `cargo bench --bench sink_throughput`.", if o.quick { " --quick" } else { "" });
    // The TLS section (`bench-harness/run tls`) is its own run: kept as it was.
    let old = std::fs::read_to_string(root.join("RESULTS.md")).unwrap_or_default();
    std::fs::write(root.join("RESULTS.md"), keep_tls_section(&old, &md))?;
    eprintln!(
        "wrote {} and {}",
        root.join("RESULTS.md").display(),
        root.join("brownout.svg").display()
    );
    let _ = std::fs::remove_dir_all(&work);
    Ok(())
}
