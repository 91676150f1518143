//! Hostile vicc peers against a real pcscd.
//!
//! Each case runs one reader of two slots with a one-second reader timeout
//! (`/timeout=1`): slot 1 holds a well-behaved echo vicc with a client connected to
//! it, slot 0 gets the hostile peer. Every case checks that
//! (a) pcscd keeps answering other clients (SCardListReaders and SCardStatus on slot
//!     1) quickly, measured while slot 0 is misbehaving and again afterwards;
//! (b) the other slot keeps working (an APDU round trip through slot 1);
//! (c) slot 0 takes a good vicc afterwards and an APDU round trip through it works.
//!
//! The hostile peers are raw sockets scripted here: a peer plays a normal vicc until
//! its *stage* (connecting, the driver's GET ATR that a peer must answer to become a
//! card, the GET ATR of pcscd's power-up, or an APDU) and then does its *act* (sends a
//! bad reply, goes silent, trickles, closes...). A peer that misbehaves before it has
//! proven itself never becomes a card: pcscd never hears of it.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use socket2::{Domain, SockRef, Socket, Type};
use vpcd_testing::*;

const NAME: &str = "Hostile PCD";
/// The hostile reader's response timeout (`/timeout=1`).
const TIMEOUT: Duration = Duration::from_secs(1);
/// Slack on top of [`TIMEOUT`] for the driver to give up on a peer, under load.
const SLACK: Duration = Duration::from_millis(1500);
/// How fast pcscd must answer other clients while slot 0 misbehaves. Stricter than
/// a second: slot 0's own exchanges end after [`TIMEOUT`], so a bound of one second
/// could not tell a pcscd blocked by slot 0 from a free one.
const RESPONSIVE: Duration = Duration::from_millis(500);
const SECOND: Duration = Duration::from_secs(1);
/// READ BINARY, 16 bytes.
const APDU: [u8; 5] = [0x00, 0xB0, 0x00, 0x00, 0x10];

// ---------------------------------------------------------------------------------
// The test bed: pcscd, a healthy slot 1, and the checks (a), (b), (c).

struct Bed {
    pcscd: Pcscd,
    /// Port of slot 0, the hostile slot.
    port: u16,
    readers: [String; 2],
    ctx: pcsc::Context,
    /// The client's card on slot 1 (declared before the vicc it talks to).
    other: pcsc::Card,
    _healthy: Vicc,
}

impl Bed {
    fn start() -> Bed {
        let port = free_ports(2);
        let pcscd = Pcscd::start(&[Entry::device(NAME, &format!("/dev/null:{port}/timeout=1"))]);
        let readers = [reader_name(NAME, 0, 0), reader_name(NAME, 0, 1)];
        pcscd.wait_readers(&readers);
        let healthy = Vicc::connect(port + 1, Behaviour::Echo);
        let ctx = pcscd.context();
        wait_card(&readers[1], true, 3 * SECOND);
        let other = connect(&ctx, &readers[1]);
        let mut bed = Bed {
            pcscd,
            port,
            readers,
            ctx,
            other,
            _healthy: healthy,
        };
        bed.assert_healthy("at the start");
        bed
    }

    /// (a) and (b): pcscd answers at once and slot 1 round-trips an APDU.
    fn assert_healthy(&mut self, when: &str) {
        assert!(
            self.pcscd.is_running(),
            "pcscd died {when}:\n{}",
            self.pcscd.log_text()
        );
        let start = Instant::now();
        let mut listed = list_readers(&self.ctx);
        let mut names = [0u8; 512];
        let mut atr = [0u8; 64];
        let status = self
            .other
            .status2(&mut names, &mut atr)
            .map(|s| s.atr().to_vec());
        let took = start.elapsed();
        listed.sort();
        assert_eq!(listed, self.readers, "SCardListReaders {when}");
        assert_eq!(
            status,
            Ok(TEST_ATR.to_vec()),
            "SCardStatus on slot 1 {when}"
        );
        assert!(took < RESPONSIVE, "pcscd took {took:?} to answer {when}");

        let start = Instant::now();
        let apdu = [0x00, 0xB0, 0x01, 0x00, 0x08];
        let reply = transmit(&self.other, &apdu);
        let took = start.elapsed();
        assert_eq!(reply, Ok(echo_reply(&apdu)), "APDU on slot 1 {when}");
        assert!(took < RESPONSIVE, "an APDU on slot 1 took {took:?} {when}");
    }

    /// (c): slot 0 takes a good vicc and an APDU round-trips through it.
    fn assert_slot_recovers(&mut self) {
        let vicc = attach_vicc(self.port, 5 * SECOND);
        wait_card(&self.readers[0], true, 3 * SECOND);
        let card = connect(&self.ctx, &self.readers[0]);
        assert_eq!(
            transmit(&card, &APDU),
            Ok(echo_reply(&APDU)),
            "APDU on the recovered slot 0"
        );
        drop(card);
        drop(vicc);
        self.assert_healthy("after slot 0 recovered");
    }

