//! How fast a vpcd-run environment is usable, against the usual recipe.
//!
//!   cargo bench -p vpcd-tools --bench environments --profile dev
//!   cargo bench -p vpcd-tools --bench environments --profile dev -- --modes-only
//!
//! "Usable" means a PC/SC client inside the environment has connected to the card in
//! `Virtual PCD 00 00` and had an APDU answered: this benchmark binary runs itself
//! there as the probe (`--probe`), which prints a line once it has; the time is from
//! spawning vpcd-run to that line.
//!
//! 1. vpcd-run with the built-in card, 20 times in a row, in each mode: namespaces,
//!    none (`--isolation none`: socket-activated pcscd, free ports), and (root only)
//!    the default mode inside `scripts/container-sim` (Docker's default capabilities
//!    and seccomp: it falls back to none, as in an unprivileged container), measured
//!    by this binary run inside the simulation;
//! 2. eight vpcd-run at once, 3 rounds, in each mode;
//! 3. the C vpcd (Debian's vsmartcard-vpcd) in the same kind of private pcscd, with
//!    vpcd-vicc started when pcscd is up, polled every 10 ms: the best a script can do
//!    with the C driver without sleeping;
//! 4. the usual recipe: the C vpcd, the vicc, then `sleep 5` (as CI scripts do).

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const C_DRIVER: &str = "/usr/lib/pcsc/drivers/serial/libifdvpcd.so";
const READER: &str = "Virtual PCD 00 00";

