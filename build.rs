//! Stamps the build with the commit it was built from, for `usher_build_info{commit}`: the
//! `USHER_COMMIT` environment variable when set (a packager building from a tarball), else
//! `git rev-parse --short HEAD`, else "unknown" (no git, or not a checkout). Never fails a build.

use std::path::Path;
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let s = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (!s.is_empty()).then_some(s)
}

fn main() {
    println!("cargo:rerun-if-env-changed=USHER_COMMIT");
    let commit = match std::env::var("USHER_COMMIT") {
        Ok(c) if !c.trim().is_empty() => c.trim().to_string(),
        _ => {
            // Rebuild when HEAD moves: HEAD itself (a checkout), the branch it points to (a
            // commit), and packed-refs (a gc). Paths that do not exist are skipped: cargo would
            // otherwise rerun this script on every build.
            let mut watch = vec!["HEAD".to_string(), "packed-refs".to_string()];
            if let Some(r) = git(&["symbolic-ref", "-q", "HEAD"]) {
                watch.push(r);
            }
            for w in watch {
                if let Some(p) = git(&["rev-parse", "--git-path", &w]) {
                    if Path::new(&p).exists() {
                        println!("cargo:rerun-if-changed={p}");
                    }
                }
            }
            git(&["rev-parse", "--short", "HEAD"]).unwrap_or_else(|| "unknown".to_string())
        }
    };
    // A commit id is hex; anything else (a stray quote or newline) becomes "unknown".
    let commit = if commit
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
    {
        commit
    } else {
        "unknown".to_string()
    };
    println!("cargo:rustc-env=USHER_COMMIT={commit}");
}