    /// Waits until the driver has let go of the peer at `addr` (its log says so):
    /// a card removed, or a peer that never became one.
    fn wait_released(&self, addr: SocketAddr, within: Duration) {
        let deadline = Instant::now() + within;
        let gone = [format!("vicc {addr} gone"), format!("{addr} is not a card")];
        while Instant::now() < deadline {
            let log = self.pcscd.log_text();
            if gone.iter().any(|g| log.contains(g)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "the driver never released {addr}:\n{}",
            self.pcscd.log_text()
        );
    }
}

/// Connects a well-behaved echo vicc to `port`, retrying while the driver refuses it
/// because it has not yet noticed that the previous peer left.
fn attach_vicc(port: u16, within: Duration) -> Vicc {
    let deadline = Instant::now() + within;
    loop {
        let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect a good vicc");
        stream.set_read_timeout(Some(2 * SECOND)).unwrap();
        let mut byte = [0u8; 1];
        let refused = match stream.peek(&mut byte) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                false
            }
            Err(_) => true,
        };
        if !refused {
            stream.set_read_timeout(None).unwrap();
            return Vicc::serve(stream, Behaviour::Echo);
        }
        assert!(
            Instant::now() < deadline,
            "port {port} kept refusing a good vicc"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

// ---------------------------------------------------------------------------------
// Scripted hostile peers.

/// When the peer turns hostile.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    /// As soon as it is connected, before anything is asked.
    Connect,
    /// When the driver asks a new peer for its ATR (the proof that it is a card).
    Probe,
    /// When pcscd powers the card up and asks for the ATR (after the proof).
    Atr,
    /// When the first APDU arrives (the ATR is answered normally).
    Apdu,
}

/// What the peer does then.
#[derive(Clone, Debug)]
enum Act {
    /// Sends these bytes, then stays connected and silent.
    Send(Vec<u8>),
    /// Sends these bytes, then closes.
    SendClose(Vec<u8>),
    /// Sends these bytes one at a time, this far apart, then stays silent.
    Trickle(Vec<u8>, Duration),
    /// (APDU stage) reads this many bytes of the command, then closes with the rest
    /// unread (a reset).
    ReadClose(usize),
    /// (APDU stage) reads the command this many bytes at a time, this far apart, then
    /// stays silent.
    SlowRead(usize, Duration),
    /// (APDU stage) stops reading: the command fills the receive window and stays
    /// there.
    Freeze,
}

/// What the driver is expected to do about it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    /// Fail the exchange and close the connection within the reader's timeout.
    Drop,
    /// Fail the exchange (the peer closes by itself, or the stream stays in step).
    Fail,
    /// Anything but hang or crash (random input may even be a valid reply).
    Survive,
}

struct Peer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    /// When the peer turned hostile.
    acted: mpsc::Receiver<Instant>,
    /// When the peer saw the driver close the connection.
    gone: mpsc::Receiver<Instant>,
    thread: Option<JoinHandle<()>>,
}

impl Peer {
    fn connect(port: u16, stage: Stage, act: Act) -> Peer {
        let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        if matches!(act, Act::ReadClose(_) | Act::SlowRead(..) | Act::Freeze) {
            // A small window, so a large command is still being written when we act.
            socket.set_recv_buffer_size(4096).unwrap();
        }
        let target: SocketAddr = ([127, 0, 0, 1], port).into();
        socket
            .connect(&target.into())
            .expect("connect the hostile peer");
        let stream: TcpStream = socket.into();
        stream.set_nodelay(true).unwrap();
        let addr = stream.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let (acted_tx, acted) = mpsc::channel();
        let (gone_tx, gone) = mpsc::channel();
        let stop2 = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let mut peer = Script {
                stream,
                stop: stop2,
                gone: gone_tx,
            };
            peer.run(stage, act, &acted_tx);
        });
        Peer {
            addr,
            stop,
            acted,
            gone,
            thread: Some(thread),
        }
    }

    fn wait_acted(&self, within: Duration) -> Instant {
        self.acted
            .recv_timeout(within)
            .unwrap_or_else(|_| panic!("the peer never reached its hostile stage"))
    }

    /// How long after `since` the driver closed the connection, if it did within
    /// `within`.
    fn wait_gone(&self, since: Instant, within: Duration) -> Option<Duration> {
        self.gone
            .recv_timeout(within)
            .ok()
            .map(|at| at.saturating_duration_since(since))
    }

    /// Closes the connection (if the driver has not) and ends the script.
    fn close(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().expect("peer thread");
        }
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The peer's side of the connection, run in its own thread. It owns the only
/// handle of the socket, so that returning closes it.
struct Script {
    stream: TcpStream,
    stop: Arc<AtomicBool>,
    gone: mpsc::Sender<Instant>,
}

