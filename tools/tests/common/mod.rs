//! Test harness: a private pcscd loading the freshly built driver, in its own mount
//! namespace (never the system's daemon or /etc), and scriptable vicc peers.
//!
//! libpcsclite reads `PCSCLITE_CSOCK_NAME` once per process, so each test runs in a
//! process of its own: run the suite with `cargo nextest run` (scripts/test does).
#![allow(dead_code)]

use std::ffi::CString;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use pcsc::{Context, Protocols, ReaderState, Scope, ShareMode, State};

/// The ATR our scripted viccs answer with (T=1, valid TCK).
pub const TEST_ATR: &[u8] = &[0x3B, 0x80, 0x80, 0x01, 0x01];

/// The repository's root (the workspace), where scripts/ is.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
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

/// A temporary directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "vpcd-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
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

/// One reader.conf.d entry.
pub struct Entry {
    pub friendly_name: String,
    pub device_name: Option<String>,
    pub channel_id: Option<String>,
    pub lib_path: PathBuf,
}

impl Entry {
    pub fn device(name: &str, device_name: &str) -> Entry {
        Entry {
            friendly_name: name.to_owned(),
            device_name: Some(device_name.to_owned()),
            channel_id: None,
            lib_path: driver_path(),
        }
    }

    pub fn render(&self) -> String {
        let mut s = format!("FRIENDLYNAME \"{}\"\n", self.friendly_name);
        if let Some(d) = &self.device_name {
            s += &format!("DEVICENAME {d}\n");
        }
        s += &format!("LIBPATH {}\n", self.lib_path.display());
        if let Some(c) = &self.channel_id {
            s += &format!("CHANNELID {c}\n");
        }
        s
    }
}

/// A private pcscd. Dropping it stops it with SIGINT (its clean shutdown path, which
/// closes every channel) and removes its files.
pub struct Pcscd {
    child: Option<Child>,
    pub dir: TempDir,
    pub log: PathBuf,
    pub socket: PathBuf,
}

static SOCKET_SET: OnceLock<PathBuf> = OnceLock::new();

impl Pcscd {
    pub fn start(entries: &[Entry]) -> Pcscd {
        let conf = entries
            .iter()
            .map(Entry::render)
            .collect::<Vec<_>>()
            .join("\n");
        Pcscd::start_with_config(&conf)
    }

