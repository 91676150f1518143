//! A private pcscd: `scripts/private-pcscd` (its own mount namespace, a private /run,
//! only our reader.conf), started by [`PcscdBuilder::start`], stopped with SIGINT by
//! [`Pcscd::stop`] or on drop.

use std::ffi::OsString;
use std::os::unix::net::UnixStream;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use pcsc::{Context, Scope};

use crate::client::list_readers;
use crate::paths::{driver_path, repo_root, temp_dir, TempDir};

/// pcscd (1.9.9, and 2.5.1 under load) can miss a SIGINT (see [`Pcscd::stop`]); it is
/// woken after this long.
const NUDGE_AFTER: Duration = Duration::from_secs(2);

/// One reader.conf.d entry.
pub struct Entry {
    pub friendly_name: String,
    pub device_name: Option<String>,
    pub channel_id: Option<String>,
    /// The driver library: by default the one built with the test ([`driver_path`]).
    pub lib_path: PathBuf,
}

impl Entry {
    /// A reader of the built driver with this DEVICENAME.
    pub fn device(name: &str, device_name: &str) -> Entry {
        Entry {
            friendly_name: name.to_owned(),
            device_name: Some(device_name.to_owned()),
            channel_id: None,
            lib_path: driver_path(),
        }
    }

    /// The same entry with another driver library (e.g. Debian's C vpcd).
    pub fn lib(mut self, path: impl Into<PathBuf>) -> Entry {
        self.lib_path = path.into();
        self
    }

    pub fn render(&self) -> String {
        let mut s = format!("FRIENDLYNAME \"{}\"\n", self.friendly_name);
        if let Some(d) = &self.device_name {
            s += &format!("DEVICENAME {d}\n");
        }
        s += &format!("LIBPATH {}\n", self.lib_path.display());
        if let Some(c) = &self.channel_id {
            s += &format!("CHANNELID {c}\n");
        }
        s
    }
}

/// The pcscd binary: `VPCD_PCSCD`, or `pcscd` from `PATH`.
pub fn pcscd_binary() -> OsString {
    std::env::var_os("VPCD_PCSCD")
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "pcscd".into())
}

/// Whether pcscd runs as pcsc-lite 2.5's hardened service runs it (`VPCD_SANDBOX=1`):
/// as user pcscd, no capabilities, its system-call filter enforced
/// (`scripts/pcscd-sandbox`).
pub fn sandboxed() -> bool {
    std::env::var_os("VPCD_SANDBOX").is_some_and(|v| v == "1")
}

/// The version of the pcscd the tests run (`pcscd --version`), as (major, minor, patch).
pub fn pcscd_version() -> (u32, u32, u32) {
    let out = Command::new(pcscd_binary())
        .arg("--version")
        .output()
        .expect("pcscd --version");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let version = text
        .split_whitespace()
        .skip_while(|w| *w != "version")
        .nth(1)
        .unwrap_or_else(|| panic!("no version in pcscd --version:\n{text}"));
    let mut parts = version
        .trim_end_matches('.')
        .split('.')
        .map(|p| p.parse::<u32>().unwrap_or(0));
    (
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
    )
}

/// What runs pcscd: nothing, the sandbox when `VPCD_SANDBOX=1`, valgrind when
/// `VPCD_VALGRIND` is set, or a given command.
enum Wrapper {
    FromEnv,
    Command(Option<String>),
}

/// How to start a private pcscd; see [`Pcscd::builder`].
pub struct PcscdBuilder {
    config: Vec<String>,
    debug_log: bool,
    driver_log: Option<String>,
    wrapper: Wrapper,
    pcscd: Option<OsString>,
    watchdog: bool,
}

impl PcscdBuilder {
    /// The watchdog that reports a test still running after 100 s ([`Watchdog`]): on by
    /// default (and off under valgrind). A benchmark, which runs for minutes by design
    /// and kills itself on its own deadline, turns it off.
    pub fn watchdog(mut self, on: bool) -> Self {
        self.watchdog = on;
        self
    }

    /// Adds a reader.conf entry.
    pub fn entry(mut self, entry: &Entry) -> Self {
        self.config.push(entry.render());
        self
    }

    pub fn entries(self, entries: &[Entry]) -> Self {
        entries.iter().fold(self, PcscdBuilder::entry)
    }

    /// Adds reader.conf text as it is (entries are separated by an empty line).
    pub fn config(mut self, text: &str) -> Self {
        self.config.push(text.to_owned());
        self
    }

    /// pcscd's debug log (`-d`) and the driver's (`VPCD_LOG`, default `debug`) in
    /// [`Pcscd::log`]: on by default. Off, pcscd logs at its default level and the
    /// driver at its own (`VPCD_LOG` is removed): what a benchmark wants, as a debug log
    /// adds a write per command to every round trip.
    pub fn debug_log(mut self, on: bool) -> Self {
        self.debug_log = on;
        self
    }