impl Script {
    fn run(&mut self, stage: Stage, act: Act, acted: &mpsc::Sender<Instant>) {
        self.stream
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        // Play a good vicc until the stage.
        let mut atrs_asked = 0;
        if stage != Stage::Connect {
            loop {
                let mut prefix = [0u8; 2];
                if !self.read_exact(&mut prefix) {
                    return;
                }
                let len = usize::from(u16::from_be_bytes(prefix));
                if len >= 2 && stage == Stage::Apdu {
                    let _ = acted.send(Instant::now());
                    match act {
                        Act::ReadClose(n) => {
                            let mut part = vec![0u8; n.min(len)];
                            self.read_exact(&mut part);
                            return;
                        }
                        Act::Freeze => {
                            while !self.stop.load(Ordering::Relaxed) {
                                std::thread::sleep(Duration::from_millis(20));
                            }
                            return;
                        }
                        Act::SlowRead(n, gap) => {
                            let mut left = len;
                            let mut part = vec![0u8; n];
                            while left > 0 && !self.stop.load(Ordering::Relaxed) {
                                let take = n.min(left);
                                if !self.read_exact(&mut part[..take]) {
                                    return;
                                }
                                left -= take;
                                std::thread::sleep(gap);
                            }
                            self.hold();
                            return;
                        }
                        _ => {
                            let mut payload = vec![0u8; len];
                            if !self.read_exact(&mut payload) {
                                return;
                            }
                        }
                    }
                    break;
                }
                let mut payload = vec![0u8; len];
                if !self.read_exact(&mut payload) {
                    return;
                }
                if payload == [4] {
                    atrs_asked += 1;
                    if (stage == Stage::Probe && atrs_asked == 1)
                        || (stage == Stage::Atr && atrs_asked == 2)
                    {
                        let _ = acted.send(Instant::now());
                        break;
                    }
                    if write_frame(&mut self.stream, TEST_ATR).is_err() {
                        return;
                    }
                }
            }
        } else {
            let _ = acted.send(Instant::now());
        }
        match act {
            Act::Send(bytes) => {
                let _ = self.stream.write_all(&bytes);
            }
            Act::SendClose(bytes) => {
                let _ = self.stream.write_all(&bytes);
                return;
            }
            Act::Trickle(bytes, gap) => {
                for b in bytes {
                    if self.stop.load(Ordering::Relaxed) || self.stream.write_all(&[b]).is_err() {
                        break;
                    }
                    std::thread::sleep(gap);
                }
            }
            Act::ReadClose(_) | Act::SlowRead(..) | Act::Freeze => {
                unreachable!("{act:?} is for the APDU stage")
            }
        }
        self.hold();
    }

    /// Reads exactly `buf`; false when the connection ended or the test stopped us.
    fn read_exact(&mut self, buf: &mut [u8]) -> bool {
        let mut filled = 0;
        while filled < buf.len() {
            match self.stream.read(&mut buf[filled..]) {
                Ok(0) => {
                    let _ = self.gone.send(Instant::now());
                    return false;
                }
                Ok(n) => filled += n,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    if self.stop.load(Ordering::Relaxed) {
                        return false;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    let _ = self.gone.send(Instant::now());
                    return false;
                }
            }
        }
        true
    }

    /// Stays connected and silent, swallowing whatever arrives, until the driver
    /// closes the connection or the test stops us.
    fn hold(&mut self) {
        let mut byte = [0u8; 1];
        while self.read_exact(&mut byte) {}
    }
}

/// A client on its own context sending `apdu` to `reader`: (result, time taken).
fn spawn_client(
    reader: &str,
    apdu: Vec<u8>,
) -> JoinHandle<(Result<Vec<u8>, pcsc::Error>, Duration)> {
    let reader = reader.to_owned();
    std::thread::spawn(move || {
        let ctx = pcsc::Context::establish(pcsc::Scope::User).expect("client context");
        let card = connect(&ctx, &reader);
        let start = Instant::now();
        let result = transmit(&card, &apdu);
        let took = start.elapsed();
        // Leave the card as it is: the default (reset) would power up the hostile
        // peer once more, and pcscd 1.9.9 marks a card whose reset failed as
        // present and mute even when the driver reported it removed meanwhile.
        let _ = card.disconnect(pcsc::Disposition::LeaveCard);
        (result, took)
    })
}

/// A client on its own context connecting to `reader`: (result, time taken).
fn spawn_connect(reader: &str) -> JoinHandle<(Result<(), pcsc::Error>, Duration)> {
    let name = std::ffi::CString::new(reader).unwrap();
    std::thread::spawn(move || {
        let ctx = pcsc::Context::establish(pcsc::Scope::User).expect("client context");
        let start = Instant::now();
        let result = ctx
            .connect(&name, pcsc::ShareMode::Shared, pcsc::Protocols::ANY)
            .map(|card| {
                let _ = card.disconnect(pcsc::Disposition::LeaveCard);
            });
        (result, start.elapsed())
    })
}

