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
//!
//! Only the polling thread (the thread that waits in the polling callback) takes a
//! removal as reported, and only when it waits again: between two waits it may check
//! presence twice (pcscd powers an unused card off after a wait, and IFDPowerICC checks
//! presence first; then its event loop checks), and only the event loop's check
//! changes what pcscd thinks is in. Until that wait every check reports the removal. pcscd's event handler compares each presence with what *it*
//! last saw, in a variable of its own: another thread's check that learns of the
//! removal first (IFDPowerICC checks presence before a client's SCardDisconnect
//! resets the card) makes pcscd mark the reader empty, and if that check took the
//! removal, the polling thread would find the next card present, unchanged to it, and
//! never report it. Other threads are told "absent" while a removal is unreported.
//!
//! pcscd calls the stop callback in two places: when it tears a reader down (it has
//! marked the polling thread to exit, and a removal reported now would clear that mark
//! and keep the thread, and pcscd's shutdown, waiting) and after a client's last
//! SCardDisconnect (to restart the wait with another timeout). It cannot tell us
//! which, so a stop holds the presence reports at what pcscd last heard until the
//! polling thread starts its next wait: in a teardown it never does, and otherwise the
//! change held back is reported right after, at the next wait, which returns at once.
//! Nothing a client can ask for freezes a slot.

