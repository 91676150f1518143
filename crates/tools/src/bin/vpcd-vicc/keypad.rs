//! `vpcd-vicc --pinpad`: the keypad of a vpcd-rs PIN pad reader (docs/PINPAD.md).
//!
//! The driver asks for a PIN with the extension's request; the keypad answers with
//! the digits, or with cancelled / timed out. Where the digits come from:
//! - `--pin-entry LIST` or `VPCD_PIN=LIST` (tests, scripts): a comma-separated list of
//!   entries, each digits, `cancel` (the user presses Cancel) or `never` (the user
//!   never types: the keypad times out). Every PIN the keypad asks for (the current
//!   PIN, the new one, its confirmation) takes the next entry; the last one repeats.
//! - otherwise a prompt on the terminal (`/dev/tty`, without echo): Enter ends the
//!   entry, an empty line cancels, and the request's timeout applies.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use vpcd_protocol::pinpad::{PinAnswer, PinOperation, PinParams, Status};
use vpcd_protocol::vpcd::Control;

use crate::card::{PinEntry, VirtualCard};

/// A card (the built-in one, or a relay) with a keypad: `vpcd-vicc --pinpad`.
pub struct WithKeypad<C> {
    pub card: C,
    pub keypad: Keypad,
}

impl<C: VirtualCard> VirtualCard for WithKeypad<C> {
    fn connected(&mut self) {
        self.card.connected()
    }

    fn control(&mut self, control: Control) -> Option<&[u8]> {
        self.card.control(control)
    }

    fn respond(&mut self, apdu: &[u8], out: &mut Vec<u8>) {
        self.card.respond(apdu, out)
    }

    fn keypad(&mut self) -> Option<&mut dyn PinEntry> {
        Some(&mut self.keypad)
    }
}

/// One scripted entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    Digits(String),
    Cancel,
    Never,
}

/// Parses a `--pin-entry` / `VPCD_PIN` list.
pub fn parse_entries(text: &str) -> Result<Vec<Entry>, String> {
    text.split(',')
        .map(|e| match e.trim() {
            "cancel" => Ok(Entry::Cancel),
            "never" => Ok(Entry::Never),
            d if !d.is_empty() && d.len() <= 255 && d.bytes().all(|b| b.is_ascii_digit()) => {
                Ok(Entry::Digits(d.to_owned()))
            }
            other => Err(format!(
                "bad PIN entry \"{other}\": expected digits, cancel or never"
            )),
        })
        .collect()
}

/// Where PINs come from.
pub enum Keypad {
    Scripted {
        entries: Vec<Entry>,
        next: usize,
    },
    Prompt {
        lines: Option<Receiver<Option<String>>>,
    },
}

/// What one PIN prompt gave.
enum Got {
    Pin(String),
    No(Status),
}

impl PinEntry for Keypad {
    fn enter(&mut self, params: &PinParams) -> PinAnswer {
        Keypad::enter(self, params)
    }
}

impl Keypad {
    pub fn scripted(entries: Vec<Entry>) -> Keypad {
        Keypad::Scripted { entries, next: 0 }
    }

    pub fn prompt() -> Keypad {
        Keypad::Prompt { lines: None }
    }

    /// Answers one PIN request.
    pub fn enter(&mut self, params: &PinParams) -> PinAnswer {
        let deadline = Instant::now() + Duration::from_secs(u64::from(params.timeout_secs));
        let mut prompts = vec![];
        match params.operation {
            PinOperation::Verify => prompts.push("PIN"),
            PinOperation::Modify => {
                if params.current {
                    prompts.push("current PIN");
                }
                prompts.push("new PIN");
                if params.confirm {
                    prompts.push("new PIN again");
                }
            }
        }
        let mut pins = vec![];
        for what in prompts {
            match self.one(what, params, deadline) {
                Got::Pin(pin) => pins.push(pin),
                Got::No(status) => return PinAnswer::Not(status),
            }
        }
        if params.confirm && params.operation == PinOperation::Modify {
            let confirmation = pins.pop();
            if confirmation.as_ref() != pins.last() {
                return PinAnswer::Not(Status::Mismatch);
            }
        }
        PinAnswer::Entered(pins.into_iter().map(String::into_bytes).collect())
    }

    fn one(&mut self, what: &str, params: &PinParams, deadline: Instant) -> Got {
        let limits = usize::from(params.min_digits)..=usize::from(params.max_digits);
        match self {
            Keypad::Scripted { entries, next } => {
                let entry = entries
                    .get(*next)
                    .or(entries.last())
                    .cloned()
                    .unwrap_or(Entry::Cancel);
                *next += 1;
                match entry {
                    Entry::Cancel => Got::No(Status::Cancelled),
                    Entry::Never => {
                        std::thread::sleep(deadline.saturating_duration_since(Instant::now()));
                        Got::No(Status::TimedOut)
                    }
                    Entry::Digits(d) if limits.contains(&d.len()) => Got::Pin(d),
                    Entry::Digits(_) => Got::No(Status::BadLength),
                }
            }
            Keypad::Prompt { lines } => prompt(lines, what, params, deadline),
        }
    }
}

