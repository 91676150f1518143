//! A peer is a card only once it has proven it: peers that connect and then stay
//! silent or answer GET ATR badly never make a PC/SC client wait, and a reader's
//! allow list keeps other addresses out.
//!
//! Every case runs one pcscd with two readers: "Unproven PCD" (default timeout, the
//! peer under test on its slot 0) and "Other PCD" with a good card. OpenSC asks every
//! reader for its features when it starts (SCardControl, which waits for a reader's
//! lock), so `opensc-tool -l` and an OpenSC call on the other reader are what a
//! stalled slot would hold up.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use socket2::{Domain, Socket, Type};
use vpcd_testing::*;

/// How fast OpenSC must answer while a peer misbehaves.
const BOUND: Duration = Duration::from_secs(1);
const UNPROVEN: &str = "Unproven PCD";
const OTHER: &str = "Other PCD";

struct Bed {
    pcscd: Pcscd,
    port: u16,
    other_reader: String,
    _card: Vicc,
}

impl Bed {
    fn start(options: &str) -> Bed {
        let port = free_ports(3);
        let pcscd = Pcscd::start(&[
            Entry::device(UNPROVEN, &format!("/dev/null:{port}/slots=2{options}")),
            Entry::device(OTHER, &format!("/dev/null:{}/slots=1", port + 2)),
        ]);
        let other_reader = reader_name(OTHER, 1, 0);
        pcscd.wait_readers(&[
            reader_name(UNPROVEN, 0, 0),
            reader_name(UNPROVEN, 0, 1),
            other_reader.clone(),
        ]);
        let card = Vicc::connect(port + 2, Behaviour::Echo);
        wait_card(&other_reader, true, 3 * BOUND);
        Bed {
            pcscd,
            port,
            other_reader,
            _card: card,
        }
    }

    /// `opensc-tool -l` and `opensc-tool -r OTHER -a`: how long each took.
    fn opensc_round(&self) -> (Duration, Duration) {
        let timed = |args: &[&str]| {
            let start = Instant::now();
            let (ok, out) = run(Command::new("opensc-tool").args(args));
            let took = start.elapsed();
            assert!(ok, "opensc-tool {args:?}:\n{out}");
            (took, out)
        };
        let (list, out) = timed(&["-l"]);
        assert!(out.contains(&self.other_reader), "opensc-tool -l:\n{out}");
        let (atr, out) = timed(&["-r", &self.other_reader, "-a"]);
        assert!(
            out.to_lowercase().contains(&hex_colon(TEST_ATR)),
            "opensc-tool -a:\n{out}"
        );
        (list, atr)
    }

    fn assert_no_card_in_slot_0(&self) {
        wait_card(&reader_name(UNPROVEN, 0, 0), false, BOUND);
    }
}

fn hex_colon(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// A peer on `port` that sends `bytes` as its answer to GET ATR, then stays
/// connected and silent until the driver or the test closes it.
struct BadPeer {
    stream: TcpStream,
}

impl BadPeer {
    fn connect(port: u16, bytes: &[u8]) -> BadPeer {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        stream.set_nodelay(true).unwrap();
        if !bytes.is_empty() {
            let _ = stream.write_all(bytes);
        }
        BadPeer { stream }
    }

    /// Whether the driver has closed the connection (waits up to `within`).
    fn closed_within(&mut self, within: Duration) -> bool {
        self.stream.set_read_timeout(Some(within)).unwrap();
        let mut sink = [0u8; 64];
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            match self.stream.read(&mut sink) {
                Ok(0) => return true,
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
                Err(_) => return false,
            }
        }
        false
    }
}

