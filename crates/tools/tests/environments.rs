//! vpcd-run environments, vpcd-wait and the live removal and insertion of vpcd-vicc,
//! as test suites use them: the recipes of docs/TESTING.md, each run here.
//!
//! Every vpcd-run here ends its whole environment itself (pid 1 of a PID namespace);
//! the tests wait for each with a deadline and kill it by pid if it overstays.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use vpcd_testing::*;

/// `vpcd-run --driver <the driver under test> ARGS...`
fn vpcd_run(args: &[&str]) -> Command {
    let mut cmd = Command::new(tool("vpcd-run"));
    cmd.arg("--driver")
        .arg(driver_path())
        .args(args)
        .env("PATH", path_with_tools())
        .stdin(Stdio::null());
    cmd
}

fn run_env(args: &[&str], limit: Duration) -> Finished {
    let dir = temp_dir("env");
    let start = Instant::now();
    let child = spawn_logged(&mut vpcd_run(args), dir.path(), "run");
    finish(child, dir.path(), "run", start, limit)
}

const LIMIT: Duration = Duration::from_secs(30);

/// The card is usable when the command starts; its exit status comes back; the
/// command sees the private socket and the reader names of every environment.
#[test]
fn command_runs_with_the_card_ready_and_its_status_returns() {
    let r = run_env(
        &[
            "--",
            "sh",
            "-c",
            "echo \"socket=$PCSCLITE_CSOCK_NAME reader=$VPCD_READER\"; \
             opensc-tool -l && opensc-tool -r \"$VPCD_READER\" -a && exit 7",
        ],
        LIMIT,
    );
    assert_eq!(r.status.code(), Some(7), "{}\n{}", r.stdout, r.stderr);
    assert!(r
        .stdout
        .contains("socket=/run/pcscd/pcscd.comm reader=Virtual PCD 00 00"));
    assert!(r.stdout.contains("Virtual PCD 00 00") && r.stdout.contains("Virtual PCD 00 01"));
    assert!(r.stdout.contains("3b:8a:80:01"), "{}", r.stdout);
    // A failing command shows pcscd's log, with the card's insertion in it.
    assert!(r.stderr.contains("pcscd's log"), "{}", r.stderr);
    assert!(r.stderr.contains("card inserted"), "{}", r.stderr);

    let ok = run_env(&["-q", "--", "true"], LIMIT);
    assert!(ok.status.success() && ok.stderr.is_empty(), "{}", ok.stderr);
}

/// Recipe: a suite that starts its own vicc and runs OpenSC tools, no sleep at all.
#[test]
fn suite_with_its_own_vicc_needs_no_sleep() {
    let r = run_env(
        &[
            "--no-card",
            "--",
            "sh",
            "-euc",
            "vpcd-vicc -l 2>/dev/null & \
             vpcd-wait -t 10 'Virtual PCD 00 00'; \
             opensc-tool -r 'Virtual PCD 00 00' -s '00 A4 04 0C 06 F0 76 70 63 64 01' \
               -s '00 A4 02 0C 02 50 01' -s '00 B0 00 00 00'",
        ],
        LIMIT,
    );
    assert!(r.status.success(), "{}\n{}", r.stdout, r.stderr);
    // "Hello from vpcd-vicc"
    assert!(r.stdout.contains("48 65 6C 6C 6F"), "{}", r.stdout);
}

/// Recipe: a jCardSim-style external vicc (here the Python vicc, a separate program
/// that connects to localhost:35963) in an environment without the built-in card.
#[test]
fn external_vicc_in_the_environment() {
    let shim = temp_dir("pyshim");
    std::os::unix::fs::symlink(
        "/usr/lib/python3/dist-packages/Cryptodome",
        shim.path().join("Crypto"),
    )
    .unwrap();
    let script = format!(
        "PYTHONPATH={}:/usr/lib/python3/site-packages/virtualsmartcard \
           /usr/bin/python3 /usr/bin/vicc -t iso7816 -P \"$VPCD_PORT\" >/dev/null 2>&1 & \
         vpcd-wait -t 20 \"$VPCD_READER\" && opensc-tool -r \"$VPCD_READER\" -a \
           -s '00 A4 00 0C 02 3F 00'",
        shim.path().display()
    );
    let r = run_env(&["--no-card", "--", "sh", "-c", &script], LIMIT);
    assert!(r.status.success(), "{}\n{}", r.stdout, r.stderr);
    assert!(
        r.stdout.contains("Received (SW1=0x90, SW2=0x00)"),
        "{}",
        r.stdout
    );
}