/// One hostile peer on slot 0 of `bed`, from its connection until the driver has let
/// go of it; checks (a) and (b) while it misbehaves. Returns what happened, for the
/// log: how long until the driver dropped the peer, if it did.
fn round(bed: &mut Bed, label: &str, stage: Stage, act: Act, expect: Expect) -> Option<Duration> {
    let big = matches!(act, Act::ReadClose(_) | Act::SlowRead(..) | Act::Freeze);
    let apdu = if big {
        extended_apdu(60_000)
    } else {
        APDU.to_vec()
    };
    let peer = Peer::connect(bed.port, stage, act);
    let client = (stage == Stage::Apdu).then(|| {
        wait_card(&bed.readers[0], true, 3 * SECOND);
        spawn_client(&bed.readers[0], apdu)
    });
    let acted = peer.wait_acted(5 * SECOND);
    let unproven = matches!(stage, Stage::Connect | Stage::Probe);
    // A client asking for the card while its power-up is going wrong.
    let connecting = (stage == Stage::Atr).then(|| spawn_connect(&bed.readers[0]));
    bed.assert_healthy(&format!("while slot 0 misbehaves ({label})"));

    if let Some(client) = client {
        let (result, took) = client.join().expect("client thread");
        eprintln!("[{label}] APDU on slot 0: {result:?} after {took:?}");
        assert!(
            took < TIMEOUT + SLACK,
            "{label}: the APDU on slot 0 took {took:?}"
        );
        if expect != Expect::Survive {
            assert!(
                result.is_err(),
                "{label}: the APDU must fail, got {result:?}"
            );
        }
    }
    if let Some(connecting) = connecting {
        let (result, took) = connecting.join().expect("client thread");
        eprintln!("[{label}] SCardConnect to slot 0: {result:?} after {took:?}");
        assert!(
            took < TIMEOUT + SLACK,
            "{label}: SCardConnect to slot 0 took {took:?}"
        );
        if expect != Expect::Survive {
            assert!(result.is_err(), "{label}: SCardConnect must fail");
        }
    }
    let dropped = peer.wait_gone(acted, TIMEOUT + SLACK);
    eprintln!("[{label}] driver closed the connection: {dropped:?}");
    if expect == Expect::Drop {
        assert!(
            dropped.is_some(),
            "{label}: the driver kept the peer past {:?}",
            TIMEOUT + SLACK
        );
    }
    let addr = peer.addr;
    if unproven && expect != Expect::Survive {
        assert!(
            !bed.pcscd
                .log_text()
                .contains(&format!("vicc {addr} connected")),
            "{label}: a peer that did not prove itself became a card"
        );
    }
    peer.close();
    bed.wait_released(addr, 3 * SECOND);
    wait_card(&bed.readers[0], false, 3 * SECOND);
    bed.assert_healthy(&format!("after the hostile peer left ({label})"));
    dropped
}

fn hostile_case(label: &str, stage: Stage, act: Act, expect: Expect) {
    let mut bed = Bed::start();
    round(&mut bed, label, stage, act, expect);
    bed.assert_slot_recovers();
}

/// A frame of `len` announced bytes with only `have` of them present.
fn partial_frame(len: u16, have: usize) -> Vec<u8> {
    let mut f = len.to_be_bytes().to_vec();
    f.extend((0..have).map(|i| 0x3B ^ i as u8));
    f
}

// ---------------------------------------------------------------------------------
// Replies to an APDU.

#[test]
fn apdu_reply_prefix_ffff_then_silence() {
    hostile_case(
        "apdu 0xFFFF prefix",
        Stage::Apdu,
        Act::Send(vec![0xFF, 0xFF]),
        Expect::Drop,
    );
}

#[test]
fn apdu_reply_one_byte_then_silence() {
    hostile_case(
        "apdu 1 byte",
        Stage::Apdu,
        Act::Send(vec![0x00]),
        Expect::Drop,
    );
}

#[test]
fn apdu_reply_trickled_slower_than_the_timeout() {
    // A valid 16-byte reply, one byte every 150 ms: 2.7 s in all, past the timeout.
    let mut reply = vec![0x5A; 14];
    reply.extend_from_slice(&[0x90, 0x00]);
    hostile_case(
        "apdu trickle",
        Stage::Apdu,
        Act::Trickle(frame(&reply), Duration::from_millis(150)),
        Expect::Drop,
    );
}

#[test]
fn apdu_never_answered() {
    hostile_case("apdu stall", Stage::Apdu, Act::Send(vec![]), Expect::Drop);
}

#[test]
fn apdu_reply_empty() {
    hostile_case(
        "apdu empty reply",
        Stage::Apdu,
        Act::Send(vec![0, 0]),
        Expect::Fail,
    );
}

#[test]
fn apdu_reply_without_status_word() {
    hostile_case(
        "apdu 1-byte reply",
        Stage::Apdu,
        Act::Send(frame(&[0x90])),
        Expect::Fail,
    );
}

#[test]
fn apdu_peer_closes_mid_reply_prefix() {
    hostile_case(
        "apdu close mid prefix",
        Stage::Apdu,
        Act::SendClose(vec![0x00]),
        Expect::Fail,
    );
}

