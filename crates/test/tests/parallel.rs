//! Sixteen tests at once, each with a card of its own doing real work: the same
//! pcscd, one slot each, no lock between them.
//!
//! Two forms. `sixteen_at_once` runs sixteen tests as threads of one test and holds
//! them at a barrier while all sixteen slots are leased, so it proves the parallel
//! leasing whatever the runner. `test_00` to `test_15` are sixteen ordinary tests:
//! `cargo test -p vpcd-test --test parallel -- --test-threads=16` runs them at once in
//! one process and one pcscd; nextest runs each in a process (and pcscd) of its own.

use std::collections::HashSet;
use std::sync::{Condvar, Mutex};
use std::time::Duration;

use vpcd_test::{transmit, Slot};

fn ok(r: Vec<u8>) -> Vec<u8> {
    assert!(r.len() >= 2 && r[r.len() - 2..] == [0x90, 0x00], "{r:02X?}");
    r[..r.len() - 2].to_vec()
}

/// What a test of a card does: select and read a file, verify the PIN, a
/// challenge, an extended echo, and a removal with the card back.
fn work(slot: &Slot, seed: u8) {
    let card = slot.connect().unwrap();
    ok(transmit(
        &card,
        &[
            0x00, 0xA4, 0x04, 0x0C, 0x06, 0xF0, 0x76, 0x70, 0x63, 0x64, 0x01,
        ],
    )
    .unwrap());
    ok(transmit(&card, &[0x00, 0xA4, 0x02, 0x0C, 0x02, 0x50, 0x01]).unwrap());
    assert_eq!(
        ok(transmit(&card, &[0x00, 0xB0, 0x00, 0x00, 0x00]).unwrap()),
        b"Hello from vpcd-vicc"
    );
    assert_eq!(
        transmit(&card, b"\x00\x20\x00\x81\x06000000").unwrap(),
        [0x63, 0xC2]
    );
    ok(transmit(&card, b"\x00\x20\x00\x81\x06123456").unwrap());
    assert_eq!(
        ok(transmit(&card, &[0x00, 0x84, 0x00, 0x00, 0x10]).unwrap()).len(),
        16
    );
    // An extended ECHO of 3000 bytes that only this test sends.
    let data: Vec<u8> = (0..3000u32).map(|i| (i as u8) ^ seed).collect();
    let mut apdu = vec![0x80, 0xEE, 0x00, 0x00, 0x00, 0x0B, 0xB8];
    apdu.extend(&data);
    apdu.extend([0x00, 0x00]);
    assert_eq!(ok(transmit(&card, &apdu).unwrap()), data);
    drop(card);
    slot.remove_card().unwrap();
    assert!(slot.connect().is_err());
    slot.insert_card().unwrap();
    // Back in the reader, the card is powered anew: the PIN is no longer verified
    // (three tries left again since the right PIN).
    let card = slot.connect().unwrap();
    assert_eq!(
        transmit(&card, &[0x00, 0x20, 0x00, 0x81]).unwrap(),
        [0x63, 0xC3]
    );
}

/// A barrier that gives up: a test that failed before reaching it must not leave
/// the others waiting forever.
struct Gate {
    arrived: Mutex<usize>,
    changed: Condvar,
}

impl Gate {
    fn wait(&self, all: usize) {
        let mut n = self.arrived.lock().unwrap();
        *n += 1;
        self.changed.notify_all();
        let (n, timeout) = self
            .changed
            .wait_timeout_while(n, Duration::from_secs(60), |n| *n < all)
            .unwrap();
        assert!(!timeout.timed_out(), "only {} of {all} tests got here", *n);
    }
}

#[test]
fn sixteen_at_once() {
    const TESTS: usize = 16;
    let (leased, done) = (
        Gate {
            arrived: Mutex::new(0),
            changed: Condvar::new(),
        },
        Gate {
            arrived: Mutex::new(0),
            changed: Condvar::new(),
        },
    );
    let held = Mutex::new(HashSet::new());
    std::thread::scope(|s| {
        for t in 0..TESTS {
            let (leased, done, held) = (&leased, &done, &held);
            s.spawn(move || {
                let mut slot = Slot::lease();
                slot.insert_builtin().unwrap();
                assert!(held.lock().unwrap().insert(slot.index()), "slot shared");
                // All sixteen hold a slot with a card here, at the same time.
                leased.wait(TESTS);
                work(&slot, t as u8);
                done.wait(TESTS);
            });
        }
    });
    assert_eq!(held.lock().unwrap().len(), TESTS);
}

macro_rules! tests {
    ($($name:ident = $seed:expr),*) => {$(
        #[test]
        fn $name() {
            let mut slot = Slot::lease();
            slot.insert_builtin().unwrap();
            work(&slot, $seed);
        }
    )*};
}

tests!(
    test_00 = 0,
    test_01 = 1,
    test_02 = 2,
    test_03 = 3,
    test_04 = 4,
    test_05 = 5,
    test_06 = 6,
    test_07 = 7,
    test_08 = 8,
    test_09 = 9,
    test_10 = 10,
    test_11 = 11,
    test_12 = 12,
    test_13 = 13,
    test_14 = 14,
    test_15 = 15
);
