//! Where things are: the repository, the build, the built driver; temporary
//! directories; free TCP ports.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

pub use tempfile::TempDir;

/// The repository's root (the workspace), where scripts/ is.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .unwrap()
        .to_path_buf()
}

/// Directory of the build: target/<profile>, where the .so and the tools are.
pub fn build_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent().unwrap().parent().unwrap().to_path_buf()
}

/// The driver the test binary was built with. Cargo leaves the library it builds for
/// tests in deps/ (only a top-level build copies it to target/<profile>/), so take the
/// newest copy of the two places.
pub fn driver_path() -> PathBuf {
    let dir = build_dir();
    let mut candidates: Vec<PathBuf> = std::fs::read_dir(dir.join("deps"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy();
            name == "libifdvpcd.so" || (name.starts_with("libifdvpcd-") && name.ends_with(".so"))
        })
        .collect();
    candidates.push(dir.join("libifdvpcd.so"));
    candidates
        .into_iter()
        .filter_map(|p| Some((std::fs::metadata(&p).ok()?.modified().ok()?, p)))
        .max()
        .map(|(_, p)| p)
        .expect("libifdvpcd.so not built")
}

/// A program of the tools package (`vpcd-vicc`, `vpcd-run`, ...), built beside the
/// test binary. The driver's system tests live in another package than the tools, so
/// cargo gives them no `CARGO_BIN_EXE_*`; a workspace build (`cargo build`,
/// `cargo nextest run` at the root) puts the tools in target/<profile>/.
pub fn tool(name: &str) -> PathBuf {
    let path = build_dir().join(name);
    assert!(
        path.exists(),
        "{} not built: run `cargo build` at the repository's root (it builds the tools too)",
        path.display()
    );
    path
}

/// PATH with the built tools first, so that scripts a test runs can say `vpcd-wait`.
pub fn path_with_tools() -> String {
    format!(
        "{}:{}",
        build_dir().display(),
        std::env::var("PATH").unwrap_or_default()
    )
}

/// Whether this process runs as root (its effective uid).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0"))
}

/// A fresh directory `vpcd-TAG-...` under the system's temporary one, removed on drop.
pub fn temp_dir(tag: &str) -> TempDir {
    tempfile::Builder::new()
        .prefix(&format!("vpcd-{tag}-"))
        .tempdir()
        .expect("create a temporary directory")
}

/// `count` (at most 32) consecutive TCP ports that no other test process uses.
///
/// Ports come in blocks of 32 below Linux's ephemeral range (32768 and up, where
/// client sockets take theirs), clear of the C driver's 35963. A test process claims
/// a block by binding an abstract Unix socket named after it, held until the process
/// exits (the kernel then frees it; no file is left behind), so concurrent tests never
/// share a port; and the block's ports must be free on IPv4 and IPv6 right now.
pub fn free_ports(count: u16) -> u16 {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::{SocketAddr as UnixAddr, UnixListener};
    static CLAIMED: Mutex<Vec<UnixListener>> = Mutex::new(Vec::new());
    const BLOCK: u16 = 32;
    const BLOCKS: u16 = (32768 - 10000) / BLOCK;
    assert!(count <= BLOCK);
    let start = std::process::id() as u16 % BLOCKS;
    for i in 0..BLOCKS {
        let block = (start + i) % BLOCKS;
        let base = 10000 + block * BLOCK;
        let name = format!("vpcd-test-ports-{base}");
        let Ok(claim) =
            UnixAddr::from_abstract_name(name.as_bytes()).and_then(|a| UnixListener::bind_addr(&a))
        else {
            continue;
        };
        let free = (0..count).all(|i| {
            TcpListener::bind(("0.0.0.0", base + i)).is_ok()
                && TcpListener::bind(("::", base + i)).is_ok()
        });
        if free {
            CLAIMED.lock().unwrap().push(claim);
            return base;
        }
    }
    panic!("no {count} free consecutive ports");
}

/// The C driver's default ports, 35963 and 35964 (CHANNELID 0x8C7B, two slots).
pub const DEFAULT_PORTS: [u16; 2] = [0x8C7B, 0x8C7C];

/// Waits until every one of `ports` can be bound on all addresses, as the driver binds
/// them; panics after `timeout`. For the tests of fixed ports: the default ones lie in
/// the kernel's ephemeral range, where any test's outgoing connection may hold one
/// for as long as it lives (free_ports never hands out such ports).
pub fn wait_bindable(ports: &[u16], timeout: std::time::Duration) {
    let start = std::time::Instant::now();
    loop {
        let taken: Vec<u16> = ports
            .iter()
            .copied()
            .filter(|p| TcpListener::bind(("0.0.0.0", *p)).is_err())
            .collect();
        if taken.is_empty() {
            return;
        }
        assert!(
            start.elapsed() < timeout,
            "ports {taken:?} still in use after {timeout:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}