#[test]
fn apdu_peer_closes_mid_reply_payload() {
    hostile_case(
        "apdu close mid reply",
        Stage::Apdu,
        Act::SendClose(partial_frame(18, 5)),
        Expect::Fail,
    );
}

#[test]
fn apdu_peer_closes_mid_command() {
    // The peer takes 1000 bytes of a 60 kB command and resets the connection.
    hostile_case(
        "apdu close mid command",
        Stage::Apdu,
        Act::ReadClose(1000),
        Expect::Fail,
    );
}

#[test]
fn apdu_peer_never_reads_the_command() {
    // A full receive window: the driver's write of a 60 kB command cannot finish.
    hostile_case("apdu zero window", Stage::Apdu, Act::Freeze, Expect::Fail);
}

#[test]
fn apdu_command_read_slower_than_the_timeout() {
    // The peer takes the 60 kB command 1 kB every 200 ms: the driver's write must
    // give up at the timeout, not after 12 s.
    hostile_case(
        "apdu slow reader",
        Stage::Apdu,
        Act::SlowRead(1024, Duration::from_millis(200)),
        Expect::Fail,
    );
}

#[test]
fn apdu_reply_random_bytes() {
    let mut bed = Bed::start();
    for seed in 1..=4u64 {
        let len = 1 + (seed as usize * 37) % 200;
        round(
            &mut bed,
            &format!("apdu noise {seed}"),
            Stage::Apdu,
            Act::Send(noise(seed, len)),
            Expect::Survive,
        );
    }
    bed.assert_slot_recovers();
}

// ---------------------------------------------------------------------------------
// Answers to the driver's GET ATR on connect: the peer never becomes a card.

#[test]
fn probe_reply_prefix_ffff_then_silence() {
    hostile_case(
        "probe 0xFFFF prefix",
        Stage::Probe,
        Act::Send(vec![0xFF, 0xFF]),
        Expect::Drop,
    );
}

#[test]
fn probe_reply_one_byte_then_silence() {
    hostile_case(
        "probe 1 byte",
        Stage::Probe,
        Act::Send(vec![0x00]),
        Expect::Drop,
    );
}

#[test]
fn probe_never_answered() {
    hostile_case("probe stall", Stage::Probe, Act::Send(vec![]), Expect::Drop);
}

#[test]
fn probe_answers_are_checked() {
    let mut bed = Bed::start();
    let mut long = vec![0x3B];
    long.extend([0x00; 33]);
    let mut huge = vec![0x3B];
    huge.extend([0x11; 999]);
    for (label, act) in [
        ("probe close mid prefix", Act::SendClose(vec![0x00])),
        ("probe close mid atr", Act::SendClose(partial_frame(5, 2))),
    ] {
        // The peer closes by itself: the driver only has to let go of it.
        round(&mut bed, label, Stage::Probe, act, Expect::Fail);
    }
    for (label, act) in [
        ("probe atr 34 bytes", Act::Send(frame(&long))),
        ("probe atr 1000 bytes", Act::Send(frame(&huge))),
        (
            "probe atr bad TS",
            Act::Send(frame(&[0x00, 0x80, 0x80, 0x01, 0x01])),
        ),
        ("probe atr empty", Act::Send(vec![0, 0])),
        (
            "probe atr then stray bytes",
            Act::Send([frame(TEST_ATR), vec![0x90]].concat()),
        ),
    ] {
        round(&mut bed, label, Stage::Probe, act, Expect::Drop);
    }
    bed.assert_slot_recovers();
}

#[test]
fn probe_reply_random_bytes() {
    let mut bed = Bed::start();
    for seed in 31..=34u64 {
        let len = 1 + (seed as usize * 53) % 120;
        round(
            &mut bed,
            &format!("probe noise {seed}"),
            Stage::Probe,
            Act::Send(noise(seed, len)),
            Expect::Survive,
        );
    }
    bed.assert_slot_recovers();
}

// ---------------------------------------------------------------------------------
// Replies to the GET ATR of pcscd's power-up, from a peer that proved itself.

#[test]
fn atr_reply_prefix_ffff_then_silence() {
    hostile_case(
        "atr 0xFFFF prefix",
        Stage::Atr,
        Act::Send(vec![0xFF, 0xFF]),
        Expect::Drop,
    );
}

#[test]
fn atr_reply_one_byte_then_silence() {
    hostile_case(
        "atr 1 byte",
        Stage::Atr,
        Act::Send(vec![0x00]),
        Expect::Drop,
    );
}

#[test]
fn atr_never_answered() {
    hostile_case("atr stall", Stage::Atr, Act::Send(vec![]), Expect::Drop);
}

#[test]
fn atr_peer_closes_mid_prefix() {
    hostile_case(
        "atr close mid prefix",
        Stage::Atr,
        Act::SendClose(vec![0x00]),
        Expect::Fail,
    );
}

#[test]
fn atr_peer_closes_mid_atr() {
    hostile_case(
        "atr close mid atr",
        Stage::Atr,
        Act::SendClose(partial_frame(5, 2)),
        Expect::Fail,
    );
}

