//! The PC/SC client side, through the `pcsc` crate (libpcsclite, found by the dynamic
//! linker: `LD_LIBRARY_PATH` picks another one).

use std::ffi::CString;
use std::time::{Duration, Instant};

use pcsc::{Context, Protocols, ReaderState, ShareMode, State};

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
/// The wait runs on a context of its own, not on `ctx`, and a fresh one after any
/// error: pcsc-lite 2.x's client library can fall out of step with pcscd on a context
/// whose status waits time out while events arrive (it reads one message for another,
/// "should never happen" in its source), and a later wait on that context then blocks
/// for ever in its unregistering from events (seen under the 2.5.1 sandbox: a test
/// stuck in `unregisterFromEvents` while pcscd had nothing more to send). A context
/// per wait keeps such a slip from reaching the next call.
pub fn wait_card(ctx: &Context, reader: &str, present: bool, timeout: Duration) -> Duration {
    let _ = ctx;
    let start = Instant::now();
    let name = CString::new(reader).unwrap();
    let mut states = [ReaderState::new(name.clone(), State::UNAWARE)];
    let mut own = establish_for_waiting(start, timeout);
    loop {
        let left = timeout.saturating_sub(start.elapsed());
        match own.get_status_change(left, &mut states) {
            Ok(()) => {}
            Err(pcsc::Error::Timeout) => {}
            // pcsc-lite 2.x: a context established a moment ago may not know a
            // reader pcscd has just added; it will. And its client library can read
            // pcscd's wake-up message for a reader-state size while it polls
            // (SCARD_E_UNSUPPORTED_FEATURE): that context is out of step, so the
            // next call gets a new one.
            Err(pcsc::Error::UnknownReader | pcsc::Error::UnsupportedFeature)
                if start.elapsed() < timeout =>
            {
                std::thread::sleep(Duration::from_millis(10));
                own = establish_for_waiting(start, timeout);
                states = [ReaderState::new(name.clone(), State::UNAWARE)];
                continue;
            }
            Err(e) => panic!("get_status_change({reader}): {e}"),
        }
        let state = states[0].event_state();
        if state.contains(State::PRESENT) == present && !state.contains(State::UNKNOWN) {
            return start.elapsed();
        }
        if start.elapsed() >= timeout {
            panic!(
                "{reader}: card {} not seen within {timeout:?} (state {state:?})",
                if present { "insertion" } else { "removal" }
            );
        }
        states[0].sync_current_state();
    }
}

fn establish_for_waiting(start: Instant, timeout: Duration) -> Context {
    loop {
        match Context::establish(pcsc::Scope::User) {
            Ok(ctx) => return ctx,
            Err(e) if start.elapsed() >= timeout => panic!("establish a context: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
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
