//! pid 1 of the environment's PID namespace: starts pcscd, waits for its readers,
//! starts the built-in card and waits until pcscd shows it, runs the command, reaps
//! every process (orphans included), forwards signals, and at the end stops
//! everything: SIGTERM to all, SIGKILL after a grace period (and the kernel kills
//! whatever is left once pid 1 exits).
//!
//! Without namespaces the same process is a child subreaper instead (orphans of the
//! command become its children): pcscd comes from `vpcd-env` (socket-activated in a
//! private directory, free ports), and the end signals its children, and the
//! orphans that then come to it, until none is left. What escapes: a process that
//! left the tree before its parent ended is still reparented here; only one that is
//! another subreaper's descendant is not.

use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::wait::{self, Spec, Target};
use crate::{sys, Isolation, Options, EXIT_SETUP, FRIENDLY_NAME, PORT, PRIVATE_DIR, SOCKET};

const SIGNALS: [i32; 6] = [
    sys::SIGINT,
    sys::SIGTERM,
    sys::SIGHUP,
    sys::SIGQUIT,
    sys::SIGCHLD,
    sys::SIGUSR1,
];

/// How long the processes get to end after SIGTERM, and the command after a
/// forwarded signal, before SIGKILL.
const GRACE: Duration = Duration::from_secs(3);

/// The exit status a shell would show for this status.
pub fn exit_code(status: ExitStatus) -> ExitCode {
    match (status.code(), status.signal()) {
        (Some(code), _) => ExitCode::from(code.clamp(0, 255) as u8),
        (None, Some(sig)) => ExitCode::from((128 + sig).clamp(0, 255) as u8),
        _ => ExitCode::from(EXIT_SETUP),
    }
}

/// Why the environment stops before the command has ended.
enum Stop {
    Signal(i32),
    Failed(String),
    /// Something the environment needs is missing; nothing ran, no log to show.
    Missing(String),
}

struct Env {
    o: Options,
    /// Without namespaces: the private pcscd, its directory and ports.
    isolated: Option<vpcd_env::Environment>,
    log: PathBuf,
    pcscd: i32,
    pcscd_status: Option<ExitStatus>,
    card: Option<i32>,
    command: Option<i32>,
    command_status: Option<ExitStatus>,
}

impl Env {
    /// Reaps every ended child, remembering the ones we care about.
    fn reap_all(&mut self) {
        while let Ok(Some((pid, status))) = sys::reap(-1) {
            if pid == self.pcscd {
                self.pcscd_status = Some(status);
            } else if Some(pid) == self.command {
                self.command_status = Some(status);
            } else if Some(pid) == self.card && !status.success() && self.command_status.is_none() {
                eprintln!("vpcd-run: the built-in card ended: {status}");
            }
        }
    }

    fn pcscd_gone(&self) -> Option<Stop> {
        self.pcscd_status
            .map(|s| Stop::Failed(format!("pcscd exited early: {s}")))
    }