#[test]
fn atr_longer_than_33_bytes() {
    let mut atr = vec![0x3B];
    atr.extend([0x00; 33]);
    hostile_case(
        "atr 34 bytes",
        Stage::Atr,
        Act::Send(frame(&atr)),
        Expect::Fail,
    );
}

#[test]
fn atr_of_a_thousand_bytes() {
    let mut atr = vec![0x3B];
    atr.extend([0x11; 999]);
    hostile_case(
        "atr 1000 bytes",
        Stage::Atr,
        Act::Send(frame(&atr)),
        Expect::Fail,
    );
}

#[test]
fn atr_with_invalid_ts() {
    hostile_case(
        "atr bad TS",
        Stage::Atr,
        Act::Send(frame(&[0x00, 0x80, 0x80, 0x01, 0x01])),
        Expect::Fail,
    );
}

#[test]
fn atr_empty() {
    hostile_case("atr empty", Stage::Atr, Act::Send(vec![0, 0]), Expect::Fail);
}

#[test]
fn atr_reply_random_bytes() {
    let mut bed = Bed::start();
    for seed in 11..=14u64 {
        let len = 1 + (seed as usize * 53) % 120;
        round(
            &mut bed,
            &format!("atr noise {seed}"),
            Stage::Atr,
            Act::Send(noise(seed, len)),
            Expect::Survive,
        );
    }
    bed.assert_slot_recovers();
}

#[test]
fn random_bytes_unasked_on_connect() {
    let mut bed = Bed::start();
    for seed in 21..=23u64 {
        round(
            &mut bed,
            &format!("connect noise {seed}"),
            Stage::Connect,
            Act::Send(noise(seed, 64)),
            Expect::Survive,
        );
    }
    bed.assert_slot_recovers();
}

// ---------------------------------------------------------------------------------
// Sizes, crowds and churn.

#[test]
fn a_reply_larger_than_the_clients_buffer() {
    let mut bed = Bed::start();
    let _vicc = attach_vicc(bed.port, 5 * SECOND);
    wait_card(&bed.readers[0], true, 3 * SECOND);
    let card = connect(&bed.ctx, &bed.readers[0]);
    // A 4 kB reply into a 258-byte buffer, and a full 65535-byte frame into one byte
    // less than it needs.
    for (apdu, room) in [
        (extended_apdu(4096), 258),
        (extended_apdu(65535 - 7), 65534),
    ] {
        let mut buf = vec![0u8; room];
        let got = card.transmit(&apdu, &mut buf).map(|r| r.len());
        assert_eq!(
            got,
            Err(pcsc::Error::InsufficientBuffer),
            "{}-byte APDU, {room}-byte buffer",
            apdu.len()
        );
        bed.assert_healthy("after a reply too large for the client");
        // The card stayed in step: the same handle works, with room enough.
        let apdu = extended_apdu(300);
        assert_eq!(transmit(&card, &apdu), Ok(echo_reply(&apdu)));
    }
    let apdu = extended_apdu(65535 - 7);
    assert_eq!(
        transmit(&card, &apdu),
        Ok(echo_reply(&apdu)),
        "the largest reply fits a large buffer"
    );
}

/// What became of one of many connections opened at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fate {
    /// pcscd powered it up: it is the card, and serves as a good vicc until stopped.
    Card,
    /// The driver closed it without a word: the slot was taken.
    Refused,
    /// Still waiting when the test stopped it.
    Pending,
    /// The TCP connection itself failed.
    NoConnect,
}

