//! `vpcd-config --check` against real situations: no pcscd, a pcscd whose port another
//! program holds, and a pcscd with everything in order. Each test prints the check's
//! output (`cargo nextest run --test check --no-capture` shows it).

use std::process::Command;
use std::time::Duration;

use vpcd_testing::*;

/// Runs `vpcd-config --check ARGS` with this test's pcscd socket (if any) and no
/// systemd units; returns (exit status, stdout).
fn check(args: &[&str], socket: &std::path::Path, units: &std::path::Path) -> (i32, String) {
    let out = Command::new(build_dir().join("vpcd-config"))
        .arg("--check")
        .args(args)
        .env("PCSCLITE_CSOCK_NAME", socket)
        .env("SYSTEMD_UNIT_PATH", units)
        .output()
        .expect("run vpcd-config --check");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("$ vpcd-config --check {}\n{stdout}{stderr}", args.join(" "));
    assert!(stderr.is_empty(), "{stderr}");
    (out.status.code().unwrap_or(-1), stdout)
}

fn line<'a>(out: &'a str, start: &str, contains: &str) -> &'a str {
    out.lines()
        .find(|l| l.starts_with(start) && l.contains(contains))
        .unwrap_or_else(|| panic!("no line {start}...{contains}...:\n{out}"))
}

#[test]
fn no_pcscd_running() {
    let dir = temp_dir("check-none");
    let port = free_ports(2);
    let conf = dir.path().join("reader.conf");
    std::fs::write(
        &conf,
        Entry::device("Virtual PCD", &format!("/dev/null:{port}/listen=127.0.0.1")).render(),
    )
    .unwrap();
    let socket = dir.path().join("run/pcscd.comm");
    let (code, out) = check(&["--config", conf.to_str().unwrap()], &socket, dir.path());
    assert_eq!(code, 1, "{out}");
    line(
        &out,
        "error: pcscd is not running: no socket",
        socket.to_str().unwrap(),
    );
    line(&out, "ok: 1 vpcd reader in", "(given)");
    line(
        &out,
        &format!("error: port {port} (\"Virtual PCD\", slot 0): nothing listens"),
        "pcscd is not running",
    );
    line(
        &out,
        &format!("error: port {} ", port + 1),
        "nothing listens",
    );
}

#[test]
fn a_port_held_by_another_program() {
    let port = free_ports(2);
    let dir = temp_dir("check-held");
    // A program that takes slot 0's port before pcscd starts.
    let holder = Process::spawn(
        Command::new("python3").args([
            "-c",
            &format!(
                "import socket, time\ns = socket.socket()\ns.bind(('127.0.0.1', {port}))\n\
                 s.listen()\nprint('listening', flush=True)\ntime.sleep(60)"
            ),
        ]),
        dir.path().join("holder.log"),
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !holder.output().contains("listening") {
        assert!(std::time::Instant::now() < deadline, "{}", holder.output());
        std::thread::sleep(Duration::from_millis(20));
    }
    let pcscd = Pcscd::start(&[Entry::device(
        "Virtual PCD",
        &format!("/dev/null:{port}/listen=127.0.0.1"),
    )]);
    assert!(pcscd.wait_log("cannot listen on", Duration::from_secs(5)));
    // pcscd has given up on the reader and unloaded the driver once it says it is
    // ready (it logs that after trying every reader).
    assert!(pcscd.wait_log("daemon ready", Duration::from_secs(5)));
    // No --config: the check reads the one the running pcscd was started with.
    let (code, out) = check(&[], &pcscd.socket, dir.path());
    assert_eq!(code, 1, "{out}");
    line(
        &out,
        "ok: pcscd ",
        &format!("is running (pid {}", pcscd.pid()),
    );
    let held = line(
        &out,
        &format!(
            "error: port {port} (\"Virtual PCD\", slot 0) is held by python3 (pid {}",
            holder.child.id()
        ),
        "stop it, or give this reader another port (DEVICENAME /dev/null:PORT in ",
    );
    assert!(held.contains("reader.conf line 1)"), "{held}");
    // The reader did not start: slot 1 is closed too, and pcscd unloaded the driver.
    line(
        &out,
        &format!(
            "error: port {} (\"Virtual PCD\", slot 1): nothing listens",
            port + 1
        ),
        &format!("because port {port} is held"),
    );
    line(&out, "error: pcscd (pid ", "another program holds its port");
}

#[test]
fn everything_in_order() {
    let port = free_ports(2);
    let dir = temp_dir("check-fine");
    let pcscd = Pcscd::start(&[Entry::device(
        "Virtual PCD",
        &format!("/dev/null:{port}/listen=127.0.0.1"),
    )]);
    pcscd.wait_readers(&[
        reader_name("Virtual PCD", 0, 0),
        reader_name("Virtual PCD", 0, 1),
    ]);
    let (code, out) = check(&[], &pcscd.socket, dir.path());
    assert_eq!(code, 0, "{out}");
    assert!(!out.contains("error:"), "{out}");
    let pid = pcscd.pid();
    line(
        &out,
        "ok: pcscd ",
        &format!("is running (pid {pid}, socket {})", pcscd.socket.display()),
    );
    line(&out, "ok: pcscd ", "has the serial feature");
    line(
        &out,
        &format!("ok: pcscd (pid {pid}) runs without --auto-exit"),
        "",
    );
    line(&out, "ok: 1 vpcd reader in ", "(pcscd's --config)");
    line(
        &out,
        &format!("ok: pcscd (pid {pid}) has loaded "),
        "(this driver, vpcd-rs)",
    );
    for slot in 0..2 {
        line(
            &out,
            &format!(
                "ok: port {} (\"Virtual PCD\", slot {slot}) listens on 127.0.0.1 (pcscd pid {pid})",
                port + slot
            ),
            &format!(
                "a vicc on this machine reaches it at 127.0.0.1:{}",
                port + slot
            ),
        );
    }
}
