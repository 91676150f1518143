//! The bench's pcscd with both drivers, the watchdog that ends a run gone wrong, and
//! the PC/SC client calls the measurements share.

use std::ffi::CString;
use std::path::Path;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

use pcsc::{Context, ReaderState, Scope, State};
use vpcd_testing::{Entry, Pcscd};

use crate::{C_DRIVER, C_NAME, OURS_NAME, OURS_SLOTS, WATCHDOG};

/// pid of the running pcscd, for the watchdog.
static PCSCD_PID: AtomicI32 = AtomicI32::new(0);

/// Kills pcscd and the whole run if it takes longer than [`WATCHDOG`].
pub fn watchdog() {
    std::thread::spawn(|| {
        std::thread::sleep(WATCHDOG);
        let pid = PCSCD_PID.load(Ordering::SeqCst);
        eprintln!(
            "relay bench: still running after {WATCHDOG:?}; killing pcscd ({pid}) and giving up"
        );
        if pid > 0 {
            // SAFETY: kill(2) on the pid of the child we started.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        std::process::exit(2);
    });
}

/// Starts the one pcscd of the run: our driver (`ours_lib`, 8 slots from `ours_port`,
/// loopback only) and Debian's C driver (2 slots from `c_port`).
pub fn start(ours_lib: &Path, ours_port: u16, c_port: u16) -> Pcscd {
    // No debug log: pcscd's would add a write per command to every round trip.
    // Minutes by design, and a deadline of its own: no test watchdog.
    let pcscd = Pcscd::builder()
        .watchdog(false)
        .debug_log(false)
        .wrapper(None)
        .entry(
            &Entry::device(
                OURS_NAME,
                &format!("/dev/null:{ours_port}/slots={OURS_SLOTS}/listen=127.0.0.1"),
            )
            .lib(ours_lib),
        )
        .entry(&Entry::device(C_NAME, &format!("/dev/null:{c_port}")).lib(C_DRIVER))
        .start();
    PCSCD_PID.store(pcscd.pid() as i32, Ordering::SeqCst);
    pcscd
}

/// pcscd has stopped: nothing left for the watchdog to kill.
pub fn stopped() {
    PCSCD_PID.store(0, Ordering::SeqCst);
}

/// A PC/SC context of its own (for a client thread).
pub fn establish() -> Context {
    Context::establish(Scope::User).expect("establish context")
}

/// Waits until the card in `reader` is (or is not) present.
pub fn wait_present(ctx: &Context, reader: &str, present: bool, timeout: Duration) {
    let mut states = [ReaderState::new(
        CString::new(reader).unwrap(),
        State::UNAWARE,
    )];
    wait_state(ctx, &mut states, present, timeout);
}

/// Waits for the reader's state to show the card present (absent), starting from the
/// state `states[0]` already knows, so no call is spent on learning it.
pub fn wait_state(ctx: &Context, states: &mut [ReaderState; 1], present: bool, timeout: Duration) {
    let start = Instant::now();
    loop {
        // Wait for a change from the last state seen (UNAWARE at first: returns at once).
        states[0].sync_current_state();
        let left = timeout.saturating_sub(start.elapsed());
        match ctx.get_status_change(left, &mut states[..]) {
            Ok(()) | Err(pcsc::Error::Timeout) => {}
            Err(e) => panic!("get_status_change: {e}"),
        }
        let state = states[0].event_state();
        if state.contains(State::PRESENT) == present
            && !state.intersects(State::UNKNOWN | State::UNAVAILABLE)
        {
            return;
        }
        assert!(
            start.elapsed() < timeout,
            "{:?}: present={present} not seen within {timeout:?} ({state:?})",
            states[0].name()
        );
    }
}