/// Eight environments at once, each with the same port and reader names, each
/// reading its own card's files (a file that names the environment) with opensc-tool:
/// no cross-talk.
#[test]
fn eight_environments_in_parallel() {
    let dir = temp_dir("parallel");
    let start = Instant::now();
    let mut children = vec![];
    for i in 0..8 {
        let fs = dir.path().join(format!("card{i}"));
        std::fs::create_dir_all(&fs).unwrap();
        // EF.DIR-like file 2F00 and a data file 5001 naming the environment.
        std::fs::write(fs.join("2F00"), format!("env-{i}-dir")).unwrap();
        std::fs::write(fs.join("5001"), format!("env-{i}-data")).unwrap();
        let script = "set -e
            opensc-tool -l
            opensc-tool -r \"$VPCD_READER\" -a
            opensc-tool -r \"$VPCD_READER\" -s '00 A4 00 0C 02 2F 00' -s '00 B0 00 00 00' \
                -s '00 A4 00 0C 02 50 01' -s '00 B0 00 00 00'
            for n in 1 2 3 4 5; do opensc-tool -r \"$VPCD_READER\" -s '00 84 00 00 08' >/dev/null; done
            ss -ltn";
        let mut cmd = vpcd_run(&["--fs", fs.to_str().unwrap(), "--", "sh", "-c", script]);
        children.push((i, spawn_logged(&mut cmd, dir.path(), &format!("env{i}"))));
    }
    let hex = |s: &str| {
        s.bytes()
            .map(|b| format!("{b:02X}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    for (i, child) in children {
        let r = finish(
            child,
            dir.path(),
            &format!("env{i}"),
            start,
            Duration::from_secs(60),
        );
        assert!(r.status.success(), "env {i}: {}\n{}", r.stdout, r.stderr);
        assert!(r.stdout.contains("Virtual PCD 00 00") && r.stdout.contains("Virtual PCD 00 01"));
        assert!(!r.stdout.contains("Virtual PCD 01 00"), "{}", r.stdout);
        for j in 0..8 {
            let mine = r.stdout.contains(&hex(&format!("env-{j}-dir")))
                && r.stdout.contains(&hex(&format!("env-{j}-data")));
            assert_eq!(mine, i == j, "env {i} and card {j}:\n{}", r.stdout);
        }
        assert!(r.stdout.contains(":35963"), "{}", r.stdout);
    }
    eprintln!("8 environments in parallel: {:?}", start.elapsed());
}

/// vpcd-wait fails after its timeout, saying what the readers hold; --all N and
/// --absent; both inside an environment.
#[test]
fn wait_times_out_with_a_message() {
    let r = run_env(
        &[
            "-q",
            "--",
            "sh",
            "-c",
            "vpcd-wait -t 5 --all 1 || exit 10; \
             vpcd-wait -t 0.3 --all 2; echo all2=$?; \
             vpcd-wait -t 0.3 --absent \"$VPCD_READER\"; echo absent=$?; \
             vpcd-wait -t 0.3 'Virtual PCD 00 01'; echo slot1=$?",
        ],
        LIMIT,
    );
    assert!(r.status.success(), "{}\n{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("all2=1"), "{}", r.stdout);
    assert!(r.stdout.contains("absent=1") && r.stdout.contains("slot1=1"));
    assert!(
        r.stderr
            .contains("timed out after 0.3 s: \"Virtual PCD 00 00\": card present, \"Virtual PCD 00 01\": empty"),
        "{}",
        r.stderr
    );
    assert!(r.took < Duration::from_secs(10), "{:?}", r.took);
    let u = run_env(&["-q", "--", "vpcd-wait", "--bogus"], LIMIT);
    assert_eq!(u.status.code(), Some(2), "{}", u.stderr);
}

/// Live removal, insertion and reset of the built-in card inside an environment, by
/// control socket and by signal; each change is visible to the next command.
#[test]
fn card_removed_and_inserted_live_in_an_environment() {
    let script = "set -eu
        ctl() { vpcd-vicc ctl \"$VPCD_CARD_CONTROL\" \"$@\"; }
        ctl status
        ctl remove
        vpcd-wait -t 2 --absent \"$VPCD_READER\"
        if opensc-tool -r \"$VPCD_READER\" -a 2>/dev/null; then exit 20; fi
        ctl insert
        vpcd-wait -t 2 \"$VPCD_READER\"
        opensc-tool -r \"$VPCD_READER\" -a
        kill -USR1 \"$VPCD_CARD_PID\"
        vpcd-wait -t 2 --absent \"$VPCD_READER\"
        kill -USR2 \"$VPCD_CARD_PID\"
        vpcd-wait -t 2 \"$VPCD_READER\"
        ctl reset
        vpcd-wait -t 2 \"$VPCD_READER\"
        opensc-tool -r \"$VPCD_READER\" -a
        echo done";
    let r = run_env(&["-q", "--", "sh", "-c", script], LIMIT);
    assert!(r.status.success(), "{}\n{}", r.stdout, r.stderr);
    assert!(r.stdout.starts_with("inserted\nremoved\n"), "{}", r.stdout);
    assert!(r.stdout.ends_with("done\n"), "{}", r.stdout);
}

/// vpcd-vicc's live removal against a pcscd of the harness: pcscd reports each
/// change at once (well under its 400 ms polling), and a reset is a removal
/// followed by an insertion.
#[test]
fn vicc_control_reports_each_change_at_once() {
    let port = free_ports(1);
    let pcscd = Pcscd::start(&[Entry::device(
        "Ctl",
        &format!("/dev/null:{port}/slots=1/listen=127.0.0.1"),
    )]);
    let reader = reader_name("Ctl", 0, 0);
    let ctl_path = pcscd.dir().join("card.ctl");
    let mut vicc = Process::spawn(
        Command::new(tool("vpcd-vicc"))
            .args([
                "-l",
                "-H",
                "127.0.0.1",
                "-P",
                &port.to_string(),
                "--control",
            ])
            .arg(&ctl_path),
        pcscd.dir().join("vicc.log"),
    );
    let ctx = pcscd.context();
    wait_card(&reader, true, Duration::from_secs(10));
    let ctl = |cmd: &str| {
        let out = Command::new(tool("vpcd-vicc"))
            .arg("ctl")
            .arg(&ctl_path)
            .arg(cmd)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let mut worst = Duration::ZERO;
    for _ in 0..5 {
        assert_eq!(ctl("remove"), "removed\n");
        worst = worst.max(wait_card(&reader, false, Duration::from_secs(2)));
        assert_eq!(ctl("status"), "removed\n");
        assert_eq!(ctl("insert"), "inserted\n");
        worst = worst.max(wait_card(&reader, true, Duration::from_secs(2)));
        let card = connect(&ctx, &reader);
        assert_eq!(
            transmit(&card, &[0x80, 0xEE, 0, 0, 1, 0x42]).unwrap(),
            [0x42, 0x90, 0x00]
        );
    }
    assert!(
        worst < Duration::from_millis(200),
        "slowest change seen after {worst:?}"
    );
    // Signals: USR1 removes, USR2 inserts.
    signal(vicc.child.id(), 10);
    wait_card(&reader, false, Duration::from_secs(2));
    signal(vicc.child.id(), 12);
    wait_card(&reader, true, Duration::from_secs(2));
    // Reset: the reader sees a removal and an insertion (two more events).
    let mut states = [pcsc::ReaderState::new(
        std::ffi::CString::new(reader.clone()).unwrap(),
        pcsc::State::UNAWARE,
    )];
    ctx.get_status_change(Duration::from_secs(1), &mut states)
        .unwrap();
    let before = states[0].event_count();
    assert_eq!(ctl("reset"), "inserted\n");
    wait_card(&reader, true, Duration::from_secs(2));
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        states[0].sync_current_state();
        ctx.get_status_change(Duration::from_millis(200), &mut states)
            .or_else(|e| {
                if e == pcsc::Error::Timeout {
                    Ok(())
                } else {
                    Err(e)
                }
            })
            .unwrap();
        if states[0].event_count() >= before + 2 || Instant::now() > deadline {
            break;
        }
    }
    assert!(
        states[0].event_count() >= before + 2,
        "{} -> {}",
        before,
        states[0].event_count()
    );
    assert!(ctl_path.exists());
    let _ = vicc.child.kill();
    let _ = vicc.child.wait();
    assert!(vicc.output().contains("card removed"), "{}", vicc.output());
}

fn processes_with(marker: &str) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| c.starts_with(b"sleep\0") && String::from_utf8_lossy(&c).contains(marker))
                .unwrap_or(false)
        })
        .collect()
}