#[test]
fn opensc_never_waits_for_a_peer_that_has_not_proven_itself() {
    let bed = Bed::start("");
    let mut oversized = vec![0x3B];
    oversized.extend([0u8; 33]);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("silent", vec![]),
        ("one byte", vec![0x00]),
        ("0xFFFF length", vec![0xFF, 0xFF]),
        ("random bytes", noise(7, 200)),
        ("ATR empty", vec![0x00, 0x00]),
        ("ATR oversized", frame(&oversized)),
        ("ATR bad TS", frame(&[0x00, 0x80, 0x80, 0x01, 0x01])),
    ];
    let mut report = vec![];
    for (label, bytes) in cases {
        let mut peer = BadPeer::connect(bed.port, &bytes);
        let (list, atr) = bed.opensc_round();
        bed.assert_no_card_in_slot_0();
        eprintln!("[{label}] opensc-tool -l {list:?}, -a on another reader {atr:?}");
        report.push(format!("{label}: -l {list:.0?}, -a {atr:.0?}"));
        assert!(list < BOUND, "{label}: opensc-tool -l took {list:?}");
        assert!(atr < BOUND, "{label}: opensc-tool -a took {atr:?}");
        // Refused at once, or dropped when the probe runs out (5 s): never a card.
        assert!(
            peer.closed_within(Duration::from_secs(7)),
            "{label}: the driver kept the peer"
        );
        bed.assert_no_card_in_slot_0();
    }
    eprintln!("{}", report.join("\n"));
    let inserted = bed.pcscd.log_text().matches("card inserted").count();
    assert_eq!(inserted, 1, "only the other reader's card was inserted");
}

#[test]
fn silent_peers_reconnecting_for_a_minute_never_delay_opensc() {
    let secs: u64 = std::env::var("VPCD_LOOP_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let bed = Bed::start("");
    let stop = Arc::new(AtomicBool::new(false));
    let connections = Arc::new(AtomicU32::new(0));
    // Four silent peers, each reconnecting as soon as it is dropped, and one that
    // connects and leaves again and again.
    let mut loops: Vec<_> = (0..4)
        .map(|_| {
            let (stop, connections, port) = (stop.clone(), connections.clone(), bed.port);
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
                        continue;
                    };
                    connections.fetch_add(1, Ordering::Relaxed);
                    s.set_read_timeout(Some(Duration::from_millis(100)))
                        .unwrap();
                    let mut sink = [0u8; 16];
                    while !stop.load(Ordering::Relaxed) {
                        match s.read(&mut sink) {
                            Ok(0) => break,
                            Ok(_) => {}
                            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
                            Err(_) => break,
                        }
                    }
                }
            })
        })
        .collect();
    {
        let (stop, connections, port) = (stop.clone(), connections.clone(), bed.port);
        loops.push(std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    connections.fetch_add(1, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }));
    }
    let start = Instant::now();
    let (mut worst, mut rounds) = (Duration::ZERO, 0);
    while start.elapsed() < Duration::from_secs(secs) {
        let (list, atr) = bed.opensc_round();
        worst = worst.max(list).max(atr);
        rounds += 1;
        assert!(
            list < BOUND && atr < BOUND,
            "after {:?}: opensc-tool -l {list:?}, -a {atr:?}",
            start.elapsed()
        );
        bed.assert_no_card_in_slot_0();
    }
    stop.store(true, Ordering::Relaxed);
    for t in loops {
        t.join().unwrap();
    }
    let log = bed.pcscd.log_text();
    let peer_lines = log.lines().filter(|l| l.contains("lun 0x0 ")).count();
    eprintln!(
        "{secs} s, {} connections: {rounds} OpenSC rounds, slowest call {worst:?}; \
         {peer_lines} log lines about slot 0",
        connections.load(Ordering::Relaxed)
    );
    // The log budget: 10 lines a minute about peers, whatever they do.
    let budget = 10 * (secs / 60 + 1) as usize + 10;
    let peer_warnings = log
        .lines()
        .filter(|l| l.contains("lun 0x0 ") && (l.contains("not a card") || l.contains("refusing")))
        .count();
    assert!(
        peer_warnings <= budget,
        "{peer_warnings} log lines about misbehaving peers"
    );
}

/// A vicc that takes `atr_delay` to answer GET ATR and `apdu_delay` for an APDU.
fn slow_vicc(port: u16, atr_delay: Duration, apdu_delay: Duration, stop: Arc<AtomicBool>) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut buf = vec![];
    let mut chunk = [0u8; 4096];
    while !stop.load(Ordering::Relaxed) {
        match s.read(&mut chunk) {
            Ok(0) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(_) => continue,
        }
        while buf.len() >= 2 {
            let len = usize::from(u16::from_be_bytes([buf[0], buf[1]]));
            if buf.len() < 2 + len {
                break;
            }
            let msg: Vec<u8> = buf.drain(..2 + len).skip(2).collect();
            if msg == [4] {
                std::thread::sleep(atr_delay);
                let _ = write_frame(&mut s, TEST_ATR);
            } else if msg.len() > 1 {
                std::thread::sleep(apdu_delay);
                let _ = write_frame(&mut s, &echo_reply(&msg));
            }
        }
    }
}

