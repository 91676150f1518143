//! # vpcd-env: a private pcscd with a vpcd reader, no namespace and no privilege
//!
//! An [`Environment`] is a pcscd of its own, loading the vpcd driver with one reader
//! of N slots (`"Virtual PCD 00 00"`, `"Virtual PCD 00 01"`, ...), each slot on a free
//! TCP port of 127.0.0.1 (allow-list: loopback), reachable by PC/SC clients through a
//! socket in a private temporary directory. It works where namespaces are refused
//! (containers with Docker's default seccomp profile, CI runners, Kubernetes pods, an
//! ordinary user on a kernel without unprivileged user namespaces). Several run side by
//! side without seeing each other, and none touches a system pcscd.
//!
//! ```no_run
//! use vpcd_env::{Config, Environment};
//!
//! let mut config = Config::new("/path/to/libifdvpcd.so");
//! config.slots = 2;
//! let env = Environment::start(&config)?; // returns once pcscd holds every slot's port
//! // A PC/SC client of this environment: PCSCLITE_CSOCK_NAME before its first call
//! // (libpcsclite reads it once per process), e.g. for a child process:
//! std::process::Command::new("opensc-tool")
//!     .arg("-l")
//!     .envs(env.client_env())
//!     .status()?;
//! // A vicc connects to 127.0.0.1:env.port(0) to put its card in env.reader_name(0).
//! env.stop(); // also on drop: pcscd ended, its directory removed
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! ## How
//! - pcscd's server socket path is fixed when it is built (`/run/pcscd/pcscd.comm`),
//!   but pcscd built with libsystemd takes an already listening socket through
//!   systemd's socket-activation protocol (`LISTEN_FDS=1`, `LISTEN_PID`, fd 3). The
//!   environment binds `pcscd.comm` in its own directory and hands it over; clients
//!   find it through `PCSCLITE_CSOCK_NAME`. pcsc-lite 1.9.9 (Debian 12), 2.3.3 and
//!   2.5.1 all do this the same way ([`pcscd::Features`] reads pcscd's binary, or
//!   asks `pcscd --version`, to know whether this pcscd can).
//! - Its reader.conf is in the directory too (`pcscd -c`), with one vpcd reader whose
//!   base port was free at start: [`ports`] claims N consecutive ports among the
//!   environments of this machine (abstract Unix sockets, freed by the kernel with the
//!   process) and checks them free; once pcscd runs, readiness means that pcscd's own
//!   sockets listen on every port (the kernel's listening table through sock_diag;
//!   pcscd's sockets from /proc/PID/fd, or by their owner where that is not readable,
//!   as in a container without CAP_SYS_PTRACE). pcscd has created its readers by then.
//!   A port taken meanwhile by another program is detected and the start retried on
//!   others.
//! - What else pcscd writes: it needs its IPC directory (`/run/pcscd`) to exist (it
//!   creates it when it can, and fails when it cannot), and writes and removes its pid
//!   file there. Socket-activated, it creates no socket. So an environment started by
//!   root runs pcscd as the user `nobody`, which cannot write the pid file (pcscd logs
//!   that and goes on): a system pcscd's pid file is never overwritten nor removed; if
//!   `/run/pcscd` is missing, root creates it and removes it again at the end, if
//!   empty and no other environment of the machine runs (their port claims show). An
//!   ordinary user's pcscd cannot write there anyway; a missing `/run/pcscd` is then
//!   [`Error::NoIpcDir`] (it must be created once by root, e.g. in the image). Root of
//!   a user namespace that maps only itself counts as that ordinary user.
//!   pcsc-lite 2.x built with polkit gets `--disable-polkit` (no D-Bus in containers;
//!   the socket's directory is the access control), and `PCSCLITE_HP_DROPDIR` names an
//!   empty directory so that pcscd 2.x claims no USB reader of the machine.
//! - It ends by pid: SIGTERM, SIGKILL after a grace period, the directory removed. pcscd
//!   also gets SIGTERM if the thread that started the environment dies
//!   (`PR_SET_PDEATHSIG`; [`Config::die_with_parent`]). pcscd is signalled only while
//!   it is still this process's child, so that a caller reaping with waitpid(-1) may
//!   reap it too.
//!
//! Logs: [`Output::DirLog`] keeps pcscd's output in [`Environment::log_path`] until stop.
//!
//! What it does not isolate: the network namespace. Other local processes can reach
//! the slots' ports (the driver's allow-list keeps everything but loopback out) and
//! see the temporary directory's name; pcscd 1.9.9 would also see USB readers.
//!
//! ## Module map
//! - this file: [`Config`], [`Environment`] (start, wait until ready, stop), [`Error`]
//!   (one line each: what is missing and how to get it).
//! - [`pcscd`]: finding pcscd, what its build supports ([`pcscd::Features`]).
//! - [`ports`]: free consecutive loopback ports, claimed among environments; which of
//!   them a process listens on.
//! - `sys`: the system calls (fork and exec with the socket-activation environment,
//!   signals, uid switch): the crate's only `unsafe`.

