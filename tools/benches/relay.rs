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
//!
//! Prints one Markdown table. Run it with `scripts/bench` (a release build). Only
//! loopback is used; pcscd is stopped by pid on exit, on panic (Drop guards), when the
//! benchmark dies (PR_SET_PDEATHSIG) and by a watchdog if the run takes too long.

use std::collections::HashSet;
use std::ffi::CString;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::Barrier;
use std::time::{Duration, Instant};

use pcsc::{Attribute, Card, Context, ReaderState, Scope, State};
use vpcd_testing::{
    connect, driver_path, echo_reply, extended_apdu, free_ports, pcscd_binary, run, Behaviour,
    Entry, Pcscd, Vicc,
};

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
/// pcscd's power-off grace period (5 s) and a margin.
const SETTLE: Duration = Duration::from_secs(6);

/// pid of the running pcscd, for the watchdog.
static PCSCD_PID: AtomicI32 = AtomicI32::new(0);

fn main() {
    let started = Instant::now();
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
    // No debug log: pcscd's would add a write per command to every round trip.
    let mut pcscd = Pcscd::builder()
        .debug_log(false)
        .wrapper(None)
        .entry(&Entry::device(
            OURS_NAME,
            &format!("/dev/null:{ours_port}/slots={OURS_SLOTS}/listen=127.0.0.1"),
        ))
        .entry(&Entry::device(C_NAME, &format!("/dev/null:{c_port}")).lib(C_DRIVER))
        .start();
    let pid = pcscd.pid() as i32;
    PCSCD_PID.store(pid, Ordering::SeqCst);
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
    let pooled = |rtt: &[SizeRtt], f: fn(&SizeRtt) -> &Samples| {
        let mut all = Samples::default();
        for r in rtt {
            all.0.extend_from_slice(&f(r).0);
        }
        all.stats()
    };
    let (status, attrib) = (pooled(&rtt, |r| &r.status), pooled(&rtt, |r| &r.attrib));
    let (pinned_status, pinned_attrib) = (
        pooled(&pinned, |r| &r.status),
        pooled(&pinned, |r| &r.attrib),
    );
    let c_rtt: Vec<Stats> = rtt.iter().map(|r| r.c.stats()).collect();

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

    // Everything measured: stop pcscd before printing.
    drop(ctx);
    drop(ours_viccs);
    drop(c_viccs);
    let stop_time = pcscd.stop();
    let nudged = pcscd.nudged();
    PCSCD_PID.store(0, Ordering::SeqCst);
    drop(pcscd);

    let mut report = Report::default();
    report.machine(&ours_lib, pid);
    report.line("");
    report.header();
    let labels = [
        "0 B (4 B APDU)",
        "255 B (260 B APDU)",
        "4 KiB (ext. APDU)",
        "65528 B (65535 B ext. APDU)",
    ];
    for (i, label) in labels.iter().enumerate() {
        let (ours, floor_status, tcp) = (
            rtt[i].ours.stats(),
            rtt[i].status.stats(),
            rtt[i].tcp.stats(),
        );
        let floor_med = floor_status.median + tcp.median;
        let floor_p99 = floor_status.p99 + tcp.p99;
        report.row(
            &format!("APDU round trip, {label}, median"),
            &us(ours.median),
            &us(c_rtt[i].median),
            &ratio(c_rtt[i].median.as_secs_f64(), ours.median.as_secs_f64()),
            &format!(
                "{} (= {} + {})",
                us(floor_med),
                us(floor_status.median),
                us(tcp.median)
            ),
            &ratio(ours.median.as_secs_f64(), floor_med.as_secs_f64()),
        );
        report.row(
            &format!("APDU round trip, {label}, p99"),
            &us(ours.p99),
            &us(c_rtt[i].p99),
            &ratio(c_rtt[i].p99.as_secs_f64(), ours.p99.as_secs_f64()),
            &format!(
                "{} (= {} + {})",
                us(floor_p99),
                us(floor_status.p99),
                us(tcp.p99)
            ),
            &ratio(ours.p99.as_secs_f64(), floor_p99.as_secs_f64()),
        );
    }
    for (i, label) in labels.iter().enumerate() {
        let (ours, floor_status, tcp) = (
            pinned[i].ours.stats(),
            pinned[i].status.stats(),
            pinned[i].tcp.stats(),
        );
        let floor_med = floor_status.median + tcp.median;
        report.row(
            &format!("APDU round trip, {label}, median, all threads pinned to one CPU"),
            &us(ours.median),
            "",
            "",
            &format!(
                "{} (= {} + {})",
                us(floor_med),
                us(floor_status.median),
                us(tcp.median)
            ),
            &ratio(ours.median.as_secs_f64(), floor_med.as_secs_f64()),
        );
    }
    report.row(
        "APDU round trips measured per size (ours pinned: half; C in the same rounds as ours)",
        &SIZES
            .iter()
            .map(|s| s.1.to_string())
            .collect::<Vec<_>>()
            .join(" / "),
        &SIZES
            .iter()
            .map(|s| s.2.to_string())
            .collect::<Vec<_>>()
            .join(" / "),
        "",
        "as ours, in the same rounds (blocks of 100)",
        "",
    );
    report.row(
        "Floor: SCardStatus round trip (2 IPC round trips, no driver call), median / p99; pinned median",
        "",
        "",
        "",
        &format!("{} / {}; {}", us(status.median), us(status.p99), us(pinned_status.median)),
        "",
    );
    report.row(
        "Floor: SCardGetAttrib(ATR_STRING) on our reader (1 IPC round trip, no I/O), median / p99; pinned median",
        "",
        "",
        "",
        &format!("{} / {}; {}", us(attrib.median), us(attrib.p99), us(pinned_attrib.median)),
        "",
    );
    for (i, label) in labels.iter().enumerate() {
        let tcp = rtt[i].tcp.stats();
        report.row(
            &format!("Floor: framed loopback TCP echo, {label}, median / p99; pinned median"),
            "",
            "",
            "",
            &format!(
                "{} / {}; {}",
                us(tcp.median),
                us(tcp.p99),
                us(pinned[i].tcp.stats().median)
            ),
            "",
        );
    }
    let ipi_cell = |rtt: &[SizeRtt], k: usize| {
        rtt.iter()
            .map(|r| format!("{:.2}", r.ipis_per_op()[k]))
            .collect::<Vec<_>>()
            .join(" / ")
    };
    report.row(
        "Cross-CPU wakeups (RES+CAL IPIs, system-wide) per round trip, by size; floor: SCardStatus; TCP echo",
        &ipi_cell(&rtt, 0),
        "",
        "",
        &format!("{}; {}", ipi_cell(&rtt, 1), ipi_cell(&rtt, 3)),
        "",
    );
    report.row(
        "Same, all threads pinned to one CPU",
        &ipi_cell(&pinned, 0),
        "",
        "",
        &format!("{}; {}", ipi_cell(&pinned, 1), ipi_cell(&pinned, 3)),
        "",
    );
    for (what, o, c) in [
        (
            "Insertion latency (vicc connect → SCardGetStatusChange)",
            &ours_presence.0,
            &c_presence.0,
        ),
        (
            "Removal latency (vicc close → SCardGetStatusChange)",
            &ours_presence.1,
            &c_presence.1,
        ),
    ] {
        report.row(
            &format!("{what}, median / max of {PRESENCE_CYCLES}"),
            &format!("{} / {}", us(o.median), us(o.max)),
            &format!("{} / {}", us(c.median), us(c.max)),
            &ratio(c.median.as_secs_f64(), o.median.as_secs_f64()),
            "",
            "",
        );
    }
    for (i, n) in [1usize, 2, 8].into_iter().enumerate() {
        let c = c_tp.get(i);
        report.row(
            &format!("Throughput, 4 B APDUs, {n} slot(s) busy in parallel (floor: {n} SCardGetAttrib clients; {n} TCP echo pairs)"),
            &format!("{:.0} APDU/s", ours_tp[i].rate),
            &c.map(|c| format!("{:.1} APDU/s", c.rate)).unwrap_or_else(|| "n/a (2 slots)".into()),
            &c.map(|c| ratio(c.rate, ours_tp[i].rate)).unwrap_or_default(),
            &format!("{:.0} calls/s; {:.0} echoes/s", attrib_tp[i].rate, tcp_tp[i].rate),
            "",
        );
    }
    let scale = ours_tp[2].rate / ours_tp[0].rate;
    let attrib_scale = attrib_tp[2].rate / attrib_tp[0].rate;
    let tcp_scale = tcp_tp[2].rate / tcp_tp[0].rate;
    report.row(
        "Throughput scaling, 8 / 1 (2 / 1)",
        &format!("{scale:.2}x ({:.2}x)", ours_tp[1].rate / ours_tp[0].rate),
        &format!("n/a ({:.2}x)", c_tp[1].rate / c_tp[0].rate),
        "",
        &format!(
            "{attrib_scale:.2}x ({:.2}x); {tcp_scale:.2}x ({:.2}x)",
            attrib_tp[1].rate / attrib_tp[0].rate,
            tcp_tp[1].rate / tcp_tp[0].rate
        ),
        "",
    );
    let join =
        |v: &[Tp], f: &dyn Fn(&Tp) -> String| v.iter().map(f).collect::<Vec<_>>().join(" / ");
    report.row(
        "CPUs busy (pcscd + benchmark process: clients and viccs), 1 / 2 / 8 in parallel",
        &join(&ours_tp, &|t| format!("{:.2}", t.cpus)),
        &join(&c_tp, &|t| format!("{:.3}", t.cpus)),
        "",
        &format!(
            "{}; {}",
            join(&attrib_tp, &|t| format!("{:.2}", t.cpus)),
            join(&tcp_tp, &|t| format!("{:.2}", t.cpus))
        ),
        "",
    );
    report.row(
        "CPU time per operation, all processes, 1 / 2 / 8 in parallel",
        &join(&ours_tp, &|t| us(t.cpu_per_op)),
        &join(&c_tp, &|t| us(t.cpu_per_op)),
        "",
        &format!(
            "{}; {}",
            join(&attrib_tp, &|t| us(t.cpu_per_op)),
            join(&tcp_tp, &|t| us(t.cpu_per_op))
        ),
        "",
    );
    report.row(
        "Wakeups of our vpcd-* watcher threads per APDU, 1 / 2 / 8 slots",
        &join(&ours_tp, &|t| format!("{:.4}", t.watcher_switches_per_op)),
        "",
        "",
        "",
        "",
    );
    report.row(
        "pcscd VmRSS after start, both readers loaded, no vicc",
        &kib(rss_start.rss),
        "(same process)",
        "",
        "",
        "",
    );
    report.row(
        "pcscd VmRSS idle, all 10 viccs connected",
        &kib(rss_idle.rss),
        "(same process)",
        "",
        "",
        "",
    );
    report.row(
        "pcscd VmRSS busy, 4 B APDUs on every slot of one driver (8 ours / 2 C)",
        &kib(ours_tp[2].mem.rss),
        &kib(c_tp[1].mem.rss),
        "",
        "",
        "",
    );
    report.row(
        "pcscd VmRSS busy, 65535 B APDUs on every slot of one driver (8 ours / 2 C)",
        &kib(busy_large_ours.mem.rss),
        &kib(busy_large_c.mem.rss),
        "",
        "",
        "",
    );
    report.row(
        "pcscd VmRSS / VmHWM at the end",
        &format!("{} / {}", kib(rss_end.rss), kib(rss_end.hwm)),
        "(same process)",
        "",
        "",
        "",
    );
    let secs = idle_ours.secs;
    report.row(
        &format!(
            "pcscd CPU while idle, utime+stime over {secs:.0} s (ours: 8 Rust viccs connected, C slots empty; C: its 2 viccs connected too)"
        ),
        &format!("{:.2} % ({} ticks)", idle_ours.cpu_pct, idle_ours.ticks),
        &format!("{:.2} % ({} ticks)", idle_both.cpu_pct, idle_both.ticks),
        "",
        "",
        "",
    );
    report.row(
        "pcscd CPU while idle, by thread (schedstat): threads serving our readers / the C driver's pollers",
        &format!("{:.3} % ({:.2} ms)", idle_ours.other_ms / 10.0 / secs, idle_ours.other_ms),
        &format!("{:.3} % ({:.2} ms)", idle_both.c_ms / 10.0 / idle_both.secs, idle_both.c_ms),
        &ratio(idle_both.c_ms, idle_ours.other_ms),
        "",
        "",
    );
    report.row(
        "pcscd wakeups/s while idle, by thread: ours (vpcd-* watchers) / C pollers",
        &format!(
            "{:.1} ({:.1})",
            idle_ours.other_wakeups / secs,
            idle_ours.vpcd_wakeups / secs
        ),
        &format!("{:.1}", idle_both.c_wakeups / idle_both.secs),
        &ratio(idle_both.c_wakeups, idle_ours.other_wakeups),
        "",
        "",
    );
    report.row(
        "Other load: CPUs kept busy by other processes (and steal) during presence / round trips / pinned round trips / 1, 2, 8-slot runs",
        &format!(
            "{:.2} / {:.2} / {:.2} / {}",
            presence_foreign,
            rtt_foreign,
            pinned_foreign,
            join(&ours_tp, &|t| format!("{:.2}", t.foreign))
        ),
        &format!("C runs: {}", join(&c_tp, &|t| format!("{:.2}", t.foreign))),
        "",
        &format!("{}; {}", join(&attrib_tp, &|t| format!("{:.2}", t.foreign)), join(&tcp_tp, &|t| format!("{:.2}", t.foreign))),
        "",
    );
    report.line("");
    report.line(&format!(
        "Load average before / after: {load_before} / {}. pcscd stopped {} after SIGINT{}. Whole run: {:.1} s.",
        loadavg(),
        us(stop_time),
        if nudged { " (it missed the signal, a known pcsc-lite 1.9.9 race, and was woken by a connection after 2 s)" } else { "" },
        started.elapsed().as_secs_f64()
    ));
    report.line("");
    report.line("Targets for our driver (reported, not asserted):");
    let worst_of = |rtt: &[SizeRtt]| {
        rtt.iter()
            .map(|r| {
                r.ours.stats().median.as_secs_f64()
                    / (r.status.stats().median + r.tcp.stats().median).as_secs_f64()
            })
            .fold(0.0, f64::max)
    };
    let (worst, worst_pinned) = (worst_of(&rtt), worst_of(&pinned));
    report.target(
        worst <= 1.5,
        &format!(
            "APDU median ≤ 1.5x (SCardStatus + TCP echo) for every size: worst {worst:.2}x (pinned to one CPU: {worst_pinned:.2}x)"
        ),
    );
    report.target(
        ours_presence.0.median <= Duration::from_millis(5)
            && ours_presence.1.median <= Duration::from_millis(5),
        &format!(
            "insertion / removal median ≤ 5 ms ({} / {})",
            us(ours_presence.0.median),
            us(ours_presence.1.median)
        ),
    );
    report.target(
        scale >= 3.0,
        &format!(
            "8-slot throughput ≥ 3x 1-slot ({scale:.2}x on {} CPUs, 1 slot kept {:.2} CPUs busy; \
             on this machine pcscd alone scales {attrib_scale:.2}x, loopback TCP {tcp_scale:.2}x)",
            nproc(),
            ours_tp[0].cpus,
        ),
    );
    report.target(
        idle_ours.cpu_pct < 1.0,
        &format!("idle CPU < 1 % ({:.2} %)", idle_ours.cpu_pct),
    );
    report.print();
}

