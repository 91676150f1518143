//! Relay benchmark: our driver against Debian's C vpcd, and both against the floors
//! they cannot beat, all measured in one run of ONE private pcscd that loads both.
//!
//! - APDU round trips (SCardTransmit) for 0 B, 255 B, 4 KiB and 64 KiB-ish data.
//! - Floors: SCardStatus through pcscd (two IPC round trips, no driver call),
//!   SCardGetAttrib(ATR_STRING) (one IPC round trip and a trivial driver
//!   call), and a framed loopback TCP echo with the same echo vicc code.
//! - Insertion and removal latency: vicc connect / close until SCardGetStatusChange
//!   reports it.
//! - Aggregate APDUs/s with 1, 2 and 8 slots busy at once.
//! - pcscd's resident memory and its CPU use and wakeups while idle.
//! - Power cycles and GET ATRs an idle card gets, in use and after its last use.
//!
//! Prints one Markdown table. Run it with `scripts/bench` (a release build). Only
//! loopback is used; pcscd is stopped by pid on exit, on panic (Drop guards), when the
//! benchmark dies (PR_SET_PDEATHSIG) and by a watchdog if the run takes too long.
//!
//! ## Module map
//! - `main.rs` (here): the constants of a run and the order of the measurements.
//! - `setup.rs`: the private pcscd with both drivers (through `vpcd_testing::Pcscd`),
//!   the watchdog, the PC/SC client calls the measurements share.
//! - `rtt.rs`: APDU round trips and their floors, interleaved; sample statistics.
//! - `presence.rs`: insertion and removal latency.
//! - `throughput.rs`: operations per second with 1, 2 and 8 clients; other load.
//! - `procfs.rs`: memory, CPU time, threads and idle wakeups from /proc; CPU pinning.
//! - `power.rs`: the control messages an idle card's vicc receives.
//! - `report.rs`: [`report::Results`] printed as the Markdown table and the targets.
//! - `units.rs`: how a duration is printed (µs, ms, s), shared by the report and the
//!   measurements, so that neither reaches into the other.

mod power;
mod presence;
mod procfs;
mod report;
mod rtt;
mod setup;
mod throughput;
mod units;

use std::collections::HashSet;
use std::path::Path;
use std::time::{Duration, Instant};

use vpcd_testing::{connect, driver_path, free_ports, Behaviour, Vicc};

use presence::presence_cycles;
use procfs::{allowed_cpus, cpu_window, last_cpu, loadavg, mem, nproc, pin};
use report::Results;
use rtt::{apdu_with, interleaved_rtt, EchoPeer, SizeRtt};
use setup::{establish, wait_present};
use throughput::{attrib_rate, tcp_rate, throughput, Foreign, Tp};

const C_DRIVER: &str = "/usr/lib/pcsc/drivers/serial/libifdvpcd.so";
const OURS_NAME: &str = "Rust VPCD";
const C_NAME: &str = "C VPCD";
const OURS_SLOTS: u16 = 8;
const C_SLOTS: u16 = 2;
/// The whole run is killed (pcscd first) after this long.
const WATCHDOG: Duration = Duration::from_secs(280);
/// Command data sizes of the round-trip rows, with their iteration counts (ours, C).
/// 65528 data bytes make a 65535-byte case 3E APDU, the largest one vpcd frame holds.
const SIZES: [(usize, usize, usize); 4] = [
    (0, 2000, 30),
    (255, 2000, 30),
    (4096, 2000, 30),
    (65528, 1000, 20),
];
const PRESENCE_CYCLES: usize = 20;
const IDLE_WINDOW: Duration = Duration::from_secs(3);
/// How long an idle card is watched for power cycles: held by a client, then
/// released (past pcscd's 5 s power-off grace period).
const POWER_HELD: Duration = Duration::from_secs(8);
const POWER_RELEASED: Duration = Duration::from_secs(12);
/// pcscd's power-off grace period (5 s) and a margin.
const SETTLE: Duration = Duration::from_secs(6);

