//! What /proc and the scheduler say: pcscd's memory, CPU time and threads, its CPU
//! use and wakeups over an idle window; the CPUs this process may use, and pinning.

use std::collections::HashSet;
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Default)]
pub struct Mem {
    pub rss: u64,
    pub hwm: u64,
}

pub fn mem(pid: i32) -> Mem {
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

pub struct CpuWindow {
    pub secs: f64,
    /// utime + stime of the whole pcscd process.
    pub ticks: u64,
    pub cpu_pct: f64,
    /// Time on CPU (schedstat) and context switches of the C driver's polling
    /// threads, of all other pcscd threads, and of our vpcd-* watcher threads.
    pub c_ms: f64,
    pub other_ms: f64,
    pub c_wakeups: f64,
    pub other_wakeups: f64,
    pub vpcd_wakeups: f64,
}

/// pcscd's CPU use and wakeups over `window`. Threads seen sleeping in nanosleep (here
/// or in an earlier window, `pollers`) are the C driver's presence pollers.
pub fn cpu_window(pid: i32, window: Duration, pollers: &mut HashSet<u64>) -> CpuWindow {
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

pub struct Thread {
    pub tid: u64,
    pub comm: String,
    pub switches: u64,
    pub run_ns: u64,
    /// Blocked in (clock_)nanosleep: pcscd's 400 ms presence poll of a driver without
    /// a polling callback, which here is only the C driver.
    pub sleeping: bool,
}

pub fn threads(pid: i32) -> Vec<Thread> {
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
pub fn cpu_ticks(pid: i32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 of proc(5), counted here from field 3.
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

pub fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64
}

/// The CPUs this process was allowed to run on when it started.
pub fn allowed_cpus() -> libc::cpu_set_t {
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
pub fn last_cpu() -> usize {
    let set = allowed_cpus();
    // SAFETY: CPU_ISSET reads inside the set for any index below CPU_SETSIZE.
    (0..libc::CPU_SETSIZE as usize)
        .rev()
        .find(|&c| unsafe { libc::CPU_ISSET(c, &set) })
        .unwrap_or(0)
}

/// Restricts every thread of process `pid` to `cpu`, or gives them back every CPU
/// this benchmark was allowed to use.
pub fn pin(pid: i32, cpu: Option<usize>) {
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

/// CPUs this process may use, as it started (before any pinning).
pub fn nproc() -> usize {
    static CPUS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *CPUS.get_or_init(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    })
}

pub fn loadavg() -> String {
    let l = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    l.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
}
