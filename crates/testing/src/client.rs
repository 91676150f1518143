//! The PC/SC client side, through the `pcsc` crate (libpcsclite, found by the dynamic
//! linker: `LD_LIBRARY_PATH` picks another one).

use std::ffi::CString;
use std::time::Duration;

use pcsc::{Context, Protocols, ShareMode};

/// The readers pcscd lists now (none if it cannot list them).
pub fn list_readers(ctx: &Context) -> Vec<String> {
    let mut buf = [0u8; 8192];
    match ctx.list_readers(&mut buf) {
        Ok(names) => names.map(|n| n.to_string_lossy().into_owned()).collect(),
        Err(_) => vec![],
    }
}

/// Waits until the card in `reader` is present (or absent); returns how long it took.
///
/// Every call to pcscd is a [`vpcd_test::status::status_change`], on a context of its
/// own and a thread that may be abandoned. pcsc-lite 2.x's client library can fall out
/// of step with pcscd when an event arrives while it fetches the readers' states, and
/// then wait for ever in `unregisterFromEvents` (the harness's watchdog caught it so
/// under load: pcscd idle, the test stuck there); a wait that does not return is
/// dropped and made again on a new context.
pub fn wait_card(reader: &str, present: bool, timeout: Duration) -> Duration {
    let name = CString::new(reader).unwrap();
    match vpcd_test::status::wait_card(&name, present, timeout) {
        Ok(took) => took,
        Err(e) => panic!(
            "{reader}: card {} not seen within {timeout:?}: {e}",
            if present { "insertion" } else { "removal" }
        ),
    }
}

/// Connects to `reader` and returns the card handle.
pub fn connect(ctx: &Context, reader: &str) -> pcsc::Card {
    let name = CString::new(reader).unwrap();
    ctx.connect(&name, ShareMode::Shared, Protocols::ANY)
        .unwrap_or_else(|e| panic!("connect {reader}: {e}"))
}

pub fn transmit(card: &pcsc::Card, apdu: &[u8]) -> Result<Vec<u8>, pcsc::Error> {
    let mut buf = vec![0u8; pcsc::MAX_BUFFER_SIZE_EXTENDED];
    card.transmit(apdu, &mut buf).map(|r| r.to_vec())
}

/// Reader name pcscd gives slot `slot` of reader `index`.
pub fn reader_name(friendly: &str, index: u8, slot: u8) -> String {
    format!("{friendly} {index:02X} {slot:02X}")
}
