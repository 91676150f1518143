//! The secure link's cost (docs/TLS.md): a plain and a `tls=yes` reader of the same
//! driver in ONE private pcscd, the same echo vicc (in this process) on each, measured
//! interleaved in the same run:
//!
//! - APDU round trips (SCardTransmit) for 0 B, 255 B, 4 KiB and 64 KiB-ish data;
//! - connect to card present: from the vicc's TCP connect (plus its TLS handshake) to
//!   SCardGetStatusChange reporting the card;
//! - throughput: 64 KiB-ish APDUs back to back for a while, MB/s each way.
//!
//! Prints one Markdown table. `cargo bench -p vpcd-tools --bench tls` (release build;
//! loopback only; pcscd stopped by the harness on exit).

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rustls::{ClientConnection, StreamOwned};
use vpcd_protocol::link::{self, Identity};
use vpcd_protocol::tls::{TrustEntry, TrustList};
use vpcd_protocol::vpcd::{self as protocol, Decoder, Message};
use vpcd_testing::*;

const PLAIN: &str = "Plain PCD";
const SECURE: &str = "Secure PCD";
const SIZES: [(usize, usize); 4] = [(0, 2000), (255, 2000), (4096, 1000), (65528, 300)];
const CONNECTS: usize = 30;
const THROUGHPUT_FOR: Duration = Duration::from_secs(3);

/// An echo card on one connection: answers GET ATR with TEST_ATR, every APDU with
/// itself and 90 00, until the driver closes the connection or `stop`.
fn serve<S: Read + Write>(mut s: S, stop: &AtomicBool) {
    let mut decoder = Decoder::new();
    let mut buf = vec![0u8; 70_000];
    let mut out = Vec::with_capacity(70_000);
    while !stop.load(Ordering::Relaxed) {
        while let Some(frame) = decoder.next_frame() {
            out.clear();
            match Message::parse(&frame) {
                Ok(Message::Control(protocol::Control::GetAtr)) => {
                    protocol::encode(TEST_ATR, &mut out).unwrap();
                }
                Ok(Message::Control(_)) => continue,
                Ok(Message::Apdu(apdu)) => {
                    let reply = echo_reply(apdu);
                    protocol::encode(&reply, &mut out).unwrap();
                }
                Err(_) => continue,
            }
            if s.write_all(&out).is_err() {
                return;
            }
        }
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => decoder.feed(&buf[..n]),
        }
    }
}

/// The TLS side of the bench's vicc.
struct Tls {
    config: Arc<rustls::ClientConfig>,
}

impl Tls {
    fn connect(&self, port: u16) -> io::Result<StreamOwned<ClientConnection, TcpStream>> {
        let tcp = TcpStream::connect(("127.0.0.1", port))?;
        tcp.set_nodelay(true)?;
        let conn = ClientConnection::new(Arc::clone(&self.config), link::server_name())
            .map_err(io::Error::other)?;
        let mut s = StreamOwned::new(conn, tcp);
        while s.conn.is_handshaking() {
            s.conn.complete_io(&mut s.sock)?;
        }
        Ok(s)
    }
}

/// A vicc on `port`, plain or over TLS, served on a thread.
struct Peer {
    stop: Arc<AtomicBool>,
    socket: TcpStream,
    thread: Option<JoinHandle<()>>,
}

