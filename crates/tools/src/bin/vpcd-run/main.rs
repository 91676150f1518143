//! `vpcd-run`: runs a command in a private smart card environment: its own pcscd with
//! the vpcd driver, in private mount, network and PID namespaces, so that every
//! environment has the default port 35963 and the readers `Virtual PCD 00 00` and
//! `00 01`, however many run side by side; the built-in card sits in slot 0 and is
//! usable when the command starts.
//!
//! Two processes: this one (the "outer") enters new user (unless root), mount and
//! network namespaces, mounts a tmpfs over /run/pcscd and brings `lo` up, then starts
//! itself again as pid 1 of a new PID namespace (`inner`), which starts pcscd, the
//! card and the command, reaps every process and, on exit, ends them all. The kernel
//! kills whatever is left when pid 1 ends, and the namespaces (with their tmpfs)
//! vanish with their last process: nothing of the host's pcscd, /run or ports is
//! touched, and nothing outlives the run.
//!
//! Where namespaces are refused (a container under Docker's default seccomp profile,
//! a kernel or AppArmor policy without unprivileged user namespaces), `--isolation
//! auto` (the default) falls back to the namespace-free mode: the `vpcd-env`
//! library's pcscd, socket-activated in a private temporary directory, on free
//! loopback ports; the inner vpcd-run is then a child subreaper instead of pid 1 of
//! a PID namespace, and ends its descendants one by one (see `inner`).
//!
//! Why system calls (the `libc` crate, in `sys`) rather than `unshare(1)`: vpcd-run
//! must bring `lo` up, be pid 1 (reaping, forwarding signals) and report each
//! failure precisely; one process with a dozen calls does that without depending on
//! util-linux's option set or parsing its messages.

#![deny(unsafe_code)]

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

mod inner;
// The system calls std does not wrap (namespaces, signals, lo up): the only unsafe.
#[allow(unsafe_code)]
mod sys;
#[allow(dead_code)] // the parts vpcd-wait uses
#[path = "../vpcd-wait/wait.rs"]
mod wait;

/// Where pcscd (as built by every distribution we know) puts its socket.
pub const SOCKET_DIR: &str = "/run/pcscd";
pub const SOCKET: &str = "/run/pcscd/pcscd.comm";
/// vpcd-run's files inside the environment (reader.conf, pcscd's log, the card's
/// control socket), on the private tmpfs.
pub const PRIVATE_DIR: &str = "/run/pcscd/vpcd-run";
pub const FRIENDLY_NAME: &str = "Virtual PCD";
pub const PORT: u16 = 35963;

const INSTALL_PCSCD: &str =
    "install pcscd (Debian/Ubuntu: apt-get install pcscd; Fedora: dnf install pcsc-lite)";

/// Exit status for vpcd-run's own failures (as env(1) and timeout(1) do).
pub const EXIT_SETUP: u8 = 125;

