//! Live removal and insertion of the card while `vpcd-vicc` runs, for test suites
//! that exercise their removal paths without restarting the card process.
//!
//! The card leaves the reader the way a real one does for vpcd: its connection to
//! the slot closes (the driver reports the removal at once); it comes back by
//! connecting again (the driver reports the insertion at once, and pcscd reads the
//! ATR). A reset (power cycle) is a removal followed at once by an insertion.
//!
//! Triggers: SIGUSR1 removes, SIGUSR2 inserts; `--control PATH` also listens on a
//! Unix socket for the lines `remove`, `insert`, `reset`, `status`, which
//! `vpcd-vicc ctl PATH COMMAND` sends. Each answers one line once the change is
//! done: `remove` after the connection is closed, `insert` and `reset` after the
//! card is connected to the slot again.

use std::ffi::OsString;
use std::io::{self, BufRead, BufReader, ErrorKind, Write};
use std::net::{Shutdown, TcpStream};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::card::VirtualCard;

/// The text `vpcd-vicc --help` appends.
pub const HELP: &str = "\
Live removal and insertion (connect mode):
      --control PATH   also take commands on the Unix socket PATH
  vpcd-vicc ctl PATH remove|insert|reset|status
                       send one command to a running vpcd-vicc --control PATH;
                       prints the card's state once the change is done
  kill -USR1 PID       removes the card (closes the connection to vpcd)
  kill -USR2 PID       inserts it again (connects again)
  A reset is a removal and an insertion; the reader reports each at once.
";

/// How long `insert` and `reset` wait for the card to be connected again.
const INSERT_WAIT: Duration = Duration::from_secs(5);

struct State {
    /// The card should be in the reader.
    inserted: bool,
    /// A reset was asked for: the current connection ends, a new one follows at once.
    reset: bool,
    /// A removal closed the current connection: its end is ours, not vpcd's, even
    /// if an insertion comes before the serving thread sees the end.
    removed: bool,
    /// The connection to the slot, if any (a clone, to shut it down from here).
    connection: Option<TcpStream>,
    /// Connections made so far, to wait for the next one.
    connections: u64,
}

static STATE: Mutex<State> = Mutex::new(State {
    inserted: true,
    reset: false,
    removed: false,
    connection: None,
    connections: 0,
});
static CHANGED: Condvar = Condvar::new();

fn state() -> MutexGuard<'static, State> {
    STATE.lock().unwrap_or_else(|e| e.into_inner())
}

fn status_text(s: &State) -> &'static str {
    match (s.inserted, s.connection.is_some()) {
        (false, _) => "removed",
        (true, true) => "inserted",
        (true, false) => "inserted, not connected to vpcd",
    }
}

/// Applies one command; the answer is the card's state afterwards.
pub fn command(cmd: &str) -> Result<&'static str, String> {
    let mut s = state();
    match cmd {
        "remove" => {
            s.inserted = false;
            if let Some(c) = s.connection.take() {
                s.removed = true;
                let _ = c.shutdown(Shutdown::Both);
            }
            CHANGED.notify_all();
        }
        "insert" | "reset" => {
            let before = s.connections;
            if cmd == "reset" && s.inserted {
                if let Some(c) = s.connection.take() {
                    s.reset = true;
                    let _ = c.shutdown(Shutdown::Both);
                }
            } else if s.inserted {
                return Ok(status_text(&s));
            }
            s.inserted = true;
            CHANGED.notify_all();
            let deadline = Instant::now() + INSERT_WAIT;
            while s.inserted && s.connections == before {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                s = CHANGED
                    .wait_timeout(s, left)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
        }
        "status" => {}
        other => {
            return Err(format!(
                "unknown command \"{other}\": expected remove, insert, reset or status"
            ))
        }
    }
    Ok(status_text(&s))
}

/// Blocks while the card is removed.
pub fn wait_inserted() {
    let mut s = state();
    while !s.inserted {
        s = CHANGED.wait(s).unwrap_or_else(|e| e.into_inner());
    }
}

/// A connection to the slot: plain TCP, or TLS over it (crate::secure); removal shuts
/// its socket down.
pub trait Link: io::Read + io::Write {
    fn tcp(&self) -> &TcpStream;
}

impl Link for TcpStream {
    fn tcp(&self) -> &TcpStream {
        self
    }
}

/// Serves a connection like [`crate::card::server::serve`], and follows removals and
/// insertions: a removal closes the connection, then this waits for the insertion and
/// connects again with `reconnect`. Returns when the driver ends the connection.
pub fn serve<S, C, F>(stream: &mut S, card: &mut C, trace: bool, mut reconnect: F) -> io::Result<()>
where
    S: Link,
    C: VirtualCard + ?Sized,
    F: FnMut() -> io::Result<S>,
{
    loop {
        {
            let mut s = state();
            s.connections += 1;
            s.connection = stream.tcp().try_clone().ok();
            if !s.inserted {
                let _ = stream.tcp().shutdown(Shutdown::Both);
            }
            CHANGED.notify_all();
        }
        let result = crate::card::server::serve(stream, card, trace);
        let (removed, reset) = {
            let mut s = state();
            s.connection = None;
            let removed = std::mem::take(&mut s.removed);
            (removed || !s.inserted, std::mem::take(&mut s.reset))
        };
        if !removed && !reset {
            return result;
        }
        eprintln!(
            "vpcd-vicc: card {}",
            if reset { "reset" } else { "removed" }
        );
        wait_inserted();
        *stream = connect_again(&mut reconnect)?;
        card.connected();
        eprintln!("vpcd-vicc: card inserted");
    }
}

