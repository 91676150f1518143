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

/// The open slots by Lun, and what pcscd did with each reader's slots.
#[derive(Default)]
struct Table {
    slots: HashMap<u32, Arc<OpenSlot>>,
    /// By reader (`lun >> 16`), since pcscd last opened its slot 0.
    tallies: HashMap<u32, Tally>,
}

static SLOTS: Mutex<Option<Table>> = Mutex::new(None);

/// How far pcscd got opening a reader's slots (it opens them in order).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Tally {
    /// One past the highest slot index opened.
    reached: u16,
    /// The driver refused to open one of them (and said why).
    refused: bool,
}

impl Tally {
    /// Slot `index` opened (or, `ok` false, the driver refused it).
    fn opened(&mut self, index: u16, ok: bool) {
        if ok {
            self.reached = self.reached.max(index.saturating_add(1));
        } else {
            self.refused = true;
        }
    }

    /// When slot 0 closes: `Some(n)` if pcscd is dropping the reader after opening only
    /// `n` of its `slots` slots by its own choice, which is its reader limit (it does not
    /// log it). At shutdown every slot had been opened, whatever order pcscd closes them
    /// in (lun 1 before lun 0 on some versions); a slot the driver refused was logged.
    fn short_of(&self, slots: u16) -> Option<u16> {
        (!self.refused && self.reached < slots).then_some(self.reached)
    }
}

/// Reader contexts (slots) pcsc-lite before 2.5 serves in all.
const OLD_PCSCD_MAX_SLOTS: usize = 16;

/// Opens the slot `lun` of a reader configured by `config`.
pub(crate) fn open(lun: u32, config: ReaderConfig) -> std::io::Result<()> {
    // A Lun pcscd opens again replaces the old slot, whose port must be free first.
    close(lun);
    let (reader, index) = (lun >> 16, (lun & 0xFFFF) as u16);
    let opened = slot::open(&config, lun);
    let mut guard = SLOTS.lock();
    let table = guard.get_or_insert_with(Table::default);
    if index == 0 {
        table.tallies.remove(&reader);
    }
    let tally = table.tallies.entry(reader).or_default();
    tally.opened(index, opened.is_ok());
    let open = Arc::new(OpenSlot {
        lun,
        slot: opened?,
        config,
        protocol: AtomicU32::new(0),
    });
    table.slots.insert(lun, open);
    let total = table.slots.len();
    drop(guard);
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
    SLOTS.lock().as_ref()?.slots.get(&lun).cloned()
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
    let (removed, siblings, tally) = {
        let mut table = SLOTS.lock();
        let Some(table) = table.as_mut() else {
            return false;
        };
        let removed = table.slots.remove(&lun);
        let siblings: Vec<_> = table
            .slots
            .iter()
            .filter(|(other, _)| *other >> 16 == lun >> 16)
            .map(|(_, open)| Arc::clone(open))
            .collect();
        let tally = if removed.is_some() && lun & 0xFFFF == 0 {
            table.tallies.remove(&(lun >> 16))
        } else {
            None
        };
        (removed, siblings, tally)
    };
    let Some(open) = removed else {
        return false;
    };
    if let Some(opened) = tally.and_then(|t| t.short_of(open.config.slots)) {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn tally(opens: &[(u16, bool)]) -> Tally {
        let mut t = Tally::default();
        for &(index, ok) in opens {
            t.opened(index, ok);
        }
        t
    }

    #[test]
    fn a_reader_pcscd_stopped_opening_is_short_of_slots() {
        // pcsc-lite before 2.5: room for 6 more contexts, a reader of 10 slots.
        let t = tally(&(0..6).map(|i| (i, true)).collect::<Vec<_>>());
        assert_eq!(t.short_of(10), Some(6));
    }

    /// At shutdown pcscd may close lun 1 before lun 0: by then every slot had been
    /// opened, so lun 0's close is no reader limit (the line used to count the slots
    /// still open).
    #[test]
    fn a_reader_that_had_all_its_slots_is_not_short_whatever_the_closing_order() {
        assert_eq!(tally(&[(0, true), (1, true)]).short_of(2), None);
        assert_eq!(tally(&[(0, true)]).short_of(1), None);
        assert_eq!(
            tally(&[(0, true), (1, true), (1, true)]).short_of(2),
            None,
            "a slot opened again"
        );
    }

    #[test]
    fn a_slot_the_driver_refused_is_no_reader_limit() {
        // Its port was taken, say: the driver said so, and pcscd drops the reader.
        assert_eq!(tally(&[(0, true), (1, false)]).short_of(3), None);
    }
}
