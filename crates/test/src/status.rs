//! SCardGetStatusChange that always returns.
//!
//! pcsc-lite 2.x's client library reads the replies to its calls and pcscd's event
//! messages from one socket per context. An event that lands while
//! SCardGetStatusChange fetches the readers' states is read as part of them, and the
//! call can then wait for ever for a reply pcscd will never send (seen in
//! `unregisterFromEvents`, with pcscd idle). A caller cannot undo that from outside,
//! so each call here runs on a thread of its own with a context of its own, and the
//! caller stops waiting for it shortly after its timeout: a stuck call costs its
//! thread and its context, never the caller, and no later call shares its context.

use std::ffi::{CStr, CString};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use pcsc::{Context, ReaderState, Scope, State};

/// How long past its own timeout a call may take before it counts as stuck: pcscd
/// answers in microseconds, but a loaded CI runner can hold a thread for seconds.
pub const GRACE: Duration = Duration::from_secs(5);

/// How many stuck calls [`wait_card`] replaces before it gives up.
const MAX_STUCK: u32 = 3;

/// What one [`status_change`] came to.
#[derive(Debug)]
pub enum Outcome {
    /// The call returned: its result (`Timeout` included) and each reader's event
    /// state, in the order given.
    Returned(Result<(), pcsc::Error>, Vec<State>),
    /// It had not returned [`GRACE`] after its timeout: the client library is stuck
    /// (the thread and its context are left to it). Call again.
    Stuck,
}

/// One SCardGetStatusChange over `readers` (name, the state the caller knows) on a
/// fresh context, for at most `timeout` plus [`GRACE`].
pub fn status_change(readers: &[(CString, State)], timeout: Duration) -> Outcome {
    let readers = readers.to_vec();
    let (done, result) = mpsc::channel();
    let spawned = std::thread::Builder::new()
        .name("status-change".into())
        .spawn(move || {
            let mut states: Vec<ReaderState> = readers
                .into_iter()
                .map(|(name, known)| ReaderState::new(name, known))
                .collect();
            let result = Context::establish(Scope::User)
                .and_then(|ctx| ctx.get_status_change(timeout, &mut states));
            let seen = states.iter().map(ReaderState::event_state).collect();
            let _ = done.send(Outcome::Returned(result, seen));
        });
    if spawned.is_err() {
        return Outcome::Returned(Err(pcsc::Error::NoMemory), Vec::new());
    }
    result
        .recv_timeout(timeout.saturating_add(GRACE))
        .unwrap_or(Outcome::Stuck)
}

/// Waits until a card is present in `reader` (or absent); returns how long it took,
/// or the state it was left in. Each call to pcscd is a [`status_change`], which
/// returns even when pcsc-lite's client library would not.
pub fn wait_card(reader: &CStr, present: bool, timeout: Duration) -> Result<Duration, String> {
    let start = Instant::now();
    let mut known = State::UNAWARE;
    let mut stuck = 0;
    loop {
        let left = timeout.saturating_sub(start.elapsed());
        let state = match status_change(&[(reader.to_owned(), known)], left) {
            Outcome::Returned(Ok(()) | Err(pcsc::Error::Timeout), states) => states[0],
            // pcsc-lite 2.x: its client library can read pcscd's wake-up message for a
            // reader-state size while it waits (SCARD_E_UNSUPPORTED_FEATURE); a new
            // context is in step again.
            Outcome::Returned(Err(pcsc::Error::UnsupportedFeature), _)
                if start.elapsed() < timeout =>
            {
                known = State::UNAWARE;
                continue;
            }
            // Even past the timeout: a look at the state as it is now (`left` is 0).
            Outcome::Stuck if stuck < MAX_STUCK => {
                stuck += 1;
                eprintln!(
                    "vpcd-test: SCardGetStatusChange on {reader:?} did not return (pcsc-lite's \
                     client library out of step with pcscd); waiting again on a new context"
                );
                known = State::UNAWARE;
                continue;
            }
            // pcsc-lite 2.x: a context can lag behind a reader pcscd has just added;
            // it catches up, with nothing to wait on meanwhile.
            Outcome::Returned(Err(pcsc::Error::UnknownReader), _) if start.elapsed() < timeout => {
                std::thread::sleep(Duration::from_millis(5));
                continue;
            }
            Outcome::Returned(Err(e), _) => return Err(format!("SCardGetStatusChange: {e}")),
            Outcome::Stuck => {
                return Err(format!(
                    "SCardGetStatusChange did not return {MAX_STUCK} times (pcsc-lite's client \
                     library out of step with pcscd)"
                ))
            }
        };
        if state.contains(State::PRESENT) == present && !state.contains(State::UNKNOWN) {
            return Ok(start.elapsed());
        }
        if start.elapsed() >= timeout {
            return Err(format!("still {state:?} after {timeout:?}"));
        }
        known = state & !State::CHANGED;
    }
}
