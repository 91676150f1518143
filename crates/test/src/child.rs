//! A card in a process of its own: the built-in card (`vpcd-vicc`, removed and
//! inserted through its control socket) or any vicc the test names (vsmartcard's
//! Python vicc, jCardSim's VSmartCard, a vpicc-based Rust card), started from the
//! environment's keeper thread so that it dies with the test process.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::env::Env;
use crate::Error;

pub struct CardProcess {
    child: Option<Child>,
    /// `vpcd-vicc --control` socket, for the built-in card.
    control: Option<PathBuf>,
    /// Its stdout and stderr.
    pub log: PathBuf,
}

impl CardProcess {
    /// Starts `cmd` with its output in `log`.
    pub fn spawn(
        env: &Env,
        mut cmd: Command,
        log: PathBuf,
        control: Option<PathBuf>,
    ) -> Result<CardProcess, Error> {
        let out = std::fs::File::create(&log)
            .map_err(|e| Error::new(format!("cannot create {}: {e}", log.display())))?;
        let err = out
            .try_clone()
            .map_err(|e| Error::new(format!("cannot duplicate a file: {e}")))?;
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        crate::sys::die_with_parent(&mut cmd);
        let what = format!("{cmd:?}");
        let child = env
            .on_keeper(move || cmd.spawn())
            .map_err(|e| Error::new(format!("cannot start {what}: {e}")))?;
        Ok(CardProcess {
            child: Some(child),
            control,
            log,
        })
    }

    /// Its output so far, for error messages.
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Whether it ended, and how.
    pub fn exited(&mut self) -> Option<String> {
        let child = self.child.as_mut()?;
        match child.try_wait() {
            Ok(Some(status)) => Some(status.to_string()),
            _ => None,
        }
    }

    /// Sends one command (`remove`, `insert`, `reset`) to the built-in card.
    pub fn control(&self, command: &str) -> Result<String, Error> {
        let path = self.control.as_deref().ok_or_else(|| {
            Error::new(
                "this card has no control socket: remove and insert need the built-in card \
                 or a served one",
            )
        })?;
        send(path, command).map_err(|e| Error::new(format!("vpcd-vicc control {command}: {e}")))
    }

    /// Ends it (SIGKILL by pid) and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for CardProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

fn send(path: &Path, command: &str) -> std::io::Result<String> {
    let conn = UnixStream::connect(path)?;
    conn.set_read_timeout(Some(Duration::from_secs(15)))?;
    writeln!(&conn, "{command}")?;
    let mut line = String::new();
    BufReader::new(&conn).read_line(&mut line)?;
    let line = line.trim().to_string();
    match line.strip_prefix("error: ") {
        Some(e) => Err(std::io::Error::other(e.to_string())),
        None if line.is_empty() => Err(std::io::Error::other("no answer")),
        None => Ok(line),
    }
}