#![deny(unsafe_code)]

use std::ffi::OsString;
use std::fmt;
use std::fs::File;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub mod pcscd;
pub mod ports;
#[allow(unsafe_code)]
mod sys;

pub use pcscd::Features;

/// The reader's FRIENDLYNAME: clients see `"Virtual PCD 00 00"` and so on.
pub const FRIENDLY_NAME: &str = "Virtual PCD";

/// Where pcscd's output goes.
#[derive(Debug)]
pub enum Output {
    /// The caller's stdout and stderr.
    Inherit,
    /// Discarded.
    Null,
    /// Appended to this file (opened by the caller, e.g. in append mode).
    File(File),
    /// `pcscd.log` in the environment's directory ([`Environment::log_path`]),
    /// removed with it at stop.
    DirLog,
}

/// What to start. Fields are public; [`Config::new`] fills in the defaults.
#[derive(Debug)]
pub struct Config {
    /// The vpcd driver (`libifdvpcd.so`) pcscd loads.
    pub driver: PathBuf,
    /// The pcscd binary; `None`: [`pcscd::find`] (PATH, then /usr/sbin, /usr/local/sbin).
    pub pcscd: Option<PathBuf>,
    /// Slots of the one reader, 1 to 16 (slot n listens on [`Environment::port`]`(n)`).
    pub slots: u8,
    /// The reader's name before `" 00 0n"`.
    pub friendly_name: String,
    /// Ports to choose from, inclusive; `None`: ports the kernel hands out (its
    /// ephemeral range), claimed among environments.
    pub ports: Option<(u16, u16)>,
    /// pcscd with `-d` (debug lines) instead of `-i`, and the driver's debug log
    /// (`VPCD_LOG=debug`).
    pub debug: bool,
    /// pcscd's stdout and stderr.
    pub output: Output,
    /// More variables for pcscd (and its driver), e.g. `("VPCD_LOG", "info")`.
    pub env: Vec<(OsString, OsString)>,
    /// How long pcscd may take until it holds every port.
    pub timeout: Duration,
    /// pcscd gets SIGTERM when the thread that called [`Environment::start`] ends
    /// (its parent's death, `PR_SET_PDEATHSIG`). Default true; turn it off when
    /// starting from a short-lived thread.
    pub die_with_parent: bool,
    /// Where the environment's directory is made; `None`: `$TMPDIR`, else `/tmp`.
    pub parent_dir: Option<PathBuf>,
}

impl Config {
    pub fn new(driver: impl Into<PathBuf>) -> Config {
        Config {
            driver: driver.into(),
            pcscd: None,
            slots: 2,
            friendly_name: FRIENDLY_NAME.into(),
            ports: None,
            debug: false,
            output: Output::Null,
            env: vec![],
            timeout: Duration::from_secs(10),
            die_with_parent: true,
            parent_dir: None,
        }
    }
}

