//! Starting the contestants as pinned processes, and reading what they cost from /proc.

use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A process under test, killed when dropped.
pub struct Proc {
    pub name: String,
    child: Child,
}

impl Proc {
    /// Starts `program args` pinned to `core`.
    pub fn pinned(
        name: &str,
        core: usize,
        program: &Path,
        args: &[String],
    ) -> anyhow::Result<Proc> {
        Self::spawn(name, core, &[], program, args)
    }

    /// `taskset -c core [wrapper...] program args`, quiet.
    fn spawn(
        name: &str,
        core: usize,
        wrapper: &[String],
        program: &Path,
        args: &[String],
    ) -> anyhow::Result<Proc> {
        let child = Command::new("taskset")
            .arg("-c")
            .arg(core.to_string())
            .args(wrapper)
            .arg(program)
            .args(args)
            .env("RUST_LOG", "error")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        Ok(Proc {
            name: name.to_string(),
            child,
        })
    }

    /// Starts `program args` pinned to `core` under callgrind, counting nothing until told
    /// ([`Proc::count_instructions`]): instructions are what a shared, noisy machine cannot blur.
    pub fn pinned_counted(
        name: &str,
        core: usize,
        program: &Path,
        args: &[String],
        out: &Path,
    ) -> anyhow::Result<Proc> {
        let valgrind = [
            "valgrind".to_string(),
            "--tool=callgrind".to_string(),
            "--instr-atstart=no".to_string(),
            format!("--callgrind-out-file={}", out.display()),
        ];
        Self::spawn(name, core, &valgrind, program, args)
    }

    /// The instructions this process (started by [`Proc::pinned_counted`] writing to `out`)
    /// executes while `work` runs, with what `work` returns.
    pub fn count_instructions<T>(
        &self,
        out: &Path,
        work: impl FnOnce() -> anyhow::Result<T>,
    ) -> anyhow::Result<(u64, T)> {
        let control = |what: &str| -> anyhow::Result<()> {
            let ok = Command::new("callgrind_control")
                .args([what, &self.pid().to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()?
                .success();
            anyhow::ensure!(ok, "callgrind_control {what} {} failed", self.pid());
            Ok(())
        };
        // Each dump holds what was counted since the one before: start from a clean count.
        control("--dump")?;
        control("--instr=on")?;
        let done = work();
        control("--instr=off")?;
        control("--dump")?;
        let done = done?;
        // The newest dump: `out.N` with the largest N.
        let dir = out.parent().unwrap_or(Path::new("."));
        let stem = out
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let newest = std::fs::read_dir(dir)?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let n: u64 = name.strip_prefix(&format!("{stem}."))?.parse().ok()?;
                Some((n, e.path()))
            })
            .max_by_key(|(n, _)| *n)
            .map(|(_, p)| p)
            .ok_or_else(|| anyhow::anyhow!("callgrind wrote no dump next to {}", out.display()))?;
        let text = std::fs::read_to_string(&newest)?;
        // `totals:` is the sum of the dump's costs (its `summary:` line can say 0).
        let total = text
            .lines()
            .find_map(|l| l.strip_prefix("totals:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .ok_or_else(|| anyhow::anyhow!("no totals in {}", newest.display()))?;
        Ok((total, done))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// User plus system CPU time so far, in clock ticks.
    pub fn cpu_ticks(&self) -> u64 {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap_or_default();
        // Fields after the command name (which may contain spaces) start after the last ')'.
        let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
        let f: Vec<&str> = rest.split_whitespace().collect();
        let n = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        // utime and stime are fields 14 and 15 of the stat line: 12 and 13 after the name.
        n(11) + n(12)
    }

    fn status_kb(&self, key: &str) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }

    /// Peak resident set size, KiB.
    pub fn peak_rss_kb(&self) -> u64 {
        self.status_kb("VmHWM:")
    }

    pub fn rss_kb(&self) -> u64 {
        self.status_kb("VmRSS:")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Busy and total clock ticks of one core so far, from /proc/stat: how much of that core a
/// stretch of time took, whoever ran on it (processes, interrupts, the loopback TCP stack).
pub fn core_ticks(core: usize) -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let name = format!("cpu{core}");
    let Some(line) = stat
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name.as_str()))
    else {
        return (0, 0);
    };
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    let total: u64 = f.iter().take(8).sum();
    // idle and iowait are the 4th and 5th fields.
    let idle = f.get(3).copied().unwrap_or(0) + f.get(4).copied().unwrap_or(0);
    (total.saturating_sub(idle), total)
}

/// The share of `core` that was busy between two `core_ticks` readings, 0..=1.
pub fn busy_between(before: (u64, u64), after: (u64, u64)) -> f64 {
    let total = after.1.saturating_sub(before.1);
    if total == 0 {
        return 0.0;
    }
    after.0.saturating_sub(before.0) as f64 / total as f64
}

pub fn ticks_per_second() -> f64 {
    // The kernel's USER_HZ; 100 on every Linux the harness runs on.
    100.0
}

pub fn wait_listening(addr: SocketAddr, within: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    anyhow::bail!("nothing listening on {addr} after {within:?}")
}

pub fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
}

/// Renders a checked-in peer config: `{{KEY}}` placeholders replaced.
pub fn render(template: &str, vars: &[(&str, String)]) -> String {
    let mut s = template.to_string();
    for (k, v) in vars {
        s = s.replace(&format!("{{{{{k}}}}}"), v);
    }
    s
}
