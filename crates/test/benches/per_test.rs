//! 64 short tests, each needing a fresh card: today's practice against leased slots.
//!
//! - serialized: what Rust card projects do with `vpicc` (one port, one card): every
//!   test takes one global lock, starts its card on the one slot, sleeps 100 ms for it
//!   to be seen, does its work, stops the card, releases the lock.
//! - leased: every test leases a slot of its own (`Slot::lease`), serves its card and
//!   waits for the reader's event (no sleep), does its work, drops the lease (which
//!   waits until the slot is seen empty).
//!
//! Both serve the same card from the test process (the `Card` trait, as a vpicc card
//! is) to the same private pcscd, and do the same work: connect, SELECT, three APDUs.
//! A test runner's threads pull the 64 tests; cargo's default is one per CPU.
//!
//!   cargo build --release     # the driver and vpcd-vicc the bench uses
//!   cargo bench -p vpcd-test --bench per_test [-- THREADS...]   (default: 2 16)

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use vpcd_test::card::Served;
use vpcd_test::{transmit, Card, Slot, DEFAULT_ATR};

const TESTS: usize = 64;
const SETTLE: Duration = Duration::from_millis(100);

/// How long the card takes per APDU (0: answers at once; a JVM card or one doing
/// cryptography takes milliseconds), set per table.
static CARD_MS: AtomicUsize = AtomicUsize::new(0);

struct Applet;

impl Card for Applet {
    fn atr(&mut self) -> Vec<u8> {
        DEFAULT_ATR.to_vec()
    }
    fn transmit(&mut self, apdu: &[u8]) -> Vec<u8> {
        // The card's own computing time, not a wait for a condition.
        std::thread::sleep(Duration::from_millis(CARD_MS.load(Ordering::Relaxed) as u64));
        match apdu {
            [0x00, 0xA4, ..] => vec![0x90, 0x00],
            [0x80, 0xEE, _, _, _, data @ ..] => [data, &[0x90, 0x00]].concat(),
            _ => vec![0x6D, 0x00],
        }
    }
}

/// The test's own work on its card.
fn work(ctx: &vpcd_test::pcsc::Context, reader: &std::ffi::CStr) {
    let card = ctx
        .connect(
            reader,
            vpcd_test::pcsc::ShareMode::Shared,
            vpcd_test::pcsc::Protocols::ANY,
        )
        .expect("the card is there");
    let select = [0x00, 0xA4, 0x04, 0x00, 0x06, 0xF0, 0, 0, 0x0C, 0x0A, 0x01];
    assert_eq!(transmit(&card, &select).unwrap(), [0x90, 0x00]);
    for i in 0..3u8 {
        let r = transmit(&card, &[0x80, 0xEE, 0, 0, 2, i, 0x55]).unwrap();
        assert_eq!(r, [i, 0x55, 0x90, 0x00]);
    }
}

/// One way of running the 64 tests, on N runner threads.
type Variant = fn(usize) -> Run;

struct Run {
    total: Duration,
    /// Each test's own time: from holding the lock (or lease) to giving it back.
    own: Vec<Duration>,
    /// Each test's time from its start, waiting for the lock or a slot included
    /// (the lock is not fair: the longest wait shows how long a test can starve).
    elapsed: Vec<Duration>,
}

/// Runs the 64 tests on `threads` runner threads.
fn run(threads: usize, test: impl Fn() -> (Duration, Duration) + Sync) -> Run {
    let next = AtomicUsize::new(0);
    let results = Mutex::new(vec![]);
    let start = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                while next.fetch_add(1, Ordering::Relaxed) < TESTS {
                    let r = test();
                    results.lock().unwrap().push(r);
                }
            });
        }
    });
    let total = start.elapsed();
    let results = results.into_inner().unwrap();
    Run {
        total,
        own: results.iter().map(|r| r.0).collect(),
        elapsed: results.iter().map(|r| r.1).collect(),
    }
}