/// Connects after an insertion, retrying for a while (a restarting pcscd).
fn connect_again<S, F: FnMut() -> io::Result<S>>(reconnect: &mut F) -> io::Result<S> {
    let deadline = Instant::now() + INSERT_WAIT;
    let mut pause = Duration::from_millis(10);
    loop {
        match reconnect() {
            Ok(stream) => return Ok(stream),
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(200));
            }
        }
    }
}

/// Removes the control socket when dropped (and on SIGINT / SIGTERM / SIGHUP).
pub struct Control {
    path: Option<PathBuf>,
}

impl Drop for Control {
    fn drop(&mut self) {
        if let Some(p) = &self.path {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Starts following SIGUSR1 / SIGUSR2 and, with a path, the control socket.
pub fn start(path: Option<PathBuf>) -> Result<Control, String> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR1, SIGUSR2};
    let listener = match &path {
        Some(p) => Some(bind(p).map_err(|e| format!("--control {}: {e}", p.display()))?),
        None => None,
    };
    let mut signals = signal_hook::iterator::Signals::new([SIGUSR1, SIGUSR2])
        .map_err(|e| format!("cannot handle signals: {e}"))?;
    if path.is_some() {
        signals
            .add_signal(SIGINT)
            .and_then(|()| signals.add_signal(SIGTERM))
            .and_then(|()| signals.add_signal(SIGHUP))
            .map_err(|e| format!("cannot handle signals: {e}"))?;
    }
    let socket = path.clone();
    std::thread::spawn(move || {
        for sig in signals.forever() {
            let cmd = match sig {
                SIGUSR1 => "remove",
                SIGUSR2 => "insert",
                _ => {
                    if let Some(p) = &socket {
                        let _ = std::fs::remove_file(p);
                    }
                    let _ = signal_hook::low_level::emulate_default_handler(sig);
                    std::process::exit(128 + sig);
                }
            };
            // Run apart: an insertion waits for the connection.
            std::thread::spawn(move || {
                if let Ok(state) = command(cmd) {
                    eprintln!("vpcd-vicc: {cmd} (signal): {state}");
                }
            });
        }
    });
    if let Some(listener) = listener {
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                std::thread::spawn(move || handle(conn));
            }
        });
    }
    Ok(Control { path })
}

/// Binds the control socket; a stale socket file (nobody listening) is replaced.
fn bind(path: &Path) -> io::Result<UnixListener> {
    match UnixListener::bind(path) {
        Err(e) if e.kind() == ErrorKind::AddrInUse => {
            let is_socket = std::fs::symlink_metadata(path)?.file_type().is_socket();
            if is_socket && UnixStream::connect(path).is_err() {
                std::fs::remove_file(path)?;
                UnixListener::bind(path)
            } else {
                Err(e)
            }
        }
        other => other,
    }
}

/// One control connection: a command per line, a state (or `error: ...`) per line.
fn handle(conn: UnixStream) {
    let Ok(mut out) = conn.try_clone() else {
        return;
    };
    for line in BufReader::new(conn).lines() {
        let Ok(line) = line else { return };
        let reply = match command(line.trim()) {
            Ok(state) => {
                eprintln!("vpcd-vicc: {}: {state}", line.trim());
                state.to_owned()
            }
            Err(e) => format!("error: {e}"),
        };
        if writeln!(out, "{reply}").is_err() {
            return;
        }
    }
}

/// `vpcd-vicc ctl PATH COMMAND...`: sends the commands in turn, prints the answers.
pub fn ctl_main(args: &[String]) -> ExitCode {
    let usage = "usage: vpcd-vicc ctl PATH remove|insert|reset|status...";
    match args.first().map(String::as_str) {
        Some("-h" | "--help") => {
            println!("{usage}");
            return ExitCode::SUCCESS;
        }
        None => {
            eprintln!("vpcd-vicc: {usage}");
            return ExitCode::from(2);
        }
        _ => {}
    }
    if args.len() < 2 {
        eprintln!("vpcd-vicc: {usage}");
        return ExitCode::from(2);
    }
    let path = OsString::from(&args[0]);
    match ctl(Path::new(&path), &args[1..]) {
        Ok(replies) => {
            for r in replies {
                println!("{r}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("vpcd-vicc: ctl {}: {e}", args[0]);
            ExitCode::FAILURE
        }
    }
}

/// Sends commands to a control socket and returns the answers.
pub fn ctl(path: &Path, commands: &[String]) -> Result<Vec<String>, String> {
    let conn = UnixStream::connect(path).map_err(|e| e.to_string())?;
    conn.set_read_timeout(Some(INSERT_WAIT * 2))
        .map_err(|e| e.to_string())?;
    let mut out = conn.try_clone().map_err(|e| e.to_string())?;
    let mut lines = BufReader::new(conn).lines();
    let mut replies = vec![];
    for c in commands {
        writeln!(out, "{c}").map_err(|e| e.to_string())?;
        let reply = match lines.next() {
            Some(Ok(reply)) => reply,
            Some(Err(e)) => return Err(e.to_string()),
            None => return Err("vpcd-vicc closed the control connection".into()),
        };
        if let Some(e) = reply.strip_prefix("error: ") {
            return Err(e.to_owned());
        }
        replies.push(reply);
    }
    Ok(replies)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_and_help() {
        assert!(command("eject").is_err());
        assert!(HELP.contains("ctl PATH"));
    }
}
