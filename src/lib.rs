//! # libifdvpcd: a virtual smart card reader for pcsc-lite
//!
//! `libifdvpcd.so` is an IFD handler that pcscd loads like any reader driver. Each
//! slot of the reader is a TCP endpoint; a virtual card (a *vicc*) that connects to
//! it is a card inserted in that slot, and pcscd's power events and APDUs travel to it
//! in the vpcd protocol. It is a drop-in replacement for the C vpcd of the vsmartcard
//! project: same `reader.conf.d` syntax, same wire protocol. The wire formats and the
//! DEVICENAME parser live in the `vpcd-protocol` crate.
//!
//! ## Module map, from pcscd down to the sockets
//! - `ifd`: the `extern "C"` IFD Handler API pcscd calls (one panic-catching boundary
//!   macro, then a few lines each), IFD constants, the log bridge into pcscd's log.
//! - `readers`: the table of open slots by Lun.
//! - `slot`: the slot contract (`CardSlot`: power, transmit, presence, limits, PIN
//!   entry) and the slot kinds: `slot::vpcd` (one vicc per slot; PIN entry by a vicc
//!   that said HELLO, docs/PINPAD.md) and `slot::vscard` (QEMU's VSCard); the
//!   connection bookkeeping they share (`slot::conn`) and the vpcd slot's decisions
//!   apart from its I/O (`slot::decide`). docs/SLOTS.md: how a slot lives.
//! - `presence`: card presence as pcscd sees it, and the polling callback's wait.
//! - `net`: listening (with a backoff when accept fails) and peer socket setup,
//!   bounded writes, and the watcher thread skeleton every slot kind runs on.
//! - `tls`: the secure link of a `tls=yes` reader (docs/TLS.md): its key and trust
//!   list, and a peer's TLS session, handshaking on the watcher's side.
//! - `sys`: `poll(2)` and pinning the library in memory, the system calls std does
//!   not wrap.
//! - `test_log` (tests only): a logger that lets unit tests count log lines.
//!
//! `unsafe` is denied everywhere but in `ifd` and `sys`.
#![deny(unsafe_code)]

#[allow(unsafe_code)]
mod ifd;
mod net;
mod presence;
mod readers;
mod slot;
#[allow(unsafe_code)]
mod sys;
#[cfg(test)]
mod test_log;
mod tls;

/// The macOS bundle's `Contents/Info.plist`, rendered by build.rs from Info.plist.in.
pub const INFO_PLIST: &str = include_str!(concat!(env!("OUT_DIR"), "/Info.plist"));
