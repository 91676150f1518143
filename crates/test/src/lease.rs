//! Which slots are leased: one atomic flag per slot, so that tests taking different
//! slots never wait on each other. Only a test that finds every slot taken waits, on
//! a condition variable that a release wakes.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

/// The lease flags of `len` slots.
#[derive(Debug)]
pub struct Table {
    busy: Box<[AtomicBool]>,
    /// Where the next search starts: consecutive leases spread over the slots, so a
    /// slot just given back (whose reader state pcscd may still be settling) is the
    /// last one handed out again.
    next: AtomicUsize,
    /// Releases so far: a waiter that saw a count before finding no slot knows that
    /// a release happened meanwhile and searches again instead of sleeping.
    releases: AtomicU64,
    /// Tests waiting for a slot: a release takes the lock only when there are some.
    waiters: AtomicUsize,
    lock: Mutex<()>,
    freed: Condvar,
}

impl Table {
    pub fn new(len: usize) -> Table {
        Table {
            busy: (0..len).map(|_| AtomicBool::new(false)).collect(),
            next: AtomicUsize::new(0),
            releases: AtomicU64::new(0),
            waiters: AtomicUsize::new(0),
            lock: Mutex::new(()),
            freed: Condvar::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.busy.len()
    }

    /// A free slot, now leased to the caller; `None` if all are leased.
    pub fn try_acquire(&self) -> Option<usize> {
        let len = self.busy.len();
        if len == 0 {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed) % len;
        (0..len).map(|i| (start + i) % len).find(|&i| {
            self.busy[i]
                .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
        })
    }

    /// A free slot, waiting up to `timeout` for one to be released.
    pub fn acquire(&self, timeout: Duration) -> Option<usize> {
        let deadline = Instant::now() + timeout;
        loop {
            let seen = self.releases.load(Ordering::SeqCst);
            if let Some(i) = self.try_acquire() {
                return Some(i);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            self.waiters.fetch_add(1, Ordering::SeqCst);
            let guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
            // A release between our search and the lock has bumped the count; its
            // notification may have gone out before we waited, so look again.
            if self.releases.load(Ordering::SeqCst) == seen {
                let _ = self
                    .freed
                    .wait_timeout(guard, left)
                    .unwrap_or_else(|e| e.into_inner());
            } else {
                drop(guard);
            }
            self.waiters.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// Gives slot `i` back. Releasing a slot that is not leased is a bug.
    pub fn release(&self, i: usize) {
        let was = self.busy[i].swap(false, Ordering::Release);
        debug_assert!(was, "slot {i} released but not leased");
        self.releases.fetch_add(1, Ordering::SeqCst);
        if self.waiters.load(Ordering::SeqCst) > 0 {
            // Taking the lock orders this notification after a waiter's check of the
            // count: it is either waiting already or sees the new count.
            let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
            self.freed.notify_all();
        }
    }

    /// Slots leased now.
    #[cfg(test)]
    pub fn leased(&self) -> usize {
        self.busy
            .iter()
            .filter(|b| b.load(Ordering::Relaxed))
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::sync::atomic::AtomicU32;
    use std::sync::Arc;

    #[test]
    fn every_slot_once_then_none() {
        let t = Table::new(4);
        let mut got: Vec<usize> = (0..4).map(|_| t.try_acquire().unwrap()).collect();
        got.sort();
        assert_eq!(got, [0, 1, 2, 3]);
        assert_eq!(t.try_acquire(), None);
        assert_eq!(t.acquire(Duration::from_millis(20)), None);
        t.release(2);
        assert_eq!(t.try_acquire(), Some(2));
        assert_eq!(Table::new(0).try_acquire(), None);
    }

    #[test]
    fn a_waiter_gets_the_released_slot() {
        let t = Arc::new(Table::new(1));
        assert_eq!(t.try_acquire(), Some(0));
        let waiter = {
            let t = t.clone();
            std::thread::spawn(move || t.acquire(Duration::from_secs(10)))
        };
        // Wait until the waiter is really waiting, so the release must wake it.
        while t.waiters.load(Ordering::SeqCst) == 0 {
            std::thread::yield_now();
        }
        t.release(0);
        assert_eq!(waiter.join().unwrap(), Some(0));
    }

    #[test]
    fn no_slot_is_ever_held_twice() {
        // 4 slots, 12 threads: each holds a slot for a moment and checks that nobody
        // else holds it meanwhile.
        let t = Arc::new(Table::new(4));
        let holders: Arc<Vec<AtomicU32>> = Arc::new((0..4).map(|_| AtomicU32::new(0)).collect());
        let threads: Vec<_> = (0..12)
            .map(|_| {
                let (t, holders) = (t.clone(), holders.clone());
                std::thread::spawn(move || {
                    for _ in 0..300 {
                        let i = t.acquire(Duration::from_secs(30)).expect("a slot");
                        assert_eq!(holders[i].fetch_add(1, Ordering::SeqCst), 0);
                        std::thread::yield_now();
                        assert_eq!(holders[i].fetch_sub(1, Ordering::SeqCst), 1);
                        t.release(i);
                    }
                })
            })
            .collect();
        for th in threads {
            th.join().unwrap();
        }
        assert_eq!(t.leased(), 0);
    }

    proptest! {
        /// Any sequence of acquires and releases leaves exactly the slots the model
        /// says are leased.
        #[test]
        fn matches_a_model(len in 1usize..8, ops in proptest::collection::vec(any::<(bool, u8)>(), 0..64)) {
            let t = Table::new(len);
            let mut model = vec![false; len];
            for (acquire, pick) in ops {
                if acquire {
                    match t.try_acquire() {
                        Some(i) => { prop_assert!(!model[i]); model[i] = true; }
                        None => prop_assert!(model.iter().all(|&b| b)),
                    }
                } else {
                    let held: Vec<usize> = (0..len).filter(|&i| model[i]).collect();
                    if !held.is_empty() {
                        let i = held[usize::from(pick) % held.len()];
                        t.release(i);
                        model[i] = false;
                    }
                }
            }
            prop_assert_eq!(t.leased(), model.iter().filter(|&&b| b).count());
        }
    }
}
