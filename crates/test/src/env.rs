//! The environment of the test process: one private pcscd (through `vpcd-env`, the
//! namespace-free mode of `vpcd-run`), started by the first lease and shared by every
//! test of the process, and the table of its slots.
//!
//! What lives as long as the process, and why:
//! - A keeper thread starts pcscd and every card process. Their parent-death signal
//!   (`PR_SET_PDEATHSIG`) follows the thread that forked them, and a test's thread
//!   ends with the test: started from the keeper, they end with the process instead,
//!   however it ends.
//! - A watchdog process (`sh`) reads a pipe only we hold: when the process ends, even
//!   by SIGKILL, the pipe closes, and it ends pcscd and removes the environment's
//!   directory. Rust never drops statics, so this is also the normal way out.
//! - `PCSCLITE_CSOCK_NAME` is set before the first PC/SC context: libpcsclite reads it
//!   once per process.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::sync::OnceLock;
use std::time::Duration;

use vpcd_env::{Config, Environment, Output};

use crate::lease::Table;
use crate::status::{status_change, Outcome};
use crate::Error;

/// The variables that choose what the environment runs.
pub const VAR_SLOTS: &str = "VPCD_TEST_SLOTS";
pub const VAR_DEBUG: &str = "VPCD_TEST_DEBUG";
pub const VAR_DRIVER: &str = "VPCD_DRIVER";
pub const VAR_VICC: &str = "VPCD_VICC";
pub const VAR_PCSCD: &str = "VPCD_PCSCD";

/// Slots when `VPCD_TEST_SLOTS` is unset: all that pcsc-lite before 2.5 serves.
pub const DEFAULT_SLOTS: u8 = 16;

type Job = Box<dyn FnOnce() + Send>;

pub struct Env {
    pub environment: Environment,
    pub table: Table,
    /// Jobs for the keeper thread (spawning children).
    keeper: mpsc::Sender<Job>,
    /// The write end of the watchdog's pipe; never written, closed by our end.
    _watchdog: ChildStdin,
}

static ENV: OnceLock<Result<Env, Error>> = OnceLock::new();

/// The process's environment, started on first use.
pub fn get() -> Result<&'static Env, Error> {
    ENV.get_or_init(start).as_ref().map_err(Clone::clone)
}

impl Env {
    /// Runs `job` on the keeper thread and returns its result.
    pub fn on_keeper<T: Send + 'static>(&self, job: impl FnOnce() -> T + Send + 'static) -> T {
        let (tx, rx) = mpsc::channel();
        self.keeper
            .send(Box::new(move || {
                let _ = tx.send(job());
            }))
            .expect("the keeper thread lives as long as the process");
        rx.recv()
            .expect("the keeper thread answers every job (a job panicked?)")
    }

    /// The socket PC/SC clients of the environment use (`PCSCLITE_CSOCK_NAME`).
    pub fn socket(&self) -> &Path {
        self.environment.socket()
    }
}

fn start() -> Result<Env, Error> {
    let config = config()?;
    let driver = config.driver.clone();
    let (ready_tx, ready_rx) = mpsc::channel();
    let (keeper, jobs) = mpsc::channel::<Job>();
    std::thread::Builder::new()
        .name("vpcd-test keeper".into())
        .spawn(move || {
            let _ = ready_tx.send(Environment::start(&config));
            // Lives as long as the statics hold the sender: the whole process.
            for job in jobs {
                job();
            }
        })
        .map_err(|e| Error::new(format!("cannot start a thread: {e}")))?;
    let environment = ready_rx
        .recv()
        .map_err(|_| Error::new("the environment's thread ended"))?
        .map_err(|e| {
            let hint = match e {
                // The C vpcd (Debian's vsmartcard-vpcd) has the same file name but
                // knows neither /slots= nor /listen=: it never opens these ports.
                vpcd_env::Error::Timeout { .. } => format!(
                    "; is {} the vpcd-rs driver? Build it (cargo build, or cargo build \
                     --release for benches) or set {VAR_DRIVER}",
                    driver.display()
                ),
                vpcd_env::Error::NoPcscd => match std::env::var_os(VAR_PCSCD) {
                    Some(p) => format!(" ({VAR_PCSCD}={})", Path::new(&p).display()),
                    None => format!(" ({VAR_PCSCD} names it)"),
                },
                _ => String::new(),
            };
            Error::new(format!("cannot start the private pcscd: {e}{hint}"))
        })?;
    let watchdog = watchdog(environment.dir(), environment.pcscd_pid())?;
    // Before any context of this process (libpcsclite reads it once); child
    // processes of the tests inherit it.
    std::env::set_var("PCSCLITE_CSOCK_NAME", environment.socket());
    check_client(&environment)?;
    let slots = usize::from(environment.slots());
    Ok(Env {
        environment,
        table: Table::new(slots),
        keeper,
        _watchdog: watchdog,
    })
}

fn config() -> Result<Config, Error> {
    let mut config = Config::new(driver()?);
    config.slots = match std::env::var(VAR_SLOTS) {
        Ok(v) => v
            .trim()
            .parse()
            .ok()
            .filter(|n| (1..=16).contains(n))
            .ok_or_else(|| Error::new(format!("{VAR_SLOTS}={v}: expected 1 to 16")))?,
        Err(_) => DEFAULT_SLOTS,
    };
    config.pcscd = std::env::var_os(VAR_PCSCD).map(PathBuf::from);
    if std::env::var_os(VAR_DEBUG).is_some_and(|v| v == "1") {
        config.debug = true;
        config.output = Output::Inherit;
    }
    // The keeper thread starts pcscd and never ends before the process.
    config.die_with_parent = true;
    Ok(config)
}