    /// Runs `f` in a thread while taking signals and reaping children here.
    fn await_thread<T: Send + 'static>(
        &mut self,
        f: impl FnOnce() -> Result<T, String> + Send + 'static,
    ) -> Result<T, Stop> {
        let (tx, rx) = mpsc::channel();
        let me = sys::getpid();
        std::thread::spawn(move || {
            let _ = tx.send(f());
            sys::kill(me, sys::SIGUSR1);
        });
        loop {
            if let Ok(result) = rx.try_recv() {
                return result.map_err(|e| self.pcscd_gone().unwrap_or(Stop::Failed(e)));
            }
            match sys::wait_signal(&SIGNALS, Some(Duration::from_millis(500))) {
                Some(s) if s.number == sys::SIGCHLD => {
                    self.reap_all();
                    if let Some(stop) = self.pcscd_gone() {
                        return Err(stop);
                    }
                }
                Some(s) if s.number == sys::SIGUSR1 => {}
                Some(s) => return Err(Stop::Signal(s.number)),
                None => {}
            }
        }
    }

    /// The environment's socket, slot 0's port, and the card's control socket.
    fn socket(&self) -> PathBuf {
        self.isolated
            .as_ref()
            .map_or_else(|| SOCKET.into(), |e| e.socket().to_path_buf())
    }

    fn port(&self) -> u16 {
        self.isolated.as_ref().map_or(PORT, |e| e.port(0))
    }

    fn control_path(&self) -> PathBuf {
        self.isolated.as_ref().map_or_else(
            || Path::new(PRIVATE_DIR).join("card.ctl"),
            |e| e.dir().join("card.ctl"),
        )
    }

    /// Without namespaces: vpcd-env's pcscd, ready (holding its ports) on return.
    fn start_isolated(&mut self) -> Result<(), Stop> {
        let mut config = vpcd_env::Config::new(self.o.driver.clone().unwrap_or_default());
        config.pcscd = self.o.pcscd.clone();
        config.slots = self.o.slots;
        config.ports = self.o.ports;
        config.debug = self.o.debug;
        config.timeout = self.o.timeout;
        config.output = if self.o.debug {
            vpcd_env::Output::Inherit
        } else {
            vpcd_env::Output::DirLog
        };
        let env = vpcd_env::Environment::start(&config).map_err(|e| match e {
            vpcd_env::Error::PcscdExited { .. } | vpcd_env::Error::Timeout { .. } => {
                Stop::Failed(e.to_string())
            }
            // Nothing ran: one line says what is missing.
            other => Stop::Missing(other.to_string()),
        })?;
        self.pcscd = env.pcscd_pid();
        self.log = env.log_path();
        // This process's own PC/SC client (the readiness waits) uses it.
        std::env::set_var("PCSCLITE_CSOCK_NAME", env.socket());
        self.isolated = Some(env);
        Ok(())
    }

    fn start_pcscd(&mut self) -> Result<(), String> {
        let pcscd = self.o.pcscd.clone().unwrap_or_else(|| "pcscd".into());
        let mut cmd = Command::new(&pcscd);
        cmd.arg("-f")
            .arg("--config")
            .arg(Path::new(PRIVATE_DIR).join("reader.conf"))
            .arg(if self.o.debug { "-d" } else { "-i" })
            .stdin(Stdio::null())
            .process_group(0);
        if self.o.debug {
            cmd.env("VPCD_LOG", "debug");
        } else {
            // Append mode: the card's messages go to the same file.
            log_to(&mut cmd, &self.log)?;
        }
        sys::unblock_signals_in_child(&mut cmd);
        let child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", pcscd.display()))?;
        self.pcscd = child.id() as i32;
        Ok(())
    }

    fn start_card(&mut self) -> Result<(), String> {
        let vicc = self.o.vicc.clone().unwrap_or_else(|| "vpcd-vicc".into());
        let mut cmd = Command::new(&vicc);
        cmd.args([
            "-l",
            "-H",
            "127.0.0.1",
            "-P",
            &self.port().to_string(),
            "--control",
        ])
        .arg(self.control_path())
        .stdin(Stdio::null())
        .process_group(0);
        if let Some(fs) = &self.o.fs {
            cmd.arg("--fs").arg(fs);
        }
        if let Some(atr) = &self.o.atr {
            cmd.arg("--atr").arg(atr);
        }
        if !self.o.debug {
            // Its messages (connected, removed, ...) join pcscd's log.
            log_to(&mut cmd, &self.log)?;
        }
        sys::unblock_signals_in_child(&mut cmd);
        if self.isolated.is_some() {
            // No PID namespace to end it with us if we are killed.
            sys::parent_death_signal_in_child(&mut cmd, sys::SIGTERM);
        }
        let child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", vicc.display()))?;
        self.card = Some(child.id() as i32);
        Ok(())
    }

    /// pcscd up with its readers, then the card (if any) usable in slot 0.
    fn set_up(&mut self) -> Result<(), Stop> {
        let start = Instant::now();
        let timeout = self.o.timeout;
        if self.o.isolation == Isolation::None {
            self.start_isolated()?;
        } else {
            self.start_pcscd().map_err(Stop::Failed)?;
        }
        let slots = usize::from(self.o.slots);
        self.await_thread(move || wait::wait_readers(slots, timeout))?;
        if self.o.card {
            self.start_card().map_err(Stop::Failed)?;
            let spec = Spec {
                target: Target::Readers(vec![reader_name(0)]),
                present: true,
                timeout: timeout.saturating_sub(start.elapsed()),
            };
            self.await_thread(move || wait::wait(&spec).map(drop))?;
        }
        Ok(())
    }

    fn start_command(&mut self) -> Result<(), String> {
        let (program, args) = self.o.command.split_first().ok_or("no command")?;
        let mut cmd = Command::new(program);
        cmd.args(args)
            .env("PCSCLITE_CSOCK_NAME", self.socket())
            .env("VPCD_READER", reader_name(0))
            .env("VPCD_PORT", self.port().to_string());
        if let Some(card) = self.card {
            cmd.env("VPCD_CARD_CONTROL", self.control_path())
                .env("VPCD_CARD_PID", card.to_string());
        } else {
            cmd.env_remove("VPCD_CARD_CONTROL")
                .env_remove("VPCD_CARD_PID");
        }
        sys::unblock_signals_in_child(&mut cmd);
        let child = cmd
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", program.to_string_lossy()))?;
        self.command = Some(child.id() as i32);
        Ok(())
    }

    /// Until the command ends; a signal (other than the terminal's, which the
    /// command got itself) is passed on to it, with SIGKILL after the grace period.
    fn run_command(&mut self) -> ExitStatus {
        let mut kill_at: Option<Instant> = None;
        loop {
            self.reap_all();
            if let Some(status) = self.command_status {
                return status;
            }
            let timeout = kill_at.map(|t| t.saturating_duration_since(Instant::now()));
            if timeout.is_some_and(|t| t.is_zero()) {
                sys::kill(self.command.unwrap_or(0), sys::SIGKILL);
                kill_at = None;
                continue;
            }
            match sys::wait_signal(&SIGNALS, timeout) {
                Some(s) if s.number == sys::SIGCHLD || s.number == sys::SIGUSR1 => {}
                Some(s) if s.from_terminal && s.number != sys::SIGHUP => {}
                Some(s) => {
                    if let Some(pid) = self.command {
                        sys::kill(pid, s.number);
                    }
                    kill_at.get_or_insert(Instant::now() + GRACE);
                }
                None => {}
            }
        }
    }

    /// Ends every other process of the namespace and reaps them.
    fn shut_down(&mut self) {
        // kill(-1) is "every other process of the PID namespace" only inside one;
        // outside it is every process this user may signal.
        if self.o.isolation != Isolation::Namespaces || sys::getpid() != 1 {
            return self.shut_down_descendants();
        }
        sys::kill_namespace(sys::SIGTERM);
        let deadline = Instant::now() + GRACE;
        let mut killed = false;
        loop {
            match sys::reap(-1) {
                Ok(Some(_)) => continue,
                Err(_) => return, // no children left
                Ok(None) => {}
            }
            if !killed && Instant::now() >= deadline {
                sys::kill_namespace(sys::SIGKILL);
                killed = true;
            }
            sys::wait_signal(&[sys::SIGCHLD], Some(Duration::from_millis(50)));
        }
    }

    /// Without a PID namespace: SIGTERM to each child (orphans of the command become
    /// children here, this being a subreaper), SIGKILL after the grace period, until
    /// no child is left. Never kill(-1): outside a namespace that is every process.
    fn shut_down_descendants(&mut self) {
        let deadline = Instant::now() + GRACE;
        let mut signalled: Vec<(i32, i32)> = vec![];
        loop {
            match sys::reap(-1) {
                Ok(Some(_)) => continue,
                Err(_) => return, // no children left
                Ok(None) => {}
            }
            let sig = if Instant::now() >= deadline {
                sys::SIGKILL
            } else {
                sys::SIGTERM
            };
            for pid in sys::children() {
                if !signalled.contains(&(pid, sig)) {
                    sys::kill(pid, sig);
                    signalled.push((pid, sig));
                }
            }
            sys::wait_signal(&[sys::SIGCHLD], Some(Duration::from_millis(20)));
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn show_log(&self, why: &str, lines: usize) {
        if self.o.debug {
            return; // it went to stderr already
        }
        let text = self.log_text();
        let all: Vec<&str> = text.lines().collect();
        let skip = all.len().saturating_sub(lines);
        eprintln!(
            "vpcd-run: {why}; pcscd's log{}:",
            if skip > 0 {
                format!(" (last {lines} lines)")
            } else {
                String::new()
            }
        );
        for l in &all[skip..] {
            eprintln!("  {l}");
        }
    }

    fn keep_log(&self) {
        if let Some(dest) = &self.o.log {
            if let Err(e) = std::fs::copy(&self.log, dest) {
                eprintln!(
                    "vpcd-run: cannot copy pcscd's log to {}: {e}",
                    dest.display()
                );
            }
        }
    }
}

pub fn reader_name(slot: u8) -> String {
    format!("{FRIENDLY_NAME} 00 {slot:02X}")
}

pub fn main(o: Options) -> ExitCode {
    if let Err(e) = sys::block_signals(&SIGNALS) {
        eprintln!("vpcd-run: cannot block signals: {e}");
        return ExitCode::from(EXIT_SETUP);
    }
    // If the outer vpcd-run dies (even of SIGKILL), end the environment as on SIGTERM.
    if let Err(e) = sys::signal_on_parent_death(sys::SIGTERM) {
        eprintln!("vpcd-run: warning: cannot follow the outer vpcd-run: {e}");
    }
    if o.isolation == Isolation::None {
        // Orphans of the command come to us, to be ended with the rest.
        if let Err(e) = sys::become_subreaper() {
            eprintln!("vpcd-run: warning: cannot adopt the command's orphans: {e}");
        }
    } else if sys::getpid() == 1 {
        // This process's own PC/SC client (the readiness waits) uses the private pcscd.
        std::env::set_var("PCSCLITE_CSOCK_NAME", SOCKET);
        // A /proc of this PID namespace, so that ps and kill inside show its
        // processes. Not essential (some containers forbid it).
        let _ = sys::mount(
            "proc",
            "/proc",
            "proc",
            sys::MS_NOSUID | sys::MS_NODEV | sys::MS_NOEXEC,
            "",
        );
    }
    let mut env = Env {
        log: Path::new(PRIVATE_DIR).join("pcscd.log"),
        isolated: None,
        o,
        pcscd: -1,
        pcscd_status: None,
        card: None,
        command: None,
        command_status: None,
    };
    let started = env
        .set_up()
        .and_then(|()| env.start_command().map_err(Stop::Failed));
    let code = match started {
        Ok(()) => {
            let status = env.run_command();
            if !status.success() && !env.o.quiet {
                let why = format!("the command failed ({status})");
                env.shut_down();
                env.show_log(&why, 40);
            } else if env.pcscd_status.is_some() {
                env.show_log("pcscd ended before the command", 40);
            }
            exit_code(status)
        }
        Err(Stop::Signal(sig)) => {
            env.shut_down();
            ExitCode::from((128 + sig) as u8)
        }
        Err(Stop::Failed(e)) => {
            env.shut_down();
            eprintln!("vpcd-run: the environment did not come up: {e}");
            env.show_log("environment setup failed", 200);
            ExitCode::from(EXIT_SETUP)
        }
        Err(Stop::Missing(e)) => {
            env.shut_down();
            eprintln!("vpcd-run: {e}");
            ExitCode::from(EXIT_SETUP)
        }
    };
    env.shut_down();
    env.keep_log();
    // Without namespaces: pcscd (already ended) reaped, its directory removed.
    if let Some(isolated) = env.isolated.take() {
        isolated.stop();
    }
    code
}

/// Sends `cmd`'s stdout and stderr to the end of the environment's log file.
fn log_to(cmd: &mut Command, log: &std::path::Path) -> Result<(), String> {
    let out = std::fs::File::options()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|e| e.to_string())?;
    let err = out.try_clone().map_err(|e| e.to_string())?;
    cmd.stdout(out).stderr(err);
    Ok(())
}
