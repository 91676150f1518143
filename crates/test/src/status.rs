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
    within(timeout.saturating_add(GRACE), move || {
        let mut states: Vec<ReaderState> = readers
            .into_iter()
            .map(|(name, known)| ReaderState::new(name, known))
            .collect();
        let result = Context::establish(Scope::User)
            .and_then(|ctx| ctx.get_status_change(timeout, &mut states));
        let seen = states.iter().map(ReaderState::event_state).collect();
        Outcome::Returned(result, seen)
    })
}

/// Runs `call` on a thread of its own; [`Outcome::Stuck`] if it has not returned
/// within `limit` (the thread is left to it).
fn within(limit: Duration, call: impl FnOnce() -> Outcome + Send + 'static) -> Outcome {
    let (done, result) = mpsc::channel();
    let spawned = std::thread::Builder::new()
        .name("status-change".into())
        .spawn(move || {
            let _ = done.send(call());
        });
    if spawned.is_err() {
        return Outcome::Returned(Err(pcsc::Error::NoMemory), Vec::new());
    }
    result.recv_timeout(limit).unwrap_or(Outcome::Stuck)
}

/// Waits until a card is present in `reader` (or absent); returns how long it took,
/// or the state it was left in. Each call to pcscd is a [`status_change`], which
/// returns even when pcsc-lite's client library would not.
pub fn wait_card(reader: &CStr, present: bool, timeout: Duration) -> Result<Duration, String> {
    wait_card_by(
        |known, left| status_change(&[(reader.to_owned(), known)], left),
        reader,
        present,
        timeout,
    )
}

/// [`wait_card`] with `look(known, timeout)` for the calls to pcscd.
fn wait_card_by(
    mut look: impl FnMut(State, Duration) -> Outcome,
    reader: &CStr,
    present: bool,
    timeout: Duration,
) -> Result<Duration, String> {
    let start = Instant::now();
    let mut known = State::UNAWARE;
    let mut stuck = 0;
    loop {
        let left = timeout.saturating_sub(start.elapsed());
        let state = match look(known, left) {
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

#[cfg(test)]
mod tests {
    use super::*;

    const READER: &CStr = c"Virtual PCD 00 00";
    const LONG: Duration = Duration::from_secs(30);

    fn returned(state: State) -> Outcome {
        Outcome::Returned(Ok(()), vec![state])
    }

    /// Plays `outcomes` in order.
    fn script(outcomes: Vec<Outcome>) -> impl FnMut(State, Duration) -> Outcome {
        let mut outcomes = outcomes.into_iter();
        move |_, _| outcomes.next().expect("one call too many")
    }

    #[test]
    fn a_call_that_does_not_return_is_abandoned() {
        let t = Instant::now();
        let outcome = within(Duration::from_millis(50), || {
            std::thread::sleep(LONG);
            returned(State::PRESENT)
        });
        assert!(matches!(outcome, Outcome::Stuck));
        assert!(t.elapsed() < LONG);
        assert!(matches!(
            within(LONG, || returned(State::PRESENT)),
            Outcome::Returned(Ok(()), _)
        ));
    }

    #[test]
    fn stuck_calls_are_replaced_on_a_fresh_start_up_to_a_limit() {
        let look = script(vec![
            Outcome::Stuck,
            Outcome::Stuck,
            Outcome::Stuck,
            returned(State::PRESENT),
        ]);
        assert!(wait_card_by(look, READER, true, LONG).is_ok());
        let look = script(vec![
            Outcome::Stuck,
            Outcome::Stuck,
            Outcome::Stuck,
            Outcome::Stuck,
        ]);
        let err = wait_card_by(look, READER, true, LONG).unwrap_err();
        assert!(err.contains("did not return 3 times"), "{err}");
    }

    #[test]
    fn the_wait_goes_on_from_the_state_it_was_told() {
        let mut seen = Vec::new();
        let mut outcomes = vec![
            returned(State::EMPTY | State::CHANGED),
            Outcome::Stuck,
            returned(State::EMPTY),
            Outcome::Returned(Err(pcsc::Error::UnsupportedFeature), Vec::new()),
            returned(State::PRESENT | State::CHANGED),
        ]
        .into_iter();
        let look = |known: State, _: Duration| {
            seen.push(known);
            outcomes.next().unwrap()
        };
        assert!(wait_card_by(look, READER, true, LONG).is_ok());
        assert_eq!(
            seen,
            [
                State::UNAWARE,
                State::EMPTY,
                State::UNAWARE,
                State::EMPTY,
                State::UNAWARE
            ],
            "what it knew, without CHANGED; a new context after a stuck call or a slip"
        );
    }

    #[test]
    fn absent_and_unknown_states_and_errors() {
        let look = script(vec![returned(State::EMPTY)]);
        assert!(wait_card_by(look, READER, false, LONG).is_ok());
        let look = script(vec![
            returned(State::PRESENT | State::UNKNOWN),
            returned(State::PRESENT),
        ]);
        assert!(
            wait_card_by(look, READER, true, LONG).is_ok(),
            "UNKNOWN is no answer"
        );
        let look = script(vec![Outcome::Returned(
            Err(pcsc::Error::NoService),
            Vec::new(),
        )]);
        let err = wait_card_by(look, READER, true, LONG).unwrap_err();
        assert!(err.starts_with("SCardGetStatusChange"), "{err}");
        let look = script(vec![Outcome::Returned(
            Err(pcsc::Error::Timeout),
            vec![State::EMPTY],
        )]);
        let err = wait_card_by(look, READER, true, Duration::ZERO).unwrap_err();
        assert!(err.starts_with("still"), "{err}");
    }
}