#[test]
fn two_hundred_connections_at_once_on_one_port() {
    let mut bed = Bed::start();
    let fds_before = steady_fds(bed.pcscd.pid());
    let stop = Arc::new(AtomicBool::new(false));
    let resolved = Arc::new(AtomicUsize::new(0));
    let barrier = Arc::new(std::sync::Barrier::new(201));
    let port = bed.port;
    let peers: Vec<_> = (0..200)
        .map(|_| {
            let (stop, resolved, barrier) = (
                Arc::clone(&stop),
                Arc::clone(&resolved),
                Arc::clone(&barrier),
            );
            std::thread::spawn(move || {
                barrier.wait();
                let target: SocketAddr = ([127, 0, 0, 1], port).into();
                let Ok(s) = TcpStream::connect_timeout(&target, 10 * SECOND) else {
                    resolved.fetch_add(1, Ordering::Relaxed);
                    return Fate::NoConnect;
                };
                serve_until_stopped(s, &stop, &resolved)
            })
        })
        .collect();
    barrier.wait();
    // Wait for every connection to learn its fate, up to a point: with the driver's
    // accept queue of 16, a burst overflows it, and the kernel completes the extra
    // handshakes with SYN cookies and then drops them while the queue is still full.
    // Those clients think they are connected and the driver never hears of them
    // ("pending" below); a vicc, which waits for the reader to speak first, would
    // wait forever. See `the_listen_backlog_holds_a_burst_of_200`.
    let deadline = Instant::now() + 5 * SECOND;
    while resolved.load(Ordering::Relaxed) < 200 && Instant::now() < deadline {
        bed.assert_healthy("during 200 connections");
        std::thread::sleep(Duration::from_millis(100));
    }
    // The one that won the slot is a working card.
    wait_card(&bed.readers[0], true, 3 * SECOND);
    let card = connect(&bed.ctx, &bed.readers[0]);
    assert_eq!(
        transmit(&card, &APDU),
        Ok(echo_reply(&APDU)),
        "the card that won slot 0"
    );
    drop(card);
    bed.assert_healthy("with 200 connections made");
    stop.store(true, Ordering::Relaxed);
    let fates: Vec<Fate> = peers.into_iter().map(|t| t.join().unwrap()).collect();
    let count = |f: Fate| fates.iter().filter(|x| **x == f).count();
    eprintln!(
        "200 connections: {} card, {} refused, {} pending, {} failed to connect",
        count(Fate::Card),
        count(Fate::Refused),
        count(Fate::Pending),
        count(Fate::NoConnect)
    );
    assert_eq!(count(Fate::Card), 1, "{fates:?}");
    assert_eq!(count(Fate::NoConnect), 0, "{fates:?}");
    wait_card(&bed.readers[0], false, 3 * SECOND);
    bed.assert_healthy("after 200 connections");
    bed.assert_slot_recovers();
    let fds_after = settle_fds(bed.pcscd.pid(), fds_before);
    assert_eq!(fds_after, fds_before, "pcscd's open files before and after");
}