    /// The driver's level in the debug log (`VPCD_LOG`), whatever the environment says:
    /// `trace` logs every call pcscd makes (`poll_for_event (lun 0x0)`), which tests
    /// wait for instead of sleeping. Turns the debug log on.
    pub fn driver_log(mut self, level: &str) -> Self {
        self.debug_log = true;
        self.driver_log = Some(level.to_owned());
        self
    }

    /// Runs pcscd under this command (`valgrind --log-file=...`), or under nothing.
    /// Default: valgrind when `VPCD_VALGRIND` is set, its report in `valgrind.log` beside
    /// pcscd's log, or in `VPCD_VALGRIND_DIR`.
    pub fn wrapper(mut self, command: Option<&str>) -> Self {
        self.wrapper = Wrapper::Command(command.map(str::to_owned));
        self
    }

    /// The pcscd binary. Default: [`pcscd_binary`] (`VPCD_PCSCD` or `pcscd`).
    pub fn pcscd(mut self, binary: impl Into<OsString>) -> Self {
        self.pcscd = Some(binary.into());
        self
    }

    /// Starts pcscd and waits until clients can reach it. Sets `PCSCLITE_CSOCK_NAME`
    /// for this process: one pcscd per process.
    pub fn start(self) -> Pcscd {
        let dir = temp_dir("pcscd");
        let run_dir = dir.path().join("run");
        std::fs::create_dir_all(&run_dir).unwrap();
        let conf_path = dir.path().join("reader.conf");
        std::fs::write(&conf_path, self.config.join("\n")).unwrap();
        let log = dir.path().join("pcscd.log");
        let socket = run_dir.join("pcscd.comm");
        // Checked before pcscd starts, so a misuse leaves no daemon behind.
        static SOCKET_SET: OnceLock<PathBuf> = OnceLock::new();
        let set = SOCKET_SET.get_or_init(|| {
            std::env::set_var("PCSCLITE_CSOCK_NAME", &socket);
            socket.clone()
        });
        assert_eq!(
            set, &socket,
            "one pcscd per test process: run with cargo nextest"
        );
        let wrapper = match self.wrapper {
            Wrapper::FromEnv if sandboxed() => {
                // pcscd runs as user pcscd: it must read its config and write its log
                // and run dir (which the sandbox hands to it, as systemd would).
                use std::os::unix::fs::PermissionsExt;
                let open = std::fs::Permissions::from_mode(0o755);
                std::fs::set_permissions(dir.path(), open).unwrap();
                std::fs::set_permissions(&conf_path, std::fs::Permissions::from_mode(0o644))
                    .unwrap();
                Some(format!(
                    "{} --runtime-dir /run/pcscd",
                    repo_root().join("scripts/pcscd-sandbox").display()
                ))
            }
            Wrapper::FromEnv => std::env::var_os("VPCD_VALGRIND").map(|_| {
                format!(
                    "valgrind --error-limit=no --log-file={}",
                    valgrind_log(dir.path()).display()
                )
            }),
            Wrapper::Command(command) => command,
        };
        let mut cmd = Command::new(repo_root().join("scripts/private-pcscd"));
        cmd.arg(&run_dir)
            .arg(&conf_path)
            .env("VPCD_PCSCD_WRAPPER", wrapper.as_deref().unwrap_or(""))
            .env("VPCD_PCSCD", self.pcscd.unwrap_or_else(pcscd_binary))
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(Stdio::from(
                std::fs::File::options().append(true).open(&log).unwrap(),
            ));
        if self.debug_log {
            let level = self
                .driver_log
                .or_else(|| std::env::var("VPCD_LOG").ok())
                .unwrap_or_else(|| "debug".into());
            cmd.arg("-d").env("VPCD_LOG", level);
        } else {
            cmd.env_remove("VPCD_LOG");
        }
        // SAFETY: prctl is async-signal-safe. If the thread that started pcscd dies
        // (a test or the bench killed), pcscd gets SIGINT and shuts down.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGINT);
                Ok(())
            });
        }
        let child = cmd.spawn().expect("start pcscd");
        let mut pcscd = Pcscd {
            child: Some(child),
            dir,
            log,
            socket,
            patience: Duration::from_secs(if wrapper.is_some() { 60 } else { 10 }),
            nudged: false,
            watchdog: None,
        };
        // Under valgrind everything is many times slower: no watchdog there.
        let slowed = wrapper.as_deref().is_some_and(|w| w.contains("valgrind"));
        if self.watchdog && !slowed {
            pcscd.watchdog = Some(Watchdog::start(pcscd.pid(), pcscd.log.clone()));
        }
        pcscd.wait_ready();
        pcscd
    }
}

