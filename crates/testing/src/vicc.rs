//! Scripted viccs in threads of the test process, the vpcd framing they speak, and the
//! sample APDUs every reader must relay.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The ATR our scripted viccs answer with (T=1, valid TCK).
pub const TEST_ATR: &[u8] = &[0x3B, 0x80, 0x80, 0x01, 0x01];

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
    /// The control messages it received, by code: power off (0), power on (1),
    /// reset (2), GET ATR (4).
    pub controls: Arc<[AtomicU32; 5]>,
}

impl Vicc {
    /// How many control messages `code` (0 power off, 1 power on, 2 reset, 4 GET ATR)
    /// it has received.
    pub fn control_count(&self, code: u8) -> u32 {
        self.controls[usize::from(code)].load(Ordering::Relaxed)
    }
}

impl Vicc {
    /// Waits until it has received `count` APDUs (the driver relayed them, and the
    /// exchanges are in flight or done); panics after `within`.
    pub fn wait_apdus(&self, count: u32, within: Duration) {
        wait_count(&self.apdus, count, within, "APDUs the vicc received");
    }

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
        let controls: Arc<[AtomicU32; 5]> = Arc::new(Default::default());
        let (counter, control_counter) = (Arc::clone(&apdus), Arc::clone(&controls));
        let peer = stream.try_clone().unwrap();
        let thread =
            std::thread::spawn(move || run_vicc(peer, behaviour, &counter, &control_counter));
        Vicc {
            stream,
            thread: Some(thread),
            apdus,
            controls,
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

/// Waits until `counter` reaches `count` (what a scripted peer received); panics
/// naming `what` after `within`.
pub fn wait_count(counter: &AtomicU32, count: u32, within: Duration, what: &str) {
    let deadline = Instant::now() + within;
    loop {
        let now = counter.load(Ordering::Relaxed);
        if now >= count {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: {now} after {within:?}, waiting for {count}"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn read_frame(stream: &mut TcpStream) -> Option<Vec<u8>> {
    let mut prefix = [0u8; 2];
    stream.read_exact(&mut prefix).ok()?;
    let mut payload = vec![0u8; u16::from_be_bytes(prefix) as usize];
    stream.read_exact(&mut payload).ok()?;
    Some(payload)
}

/// `payload` as one vpcd frame: its 2-byte length, then the bytes.
pub fn frame(payload: &[u8]) -> Vec<u8> {
    let mut f = (payload.len() as u16).to_be_bytes().to_vec();
    f.extend_from_slice(payload);
    f
}

/// `len` bytes of deterministic noise (xorshift from `seed`), for peers that send junk.
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

pub fn write_frame(stream: &mut TcpStream, payload: &[u8]) -> std::io::Result<()> {
    stream.write_all(&frame(payload))
}

fn run_vicc(
    mut stream: TcpStream,
    behaviour: Behaviour,
    apdus: &AtomicU32,
    controls: &[AtomicU32; 5],
) {
    while let Some(msg) = read_frame(&mut stream) {
        if let [code @ 0..=4] = msg[..] {
            controls[usize::from(code)].fetch_add(1, Ordering::Relaxed);
        }
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
                        run_vicc(
                            stream,
                            Behaviour::Echo,
                            &AtomicU32::new(0),
                            &Default::default(),
                        );
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
