//! vpcd-run where namespaces are refused: inside `scripts/container-sim` (Docker's
//! default capabilities and seccomp refusals: a faithful simulation of an unprivileged
//! `docker run`, since a real container cannot start on these machines), as root and
//! as an ordinary user made by useradd; the namespace-free mode chosen by itself or by
//! option; its errors; what it leaves (nothing) and what it never touches (a system
//! pcscd); the container recipes of docs/CONTAINERS.md.
//!
//! `VPCD_PCSCD` picks the pcscd (it must be built with libsystemd: Debian's, or
//! `scripts/pcsc-lite --systemd 2.5.1`). Every vpcd-run here ends its environment
//! itself; the tests wait with a deadline and kill by pid if one overstays.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use vpcd_testing::*;

const LIMIT: Duration = Duration::from_secs(60);

/// The pcscd under test, as an absolute path (the user's PATH may lack sbin).
fn pcscd() -> PathBuf {
    let p = PathBuf::from(pcscd_binary());
    if p.is_absolute() {
        return p;
    }
    ["/usr/sbin", "/usr/local/sbin", "/sbin", "/usr/bin"]
        .iter()
        .map(|d| Path::new(d).join(&p))
        .find(|p| p.is_file())
        .expect("pcscd")
}

/// What a container's process would run: `scripts/container-sim [--user U:G]`.
fn in_container(user: Option<(u32, u32)>, program: &Path) -> Command {
    let mut cmd = Command::new(repo_root().join("scripts/container-sim"));
    if let Some((uid, gid)) = user {
        cmd.arg("--user").arg(format!("{uid}:{gid}"));
    }
    cmd.arg(program);
    cmd
}

/// `vpcd-run --driver ... --pcscd ... ARGS`, in the container simulation or not.
fn vpcd_run(user: Option<(u32, u32)>, sim: bool, args: &[&str]) -> Command {
    vpcd_run_with(user, sim, &pcscd(), args)
}

fn vpcd_run_with(user: Option<(u32, u32)>, sim: bool, pcscd: &Path, args: &[&str]) -> Command {
    let mut cmd = if sim {
        in_container(user, &tool("vpcd-run"))
    } else if let Some((uid, gid)) = user {
        let mut c = Command::new("setpriv");
        c.arg(format!("--reuid={uid}"))
            .arg(format!("--regid={gid}"))
            .args(["--clear-groups", "--"])
            .arg(tool("vpcd-run"));
        c
    } else {
        Command::new(tool("vpcd-run"))
    };
    cmd.arg("--driver")
        .arg(driver_path())
        .arg("--pcscd")
        .arg(pcscd)
        .args(args)
        .env("PATH", path_with_tools())
        .env("HOME", "/")
        .current_dir("/")
        .stdin(Stdio::null());
    cmd
}

/// A directory everyone can read (for an ordinary user's cards and scripts).
fn open_dir(tag: &str) -> tempfile::TempDir {
    let d = temp_dir(tag);
    std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    d
}

fn run(cmd: &mut Command) -> Finished {
    let dir = temp_dir("run");
    let start = Instant::now();
    let child = spawn_logged(cmd, dir.path(), "run");
    finish(child, dir.path(), "run", start, LIMIT)
}

/// A user made by useradd for these tests (system user, no home, no login shell).
fn test_user() -> (u32, u32) {
    const NAME: &str = "vpcd-ci";
    let id = |flag: &str| -> Option<u32> {
        let out = Command::new("id").args([flag, NAME]).output().ok()?;
        String::from_utf8(out.stdout).ok()?.trim().parse().ok()
    };
    if id("-u").is_none() {
        // Two tests may race to create it: the loser's failure is fine if it exists.
        let _ = Command::new("useradd")
            .args([
                "--system",
                "--user-group",
                "--no-create-home",
                "--home-dir",
                "/",
                "--shell",
                "/usr/sbin/nologin",
                NAME,
            ])
            .status();
    }
    (id("-u").expect("useradd vpcd-ci"), id("-g").unwrap())
}