// ---------------------------------------------------------------------------------
// PC/SC client

fn establish() -> Context {
    Context::establish(Scope::User).expect("establish context")
}

/// Waits until the card in `reader` is (or is not) present.
fn wait_present(ctx: &Context, reader: &str, present: bool, timeout: Duration) {
    let mut states = [ReaderState::new(
        CString::new(reader).unwrap(),
        State::UNAWARE,
    )];
    wait_state(ctx, &mut states, present, timeout);
}

/// Waits for the reader's state to show the card present (absent), starting from the
/// state `states[0]` already knows, so no call is spent on learning it.
fn wait_state(ctx: &Context, states: &mut [ReaderState; 1], present: bool, timeout: Duration) {
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

// ---------------------------------------------------------------------------------
// Measurements

#[derive(Clone, Copy, Default)]
struct Stats {
    median: Duration,
    p99: Duration,
    max: Duration,
    mean: Duration,
}

#[derive(Default)]
struct Samples(Vec<Duration>);

impl Samples {
    fn stats(&self) -> Stats {
        let mut v = self.0.clone();
        assert!(!v.is_empty());
        v.sort();
        let p99 = ((v.len() as f64 * 0.99).ceil() as usize).clamp(1, v.len()) - 1;
        Stats {
            median: v[v.len() / 2],
            p99: v[p99],
            max: v[v.len() - 1],
            mean: v.iter().sum::<Duration>() / v.len() as u32,
        }
    }
}

/// An APDU with `n` command data bytes: case 1 for 0, short case 3 up to 255,
/// extended case 3 above.
fn apdu_with(n: usize) -> Vec<u8> {
    match n {
        0 => vec![0x80, 0xEE, 0x00, 0x00],
        1..=255 => {
            let mut a = vec![0x80, 0xEE, 0x00, 0x00, n as u8];
            a.extend((0..n).map(|i| (i * 7 + 3) as u8));
            a
        }
        _ => extended_apdu(n),
    }
}

/// Round trips of one APDU size through our driver and of the floors.
struct SizeRtt {
    ours: Samples,
    status: Samples,
    attrib: Samples,
    tcp: Samples,
    /// The C driver's round trips, measured in the same rounds.
    c: Samples,
    /// Rescheduling and function-call IPIs (cross-CPU wakeups, system-wide) during
    /// the blocks of ours, status, attrib and tcp.
    ipis: [u64; 4],
}

impl SizeRtt {
    /// IPIs per round trip of ours, status, attrib and tcp.
    fn ipis_per_op(&self) -> [f64; 4] {
        let n =
            [&self.ours, &self.status, &self.attrib, &self.tcp].map(|s| s.0.len().max(1) as f64);
        [0, 1, 2, 3].map(|k| self.ipis[k] as f64 / n[k])
    }
}

/// Rescheduling and function-call interrupts of all CPUs so far: each is a thread
/// woken (or work sent) across CPUs.
fn ipis() -> u64 {
    let text = std::fs::read_to_string("/proc/interrupts").unwrap_or_default();
    text.lines()
        .filter(|l| matches!(l.split_whitespace().next(), Some("RES:" | "CAL:")))
        .flat_map(|l| {
            l.split_whitespace()
                .skip(1)
                .map_while(|w| w.parse::<u64>().ok())
        })
        .sum()
}

const BLOCK: usize = 100;

/// Measures ours, SCardStatus, SCardGetAttrib and the TCP echo in turns of BLOCK
/// iterations each, after a warm-up of each.
fn interleaved_rtt(
    card: &Card,
    c: Option<(&Card, usize)>,
    echo: &mut EchoPeer,
    apdu: &[u8],
    iters: usize,
) -> SizeRtt {
    let expect = echo_reply(apdu);
    let mut buf = vec![0u8; pcsc::MAX_BUFFER_SIZE_EXTENDED];
    let (mut names, mut atr, mut attr) = ([0u8; 256], [0u8; 64], [0u8; 256]);
    let mut r = SizeRtt {
        ours: Samples::default(),
        status: Samples::default(),
        attrib: Samples::default(),
        tcp: Samples::default(),
        c: Samples::default(),
        ipis: [0; 4],
    };
    let rounds = iters.div_ceil(BLOCK);
    for round in 0..=rounds {
        let n = if round == 0 {
            BLOCK / 5
        } else {
            BLOCK.min(iters - (round - 1) * BLOCK)
        };
        // Round 0 warms up and is not kept.
        let keep = |s: &mut Samples, t: Duration| {
            if round > 0 {
                s.0.push(t);
            }
        };
        let count_ipis = |total: &mut u64, before: u64| {
            if round > 0 {
                *total += ipis().saturating_sub(before);
            }
        };
        let i0 = ipis();
        for _ in 0..n {
            let t = Instant::now();
            let reply = card.transmit(apdu, &mut buf).expect("transmit");
            keep(&mut r.ours, t.elapsed());
            assert_eq!(reply.len(), expect.len());
        }
        count_ipis(&mut r.ipis[0], i0);
        let i0 = ipis();
        for _ in 0..n {
            let t = Instant::now();
            card.status2(&mut names, &mut atr).expect("SCardStatus");
            keep(&mut r.status, t.elapsed());
        }
        count_ipis(&mut r.ipis[1], i0);
        let i0 = ipis();
        for _ in 0..n {
            let t = Instant::now();
            card.get_attribute(Attribute::AtrString, &mut attr)
                .expect("SCardGetAttrib");
            keep(&mut r.attrib, t.elapsed());
        }
        count_ipis(&mut r.ipis[2], i0);
        let i0 = ipis();
        for _ in 0..n {
            let t = Instant::now();
            let len = echo.round_trip(apdu);
            keep(&mut r.tcp, t.elapsed());
            assert_eq!(len, expect.len());
        }
        count_ipis(&mut r.ipis[3], i0);
        // The C driver, a few at a time (it takes 44 ms for most APDUs).
        if let Some((c_card, c_iters)) = c {
            let n = if round == 0 {
                1
            } else {
                c_iters.div_ceil(rounds)
            };
            for _ in 0..n {
                let t = Instant::now();
                let reply = c_card.transmit(apdu, &mut buf).expect("transmit (C)");
                keep(&mut r.c, t.elapsed());
                assert_eq!(reply, &expect[..], "C driver's echo");
            }
        }
    }
    assert_eq!(&buf[..expect.len()], &expect[..]);
    assert_eq!(&echo.reply[..expect.len()], &expect[..]);
    eprintln!(
        "relay bench: {} B APDU: ours mean {}, status mean {}, attrib mean {}, tcp mean {}",
        apdu.len(),
        us(r.ours.stats().mean),
        us(r.status.stats().mean),
        us(r.attrib.stats().mean),
        us(r.tcp.stats().mean)
    );
    r
}

/// A framed loopback TCP echo: the same frames as the driver sends, to the same echo
/// vicc code; one write per frame, a read of the header, then of the payload.
struct EchoPeer {
    client: TcpStream,
    _server: Vicc,
    frame: Vec<u8>,
    reply: Vec<u8>,
}

impl EchoPeer {
    fn new() -> EchoPeer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        client.set_nodelay(true).unwrap();
        let (server, _) = listener.accept().unwrap();
        EchoPeer {
            client,
            _server: Vicc::serve(server, Behaviour::Echo),
            frame: Vec::new(),
            reply: vec![0u8; 65535],
        }
    }

    fn round_trip(&mut self, apdu: &[u8]) -> usize {
        self.frame.clear();
        self.frame
            .extend_from_slice(&(apdu.len() as u16).to_be_bytes());
        self.frame.extend_from_slice(apdu);
        self.client.write_all(&self.frame).unwrap();
        let mut header = [0u8; 2];
        self.client.read_exact(&mut header).unwrap();
        let len = u16::from_be_bytes(header) as usize;
        self.client.read_exact(&mut self.reply[..len]).unwrap();
        len
    }
}

