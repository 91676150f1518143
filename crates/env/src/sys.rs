//! The system calls std does not offer: starting pcscd with the socket-activation
//! environment (its own pid in `LISTEN_PID` must be written after fork), as another
//! user, with a parent-death signal; signals; a process's socket inodes. Every
//! `unsafe` of the crate is here, each with its reason.

use std::ffi::{CString, OsString};
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixListener;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::time::{Duration, Instant};

fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Root of the initial user namespace, or of one that maps `nobody` too: able to
/// switch pcscd to `nobody` and to create pcscd's IPC directory. Root of a user
/// namespace that maps only itself (an ordinary user's, as an unprivileged
/// `unshare -r` makes) counts as the ordinary user it is.
pub fn is_privileged_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return false;
    }
    let nobody = u64::from(nobody().0);
    std::fs::read_to_string("/proc/self/uid_map")
        .map(|map| {
            map.lines().any(|l| {
                let f: Vec<u64> = l
                    .split_whitespace()
                    .filter_map(|n| n.parse().ok())
                    .collect();
                f.len() == 3 && f[0] <= nobody && nobody < f[0] + f[2]
            })
        })
        .unwrap_or(true)
}

/// The user `nobody` (uid, gid) from /etc/passwd, else 65534.
pub fn nobody() -> (u32, u32) {
    std::fs::read_to_string("/etc/passwd")
        .ok()
        .and_then(|p| {
            p.lines().find_map(|l| {
                let f: Vec<&str> = l.split(':').collect();
                (f.len() > 3 && f[0] == "nobody")
                    .then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?)))
                    .flatten()
            })
        })
        .unwrap_or((65534, 65534))
}

/// 64 random bits (for names): the kernel's, else time and pid mixed.
pub fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    if std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .is_ok()
    {
        return u64::from_ne_bytes(b);
    }
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    (t.as_nanos() as u64) ^ (u64::from(std::process::id()) << 32)
}

pub enum Output<'a> {
    Inherit,
    Null,
    Fd(&'a std::fs::File),
}

pub struct Spawn<'a> {
    pub program: &'a Path,
    pub args: &'a [OsString],
    /// The whole environment of the program (LISTEN_* are added).
    pub env: &'a [(OsString, OsString)],
    pub listener: &'a UnixListener,
    pub output: Output<'a>,
    /// Switch to this (uid, gid), with no supplementary groups.
    pub user: Option<(u32, u32)>,
    pub parent_death_signal: Option<libc::c_int>,
}

/// A copy of `fd` at 10 or above, close-on-exec: clear of 0-3, which the child
/// overwrites with dup2.
fn high_copy(fd: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: F_DUPFD_CLOEXEC on an open fd returns a new fd we then own.
    let new = check(unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 10) })?;
    // SAFETY: `new` is a fresh fd owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(new) })
}

fn cstring(b: &[u8]) -> io::Result<CString> {
    CString::new(b).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in argument"))
}

/// Where the child failed, for the parent's message.
const STAGES: [&str; 5] = ["dup2", "setgroups/setgid", "setuid", "prctl", "execve"];

