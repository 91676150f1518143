//! The slot contract: what the FFI layer asks of any slot, whatever protocol its card
//! speaks, and the slot kinds that fulfil it.
//!
//! - [`vpcd`]: a slot whose card is one vicc on its own TCP connection.
//! - [`vscard`]: a slot whose card a VSCard client (libcacard's `vscclient`) offers;
//!   the slots of one reader share that client's connection.
//!
//! - [`conn`]: the connection bookkeeping both share (ids, the one current
//!   connection, removal by id, APDU tracing).
//! - `decide`: the vpcd slot's decisions apart from its I/O (a new peer's proof, the
//!   unproven peers' bounds, idle-connection checks, reply read bounds), unit-tested.
//!
//! PIN entry ([`CardSlot::enter_pin`]) is a vpcd slot's, for a vicc that said HELLO;
//! the VSCard slot keeps the default (unsupported).
//!
//! The FFI layer knows slots only through [`CardSlot`], [`SlotError`] and [`Limits`]:
//! no protocol's error or size reaches it.

pub(crate) mod conn;
mod decide;
pub(crate) mod vpcd;
pub(crate) mod vscard;

use std::fmt;
use std::io;

use vpcd_protocol::config::{Protocol, ReaderConfig};
use vpcd_protocol::part10::PinCommand;

use crate::presence::Presence;

/// What pcscd asks of the card's power.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PowerAction {
    Up,
    Down,
    Reset,
}

/// The sizes a slot can carry, for pcscd's and clients' questions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Limits {
    /// The longest command APDU, header included (SCARD_ATTR_MAXINPUT).
    pub max_command: usize,
    /// The most command data one extended APDU may carry (PC/SC part 10's
    /// dwMaxAPDUDataSize).
    pub max_command_data: usize,
}

/// Why a slot call failed, in the terms pcscd knows.
#[derive(Debug)]
pub(crate) enum SlotError {
    /// No card in the slot.
    NoCard,
    /// The card's peer did not answer within the reader's timeout; it was dropped.
    Timeout,
    /// The connection to the card's peer failed; it was dropped.
    Io(io::Error),
    /// The peer broke its protocol, or the command cannot travel in it.
    Protocol(String),
    /// The card's reply is larger than the caller's buffer.
    ReplyTooLarge { len: usize, capacity: usize },
    /// The slot's card cannot do this (PIN entry by a vicc that never offered it).
    Unsupported,
}

impl fmt::Display for SlotError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SlotError::NoCard => write!(f, "no card in the slot"),
            SlotError::Timeout => write!(f, "the card's peer did not answer in time"),
            SlotError::Io(e) => write!(f, "connection to the card's peer failed: {e}"),
            SlotError::Protocol(e) => write!(f, "protocol error: {e}"),
            SlotError::ReplyTooLarge { len, capacity } => write!(
                f,
                "reply of {len} bytes is larger than the caller's buffer of {capacity}"
            ),
            SlotError::Unsupported => write!(f, "the card's peer does not support this"),
        }
    }
}

impl From<io::Error> for SlotError {
    fn from(e: io::Error) -> SlotError {
        match e.kind() {
            io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => SlotError::Timeout,
            _ => SlotError::Io(e),
        }
    }
}

impl From<vpcd_protocol::vpcd::ProtocolError> for SlotError {
    fn from(e: vpcd_protocol::vpcd::ProtocolError) -> SlotError {
        match e {
            vpcd_protocol::vpcd::ProtocolError::ReplyTooLarge { len, capacity } => {
                SlotError::ReplyTooLarge { len, capacity }
            }
            e => SlotError::Protocol(e.to_string()),
        }
    }
}

/// What pcscd needs of a slot, whatever protocol its card speaks.
pub(crate) trait CardSlot: Send + Sync {
    /// A short name for log lines.
    fn label(&self) -> &str;
    /// The sizes this slot can carry.
    fn limits(&self) -> Limits;
    /// Card state for pcscd's polling callback and presence check.
    fn presence(&self) -> &Presence;
    /// The ATR of the powered card, if any.
    fn atr(&self) -> Option<Vec<u8>>;
    /// Powers the card up, down or resets it; returns the ATR (empty after power down).
    fn power(&self, action: PowerAction) -> Result<Vec<u8>, SlotError>;
    /// Sends one command APDU, copies the reply into `reply`, returns its length.
    fn transmit(&self, apdu: &[u8], reply: &mut [u8]) -> Result<usize, SlotError>;
    /// Whether the card's peer enters PINs: a vicc that announced the PIN pad
    /// extension (docs/PINPAD.md). Slot kinds without it say no.
    fn pin_entry(&self) -> bool {
        false
    }
    /// Has the card's peer enter the PIN(s) `command` asks for, sends the APDU built
    /// from them to the card like [`CardSlot::transmit`], and copies the card's reply
    /// into `reply`; when no PIN was entered, PC/SC part 10's status word instead
    /// (64 00 timeout, 64 01 cancelled, 64 02 confirmation differs, 64 03 length).
    /// Returns the reply's length.
    fn enter_pin(&self, command: &PinCommand, reply: &mut [u8]) -> Result<usize, SlotError> {
        let _ = (command, reply);
        Err(SlotError::Unsupported)
    }
    /// Drops the card's peer (a removal); an exchange in flight fails at once.
    fn drop_peer(&self, why: &str);
    /// Stops and joins every thread of the slot. Idempotent.
    fn close(&self);
}

/// Opens slot `lun & 0xFFFF` of the reader `config` describes. The one place a slot's
/// range is checked: the slot kinds get an index and a port that exist.
pub(crate) fn open(config: &ReaderConfig, lun: u32) -> io::Result<Box<dyn CardSlot>> {
    let index = (lun & 0xFFFF) as u16;
    let port = config.port_of(index).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "slot {index} does not exist: the reader has {} slot(s)",
                config.slots
            ),
        )
    })?;
    Ok(match config.protocol {
        Protocol::Vpcd => Box::new(vpcd::VpcdSlot::open(config, lun, index, port)?),
        Protocol::VsCard => Box::new(vscard::VscardSlot::open(config, lun, index)?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slot_beyond_the_reader_is_refused_for_every_slot_kind() {
        for kind in ["", "/protocol=vscard"] {
            let config = ReaderConfig::parse(&format!("/dev/null:35990/slots=2{kind}")).unwrap();
            let e = open(&config, 0xBEE8 << 16 | 2).err().expect("refused");
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
            assert_eq!(
                e.to_string(),
                "slot 2 does not exist: the reader has 2 slot(s)"
            );
        }
    }
}