fn help() -> String {
    format!(
        "\
vpcd-run {version}: run a command in a private smart card environment

Usage: vpcd-run [options] [--] [COMMAND [ARG...]]

Starts a pcscd of its own with the vpcd driver (reader \"{name}\", {slots} slots,
ports {port} and up) in private mount, network and PID namespaces, puts the built-in
card (vpcd-vicc) in slot 0, waits until it is usable, then runs COMMAND (default:
$SHELL) there. Every environment looks the same, however many run at once:
readers \"{name} 00 00\" and \"{name} 00 01\", port {port} on localhost. The host's
pcscd, /run and ports are left alone. On exit, Ctrl-C or SIGTERM everything the
environment started ends and its files vanish.

COMMAND sees:
  PCSCLITE_CSOCK_NAME  {socket} (the default path, private to the
                       environment; without namespaces: the socket in a
                       private temporary directory)
  VPCD_READER          \"{name} 00 00\"
  VPCD_PORT            {port} (slot N: {port}+N, on 127.0.0.1 and ::1; without
                       namespaces: a free port, on 127.0.0.1)
  VPCD_CARD_CONTROL    the built-in card's control socket:
                       vpcd-vicc ctl \"$VPCD_CARD_CONTROL\" remove|insert|reset
  VPCD_CARD_PID        the built-in card's pid (kill -USR1: remove, -USR2: insert)

Without namespaces (a container's default seccomp profile refuses them, or the
kernel refuses unprivileged user namespaces), vpcd-run falls back to a pcscd
started by socket activation in a private temporary directory, on free loopback
ports: COMMAND then sees that socket in PCSCLITE_CSOCK_NAME and the real port in
VPCD_PORT; readers keep their names. See docs/CONTAINERS.md.

Options:
      --isolation MODE namespaces, none (no namespace, no privilege) or auto
                       (default: namespaces where allowed, else none)
      --no-namespaces  --isolation none
      --ports LOW-HIGH with --isolation none: the slots' ports from this range
                       (default: free ports the kernel hands out)
  -s, --slots N        slots of the reader, 1 to 16 (default {slots})
  -n, --no-card        no built-in card: the command brings its own vicc (e.g.
                       jCardSim, the Python vicc) on $VPCD_PORT
      --fs DIR         the built-in card's files from DIR (vpcd-vicc --fs)
      --atr HEX        the built-in card's ATR (vpcd-vicc --atr)
      --pcscd PATH     the pcscd to run (default: pcscd from PATH, or /usr/sbin)
      --driver PATH    the libifdvpcd.so to load (default: the one beside
                       vpcd-run, else the installed one)
      --vicc PATH      the vpcd-vicc to start (default: beside vpcd-run, or PATH)
  -t, --timeout SECS   how long the environment may take to be ready (default 10)
  -d, --debug          pcscd and the driver log debug lines, live on stderr
      --log FILE       copy pcscd's log to FILE at the end
  -q, --quiet          do not show pcscd's log when COMMAND fails
  -h, --help           this help
  -V, --version        version

With namespaces: needs root, or unprivileged user namespaces (then COMMAND runs
as root of its own user namespace, which is you outside it). Without: a pcscd
built with libsystemd (Debian's, Ubuntu's, Fedora's) and its directory /run/pcscd
(root creates it when missing; an ordinary user needs it made once).

Examples:
  vpcd-run opensc-tool -r '{name} 00 00' -a
  vpcd-run -- sh -c 'vpcd-vicc ctl \"$VPCD_CARD_CONTROL\" remove && ./test-removal'
  vpcd-run --no-card -- sh -c 'java -jar jcardsim-vicc.jar & vpcd-wait && ./tests'

Exit status: COMMAND's (128+N if a signal N ended it); {setup} if the environment
could not be set up (pcscd's log is shown).
",
        version = env!("CARGO_PKG_VERSION"),
        name = FRIENDLY_NAME,
        slots = 2,
        port = PORT,
        socket = SOCKET,
        setup = EXIT_SETUP,
    )
}

/// How the environment is kept apart from the machine and from the others.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isolation {
    /// Private mount, network and PID namespaces: fixed socket path and port.
    Namespaces,
    /// None: a socket-activated pcscd in a private directory, free ports.
    None,
    /// Namespaces where the kernel allows them, else none.
    Auto,
}

impl Isolation {
    fn parse(s: &str) -> Result<Isolation, String> {
        match s {
            "namespaces" => Ok(Isolation::Namespaces),
            "none" => Ok(Isolation::None),
            "auto" => Ok(Isolation::Auto),
            _ => Err(format!(
                "--isolation {s}: expected namespaces, none or auto"
            )),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Isolation::Namespaces => "namespaces",
            Isolation::None => "none",
            Isolation::Auto => "auto",
        }
    }
}

/// The options; `pcscd`, `driver` and `vicc` are absolute once resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct Options {
    pub isolation: Isolation,
    pub ports: Option<(u16, u16)>,
    pub slots: u8,
    pub card: bool,
    pub fs: Option<PathBuf>,
    pub atr: Option<String>,
    pub pcscd: Option<PathBuf>,
    pub driver: Option<PathBuf>,
    pub vicc: Option<PathBuf>,
    pub timeout: Duration,
    pub debug: bool,
    pub log: Option<PathBuf>,
    pub quiet: bool,
    pub command: Vec<OsString>,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            isolation: Isolation::Auto,
            ports: None,
            slots: 2,
            card: true,
            fs: None,
            atr: None,
            pcscd: None,
            driver: None,
            vicc: None,
            timeout: Duration::from_secs(10),
            debug: false,
            log: None,
            quiet: false,
            command: vec![],
        }
    }
}

