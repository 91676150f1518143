//! Child processes of a test: run to completion, or killed on drop; the reference
//! Python vicc.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Runs a command, returning (success, stdout + stderr).
pub fn run(cmd: &mut Command) -> (bool, String) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text += &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

/// How a command started by [`spawn_logged`] ended, and what it printed.
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    /// From the `start` given to [`finish`] to its exit.
    pub took: Duration,
}

/// Spawns `cmd` with its output in `TAG.out` and `TAG.err` of `dir`.
pub fn spawn_logged(cmd: &mut Command, dir: &Path, tag: &str) -> Child {
    let out = std::fs::File::create(dir.join(format!("{tag}.out"))).unwrap();
    let err = std::fs::File::create(dir.join(format!("{tag}.err"))).unwrap();
    cmd.stdout(out)
        .stderr(err)
        .spawn()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"))
}

/// Waits for a child started by [`spawn_logged`]. One that is still running `limit`
/// after `start` gets SIGTERM (so that vpcd-run can end its environment), SIGKILL 5 s
/// later, and the test fails with what it wrote to stderr.
pub fn finish(
    mut child: Child,
    dir: &Path,
    tag: &str,
    start: Instant,
    limit: Duration,
) -> Finished {
    let read = |ext: &str| std::fs::read_to_string(dir.join(format!("{tag}.{ext}")));
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > limit {
            crate::signal(child.id(), libc::SIGTERM);
            let grace = Instant::now() + Duration::from_secs(5);
            while child.try_wait().unwrap().is_none() && Instant::now() < grace {
                std::thread::sleep(Duration::from_millis(5));
            }
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{tag} still running after {limit:?}:\n{}",
                read("err").unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    Finished {
        status,
        stdout: read("out").unwrap(),
        stderr: read("err").unwrap(),
        took: start.elapsed(),
    }
}

/// A process killed (by pid) and reaped on drop.
pub struct Process {
    pub child: Child,
    pub log: PathBuf,
}

impl Process {
    pub fn spawn(cmd: &mut Command, log: PathBuf) -> Process {
        let out = std::fs::File::create(&log).unwrap();
        let err = out.try_clone().unwrap();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
        Process { child, log }
    }

    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Its exit status, waited for up to `limit`; fails the test with its output if
    /// it still runs then.
    pub fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "still running after {limit:?}:\n{}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The reference Python vicc (Debian's vsmartcard-vpicc). Debian 12 installs its
/// modules off the path, and it wants PyCryptodome as `Crypto`, which Debian ships as
/// `Cryptodome`: a directory with that alias fixes both.
pub fn python_vicc(dir: &Path, args: &[&str]) -> Process {
    let shim = dir.join("pyshim");
    std::fs::create_dir_all(&shim).unwrap();
    let alias = shim.join("Crypto");
    if !alias.exists() {
        std::os::unix::fs::symlink("/usr/lib/python3/dist-packages/Cryptodome", &alias).unwrap();
    }
    let mut cmd = Command::new("/usr/bin/python3");
    cmd.arg("/usr/bin/vicc").args(args).env(
        "PYTHONPATH",
        format!(
            "{}:/usr/lib/python3/site-packages/virtualsmartcard",
            shim.display()
        ),
    );
    Process::spawn(
        &mut cmd,
        dir.join(format!("vicc-{}.log", args.join("_").replace('/', "_"))),
    )
}