/// SIGTERM and SIGINT to vpcd-run end the command, pcscd, the card and whatever the
/// command left behind; the exit status says which signal.
#[test]
fn signals_end_the_whole_environment() {
    for (sig, code) in [(15, 143), (2, 130)] {
        let dir = temp_dir("sig");
        let ready = dir.path().join("ready");
        let marker = format!("{}.{}{}", 900 + sig, std::process::id(), sig);
        let script = format!(
            "sleep {marker} & echo up > {}; exec sleep {marker}",
            ready.display()
        );
        let start = Instant::now();
        let child = spawn_logged(
            &mut vpcd_run(&["--", "sh", "-c", &script]),
            dir.path(),
            "run",
        );
        let guard = KillOnDrop(child.id());
        // Both sleeps started (the background one may still be a shell for a moment).
        while !ready.exists() || processes_with(&marker).len() < 2 {
            assert!(start.elapsed() < LIMIT, "environment did not start");
            std::thread::sleep(Duration::from_millis(10));
        }
        signal(child.id(), sig);
        let r = finish(
            child,
            dir.path(),
            "run",
            Instant::now(),
            Duration::from_secs(10),
        );
        assert_eq!(r.status.code(), Some(code), "{}", r.stderr);
        assert!(r.took < Duration::from_secs(5), "{:?}", r.took);
        assert_eq!(processes_with(&marker), Vec::<u32>::new());
        std::mem::forget(guard);
    }
}

