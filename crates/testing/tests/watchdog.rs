//! The harness's watchdog: a test that hangs with its private pcscd fails with the
//! evidence (both sides' threads, pcscd's log) instead of being ended by nextest's
//! timeout with only its name, and leaves no pcscd behind.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use vpcd_testing::{free_ports, Entry, Pcscd};

/// Run only by the test below, in a process of its own: it hangs.
#[test]
#[ignore = "hangs on purpose: run by a_hang_is_reported_with_both_sides_and_ended"]
fn hangs_with_its_pcscd() {
    let port = free_ports(1);
    let pcscd = Pcscd::start(&[Entry::device(
        "Hang",
        &format!("/dev/null:{port}/slots=1/listen=127.0.0.1"),
    )]);
    println!("pcscd pid {}", pcscd.pid());
    std::thread::sleep(Duration::from_secs(600));
}

#[test]
fn a_hang_is_reported_with_both_sides_and_ended() {
    if std::env::var_os("VPCD_VALGRIND").is_some_and(|v| v == "1") {
        eprintln!("skipped: the watchdog is off under valgrind");
        return;
    }
    let start = Instant::now();
    // The aborted child cannot remove its pcscd's directory (nor gdb its files): they
    // are made in a directory of this test's, removed when it ends.
    let tmp = tempfile::tempdir().unwrap();
    // A sandboxed pcscd (user pcscd) must reach its directory in it.
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    // No core file from the abort (ulimit -c 0).
    let child = Command::new("sh")
        .args(["-c", "ulimit -c 0; exec \"$0\" \"$@\""])
        .arg(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "hangs_with_its_pcscd",
            "--nocapture",
        ])
        .env("VPCD_TEST_WATCHDOG", "1")
        .env("TMPDIR", tmp.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    // Bounded: if the watchdog failed, the hanging test must not outlive this one.
    let killer = std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .map_or(true, |s| s.contains(") Z "))
            {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        vpcd_testing::signal(pid, libc::SIGKILL);
        true
    });
    let out = child.wait_with_output().unwrap();
    assert!(!killer.join().unwrap(), "the watchdog did not end the test");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.signal(), Some(libc::SIGABRT), "{stderr}");
    assert!(start.elapsed() < Duration::from_secs(60));
    for expected in [
        "==== watchdog: hangs_with_its_pcscd still runs after 1s; pcscd (pid",
        "==== the test process (pid",
        "==== pcscd log:",
        "ifdvpcd: IFDHCreateChannelByName",
        "wchan",
    ] {
        assert!(stderr.contains(expected), "no {expected:?} in:\n{stderr}");
    }
    let pcscd: u32 = stdout
        .lines()
        .find_map(|l| l.strip_prefix("pcscd pid "))
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or_else(|| panic!("no pcscd pid in {stdout}"));
    // Killed: gone, or a zombie until its reaper collects it.
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::read_to_string(format!("/proc/{pcscd}/stat")).is_ok_and(|s| !s.contains(") Z "))
    {
        assert!(Instant::now() < deadline, "pcscd {pcscd} still runs");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Its pcscd's directory was made in ours, so it goes with it.
    let made: Vec<String> = std::fs::read_dir(tmp.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        made.iter().any(|n| n.starts_with("vpcd-pcscd-")),
        "{made:?}"
    );
}