use std::thread::{self, ThreadId};
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
    /// A removal the polling thread has not heard of yet.
    removal_unreported: bool,
    /// The polling thread was told of that removal; it is heard once that thread waits
    /// again.
    removal_told: bool,
    /// The polling thread: the last one that waited. `None` before the first wait, when
    /// every check counts as the polling thread's.
    poller: Option<ThreadId>,
    /// Calls of pcscd's stop callback, and how many a wait has consumed.
    stop_requests: u64,
    stops_seen: u64,
    closing: bool,
    /// No more insertions or removals are reported (the reader is being removed).
    frozen: bool,
    /// What the polling thread's last presence check reported.
    reported: bool,
    /// A stop holds the reports at `reported` until the next wait after the one that
    /// consumed it starts.
    held: bool,
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
            s.removal_told = false;
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
        if s.held {
            return s.reported;
        }
        match s.poller {
            Some(poller) if poller != thread::current().id() => {
                // Not the polling thread: the removal stays the polling thread's to hear.
                return s.present && !s.removal_unreported;
            }
            Some(_) => {
                // Heard when the polling thread waits again (see the module's doc).
                s.removal_told |= s.removal_unreported;
            }
            None if s.removal_unreported => {
                // No polling thread yet to wait: heard now. If a new card is already
                // in, the next wait returns at once so pcscd sees it.
                s.removal_unreported = false;
                s.recheck = s.present;
                s.reported = false;
                return false;
            }
            None => {}
        }
        s.reported = s.present && !s.removal_unreported;
        s.reported
    }

    /// pcscd's polling callback: blocks until something pcscd has not seen happens,
    /// the stop callback is called, the slot closes, or `timeout` passes.
    pub fn wait_for_event(&self, timeout: Duration) {
        let deadline = Instant::now().checked_add(timeout);
        let mut s = self.state.lock();
        s.poller = Some(thread::current().id());
        if s.removal_told {
            // pcscd has heard the removal. If a new card is already in, return at once
            // so that it hears the new one.
            s.removal_told = false;
            s.removal_unreported = false;
            s.recheck |= s.present;
        }
        if s.held && s.stops_seen == s.stop_requests {
            // The polling thread went on after a stop: not a teardown. What the stop
            // held back is reported now.
            s.held = false;
            if s.removal_unreported || s.present != s.reported {
                s.waited = s.generation;
                s.recheck = false;
                return;
            }
        }
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

    /// pcscd's stop callback: ends the current wait, or the next one if none runs, and
    /// holds the reports until the wait after it starts (see the module's doc).
    pub fn stop_waiting(&self) {
        let mut s = self.state.lock();
        s.stop_requests += 1;
        s.held = true;
        drop(s);
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

    /// pcscd's polling thread, after a wait, powers an unused card off (IFDPowerICC
    /// checks presence first) and then checks presence for its event loop. A removal
    /// must reach the event loop's check even when the next card is in by then (a vicc
    /// reset: it reconnects at once). Before the fix the power-off's check took the
    /// removal and the event check found a card: pcscd saw no event at all (CI, 1.9.9).
    #[test]
    fn a_removal_reaches_every_check_of_the_polling_thread_until_it_waits_again() {
        let p = Presence::new();
        p.insert();
        p.wait_for_event(LONG);
        assert!(p.check());
        assert!(waits(&p));
        p.remove();
        p.wait_for_event(LONG);
        assert!(!p.check(), "the power-off's check");
        p.insert();
        assert!(!p.check(), "the event loop's check hears the removal too");
        let t = Instant::now();
        p.wait_for_event(LONG);
        assert!(
            t.elapsed() < LONG,
            "the new card ends the next wait at once"
        );
        assert!(p.check(), "and is heard");
        assert!(waits(&p), "then nothing more");
    }

    #[test]
    fn a_removal_is_heard_at_once_before_the_polling_thread_first_waits() {
        let p = Presence::new();
        p.insert();
        assert!(p.check());
        p.remove();
        p.insert();
        assert!(!p.check(), "the removal");
        assert!(p.check(), "no wait to hear it at: heard, the new card next");
        let t = Instant::now();
        p.wait_for_event(LONG);
        assert!(t.elapsed() < LONG, "the first wait returns at once");
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

    /// pcscd's teardown: the stop comes, the polling thread wakes, checks presence once
    /// and exits. A removal meanwhile must not be reported (it would keep the thread).
    #[test]
    fn a_stop_holds_reports_until_the_polling_thread_waits_again() {
        let p = Presence::new();
        p.insert();
        p.wait_for_event(LONG);
        assert!(p.check());
        // The stop arrives while no wait runs (pcscd between two waits).
        p.stop_waiting();
        p.remove();
        let t = Instant::now();
        p.wait_for_event(LONG);
        assert!(t.elapsed() < LONG, "the stop ends the wait");
        assert!(p.check(), "held: the removal is not reported after a stop");
        assert!(p.check(), "still held for every check until the next wait");
        // Not a teardown after all (a client's last SCardDisconnect): the next wait
        // releases the hold and returns at once for the change held back.
        let t = Instant::now();
        p.wait_for_event(LONG);
        assert!(
            t.elapsed() < LONG,
            "the held removal ends the next wait at once"
        );
        assert!(!p.check(), "and is reported");
        assert!(waits(&p), "then nothing more");
    }

    #[test]
    fn a_stop_during_a_wait_holds_until_the_next_one_and_loses_no_insertion() {
        let p = Arc::new(Presence::new());
        assert!(!p.check());
        let waiter = {
            let p = Arc::clone(&p);
            std::thread::spawn(move || p.wait_for_event(Duration::from_secs(600)))
        };
        p.stop_waiting();
        waiter.join().unwrap();
        p.insert();
        assert!(!p.check(), "held");
        let t = Instant::now();
        p.wait_for_event(LONG);
        assert!(t.elapsed() < LONG);
        assert!(
            p.check(),
            "the insertion, once the polling thread waits again"
        );
        assert!(waits(&p));
    }

    /// A swap that the stopped wait itself returned for: the next wait has no new
    /// generation to see, yet must return at once for the removal held back.
    #[test]
    fn a_swap_held_back_by_a_stop_is_reported_after_it() {
        let p = Presence::new();
        p.insert();
        p.wait_for_event(LONG);
        assert!(p.check());
        p.remove();
        p.insert();
        p.stop_waiting();
        p.wait_for_event(LONG);
        assert!(p.check(), "held");
        let t = Instant::now();
        p.wait_for_event(LONG);
        assert!(
            t.elapsed() < LONG,
            "the held removal ends the next wait at once"
        );
        assert!(!p.check(), "the removal");
        let t = Instant::now();
        p.wait_for_event(LONG);
        assert!(t.elapsed() < LONG);
        assert!(p.check(), "then the new card");
    }

    /// A presence check on another thread than the polling thread.
    fn checked_elsewhere(p: &Arc<Presence>) -> bool {
        let p = Arc::clone(p);
        std::thread::spawn(move || p.check()).join().unwrap()
    }

    /// Another pcscd thread (IFDPowerICC before a client's SCardDisconnect(RESET))
    /// checks presence after a removal before the polling thread does: pcscd marks the
    /// reader empty, but its polling thread must still hear the removal, then the next
    /// card. Before the fix, the other thread's check took the removal and the polling
    /// thread saw the new card as no change: an empty reader with a card in it.
    #[test]
    fn a_removal_another_thread_sees_first_is_still_reported_to_the_polling_thread() {
        let p = Arc::new(Presence::new());
        p.insert();
        p.wait_for_event(LONG);
        assert!(p.check());
        assert!(waits(&p));
        p.remove();
        assert!(
            !checked_elsewhere(&p),
            "another thread hears of the removal"
        );
        p.insert();
        let t = Instant::now();
        p.wait_for_event(LONG);
        assert!(t.elapsed() < LONG);
        assert!(!p.check(), "the polling thread hears the removal");
        let t = Instant::now();
        p.wait_for_event(LONG);
        assert!(t.elapsed() < LONG, "then looks again at once");
        assert!(p.check(), "and hears the new card");
        assert!(checked_elsewhere(&p), "which the other threads now see too");
        assert!(waits(&p));
    }

    #[test]
    fn other_threads_see_no_card_until_the_polling_thread_heard_the_removal() {
        let p = Arc::new(Presence::new());
        p.insert();
        p.wait_for_event(LONG);
        assert!(p.check());
        p.remove();
        p.insert();
        assert!(
            !checked_elsewhere(&p),
            "the old card is gone, the new one not yet announced"
        );
        p.wait_for_event(LONG);
        assert!(!p.check(), "the removal");
        p.wait_for_event(LONG);
        assert!(p.check(), "the new card");
        assert!(checked_elsewhere(&p));
    }

    #[test]
    fn a_removal_the_polling_thread_heard_is_absent_to_everyone() {
        let p = Arc::new(Presence::new());
        p.insert();
        p.wait_for_event(LONG);
        assert!(p.check());
        p.remove();
        p.wait_for_event(LONG);
        assert!(!p.check());
        assert!(!checked_elsewhere(&p));
        assert!(waits(&p), "another thread's check is no event");
    }

    #[test]
    fn a_stop_with_nothing_held_back_does_not_shorten_the_next_wait() {
        let p = Presence::new();
        p.insert();
        p.wait_for_event(LONG);
        assert!(p.check());
        p.stop_waiting();
        p.wait_for_event(LONG);
        assert!(p.check());
        assert!(waits(&p), "nothing changed: the wait after the stop blocks");
    }

    #[test]
    fn is_present_says_what_is_in_without_consuming_a_removal() {
        let p = Presence::new();
        assert!(!p.is_present());
        p.insert();
        assert!(p.is_present());
        p.remove();
        assert!(!p.is_present());
        p.insert();
        assert!(p.is_present(), "the new card");
        assert!(!p.check(), "the removal is still pcscd's to hear");
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
