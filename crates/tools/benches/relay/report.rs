//! The report: every measurement of a run ([`Results`]) as one Markdown table, the
//! machine it ran on, and the targets of our driver.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use vpcd_testing::{pcscd_binary, run};

use crate::power::Controls;
use crate::procfs::{loadavg, nproc, CpuWindow, Mem};
use crate::rtt::{Samples, SizeRtt, Stats};
use crate::throughput::Tp;
use crate::units::us;
use crate::{C_DRIVER, PRESENCE_CYCLES, SIZES};

/// Everything one run measured.
pub struct Results {
    pub started: Instant,
    pub load_before: String,
    pub ours_lib: PathBuf,
    pub pid: i32,
    pub rss_start: Mem,
    pub rss_idle: Mem,
    pub rss_end: Mem,
    /// Insertion and removal latencies.
    pub ours_presence: (Stats, Stats),
    pub c_presence: (Stats, Stats),
    pub presence_foreign: f64,
    /// Round trips by size (ours, C, floors), then all threads pinned to one CPU.
    pub rtt: Vec<SizeRtt>,
    pub rtt_foreign: f64,
    pub pinned: Vec<SizeRtt>,
    pub pinned_foreign: f64,
    /// Throughput with 1, 2, 8 clients (C: 1, 2).
    pub ours_tp: Vec<Tp>,
    pub c_tp: Vec<Tp>,
    pub attrib_tp: Vec<Tp>,
    pub tcp_tp: Vec<Tp>,
    pub busy_large_ours: Tp,
    pub busy_large_c: Tp,
    pub idle_ours: CpuWindow,
    pub idle_both: CpuWindow,
    /// Controls an idle card's vicc received: (held by a client, after release).
    pub power_ours: (Controls, Controls),
    pub power_c: (Controls, Controls),
    pub power_windows: (Duration, Duration),
    pub stop_time: Duration,
    pub nudged: bool,
}

/// Prints the report of a run on stdout.
pub fn write(results: &Results) {
    let Results {
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
        power_ours,
        power_c,
        power_windows,
        stop_time,
        nudged,
    } = results;
    let (pid, stop_time, nudged) = (*pid, *stop_time, *nudged);
    let pooled = |rtt: &[SizeRtt], f: fn(&SizeRtt) -> &Samples| {
        let mut all = Samples::default();
        for r in rtt {
            all.0.extend_from_slice(&f(r).0);
        }
        all.stats()
    };
    let (status, attrib) = (pooled(rtt, |r| &r.status), pooled(rtt, |r| &r.attrib));
    let (pinned_status, pinned_attrib) =
        (pooled(pinned, |r| &r.status), pooled(pinned, |r| &r.attrib));
    let c_rtt: Vec<Stats> = rtt.iter().map(|r| r.c.stats()).collect();

    let mut report = Report::default();
    report.machine(ours_lib, pid);
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
        &ipi_cell(rtt, 0),
        "",
        "",
        &format!("{}; {}", ipi_cell(rtt, 1), ipi_cell(rtt, 3)),
        "",
    );
    report.row(
        "Same, all threads pinned to one CPU",
        &ipi_cell(pinned, 0),
        "",
        "",
        &format!("{}; {}", ipi_cell(pinned, 1), ipi_cell(pinned, 3)),
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
        &join(ours_tp, &|t| format!("{:.2}", t.cpus)),
        &join(c_tp, &|t| format!("{:.3}", t.cpus)),
        "",
        &format!(
            "{}; {}",
            join(attrib_tp, &|t| format!("{:.2}", t.cpus)),
            join(tcp_tp, &|t| format!("{:.2}", t.cpus))
        ),
        "",
    );
    report.row(
        "CPU time per operation, all processes, 1 / 2 / 8 in parallel",
        &join(ours_tp, &|t| us(t.cpu_per_op)),
        &join(c_tp, &|t| us(t.cpu_per_op)),
        "",
        &format!(
            "{}; {}",
            join(attrib_tp, &|t| us(t.cpu_per_op)),
            join(tcp_tp, &|t| us(t.cpu_per_op))
        ),
        "",
    );
    report.row(
        "Wakeups of our vpcd-* watcher threads per APDU, 1 / 2 / 8 slots",
        &join(ours_tp, &|t| format!("{:.4}", t.watcher_switches_per_op)),
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
    let (held, released) = power_windows;
    report.row(
        &format!(
            "idle card held by a client, unused for {held:?}: power off / on / reset / GET ATR the vicc received"
        ),
        &power_ours.0.cell(),
        &power_c.0.cell(),
        "",
        "",
        "",
    );
    report.row(
        &format!(
            "idle card after its last use (1 APDU, SCardDisconnect LEAVE), {released:?}: power off / on / reset / GET ATR"
        ),
        &power_ours.1.cell(),
        &power_c.1.cell(),
        "",
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
            join(ours_tp, &|t| format!("{:.2}", t.foreign))
        ),
        &format!("C runs: {}", join(c_tp, &|t| format!("{:.2}", t.foreign))),
        "",
        &format!("{}; {}", join(attrib_tp, &|t| format!("{:.2}", t.foreign)), join(tcp_tp, &|t| format!("{:.2}", t.foreign))),
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
    let (worst, worst_pinned) = (worst_of(rtt), worst_of(pinned));
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

#[derive(Default)]
pub struct Report {
    pub lines: Vec<String>,
}

impl Report {
    pub fn line(&mut self, s: &str) {
        self.lines.push(s.to_owned());
    }

    pub fn machine(&mut self, ours: &Path, pid: i32) {
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

    pub fn header(&mut self) {
        self.line("| Measurement | ours (Rust) | C vpcd | C / ours | floor | ours / floor |");
        self.line("|---|---:|---:|---:|---:|---:|");
    }

    pub fn row(
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

    pub fn target(&mut self, met: bool, what: &str) {
        self.line(&format!("- [{}] {what}", if met { "x" } else { " " }));
    }

    pub fn print(&self) {
        let mut out = std::io::stdout().lock();
        for l in &self.lines {
            let _ = writeln!(out, "{l}");
        }
    }
}

pub fn kib(k: u64) -> String {
    format!("{:.1} MiB", k as f64 / 1024.0)
}

pub fn ratio(a: f64, b: f64) -> String {
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