/// Starts `program` with the listening socket as fd 3, `LISTEN_FDS=1` and
/// `LISTEN_PID=<its pid>` (what sd_listen_fds checks), in a process group of its own,
/// with no blocked signals, stdin on /dev/null. Returns its pid once it has exec'd,
/// or why it could not.
pub fn spawn_activated(s: &Spawn) -> io::Result<i32> {
    // Everything the child needs is made here: after fork it may not allocate.
    let program = cstring(s.program.as_os_str().as_bytes())?;
    let mut args = vec![program.clone()];
    for a in s.args {
        args.push(cstring(a.as_bytes())?);
    }
    let mut env = vec![];
    for (k, v) in s.env {
        let mut kv = k.as_bytes().to_vec();
        kv.push(b'=');
        kv.extend_from_slice(v.as_bytes());
        env.push(cstring(&kv)?);
    }
    env.push(cstring(b"LISTEN_FDS=1")?);
    // "LISTEN_PID=" and room for the digits, NUL-filled: the child writes its pid.
    let mut listen_pid = b"LISTEN_PID=".to_vec();
    let digits_at = listen_pid.len();
    listen_pid.extend_from_slice(&[0u8; 24]);
    let argv: Vec<*const libc::c_char> = args
        .iter()
        .map(|a| a.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect();
    let mut envp: Vec<*const libc::c_char> = env.iter().map(|e| e.as_ptr()).collect();
    envp.push(listen_pid.as_ptr().cast());
    envp.push(std::ptr::null());
    let pid_digits: *mut u8 = listen_pid[digits_at..].as_mut_ptr();

    let devnull = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")?;
    let stdin = high_copy(devnull.as_raw_fd())?;
    let (out, err) = match &s.output {
        Output::Inherit => (high_copy(1)?, high_copy(2)?),
        Output::Null => (
            high_copy(devnull.as_raw_fd())?,
            high_copy(devnull.as_raw_fd())?,
        ),
        Output::Fd(f) => (high_copy(f.as_raw_fd())?, high_copy(f.as_raw_fd())?),
    };
    let sock = high_copy(s.listener.as_raw_fd())?;
    let mut pipe = [0; 2];
    // SAFETY: pipe2 writes two fds into the array it is given.
    check(unsafe { libc::pipe2(pipe.as_mut_ptr(), libc::O_CLOEXEC) })?;
    // SAFETY: both are fresh fds we own from here on.
    let (report_r, report_w) =
        unsafe { (OwnedFd::from_raw_fd(pipe[0]), OwnedFd::from_raw_fd(pipe[1])) };
    let report_w = {
        let low = report_w;
        high_copy(low.as_raw_fd())?
    };
    let user = s.user;
    let pdeath = s.parent_death_signal;
    let fds = [
        stdin.as_raw_fd(),
        out.as_raw_fd(),
        err.as_raw_fd(),
        sock.as_raw_fd(),
    ];
    let (w, program_ptr) = (report_w.as_raw_fd(), program.as_ptr());
    // SAFETY: getpid has no preconditions.
    let parent = unsafe { libc::getpid() };

    // SAFETY: fork; the child below calls only async-signal-safe functions (dup2,
    // sigprocmask, signal, setpgid, setgroups, setgid, setuid, prctl, getppid,
    // getpid, execve, write, _exit) and writes only into memory prepared above (the
    // LISTEN_PID digits); it never returns into Rust code of the parent's.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // SAFETY: see the fork above; every pointer is into buffers that live on
        // in the child's copy of this stack frame.
        unsafe {
            let fail = |stage: u8| -> ! {
                let errno = *libc::__errno_location();
                let mut msg = [0u8; 5];
                msg[0] = stage;
                msg[1..].copy_from_slice(&errno.to_ne_bytes());
                libc::write(w, msg.as_ptr().cast(), msg.len());
                libc::_exit(127)
            };
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::pthread_sigmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
            // Rust ignores SIGPIPE; an exec'd program expects the default.
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
            libc::setpgid(0, 0);
            for (target, fd) in fds.iter().enumerate() {
                // dup2 makes a copy without close-on-exec: 0-2 and the socket at 3.
                if libc::dup2(*fd, target as libc::c_int) < 0 {
                    fail(0);
                }
            }
            if let Some((uid, gid)) = user {
                if libc::setgroups(0, std::ptr::null()) < 0 || libc::setgid(gid) < 0 {
                    fail(1);
                }
                if libc::setuid(uid) < 0 {
                    fail(2);
                }
            }
            // After the uid switch, which clears it.
            if let Some(sig) = pdeath {
                if libc::prctl(libc::PR_SET_PDEATHSIG, sig as libc::c_ulong, 0, 0, 0) < 0 {
                    fail(3);
                }
                if libc::getppid() != parent {
                    libc::_exit(127); // the parent died already
                }
            }
            let mut n = libc::getpid() as u32;
            let mut digits = [0u8; 12];
            let mut len = 0;
            loop {
                digits[len] = b'0' + (n % 10) as u8;
                len += 1;
                n /= 10;
                if n == 0 {
                    break;
                }
            }
            for i in 0..len {
                *pid_digits.add(i) = digits[len - 1 - i];
            }
            libc::execve(program_ptr, argv.as_ptr(), envp.as_ptr());
            fail(4);
        }
    }
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    drop(report_w);
    let mut msg = Vec::new();
    let _ = std::fs::File::from(report_r).read_to_end(&mut msg);
    if msg.len() == 5 {
        let mut status = 0;
        // SAFETY: reaps the child that failed before exec; status is a valid int.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        let errno = i32::from_ne_bytes([msg[1], msg[2], msg[3], msg[4]]);
        let stage = STAGES.get(usize::from(msg[0])).unwrap_or(&"?");
        let e = io::Error::from_raw_os_error(errno);
        return Err(io::Error::new(e.kind(), format!("{stage}: {e}")));
    }
    Ok(pid)
}

/// Signals `pid` only while it is still our child: once reaped (perhaps by a
/// caller's waitpid(-1)), its number may belong to another process.
pub fn kill(pid: i32, sig: libc::c_int) {
    let ours = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let (_, rest) = s.rsplit_once(')')?;
            rest.split_whitespace().nth(1)?.parse::<u32>().ok()
        })
        == Some(std::process::id());
    if pid > 0 && ours {
        // SAFETY: kill takes plain integers; a process already gone is fine here.
        unsafe { libc::kill(pid, sig) };
    }
}

