//! Waiting for cards, event-driven: `SCardGetStatusChange` on the readers and on
//! pcsc-lite's PnP notification pseudo-reader (so readers that appear later count),
//! with no polling once pcscd answers. Shared by `vpcd-wait` and `vpcd-run`.

use std::ffi::CString;
use std::time::{Duration, Instant};

use pcsc::{Context, Error, Scope, State, PNP_NOTIFICATION};
use vpcd_test::status::{status_change, Outcome};

/// Which readers must hold (or, with `present == false`, must not hold) a card.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A card in any reader (absent: no card in any reader).
    Any,
    /// These readers, by name, every one.
    Readers(Vec<String>),
    /// Cards in at least N readers (absent: at least N readers, none with a card).
    All(usize),
}

/// What to wait for.
#[derive(Debug, Clone, PartialEq)]
pub struct Spec {
    pub target: Target,
    pub present: bool,
    pub timeout: Duration,
}

/// pcsc-lite before 2.5 refuses SCardGetStatusChange on more than 16 reader states
/// (PCSCLITE_MAX_READERS_CONTEXTS): with 16 readers or more the PnP pseudo-reader
/// is left out (such a pcscd takes no more readers anyway).
const MAX_STATES: usize = 16;

/// How often to retry while pcscd is not there yet (the only polling: before pcscd
/// listens there is nothing to wait on).
const NO_SERVICE_RETRY: Duration = Duration::from_millis(5);

/// The longest single wait for a change (see `wait_for`).
const WAKE_UP_SLICE: Duration = Duration::from_millis(250);

fn has_card(state: State) -> bool {
    state.contains(State::PRESENT) && !state.intersects(State::MUTE | State::UNAVAILABLE)
}

/// Whether the readers' states (name, state) meet the spec.
pub fn satisfied(spec: &Spec, readers: &[(String, State)]) -> bool {
    let ok = |s: State| has_card(s) == spec.present;
    match &spec.target {
        Target::Any if spec.present => readers.iter().any(|(_, s)| ok(*s)),
        Target::Any => readers.iter().all(|(_, s)| ok(*s)),
        Target::Readers(names) => names
            .iter()
            .all(|n| readers.iter().any(|(r, s)| r == n && ok(*s))),
        Target::All(n) if spec.present => readers.iter().filter(|(_, s)| ok(*s)).count() >= *n,
        Target::All(n) => readers.len() >= *n && readers.iter().all(|(_, s)| ok(*s)),
    }
}