#[test]
fn a_slow_but_honest_vicc_still_works() {
    let bed = Bed::start("");
    let stop = Arc::new(AtomicBool::new(false));
    let port = bed.port;
    let vicc = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            slow_vicc(port, Duration::from_secs(2), Duration::from_secs(5), stop)
        })
    };
    let started = Instant::now();
    // While it takes its time to answer GET ATR, OpenSC does not wait for it.
    let (list, atr) = bed.opensc_round();
    assert!(list < BOUND && atr < BOUND, "-l {list:?}, -a {atr:?}");
    let ctx = bed.pcscd.context();
    let reader = reader_name(UNPROVEN, 0, 0);
    wait_card(&reader, true, Duration::from_secs(10));
    let seen = started.elapsed();
    assert!(seen >= Duration::from_secs(2), "card seen after {seen:?}");
    let card = connect(&ctx, &reader);
    let apdu = [0x00, 0xB0, 0x00, 0x00, 0x10];
    let sent = Instant::now();
    assert_eq!(transmit(&card, &apdu), Ok(echo_reply(&apdu)));
    let took = sent.elapsed();
    eprintln!("slow vicc: card after {seen:?}, APDU answered after {took:?}");
    assert!(took >= Duration::from_secs(5), "{took:?}");
    drop(card);
    stop.store(true, Ordering::Relaxed);
    vicc.join().unwrap();
}

/// A good vicc connecting from `source` (any loopback address works on Linux).
fn vicc_from(source: IpAddr, to: SocketAddr) -> Vicc {
    let socket = Socket::new(Domain::for_address(to), Type::STREAM, None).unwrap();
    socket.bind(&SocketAddr::new(source, 0).into()).unwrap();
    socket.connect(&to.into()).expect("connect");
    Vicc::serve(socket.into(), Behaviour::Echo)
}

#[test]
fn the_allow_list_refuses_other_addresses_and_takes_allowed_ones() {
    let bed = Bed::start("/listen=::/allow=127.0.0.2/allow=::1");
    let ctx = bed.pcscd.context();
    let reader = reader_name(UNPROVEN, 0, 0);
    let to: SocketAddr = ([127, 0, 0, 1], bed.port).into();

    // 127.0.0.3 is not on the list: closed at once, logged, never a card.
    let mut refused = BadPeer {
        stream: {
            let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
            socket
                .bind(&SocketAddr::from(([127, 0, 0, 3], 0)).into())
                .unwrap();
            socket.connect(&to.into()).unwrap();
            socket.into()
        },
    };
    assert!(refused.closed_within(BOUND), "127.0.0.3 was not refused");
    assert!(bed.pcscd.wait_log("127.0.0.3", BOUND));
    assert!(bed
        .pcscd
        .log_text()
        .lines()
        .any(|l| l.contains("127.0.0.3") && l.contains("not in the reader's allow list")));
    bed.assert_no_card_in_slot_0();

    // 127.0.0.2 is: its card works.
    let allowed = vicc_from([127, 0, 0, 2].into(), to);
    wait_card(&reader, true, 3 * BOUND);
    let card = connect(&ctx, &reader);
    let apdu = [0x00, 0xB0, 0x00, 0x00, 0x04];
    assert_eq!(transmit(&card, &apdu), Ok(echo_reply(&apdu)));
    drop(card);
    allowed.disconnect();
    wait_card(&reader, false, 3 * BOUND);

    // So is ::1, through the dual-stack listener.
    let v6 = vicc_from(
        "::1".parse().unwrap(),
        SocketAddr::new("::1".parse().unwrap(), bed.port),
    );
    wait_card(&reader, true, 3 * BOUND);
    v6.disconnect();
}
