//! The driver's own state: which Lun is which open slot.
//!
//! pcscd names a slot by its Lun, `(reader_index << 16) | slot`. The table maps each
//! open Lun to its [`CardSlot`]; its lock is held only to look up, insert or remove, never
//! across I/O, so readers do not wait on each other.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;

use vpcd_protocol::config::ReaderConfig;

use crate::slot::{self, CardSlot};

/// An open slot and the configuration of its reader.
pub(crate) struct OpenSlot {
    pub slot: Box<dyn CardSlot>,
    pub config: ReaderConfig,
}

static SLOTS: Mutex<Option<HashMap<u32, Arc<OpenSlot>>>> = Mutex::new(None);

/// Opens the slot `lun` of a reader configured by `config`.
pub(crate) fn open(lun: u32, config: ReaderConfig) -> std::io::Result<()> {
    // A Lun pcscd opens again replaces the old slot, whose port must be free first.
    close(lun);
    let slot = slot::open(&config, lun)?;
    let open = Arc::new(OpenSlot { slot, config });
    SLOTS
        .lock()
        .get_or_insert_with(HashMap::new)
        .insert(lun, open);
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
    open.slot.close();
    for sibling in siblings {
        sibling.slot.presence().freeze();
        sibling.slot.drop_peer("its reader is closing");
    }
    true
}
