//! The PC/SC side: readers, and waiting for a card to come or go with
//! SCardGetStatusChange (woken by pcscd's own event, no polling of ours).

use std::ffi::CStr;
use std::time::{Duration, Instant};

use pcsc::{Context, ReaderState, State};

/// The readers pcscd lists now (none if it cannot list them).
pub fn list_readers(ctx: &Context) -> Vec<String> {
    let mut buf = [0u8; 8192];
    match ctx.list_readers(&mut buf) {
        Ok(names) => names.map(|n| n.to_string_lossy().into_owned()).collect(),
        Err(_) => vec![],
    }
}

/// Waits until a card is present in `reader` (or absent); returns how long it took,
/// or the state it was left in.
pub fn wait_card(
    ctx: &Context,
    reader: &CStr,
    present: bool,
    timeout: Duration,
) -> Result<Duration, String> {
    let start = Instant::now();
    let mut states = [ReaderState::new(reader.to_owned(), State::UNAWARE)];
    loop {
        let left = timeout.saturating_sub(start.elapsed());
        match ctx.get_status_change(left, &mut states) {
            Ok(()) | Err(pcsc::Error::Timeout) => {}
            // pcsc-lite 2.x: its client library can read pcscd's wake-up message for a
            // reader-state size while it waits (SCARD_E_UNSUPPORTED_FEATURE); the next
            // call is in step again.
            Err(pcsc::Error::UnsupportedFeature) if start.elapsed() < timeout => continue,
            // pcsc-lite 2.x: a context can lag behind a reader pcscd has just added;
            // it catches up, with nothing to wait on meanwhile.
            Err(pcsc::Error::UnknownReader) if start.elapsed() < timeout => {
                std::thread::sleep(Duration::from_millis(5));
                continue;
            }
            Err(e) => return Err(format!("SCardGetStatusChange: {e}")),
        }
        let state = states[0].event_state();
        if state.contains(State::PRESENT) == present && !state.contains(State::UNKNOWN) {
            return Ok(start.elapsed());
        }
        if start.elapsed() >= timeout {
            return Err(format!("still {state:?} after {timeout:?}"));
        }
        states[0].sync_current_state();
    }
}
