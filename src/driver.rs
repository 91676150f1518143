//! The driver's own state: which Lun is which open slot.
//!
//! pcscd names a slot by its Lun, `(reader_index << 16) | slot`. The table maps each
//! open Lun to its [`Slot`]; its lock is held only to look up, insert or remove, never
//! across I/O, so readers do not wait on each other.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;

use crate::config::{ConfigError, Protocol, ReaderConfig};
use crate::slot::{CardSlot, Slot};

/// An open slot and the configuration of its reader.
pub struct OpenSlot {
    pub slot: Box<dyn CardSlot>,
    pub config: ReaderConfig,
}

static SLOTS: Mutex<Option<HashMap<u32, Arc<OpenSlot>>>> = Mutex::new(None);

/// Why a channel could not be created.
#[derive(Debug)]
pub enum OpenError {
    Config(ConfigError),
    Io(std::io::Error),
}

impl std::fmt::Display for OpenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OpenError::Config(e) => e.fmt(f),
            OpenError::Io(e) => e.fmt(f),
        }
    }
}

/// The slot index inside its reader.
pub fn slot_index(lun: u32) -> u16 {
    (lun & 0xFFFF) as u16
}

/// Opens the slot `lun` of a reader configured by `config`.
pub fn open(lun: u32, config: Result<ReaderConfig, ConfigError>) -> Result<(), OpenError> {
    let config = config.map_err(OpenError::Config)?;
    crate::ifd::log_bridge::raise_level(config.log_level);
    // A Lun pcscd opens again replaces the old slot, whose port must be free first.
    close(lun);
    let slot: Box<dyn CardSlot> = match config.protocol {
        Protocol::Vpcd => {
            Box::new(Slot::open(&config, lun, slot_index(lun)).map_err(OpenError::Io)?)
        }
        Protocol::VsCard => Box::new(
            crate::vscard::VscardSlot::open(&config, lun, slot_index(lun))
                .map_err(OpenError::Io)?,
        ),
    };
    let open = Arc::new(OpenSlot { slot, config });
    SLOTS
        .lock()
        .get_or_insert_with(HashMap::new)
        .insert(lun, open);
    Ok(())
}

/// The open slot `lun`, if any.
pub fn get(lun: u32) -> Option<Arc<OpenSlot>> {
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
pub fn close(lun: u32) -> bool {
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
        sibling.slot.drop_vicc("its reader is closing");
    }
    true
}
