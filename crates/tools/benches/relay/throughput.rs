//! Aggregate operations per second with 1, 2 and 8 clients at once (APDUs through a
//! driver, SCardGetAttrib, TCP echoes), the CPU they cost, and the load other
//! processes put on the machine meanwhile.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Barrier;
use std::time::{Duration, Instant};

use pcsc::Attribute;
use vpcd_testing::{connect, echo_reply};

use crate::procfs::{clock_ticks, cpu_ticks, mem, threads, Mem};
use crate::rtt::{apdu_with, EchoPeer};
use crate::setup::establish;

/// One throughput run.
pub struct Tp {
    /// Aggregate operations/s.
    pub rate: f64,
    /// CPUs kept busy by pcscd and this process (clients and viccs).
    pub cpus: f64,
    pub cpu_per_op: Duration,
    /// Context switches of our vpcd-* watcher threads per operation.
    pub watcher_switches_per_op: f64,
    /// pcscd's memory half way.
    pub mem: Mem,
    /// CPUs other processes kept busy meanwhile.
    pub foreign: f64,
}

/// Aggregate APDUs/s with one client thread (own context) per reader.
pub fn throughput(readers: &[String], apdu: &[u8], run: Duration, pid: i32) -> Tp {
    let expect_len = echo_reply(apdu).len();
    parallel_rate(
        readers.len(),
        run,
        pid,
        |i| {
            let card = connect(&establish(), &readers[i]);
            (card, vec![0u8; pcsc::MAX_BUFFER_SIZE_EXTENDED])
        },
        |(card, buf)| {
            let reply = card.transmit(apdu, buf).expect("transmit");
            assert_eq!(reply.len(), expect_len);
        },
    )
}

/// Runs `op` in `n` threads at once for `run`, each on the state `setup` made for it.
pub fn parallel_rate<S>(
    n: usize,
    run: Duration,
    pid: i32,
    setup: impl Fn(usize) -> S + Sync,
    op: impl Fn(&mut S) + Sync,
) -> Tp {
    let barrier = Barrier::new(n + 1);
    let stop = AtomicBool::new(false);
    let me = std::process::id() as i32;
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..n)
            .map(|i| {
                let (barrier, stop, setup, op) = (&barrier, &stop, &setup, &op);
                s.spawn(move || {
                    let mut state = setup(i);
                    for _ in 0..2 {
                        op(&mut state);
                    }
                    barrier.wait();
                    let mut count = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        op(&mut state);
                        count += 1;
                    }
                    barrier.wait();
                    count
                })
            })
            .collect();
        barrier.wait();
        let (t0, cpu0, w0) = (
            Instant::now(),
            cpu_ticks(pid) + cpu_ticks(me),
            watcher_switches(pid),
        );
        let foreign = Foreign::start(pid);
        std::thread::sleep(run / 2);
        let mem = mem(pid);
        std::thread::sleep(run - run / 2);
        stop.store(true, Ordering::Relaxed);
        barrier.wait();
        let (secs, cpu1, w1) = (
            t0.elapsed().as_secs_f64(),
            cpu_ticks(pid) + cpu_ticks(me),
            watcher_switches(pid),
        );
        let total = workers
            .into_iter()
            .map(|w| w.join().expect("worker"))
            .sum::<u64>()
            .max(1);
        let cpu_secs = (cpu1 - cpu0) as f64 / clock_ticks();
        Tp {
            rate: total as f64 / secs,
            cpus: cpu_secs / secs,
            cpu_per_op: Duration::from_secs_f64(cpu_secs / total as f64),
            watcher_switches_per_op: w1.saturating_sub(w0) as f64 / total as f64,
            mem,
            foreign: foreign.cpus(),
        }
    })
}

/// Pairs of framed loopback TCP echo peers, `n` at once: the TCP floor's throughput.
pub fn tcp_rate(n: usize, run: Duration, pid: i32) -> Tp {
    let apdu = apdu_with(0);
    parallel_rate(
        n,
        run,
        pid,
        |_| EchoPeer::new(),
        |peer| {
            peer.round_trip(&apdu);
        },
    )
}

/// SCardGetAttrib calls, `n` clients at once on our readers: pcscd's own throughput.
pub fn attrib_rate(readers: &[String], run: Duration, pid: i32) -> Tp {
    parallel_rate(
        readers.len(),
        run,
        pid,
        |i| (connect(&establish(), &readers[i]), [0u8; 256]),
        |(card, buf)| {
            card.get_attribute(Attribute::AtrString, buf)
                .expect("SCardGetAttrib");
        },
    )
}

/// Measures how many CPUs processes other than pcscd and this benchmark kept busy
/// (the hypervisor's steal time included): other load skews every number here.
pub struct Foreign {
    pub pid: i32,
    pub t0: Instant,
    pub busy0: u64,
    pub ours0: u64,
}

impl Foreign {
    pub fn start(pid: i32) -> Foreign {
        Foreign {
            pid,
            t0: Instant::now(),
            busy0: system_busy_ticks(),
            ours0: cpu_ticks(pid) + cpu_ticks(std::process::id() as i32),
        }
    }

    pub fn cpus(&self) -> f64 {
        let busy = system_busy_ticks().saturating_sub(self.busy0);
        let ours =
            (cpu_ticks(self.pid) + cpu_ticks(std::process::id() as i32)).saturating_sub(self.ours0);
        busy.saturating_sub(ours) as f64 / clock_ticks() / self.t0.elapsed().as_secs_f64()
    }
}

/// Busy time of all CPUs (user nice system irq softirq steal), in clock ticks.
pub fn system_busy_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let fields: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    // user nice system idle iowait irq softirq steal: all but idle and iowait.
    fields
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4)
        .map(|(_, v)| v)
        .sum()
}

/// Context switches of our driver's vpcd-* watcher threads inside pcscd.
pub fn watcher_switches(pid: i32) -> u64 {
    threads(pid)
        .iter()
        .filter(|t| t.comm.starts_with("vpcd"))
        .map(|t| t.switches)
        .sum()
}
