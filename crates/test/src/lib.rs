//! # vpcd-test: a virtual smart card slot per test
//!
//! Each test leases a [`Slot`] of a private pcscd that the first lease starts for the
//! whole test process (no root, no namespaces: `vpcd-env`, the namespace-free mode of
//! `vpcd-run`). The slot has its own port for a virtual card, its own reader name and
//! a PC/SC context already pointed at that pcscd, so tests run in parallel with a
//! card each: no global lock, no sleeps, no system pcscd touched.
//!
//! ```no_run
//! use vpcd_test::{Card, Slot};
//!
//! // The built-in card (vpcd-vicc) in a slot of this test's own:
//! let mut slot = Slot::lease();
//! slot.insert_builtin().unwrap();
//! let card = slot.connect().unwrap();
//! let mut buf = [0; 258];
//! let rapdu = card.transmit(&[0x80, 0xEE, 0x00, 0x00, 0x01, 0x2A], &mut buf).unwrap();
//! assert_eq!(rapdu, [0x2A, 0x90, 0x00]);
//! slot.remove_card().unwrap(); // the reader reports it gone; insert_card() puts it back
//!
//! // A card the test implements:
//! struct Applet;
//! impl Card for Applet {
//!     fn atr(&mut self) -> Vec<u8> { vpcd_test::DEFAULT_ATR.to_vec() }
//!     fn transmit(&mut self, apdu: &[u8]) -> Vec<u8> { vec![0x90, 0x00] }
//! }
//! let mut slot = Slot::lease();
//! slot.serve(Applet).unwrap();
//!
//! // Or any vicc of your own, connecting to the slot's address:
//! let mut slot = Slot::lease();
//! let mut vicc = std::process::Command::new("vicc");
//! vicc.args(["-t", "iso7816", "-H", "127.0.0.1", "-P", &slot.port().to_string()]);
//! slot.spawn_vicc(vicc).unwrap();
//! ```
//!
//! A lease dropped (the test ends, passes or panics) takes its card out, waits until
//! the reader reports the slot empty, and frees it for the next test. The environment
//! ends with the process, however it ends (a watchdog process removes what is left).
//!
//! libpcsclite reads `PCSCLITE_CSOCK_NAME` once per process: the first lease sets it,
//! so lease before any other PC/SC call of the test process. Child processes of the
//! tests inherit it and are clients of the same pcscd.
//!
//! ## Choosing what runs
//! - `VPCD_TEST_SLOTS`: slots of the environment (1 to 16, default 16; more tests
//!   than slots wait for one).
//! - `VPCD_DRIVER`: the vpcd-rs driver (default: built beside the test, else
//!   installed); `VPCD_VICC`: the built-in card (default: beside the test, else
//!   `PATH`); `VPCD_PCSCD`: the pcscd (default: `PATH`, then the sbin directories).
//! - `VPCD_TEST_DEBUG=1`: pcscd's and the driver's debug log on stderr.
//!
//! ## Module map
//! - this file: [`Slot`] (the lease and its helpers), [`Error`].
//! - [`card`]: the [`Card`] trait and the vicc that serves it from a thread.
//! - `env`: the process's environment (pcscd, the keeper thread, the watchdog).
//! - `lease`: the lock-free table of leased slots.
//! - `child`: a card in a process of its own (vpcd-vicc, any vicc).
//! - `client`: the readers pcscd lists.
//! - [`status`]: waiting for a card to come or go (woken by pcscd's own event, no
//!   polling), on an SCardGetStatusChange that returns even when pcsc-lite's client
//!   library would not.
//! - `sys`: the parent-death signal of card processes (the only `unsafe`).

#![deny(unsafe_code)]

use std::ffi::{CStr, CString, OsString};
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

pub mod card;
mod child;
mod client;
mod env;
mod lease;
pub mod status;
#[allow(unsafe_code)]
mod sys;

pub use card::{Card, DEFAULT_ATR};
pub use pcsc;

use card::Served;
use child::CardProcess;

/// How long a card may take to come or go.
pub const CARD_WAIT: Duration = Duration::from_secs(10);

/// What went wrong, in one line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    message: String,
}