/// Why an environment did not start. `Display` is one line: what is missing, and
/// how to get it.
#[derive(Debug)]
pub enum Error {
    /// No pcscd binary where looked.
    NoPcscd,
    /// This pcscd cannot take a socket (built without libsystemd).
    NoSocketActivation { pcscd: PathBuf, version: String },
    /// pcscd's compile-time IPC directory is missing and we may not create it.
    NoIpcDir { dir: PathBuf },
    /// No `count` consecutive free ports.
    PortsExhausted {
        count: u8,
        range: Option<(u16, u16)>,
    },
    /// Another program took a port between the check and pcscd's bind, at every try.
    PortTaken { port: u16 },
    /// Bad configuration (slots out of range, driver missing, ...).
    Config(String),
    /// A system call or file operation failed.
    Io(String, io::Error),
    /// pcscd ended before it was ready.
    PcscdExited { status: String },
    /// pcscd did not hold every port in time.
    Timeout {
        timeout: Duration,
        missing: Vec<u16>,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            Error::NoPcscd => write!(
                f,
                "pcscd not found (in PATH, /usr/sbin, /usr/local/sbin): install it \
                 (Debian/Ubuntu: apt-get install pcscd; Fedora: dnf install pcsc-lite) \
                 or give its path"
            ),
            Error::NoSocketActivation { pcscd, version } => write!(
                f,
                "{} ({version}) cannot take a socket from its caller (built without \
                 libsystemd: no systemd socket activation), which running without \
                 namespaces needs: use a distribution's pcscd (Debian's, Ubuntu's and \
                 Fedora's have it) or build pcsc-lite with -Dlibsystemd=true \
                 (libsystemd-dev)",
                pcscd.display()
            ),
            Error::NoIpcDir { dir } => write!(
                f,
                "pcscd needs its directory {0} (fixed when pcscd was built), which does \
                 not exist and only root may create: create it once as root (mkdir -m \
                 0755 {0}; in an image: RUN mkdir -p {0}), or run as root",
                dir.display()
            ),
            Error::PortsExhausted { count, range } => match range {
                Some((lo, hi)) => write!(
                    f,
                    "no {count} consecutive free TCP ports on 127.0.0.1 in {lo}-{hi}: \
                     end what holds them or give a wider port range"
                ),
                None => write!(
                    f,
                    "no {count} consecutive free TCP ports on 127.0.0.1 in the kernel's \
                     ephemeral range (net.ipv4.ip_local_port_range): end what holds \
                     them or give a port range"
                ),
            },
            Error::PortTaken { port } => write!(
                f,
                "another program took port {port} as pcscd started, {ATTEMPTS} times in a \
                 row: give a port range that nothing else uses"
            ),
            Error::Config(e) => f.write_str(e),
            Error::Io(what, e) => write!(f, "{what}: {e}"),
            Error::PcscdExited { status } => write!(f, "pcscd exited early: {status}"),
            Error::Timeout { timeout, missing } => write!(
                f,
                "pcscd did not listen on port(s) {missing:?} within {:.1} s (see its log)",
                timeout.as_secs_f64()
            ),
        }
    }
}

impl std::error::Error for Error {}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> Error {
    let what = what.into();
    move |e| Error::Io(what, e)
}

/// A running environment. Dropping it stops it ([`Environment::stop`]).
#[derive(Debug)]
pub struct Environment {
    dir: PathBuf,
    socket: PathBuf,
    base_port: u16,
    slots: u8,
    friendly_name: String,
    pid: i32,
    features: Features,
    /// The ports' claim among environments, held while pcscd runs.
    _claim: ports::Claim,
    /// Whether this environment created pcscd's IPC directory (root only).
    created_ipc_dir: Option<PathBuf>,
    stopped: bool,
}

/// How often readiness is looked at (`/proc`, a few reads).
const POLL: Duration = Duration::from_millis(2);
/// How long pcscd gets to end after SIGTERM before SIGKILL.
const GRACE: Duration = Duration::from_secs(3);
/// Starts tried when a port was taken by another program meanwhile.
const ATTEMPTS: usize = 4;