/// Inside an environment: connect, SELECT the MF, print `usable`. With `poll`, retry
/// every 10 ms (for up to 30 s) instead of failing.
fn probe(poll: bool) -> i32 {
    let start = Instant::now();
    loop {
        let result = (|| -> Result<(), String> {
            let ctx = pcsc::Context::establish(pcsc::Scope::User).map_err(|e| e.to_string())?;
            let reader = std::ffi::CString::new(READER).unwrap();
            let card = ctx
                .connect(&reader, pcsc::ShareMode::Shared, pcsc::Protocols::ANY)
                .map_err(|e| e.to_string())?;
            let mut buf = [0u8; 258];
            let reply = card
                .transmit(&[0x00, 0xA4, 0x00, 0x0C, 0x02, 0x3F, 0x00], &mut buf)
                .map_err(|e| e.to_string())?;
            if reply != [0x90, 0x00] {
                return Err(format!("SELECT answered {reply:02X?}"));
            }
            Ok(())
        })();
        match result {
            Ok(()) => {
                println!("usable");
                return 0;
            }
            Err(e) if !poll || start.elapsed() > Duration::from_secs(30) => {
                eprintln!("probe: {e}");
                return 1;
            }
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

/// Spawns vpcd-run with `args` (then `--` and the command), returns a handle to read
/// the probe's line from.
fn spawn_env(args: &[&str], command: &[&str]) -> (std::process::Child, Instant) {
    let vpcd_run = vpcd_testing::tool("vpcd-run");
    let mut all = vec![vpcd_run.to_str().unwrap()];
    all.extend_from_slice(args);
    spawn_cmd(&all, command)
}

/// Spawns `args[0]` with the rest of `args` (vpcd-run, perhaps behind a wrapper),
/// then `--` and the command.
fn spawn_cmd(args: &[&str], command: &[&str]) -> (std::process::Child, Instant) {
    let start = Instant::now();
    let child = Command::new(args[0])
        .args(&args[1..])
        .arg("--")
        .args(command)
        .env("PATH", vpcd_testing::path_with_tools())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start vpcd-run");
    (child, start)
}

/// Time to the probe's line, and to vpcd-run's exit (the whole run, teardown included).
fn finish(mut child: std::process::Child, start: Instant) -> (Duration, Duration) {
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let usable = start.elapsed();
    let status = child.wait().unwrap();
    let total = start.elapsed();
    if line.trim() != "usable" || !status.success() {
        let mut err = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
        panic!("environment failed ({status}): {line}{err}");
    }
    (usable, total)
}

fn stats(name: &str, samples: &mut [Duration]) -> String {
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let line = format!(
        "| {name} | {} | {:.1} | {:.1} | {:.1} |",
        samples.len(),
        ms(samples[samples.len() / 2]),
        ms(samples[0]),
        ms(*samples.last().unwrap())
    );
    println!("{line}");
    line
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--probe") {
        std::process::exit(probe(args.iter().any(|a| a == "--poll")));
    }
    let me = std::env::current_exe().unwrap();
    let me = me.to_str().unwrap();
    let driver = vpcd_testing::driver_path();
    let driver = driver.to_str().unwrap();
    let vpcd_run = vpcd_testing::tool("vpcd-run");
    let vpcd_run = vpcd_run.to_str().unwrap();
    // This binary again, inside the container simulation: vpcd-run as a suite in an
    // unprivileged container starts it (the simulation's own start, a filter
    // compiled per process, stays out of the figures).
    if args.iter().any(|a| a == "--inside-container-sim") {
        modes(
            me,
            driver,
            &[("auto: none, inside container-sim", vec![vpcd_run])],
        );
        return;
    }
    println!("| measurement | runs | median ms | min ms | max ms |");
    println!("|---|---:|---:|---:|---:|");

    // Warm the page cache once.
    let (c, s) = spawn_env(&["--driver", driver], &[me, "--probe"]);
    finish(c, s);
    modes(
        me,
        driver,
        &[
            ("namespaces", vec![vpcd_run, "--isolation", "namespaces"]),
            ("none", vec![vpcd_run, "--isolation", "none"]),
        ],
    );
    let root = std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"));
    if root {
        let sim = vpcd_testing::repo_root().join("scripts/container-sim");
        let status = Command::new(sim)
            .args([me, "--inside-container-sim"])
            .status()
            .expect("scripts/container-sim");
        assert!(status.success(), "the container simulation's run failed");
    } else {
        println!("(not root: no run inside scripts/container-sim)");
    }
    if std::env::args().any(|a| a == "--modes-only") {
        return;
    }

    if !Path::new(C_DRIVER).exists() {
        println!("(no C vpcd at {C_DRIVER}: install vsmartcard-vpcd for the comparison)");
        return;
    }
    let mut polled = vec![];
    for _ in 0..10 {
        let script = format!("vpcd-vicc -l -H 127.0.0.1 2>/dev/null & exec {me} --probe --poll");
        let (c, s) = spawn_env(&["--driver", C_DRIVER, "--no-card"], &["sh", "-c", &script]);
        polled.push(finish(c, s).0);
    }
    stats("C vpcd, private pcscd, polled every 10 ms", &mut polled);
    let mut recipe = vec![];
    for _ in 0..3 {
        let script = format!("vpcd-vicc -l -H 127.0.0.1 2>/dev/null & sleep 5; exec {me} --probe");
        let (c, s) = spawn_env(&["--driver", C_DRIVER, "--no-card"], &["sh", "-c", &script]);
        recipe.push(finish(c, s).0);
    }
    stats("usual recipe: C vpcd, vicc, sleep 5", &mut recipe);
}

/// Each mode (a label, vpcd-run and its options) 20 times in a row and 8 at once, 3
/// rounds; the modes interleaved, run by run and round by round, so that a machine's
/// changing load weighs on each alike.
fn modes(me: &str, driver: &str, modes: &[(&str, Vec<&str>)]) {
    let args: Vec<Vec<&str>> = modes
        .iter()
        .map(|(_, prefix)| prefix.iter().copied().chain(["--driver", driver]).collect())
        .collect();
    for a in &args {
        let (c, s) = spawn_cmd(a, &[me, "--probe"]);
        finish(c, s);
    }
    let n = modes.len();
    let (mut usable, mut total) = (vec![vec![]; n], vec![vec![]; n]);
    for _ in 0..20 {
        for (m, a) in args.iter().enumerate() {
            let (c, s) = spawn_cmd(a, &[me, "--probe"]);
            let (u, t) = finish(c, s);
            usable[m].push(u);
            total[m].push(t);
        }
    }
    let (mut parallel, mut rounds) = (vec![vec![]; n], vec![vec![]; n]);
    for _ in 0..3 {
        for (m, a) in args.iter().enumerate() {
            let round = Instant::now();
            let envs: Vec<_> = (0..8).map(|_| spawn_cmd(a, &[me, "--probe"])).collect();
            for (c, s) in envs {
                parallel[m].push(finish(c, s).0);
            }
            rounds[m].push(round.elapsed());
        }
    }
    for (m, (mode, _)) in modes.iter().enumerate() {
        stats(
            &format!("vpcd-run [{mode}]: start to card usable"),
            &mut usable[m],
        );
        stats(
            &format!("vpcd-run [{mode}]: whole run (start, APDU, teardown)"),
            &mut total[m],
        );
        stats(
            &format!("8 vpcd-run [{mode}] at once: start to card usable"),
            &mut parallel[m],
        );
        stats(
            &format!("8 vpcd-run [{mode}] at once: all 8 runs ended"),
            &mut rounds[m],
        );
    }
}