fn main() {
    let started = Instant::now();
    setup::watchdog();
    let load_before = loadavg();
    // Before any pinning: the CPUs we may use.
    let _ = (nproc(), allowed_cpus());

    let ours_lib = driver_path();
    assert!(
        Path::new(C_DRIVER).exists(),
        "{C_DRIVER} is missing: apt-get install vsmartcard-vpcd"
    );
    let base = free_ports(OURS_SLOTS + C_SLOTS);
    let (ours_port, c_port) = (base, base + OURS_SLOTS);
    eprintln!("relay bench: our driver {}", ours_lib.display());
    let mut pcscd = setup::start(&ours_lib, ours_port, c_port);
    let pid = pcscd.pid() as i32;
    let ctx = establish();
    let ours_readers = pcscd.wait_readers_of(&ctx, OURS_NAME, OURS_SLOTS as usize);
    let c_readers = pcscd.wait_readers_of(&ctx, C_NAME, C_SLOTS as usize);
    eprintln!("relay bench: pcscd {pid}, readers {ours_readers:?} {c_readers:?}");
    let rss_start = mem(pid);

    // Presence latency, one slot at a time, the other slots empty.
    let foreign = Foreign::start(pid);
    eprintln!("relay bench: insertion/removal, ours");
    let ours_presence = presence_cycles(&ctx, &ours_readers[0], ours_port, PRESENCE_CYCLES);
    eprintln!("relay bench: insertion/removal, C");
    let c_presence = presence_cycles(&ctx, &c_readers[0], c_port, PRESENCE_CYCLES);

    let presence_foreign = foreign.cpus();

    // Every slot gets an echo vicc from here on.
    let ours_viccs: Vec<Vicc> = (0..OURS_SLOTS)
        .map(|i| Vicc::connect(ours_port + i, Behaviour::Echo))
        .collect();
    let mut c_viccs: Vec<Vicc> = (0..C_SLOTS)
        .map(|i| Vicc::connect(c_port + i, Behaviour::Echo))
        .collect();
    for r in ours_readers.iter().chain(&c_readers) {
        wait_present(&ctx, r, true, Duration::from_secs(5));
    }
    std::thread::sleep(Duration::from_millis(500));
    let rss_idle = mem(pid);

    // Round trips: ours and its floors in interleaved blocks, so that all of them see
    // the same machine state (other load, where the scheduler put the threads).
    eprintln!("relay bench: round trips, ours, C and floors");
    let ours_card = connect(&ctx, &ours_readers[0]);
    let c_card = connect(&ctx, &c_readers[0]);
    let mut echo = EchoPeer::new();
    let foreign = Foreign::start(pid);
    let rtt: Vec<SizeRtt> = SIZES
        .iter()
        .map(|&(n, iters, c_iters)| {
            interleaved_rtt(
                &ours_card,
                Some((&c_card, c_iters)),
                &mut echo,
                &apdu_with(n),
                iters,
            )
        })
        .collect();
    // Again with every thread of pcscd and of this process on one CPU: no cross-CPU
    // wakeups, so what remains is the work of the code path itself.
    let rtt_foreign = foreign.cpus();
    eprintln!("relay bench: round trips, all on one CPU");
    let cpu = last_cpu();
    pin(pid, Some(cpu));
    pin(std::process::id() as i32, Some(cpu));
    let foreign = Foreign::start(pid);
    let pinned: Vec<SizeRtt> = SIZES
        .iter()
        .map(|&(n, iters, _)| {
            interleaved_rtt(&ours_card, None, &mut echo, &apdu_with(n), iters / 2)
        })
        .collect();
    let pinned_foreign = foreign.cpus();
    pin(std::process::id() as i32, None);
    pin(pid, None);
    drop(echo);
    drop(ours_card);
    drop(c_card);
    // Throughput, and memory while busy.
    eprintln!("relay bench: throughput");
    let small = apdu_with(0);
    let large = apdu_with(65528);
    let ours_tp: Vec<Tp> = [1usize, 2, 8]
        .iter()
        .map(|&n| throughput(&ours_readers[..n], &small, Duration::from_secs(2), pid))
        .collect();
    let c_tp: Vec<Tp> = [1usize, 2]
        .iter()
        .map(|&n| throughput(&c_readers[..n], &small, Duration::from_secs(3), pid))
        .collect();
    let attrib_tp: Vec<Tp> = [1usize, 2, 8]
        .iter()
        .map(|&n| attrib_rate(&ours_readers[..n], Duration::from_secs(1), pid))
        .collect();
    let tcp_tp: Vec<Tp> = [1usize, 2, 8]
        .iter()
        .map(|&n| tcp_rate(n, Duration::from_secs(1), pid))
        .collect();
    let busy_large_ours = throughput(&ours_readers, &large, Duration::from_secs(1), pid);
    let busy_large_c = throughput(&c_readers, &large, Duration::from_secs(2), pid);

    // Idle CPU: first with only our 8 viccs connected, then with the C driver's too.
    eprintln!("relay bench: idle CPU");
    c_viccs.clear();
    for r in &c_readers {
        wait_present(&ctx, r, false, Duration::from_secs(5));
    }
    // pcscd powers an unused card down 5 s after its last use: let that pass.
    std::thread::sleep(SETTLE);
    let mut pollers = HashSet::new();
    let idle_ours = cpu_window(pid, IDLE_WINDOW, &mut pollers);
    c_viccs.extend((0..C_SLOTS).map(|i| Vicc::connect(c_port + i, Behaviour::Echo)));
    for r in &c_readers {
        wait_present(&ctx, r, true, Duration::from_secs(5));
    }
    std::thread::sleep(SETTLE);
    let idle_both = cpu_window(pid, IDLE_WINDOW, &mut pollers);
    let rss_end = mem(pid);

    eprintln!("relay bench: power cycles of an idle card");
    let power = power::idle_power_cycles(
        &[
            (&ours_readers[1], &ours_viccs[1]),
            (&c_readers[1], &c_viccs[1]),
        ],
        POWER_HELD,
        POWER_RELEASED,
    );

    // Everything measured: stop pcscd before printing.
    drop(ctx);
    drop(ours_viccs);
    drop(c_viccs);
    let stop_time = pcscd.stop();
    let nudged = pcscd.nudged();
    setup::stopped();
    drop(pcscd);

    report::write(&Results {
        started,
        load_before,
        ours_lib,
        pid,
        rss_start,
        rss_idle,
        rss_end,
        ours_presence,
        c_presence,
        presence_foreign,
        rtt,
        rtt_foreign,
        pinned,
        pinned_foreign,
        ours_tp,
        c_tp,
        attrib_tp,
        tcp_tp,
        busy_large_ours,
        busy_large_c,
        idle_ours,
        idle_both,
        power_ours: power[0],
        power_c: power[1],
        power_windows: (POWER_HELD, POWER_RELEASED),
        stop_time,
        nudged,
    });
}