/// Asks on the terminal until a PIN within the limits, an empty line (cancel), the
/// end of input (cancel) or the deadline.
fn prompt(
    lines: &mut Option<Receiver<Option<String>>>,
    what: &str,
    params: &PinParams,
    deadline: Instant,
) -> Got {
    let Ok(mut tty) = File::options().write(true).open("/dev/tty") else {
        eprintln!("vpcd-vicc: a PIN was asked for, but there is no terminal to ask on (use --pin-entry): cancelled");
        return Got::No(Status::Cancelled);
    };
    let lines = lines.get_or_insert_with(read_tty_lines);
    // Lines typed while nobody asked are not a PIN.
    while lines.try_recv().is_ok() {}
    let echo = |on: bool| {
        let _ = Command::new("stty")
            .arg(if on { "echo" } else { "-echo" })
            .stdin(File::open("/dev/tty").map_or(Stdio::null(), Stdio::from))
            .stderr(Stdio::null())
            .status();
    };
    echo(false);
    let got = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let _ = write!(
            tty,
            "vpcd-vicc: enter the {what} ({}-{} digits, Enter to confirm, empty line to cancel; {} s): ",
            params.min_digits,
            params.max_digits,
            left.as_secs()
        );
        let _ = tty.flush();
        match lines.recv_timeout(left) {
            Ok(Some(line)) => {
                let _ = writeln!(tty);
                let line = line.trim();
                if line.is_empty() {
                    break Got::No(Status::Cancelled);
                }
                let ok_len = (usize::from(params.min_digits)..=usize::from(params.max_digits))
                    .contains(&line.len());
                if ok_len && line.bytes().all(|b| b.is_ascii_digit()) {
                    break Got::Pin(line.to_owned());
                }
                let _ = writeln!(
                    tty,
                    "vpcd-vicc: digits only, {} to {} of them",
                    params.min_digits, params.max_digits
                );
            }
            Ok(None) | Err(RecvTimeoutError::Disconnected) => break Got::No(Status::Cancelled),
            Err(RecvTimeoutError::Timeout) => {
                let _ = writeln!(tty, "\nvpcd-vicc: PIN entry timed out");
                break Got::No(Status::TimedOut);
            }
        }
    };
    echo(true);
    got
}

/// A thread that reads the terminal's lines for as long as the process runs (a
/// prompt that timed out leaves it waiting for the next line, which the next prompt
/// discards). `None` at the end of input.
fn read_tty_lines() -> Receiver<Option<String>> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let Ok(tty) = File::open("/dev/tty") else {
            let _ = tx.send(None);
            return;
        };
        for line in BufReader::new(tty).lines() {
            match line {
                Ok(line) => {
                    if tx.send(Some(line)).is_err() {
                        return;
                    }
                }
                Err(_) => break,
            }
        }
        let _ = tx.send(None);
    });
    rx
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(operation: PinOperation, current: bool, confirm: bool) -> PinParams {
        PinParams {
            version: 1,
            operation,
            current,
            confirm,
            min_digits: 4,
            max_digits: 8,
            timeout_secs: 1,
            message: 0,
        }
    }

    #[test]
    fn entries_parse() {
        assert_eq!(
            parse_entries("1234, cancel,never").unwrap(),
            [Entry::Digits("1234".into()), Entry::Cancel, Entry::Never]
        );
        assert!(parse_entries("12a4").is_err());
        assert!(parse_entries("").is_err());
        assert!(parse_entries("1234,,5678").is_err());
    }

    #[test]
    fn scripted_entries_are_taken_in_turn() {
        let mut k = Keypad::scripted(parse_entries("1234,5678,5678,999999").unwrap());
        assert_eq!(
            k.enter(&params(PinOperation::Modify, true, true)),
            PinAnswer::Entered(vec![b"1234".to_vec(), b"5678".to_vec()])
        );
        // The last entry repeats.
        for _ in 0..2 {
            assert_eq!(
                k.enter(&params(PinOperation::Verify, false, false)),
                PinAnswer::Entered(vec![b"999999".to_vec()])
            );
        }
        let mut k = Keypad::scripted(parse_entries("1234,5678,8765").unwrap());
        assert_eq!(
            k.enter(&params(PinOperation::Modify, true, true)),
            PinAnswer::Not(Status::Mismatch)
        );
        let mut k = Keypad::scripted(parse_entries("123").unwrap());
        assert_eq!(
            k.enter(&params(PinOperation::Verify, false, false)),
            PinAnswer::Not(Status::BadLength)
        );
        let mut k = Keypad::scripted(vec![Entry::Cancel]);
        assert_eq!(
            k.enter(&params(PinOperation::Verify, false, false)),
            PinAnswer::Not(Status::Cancelled)
        );
        let mut k = Keypad::scripted(vec![Entry::Never]);
        let start = Instant::now();
        assert_eq!(
            k.enter(&params(PinOperation::Verify, false, false)),
            PinAnswer::Not(Status::TimedOut)
        );
        assert!(start.elapsed() >= Duration::from_millis(900));
    }
}