/// One of the 200: a good vicc that answers whatever it is asked until the test
/// stops it (it won the slot: a card) or the driver closes the connection (refused
/// at once, or asked for its ATR and then dropped because another peer won).
fn serve_until_stopped(mut s: TcpStream, stop: &AtomicBool, resolved: &AtomicUsize) -> Fate {
    s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    // Counted as resolved once the driver has spoken to it or closed it.
    let mut asked = false;
    let gone = |asked: bool| {
        if !asked {
            resolved.fetch_add(1, Ordering::Relaxed);
        }
        Fate::Refused
    };
    let mut buf = vec![];
    let mut chunk = [0u8; 512];
    loop {
        if stop.load(Ordering::Relaxed) {
            return if asked { Fate::Card } else { Fate::Pending };
        }
        match s.read(&mut chunk) {
            Ok(0) => return gone(asked),
            Ok(n) => {
                if !asked {
                    asked = true;
                    resolved.fetch_add(1, Ordering::Relaxed);
                }
                buf.extend_from_slice(&chunk[..n]);
                while buf.len() >= 2 {
                    let len = usize::from(u16::from_be_bytes([buf[0], buf[1]]));
                    if buf.len() < 2 + len {
                        break;
                    }
                    let msg: Vec<u8> = buf.drain(..2 + len).skip(2).collect();
                    if msg == [4] {
                        let _ = write_frame(&mut s, TEST_ATR);
                    } else if msg.len() > 1 {
                        let _ = write_frame(&mut s, &echo_reply(&msg));
                    }
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return gone(asked),
        }
    }
}

#[test]
fn the_listen_backlog_holds_a_burst_of_200() {
    let bed = Bed::start();
    // `ss` shows a listening socket's backlog in its Send-Q column.
    let (ok, out) =
        run(std::process::Command::new("ss").args(["-ltnH", &format!("sport = :{}", bed.port)]));
    assert!(ok, "ss: {out}");
    let backlog: usize = out
        .split_whitespace()
        .nth(2)
        .and_then(|q| q.parse().ok())
        .unwrap_or_else(|| panic!("no backlog in {out:?}"));
    assert!(backlog >= 200, "slot 0 listens with a backlog of {backlog}");
}

#[test]
fn a_second_vicc_on_a_busy_slot_is_refused_cleanly() {
    let mut bed = Bed::start();
    let _first = attach_vicc(bed.port, 5 * SECOND);
    wait_card(&bed.readers[0], true, 3 * SECOND);
    let card = connect(&bed.ctx, &bed.readers[0]);
    assert_eq!(transmit(&card, &APDU), Ok(echo_reply(&APDU)));
    for i in 0..20 {
        let mut second = TcpStream::connect(("127.0.0.1", bed.port)).unwrap();
        let addr = second.local_addr().unwrap();
        // Some of them talk before they are refused.
        if i % 2 == 1 {
            let _ = second.write_all(&frame(TEST_ATR));
        }
        second.set_read_timeout(Some(SECOND)).unwrap();
        let start = Instant::now();
        let mut byte = [0u8; 1];
        match second.read(&mut byte) {
            Ok(0) => {}
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {}
            other => panic!("second vicc {i}: expected to be closed, got {other:?}"),
        }
        assert!(start.elapsed() < SECOND);
        // The first refusals are logged; then the slot's log budget holds them back.
        if i < 5 {
            assert!(
                bed.pcscd.wait_log(&format!("refusing vicc {addr}"), SECOND),
                "no refusal logged for {addr}"
            );
        }
        // The first vicc is still the card: same handle, no removal in between.
        assert_eq!(
            transmit(&card, &APDU),
            Ok(echo_reply(&APDU)),
            "first vicc after refusal {i}"
        );
    }
    bed.assert_healthy("after 20 refused viccs");
    let lines = bed.pcscd.log_text().matches("refusing vicc").count();
    assert!(
        (5..=10).contains(&lines),
        "20 refusals cost the log {lines} lines"
    );
}

/// pcscd's open files, threads and resident memory.
#[derive(Debug, Clone, Copy)]
struct ProcStats {
    fds: usize,
    threads: usize,
    rss_kib: usize,
}

fn proc_stats(pid: u32) -> ProcStats {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("/proc/PID/fd")
        .count();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| -> usize {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or_else(|| panic!("{name} in /proc/{pid}/status"))
    };
    ProcStats {
        fds,
        threads: field("Threads:"),
        rss_kib: field("VmRSS:"),
    }
}

/// Waits up to 5 s for pcscd's open file count to come back to `want`.
/// pcscd's open files once the count holds still for 250 ms (at most 5 s): the
/// harness's waits use short-lived PC/SC contexts of their own, and pcscd closes its
/// end of one a moment after the client released it.
fn steady_fds(pid: u32) -> usize {
    let deadline = Instant::now() + 5 * SECOND;
    let mut last = proc_stats(pid).fds;
    let mut same = 0;
    while same < 5 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        let now = proc_stats(pid).fds;
        same = if now == last { same + 1 } else { 0 };
        last = now;
    }
    last
}

fn settle_fds(pid: u32, want: usize) -> usize {
    let deadline = Instant::now() + 5 * SECOND;
    loop {
        let fds = proc_stats(pid).fds;
        if fds == want || Instant::now() > deadline {
            return fds;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// How `n` connect/disconnect cycles went.
#[derive(Debug, Default)]
struct Churn {
    /// Connections that became the card (pcscd started powering them up).
    cards: usize,
    /// Connections the driver closed at once (the slot was still busy).
    refused: usize,
    /// Connections that saw nothing within a second.
    silent: usize,
    took: Duration,
}

/// `n` vicc connections, each waiting for the driver's first move (pcscd's power-up
/// or a refusal) and then leaving, half with a FIN, half with a reset. Waiting keeps
/// the listener's accept queue short: a burst that overflows it only measures the
/// kernel's one-second SYN retransmission.
fn churn(port: u16, n: usize) -> Churn {
    let start = Instant::now();
    let target: SocketAddr = ([127, 0, 0, 1], port).into();
    let mut churn = Churn::default();
    for i in 0..n {
        let mut s = TcpStream::connect_timeout(&target, 5 * SECOND)
            .unwrap_or_else(|e| panic!("cycle {i}: {e}"));
        s.set_read_timeout(Some(SECOND)).unwrap();
        let mut byte = [0u8; 1];
        match s.read(&mut byte) {
            Ok(0) => churn.refused += 1,
            Ok(_) => churn.cards += 1,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                churn.silent += 1
            }
            Err(_) => churn.refused += 1,
        }
        if i % 2 == 1 {
            SockRef::from(&s).set_linger(Some(Duration::ZERO)).unwrap();
        }
        drop(s);
    }
    churn.took = start.elapsed();
    churn
}

#[test]
fn ten_thousand_connect_disconnect_cycles_leak_nothing() {
    let mut bed = Bed::start();
    let pid = bed.pcscd.pid();
    assert_eq!(
        std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .unwrap()
            .trim(),
        "pcscd"
    );
    // Warm up pcscd's and the driver's allocations, then measure.
    churn(bed.port, 500);
    wait_card(&bed.readers[0], false, 3 * SECOND);
    std::thread::sleep(SECOND);
    let before = proc_stats(pid);
    let churned = churn(bed.port, 10_000);
    wait_card(&bed.readers[0], false, 3 * SECOND);
    std::thread::sleep(SECOND);
    let fds = settle_fds(pid, before.fds);
    let after = proc_stats(pid);
    eprintln!("10,000 cycles: {churned:?}; pcscd before {before:?}, after {after:?}");
    assert_eq!(churned.cards + churned.refused + churned.silent, 10_000);
    assert_eq!(
        fds, before.fds,
        "pcscd's open files: before {before:?}, after {after:?}"
    );
    assert_eq!(
        after.threads, before.threads,
        "pcscd's threads: before {before:?}, after {after:?}"
    );
    assert!(
        after.rss_kib <= before.rss_kib + 2048,
        "pcscd's RSS grew by more than 2 MiB: before {before:?}, after {after:?}"
    );
    bed.assert_healthy("after 10,000 cycles");
    bed.assert_slot_recovers();
    let final_stats = proc_stats(pid);
    assert_eq!(
        settle_fds(pid, before.fds),
        before.fds,
        "after recovery: {final_stats:?}"
    );
}