impl Error {
    fn new(message: impl Into<String>) -> Error {
        Error {
            message: message.into(),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

/// What is in the slot.
enum Occupant {
    Served(Served),
    Process(CardProcess),
}

/// A slot of the private pcscd, leased to one test until dropped.
pub struct Slot {
    env: &'static env::Env,
    index: u8,
    reader: CString,
    context: pcsc::Context,
    occupant: Option<Occupant>,
}

impl Slot {
    /// Leases a free slot, starting the environment on first use; waits while every
    /// slot is leased. Panics with the reason if the environment cannot start.
    pub fn lease() -> Slot {
        Slot::try_lease().unwrap_or_else(|e| panic!("vpcd-test: {e}"))
    }

    /// [`Slot::lease`], with the reason as an error.
    pub fn try_lease() -> Result<Slot, Error> {
        let env = env::get()?;
        let index = env.table.acquire(env::LEASE_WAIT).ok_or_else(|| {
            Error::new(format!(
                "no slot freed within {:?}: each of the {} slots is leased (drop leases, \
                 or raise VPCD_TEST_SLOTS)",
                env::LEASE_WAIT,
                env.table.len()
            ))
        })?;
        let slot = index as u8;
        let context = match pcsc::Context::establish(pcsc::Scope::User) {
            Ok(c) => c,
            Err(e) => {
                env.table.release(index);
                return Err(Error::new(format!("SCardEstablishContext: {e}")));
            }
        };
        let reader = CString::new(env.environment.reader_name(slot)).expect("no NUL in a name");
        Ok(Slot {
            env,
            index: slot,
            reader,
            context,
            occupant: None,
        })
    }

    /// The slot's number in the reader (0 to 15).
    pub fn index(&self) -> u8 {
        self.index
    }

    /// The TCP port the slot's vicc connects to, on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.env.environment.port(self.index)
    }

    /// The address the slot's vicc connects to: `127.0.0.1:port`. (Only loopback:
    /// the reader listens there and its allow-list takes nothing else.)
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, self.port()))
    }

    /// The reader name PC/SC clients open, e.g. `"Virtual PCD 00 03"`.
    pub fn reader(&self) -> &str {
        self.reader.to_str().expect("an ASCII name")
    }

    /// [`Slot::reader`] for the `pcsc` crate's calls.
    pub fn reader_cstr(&self) -> &CStr {
        &self.reader
    }

    /// A PC/SC context of the private pcscd, the lease's own.
    pub fn context(&self) -> &pcsc::Context {
        &self.context
    }

    /// The private pcscd's socket (`PCSCLITE_CSOCK_NAME` of its clients).
    pub fn socket(&self) -> &Path {
        self.env.socket()
    }

    /// The variables a child process (opensc-tool, pcsc_scan, a Python client) needs
    /// to use this slot, as `vpcd-run` names them: `PCSCLITE_CSOCK_NAME`,
    /// `VPCD_READER`, `VPCD_PORT`. (The first lease already put the first in this
    /// process's environment, which children inherit.)
    pub fn env_vars(&self) -> Vec<(&'static str, OsString)> {
        let mut vars = env::client_env(self.env);
        vars.push(("VPCD_READER", self.reader().into()));
        vars.push(("VPCD_PORT", self.port().to_string().into()));
        vars
    }

    /// Puts the built-in card (`vpcd-vicc`, see its `--help` for the card) in the
    /// slot and waits until the reader reports it.
    pub fn insert_builtin(&mut self) -> Result<(), Error> {
        self.insert_builtin_with::<&str>(&[])
    }

    /// [`Slot::insert_builtin`] with more `vpcd-vicc` options, e.g.
    /// `["--atr", "3B 80 80 01 01"]` or `["--fs", dir]`.
    pub fn insert_builtin_with<S: AsRef<std::ffi::OsStr>>(
        &mut self,
        args: &[S],
    ) -> Result<(), Error> {
        self.check_empty()?;
        let dir = self.env.environment.dir();
        let control = dir.join(format!("slot-{:02}.ctl", self.index));
        let _ = std::fs::remove_file(&control);
        let mut cmd = Command::new(env::vicc()?);
        cmd.args([
            "-H",
            "127.0.0.1",
            "-P",
            &self.port().to_string(),
            "--control",
        ])
        .arg(&control)
        .args(args);
        let log = dir.join(format!("slot-{:02}-vicc.log", self.index));
        let process = CardProcess::spawn(self.env, cmd, log, Some(control))?;
        self.occupant = Some(Occupant::Process(process));
        self.wait_inserted()
    }

    /// Starts a vicc of the test's choice, which must connect to [`Slot::addr`], and
    /// waits until the reader reports its card. It dies with the lease (and with
    /// the test process). Its output goes to a log shown if its card never comes.
    pub fn spawn_vicc(&mut self, cmd: Command) -> Result<(), Error> {
        self.check_empty()?;
        let log = self
            .env
            .environment
            .dir()
            .join(format!("slot-{:02}-vicc.log", self.index));
        let process = CardProcess::spawn(self.env, cmd, log, None)?;
        self.occupant = Some(Occupant::Process(process));
        self.wait_inserted()
    }

    /// Serves `card` to the slot from a thread of this process (this crate speaks
    /// the vpcd protocol for it) and waits until the reader reports it.
    pub fn serve<C: Card>(&mut self, card: C) -> Result<(), Error> {
        self.check_empty()?;
        self.occupant = Some(Occupant::Served(Served::start(self.addr(), card)));
        self.wait_inserted()
    }

    /// Takes the card out (its connection to the slot closes) and waits until the
    /// reader reports the slot empty. The card stays, ready for
    /// [`Slot::insert_card`].
    pub fn remove_card(&self) -> Result<(), Error> {
        match &self.occupant {
            Some(Occupant::Served(s)) => s.remove(),
            Some(Occupant::Process(p)) => {
                p.control("remove").map_err(|e| {
                    Error::new(format!(
                        "{}: {e}; the vicc's output:\n{}",
                        self.reader(),
                        p.output()
                    ))
                })?;
            }
            None => return Err(Error::new("no card in this slot to remove")),
        }
        self.wait_absent(CARD_WAIT)
    }

    /// Puts the card taken out by [`Slot::remove_card`] back and waits until the
    /// reader reports it.
    pub fn insert_card(&self) -> Result<(), Error> {
        match &self.occupant {
            Some(Occupant::Served(s)) => s.insert().map_err(Error::new)?,
            Some(Occupant::Process(p)) => {
                p.control("insert").map_err(|e| {
                    Error::new(format!(
                        "{}: {e}; the vicc's output:\n{}",
                        self.reader(),
                        p.output()
                    ))
                })?;
            }
            None => return Err(Error::new("no card in this slot to insert")),
        }
        self.wait_present(CARD_WAIT)
    }

    /// Waits until the reader reports a card (SCardGetStatusChange).
    pub fn wait_present(&self, timeout: Duration) -> Result<(), Error> {
        self.wait(true, timeout)
    }

    /// Waits until the reader reports no card.
    pub fn wait_absent(&self, timeout: Duration) -> Result<(), Error> {
        self.wait(false, timeout)
    }

    fn wait(&self, present: bool, timeout: Duration) -> Result<(), Error> {
        status::wait_card(&self.reader, present, timeout)
            .map(|_| ())
            .map_err(|e| {
                Error::new(format!(
                    "{}: card {} not reported: {e}",
                    self.reader(),
                    if present { "insertion" } else { "removal" }
                ))
            })
    }

    /// Connects to the slot's card (shared, T=0 or T=1).
    pub fn connect(&self) -> Result<pcsc::Card, Error> {
        self.context
            .connect(&self.reader, pcsc::ShareMode::Shared, pcsc::Protocols::ANY)
            .map_err(|e| Error::new(format!("SCardConnect({}): {e}", self.reader())))
    }

    /// Takes the card out for good (the process ended, the served card's thread
    /// too) and waits until the reader reports the slot empty. Returns the served
    /// card's failure, if it had one.
    pub fn eject(&mut self) -> Result<(), Error> {
        let failure = match self.occupant.take() {
            None => None,
            Some(Occupant::Served(mut s)) => s.stop(),
            Some(Occupant::Process(mut p)) => {
                p.kill();
                None
            }
        };
        self.wait_absent(CARD_WAIT)?;
        match failure {
            Some(f) => Err(Error::new(format!("the card of {}: {f}", self.reader()))),
            None => Ok(()),
        }
    }

    fn check_empty(&self) -> Result<(), Error> {
        match self.occupant {
            Some(_) => Err(Error::new(format!(
                "{} has a card already: eject() it first",
                self.reader()
            ))),
            None => Ok(()),
        }
    }

    /// Waits for the card just started, watching for it to fail meanwhile (a vicc
    /// that exits, a served card refused by the reader) so that such a failure shows
    /// at once with its reason instead of as a timeout.
    fn wait_inserted(&mut self) -> Result<(), Error> {
        const SLICE: Duration = Duration::from_millis(250);
        let start = std::time::Instant::now();
        loop {
            match status::wait_card(&self.reader, true, SLICE) {
                Ok(_) => return Ok(()),
                Err(e) if e.starts_with("SCardGetStatusChange") => {
                    return Err(Error::new(format!("{}: {e}", self.reader())))
                }
                Err(_) => {}
            }
            let failed = match &mut self.occupant {
                Some(Occupant::Served(s)) => s.failure(),
                Some(Occupant::Process(p)) => p.exited().map(|status| {
                    format!("the vicc ended ({status}); its output:\n{}", p.output())
                }),
                None => None,
            };
            let timed_out = start.elapsed() >= CARD_WAIT;
            if failed.is_some() || timed_out {
                let why = failed.unwrap_or_else(|| match &self.occupant {
                    Some(Occupant::Process(p)) => format!(
                        "no card within {CARD_WAIT:?}; the vicc's output:\n{}",
                        p.output()
                    ),
                    _ => format!("no card within {CARD_WAIT:?}"),
                });
                if let Some(Occupant::Process(mut p)) = self.occupant.take() {
                    p.kill();
                }
                self.occupant = None;
                return Err(Error::new(format!("{}: {why}", self.reader())));
            }
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let result = self.eject();
        let freed = match &result {
            Err(e) if !e.message.starts_with("the card of") => {
                // The card did not go: another test must not get it. The slot stays
                // leased for the rest of the process.
                eprintln!("vpcd-test: {} kept out of use: {e}", self.reader());
                false
            }
            _ => true,
        };
        if freed {
            self.env.table.release(usize::from(self.index));
        }
        if let Err(e) = result {
            if freed && !std::thread::panicking() {
                panic!("vpcd-test: {e}");
            }
        }
    }
}

/// One APDU through `card`, the response as a vector (extended lengths welcome).
pub fn transmit(card: &pcsc::Card, apdu: &[u8]) -> Result<Vec<u8>, pcsc::Error> {
    let mut buf = vec![0u8; pcsc::MAX_BUFFER_SIZE_EXTENDED];
    card.transmit(apdu, &mut buf).map(<[u8]>::to_vec)
}