/// Kills a vpcd-run (by pid) if a test fails before it ended: its environment
/// follows (the environment's pid 1 gets SIGTERM when its parent dies).
struct KillOnDrop(u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        signal(self.0, 9);
    }
}

/// SIGKILL to vpcd-run itself still ends its environment.
#[test]
fn environment_ends_when_vpcd_run_is_killed() {
    let dir = temp_dir("kill");
    let ready = dir.path().join("ready");
    let marker = format!("977.{}", std::process::id());
    let script = format!("echo up > {}; exec sleep {marker}", ready.display());
    let start = Instant::now();
    let child = spawn_logged(
        &mut vpcd_run(&["--", "sh", "-c", &script]),
        dir.path(),
        "run",
    );
    let _guard = KillOnDrop(child.id());
    while !ready.exists() || processes_with(&marker).is_empty() {
        assert!(start.elapsed() < LIMIT, "environment did not start");
        std::thread::sleep(Duration::from_millis(10));
    }
    let pcscds_before = processes_named("pcscd");
    signal(child.id(), 9);
    let r = finish(
        child,
        dir.path(),
        "run",
        Instant::now(),
        Duration::from_secs(10),
    );
    assert_eq!(r.status.code(), None);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !processes_with(&marker).is_empty() {
        assert!(
            Instant::now() < deadline,
            "the environment outlived vpcd-run"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    // Its pcscd went too (others' may have come and gone meanwhile).
    let deadline = Instant::now() + Duration::from_secs(5);
    while processes_named("pcscd").len() >= pcscds_before.len()
        && pcscds_before
            .iter()
            .all(|p| processes_named("pcscd").contains(p))
    {
        assert!(Instant::now() < deadline, "its pcscd outlived vpcd-run");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn processes_named(name: &str) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .map(|c| c.trim() == name)
                .unwrap_or(false)
        })
        .collect()
}

/// Setup failures: exit status 125 and a message (with pcscd's log when pcscd ran).
#[test]
fn setup_failures_are_explained() {
    let r = run_env(&["--pcscd", "/bin/false", "--", "true"], LIMIT);
    assert_eq!(r.status.code(), Some(125), "{}", r.stderr);
    assert!(r.stderr.contains("pcscd exited early"), "{}", r.stderr);
    let r = run_env(&["--vicc", "/nonexistent/vpcd-vicc", "--", "true"], LIMIT);
    assert_eq!(r.status.code(), Some(125));
    assert!(
        r.stderr
            .contains("--vicc /nonexistent/vpcd-vicc does not exist"),
        "{}",
        r.stderr
    );
    let r = run_env(&["--", "/nonexistent/command"], LIMIT);
    assert_eq!(r.status.code(), Some(125));
    assert!(
        r.stderr.contains("cannot run /nonexistent/command"),
        "{}",
        r.stderr
    );
}

/// As an unprivileged user (nobody), through a user namespace, when the kernel
/// allows it; otherwise the message says what to change.
#[test]
fn works_without_root_through_a_user_namespace() {
    if !is_root() {
        eprintln!("skipped: needs root to switch to nobody");
        return;
    }
    let dir = temp_dir("nobody");
    let start = Instant::now();
    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(tool("vpcd-run"))
        .arg("--driver")
        .arg(driver_path())
        .args([
            "--",
            "sh",
            "-c",
            "id -u; opensc-tool -r \"$VPCD_READER\" -a",
        ])
        .env("PATH", path_with_tools())
        .env("HOME", "/")
        .current_dir("/");
    let child = spawn_logged(&mut cmd, dir.path(), "run");
    let r = finish(child, dir.path(), "run", start, LIMIT);
    if r.status.code() == Some(125) && r.stderr.contains("user namespace") {
        assert!(
            r.stderr.contains("user.max_user_namespaces"),
            "{}",
            r.stderr
        );
        eprintln!("no unprivileged user namespaces here: {}", r.stderr);
        return;
    }
    assert!(r.status.success(), "{}\n{}", r.stdout, r.stderr);
    assert!(r.stdout.starts_with("0\n3b:8a"), "{}", r.stdout);
}