impl Environment {
    /// Starts pcscd and returns once it holds every slot's port (its readers are
    /// then there for any client that connects). Fails with one-line [`Error`]s.
    pub fn start(config: &Config) -> Result<Environment, Error> {
        if !(1..=16).contains(&config.slots) {
            return Err(Error::Config(format!(
                "{} slots: expected 1 to 16",
                config.slots
            )));
        }
        if !config.driver.is_file() {
            return Err(Error::Config(format!(
                "the driver {} does not exist",
                config.driver.display()
            )));
        }
        let pcscd = match &config.pcscd {
            Some(p) => p.clone(),
            None => pcscd::find().ok_or(Error::NoPcscd)?,
        };
        let features = Features::of(&pcscd)?;
        if !features.socket_activation {
            return Err(Error::NoSocketActivation {
                pcscd,
                version: features.version.clone(),
            });
        }
        let mut last = None;
        for _ in 0..ATTEMPTS {
            match Self::attempt(config, &pcscd, &features) {
                Ok(env) => return Ok(env),
                // A port taken between the check and pcscd's bind, or /run/pcscd
                // removed by another environment as pcscd looked: try again.
                Err(Retry::Again(e)) => last = Some(e),
                Err(Retry::Fatal(e)) => return Err(e),
            }
        }
        Err(last.unwrap_or(Error::PortsExhausted {
            count: config.slots,
            range: config.ports,
        }))
    }

    fn attempt(config: &Config, pcscd: &Path, features: &Features) -> Result<Environment, Retry> {
        let root = sys::is_privileged_root();
        // Claims first: an environment past the IPC directory check is visible to
        // one deciding whether to remove that directory (see stop).
        let claim = ports::claim(config.slots, config.ports)?;
        let created_ipc_dir = ensure_ipc_dir(&features.ipc_dir, root)?;
        let dir = make_dir(config.parent_dir.as_deref(), root)?;
        let mut env = Environment {
            socket: dir.join("pcscd.comm"),
            dir,
            base_port: claim.base(),
            slots: config.slots,
            friendly_name: config.friendly_name.clone(),
            pid: -1,
            features: features.clone(),
            _claim: claim,
            created_ipc_dir,
            stopped: false,
        };
        env.spawn(config, pcscd, root).map_err(Retry::Fatal)?;
        env.wait_ready(config.timeout)?;
        Ok(env)
    }

    fn spawn(&mut self, config: &Config, pcscd: &Path, root: bool) -> Result<(), Error> {
        let conf = self.dir.join("reader.conf");
        std::fs::write(&conf, self.reader_conf(&config.driver))
            .map_err(io_err("cannot write reader.conf"))?;
        let drivers = self.dir.join("no-usb-drivers");
        std::fs::create_dir(&drivers).map_err(io_err("cannot create a directory"))?;
        let listener = UnixListener::bind(&self.socket).map_err(io_err(format!(
            "cannot make the socket {}",
            self.socket.display()
        )))?;
        // Only this user (root: only root) may connect, whatever the umask: the
        // directory's name is no secret (0711 for root, and /tmp lists it).
        std::fs::set_permissions(&self.socket, std::fs::Permissions::from_mode(0o600))
            .map_err(io_err("cannot set the socket's mode"))?;
        let mut args: Vec<OsString> = vec![
            "--foreground".into(),
            "--config".into(),
            conf.into(),
            if config.debug { "--debug" } else { "--info" }.into(),
        ];
        if self.features.polkit && self.features.disable_polkit {
            args.push("--disable-polkit".into());
        }
        let mut env: Vec<(OsString, OsString)> = std::env::vars_os()
            .filter(|(k, _)| {
                !matches!(
                    k.to_str(),
                    Some("LISTEN_PID" | "LISTEN_FDS" | "LISTEN_FDNAMES" | "NOTIFY_SOCKET")
                )
            })
            .collect();
        env.push(("PCSCLITE_HP_DROPDIR".into(), drivers.into()));
        if config.debug {
            env.push(("VPCD_LOG".into(), "debug".into()));
        }
        env.extend(config.env.iter().cloned());
        let user = if root { Some(sys::nobody()) } else { None };
        let log = match config.output {
            Output::DirLog => Some(
                std::fs::File::options()
                    .create(true)
                    .append(true)
                    .open(self.log_path())
                    .map_err(io_err("cannot create pcscd.log"))?,
            ),
            _ => None,
        };
        let output = match &config.output {
            Output::Inherit => sys::Output::Inherit,
            Output::Null => sys::Output::Null,
            Output::File(f) => sys::Output::Fd(f),
            Output::DirLog => sys::Output::Fd(log.as_ref().expect("opened above")),
        };
        self.pid = sys::spawn_activated(&sys::Spawn {
            program: pcscd,
            args: &args,
            env: &env,
            listener: &listener,
            output,
            user,
            parent_death_signal: config.die_with_parent.then_some(libc::SIGTERM),
        })
        .map_err(io_err(format!("cannot start {}", pcscd.display())))?;
        // pcscd has its copy of the socket; ours closes here.
        Ok(())
    }