#[derive(Debug, PartialEq)]
enum Parsed {
    Run(Options),
    Inner(Options),
    Help,
    Version,
}

fn parse_args<I: IntoIterator<Item = OsString>>(args: I) -> Result<Parsed, String> {
    use lexopt::prelude::*;
    let mut p = lexopt::Parser::from_args(args);
    let mut o = Options::default();
    let mut inner = false;
    let e = |e: lexopt::Error| e.to_string();
    while let Some(arg) = p.next().map_err(e)? {
        match arg {
            Short('s') | Long("slots") => {
                let n: u8 = p.value().map_err(e)?.parse().map_err(e)?;
                if !(1..=16).contains(&n) {
                    return Err(format!("--slots {n}: expected 1 to 16"));
                }
                o.slots = n;
            }
            Short('n') | Long("no-card") => o.card = false,
            Long("isolation") => {
                o.isolation = Isolation::parse(&p.value().map_err(e)?.string().map_err(e)?)?
            }
            Long("no-namespaces") => o.isolation = Isolation::None,
            Long("ports") => {
                let v = p.value().map_err(e)?.string().map_err(e)?;
                let range = v
                    .split_once('-')
                    .and_then(|(lo, hi)| Some((lo.parse::<u16>().ok()?, hi.parse::<u16>().ok()?)))
                    .filter(|(lo, hi)| *lo > 0 && lo <= hi)
                    .ok_or_else(|| format!("bad --ports \"{v}\": expected LOW-HIGH"))?;
                o.ports = Some(range);
            }
            Long("fs") => o.fs = Some(p.value().map_err(e)?.into()),
            Long("atr") => o.atr = Some(p.value().map_err(e)?.string().map_err(e)?),
            Long("pcscd") => o.pcscd = Some(p.value().map_err(e)?.into()),
            Long("driver") => o.driver = Some(p.value().map_err(e)?.into()),
            Long("vicc") => o.vicc = Some(p.value().map_err(e)?.into()),
            Short('t') | Long("timeout") => {
                let v = p.value().map_err(e)?.string().map_err(e)?;
                o.timeout = v
                    .parse::<f64>()
                    .ok()
                    .filter(|s| s.is_finite() && *s > 0.0 && *s <= 3600.0)
                    .map(Duration::from_secs_f64)
                    .ok_or_else(|| format!("bad --timeout \"{v}\": expected seconds"))?;
            }
            Short('d') | Long("debug") => o.debug = true,
            Long("log") => o.log = Some(p.value().map_err(e)?.into()),
            Short('q') | Long("quiet") => o.quiet = true,
            Short('h') | Long("help") => return Ok(Parsed::Help),
            Short('V') | Long("version") => return Ok(Parsed::Version),
            // vpcd-run starting itself as pid 1 of the PID namespace.
            Long("internal-pid1") => inner = true,
            Value(v) => {
                o.command.push(v);
                o.command.extend(p.raw_args().map_err(e)?);
            }
            _ => return Err(arg.unexpected().to_string()),
        }
    }
    if !o.card && (o.fs.is_some() || o.atr.is_some()) {
        return Err("--fs and --atr are for the built-in card, not with --no-card".into());
    }
    Ok(if inner {
        Parsed::Inner(o)
    } else {
        Parsed::Run(o)
    })
}

impl Options {
    /// The arguments that give the inner vpcd-run these (resolved) options.
    fn to_inner_args(&self) -> Vec<OsString> {
        let mut a: Vec<OsString> = vec!["--internal-pid1".into()];
        let mut push = |k: &str, v: OsString| {
            a.push(k.into());
            a.push(v);
        };
        push("--isolation", self.isolation.name().into());
        if let Some((lo, hi)) = self.ports {
            push("--ports", format!("{lo}-{hi}").into());
        }
        push("--slots", self.slots.to_string().into());
        push("--timeout", self.timeout.as_secs_f64().to_string().into());
        for (k, v) in [
            ("--fs", &self.fs),
            ("--pcscd", &self.pcscd),
            ("--driver", &self.driver),
            ("--vicc", &self.vicc),
            ("--log", &self.log),
        ] {
            if let Some(v) = v {
                push(k, v.into());
            }
        }
        if let Some(atr) = &self.atr {
            push("--atr", atr.into());
        }
        for (flag, on) in [
            ("--no-card", !self.card),
            ("--debug", self.debug),
            ("--quiet", self.quiet),
        ] {
            if on {
                a.push(flag.into());
            }
        }
        a.push("--".into());
        a.extend(self.command.iter().cloned());
        a
    }
}

