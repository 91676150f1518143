//! The system calls std does not wrap: namespaces, mounts, the loopback interface,
//! signals taken synchronously, and reaping any child. Every `unsafe` of vpcd-run is
//! here, each with its reason.

use std::ffi::CString;
use std::io;
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::time::Duration;

pub use libc::{
    CLONE_NEWNET, CLONE_NEWNS, CLONE_NEWPID, CLONE_NEWUSER, SIGCHLD, SIGHUP, SIGINT, SIGKILL,
    SIGQUIT, SIGTERM, SIGUSR1,
};

fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// The real user and group ids.
pub fn ids() -> (u32, u32) {
    // SAFETY: getuid and getgid have no preconditions and cannot fail.
    unsafe { (libc::getuid(), libc::getgid()) }
}

/// Moves this process into new namespaces (`CLONE_NEW*` flags). For a user
/// namespace the process must still be single-threaded.
pub fn unshare(flags: libc::c_int) -> io::Result<()> {
    // SAFETY: unshare takes flags only; it changes this process's namespaces, which
    // is the point, and touches no memory of ours.
    check(unsafe { libc::unshare(flags) }).map(drop)
}

fn cstring(s: &str) -> io::Result<CString> {
    CString::new(s).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in path"))
}

/// mount(2). `source`, `fstype` and `data` may be empty (passed as NULL).
pub fn mount(
    source: &str,
    target: &str,
    fstype: &str,
    flags: libc::c_ulong,
    data: &str,
) -> io::Result<()> {
    let (source, target, fstype, data) = (
        cstring(source)?,
        cstring(target)?,
        cstring(fstype)?,
        cstring(data)?,
    );
    let or_null = |s: &CString| {
        if s.as_bytes().is_empty() {
            std::ptr::null()
        } else {
            s.as_ptr()
        }
    };
    // SAFETY: every pointer is NULL or a NUL-terminated string that outlives the call.
    let ret = unsafe {
        libc::mount(
            or_null(&source),
            target.as_ptr(),
            or_null(&fstype),
            flags,
            or_null(&data).cast(),
        )
    };
    check(ret).map(drop)
}

pub use libc::{MS_NODEV, MS_NOEXEC, MS_NOSUID, MS_PRIVATE, MS_REC};

/// Brings the loopback interface of this network namespace up (`ip link set lo up`).
pub fn loopback_up() -> io::Result<()> {
    // SAFETY: socket takes plain integers; the result is checked.
    let fd =
        check(unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) })?;
    // SAFETY: ifreq is plain old data (arrays, integers, a union of them); all zeroes
    // is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: fd is our open socket; req is a valid ifreq naming "lo" that the
    // kernel reads and (for SIOCGIFFLAGS) writes, within its size.
    let result = check(unsafe { libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut req) }).and_then(|_| {
        // SAFETY: SIOCGIFFLAGS filled in ifru_flags, the union member read here.
        unsafe { req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
        // SAFETY: as above, the kernel only reads req.
        check(unsafe { libc::ioctl(fd, libc::SIOCSIFFLAGS, &req) })
    });
    // SAFETY: fd is ours and closed once.
    unsafe { libc::close(fd) };
    result.map(drop)
}

fn sigset(signals: &[libc::c_int]) -> libc::sigset_t {
    // SAFETY: sigemptyset initializes the set it is given; sigaddset with a valid
    // signal number only sets a bit in it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for &s in signals {
            libc::sigaddset(&mut set, s);
        }
        set
    }
}

/// Blocks these signals in the calling thread (and threads it starts later), so that
/// [`wait_signal`] takes them. Children inherit the mask through fork and exec (std's
/// `Command` keeps it): start them with [`unblock_signals_in_child`].
pub fn block_signals(signals: &[libc::c_int]) -> io::Result<()> {
    let set = sigset(signals);
    // SAFETY: set is a valid sigset_t; the old mask is not asked for (NULL).
    let ret = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if ret != 0 {
        return Err(io::Error::from_raw_os_error(ret));
    }
    Ok(())
}

/// A signal taken by [`wait_signal`]: its number and whether the terminal sent it
/// (Ctrl-C, Ctrl-\: the whole foreground process group got it too).
#[derive(Debug, Clone, Copy)]
pub struct Signal {
    pub number: libc::c_int,
    pub from_terminal: bool,
}

