//! Card presence as pcscd sees it, and the wait behind pcscd's polling callback.
//!
//! Every insertion and removal bumps a generation and wakes the waiter. The polling
//! callback waits until the generation moves past the one its previous wait returned
//! at, the stop callback is called, or the slot closes: an event that happens while
//! pcscd is busy between two waits is never lost. The waiter keeps its own mark
//! because pcscd also checks presence from other threads (before a power action),
//! and such a check must not hide an event from the polling thread.
//!
//! A removal that pcscd has not seen yet is reported once as "absent" even if a new
//! card has already taken its place, so a quick swap is never missed.

use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

#[derive(Debug, Default)]
struct State {
    present: bool,
    /// Bumped on every insertion and removal.
    generation: u64,
    /// The generation the last wait returned at.
    waited: u64,
    /// The next wait returns at once: a presence check reported a removal while the
    /// next card was already in.
    recheck: bool,
    removal_unreported: bool,
    /// Calls of pcscd's stop callback, and how many a wait has consumed.
    stop_requests: u64,
    stops_seen: u64,
    closing: bool,
    /// No more insertions or removals are reported (the reader is being removed).
    frozen: bool,
}

#[derive(Debug, Default)]
pub struct Presence {
    state: Mutex<State>,
    changed: Condvar,
}

impl Presence {
    pub fn new() -> Presence {
        Presence::default()
    }

    /// A card arrived. Returns false (and changes nothing) once closing.
    pub fn insert(&self) -> bool {
        self.update(|s| {
            s.present = true;
        })
    }

    /// The card left.
    pub fn remove(&self) {
        self.update(|s| {
            s.present = false;
            s.removal_unreported = true;
        });
    }

    fn update(&self, change: impl FnOnce(&mut State)) -> bool {
        let mut s = self.state.lock();
        if s.closing || s.frozen {
            return false;
        }
        change(&mut s);
        s.generation = s.generation.wrapping_add(1);
        drop(s);
        self.changed.notify_all();
        true
    }

    /// Whether a card is in, as of now, without touching what pcscd has yet to be told
    /// (for attributes clients read).
    pub fn is_present(&self) -> bool {
        self.state.lock().present
    }

    /// pcscd's presence check: what to report now.
    pub fn check(&self) -> bool {
        let mut s = self.state.lock();
        if s.removal_unreported {
            s.removal_unreported = false;
            // If a new card is already in, report the old one gone now, and make the
            // next wait return at once so pcscd sees the new one.
            s.recheck = s.present;
            return false;
        }
        s.present
    }

    /// pcscd's polling callback: blocks until something pcscd has not seen happens,
    /// the stop callback is called, the slot closes, or `timeout` passes.
    pub fn wait_for_event(&self, timeout: Duration) {
        let deadline = Instant::now().checked_add(timeout);
        let mut s = self.state.lock();
        loop {
            if s.closing || s.recheck || s.generation != s.waited || s.stop_requests != s.stops_seen
            {
                s.stops_seen = s.stop_requests;
                s.waited = s.generation;
                s.recheck = false;
                return;
            }
            match deadline {
                Some(deadline) => {
                    if self.changed.wait_until(&mut s, deadline).timed_out() {
                        return;
                    }
                }
                None => self.changed.wait(&mut s),
            }
        }
    }

    /// pcscd's stop callback: ends the current wait, or the next one if none runs.
    pub fn stop_waiting(&self) {
        self.state.lock().stop_requests += 1;
        self.changed.notify_all();
    }

    /// The reader is being removed: from now on nothing is reported as inserted or
    /// removed, while waits go on as before. pcscd clears a reader's "stop" mark when
    /// it handles a removal, so a removal reported while pcscd tears the reader down
    /// would keep its polling thread alive.
    pub fn freeze(&self) {
        self.state.lock().frozen = true;
    }

