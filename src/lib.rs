//! # vpcd: a virtual smart card reader for pcsc-lite
//!
//! `libifdvpcd.so` is an IFD handler that pcscd loads like any reader driver. Each
//! slot of the reader is a TCP endpoint; a virtual card (a *vicc*) that connects to
//! it is a card inserted in that slot, and pcscd's power events and APDUs travel to it
//! in the vpcd protocol. It is a drop-in replacement for the C vpcd of the vsmartcard
//! project: same `reader.conf.d` syntax, same wire protocol.
//!
//! ## Module map
//! - [`ifd`]: the `extern "C"` IFD Handler API pcscd calls, IFD constants and the log
//!   bridge into pcscd's log. With [`sys`] (the `poll` call), the only `unsafe` code.
//! - [`driver`]: the table of open slots by Lun.
//! - [`slot`]: one slot: its vicc connection, card state, watcher thread, timeouts;
//!   [`slot::CardSlot`] is what pcscd needs of any slot.
//! - [`presence`]: card presence as pcscd sees it, and the polling callback's wait.
//! - [`net`]: listening and peer socket setup shared by all readers.
//! - [`protocol`]: the vpcd wire codec, pure and allocation-bounded.
//! - [`vscard`]: `protocol=vscard`, QEMU's VSCard protocol (host role) for libcacard clients.
//! - [`config`]: DEVICENAME / CHANNELID parsing and the reader options.
//! - `src/bin/`: the tools: `vpcd-vicc` (a virtual card), `vpcd-config` (pairing).

pub mod config;
pub mod driver;
pub mod ifd;
pub mod net;
pub mod presence;
pub mod protocol;
pub mod slot;
pub mod sys;
pub mod vscard;

/// The macOS bundle's `Contents/Info.plist`, rendered by build.rs from Info.plist.in.
pub const INFO_PLIST: &str = include_str!(concat!(env!("OUT_DIR"), "/Info.plist"));