/// Takes one of the (blocked) `signals`, waiting up to `timeout` (forever if None).
pub fn wait_signal(signals: &[libc::c_int], timeout: Option<Duration>) -> Option<Signal> {
    let set = sigset(signals);
    // SAFETY: siginfo_t is plain data; all zeroes is valid and the kernel fills it.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    let ts = timeout.map(|t| libc::timespec {
        tv_sec: t.as_secs() as libc::time_t,
        tv_nsec: t.subsec_nanos() as libc::c_long,
    });
    let ts_ptr = ts.as_ref().map_or(std::ptr::null(), |t| t as *const _);
    // SAFETY: set, info and ts (or NULL) are valid for the call.
    let sig = unsafe { libc::sigtimedwait(&set, &mut info, ts_ptr) };
    (sig > 0).then_some(Signal {
        number: sig,
        from_terminal: info.si_code == libc::SI_KERNEL,
    })
}

/// Sends a signal to one process. Never to a group or to all (pid <= 0 does
/// nothing): see [`kill_namespace`].
pub fn kill(pid: i32, sig: libc::c_int) {
    if pid > 0 {
        // SAFETY: kill takes plain integers; a process already gone is not an error.
        unsafe { libc::kill(pid, sig) };
    }
}

/// From pid 1 of a PID namespace: the signal to every other process of the
/// namespace (kill(-1)). Anywhere else it does nothing, since there kill(-1) would
/// reach every process of the machine this user may signal.
pub fn kill_namespace(sig: libc::c_int) {
    if getpid() == 1 {
        // SAFETY: as in kill; as pid 1, -1 means this namespace's other processes.
        unsafe { libc::kill(-1, sig) };
    }
}

pub fn getpid() -> i32 {
    // SAFETY: getpid has no preconditions and cannot fail.
    unsafe { libc::getpid() }
}

/// Reaps one ended child (any, or `pid`) without waiting: Ok(None) if none ended
/// yet, Err(ECHILD) if there are no children left.
pub fn reap(pid: i32) -> io::Result<Option<(i32, ExitStatus)>> {
    let mut status = 0;
    // SAFETY: status is a valid int for waitpid to write.
    let got = check(unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) })?;
    Ok((got > 0).then(|| (got, ExitStatus::from_raw(status))))
}

/// Makes `cmd`'s process start with no blocked signals (std's `Command` keeps the
/// parent's mask, which here blocks the signals [`wait_signal`] takes).
pub fn unblock_signals_in_child(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs in the child between fork and exec, where only
    // async-signal-safe functions may be called: sigemptyset and pthread_sigmask
    // (sigprocmask) are, and it allocates nothing.
    unsafe {
        cmd.pre_exec(|| {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            let ret = libc::pthread_sigmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
            if ret != 0 {
                return Err(io::Error::from_raw_os_error(ret));
            }
            Ok(())
        })
    };
}

/// Asks the kernel to send `sig` to this process when its parent (the outer
/// vpcd-run) dies, even of SIGKILL, so that the environment never outlives it.
pub fn signal_on_parent_death(sig: libc::c_int) -> io::Result<()> {
    // SAFETY: PR_SET_PDEATHSIG takes a signal number; no memory is passed.
    check(unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, sig as libc::c_ulong, 0, 0, 0) }).map(drop)
}

/// Makes this process the reaper of its descendants' orphans
/// (`PR_SET_CHILD_SUBREAPER`), as pid 1 of a PID namespace is.
pub fn become_subreaper() -> io::Result<()> {
    // SAFETY: PR_SET_CHILD_SUBREAPER takes a flag; no memory is passed.
    check(unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1 as libc::c_ulong, 0, 0, 0) })
        .map(drop)
}

/// `cmd`'s process gets `sig` when this thread dies (the environment's programs
/// end with a vpcd-run that is killed, where no PID namespace ends them).
pub fn parent_death_signal_in_child(cmd: &mut std::process::Command, sig: libc::c_int) {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl is async-signal-safe and only takes integers; runs between fork
    // and exec.
    unsafe {
        cmd.pre_exec(move || {
            check(libc::prctl(
                libc::PR_SET_PDEATHSIG,
                sig as libc::c_ulong,
                0,
                0,
                0,
            ))
            .map(drop)
        })
    };
}

/// This process's children: from /proc/self/task/*/children (each thread's), else
/// from every process's parent in /proc (slower: a few hundred files).
pub fn children() -> Vec<i32> {
    let from_tasks = std::fs::read_dir("/proc/self/task").ok().and_then(|tasks| {
        let mut pids = vec![];
        for task in tasks.flatten() {
            let list = std::fs::read_to_string(task.path().join("children")).ok()?;
            pids.extend(
                list.split_whitespace()
                    .filter_map(|p| p.parse::<i32>().ok()),
            );
        }
        Some(pids)
    });
    if let Some(pids) = from_tasks {
        return pids;
    }
    let me = std::process::id();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return vec![];
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| {
                    let (_, rest) = s.rsplit_once(')')?;
                    rest.split_whitespace().nth(1)?.parse::<u32>().ok()
                })
                == Some(me)
        })
        .collect()
}
