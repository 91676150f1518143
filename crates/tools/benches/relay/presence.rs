//! Insertion and removal latency: vicc connect / close until SCardGetStatusChange
//! reports it.

use std::ffi::CString;
use std::time::{Duration, Instant};

use pcsc::{Context, ReaderState, State};
use vpcd_testing::{Behaviour, Vicc};

use crate::rtt::{Samples, Stats};
use crate::setup::wait_state;

/// Insertion and removal latencies over `cycles` connect/close cycles. A random pause
/// before each event spreads them over the phase of pcscd's 400 ms presence poll,
/// which is what the C driver relies on.
pub fn presence_cycles(ctx: &Context, reader: &str, port: u16, cycles: usize) -> (Stats, Stats) {
    let mut rng = XorShift::new();
    let mut states = [ReaderState::new(
        CString::new(reader).unwrap(),
        State::UNAWARE,
    )];
    wait_state(ctx, &mut states, false, Duration::from_secs(5));
    let (mut ins, mut rem) = (Samples::default(), Samples::default());
    for _ in 0..cycles {
        std::thread::sleep(Duration::from_millis(50 + rng.below(400)));
        let t = Instant::now();
        let vicc = Vicc::connect(port, Behaviour::Echo);
        wait_state(ctx, &mut states, true, Duration::from_secs(5));
        ins.0.push(t.elapsed());
        std::thread::sleep(Duration::from_millis(50 + rng.below(400)));
        let t = Instant::now();
        vicc.disconnect();
        wait_state(ctx, &mut states, false, Duration::from_secs(5));
        rem.0.push(t.elapsed());
    }
    (ins.stats(), rem.stats())
}

pub struct XorShift(pub u64);

impl XorShift {
    pub fn new() -> XorShift {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64;
        XorShift(seed | 1)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}
