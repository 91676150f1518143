//! pytest-vpcd, the pytest plugin in python/pytest-vpcd, run as its users run it:
//! pytest with four xdist workers over its own tests (each worker with its own
//! private pcscd), installed with pip (found through its `pytest11` entry point),
//! and killed mid-run (nothing left behind). Needs python3-pytest,
//! python3-pytest-xdist, python3-pyscard, vsmartcard-vpicc and a workspace build.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn plugin_dir() -> PathBuf {
    repo().join("python/pytest-vpcd")
}

/// target/<profile>, where the workspace build put vpcd-run, vpcd-vicc and the driver.
fn build_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent().unwrap().parent().unwrap().to_path_buf()
}

/// pytest with the built tools first in PATH, no bytecode left in the checkout.
fn pytest(python_path: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new("/usr/bin/python3");
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut paths = vec![build_dir()];
    paths.extend(std::env::split_paths(&path));
    cmd.args(["-m", "pytest", "-p", "no:cacheprovider"])
        .args(args)
        .env("PATH", std::env::join_paths(paths).unwrap())
        .env("PYTHONPATH", python_path)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env_remove("PCSCLITE_CSOCK_NAME")
        .current_dir(repo());
    cmd
}

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("vpcd-test-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn four_workers_four_environments() {
    let record = temp_dir("pytest-record");
    // xdist makes pytest's base temporary directory even when no test asks for one:
    // ours, not /tmp/pytest-of-USER.
    let base = temp_dir("pytest-base");
    let out = pytest(
        &plugin_dir().join("src"),
        &[
            "-p",
            "pytest_vpcd.plugin",
            "-n",
            "4",
            "-q",
            "python/pytest-vpcd/tests",
        ],
    )
    .arg(format!("--basetemp={}", base.display()))
    .env("VPCD_PYTEST_RECORD", &record)
    .output()
    .unwrap();
    let log = text(&out);
    assert!(out.status.success(), "{log}");
    assert!(log.contains("22 passed"), "{log}");
    // Which worker (pid) ran which test on which pcscd (socket).
    let lines: Vec<String> = std::fs::read_dir(&record)
        .unwrap()
        .flatten()
        .flat_map(|e| {
            std::fs::read_to_string(e.path())
                .unwrap()
                .lines()
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(lines.len(), 18, "{lines:?}"); // the tests that record
    let pairs: HashSet<(&str, &str)> = lines
        .iter()
        .map(|l| {
            let mut w = l.split(' ');
            (w.next().unwrap(), w.next().unwrap())
        })
        .collect();
    let workers: HashSet<&str> = pairs.iter().map(|p| p.0).collect();
    let sockets: HashSet<&str> = pairs.iter().map(|p| p.1).collect();
    assert_eq!(workers.len(), 4, "{pairs:?}");
    assert_eq!(sockets.len(), 4, "one pcscd per worker: {pairs:?}");
    assert_eq!(pairs.len(), 4, "a worker keeps its pcscd: {pairs:?}");
    for s in &sockets {
        assert!(!Path::new(s).parent().unwrap().exists(), "{s} left behind");
    }
    std::fs::remove_dir_all(&record).unwrap();
    std::fs::remove_dir_all(&base).unwrap();
}

#[test]
fn pip_installs_it_and_pytest_finds_it() {
    // Build from a copy: pip and setuptools write build/ and egg-info/ beside the source.
    let work = temp_dir("pip");
    let source = work.join("pytest-vpcd");
    let copied = Command::new("cp")
        .arg("-r")
        .arg(plugin_dir())
        .arg(&source)
        .status()
        .unwrap();
    assert!(copied.success());
    let target = work.join("site");
    let out = Command::new("/usr/bin/python3")
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-build-isolation",
            "--no-deps",
        ])
        .args(["--no-index", "--target"])
        .args([&target, &source])
        .env("PIP_ROOT_USER_ACTION", "ignore")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let entry_points =
        std::fs::read_to_string(target.join("pytest_vpcd-0.1.0.dist-info/entry_points.txt"))
            .unwrap();
    assert!(
        entry_points.contains("[pytest11]") && entry_points.contains("vpcd = pytest_vpcd.plugin"),
        "{entry_points}"
    );
    // No -p: pytest loads it through the entry point.
    let out = pytest(
        &target,
        &[
            "-q",
            "python/pytest-vpcd/tests",
            "-k",
            "two_slots or removal",
        ],
    )
    .output()
    .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("2 passed"), "{}", text(&out));
    std::fs::remove_dir_all(&work).unwrap();
}

#[test]
fn a_killed_pytest_leaves_nothing() {
    let work = temp_dir("pytest-kill");
    let test = work.join("test_hold.py");
    let said = work.join("dir");
    std::fs::write(
        &test,
        format!(
            "import time\n\
             def test_hold(vpcd_card):\n\
             \x20   open({said:?}, 'w').write(str(vpcd_card.environment.dir))\n\
             \x20   time.sleep(600)\n",
            said = said.display().to_string()
        ),
    )
    .unwrap();
    let mut child = pytest(
        &plugin_dir().join("src"),
        &["-p", "pytest_vpcd.plugin", "-q", "-s"],
    )
    .arg(&test)
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .spawn()
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    // The test writes the file once its card is in; nothing to wait on but the file.
    while !said.exists() || std::fs::read_to_string(&said).unwrap().is_empty() {
        assert!(Instant::now() < deadline, "the held test did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    let dir = PathBuf::from(std::fs::read_to_string(&said).unwrap());
    assert!(dir.join("pcscd.comm").exists());
    let of_dir = || -> Vec<String> {
        let needle = dir.to_string_lossy().into_owned();
        std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter_map(|e| {
                e.file_name().to_str()?.parse::<u32>().ok()?;
                let cmd = std::fs::read(e.path().join("cmdline")).ok()?;
                let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
                cmd.contains(&needle).then_some(cmd)
            })
            .collect()
    };
    let running = of_dir();
    assert!(running.iter().any(|c| c.contains("pcscd")), "{running:?}");
    assert!(
        running.iter().any(|c| c.contains("vpcd-vicc")),
        "{running:?}"
    );
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let left = of_dir();
        if left.is_empty() && !dir.exists() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "left behind: {left:?}, directory: {}",
            dir.exists()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    std::fs::remove_dir_all(&work).unwrap();
}

#[test]
fn an_environment_that_cannot_start_says_why() {
    let work = temp_dir("pytest-fail");
    std::fs::write(
        work.join("test_one.py"),
        "def test_one(vpcd_slot):\n    pass\n",
    )
    .unwrap();
    let fake = work.join("vpcd-run");
    std::fs::write(
        &fake,
        "#!/bin/sh\necho 'vpcd-run: pcscd not found (in PATH, /usr/sbin)' >&2\nexit 125\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    for (vpcd_run, words) in [
        (fake.to_str().unwrap(), "pcscd not found"),
        ("/nonexistent/vpcd-run", "cannot run /nonexistent/vpcd-run"),
    ] {
        let out = pytest(
            &plugin_dir().join("src"),
            &["-p", "pytest_vpcd.plugin", "-q", "--vpcd-run", vpcd_run],
        )
        .arg(work.join("test_one.py"))
        .output()
        .unwrap();
        let log = text(&out);
        assert!(!out.status.success(), "{log}");
        assert!(log.contains("1 error"), "{log}");
        assert!(log.contains("VpcdError") && log.contains(words), "{log}");
    }
    std::fs::remove_dir_all(&work).unwrap();
}