fn serialized(threads: usize) -> Run {
    let slot = Slot::lease();
    let lock = Mutex::new(());
    let ctx = vpcd_test::pcsc::Context::establish(vpcd_test::pcsc::Scope::User).unwrap();
    let run = run(threads, || {
        let start = Instant::now();
        let _guard = lock.lock().unwrap();
        let held = Instant::now();
        let mut card = Served::start(slot.addr(), Applet);
        std::thread::sleep(SETTLE);
        work(&ctx, slot.reader_cstr());
        card.stop();
        (held.elapsed(), start.elapsed())
    });
    // The last card's removal, before the slot goes back.
    slot.wait_absent(Duration::from_secs(10)).unwrap();
    run
}

/// One slot behind the lock still, but waiting for the reader's events instead of
/// sleeping: what the sleep costs, apart from the parallelism.
fn serialized_events(threads: usize) -> Run {
    let slot = Mutex::new(Slot::lease());
    run(threads, || {
        let start = Instant::now();
        let mut slot = slot.lock().unwrap();
        let held = Instant::now();
        slot.serve(Applet).unwrap();
        work(slot.context(), slot.reader_cstr());
        slot.eject().unwrap();
        (held.elapsed(), start.elapsed())
    })
}

fn leased(threads: usize) -> Run {
    run(threads, || {
        let start = Instant::now();
        let mut slot = Slot::lease();
        let held = Instant::now();
        slot.serve(Applet).unwrap();
        work(slot.context(), slot.reader_cstr());
        drop(slot);
        (held.elapsed(), start.elapsed())
    })
}

/// Leased slots with the built-in card, a process (vpcd-vicc) per test.
fn leased_process(threads: usize) -> Run {
    run(threads, || {
        let start = Instant::now();
        let mut slot = Slot::lease();
        let held = Instant::now();
        slot.insert_builtin().unwrap();
        let card = slot.connect().unwrap();
        let r = transmit(&card, &[0x80, 0xEE, 0, 0, 2, 1, 0x55]).unwrap();
        assert_eq!(r, [1, 0x55, 0x90, 0x00]);
        drop(card);
        drop(slot);
        (held.elapsed(), start.elapsed())
    })
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn median(v: &[Duration]) -> Duration {
    let mut v = v.to_vec();
    v.sort();
    v[v.len() / 2]
}

fn p95(v: &[Duration]) -> Duration {
    let mut v = v.to_vec();
    v.sort();
    v[(v.len() * 95 / 100).min(v.len() - 1)]
}

fn main() {
    let threads: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let threads = if threads.is_empty() {
        vec![2, 16]
    } else {
        threads
    };
    let start = Instant::now();
    drop(Slot::lease());
    println!(
        "environment start (pcscd, 16 slots), once per test process: {:.1} ms",
        ms(start.elapsed())
    );
    for card_ms in [0, 5] {
        CARD_MS.store(card_ms, Ordering::Relaxed);
        table(&threads, card_ms);
    }
}

fn table(threads: &[usize], card_ms: usize) {
    println!(
        "\n{TESTS} tests, each with a fresh card (served from the test process; {card_ms} ms \
         per APDU in the card), on N runner threads"
    );
    println!(
        "{:<34} {:>3} {:>9} {:>11} {:>14} {:>14} {:>15}",
        "", "N", "total s", "ms/test", "own median ms", "own p95 ms", "elapsed max ms"
    );
    for &n in threads {
        let variants: [(&str, Variant); 4] = [
            ("serialized: lock + 100 ms sleep", serialized),
            ("serialized: lock, event-driven", serialized_events),
            ("leased slots, event-driven", leased),
            ("leased, vpcd-vicc process each", leased_process),
        ];
        for (name, f) in variants {
            if card_ms > 0 && name.contains("vpcd-vicc") {
                continue; // the built-in card answers at once
            }
            let r = f(n);
            println!(
                "{:<34} {:>3} {:>9.3} {:>11.1} {:>14.1} {:>14.1} {:>15.1}",
                name,
                n,
                r.total.as_secs_f64(),
                ms(r.total) / TESTS as f64,
                ms(median(&r.own)),
                ms(p95(&r.own)),
                ms(*r.elapsed.iter().max().unwrap()),
            );
        }
    }
}