/// If `pid` (our child) has ended: how, reaping it. Without reaping it first looks
/// at /proc so that a caller reaping with waitpid(-1) elsewhere keeps working.
pub fn exited(pid: i32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok();
    let zombie = stat
        .as_deref()
        .and_then(|s| s.rsplit_once(')'))
        .map(|(_, rest)| rest.trim_start().starts_with('Z'))
        .unwrap_or(true);
    if !zombie {
        return None;
    }
    let mut status = 0;
    // SAFETY: status is a valid int for waitpid to write.
    let got = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
    Some(if got == pid {
        std::process::ExitStatus::from_raw(status).to_string()
    } else {
        "ended".into()
    })
}

/// Ends `pid` (our child): SIGTERM, SIGKILL after `grace`, reaped.
pub fn terminate(pid: i32, grace: Duration) {
    kill(pid, libc::SIGTERM);
    let deadline = Instant::now() + grace;
    let mut killed = false;
    loop {
        let mut status = 0;
        // SAFETY: status is a valid int for waitpid to write.
        let got = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        // Reaped now, or by someone else already (ECHILD).
        if got == pid || got < 0 {
            return;
        }
        if !killed && Instant::now() >= deadline {
            kill(pid, libc::SIGKILL);
            killed = true;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// The inodes of `pid`'s sockets (from /proc/PID/fd: `socket:[N]`); None where
/// that is not ours to read (another user's process, and no CAP_SYS_PTRACE, as in
/// a container).
pub fn socket_inodes(pid: i32) -> Option<Vec<u64>> {
    let mut inodes = vec![];
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.flatten() {
        // The listing may be allowed where the links are not: then we know nothing.
        let target = std::fs::read_link(entry.path()).ok()?;
        let inode: Option<u64> = target
            .to_str()
            .and_then(|t| t.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok());
        inodes.extend(inode);
    }
    Some(inodes)
}

/// The effective uid of this process.
pub fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// One NETLINK_SOCK_DIAG dump of the TCP sockets of `family` (AF_INET, AF_INET6)
/// in LISTEN state: the raw reply messages, concatenated. The kernel walks only its
/// listening table for this, which /proc/net/tcp (every connection, TIME_WAIT
/// included) cannot offer: on a busy machine that file costs milliseconds a read.
pub fn diag_listeners(family: u8) -> io::Result<Vec<u8>> {
    const SOCK_DIAG_BY_FAMILY: u16 = 20;
    const TCP_LISTEN: u32 = 10;
    // nlmsghdr (16 bytes) + inet_diag_req_v2 (56 bytes).
    let mut req = [0u8; 72];
    req[0..4].copy_from_slice(&72u32.to_ne_bytes());
    req[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    let flags = (libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16;
    req[6..8].copy_from_slice(&flags.to_ne_bytes());
    req[8..12].copy_from_slice(&1u32.to_ne_bytes());
    req[16] = family;
    req[17] = libc::IPPROTO_TCP as u8;
    req[20..24].copy_from_slice(&(1u32 << TCP_LISTEN).to_ne_bytes());
    // SAFETY: socket takes plain integers; the result is checked and owned below.
    let fd = check(unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            libc::NETLINK_SOCK_DIAG,
        )
    })?;
    // SAFETY: fd is a fresh socket owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_nl is plain data; zeroes address the kernel.
    let mut kernel: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    kernel.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    // SAFETY: req and kernel are valid for the lengths given.
    let sent = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            req.as_ptr().cast(),
            req.len(),
            0,
            (&kernel as *const libc::sockaddr_nl).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut out = vec![];
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        // SAFETY: buf is valid for writes of its length.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let chunk = &buf[..n as usize];
        out.extend_from_slice(chunk);
        // The dump ends with NLMSG_DONE (or an NLMSG_ERROR) in the last datagram.
        let mut at = 0;
        let mut done = n == 0;
        while at + 16 <= chunk.len() {
            let len = u32::from_ne_bytes(chunk[at..at + 4].try_into().unwrap()) as usize;
            let kind = u16::from_ne_bytes(chunk[at + 4..at + 6].try_into().unwrap());
            if kind == libc::NLMSG_DONE as u16 || kind == libc::NLMSG_ERROR as u16 {
                done = true;
            }
            if len < 16 {
                break;
            }
            at += (len + 3) & !3;
        }
        if done {
            return Ok(out);
        }
    }
}