/// `sh` waiting for the end of a pipe whose only writer is this process; then it ends
/// pcscd (its parent-death signal does too; this covers a pcscd that outlived it) and
/// removes the directory. It has a process group of its own and ignores the signals
/// that end a run (Ctrl-C reaches the terminal's whole foreground group, `timeout`
/// signals its command's group): it must outlive the test process to clean up.
fn watchdog(dir: &Path, pcscd: i32) -> Result<ChildStdin, Error> {
    use std::os::unix::process::CommandExt;
    let mut child = Command::new("/bin/sh")
        .args([
            "-c",
            "trap '' INT TERM HUP QUIT; read -r _; kill -TERM \"$1\" 2>/dev/null; \
             rm -rf -- \"$0\"",
        ])
        .process_group(0)
        .arg(dir)
        .arg(pcscd.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| Error::new(format!("cannot start the clean-up watchdog (/bin/sh): {e}")))?;
    Ok(child.stdin.take().expect("piped stdin"))
}

/// The first context must reach our pcscd: libpcsclite keeps the socket it read
/// first, so a context established before the environment went elsewhere. And every
/// slot's reader must be listed before the first lease: pcscd opens a slot's port
/// before it adds its reader, and a context of pcsc-lite 2.x knows only the readers
/// listed when it was made.
fn check_client(env: &Environment) -> Result<(), Error> {
    const READERS_WAIT: Duration = Duration::from_secs(10);
    let ctx = pcsc::Context::establish(pcsc::Scope::User).map_err(|e| {
        Error::new(format!(
            "no PC/SC context with the private pcscd at {}: {e} (libpcsclite reads \
             PCSCLITE_CSOCK_NAME once per process: a PC/SC call made before the first \
             lease keeps it on another pcscd's socket)",
            env.socket().display()
        ))
    })?;
    let want: Vec<String> = (0..env.slots()).map(|s| env.reader_name(s)).collect();
    let start = std::time::Instant::now();
    let mut pnp = pcsc::State::UNAWARE;
    loop {
        let readers = crate::client::list_readers(&ctx);
        if !readers.contains(&want[0]) && !readers.is_empty() {
            return Err(Error::new(format!(
                "the private pcscd's reader \"{}\" is not among the readers this process \
                 sees ({readers:?}): libpcsclite reads PCSCLITE_CSOCK_NAME once per \
                 process, so lease the first slot before any other PC/SC call of the \
                 process",
                want[0]
            )));
        }
        if want.iter().all(|w| readers.contains(w)) {
            return Ok(());
        }
        let left = READERS_WAIT.saturating_sub(start.elapsed());
        if left.is_zero() {
            return Err(Error::new(format!(
                "pcscd lists {} of its {} readers after {READERS_WAIT:?}",
                readers.len(),
                want.len()
            )));
        }
        // Woken when pcscd adds a reader.
        let watch = [(pcsc::PNP_NOTIFICATION().to_owned(), pnp)];
        if let Outcome::Returned(Ok(()), seen) =
            status_change(&watch, left.min(Duration::from_millis(100)))
        {
            pnp = seen[0] & !pcsc::State::CHANGED;
        }
    }
}

/// The driver: `VPCD_DRIVER`, else the one built beside the test (a workspace build
/// of vpcd-rs), else the installed one.
fn driver() -> Result<PathBuf, Error> {
    if let Some(p) = std::env::var_os(VAR_DRIVER) {
        return Ok(PathBuf::from(p));
    }
    let built = build_dirs()
        .flat_map(|d| [d.join("libifdvpcd.so"), d.join("deps/libifdvpcd.so")])
        .filter_map(|p| Some((std::fs::metadata(&p).ok()?.modified().ok()?, p)))
        .max()
        .map(|(_, p)| p);
    built
        .or_else(|| {
            [
                "/usr/lib/pcsc/drivers",
                "/usr/lib64/pcsc/drivers",
                "/usr/local/lib/pcsc/drivers",
            ]
            .iter()
            .map(|d| Path::new(d).join("serial/libifdvpcd.so"))
            .find(|p| p.is_file())
        })
        .ok_or_else(|| {
            Error::new(format!(
                "libifdvpcd.so (the vpcd-rs driver) not found: build it (cargo build in \
                 the vpcd-rs workspace), install it, or set {VAR_DRIVER}"
            ))
        })
}

/// The built-in card: `VPCD_VICC`, else beside the test, else from `PATH`.
pub fn vicc() -> Result<PathBuf, Error> {
    if let Some(p) = std::env::var_os(VAR_VICC) {
        return Ok(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    build_dirs()
        .chain(std::env::split_paths(&path))
        .map(|d| d.join("vpcd-vicc"))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            Error::new(format!(
                "vpcd-vicc (the built-in card) not found beside the test nor in PATH: \
                 build it (cargo build in the vpcd-rs workspace), install vpcd-tools, or \
                 set {VAR_VICC}"
            ))
        })
}

/// target/<profile>/ of the running test binary (it runs from deps/ there).
fn build_dirs() -> impl Iterator<Item = PathBuf> {
    let exe = std::env::current_exe().ok();
    let deps = exe.as_deref().and_then(Path::parent).map(Path::to_path_buf);
    let profile = deps
        .as_deref()
        .and_then(Path::parent)
        .map(Path::to_path_buf);
    profile.into_iter().chain(deps)
}

/// The variables a child process needs to be a PC/SC client of the environment.
pub fn client_env(env: &Env) -> Vec<(&'static str, OsString)> {
    vec![("PCSCLITE_CSOCK_NAME", env.socket().into())]
}

/// How long a lease waits for a free slot.
pub const LEASE_WAIT: Duration = Duration::from_secs(120);