    /// Until pcscd's own sockets listen on every slot's port: sockets among its
    /// open files, or, where its /proc/PID/fd is not ours to read, sockets of its
    /// user (the ports are claimed: no other environment's pcscd has them).
    fn wait_ready(&mut self, timeout: Duration) -> Result<(), Retry> {
        let start = Instant::now();
        let ports: Vec<u16> = self.ports().collect();
        let uid = if sys::is_privileged_root() {
            sys::nobody().0
        } else {
            sys::euid()
        };
        loop {
            if let Some(status) = sys::exited(self.pid) {
                let e = Error::PcscdExited { status };
                let ipc_gone = !self.features.ipc_dir.is_dir();
                return Err(if ipc_gone && sys::is_privileged_root() {
                    Retry::Again(e)
                } else if ipc_gone {
                    Retry::Fatal(Error::NoIpcDir {
                        dir: self.features.ipc_dir.clone(),
                    })
                } else {
                    Retry::Fatal(e)
                });
            }
            // Listeners first, pcscd's sockets second: a socket that listens was
            // among pcscd's files before it listened, so a driver binding between the
            // two reads cannot pass for someone else's socket (it did, the other way
            // round, under 49 environments starting at once).
            let listening = ports::listening(&ports);
            let fds = sys::socket_inodes(self.pid);
            let ours = |l: &ports::Listener| match &fds {
                Some(inodes) => inodes.contains(&l.inode),
                None => l.uid == uid,
            };
            let mut missing = vec![];
            for &port in &ports {
                let owners = listening.get(&port).map(Vec::as_slice).unwrap_or(&[]);
                if owners.iter().any(ours) {
                    continue;
                }
                if !owners.is_empty() {
                    // Someone else's socket has the port: pcscd's driver cannot bind it.
                    return Err(Retry::Again(Error::PortTaken { port }));
                }
                missing.push(port);
            }
            if missing.is_empty() {
                return Ok(());
            }
            if start.elapsed() >= timeout {
                return Err(Retry::Fatal(Error::Timeout { timeout, missing }));
            }
            std::thread::sleep(POLL);
        }
    }

    fn reader_conf(&self, driver: &Path) -> String {
        format!(
            "FRIENDLYNAME \"{}\"\nDEVICENAME /dev/null:{}/slots={}/listen=127.0.0.1/allow=127.0.0.0_8\nLIBPATH {}\n",
            self.friendly_name,
            self.base_port,
            self.slots,
            driver.display()
        )
    }

