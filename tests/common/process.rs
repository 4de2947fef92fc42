//! A `usher run` process under test: started on a configuration file, signalled, waited for, and
//! killed when the test is done with it (or panics).

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const USHER: &str = env!("CARGO_BIN_EXE_usher");

pub struct Proc(pub Child);

impl Proc {
    pub fn run(config: &Path, extra: &[&str]) -> Proc {
        let log =
            std::fs::File::create(config.with_extension(format!("{}.log", extra.len()))).unwrap();
        let child = Command::new(USHER)
            .args(["run", "--config"])
            .arg(config)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        Proc(child)
    }

    /// As [`Proc::run`], started in `dir` with the file named relative to it, as an operator
    /// often does: the folders it names must resolve the same way on every reload.
    pub fn run_in(dir: &Path, file: &str) -> Proc {
        let log = std::fs::File::create(dir.join(format!("{file}.log"))).unwrap();
        let child = Command::new(USHER)
            .current_dir(dir)
            .args(["run", "--config", file])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        Proc(child)
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.0.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{sig}");
    }

    /// Waits for the process to end; how long it took.
    pub fn wait(&mut self, within: Duration) -> Duration {
        let t = Instant::now();
        loop {
            if let Some(s) = self.0.try_wait().unwrap() {
                assert!(s.success(), "usher exited with {s:?}");
                return t.elapsed();
            }
            assert!(t.elapsed() < within, "usher did not exit within {within:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for the process to end however it ends (a `kill -9`, say).
    pub fn wait_any(&mut self, within: Duration) {
        let t = Instant::now();
        while self.0.try_wait().unwrap().is_none() {
            assert!(t.elapsed() < within, "usher did not exit within {within:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn alive(&mut self) -> bool {
        self.0.try_wait().unwrap().is_none()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