/// pcscd's directory, which an ordinary user's pcscd needs and cannot make: made
/// here (as root would once in an image) when missing. Left in place: removing it
/// could pull it from under another test's environment.
fn ensure_run_pcscd() {
    let _ = std::fs::create_dir("/run/pcscd");
    std::fs::set_permissions("/run/pcscd", std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// Eight environments at once in the container simulation, each reading its own
/// card's files: no cross-talk, same reader names everywhere, each its own socket and
/// port, the mode chosen by itself (auto), nothing left behind.
fn eight_in_parallel(user: Option<(u32, u32)>) {
    let dir = open_dir("parallel");
    let start = Instant::now();
    let mut children = vec![];
    for i in 0..8 {
        let fs = dir.path().join(format!("card{i}"));
        std::fs::create_dir_all(&fs).unwrap();
        std::fs::set_permissions(&fs, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::write(fs.join("2F00"), format!("env-{i}-dir")).unwrap();
        std::fs::write(fs.join("5001"), format!("env-{i}-data")).unwrap();
        let script = "set -e
            echo \"socket=$PCSCLITE_CSOCK_NAME port=$VPCD_PORT uid=$(id -u)\"
            opensc-tool -l
            opensc-tool -r \"$VPCD_READER\" -a
            opensc-tool -r \"$VPCD_READER\" -s '00 A4 00 0C 02 2F 00' -s '00 B0 00 00 00' \
                -s '00 A4 00 0C 02 50 01' -s '00 B0 00 00 00'
            for n in 1 2 3 4 5; do opensc-tool -r \"$VPCD_READER\" -s '00 84 00 00 08' >/dev/null; done
            grep CapEff /proc/self/status";
        let mut cmd = vpcd_run(
            user,
            true,
            &["--fs", fs.to_str().unwrap(), "--", "sh", "-c", script],
        );
        children.push((i, spawn_logged(&mut cmd, dir.path(), &format!("env{i}"))));
    }
    let hex = |s: &str| {
        s.bytes()
            .map(|b| format!("{b:02X}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let mut sockets = vec![];
    let mut ports = vec![];
    for (i, child) in children {
        let r = finish(child, dir.path(), &format!("env{i}"), start, LIMIT);
        assert!(r.status.success(), "env {i}: {}\n{}", r.stdout, r.stderr);
        assert!(r.stdout.contains("Virtual PCD 00 00") && r.stdout.contains("Virtual PCD 00 01"));
        assert!(!r.stdout.contains("Virtual PCD 01 00"), "{}", r.stdout);
        for j in 0..8 {
            let mine = r.stdout.contains(&hex(&format!("env-{j}-dir")))
                && r.stdout.contains(&hex(&format!("env-{j}-data")));
            assert_eq!(mine, i == j, "env {i} and card {j}:\n{}", r.stdout);
        }
        // Inside the simulation: no CAP_SYS_ADMIN (bit 21) even as root.
        let cap_eff = r
            .stdout
            .lines()
            .find_map(|l| l.strip_prefix("CapEff:"))
            .map(|v| u64::from_str_radix(v.trim(), 16).unwrap())
            .unwrap();
        assert_eq!(cap_eff & (1 << 21), 0, "{}", r.stdout);
        let line = r.stdout.lines().next().unwrap();
        let socket = line.split_whitespace().next().unwrap()["socket=".len()..].to_string();
        assert!(
            socket.ends_with("/pcscd.comm") && !socket.starts_with("/run/pcscd"),
            "{line}"
        );
        let uid = user.map_or(0, |u| u.0);
        assert!(line.ends_with(&format!("uid={uid}")), "{line}");
        assert!(!Path::new(&socket).exists(), "{socket} left behind");
        sockets.push(socket);
        ports.push(
            line.split("port=")
                .nth(1)
                .unwrap()
                .split(' ')
                .next()
                .unwrap()
                .to_string(),
        );
    }
    sockets.sort();
    sockets.dedup();
    ports.sort();
    ports.dedup();
    assert_eq!(
        (sockets.len(), ports.len()),
        (8, 8),
        "{sockets:?} {ports:?}"
    );
    eprintln!(
        "8 environments in parallel, container simulation: {:?}",
        start.elapsed()
    );
}

#[test]
fn eight_environments_in_parallel_in_a_container_as_root() {
    if !is_root() {
        eprintln!("skipped: the container simulation needs root");
        return;
    }
    eight_in_parallel(None);
}

#[test]
fn eight_environments_in_parallel_in_a_container_as_a_user() {
    if !is_root() {
        eprintln!("skipped: the container simulation needs root");
        return;
    }
    let user = test_user();
    ensure_run_pcscd();
    eight_in_parallel(Some(user));
}

/// Outside a container too: --no-namespaces as an ordinary user (setpriv), and the
/// namespace mode still chosen where it works (root here).
#[test]
fn chosen_by_option_or_by_itself() {
    if !is_root() {
        eprintln!("skipped: needs root to switch users");
        return;
    }
    let user = test_user();
    ensure_run_pcscd();
    let script = "echo $PCSCLITE_CSOCK_NAME $(id -u); opensc-tool -r \"$VPCD_READER\" -a";
    let r = run(&mut vpcd_run(
        Some(user),
        false,
        &["--no-namespaces", "--", "sh", "-c", script],
    ));
    assert!(r.status.success(), "{}\n{}", r.stdout, r.stderr);
    assert!(
        r.stdout.contains(&format!("/pcscd.comm {}\n3b:8a", user.0)),
        "{}",
        r.stdout
    );
    assert!(!r.stdout.starts_with("/run/pcscd"), "{}", r.stdout);
    let r = run(&mut vpcd_run(None, false, &["--", "sh", "-c", script]));
    assert!(r.status.success(), "{}\n{}", r.stdout, r.stderr);
    assert!(
        r.stdout.starts_with("/run/pcscd/pcscd.comm 0\n"),
        "{}",
        r.stdout
    );
    // Explicitly namespaces inside the container: refused, and the message says why.
    let r = run(&mut vpcd_run(
        None,
        true,
        &["--isolation", "namespaces", "--", "true"],
    ));
    assert_eq!(r.status.code(), Some(125), "{}", r.stderr);
    assert!(
        r.stderr.contains("cannot create a user namespace"),
        "{}",
        r.stderr
    );
    let r = run(&mut vpcd_run(
        None,
        false,
        &["--isolation", "bogus", "--", "true"],
    ));
    assert_eq!(r.status.code(), Some(2), "{}", r.stderr);
}

/// A system pcscd (here one in a private mount namespace, at the compiled-in
/// /run/pcscd/pcscd.comm, writing its pid file) is not touched by environments
/// started beside it: its pid file and socket stay, it keeps serving its own reader,
/// and the environments do not see that reader nor it theirs.
#[test]
fn a_system_pcscd_is_never_touched() {
    if !is_root() {
        eprintln!("skipped: needs root for the private /run of the stand-in system pcscd");
        return;
    }
    let dir = open_dir("system");
    let port = free_ports(1);
    let conf = dir.path().join("system.conf");
    std::fs::write(
        &conf,
        format!(
            "FRIENDLYNAME \"System Reader\"\nDEVICENAME /dev/null:{port}/listen=127.0.0.1\nLIBPATH {}\n",
            driver_path().display()
        ),
    )
    .unwrap();
    let envs = format!(
        "for i in 1 2 3; do {run} --driver {drv} --pcscd {pcscd} -- sh -c \
           'opensc-tool -l; opensc-tool -r \"$VPCD_READER\" -a' > {d}/env$i.out 2>&1 & done; wait",
        run = tool("vpcd-run").display(),
        drv = driver_path().display(),
        pcscd = pcscd().display(),
        d = dir.path().display(),
    );
    // In the namespace: /run of its own, the "system" pcscd started normally (it
    // binds /run/pcscd/pcscd.comm and writes /run/pcscd/pcscd.pid), then three
    // environments run in the container simulation (no namespaces), then the
    // system pcscd's state is shown.
    let script = format!(
        "set -e
         mount -t tmpfs tmpfs /run && mkdir /run/pcscd
         {pcscd} -f -c {conf} > {d}/system.log 2>&1 &
         sys=$!
         for n in $(seq 500); do [ -S /run/pcscd/pcscd.comm ] && [ -s /run/pcscd/pcscd.pid ] && break; sleep 0.01; done
         before=$(cat /run/pcscd/pcscd.pid)
         {sim} sh -c '{envs}'
         echo \"pid before=$before after=$(cat /run/pcscd/pcscd.pid) system=$sys\"
         ls /run/pcscd
         PCSCLITE_CSOCK_NAME=/run/pcscd/pcscd.comm opensc-tool -l
         kill $sys; wait $sys || true",
        pcscd = pcscd().display(),
        conf = conf.display(),
        d = dir.path().display(),
        sim = repo_root().join("scripts/container-sim").display(),
        envs = envs.replace('\'', "'\\''"),
    );
    let r = run(Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c", &script])
        .env("PATH", path_with_tools()));
    assert!(r.status.success(), "{}\n{}", r.stdout, r.stderr);
    let pids = r
        .stdout
        .lines()
        .find(|l| l.starts_with("pid before="))
        .unwrap();
    let f: Vec<&str> = pids.split(&['=', ' ']).collect();
    assert_eq!(f[2], f[4], "{pids}");
    assert_eq!(f[2], f[6], "{pids}");
    assert!(r.stdout.contains("pcscd.comm\npcscd.pid\n"), "{}", r.stdout);
    assert!(r.stdout.contains("System Reader 00 00"), "{}", r.stdout);
    assert!(!r.stdout.contains("Virtual PCD"), "{}", r.stdout);
    for i in 1..=3 {
        let out = std::fs::read_to_string(dir.path().join(format!("env{i}.out"))).unwrap();
        assert!(out.contains("3b:8a:80"), "env {i}: {out}");
        assert!(!out.contains("System Reader"), "env {i}: {out}");
    }
}

/// SIGTERM and SIGINT end the command, pcscd, the card and what the command left
/// behind (orphans, adopted by the subreaper); SIGKILL to vpcd-run still ends them
/// and removes the directory (the inner vpcd-run follows its parent).
#[test]
fn signals_end_everything_and_leave_nothing() {
    for (sig, code) in [(15, Some(143)), (2, Some(130)), (9, None)] {
        let dir = open_dir("sig");
        let ready = dir.path().join("ready");
        let marker = format!("{}.{}{}", 800 + sig, std::process::id(), sig);
        let script = format!(
            "(sleep {marker} &) ; echo $PCSCLITE_CSOCK_NAME > {}; exec sleep {marker}",
            ready.display()
        );
        let start = Instant::now();
        let child = spawn_logged(
            &mut vpcd_run(None, true, &["--", "sh", "-c", &script]),
            dir.path(),
            "run",
        );
        while !ready.exists() || processes_with(&marker).len() < 2 {
            assert!(start.elapsed() < LIMIT, "environment did not start");
            std::thread::sleep(Duration::from_millis(10));
        }
        let socket = std::fs::read_to_string(&ready).unwrap();
        let env_dir = Path::new(socket.trim()).parent().unwrap().to_path_buf();
        let pcscd = pcscd_of(&env_dir);
        assert!(pcscd.is_some(), "no pcscd for {}", env_dir.display());
        // The container simulation's process is vpcd-run itself (exec).
        signal(child.id(), sig);
        let r = finish(
            child,
            dir.path(),
            "run",
            Instant::now(),
            Duration::from_secs(10),
        );
        assert_eq!(r.status.code(), code, "{}", r.stderr);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !processes_with(&marker).is_empty()
            || env_dir.exists()
            || pcscd_of(&env_dir).is_some()
        {
            assert!(
                Instant::now() < deadline,
                "signal {sig}: left {:?} {} {:?}",
                processes_with(&marker),
                env_dir.exists(),
                pcscd_of(&env_dir)
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

fn cmdline(pid: u32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .unwrap_or_default()
}

fn all_pids() -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .collect()
}

fn processes_with(marker: &str) -> Vec<u32> {
    all_pids()
        .into_iter()
        .filter(|pid| {
            let c = cmdline(*pid);
            c.starts_with("sleep ") && c.contains(marker)
        })
        .collect()
}

/// The pcscd whose reader.conf is in `env_dir`.
fn pcscd_of(env_dir: &Path) -> Option<u32> {
    let conf = env_dir.join("reader.conf");
    let conf = conf.to_str().unwrap();
    all_pids().into_iter().find(|pid| {
        let c = cmdline(*pid);
        c.contains("pcscd") && c.contains(conf)
    })
}

/// Where even this mode cannot work: one line each, saying what is missing and how
/// to get it, exit status 125, no pcscd log (none ran).
#[test]
fn missing_pieces_are_one_line_each() {
    let one_line = |r: &Finished, want: &[&str]| {
        assert_eq!(r.status.code(), Some(125), "{}", r.stderr);
        assert_eq!(r.stderr.lines().count(), 1, "{}", r.stderr);
        for w in want {
            assert!(r.stderr.contains(w), "no {w:?} in: {}", r.stderr);
        }
    };
    // No pcscd binary.
    let r = run(Command::new(tool("vpcd-run"))
        .args([
            "--no-namespaces",
            "--pcscd",
            "/nonexistent/pcscd",
            "--driver",
        ])
        .arg(driver_path())
        .args(["--", "true"]));
    one_line(
        &r,
        &["/nonexistent/pcscd does not exist", "apt-get install pcscd"],
    );

    // A pcscd built without libsystemd: a real one where scripts/pcsc-lite built it,
    // else a stand-in that answers --version as such a build does.
    let fake = temp_dir("fake");
    let plain = Path::new("/var/cache/vpcd-pcsc-lite/2.5.1/build/pcscd");
    let no_systemd = if plain.is_file() {
        plain.to_path_buf()
    } else {
        let p = fake.path().join("pcscd");
        std::fs::write(
            &p,
            "#!/bin/sh\necho 'pcsc-lite version 2.5.1.'\necho 'Enabled features: serial Linux x86_64 ipcdir=/run/pcscd'\n",
        )
        .unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p
    };
    let r = run(Command::new(tool("vpcd-run"))
        .args(["--no-namespaces", "--pcscd"])
        .arg(&no_systemd)
        .arg("--driver")
        .arg(driver_path())
        .args(["--", "true"]));
    one_line(&r, &["built without libsystemd", "-Dlibsystemd=true"]);

    // Port range exhausted: two ports wanted, one of the two held.
    let base = free_ports(2);
    let _held = std::net::TcpListener::bind(("127.0.0.1", base + 1)).unwrap();
    let range = format!("{base}-{}", base + 1);
    let r = run(Command::new(tool("vpcd-run"))
        .args(["--no-namespaces", "--ports", &range, "--driver"])
        .arg(driver_path())
        .arg("--pcscd")
        .arg(pcscd())
        .args(["--", "true"]));
    one_line(
        &r,
        &[
            &format!("no 2 consecutive free TCP ports on 127.0.0.1 in {range}"),
            "wider port range",
        ],
    );

    // pcscd's directory missing for an ordinary user: a stand-in pcscd built for
    // one that does not exist (as an unprivileged user finds /run/pcscd missing).
    if is_root() {
        let user = test_user();
        let dir = open_dir("ipc");
        let p = dir.path().join("pcscd");
        std::fs::write(
            &p,
            "#!/bin/sh\necho 'pcsc-lite version 2.5.1.'\necho 'Enabled features: systemd serial ipcdir=/nonexistent/vpcd-run-test'\n",
        )
        .unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        let r = run(&mut vpcd_run_with(Some(user), true, &p, &["--", "true"]));
        one_line(
            &r,
            &[
                "/nonexistent/vpcd-run-test",
                "mkdir -m 0755",
                "RUN mkdir -p",
            ],
        );
    }
}

/// The recipes' image layout on this machine: `vpcd-run` (with the driver under
/// test), `vpcd-parallel` and `vpcd-example-suite` first in PATH, as the image has
/// them in /usr/local/bin.
fn image_path() -> (tempfile::TempDir, String) {
    let dir = open_dir("image-bin");
    let wrapper = dir.path().join("vpcd-run");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nexec {} --driver {} --pcscd {} \"$@\"\n",
            tool("vpcd-run").display(),
            driver_path().display(),
            pcscd().display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    for name in ["vpcd-parallel", "vpcd-example-suite"] {
        std::os::unix::fs::symlink(
            repo_root().join("packaging/container").join(name),
            dir.path().join(name),
        )
        .unwrap();
    }
    let path = format!("{}:{}", dir.path().display(), path_with_tools());
    (dir, path)
}

/// A YAML file as JSON (PyYAML, Debian's python3-yaml).
fn yaml(name: &str) -> serde_json::Value {
    let out = Command::new("python3")
        .args([
            "-c",
            "import sys, json, yaml; json.dump(yaml.safe_load(open(sys.argv[1])), sys.stdout)",
        ])
        .arg(repo_root().join("packaging/container").join(name))
        .output()
        .expect("python3 with yaml (python3-yaml)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Runs shell `lines` (a CI job's script) in the container simulation, one job per
/// entry of `jobs` (its extra variables), all at once; returns each job's output.
fn run_jobs(
    user: Option<(u32, u32)>,
    lines: &[String],
    jobs: Vec<Vec<(String, String)>>,
) -> Vec<String> {
    let (_bin, path) = image_path();
    let dir = open_dir("jobs");
    let start = Instant::now();
    let children: Vec<(usize, Child)> = jobs
        .into_iter()
        .enumerate()
        .map(|(i, vars)| {
            let mut cmd = in_container(user, Path::new("sh"));
            cmd.arg("-ec")
                .arg(lines.join("\n"))
                .envs(vars)
                .env("PATH", &path)
                .env("HOME", "/")
                .current_dir(repo_root())
                .stdin(Stdio::null());
            (i, spawn_logged(&mut cmd, dir.path(), &format!("job{i}")))
        })
        .collect();
    children
        .into_iter()
        .map(|(i, child)| {
            let r = finish(child, dir.path(), &format!("job{i}"), start, LIMIT);
            assert!(r.status.success(), "job {i}: {}\n{}", r.stdout, r.stderr);
            r.stdout
        })
        .collect()
}

fn strings(v: &serde_json::Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect()
}

/// The GitLab CI recipe: its jobs' scripts as the runner would run them (4 parallel
/// jobs with CI_NODE_INDEX, and the 8-in-one job), each job an unprivileged container.
#[test]
fn gitlab_recipe_runs_in_the_container_simulation() {
    if !is_root() {
        eprintln!("skipped: the container simulation needs root");
        return;
    }
    let ci = yaml("gitlab-ci.yml");
    let job = &ci["smartcard-suite"];
    assert_eq!(job["image"]["entrypoint"], serde_json::json!([""]));
    assert_eq!(job["image"]["name"], "$VPCD_IMAGE");
    let n = job["parallel"].as_u64().unwrap();
    let suite = job["variables"]["SUITE"].as_str().unwrap().to_string();
    let jobs = (1..=n)
        .map(|i| {
            vec![
                ("CI_NODE_INDEX".into(), i.to_string()),
                ("CI_NODE_TOTAL".into(), n.to_string()),
                ("SUITE".into(), suite.clone()),
            ]
        })
        .collect();
    let outs = run_jobs(None, &strings(&job["script"]), jobs);
    for (i, out) in outs.iter().enumerate() {
        assert!(out.contains(&format!("shard {}/{n}: ok", i + 1)), "{out}");
    }
    let job = &ci["smartcard-suite-8-in-one"];
    let suite = job["variables"]["SUITE"].as_str().unwrap().to_string();
    let out = &run_jobs(
        None,
        &strings(&job["script"]),
        vec![vec![("SUITE".into(), suite)]],
    )[0];
    for i in 1..=8 {
        assert!(out.contains(&format!("[{i}] shard {i}/8: ok")), "{out}");
    }
}

/// The GitHub Actions recipe: each matrix shard's `run` steps, and the 8-in-one job.
#[test]
fn github_recipe_runs_in_the_container_simulation() {
    if !is_root() {
        eprintln!("skipped: the container simulation needs root");
        return;
    }
    let wf = yaml("github-actions.yml");
    let job = &wf["jobs"]["shards"];
    assert!(job["container"]["image"].as_str().unwrap().contains("vpcd"));
    let shards: Vec<u64> = job["strategy"]["matrix"]["shard"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    let runs = |job: &serde_json::Value, shard: u64| -> Vec<String> {
        job["steps"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|s| s["run"].as_str())
            .map(|r| r.replace("${{ matrix.shard }}", &shard.to_string()))
            .collect()
    };
    let dir = open_dir("gh");
    let start = Instant::now();
    let (_bin, path) = image_path();
    let children: Vec<_> = shards
        .iter()
        .map(|&s| {
            let mut cmd = in_container(None, Path::new("sh"));
            cmd.arg("-ec")
                .arg(runs(job, s).join("\n"))
                .env("PATH", &path)
                .current_dir(repo_root())
                .stdin(Stdio::null());
            (s, spawn_logged(&mut cmd, dir.path(), &format!("shard{s}")))
        })
        .collect();
    for (s, child) in children {
        let r = finish(child, dir.path(), &format!("shard{s}"), start, LIMIT);
        assert!(r.status.success(), "shard {s}: {}\n{}", r.stdout, r.stderr);
        assert!(
            r.stdout
                .contains(&format!("shard {s}/{}: ok", shards.len())),
            "{}",
            r.stdout
        );
    }
    let out = &run_jobs(None, &runs(&wf["jobs"]["eight-in-one"], 0), vec![vec![]])[0];
    assert_eq!(out.matches(": ok").count(), 8, "{out}");
}

/// The Kubernetes Job (documentation: no cluster here): its pods' restrictions are
/// the unprivileged ones, and its command, run as its user in the container
/// simulation with each completion index, passes.
#[test]
fn kubernetes_job_runs_in_the_container_simulation() {
    if !is_root() {
        eprintln!("skipped: the container simulation needs root");
        return;
    }
    let job = yaml("k8s-job.yaml");
    assert_eq!(job["kind"], "Job");
    let spec = &job["spec"];
    assert_eq!(spec["completionMode"], "Indexed");
    let pod = &spec["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    let c = &pod["containers"][0];
    assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
    assert_eq!(
        c["securityContext"]["capabilities"]["drop"],
        serde_json::json!(["ALL"])
    );
    let uid = pod["securityContext"]["runAsUser"].as_u64().unwrap() as u32;
    let gid = pod["securityContext"]["runAsGroup"].as_u64().unwrap() as u32;
    let argv: Vec<String> = strings(&c["command"])
        .into_iter()
        .chain(strings(&c["args"]))
        .collect();
    // The pod's command as one shell line (the job runner below runs shell lines).
    let quoted: Vec<String> = argv
        .iter()
        .map(|a| format!("'{}'", a.replace('\'', "'\\''")))
        .collect();
    ensure_run_pcscd();
    let n = spec["completions"].as_u64().unwrap();
    assert_eq!(spec["parallelism"].as_u64(), Some(n));
    let jobs = (0..n)
        .map(|i| vec![("JOB_COMPLETION_INDEX".into(), i.to_string())])
        .collect();
    let outs = run_jobs(Some((uid, gid)), &[quoted.join(" ")], jobs);
    for (i, out) in outs.iter().enumerate() {
        assert!(out.contains(&format!("shard {}/{n}: ok", i + 1)), "{out}");
    }
}

/// The Containerfile: what it copies exists (the build's outputs, the scripts), the
/// packages it installs exist in Debian 12, it makes /run/pcscd for non-root users,
/// and its ENTRYPOINT + CMD pass in the container simulation, as root and as a user.
#[test]
fn containerfile_entrypoint_runs_in_the_container_simulation() {
    let text =
        std::fs::read_to_string(repo_root().join("packaging/container/Containerfile")).unwrap();
    // Instructions, with continuation lines joined.
    let joined = text
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n")
        .replace("\\\n", " ");
    let instr: Vec<(&str, &str)> = joined
        .lines()
        .filter_map(|l| l.trim().split_once(' '))
        .collect();
    let json = |key: &str| -> Vec<String> {
        let (_, v) = instr.iter().rev().find(|(k, _)| *k == key).unwrap();
        serde_json::from_str(v).unwrap()
    };
    assert_eq!(json("ENTRYPOINT"), ["vpcd-run"]);
    let cmd = json("CMD");
    let mut packages = vec![];
    for (k, v) in &instr {
        match *k {
            "COPY" if v.starts_with("--from=build") => {
                let parts: Vec<&str> = v.split_whitespace().skip(1).collect();
                for src in &parts[..parts.len() - 1] {
                    let name = Path::new(src).file_name().unwrap();
                    let built = if name == "libifdvpcd.so" {
                        driver_path()
                    } else {
                        build_dir().join(name)
                    };
                    assert!(built.is_file(), "{src}: no {}", built.display());
                }
            }
            "COPY" if !v.starts_with(". ") => {
                let parts: Vec<&str> = v.split_whitespace().collect();
                for src in &parts[..parts.len() - 1] {
                    assert!(repo_root().join(src).is_file(), "COPY {src}");
                }
            }
            "RUN" if v.contains("apt-get install") => {
                let after = v.split("--no-install-recommends").nth(1).unwrap();
                packages.extend(
                    after
                        .split("&&")
                        .next()
                        .unwrap()
                        .split_whitespace()
                        .map(str::to_string),
                );
            }
            _ => {}
        }
    }
    assert!(packages.contains(&"pcscd".to_string()), "{packages:?}");
    // One apt-cache call for all (each call reads the whole package lists).
    let ok = Command::new("apt-cache")
        .arg("show")
        .args(&packages)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success());
    // Without apt (another distribution) there is nothing to ask.
    if let Ok(ok) = ok {
        assert!(ok, "not all Debian packages: {packages:?}");
    }
    assert!(joined.contains("mkdir -p /run/pcscd"));
    if !is_root() {
        eprintln!("skipped running the entrypoint: the container simulation needs root");
        return;
    }
    ensure_run_pcscd();
    let line: Vec<String> = json("ENTRYPOINT")
        .into_iter()
        .chain(cmd)
        .map(|a| format!("'{a}'"))
        .collect();
    for user in [None, Some(test_user())] {
        let out = &run_jobs(user, &[line.join(" ")], vec![vec![]])[0];
        assert!(
            out.contains("Virtual PCD 00 00") && out.contains("Virtual PCD 00 01"),
            "{out}"
        );
    }
}

/// Ubuntu 23.10+'s AppArmor rule as a program sees it (`container-sim
/// --userns-only`): an ordinary user gets a user namespace, but no mount, network or
/// PID namespace in it. vpcd-run then stays in the user namespace it made and runs
/// without the others: the card is usable, the socket is the private one.
#[test]
fn user_namespace_without_the_others_falls_back() {
    if !is_root() {
        eprintln!("skipped: the simulation needs root");
        return;
    }
    let (uid, gid) = test_user();
    ensure_run_pcscd();
    let mut cmd = Command::new(repo_root().join("scripts/container-sim"));
    cmd.args(["--userns-only", "--user", &format!("{uid}:{gid}")])
        .arg(tool("vpcd-run"))
        .arg("--driver")
        .arg(driver_path())
        .arg("--pcscd")
        .arg(pcscd())
        .args([
            "--",
            "sh",
            "-c",
            "echo $PCSCLITE_CSOCK_NAME; opensc-tool -r \"$VPCD_READER\" -a",
        ])
        .env("PATH", path_with_tools())
        .env("HOME", "/")
        .current_dir("/")
        .stdin(Stdio::null());
    let r = run(&mut cmd);
    assert!(r.status.success(), "{}\n{}", r.stdout, r.stderr);
    assert!(r.stdout.starts_with("/tmp/vpcd-env-"), "{}", r.stdout);
    assert!(r.stdout.contains("3b:8a:80"), "{}", r.stdout);
    // The same user in Docker's simulation makes no user namespace at all.
    let r = run(&mut vpcd_run(Some((uid, gid)), true, &["-d", "--", "true"]));
    assert!(r.status.success(), "{}", r.stderr);
    assert!(
        r.stderr
            .contains("no namespaces (cannot create a user namespace"),
        "{}",
        r.stderr
    );
}

/// The environments.rs recipes without namespaces: an external vicc on $VPCD_PORT
/// (the Python vicc) with vpcd-wait, and the built-in card removed and inserted live
/// through $VPCD_CARD_CONTROL and by signal.
#[test]
fn recipes_of_the_namespace_mode_work_without() {
    let shim = temp_dir("pyshim");
    std::os::unix::fs::symlink(
        "/usr/lib/python3/dist-packages/Cryptodome",
        shim.path().join("Crypto"),
    )
    .unwrap();
    let script = format!(
        "PYTHONPATH={}:/usr/lib/python3/site-packages/virtualsmartcard \
           /usr/bin/python3 /usr/bin/vicc -t iso7816 -H 127.0.0.1 -P \"$VPCD_PORT\" >/dev/null 2>&1 & \
         vpcd-wait -t 20 \"$VPCD_READER\" && opensc-tool -r \"$VPCD_READER\" -a \
           -s '00 A4 00 0C 02 3F 00'",
        shim.path().display()
    );
    let r = run(&mut vpcd_run(
        None,
        false,
        &["--no-namespaces", "--no-card", "--", "sh", "-c", &script],
    ));
    assert!(r.status.success(), "{}\n{}", r.stdout, r.stderr);
    assert!(
        r.stdout.contains("Received (SW1=0x90, SW2=0x00)"),
        "{}",
        r.stdout
    );

    let script = "set -eu
        ctl() { vpcd-vicc ctl \"$VPCD_CARD_CONTROL\" \"$@\"; }
        ctl remove
        vpcd-wait -t 2 --absent \"$VPCD_READER\"
        ctl insert
        vpcd-wait -t 2 \"$VPCD_READER\"
        kill -USR1 \"$VPCD_CARD_PID\"
        vpcd-wait -t 2 --absent \"$VPCD_READER\"
        kill -USR2 \"$VPCD_CARD_PID\"
        vpcd-wait -t 2 \"$VPCD_READER\"
        opensc-tool -r \"$VPCD_READER\" -a
        echo done";
    let r = run(&mut vpcd_run(
        None,
        false,
        &["--no-namespaces", "-q", "--", "sh", "-c", script],
    ));
    assert!(r.status.success(), "{}\n{}", r.stdout, r.stderr);
    assert!(
        r.stdout
            .ends_with("3b:8a:80:01:80:73:90:01:40:54:76:70:63:64:7c\ndone\n"),
        "{}",
        r.stdout
    );
}

/// Where a real engine works (VPCD_CONTAINER_ENGINE=podman or docker: it builds the
/// image, which downloads its base images), the image and its promises in real
/// unprivileged containers: scripts/container-test. Ignored, so that a run without an
/// engine reports it skipped rather than passed.
#[test]
#[ignore = "needs podman or docker: VPCD_CONTAINER_ENGINE=podman cargo nextest run --run-ignored only -E 'test(real_container)'"]
fn real_container_where_an_engine_works() {
    let engine = std::env::var_os("VPCD_CONTAINER_ENGINE")
        .expect("set VPCD_CONTAINER_ENGINE=podman or docker to build and run the image");
    let dir = temp_dir("engine");
    let child = spawn_logged(
        Command::new(repo_root().join("scripts/container-test")).arg(engine),
        dir.path(),
        "test",
    );
    // Building the image (a Rust build in the first stage) takes minutes.
    let r = finish(
        child,
        dir.path(),
        "test",
        Instant::now(),
        Duration::from_secs(3600),
    );
    assert!(r.status.success(), "{}\n{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("container test ok"), "{}", r.stdout);
}

/// pcscd's /run/pcscd, in a mount and network namespace of the test's own (a fresh
/// /run without it, no other environment around): an ordinary user is told in one
/// line to have root make it; root makes it for the run and removes it after.
#[test]
fn run_pcscd_made_by_root_and_removed_after() {
    if !is_root() {
        eprintln!("skipped: needs root for the private /run");
        return;
    }
    let (uid, gid) = test_user();
    let run_args = |who: &str| {
        format!(
            "{who} {run} --no-namespaces --driver {drv} --pcscd {pcscd} -- \
               sh -c 'ls -d /run/pcscd; opensc-tool -r \"$VPCD_READER\" -a'",
            run = tool("vpcd-run").display(),
            drv = driver_path().display(),
            pcscd = pcscd().display(),
        )
    };
    let script = format!(
        "ip link set lo up
         mount -t tmpfs tmpfs /run
         {user}; echo \"user=$?\"
         {root}; echo \"root=$?\"
         ls -A /run; echo end",
        user = run_args(&format!(
            "setpriv --reuid={uid} --regid={gid} --clear-groups --"
        )),
        root = run_args(""),
    );
    let r = run(Command::new("unshare")
        .args(["-m", "-n", "--propagation", "private", "sh", "-c", &script])
        .env("PATH", path_with_tools()));
    assert!(r.status.success(), "{}\n{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("user=125\n"), "{}", r.stdout);
    assert!(
        r.stderr.contains("pcscd needs its directory /run/pcscd")
            && r.stderr.contains("mkdir -m 0755 /run/pcscd"),
        "{}",
        r.stderr
    );
    assert!(r.stdout.contains("/run/pcscd\n3b:8a:80"), "{}", r.stdout);
    assert!(r.stdout.contains("root=0\n"), "{}", r.stdout);
    // Nothing left in /run: the directory root made is gone again.
    assert!(r.stdout.ends_with("root=0\nend\n"), "{}", r.stdout);
}