/// Where pcscd's valgrind report goes when VPCD_VALGRIND is set.
fn valgrind_log(dir: &Path) -> PathBuf {
    match std::env::var_os("VPCD_VALGRIND_DIR") {
        Some(keep) => {
            std::fs::create_dir_all(&keep).unwrap();
            let test = std::thread::current()
                .name()
                .unwrap_or("test")
                .replace("::", "-");
            PathBuf::from(keep).join(format!("{test}-{}.log", std::process::id()))
        }
        None => dir.join("valgrind.log"),
    }
}

/// A private pcscd. Dropping it stops it with SIGINT (its clean shutdown path, which
/// closes every channel) and removes its files.
pub struct Pcscd {
    child: Option<Child>,
    /// Its temporary directory: reader.conf, pcscd.log, run/ (the socket).
    pub dir: TempDir,
    pub log: PathBuf,
    pub socket: PathBuf,
    /// How long [`Pcscd::stop`] waits for pcscd to exit (longer under a wrapper).
    patience: Duration,
    nudged: bool,
    /// Reports a test that hangs, with the threads of both sides; see [`Watchdog`].
    watchdog: Option<Watchdog>,
}

impl Pcscd {
    /// How to start one: debug log on, no extra config, valgrind if `VPCD_VALGRIND`,
    /// the pcscd of `VPCD_PCSCD` or `PATH`.
    pub fn builder() -> PcscdBuilder {
        PcscdBuilder {
            config: Vec::new(),
            debug_log: true,
            driver_log: None,
            wrapper: Wrapper::FromEnv,
            pcscd: None,
            watchdog: true,
        }
    }

    /// A pcscd with these readers, and the defaults of [`Pcscd::builder`].
    pub fn start(entries: &[Entry]) -> Pcscd {
        Pcscd::builder().entries(entries).start()
    }

