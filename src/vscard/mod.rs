//! `protocol=vscard`: the reader speaks QEMU's VSCard protocol, in the host role of
//! QEMU's `ccid-card-passthru`, so that a card offered by libcacard's `vscclient` (or
//! anything else that talks to that QEMU device) appears in pcscd.
//!
//! One TCP client on the reader's base port carries several client-side readers. Each
//! one it adds (ReaderAdd) is mapped onto the first free slot of our reader, and the
//! slot index is the reader id we hand back. So the slots of a vscard reader share one
//! [`hub`]: a listener and a connection thread per reader, created with its first slot
//! and joined when its last slot closes. Each slot is a [`VscardSlot`], the
//! [`crate::slot::CardSlot`] pcscd talks to.
//!
//! - [`codec`]: the wire format, pure and allocation-bounded.
//! - [`hub`]: the shared connection, the message handling, and the slots.
//!
//! See docs/VSCARD.md for the mapping of messages and the power semantics.

pub mod codec;
pub mod hub;

pub use hub::VscardSlot;