    /// The socket to give PC/SC clients as `PCSCLITE_CSOCK_NAME`.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The environment's private directory (pcscd.comm, reader.conf); removed at stop.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where pcscd's output goes with [`Output::DirLog`].
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("pcscd.log")
    }

    /// Slot `slot`'s port on 127.0.0.1, where a vicc connects.
    pub fn port(&self, slot: u8) -> u16 {
        self.base_port + u16::from(slot)
    }

    /// Every slot's port, slot 0 first.
    pub fn ports(&self) -> impl Iterator<Item = u16> {
        let base = self.base_port;
        (0..u16::from(self.slots)).map(move |s| base + s)
    }

    pub fn slots(&self) -> u8 {
        self.slots
    }

    /// The name PC/SC clients see for slot `slot`: `"Virtual PCD 00 0S"`.
    pub fn reader_name(&self, slot: u8) -> String {
        format!("{} 00 {slot:02X}", self.friendly_name)
    }

    /// pcscd's process id.
    pub fn pcscd_pid(&self) -> i32 {
        self.pid
    }

    /// What the pcscd in use supports.
    pub fn features(&self) -> &Features {
        &self.features
    }

    /// The variables a client process of slot 0 needs: `PCSCLITE_CSOCK_NAME`,
    /// `VPCD_READER` and `VPCD_PORT`.
    pub fn client_env(&self) -> Vec<(&'static str, OsString)> {
        vec![
            ("PCSCLITE_CSOCK_NAME", self.socket.clone().into()),
            ("VPCD_READER", self.reader_name(0).into()),
            ("VPCD_PORT", self.port(0).to_string().into()),
        ]
    }

    /// Ends pcscd (SIGTERM, SIGKILL after 3 s) and removes the directory (and
    /// `/run/pcscd` if this environment created it, it is empty and no other
    /// environment runs).
    pub fn stop(mut self) {
        self.stop_now();
    }

    fn stop_now(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        if self.pid > 0 {
            sys::terminate(self.pid, GRACE);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        // Only while no other environment runs or starts: an ordinary user's pcscd
        // cannot make it again.
        if let Some(dir) = &self.created_ipc_dir {
            let own: Vec<u16> = self.ports().collect();
            if !ports::other_environments(&own) {
                let _ = std::fs::remove_dir(dir);
            }
        }
    }
}

impl Drop for Environment {
    fn drop(&mut self) {
        self.stop_now();
    }
}

enum Retry {
    Again(Error),
    Fatal(Error),
}

impl From<Error> for Retry {
    fn from(e: Error) -> Retry {
        Retry::Fatal(e)
    }
}

/// pcscd must find its IPC directory (it `mkdir`s it and fails unless it exists).
/// Root creates it when missing (and says so, to remove it at the end if empty).
fn ensure_ipc_dir(dir: &Path, root: bool) -> Result<Option<PathBuf>, Error> {
    if dir.is_dir() {
        return Ok(None);
    }
    if !root {
        return Err(Error::NoIpcDir { dir: dir.into() });
    }
    match std::fs::create_dir(dir) {
        Ok(()) => {
            let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755));
            Ok(Some(dir.into()))
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(None),
        Err(e) => Err(Error::Io(format!("cannot create {}", dir.display()), e)),
    }
}

/// A new directory of our own: mode 0700, or 0711 when pcscd runs as another user
/// (it must reach reader.conf; nobody can list the directory).
fn make_dir(parent: Option<&Path>, root: bool) -> Result<PathBuf, Error> {
    let parent = parent
        .map(Path::to_path_buf)
        .or_else(|| std::env::var_os("TMPDIR").map(PathBuf::from))
        .unwrap_or_else(|| "/tmp".into());
    let mode = if root { 0o711 } else { 0o700 };
    let mut last = None;
    for _ in 0..16 {
        let dir = parent.join(format!("vpcd-env-{:016x}", sys::random_u64()));
        match std::fs::create_dir(&dir) {
            Ok(()) => {
                std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(mode))
                    .map_err(io_err(format!("cannot set the mode of {}", dir.display())))?;
                return Ok(dir);
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = Some(e),
            Err(e) => {
                return Err(Error::Io(
                    format!("cannot create a directory in {}", parent.display()),
                    e,
                ))
            }
        }
    }
    Err(Error::Io(
        format!("cannot create a directory in {}", parent.display()),
        last.unwrap_or_else(|| io::Error::other("name clash")),
    ))
}