    pub fn start_with_config(conf: &str) -> Pcscd {
        let dir = TempDir::new("pcscd");
        let run_dir = dir.0.join("run");
        std::fs::create_dir_all(&run_dir).unwrap();
        let conf_path = dir.0.join("reader.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let log = dir.0.join("pcscd.log");
        let socket = run_dir.join("pcscd.comm");
        // Checked before pcscd starts, so a misuse leaves no daemon behind.
        let set = SOCKET_SET.get_or_init(|| {
            std::env::set_var("PCSCLITE_CSOCK_NAME", &socket);
            socket.clone()
        });
        assert_eq!(
            set, &socket,
            "one pcscd per test process: run with cargo nextest"
        );
        // VPCD_VALGRIND=1 runs pcscd under valgrind; its report goes to valgrind.log
        // beside pcscd.log (kept under VPCD_VALGRIND_DIR if set).
        let wrapper = match std::env::var_os("VPCD_VALGRIND") {
            Some(_) => format!(
                "valgrind --error-limit=no --log-file={}",
                valgrind_log(&dir.0).display()
            ),
            None => String::new(),
        };
        let child = Command::new(repo_root().join("scripts/private-pcscd"))
            .arg(&run_dir)
            .arg(&conf_path)
            .arg("-d")
            .env("VPCD_PCSCD_WRAPPER", wrapper)
            .env(
                "VPCD_LOG",
                std::env::var("VPCD_LOG").unwrap_or_else(|_| "debug".into()),
            )
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(Stdio::from(
                std::fs::File::options().append(true).open(&log).unwrap(),
            ))
            .spawn()
            .expect("start pcscd");
        let mut pcscd = Pcscd {
            child: Some(child),
            dir,
            log,
            socket,
        };
        pcscd.wait_ready();
        pcscd
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("pcscd exited with {status}:\n{}", self.log_text());
            }
            if self.socket.exists() && Context::establish(Scope::User).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("pcscd did not come up:\n{}", self.log_text());
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// Stops pcscd with SIGINT; returns how long it took to exit.
    pub fn stop(&mut self) -> Duration {
        let Some(mut child) = self.child.take() else {
            return Duration::ZERO;
        };
        let start = Instant::now();
        signal(child.id(), libc_sigint());
        // Under valgrind, pcscd's own shutdown (its hotplug thread) can take long.
        let patience = if std::env::var_os("VPCD_VALGRIND").is_some() {
            60
        } else {
            10
        };
        let deadline = start + Duration::from_secs(patience);
        let mut resent = false;
        loop {
            // pcscd 1.9.9 can miss a SIGINT that arrives while its main loop is
            // between select() calls under load. Say it again, but only while pcscd
            // has not begun closing readers: a hang in the driver must still show.
            if !resent
                && start.elapsed() > Duration::from_secs(3)
                && !self.log_text().contains("RFCleanupReaders() entering")
            {
                signal(child.id(), libc_sigint());
                resent = true;
            }
            if let Some(status) = child.try_wait().unwrap() {
                assert!(
                    status.code().is_some() || status.signal() == Some(libc_sigint()),
                    "pcscd died of {status}:\n{}",
                    self.log_text()
                );
                return start.elapsed();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "pcscd ignored SIGINT for {patience} s:\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Waits until the log contains `needle`.
    pub fn wait_log(&self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.log_text().contains(needle) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    pub fn context(&self) -> Context {
        Context::establish(Scope::User).expect("establish context")
    }

    /// Waits until exactly `names` are listed, in any order.
    pub fn wait_readers(&self, names: &[String]) -> Vec<String> {
        let ctx = self.context();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let got = list_readers(&ctx);
            let mut want = names.to_vec();
            want.sort();
            let mut sorted = got.clone();
            sorted.sort();
            if sorted == want || Instant::now() > deadline {
                assert_eq!(sorted, want, "readers\n{}", self.log_text());
                return got;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Where pcscd's valgrind report goes when VPCD_VALGRIND is set.
fn valgrind_log(dir: &Path) -> PathBuf {
    match std::env::var_os("VPCD_VALGRIND_DIR") {
        Some(keep) => {
            std::fs::create_dir_all(&keep).unwrap();
            let test = std::thread::current()
                .name()
                .unwrap_or("test")
                .replace("::", "-");
            PathBuf::from(keep).join(format!("{test}-{}.log", std::process::id()))
        }
        None => dir.join("valgrind.log"),
    }
}

impl Drop for Pcscd {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // No second panic from stop(): end pcscd the hard way.
            if let Some(mut child) = self.child.take() {
                signal(child.id(), libc_sigint());
                std::thread::sleep(Duration::from_millis(200));
                let _ = child.kill();
                let _ = child.wait();
            }
        } else if self.child.is_some() {
            self.stop();
        }
        if std::thread::panicking() || std::env::var_os("VPCD_TEST_LOG").is_some() {
            eprintln!("---- pcscd log ----\n{}", self.log_text());
        }
    }
}

fn libc_sigint() -> i32 {
    2
}

pub fn signal(pid: u32, sig: i32) {
    let _ = Command::new("kill")
        .args([format!("-{sig}"), pid.to_string()])
        .status();
}

pub fn list_readers(ctx: &Context) -> Vec<String> {
    let mut buf = [0u8; 8192];
    match ctx.list_readers(&mut buf) {
        Ok(names) => names.map(|n| n.to_string_lossy().into_owned()).collect(),
        Err(_) => vec![],
    }
}

/// Waits until the card in `reader` is present (or absent); returns how long it took.
pub fn wait_card(ctx: &Context, reader: &str, present: bool, timeout: Duration) -> Duration {
    let start = Instant::now();
    let name = CString::new(reader).unwrap();
    let mut states = [ReaderState::new(name, State::UNAWARE)];
    loop {
        let left = timeout.saturating_sub(start.elapsed());
        match ctx.get_status_change(left, &mut states) {
            Ok(()) => {}
            Err(pcsc::Error::Timeout) => {}
            Err(e) => panic!("get_status_change({reader}): {e}"),
        }
        let state = states[0].event_state();
        if state.contains(State::PRESENT) == present && !state.contains(State::UNKNOWN) {
            return start.elapsed();
        }
        if start.elapsed() >= timeout {
            panic!(
                "{reader}: card {} not seen within {timeout:?} (state {state:?})",
                if present { "insertion" } else { "removal" }
            );
        }
        states[0].sync_current_state();
    }
}

/// Connects to `reader` and returns the card handle.
pub fn connect(ctx: &Context, reader: &str) -> pcsc::Card {
    let name = CString::new(reader).unwrap();
    ctx.connect(&name, ShareMode::Shared, Protocols::ANY)
        .unwrap_or_else(|e| panic!("connect {reader}: {e}"))
}

pub fn transmit(card: &pcsc::Card, apdu: &[u8]) -> Result<Vec<u8>, pcsc::Error> {
    let mut buf = vec![0u8; pcsc::MAX_BUFFER_SIZE_EXTENDED];
    card.transmit(apdu, &mut buf).map(|r| r.to_vec())
}

/// What the scripted echo vicc answers to `apdu`: the APDU itself (cut to fit a
/// frame) followed by 90 00.
pub fn echo_reply(apdu: &[u8]) -> Vec<u8> {
    let mut reply = apdu[..apdu.len().min(65533)].to_vec();
    reply.extend_from_slice(&[0x90, 0x00]);
    reply
}

/// Commands of every size class a reader must relay: short, a full short case 3,
/// 4 KiB extended, and the largest extended APDU one vpcd frame carries.
pub fn sample_apdus() -> Vec<Vec<u8>> {
    let mut full_short = vec![0x00, 0xD6, 0x00, 0x00, 0xFF];
    full_short.extend([0x5A; 255]);
    vec![
        vec![0x00, 0x84, 0x00, 0x00, 0x08],
        full_short,
        extended_apdu(4096),
        extended_apdu(65535 - 7),
    ]
}

/// An extended case 3 APDU with `n` data bytes.
pub fn extended_apdu(n: usize) -> Vec<u8> {
    let mut apdu = vec![0x80, 0xEE, 0x00, 0x00, 0x00, (n >> 8) as u8, n as u8];
    apdu.extend((0..n).map(|i| (i * 7 + 3) as u8));
    apdu
}

/// How a scripted vicc behaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Behaviour {
    /// Answers GET ATR with TEST_ATR and APDUs with [`echo_reply`].
    Echo,
    /// Answers GET ATR, then never answers an APDU.
    StallOnApdu,
    /// Answers GET ATR, then closes the connection when an APDU arrives.
    CloseOnApdu,
    /// Answers GET ATR, then sends half a reply and closes.
    CloseMidReply,
    /// Answers APDUs with random bytes.
    GarbageOnApdu,
}

/// A scripted vicc in a thread of the test process.
pub struct Vicc {
    stream: TcpStream,
    thread: Option<JoinHandle<()>>,
    pub apdus: Arc<AtomicU32>,
}

impl Vicc {
    /// Connects to a listening slot.
    pub fn connect(port: u16, behaviour: Behaviour) -> Vicc {
        let stream = TcpStream::connect(("127.0.0.1", port))
            .unwrap_or_else(|e| panic!("connect to port {port}: {e}"));
        Vicc::serve(stream, behaviour)
    }

    /// Connects to a listening slot at `addr`.
    pub fn connect_to(addr: SocketAddr, behaviour: Behaviour) -> std::io::Result<Vicc> {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        Ok(Vicc::serve(stream, behaviour))
    }

    pub fn serve(stream: TcpStream, behaviour: Behaviour) -> Vicc {
        stream.set_nodelay(true).unwrap();
        let apdus = Arc::new(AtomicU32::new(0));
        let counter = Arc::clone(&apdus);
        let peer = stream.try_clone().unwrap();
        let thread = std::thread::spawn(move || run_vicc(peer, behaviour, &counter));
        Vicc {
            stream,
            thread: Some(thread),
            apdus,
        }
    }

    /// Closes the connection: the card is removed.
    pub fn disconnect(mut self) {
        self.close();
    }

    fn close(&mut self) {
        let _ = self.stream.shutdown(Shutdown::Both);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Vicc {
    fn drop(&mut self) {
        self.close();
    }
}

fn read_frame(stream: &mut TcpStream) -> Option<Vec<u8>> {
    let mut prefix = [0u8; 2];
    stream.read_exact(&mut prefix).ok()?;
    let mut payload = vec![0u8; u16::from_be_bytes(prefix) as usize];
    stream.read_exact(&mut payload).ok()?;
    Some(payload)
}

pub fn write_frame(stream: &mut TcpStream, payload: &[u8]) -> std::io::Result<()> {
    let mut frame = (payload.len() as u16).to_be_bytes().to_vec();
    frame.extend_from_slice(payload);
    stream.write_all(&frame)
}

fn run_vicc(mut stream: TcpStream, behaviour: Behaviour, apdus: &AtomicU32) {
    while let Some(msg) = read_frame(&mut stream) {
        if msg == [4] {
            if write_frame(&mut stream, TEST_ATR).is_err() {
                return;
            }
            continue;
        }
        if msg.len() <= 1 {
            continue;
        }
        apdus.fetch_add(1, Ordering::Relaxed);
        let ok = match behaviour {
            Behaviour::Echo => write_frame(&mut stream, &echo_reply(&msg)).is_ok(),
            Behaviour::StallOnApdu => {
                // Hold the connection open, never answering, until the driver drops us.
                let mut sink = [0u8; 1024];
                while matches!(stream.read(&mut sink), Ok(n) if n > 0) {}
                false
            }
            Behaviour::CloseOnApdu => false,
            Behaviour::CloseMidReply => {
                let _ = stream.write_all(&[0x00, 0x10, 0x90]);
                false
            }
            Behaviour::GarbageOnApdu => {
                let garbage: Vec<u8> = (0..97u32)
                    .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
                    .collect();
                let _ = stream.write_all(&garbage);
                true
            }
        };
        if !ok {
            return;
        }
    }
}

/// A listening scripted vicc for reversed mode: serves each driver connection in turn.
pub struct ListeningVicc {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    active: Arc<Mutex<Option<TcpStream>>>,
}

impl ListeningVicc {
    pub fn start(addr: SocketAddr) -> ListeningVicc {
        let listener = TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let active = Arc::new(Mutex::new(None::<TcpStream>));
        let (stop2, active2) = (Arc::clone(&stop), Arc::clone(&active));
        let thread = std::thread::spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        stream.set_nonblocking(false).unwrap();
                        stream.set_nodelay(true).unwrap();
                        *active2.lock().unwrap() = Some(stream.try_clone().unwrap());
                        run_vicc(stream, Behaviour::Echo, &AtomicU32::new(0));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        ListeningVicc {
            addr,
            stop,
            thread: Some(thread),
            active,
        }
    }
}

impl Drop for ListeningVicc {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(s) = self.active.lock().unwrap().take() {
            let _ = s.shutdown(Shutdown::Both);
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Reader name pcscd gives slot `slot` of reader `index`.
pub fn reader_name(friendly: &str, index: u8, slot: u8) -> String {
    format!("{friendly} {index:02X} {slot:02X}")
}

/// Runs a command, returning (success, stdout + stderr).
pub fn run(cmd: &mut Command) -> (bool, String) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text += &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

pub fn path_exists(p: &Path) -> bool {
    p.exists()
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