/// What the readers look like, for the timeout message.
pub fn describe(readers: &[(String, State)]) -> String {
    if readers.is_empty() {
        return "no readers".into();
    }
    readers
        .iter()
        .map(|(r, s)| {
            let what = if has_card(*s) {
                "card present"
            } else if s.contains(State::MUTE) {
                "card mute"
            } else if s.contains(State::PRESENT) {
                "card present, unavailable"
            } else {
                "empty"
            };
            format!("\"{r}\": {what}")
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Waits until the spec is met; returns how long that took, or why it failed.
pub fn wait(spec: &Spec) -> Result<Duration, String> {
    wait_for(spec.timeout, |readers| satisfied(spec, readers))
}

/// Waits until pcscd answers and shows at least `n` readers.
#[allow(dead_code)] // vpcd-run's
pub fn wait_readers(n: usize, timeout: Duration) -> Result<Duration, String> {
    wait_for(timeout, |readers| readers.len() >= n)
}

/// Waits until `done` holds for the readers and their states.
pub fn wait_for(
    timeout: Duration,
    done: impl Fn(&[(String, State)]) -> bool,
) -> Result<Duration, String> {
    let start = Instant::now();
    let deadline = start + timeout;
    let ctx = loop {
        match Context::establish(Scope::User) {
            Ok(ctx) => break ctx,
            Err(e) if Instant::now() >= deadline => {
                return Err(format!("cannot reach pcscd: {e}"));
            }
            Err(_) => std::thread::sleep(NO_SERVICE_RETRY),
        }
    };
    // (name, the state last seen): the PnP pseudo-reader first, when there is room.
    let mut states: Vec<(CString, State)> = vec![];
    let mut rebuild = true;
    loop {
        let names = match ctx.list_readers_owned() {
            Ok(names) => names,
            Err(Error::NoReadersAvailable) => vec![],
            Err(e) => return Err(format!("cannot list readers: {e}")),
        };
        let known = states.iter().filter(|s| !is_pnp(s)).map(|(n, _)| n);
        if rebuild || known.ne(names.iter()) {
            rebuild = false;
            states.clear();
            if names.len() < MAX_STATES {
                states.push((PNP_NOTIFICATION().to_owned(), State::UNAWARE));
            }
            states.extend(names.into_iter().map(|n| (n, State::UNAWARE)));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        // In slices: pcsc-lite 2.x's client may miss a wake-up (the state changed,
        // the call still times out), which must not cost the whole timeout. Each
        // slice on a context and a thread of its own: that client can also stop
        // answering for good (vpcd_test::status says when), which must not hang us.
        let result = match status_change(&states, left.min(WAKE_UP_SLICE)) {
            Outcome::Returned(result, seen) => {
                if matches!(result, Ok(()) | Err(Error::Timeout)) {
                    for ((_, known), seen) in states.iter_mut().zip(seen) {
                        *known = seen & !State::CHANGED;
                    }
                }
                result
            }
            Outcome::Stuck => {
                rebuild = true;
                Err(Error::Timeout)
            }
        };
        match result {
            Ok(()) => {}
            Err(Error::Timeout) if Instant::now() < deadline => {}
            Err(Error::Timeout) => {
                if done(&snapshot(&states)) {
                    return Ok(start.elapsed());
                }
                return Err(format!(
                    "timed out after {:.1} s: {}",
                    timeout.as_secs_f64(),
                    describe(&snapshot(&states))
                ));
            }
            // A reader went away between listing and waiting: list again.
            Err(Error::UnknownReader) => {
                rebuild = true;
                continue;
            }
            Err(e) => return Err(format!("waiting for a card: {e}")),
        }
        if done(&snapshot(&states)) {
            return Ok(start.elapsed());
        }
    }
}

fn is_pnp((name, _): &(CString, State)) -> bool {
    name.as_c_str() == PNP_NOTIFICATION()
}

fn snapshot(states: &[(CString, State)]) -> Vec<(String, State)> {
    states
        .iter()
        .filter(|s| !is_pnp(s))
        .map(|(name, state)| (name.to_string_lossy().into_owned(), *state))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(target: Target, present: bool) -> Spec {
        Spec {
            target,
            present,
            timeout: Duration::from_secs(1),
        }
    }

    #[test]
    fn conditions() {
        let card = State::PRESENT | State::INUSE;
        let readers = vec![
            ("A 00 00".to_string(), card),
            ("A 00 01".to_string(), State::EMPTY),
        ];
        assert!(satisfied(&spec(Target::Any, true), &readers));
        assert!(!satisfied(&spec(Target::Any, false), &readers));
        assert!(satisfied(
            &spec(Target::Readers(vec!["A 00 00".into()]), true),
            &readers
        ));
        assert!(satisfied(
            &spec(Target::Readers(vec!["A 00 01".into()]), false),
            &readers
        ));
        assert!(!satisfied(
            &spec(Target::Readers(vec!["B".into()]), true),
            &readers
        ));
        assert!(!satisfied(&spec(Target::All(2), true), &readers));
        assert!(satisfied(&spec(Target::All(1), true), &readers));
        assert!(!satisfied(&spec(Target::All(1), false), &readers));
        assert!(satisfied(&spec(Target::All(1), false), &readers[1..]));
        assert!(!satisfied(&spec(Target::All(3), true), &readers));
        assert!(!satisfied(
            &spec(Target::Any, true),
            &[("m".into(), State::PRESENT | State::MUTE)]
        ));
        assert_eq!(
            describe(&readers),
            "\"A 00 00\": card present, \"A 00 01\": empty"
        );
        assert_eq!(describe(&[]), "no readers");
    }
}
