//! vpcd-env against the real pcscd (the system's, Debian 12's 1.9.9, unless
//! VPCD_PCSCD names another) and the built driver: start, readiness, what a client
//! sees, stop and cleanup. Each test is its own process under nextest (libpcsclite
//! reads PCSCLITE_CSOCK_NAME once per process).

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use vpcd_env::{Config, Environment, Error};

fn config() -> Config {
    let mut c = Config::new(vpcd_testing::driver_path());
    c.pcscd = std::env::var_os("VPCD_PCSCD").map(PathBuf::from);
    c
}

#[test]
fn starts_serves_a_client_and_leaves_nothing() {
    let mut c = config();
    c.slots = 3;
    let env = Environment::start(&c).unwrap();
    assert!(env.socket().starts_with(env.dir()));
    assert_eq!(env.reader_name(2), "Virtual PCD 00 02");
    let ports: Vec<u16> = env.ports().collect();
    assert_eq!(ports.len(), 3);
    assert_eq!(ports[2], ports[0] + 2);
    // Ready means pcscd's sockets listen on every port, and the readers are listed.
    let held = vpcd_env::ports::listening(&ports);
    assert!(ports.iter().all(|p| held.contains_key(p)), "{held:?}");
    std::env::set_var("PCSCLITE_CSOCK_NAME", env.socket());
    let ctx = pcsc::Context::establish(pcsc::Scope::User).unwrap();
    let readers: Vec<String> = ctx
        .list_readers_owned()
        .unwrap()
        .into_iter()
        .map(|r| r.into_string().unwrap())
        .collect();
    assert_eq!(
        readers,
        [
            "Virtual PCD 00 00",
            "Virtual PCD 00 01",
            "Virtual PCD 00 02"
        ]
    );
    // A vicc in slot 1 (the tool, connecting to the real port).
    let mut vicc = Command::new(vpcd_testing::tool("vpcd-vicc"))
        .args(["-H", "127.0.0.1", "-P", &env.port(1).to_string()])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    vpcd_testing::wait_card("Virtual PCD 00 01", true, Duration::from_secs(10));
    drop(ctx);
    let (dir, pid) = (env.dir().to_path_buf(), env.pcscd_pid());
    env.stop();
    let _ = vicc.kill();
    let _ = vicc.wait();
    assert!(!dir.exists(), "{} left behind", dir.display());
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
    // No pid file of ours, and the system's directory is as it was.
    assert!(
        !std::path::Path::new("/run/pcscd/pcscd.pid").exists()
            || std::fs::read_to_string("/run/pcscd/pcscd.pid")
                .unwrap()
                .trim()
                != pid.to_string()
    );
}

#[test]
fn environments_side_by_side_do_not_share_ports_or_sockets() {
    let envs: Vec<Environment> = (0..4)
        .map(|_| Environment::start(&config()).unwrap())
        .collect();
    let mut ports: Vec<u16> = envs.iter().flat_map(|e| e.ports()).collect();
    ports.sort();
    ports.dedup();
    assert_eq!(ports.len(), 8);
    let mut sockets: Vec<_> = envs.iter().map(|e| e.socket().to_path_buf()).collect();
    sockets.dedup();
    assert_eq!(sockets.len(), 4);
}

#[test]
fn errors_are_one_line_each() {
    let mut c = config();
    c.pcscd = Some("/nonexistent/pcscd".into());
    let e = Environment::start(&c).unwrap_err();
    assert!(matches!(e, Error::NoPcscd), "{e}");
    c.pcscd = Some("/bin/true".into());
    let e = Environment::start(&c).unwrap_err().to_string();
    assert!(e.contains("does not say it is pcscd"), "{e}");
    let mut c = config();
    c.slots = 0;
    assert!(Environment::start(&c).is_err());
    for e in [
        Error::NoPcscd,
        Error::NoIpcDir {
            dir: "/run/pcscd".into(),
        },
        Error::PortsExhausted {
            count: 2,
            range: Some((1, 2)),
        },
        Error::PortsExhausted {
            count: 2,
            range: None,
        },
        Error::NoSocketActivation {
            pcscd: "/x/pcscd".into(),
            version: "pcsc-lite version 2.5.1".into(),
        },
    ] {
        let s = e.to_string();
        assert!(!s.contains('\n') && s.len() > 40, "{s}");
    }
}