    /// A pcscd with this reader.conf, and the defaults of [`Pcscd::builder`].
    pub fn start_with_config(conf: &str) -> Pcscd {
        Pcscd::builder().config(conf).start()
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("pcscd exited with {status}:\n{}", self.log_text());
            }
            if self.socket.exists() && Context::establish(Scope::User).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("pcscd did not come up:\n{}", self.log_text());
    }

    /// The directory of its files.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// pcscd's pid (private-pcscd execs it: the pid of the process started).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// Whether the last [`Pcscd::stop`] had to wake pcscd after a missed SIGINT.
    pub fn nudged(&self) -> bool {
        self.nudged
    }

    /// Stops pcscd with SIGINT; returns how long it took to exit. Panics, with pcscd's
    /// threads and log, if it has not exited after 10 s (60 s under a wrapper).
    ///
    /// pcscd 1.9.9 (and 2.5.1, seen under load) can miss a SIGINT: its main loop waits
    /// for clients in select() without a timeout, and after the EINTR it gives its signal thread 1 ms to set the
    /// quit flag; on a loaded machine it misses the flag and sleeps on. So if pcscd still
    /// runs after 2 s, a connection to its socket wakes that select(), and pcscd then sees
    /// the flag and shuts down cleanly. This is the harness's only workaround for it: a
    /// connection cannot turn into a forced exit (a second SIGINT might), needs no debug
    /// log to judge, and does nothing while pcscd is closing readers, so a hang in the
    /// driver's close still shows.
    pub fn stop(&mut self) -> Duration {
        let (took, status) = self.stop_with_status();
        if let Some(status) = status {
            assert!(
                status.code().is_some() || status.signal() == Some(libc::SIGINT),
                "pcscd died of {status}:\n{}",
                self.log_text()
            );
        }
        took
    }

    /// [`Pcscd::stop`], but says how pcscd ended instead of asserting that it exited:
    /// for the tests that provoke a crash of pcscd's own (None: it had ended before).
    pub fn stop_with_status(&mut self) -> (Duration, Option<std::process::ExitStatus>) {
        let Some(mut child) = self.child.take() else {
            return (Duration::ZERO, None);
        };
        let start = Instant::now();
        signal(child.id(), libc::SIGINT);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return (start.elapsed(), Some(status));
            }
            if !self.nudged && start.elapsed() > NUDGE_AFTER {
                self.nudged = true;
                let _ = UnixStream::connect(&self.socket);
            }
            if start.elapsed() > self.patience {
                eprintln!("pcscd still running {:?} after SIGINT:", self.patience);
                dump_threads(child.id());
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "pcscd ignored SIGINT for {:?}:\n{}",
                    self.patience,
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Waits until the log contains `needle`.
    pub fn wait_log(&self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.log_text().contains(needle) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// Waits until `done` holds for the whole log so far; false after `timeout`. For
    /// conditions only the log shows: "pcscd's polling thread has entered the driver's
    /// callback since the card was inserted", "the driver has failed to connect three
    /// times".
    pub fn wait_log_until(&self, timeout: Duration, mut done: impl FnMut(&str) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if done(&self.log_text()) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn context(&self) -> Context {
        Context::establish(Scope::User).expect("establish context")
    }

    /// Waits until exactly `names` are listed, in any order.
    pub fn wait_readers(&self, names: &[String]) -> Vec<String> {
        let ctx = self.context();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let got = list_readers(&ctx);
            let mut want = names.to_vec();
            want.sort();
            let mut sorted = got.clone();
            sorted.sort();
            if sorted == want || Instant::now() > deadline {
                assert_eq!(sorted, want, "readers\n{}", self.log_text());
                return got;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until `count` readers whose names start with `friendly` are listed; returns
    /// their names, sorted.
    pub fn wait_readers_of(&self, ctx: &Context, friendly: &str, count: usize) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let mut names: Vec<String> = list_readers(ctx)
                .into_iter()
                .filter(|n| n.starts_with(&format!("{friendly} ")))
                .collect();
            names.sort();
            if names.len() == count {
                return names;
            }
            assert!(
                Instant::now() < deadline,
                "readers of {friendly}: {names:?}\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Pcscd {
    fn drop(&mut self) {
        // Disarmed first: a stop that hangs is reported by stop() itself.
        drop(self.watchdog.take());
        if std::thread::panicking() {
            // No second panic from stop(): end pcscd the hard way.
            if let Some(mut child) = self.child.take() {
                signal(child.id(), libc::SIGINT);
                std::thread::sleep(Duration::from_millis(200));
                let _ = child.kill();
                let _ = child.wait();
            }
        } else if self.child.is_some() {
            self.stop();
        }
        if std::thread::panicking() || std::env::var_os("VPCD_TEST_LOG").is_some() {
            eprintln!("---- pcscd log ----\n{}", self.log_text());
        }
    }
}

/// How long a test may run with its pcscd before the watchdog reports it: under
/// nextest's termination (120 s), so that a hang shows where it is instead of only
/// "timed out". `VPCD_TEST_WATCHDOG` (seconds) overrides it; 0 turns it off.
const WATCHDOG_AFTER: Duration = Duration::from_secs(100);

/// A thread that, if the test still runs after [`WATCHDOG_AFTER`], prints the
/// backtraces of every thread of pcscd and of the test process (gdb), the kernel's
/// wait channels, and pcscd's log; then kills pcscd and aborts the test process. A hang
/// in the driver, in pcscd or in the client library then fails with its evidence,
/// where nextest's timeout would show only the test's name. Dropping it disarms it.
struct Watchdog {
    disarm: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Watchdog {
    fn start(pid: u32, log: PathBuf) -> Watchdog {
        let after = std::env::var("VPCD_TEST_WATCHDOG")
            .ok()
            .and_then(|s| s.parse::<u64>().ok())
            .map_or(WATCHDOG_AFTER, Duration::from_secs);
        let (disarm, disarmed) = std::sync::mpsc::channel::<()>();
        let test = std::thread::current()
            .name()
            .unwrap_or("the test")
            .to_owned();
        let thread = (!after.is_zero()).then(|| {
            std::thread::spawn(move || {
                if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                    disarmed.recv_timeout(after)
                {
                    eprintln!(
                        "==== watchdog: {test} still runs after {after:?}; pcscd (pid {pid}):"
                    );
                    dump_threads(pid);
                    eprintln!("==== the test process (pid {}):", std::process::id());
                    dump_threads(std::process::id());
                    eprintln!(
                        "==== pcscd log:\n{}",
                        std::fs::read_to_string(&log).unwrap_or_default()
                    );
                    signal(pid, libc::SIGKILL);
                    std::process::abort();
                }
            })
        });
        Watchdog {
            disarm: Some(disarm),
            thread,
        }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        drop(self.disarm.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Sends `sig` to process `pid` (kill(2)).
pub fn signal(pid: u32, sig: i32) {
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe { libc::kill(pid as libc::pid_t, sig) };
}

/// Each thread of `pid`: name, kernel wait channel, system call; and a backtrace of all
/// threads when gdb is installed.
pub fn dump_threads(pid: u32) {
    for entry in std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let dir = entry.path();
        let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap_or_default();
        eprintln!(
            "  thread {} ({}): wchan {}, syscall {}",
            entry.file_name().to_string_lossy(),
            read("comm").trim(),
            read("wchan").trim(),
            read("syscall").split_whitespace().next().unwrap_or("?")
        );
    }
    let gdb = Command::new("gdb")
        .args([
            "-p",
            &pid.to_string(),
            "-batch",
            "-ex",
            "thread apply all bt",
        ])
        .stdin(Stdio::null())
        .output();
    if let Ok(out) = gdb {
        eprintln!("{}", String::from_utf8_lossy(&out.stdout));
    }
}