fn find_in_path(name: &str, extra: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(extra.iter().map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

fn beside_me(name: &str) -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let p = exe.parent()?.join(name);
    p.is_file().then_some(p)
}

fn absolute(p: PathBuf, what: &str) -> Result<PathBuf, String> {
    std::path::absolute(&p)
        .ok()
        .filter(|a| a.exists())
        .ok_or_else(|| format!("{what} {} does not exist", p.display()))
}

/// The installed driver: `$(pkg-config --variable=usbdropdir libpcsclite)/serial`.
fn installed_driver() -> Option<PathBuf> {
    let out = std::process::Command::new("pkg-config")
        .args(["--variable=usbdropdir", "libpcsclite"])
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    let dir = String::from_utf8(out.stdout).ok()?;
    let dirs = [
        dir.trim(),
        "/usr/lib/pcsc/drivers",
        "/usr/lib64/pcsc/drivers",
    ];
    dirs.iter()
        .filter(|d| !d.is_empty())
        .map(|d| Path::new(d).join("serial/libifdvpcd.so"))
        .find(|p| p.is_file())
}

/// Finds pcscd, the driver and the card program before anything starts.
fn resolve(o: &mut Options) -> Result<(), String> {
    o.pcscd = Some(match o.pcscd.take() {
        Some(p) => absolute(p, "--pcscd").map_err(|e| format!("{e}: {INSTALL_PCSCD}"))?,
        None => vpcd_env::pcscd::find().ok_or_else(|| vpcd_env::Error::NoPcscd.to_string())?,
    });
    o.driver = Some(match o.driver.take() {
        Some(p) => absolute(p, "--driver")?,
        None => beside_me("libifdvpcd.so")
            .or_else(installed_driver)
            .ok_or("libifdvpcd.so not found beside vpcd-run nor installed (give --driver)")?,
    });
    if o.card {
        o.vicc = Some(match o.vicc.take() {
            Some(p) => absolute(p, "--vicc")?,
            None => beside_me("vpcd-vicc")
                .or_else(|| find_in_path("vpcd-vicc", &[]))
                .ok_or("vpcd-vicc not found beside vpcd-run nor in PATH (give --vicc)")?,
        });
    }
    if let Some(fs) = o.fs.take() {
        o.fs = Some(absolute(fs, "--fs")?);
    }
    if let Some(log) = o.log.take() {
        o.log = Some(std::path::absolute(&log).map_err(|e| format!("--log: {e}"))?);
    }
    if o.command.is_empty() {
        o.command
            .push(std::env::var_os("SHELL").unwrap_or_else(|| "/bin/sh".into()));
    }
    Ok(())
}

const USERNS_HINT: &str = "vpcd-run needs root, or unprivileged user namespaces: \
    check sysctl user.max_user_namespaces (> 0), kernel.unprivileged_userns_clone=1 \
    (older Debian kernels), and on Ubuntu 23.10 and later \
    kernel.apparmor_restrict_unprivileged_userns=0 (or an AppArmor profile allowing \
    userns for vpcd-run); in a container, allow unshare (e.g. docker run --privileged, \
    or --security-opt seccomp=unconfined --cap-add SYS_ADMIN)";

/// Enters new user (unless root), mount, network and PID namespaces.
fn enter_namespaces() -> Result<(), String> {
    let others = sys::CLONE_NEWNS | sys::CLONE_NEWNET | sys::CLONE_NEWPID;
    if sys::is_root() && sys::unshare(others).is_ok() {
        return Ok(());
    }
    // Not root, or root without CAP_SYS_ADMIN (a container): a user namespace first.
    let (uid, gid) = sys::ids();
    sys::unshare(sys::CLONE_NEWUSER)
        .map_err(|e| format!("cannot create a user namespace ({e}). {USERNS_HINT}"))?;
    match std::fs::write("/proc/self/setgroups", "deny") {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(format!("cannot write /proc/self/setgroups: {e}"))
        }
        _ => {}
    }
    std::fs::write("/proc/self/uid_map", format!("0 {uid} 1"))
        .and_then(|()| std::fs::write("/proc/self/gid_map", format!("0 {gid} 1")))
        .map_err(|e| format!("cannot map user {uid} in the user namespace: {e}"))?;
    sys::unshare(others).map_err(|e| {
        format!("cannot create mount, network and PID namespaces ({e}). {USERNS_HINT}")
    })
}

