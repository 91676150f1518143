//! The driver's own state: which Lun is which open slot.
//!
//! pcscd names a slot by its Lun, `(reader_index << 16) | slot`. The table maps each
//! open Lun to its [`CardSlot`]; its lock is held only to look up, insert or remove, never
//! across I/O, so readers do not wait on each other.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

use vpcd_protocol::config::ReaderConfig;

use crate::slot::{self, CardSlot};

/// An open slot, the configuration of its reader, and what pcscd set on it.
pub(crate) struct OpenSlot {
    pub lun: u32,
    pub slot: Box<dyn CardSlot>,
    pub config: ReaderConfig,
    /// The protocol pcscd selected for the powered card (SCARD_PROTOCOL_T0 / T1);
    /// 0 while none is.
    protocol: AtomicU32,
}

impl OpenSlot {
    pub fn protocol(&self) -> u32 {
        if self.slot.atr().is_none() {
            return 0;
        }
        self.protocol.load(Ordering::Relaxed)
    }

    pub fn set_protocol(&self, protocol: u32) {
        self.protocol.store(protocol, Ordering::Relaxed);
    }
}

static SLOTS: Mutex<Option<HashMap<u32, Arc<OpenSlot>>>> = Mutex::new(None);

/// Reader contexts (slots) pcsc-lite before 2.5 serves in all.
const OLD_PCSCD_MAX_SLOTS: usize = 16;

/// Opens the slot `lun` of a reader configured by `config`.
pub(crate) fn open(lun: u32, config: ReaderConfig) -> std::io::Result<()> {
    // A Lun pcscd opens again replaces the old slot, whose port must be free first.
    close(lun);
    let slot = slot::open(&config, lun)?;
    let open = Arc::new(OpenSlot {
        lun,
        slot,
        config,
        protocol: AtomicU32::new(0),
    });
    let total = {
        let mut table = SLOTS.lock();
        let map = table.get_or_insert_with(HashMap::new);
        map.insert(lun, open);
        map.len()
    };
    if total == OLD_PCSCD_MAX_SLOTS {
        log::info!(
            "lun {lun:#x}: pcscd now has {total} vpcd slots open: pcsc-lite before 2.5 \
             starts no more readers after its 16th (PCSCLITE_MAX_READERS_CONTEXTS); \
             entries past this one need pcsc-lite 2.5 or fewer /slots="
        );
    }
    Ok(())
}

/// The open slot `lun`, if any.
pub(crate) fn get(lun: u32) -> Option<Arc<OpenSlot>> {
    SLOTS.lock().as_ref()?.get(&lun).cloned()
}

/// Closes slot `lun`: its thread is joined before this returns. Returns whether it
/// was open.
///
/// pcscd removes a reader's slots one after the other, and before it closes the next
/// one it takes that slot's lock, which an exchange with a stalled vicc would hold
/// until the response timeout. So closing one slot also ends the exchanges in flight
/// on its sibling slots: the whole reader is going away. Their presence is frozen
/// first, so pcscd sees no card removal in the middle of its teardown.
pub(crate) fn close(lun: u32) -> bool {
    let (removed, siblings) = {
        let mut table = SLOTS.lock();
        let Some(map) = table.as_mut() else {
            return false;
        };
        let removed = map.remove(&lun);
        let siblings: Vec<_> = map
            .iter()
            .filter(|(other, _)| *other >> 16 == lun >> 16)
            .map(|(_, open)| Arc::clone(open))
            .collect();
        (removed, siblings)
    };
    let Some(open) = removed else {
        return false;
    };
    let opened = siblings.len() + 1;
    if lun & 0xFFFF == 0 && opened < usize::from(open.config.slots) {
        // pcscd opens a reader's slots in order and drops the whole reader when it
        // cannot add one: that is its reader limit, which it does not log.
        log::error!(
            "lun {lun:#x}: pcscd closes this reader after opening {opened} of its {} slots: \
             it has no room for more (pcsc-lite before 2.5 serves at most 16 slots in all, \
             counting every slot of every reader); the readers before it keep working. Give \
             it fewer /slots= or use pcsc-lite 2.5",
            open.config.slots
        );
    }
    open.slot.close();
    for sibling in siblings {
        sibling.slot.presence().freeze();
        sibling.slot.drop_peer("its reader is closing");
    }
    true
}