    /// The slot is closing: every wait returns and no card is inserted any more.
    pub fn close(&self) {
        self.state.lock().closing = true;
        self.changed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    const NOW: Duration = Duration::ZERO;
    const LONG: Duration = Duration::from_secs(5);

    fn waits(p: &Presence) -> bool {
        let t = Instant::now();
        p.wait_for_event(Duration::from_millis(30));
        t.elapsed() >= Duration::from_millis(30)
    }

    #[test]
    fn nothing_changes_then_the_wait_times_out() {
        let p = Presence::new();
        assert!(!p.check());
        assert!(waits(&p));
    }

    #[test]
    fn a_presence_check_from_another_thread_does_not_hide_an_event_from_the_waiter() {
        let p = Presence::new();
        p.check();
        assert!(waits(&p));
        p.insert();
        // pcscd's power path checks presence before the polling thread wakes.
        assert!(p.check());
        let t = Instant::now();
        p.wait_for_event(LONG);
        assert!(
            t.elapsed() < LONG,
            "the waiter must still see the insertion"
        );
    }

    #[test]
    fn insertion_and_removal_end_the_wait_and_are_reported() {
        let p = Presence::new();
        assert!(!p.check());
        assert!(waits(&p));
        assert!(p.insert());
        p.wait_for_event(LONG);
        assert!(p.check());
        assert!(waits(&p));
        p.remove();
        p.wait_for_event(LONG);
        assert!(!p.check());
        assert!(waits(&p));
    }

    #[test]
    fn an_event_between_check_and_wait_is_not_lost() {
        let p = Presence::new();
        p.check();
        p.insert();
        let t = Instant::now();
        p.wait_for_event(LONG);
        assert!(t.elapsed() < LONG);
    }

    #[test]
    fn a_quick_swap_is_reported_as_removal_then_insertion() {
        let p = Presence::new();
        p.insert();
        p.wait_for_event(LONG);
        assert!(p.check());
        assert!(waits(&p));
        p.remove();
        p.insert();
        p.wait_for_event(LONG);
        assert!(!p.check(), "the removal first");
        let t = Instant::now();
        p.wait_for_event(LONG);
        assert!(t.elapsed() < LONG, "then at once another look");
        assert!(p.check(), "the new card");
        assert!(waits(&p));
    }

    #[test]
    fn stop_ends_one_wait_even_if_it_comes_first() {
        let p = Presence::new();
        p.check();
        p.stop_waiting();
        let t = Instant::now();
        p.wait_for_event(LONG);
        assert!(t.elapsed() < LONG);
        assert!(waits(&p), "a stop ends one wait only");
    }

    #[test]
    fn stop_and_close_wake_a_blocked_waiter() {
        for close in [false, true] {
            let p = Arc::new(Presence::new());
            p.check();
            let waiter = {
                let p = Arc::clone(&p);
                std::thread::spawn(move || {
                    let t = Instant::now();
                    p.wait_for_event(Duration::from_secs(600));
                    t.elapsed()
                })
            };
            std::thread::sleep(Duration::from_millis(20));
            if close {
                p.close();
            } else {
                p.stop_waiting();
            }
            assert!(waiter.join().unwrap() < LONG);
        }
    }

    #[test]
    fn frozen_state_reports_nothing_new_but_still_waits_for_stop() {
        let p = Presence::new();
        p.insert();
        p.wait_for_event(LONG);
        assert!(p.check());
        p.freeze();
        p.remove();
        assert!(p.check(), "the removal is not reported");
        assert!(waits(&p));
        p.stop_waiting();
        let t = Instant::now();
        p.wait_for_event(LONG);
        assert!(t.elapsed() < LONG);
    }

    #[test]
    fn closing_refuses_insertions_and_never_blocks() {
        let p = Presence::new();
        p.close();
        assert!(!p.insert());
        assert!(!p.check());
        p.wait_for_event(LONG);
        p.wait_for_event(NOW);
    }
}