/// Insertion and removal latencies over `cycles` connect/close cycles. A random pause
/// before each event spreads them over the phase of pcscd's 400 ms presence poll,
/// which is what the C driver relies on.
fn presence_cycles(ctx: &Context, reader: &str, port: u16, cycles: usize) -> (Stats, Stats) {
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

/// One throughput run.
struct Tp {
    /// Aggregate operations/s.
    rate: f64,
    /// CPUs kept busy by pcscd and this process (clients and viccs).
    cpus: f64,
    cpu_per_op: Duration,
    /// Context switches of our vpcd-* watcher threads per operation.
    watcher_switches_per_op: f64,
    /// pcscd's memory half way.
    mem: Mem,
    /// CPUs other processes kept busy meanwhile.
    foreign: f64,
}

/// Aggregate APDUs/s with one client thread (own context) per reader.
fn throughput(readers: &[String], apdu: &[u8], run: Duration, pid: i32) -> Tp {
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
fn parallel_rate<S>(
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

/// Measures how many CPUs processes other than pcscd and this benchmark kept busy
/// (the hypervisor's steal time included): other load skews every number here.
struct Foreign {
    pid: i32,
    t0: Instant,
    busy0: u64,
    ours0: u64,
}

impl Foreign {
    fn start(pid: i32) -> Foreign {
        Foreign {
            pid,
            t0: Instant::now(),
            busy0: system_busy_ticks(),
            ours0: cpu_ticks(pid) + cpu_ticks(std::process::id() as i32),
        }
    }

    fn cpus(&self) -> f64 {
        let busy = system_busy_ticks().saturating_sub(self.busy0);
        let ours =
            (cpu_ticks(self.pid) + cpu_ticks(std::process::id() as i32)).saturating_sub(self.ours0);
        busy.saturating_sub(ours) as f64 / clock_ticks() / self.t0.elapsed().as_secs_f64()
    }
}

/// Busy time of all CPUs (user nice system irq softirq steal), in clock ticks.
fn system_busy_ticks() -> u64 {
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
fn watcher_switches(pid: i32) -> u64 {
    threads(pid)
        .iter()
        .filter(|t| t.comm.starts_with("vpcd"))
        .map(|t| t.switches)
        .sum()
}

/// Pairs of framed loopback TCP echo peers, `n` at once: the TCP floor's throughput.
fn tcp_rate(n: usize, run: Duration, pid: i32) -> Tp {
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
fn attrib_rate(readers: &[String], run: Duration, pid: i32) -> Tp {
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

#[derive(Clone, Copy, Default)]
struct Mem {
    rss: u64,
    hwm: u64,
}

fn mem(pid: i32) -> Mem {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    Mem {
        rss: field("VmRSS:"),
        hwm: field("VmHWM:"),
    }
}

struct CpuWindow {
    secs: f64,
    /// utime + stime of the whole pcscd process.
    ticks: u64,
    cpu_pct: f64,
    /// Time on CPU (schedstat) and context switches of the C driver's polling
    /// threads, of all other pcscd threads, and of our vpcd-* watcher threads.
    c_ms: f64,
    other_ms: f64,
    c_wakeups: f64,
    other_wakeups: f64,
    vpcd_wakeups: f64,
}

struct Thread {
    tid: u64,
    comm: String,
    switches: u64,
    run_ns: u64,
    /// Blocked in (clock_)nanosleep: pcscd's 400 ms presence poll of a driver without
    /// a polling callback, which here is only the C driver.
    sleeping: bool,
}

fn threads(pid: i32) -> Vec<Thread> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
    {
        let dir = entry.path();
        let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap_or_default();
        let status = read("status");
        let syscall = read("syscall");
        out.push(Thread {
            tid: entry.file_name().to_string_lossy().parse().unwrap_or(0),
            comm: read("comm").trim().to_owned(),
            switches: status
                .lines()
                .filter(|l| {
                    l.starts_with("voluntary_ctxt_switches:")
                        || l.starts_with("nonvoluntary_ctxt_switches:")
                })
                .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                .sum(),
            run_ns: read("schedstat")
                .split_whitespace()
                .next()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0),
            sleeping: matches!(syscall.split_whitespace().next(), Some("35" | "230")),
        });
    }
    out
}

/// utime + stime of a whole process (exited threads included), in clock ticks.
fn cpu_ticks(pid: i32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 of proc(5), counted here from field 3.
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64
}

/// pcscd's CPU use and wakeups over `window`. Threads seen sleeping in nanosleep (here
/// or in an earlier window, `pollers`) are the C driver's presence pollers.
fn cpu_window(pid: i32, window: Duration, pollers: &mut HashSet<u64>) -> CpuWindow {
    let (t0, ticks0, th0) = (Instant::now(), cpu_ticks(pid), threads(pid));
    while t0.elapsed() < window {
        std::thread::sleep(Duration::from_millis(100));
        pollers.extend(threads(pid).iter().filter(|t| t.sleeping).map(|t| t.tid));
    }
    let (secs, ticks1, th1) = (t0.elapsed().as_secs_f64(), cpu_ticks(pid), threads(pid));
    let ticks = ticks1 - ticks0;
    let mut w = CpuWindow {
        secs,
        ticks,
        cpu_pct: ticks as f64 / clock_ticks() / secs * 100.0,
        c_ms: 0.0,
        other_ms: 0.0,
        c_wakeups: 0.0,
        other_wakeups: 0.0,
        vpcd_wakeups: 0.0,
    };
    for t in &th1 {
        let Some(before) = th0.iter().find(|b| b.tid == t.tid) else {
            continue;
        };
        let switches = (t.switches - before.switches) as f64;
        let ms = (t.run_ns - before.run_ns) as f64 / 1e6;
        let poller = pollers.contains(&t.tid);
        if poller {
            w.c_wakeups += switches;
            w.c_ms += ms;
        } else {
            w.other_wakeups += switches;
            w.other_ms += ms;
        }
        if t.comm.starts_with("vpcd") {
            w.vpcd_wakeups += switches;
        }
        if switches > 0.0 {
            eprintln!(
                "relay bench: idle: thread {} ({}{}): {switches} switches, {ms:.3} ms",
                t.tid,
                t.comm,
                if poller { ", C poller" } else { "" }
            );
        }
    }
    w
}

/// The CPUs this process was allowed to run on when it started.
fn allowed_cpus() -> libc::cpu_set_t {
    static MASK: std::sync::OnceLock<libc::cpu_set_t> = std::sync::OnceLock::new();
    *MASK.get_or_init(|| {
        // SAFETY: a zeroed cpu_set_t is a valid empty set, filled in by the call.
        let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        // SAFETY: `set` is a valid cpu_set_t of the size passed.
        let rc =
            unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
        assert_eq!(rc, 0, "sched_getaffinity");
        set
    })
}

/// The last CPU of `allowed_cpus`.
fn last_cpu() -> usize {
    let set = allowed_cpus();
    // SAFETY: CPU_ISSET reads inside the set for any index below CPU_SETSIZE.
    (0..libc::CPU_SETSIZE as usize)
        .rev()
        .find(|&c| unsafe { libc::CPU_ISSET(c, &set) })
        .unwrap_or(0)
}

/// Restricts every thread of process `pid` to `cpu`, or gives them back every CPU
/// this benchmark was allowed to use.
fn pin(pid: i32, cpu: Option<usize>) {
    let set = match cpu {
        None => allowed_cpus(),
        Some(c) => {
            // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET writes inside
            // it for c < CPU_SETSIZE, which last_cpu guarantees.
            unsafe {
                let mut set: libc::cpu_set_t = std::mem::zeroed();
                libc::CPU_SET(c, &mut set);
                set
            }
        }
    };
    for entry in std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
    {
        let tid: i32 = entry.file_name().to_string_lossy().parse().unwrap_or(0);
        // SAFETY: `set` is a valid cpu_set_t of the size passed.
        unsafe { libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    }
}

fn loadavg() -> String {
    let l = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    l.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
}

struct XorShift(u64);

impl XorShift {
    fn new() -> XorShift {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64;
        XorShift(seed | 1)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

// ---------------------------------------------------------------------------------
// Output

#[derive(Default)]
struct Report {
    lines: Vec<String>,
}

impl Report {
    fn line(&mut self, s: &str) {
        self.lines.push(s.to_owned());
    }

    fn machine(&mut self, ours: &Path, pid: i32) {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let model = cpuinfo
            .lines()
            .find_map(|l| {
                l.strip_prefix("model name")?
                    .split_once(':')
                    .map(|(_, v)| v.trim().to_owned())
            })
            .unwrap_or_else(|| "unknown CPU".into());
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
        let pcscd = run(Command::new(pcscd_binary()).arg("--version")).1;
        let pcscd = pcscd
            .lines()
            .next()
            .unwrap_or("pcscd")
            .trim()
            .trim_end_matches('.')
            .to_owned();
        let c_version =
            run(Command::new("dpkg-query").args(["-W", "-f=${Version}", "vsmartcard-vpcd"])).1;
        self.line("### vpcd relay benchmark");
        self.line("");
        self.line(&format!(
            "Machine: {} CPU(s), {model}, Linux {}. {pcscd}. C driver: Debian vsmartcard-vpcd {} ({C_DRIVER}). \
             Ours: {} (release build), DEVICENAME /dev/null:PORT/slots=8/listen=127.0.0.1. \
             One pcscd (pid {pid}, no -d) with both drivers; echo viccs (TCP_NODELAY, one write per reply) \
             in the benchmark process; loopback only.",
            nproc(),
            kernel.trim(),
            c_version.trim(),
            ours.display()
        ));
    }

    fn header(&mut self) {
        self.line("| Measurement | ours (Rust) | C vpcd | C / ours | floor | ours / floor |");
        self.line("|---|---:|---:|---:|---:|---:|");
    }

    fn row(
        &mut self,
        what: &str,
        ours: &str,
        c: &str,
        c_ratio: &str,
        floor: &str,
        floor_ratio: &str,
    ) {
        self.line(&format!(
            "| {what} | {ours} | {c} | {c_ratio} | {floor} | {floor_ratio} |"
        ));
    }

    fn target(&mut self, met: bool, what: &str) {
        self.line(&format!("- [{}] {what}", if met { "x" } else { " " }));
    }

    fn print(&self) {
        let mut out = std::io::stdout().lock();
        for l in &self.lines {
            let _ = writeln!(out, "{l}");
        }
    }
}

/// CPUs this process may use, as it started (before any pinning).
fn nproc() -> usize {
    static CPUS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *CPUS.get_or_init(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    })
}

fn us(d: Duration) -> String {
    let us = d.as_secs_f64() * 1e6;
    if us < 1000.0 {
        format!("{us:.1} µs")
    } else if us < 1e6 {
        format!("{:.2} ms", us / 1000.0)
    } else {
        format!("{:.2} s", us / 1e6)
    }
}

fn kib(k: u64) -> String {
    format!("{:.1} MiB", k as f64 / 1024.0)
}

fn ratio(a: f64, b: f64) -> String {
    if a <= 0.0 || b <= 0.0 {
        return String::new();
    }
    let r = a / b;
    if r >= 10.0 {
        format!("{r:.0}x")
    } else if r >= 0.1 {
        format!("{r:.2}x")
    } else {
        format!("1/{:.0}", 1.0 / r)
    }
}
