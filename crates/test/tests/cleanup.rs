//! Nothing outlives the test process: a process (this test binary again, running
//! `holder`) leases a slot with the built-in card, then panics or is killed with
//! SIGKILL; its pcscd, its card process, its watchdog and its directory must go.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use vpcd_test::Slot;

const ROLE: &str = "VPCD_TEST_HOLDER";

/// The child's part: hold a slot with a card, say where, then end as told.
#[test]
#[ignore = "the child process of the tests below, which run it with --ignored"]
fn holder() {
    let role = std::env::var(ROLE).expect("run by the tests below");
    let mut slot = Slot::lease();
    slot.insert_builtin().unwrap();
    println!("HOLDING {}", slot.socket().parent().unwrap().display());
    match role.as_str() {
        "panic" => {
            // Once the parent has seen the environment running.
            std::io::stdin().read_line(&mut String::new()).unwrap();
            panic!("the test fails while it holds the slot")
        }
        _ => loop {
            std::thread::park();
        },
    }
}

/// Processes whose command line names `dir`.
fn processes_of(dir: &Path) -> Vec<(u32, String)> {
    let needle = dir.to_string_lossy().into_owned();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let cmd = std::fs::read(e.path().join("cmdline")).ok()?;
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            cmd.contains(&needle).then_some((pid, cmd))
        })
        .collect()
}

/// Starts the holder, returns it and its environment's directory once it holds.
fn start_holder(role: &str) -> (std::process::Child, PathBuf) {
    use std::os::unix::process::CommandExt;
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "holder",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        // A group of its own, as a terminal gives a command it runs.
        .process_group(0)
        .env(ROLE, role)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = BufReader::new(child.stdout.take().unwrap());
    let dir = out
        .lines()
        .map_while(Result::ok)
        // libtest has written "test holder ... " on the line before.
        .find_map(|l| Some(PathBuf::from(l.split_once("HOLDING ")?.1)))
        .expect("the holder says where its environment is");
    (child, dir)
}

/// Waits until nothing of the environment in `dir` is left.
fn assert_all_gone(dir: &Path) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = processes_of(dir);
        if left.is_empty() && !dir.exists() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "left behind: {left:?}, directory there: {}",
            dir.exists()
        );
        // Nothing to wait on for other processes' ends: look again shortly.
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn check(role: &str) {
    let (mut child, dir) = start_holder(role);
    let running = processes_of(&dir);
    let names: Vec<&str> = running.iter().map(|(_, c)| c.as_str()).collect();
    assert!(names.iter().any(|c| c.contains("pcscd")), "{names:?}");
    assert!(names.iter().any(|c| c.contains("vpcd-vicc")), "{names:?}");
    assert!(dir.join("pcscd.comm").exists());
    if role == "kill" {
        child.kill().unwrap(); // SIGKILL: no destructor, no atexit
    } else if role == "ctrl-c" {
        // Ctrl-C: SIGINT to the whole foreground process group.
        let group = format!("-{}", child.id());
        let status = Command::new("kill").args(["-INT", "--", &group]).status();
        assert!(status.unwrap().success());
    } else {
        writeln!(child.stdin.take().unwrap(), "go").unwrap();
    }
    let status = child.wait().unwrap();
    assert!(!status.success(), "{status}");
    assert_all_gone(&dir);
}

#[test]
fn a_killed_test_process_leaves_nothing() {
    check("kill");
}

#[test]
fn ctrl_c_leaves_nothing() {
    check("ctrl-c");
}

#[test]
fn a_panicking_test_leaves_nothing() {
    check("panic");
}