impl Peer {
    fn start(port: u16, tls: Option<&Tls>) -> Peer {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let (socket, thread) = match tls {
            None => {
                let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
                s.set_nodelay(true).unwrap();
                let socket = s.try_clone().unwrap();
                (socket, std::thread::spawn(move || serve(s, &flag)))
            }
            Some(tls) => {
                let s = tls.connect(port).unwrap();
                let socket = s.sock.try_clone().unwrap();
                (socket, std::thread::spawn(move || serve(s, &flag)))
            }
        };
        Peer {
            stop,
            socket,
            thread: Some(thread),
        }
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.socket.shutdown(std::net::Shutdown::Both);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn median_p99(mut v: Vec<Duration>) -> (Duration, Duration) {
    v.sort();
    (v[v.len() / 2], v[(v.len() * 99 / 100).min(v.len() - 1)])
}

fn fmt(d: Duration) -> String {
    let us = d.as_secs_f64() * 1e6;
    if us < 1000.0 {
        format!("{us:.0} µs")
    } else {
        format!("{:.2} ms", us / 1000.0)
    }
}

fn main() {
    let tmp = temp_dir("bench-tls");
    let dir = tmp.path();
    let reader_key = vpcd_tools::keys::generate().unwrap();
    let vicc_key = vpcd_tools::keys::generate().unwrap();
    let reader_id = Identity::from_key_file(&reader_key).unwrap();
    let vicc_id = Identity::from_key_file(&vicc_key).unwrap();
    let trust = |fp| TrustList {
        entries: vec![TrustEntry {
            fingerprint: fp,
            name: "bench".into(),
        }],
    };
    std::fs::write(dir.join("key.pem"), reader_key.to_pem()).unwrap();
    std::fs::write(dir.join("trusted"), trust(vicc_id.fingerprint).to_text()).unwrap();
    std::env::set_var("VPCD_TLS_DIR", dir);
    let tls = Tls {
        config: link::client_config(&vicc_id, trust(reader_id.fingerprint)).unwrap(),
    };

    let port = free_ports(2);
    // Minutes by design, and a deadline of its own: no test watchdog.
    let pcscd = Pcscd::builder()
        .watchdog(false)
        .debug_log(false)
        .entries(&[
            Entry::device(PLAIN, &format!("/dev/null:{port}/slots=1/listen=127.0.0.1")),
            Entry::device(
                SECURE,
                &format!("/dev/null:{}/slots=1/listen=127.0.0.1/tls=yes", port + 1),
            ),
        ])
        .start();
    let plain = reader_name(PLAIN, 0, 0);
    let secure = reader_name(SECURE, 1, 0);
    pcscd.wait_readers(&[plain.clone(), secure.clone()]);
    let ctx = pcscd.context();

    // Connect to card present, alternating.
    let mut present = [vec![], vec![]];
    for _ in 0..CONNECTS {
        for (i, (reader, tls)) in [(&plain, None), (&secure, Some(&tls))]
            .into_iter()
            .enumerate()
        {
            let start = Instant::now();
            let peer = Peer::start(port + i as u16, tls);
            wait_card(reader, true, Duration::from_secs(5));
            present[i].push(start.elapsed());
            drop(peer);
            wait_card(reader, false, Duration::from_secs(5));
        }
    }

    let _plain_peer = Peer::start(port, None);
    let _secure_peer = Peer::start(port + 1, Some(&tls));
    wait_card(&plain, true, Duration::from_secs(5));
    wait_card(&secure, true, Duration::from_secs(5));
    let cards = [connect(&ctx, &plain), connect(&ctx, &secure)];

    // Round trips, interleaved in rounds of 10 so drift hits both alike.
    let mut rows = vec![];
    for (size, iterations) in SIZES {
        let apdu = if size == 0 {
            vec![0x80, 0xEE, 0x00, 0x00]
        } else {
            extended_apdu(size)
        };
        let mut samples = [vec![], vec![]];
        for card in &cards {
            for _ in 0..20 {
                transmit(card, &apdu).unwrap();
            }
        }
        for _ in 0..iterations / 10 {
            for (i, card) in cards.iter().enumerate() {
                for _ in 0..10 {
                    let start = Instant::now();
                    let reply = transmit(card, &apdu).unwrap();
                    samples[i].push(start.elapsed());
                    assert_eq!(reply.len(), apdu.len().min(65533) + 2);
                }
            }
        }
        let [p, s] = samples.map(median_p99);
        rows.push(format!(
            "| APDU round trip, {size} B data | {} (p99 {}) | {} (p99 {}) | {:.2}x |",
            fmt(p.0),
            fmt(p.1),
            fmt(s.0),
            fmt(s.1),
            s.0.as_secs_f64() / p.0.as_secs_f64()
        ));
    }
    let [p, s] = present.map(median_p99);
    rows.push(format!(
        "| connect to card present ({CONNECTS}x) | {} (p99 {}) | {} (p99 {}) incl. handshake | {:.2}x |",
        fmt(p.0),
        fmt(p.1),
        fmt(s.0),
        fmt(s.1),
        s.0.as_secs_f64() / p.0.as_secs_f64()
    ));
    let big = extended_apdu(65528);
    let mut rates = [0.0f64; 2];
    for (i, card) in cards.iter().enumerate() {
        let start = Instant::now();
        let mut bytes = 0usize;
        while start.elapsed() < THROUGHPUT_FOR {
            bytes += transmit(card, &big).unwrap().len() + big.len();
        }
        rates[i] = bytes as f64 / start.elapsed().as_secs_f64() / 1e6;
    }
    rows.push(format!(
        "| throughput, 64 KiB APDUs (both ways) | {:.1} MB/s | {:.1} MB/s | {:.2}x |",
        rates[0],
        rates[1],
        rates[0] / rates[1]
    ));
    println!("| measure | plain | tls=yes | secure/plain (time) |");
    println!("|---|---|---|---|");
    for row in rows {
        println!("{row}");
    }
}