/// A private /run/pcscd (tmpfs), and `lo` up in the new network namespace.
fn set_up_namespaces(o: &Options) -> Result<(), String> {
    sys::mount("", "/", "", sys::MS_REC | sys::MS_PRIVATE, "")
        .map_err(|e| format!("cannot make the mounts private: {e}"))?;
    // Over /run/pcscd if it exists; otherwise over /run (creating /run/pcscd on the
    // host would touch it), which then hides the host's /run from the command.
    let over = if Path::new(SOCKET_DIR).is_dir() {
        SOCKET_DIR
    } else {
        "/run"
    };
    sys::mount(
        "tmpfs",
        over,
        "tmpfs",
        sys::MS_NOSUID | sys::MS_NODEV,
        "mode=0755,size=16m",
    )
    .map_err(|e| format!("cannot mount a tmpfs on {over}: {e}"))?;
    std::fs::create_dir_all(PRIVATE_DIR)
        .map_err(|e| format!("cannot create {PRIVATE_DIR}: {e}"))?;
    std::fs::write(Path::new(PRIVATE_DIR).join("reader.conf"), reader_conf(o))
        .map_err(|e| format!("cannot write reader.conf: {e}"))?;
    sys::loopback_up().map_err(|e| format!("cannot bring up lo in the network namespace: {e}"))
}

/// The environment's one reader. Every address of the private network namespace is
/// its own loopback, so the reader listens on all of them (IPv6 and IPv4 if there).
pub fn reader_conf(o: &Options) -> String {
    let listen = if Path::new("/proc/net/if_inet6").exists() {
        "::"
    } else {
        "0.0.0.0"
    };
    format!(
        "FRIENDLYNAME \"{FRIENDLY_NAME}\"\nDEVICENAME /dev/null:{PORT}/slots={}/listen={listen}\nLIBPATH {}\n",
        o.slots,
        o.driver.as_deref().unwrap_or(Path::new("libifdvpcd.so")).display()
    )
}

/// The outer process: namespaces, then the inner vpcd-run as pid 1; forwards
/// signals to it and returns its exit status.
fn outer(mut o: Options) -> ExitCode {
    let fail = |e: String| {
        eprintln!("vpcd-run: {e}");
        ExitCode::from(EXIT_SETUP)
    };
    if let Err(e) = resolve(&mut o) {
        return fail(e);
    }
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => return fail(format!("cannot find my own executable: {e}")),
    };
    match o.isolation {
        Isolation::Namespaces => {
            if let Err(e) = enter_namespaces().and_then(|()| set_up_namespaces(&o)) {
                return fail(e);
            }
        }
        Isolation::None => {}
        // Refused at the first step in a container (seccomp answers EPERM, nothing
        // changed); refused after the user namespace under Ubuntu's AppArmor rule
        // (we stay in it, root of a namespace that maps only us: vpcd-env then
        // treats us as the ordinary user we are). Either way: no namespaces.
        Isolation::Auto => match enter_namespaces() {
            Ok(()) => {
                if let Err(e) = set_up_namespaces(&o) {
                    return fail(e);
                }
                o.isolation = Isolation::Namespaces;
            }
            Err(e) => {
                if o.debug {
                    eprintln!("vpcd-run: no namespaces ({e}); running without");
                }
                o.isolation = Isolation::None;
            }
        },
    }
    let signals = [
        sys::SIGINT,
        sys::SIGTERM,
        sys::SIGHUP,
        sys::SIGQUIT,
        sys::SIGCHLD,
    ];
    if let Err(e) = sys::block_signals(&signals) {
        return fail(format!("cannot block signals: {e}"));
    }
    let mut cmd = std::process::Command::new(&exe);
    cmd.args(o.to_inner_args());
    sys::unblock_signals_in_child(&mut cmd);
    let child = match cmd.spawn() {
        Ok(child) => child,
        Err(e) => return fail(format!("cannot start {}: {e}", exe.display())),
    };
    let pid = child.id() as i32;
    loop {
        match sys::reap(pid) {
            Ok(Some((_, status))) => return inner::exit_code(status),
            Ok(None) => {}
            Err(e) => return fail(format!("lost the environment's pid 1: {e}")),
        }
        match sys::wait_signal(&signals, None) {
            Some(s) if s.number == sys::SIGCHLD => {}
            // Ctrl-C and Ctrl-\ reach the whole foreground group: pid 1 has it too.
            Some(s) if s.from_terminal && s.number != sys::SIGHUP => {}
            Some(s) => sys::kill(pid, s.number),
            None => {}
        }
    }
}

