//! The process made ready before the first connection, so that the request path never waits on
//! the kernel for something that could have been done at startup. Two such waits were measured on
//! the bench machine, each a stall of the one proxy thread that every queued request then pays:
//!
//! - **The file-descriptor table.** Linux doubles it when a new descriptor does not fit (64, 128,
//!   256, ...), and in a multi-threaded process each doubling waits for an RCU grace period
//!   (`expand_files` -> `synchronize_rcu`) inside the `accept` or `socket` that needed the room:
//!   10 to 40 ms here. A proxy climbing to a few hundred connections under load crosses several,
//!   and the backlog of one stall opens the connections that cross the next. So the soft
//!   open-files limit goes up to the hard one (as Go's runtime does: the soft default of 1024 is a
//!   relic of `select`) and the table is grown once to [`FD_TABLE`] slots by duplicating a
//!   descriptor into the last one and closing it. The table never shrinks.
//! - **Transparent huge pages.** mimalloc asks for them on its arenas (`MADV_HUGEPAGE`), so the
//!   first touch of each 2 MiB zeroes all of it inside a page fault, and may compact memory first
//!   when none is free: 60 ms of `clear_page_erms` in one fault burst here, while the heap grew
//!   with new connections. Turned off for the process (`PR_SET_THP_DISABLE`), pages arrive 4 KiB
//!   at a time, each fault short. The cost is more TLB misses on a large customer store; the
//!   bench harness measures throughput at a million customers with it off.
//!
//! nginx and HAProxy workers are single-threaded, so they never wait on the first, and neither
//! asks for huge pages. What this module deliberately isn't: a connection limit (the cap that the
//! open-files limit implies is `crate::transport`'s) or general tuning; each setting here answers a
//! stall that was measured.

/// Descriptor slots made up front: 65,536 cost the kernel about half a MiB of pointers, and cover
/// far more connections than one usher instance is expected to hold. Beyond it the table still
/// grows, rarely.
pub const FD_TABLE: u64 = 65_536;

/// What [`prepare`] did, for the start-up log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Prepared {
    /// Soft limit on open files before and after.
    pub limit_before: u64,
    pub limit: u64,
    /// Descriptors the table now holds without growing.
    pub table: u64,
    /// Transparent huge pages are off for this process.
    pub thp_off: bool,
}

/// Raises the soft open-files limit to the hard one, grows the descriptor table to
/// `min(FD_TABLE, limit)` and turns transparent huge pages off. Failures are reported, never
/// fatal: usher still runs, with the kernel's usual behaviour.
#[cfg(unix)]
pub fn prepare() -> std::io::Result<Prepared> {
    use std::os::fd::AsRawFd;

    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let limit_before = lim.rlim_cur;
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: setrlimit reads the struct we pass. A refusal (macOS caps at OPEN_MAX) keeps
        // the old limit, which is still a working one.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            lim.rlim_cur = lim.rlim_max;
        }
    }
    let limit = lim.rlim_cur;
    let table = FD_TABLE.min(limit);
    if table > 0 {
        let any = std::fs::File::open("/dev/null")?;
        // SAFETY: F_DUPFD_CLOEXEC duplicates a descriptor we hold onto the lowest free slot at or
        // above the one asked for; we close the duplicate at once and own nothing else.
        let dup = unsafe {
            libc::fcntl(
                any.as_raw_fd(),
                libc::F_DUPFD_CLOEXEC,
                (table - 1) as libc::c_int,
            )
        };
        if dup < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `dup` was opened just above and is not shared.
        unsafe { libc::close(dup) };
    }
    Ok(Prepared {
        limit_before,
        limit,
        table,
        thp_off: thp_off(),
    })
}

/// The soft open-files limit now in force; `None` where it cannot be read.
#[cfg(unix)]
pub fn open_files_limit() -> Option<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into the struct we own.
    (unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0).then_some(lim.rlim_cur)
}

#[cfg(not(unix))]
pub fn open_files_limit() -> Option<u64> {
    None
}

#[cfg(target_os = "linux")]
fn thp_off() -> bool {
    // SAFETY: PR_SET_THP_DISABLE takes integer arguments only and affects this process alone.
    unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) == 0 }
}

#[cfg(all(unix, not(target_os = "linux")))]
fn thp_off() -> bool {
    false
}

#[cfg(not(unix))]
pub fn prepare() -> std::io::Result<Prepared> {
    Err(std::io::Error::other("not needed off unix"))
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    fn soft_limit() -> u64 {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
        lim.rlim_cur
    }

    #[test]
    fn the_limit_is_raised_the_top_slot_left_free_and_huge_pages_off() {
        let p = prepare().expect("prepare");
        assert_eq!(p.limit, soft_limit());
        assert!(p.limit >= p.limit_before);
        assert_eq!(p.table, FD_TABLE.min(p.limit));
        // The slot that grew the table was given back.
        let top = (p.table - 1) as libc::c_int;
        assert_eq!(unsafe { libc::fcntl(top, libc::F_GETFD) }, -1);
        // Doing it again is harmless.
        assert_eq!(prepare().expect("again").table, p.table);
    }
}