fn main() -> ExitCode {
    match parse_args(std::env::args_os().skip(1)) {
        Ok(Parsed::Run(o)) => outer(o),
        Ok(Parsed::Inner(o)) => inner::main(o),
        Ok(Parsed::Help) => {
            print!("{}", help());
            ExitCode::SUCCESS
        }
        Ok(Parsed::Version) => {
            println!("vpcd-run {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("vpcd-run: {e}\nTry 'vpcd-run --help' for more information.");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(a: &[&str]) -> Result<Parsed, String> {
        parse_args(a.iter().map(OsString::from))
    }

    fn run(a: &[&str]) -> Options {
        match parse(a) {
            Ok(Parsed::Run(o)) => o,
            other => panic!("{a:?}: {other:?}"),
        }
    }

    #[test]
    fn options_and_command() {
        assert_eq!(run(&[]), Options::default());
        let o = run(&["-s", "4", "--no-card", "opensc-tool", "-a", "--bogus"]);
        assert_eq!((o.slots, o.card), (4, false));
        assert_eq!(o.command, ["opensc-tool", "-a", "--bogus"]);
        let o = run(&["-d", "--", "-x", "y"]);
        assert!(o.debug);
        assert_eq!(o.command, ["-x", "y"]);
        assert!(parse(&["-s", "0"]).is_err());
        assert!(parse(&["-s", "17"]).is_err());
        assert!(parse(&["-t", "0"]).is_err());
        assert!(parse(&["--no-card", "--fs", "/x"]).is_err());
        assert!(parse(&["--frobnicate"]).is_err());
        assert_eq!(parse(&["--help"]), Ok(Parsed::Help));
        assert_eq!(parse(&["-V"]), Ok(Parsed::Version));
        assert!(help().contains("VPCD_CARD_CONTROL"));
    }

    #[test]
    fn isolation_and_ports() {
        assert_eq!(run(&[]).isolation, Isolation::Auto);
        assert_eq!(run(&["--no-namespaces"]).isolation, Isolation::None);
        assert_eq!(
            run(&["--isolation", "namespaces"]).isolation,
            Isolation::Namespaces
        );
        assert_eq!(run(&["--isolation=none"]).isolation, Isolation::None);
        assert!(parse(&["--isolation", "container"]).is_err());
        assert_eq!(run(&["--ports", "40000-40015"]).ports, Some((40000, 40015)));
        for bad in ["40000", "2-1", "0-5", "a-b", "1-70000"] {
            assert!(parse(&["--ports", bad]).is_err(), "{bad}");
        }
        let mut o = run(&["--no-namespaces", "--ports", "5-9", "--", "x"]);
        o.pcscd = Some("/p".into());
        match parse_args(o.to_inner_args()) {
            Ok(Parsed::Inner(back)) => assert_eq!(back, o),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn inner_args_round_trip() {
        let mut o = run(&[
            "-s", "3", "--atr", "3B 00", "-q", "--", "sh", "-c", "exit 3",
        ]);
        o.pcscd = Some("/usr/sbin/pcscd".into());
        o.driver = Some("/x/libifdvpcd.so".into());
        o.timeout = Duration::from_millis(2500);
        match parse_args(o.to_inner_args()) {
            Ok(Parsed::Inner(back)) => assert_eq!(back, o),
            other => panic!("{other:?}"),
        }
        let conf = reader_conf(&o);
        assert!(conf.contains("FRIENDLYNAME \"Virtual PCD\"\n"));
        assert!(conf.contains("DEVICENAME /dev/null:35963/slots=3/listen="));
        assert!(conf.contains("LIBPATH /x/libifdvpcd.so\n"));
    }
}
