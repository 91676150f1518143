//! APDU round trips: ours, the C driver's and the floors (SCardStatus, SCardGetAttrib,
//! a framed loopback TCP echo), measured in interleaved blocks; and the statistics of
//! a set of samples.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use pcsc::{Attribute, Card};
use vpcd_testing::{echo_reply, extended_apdu, Behaviour, Vicc};

use crate::units::us;

#[derive(Clone, Copy, Default)]
pub struct Stats {
    pub median: Duration,
    pub p99: Duration,
    pub max: Duration,
    pub mean: Duration,
}

#[derive(Default)]
pub struct Samples(pub Vec<Duration>);

impl Samples {
    pub fn stats(&self) -> Stats {
        let mut v = self.0.clone();
        assert!(!v.is_empty());
        v.sort();
        let p99 = ((v.len() as f64 * 0.99).ceil() as usize).clamp(1, v.len()) - 1;
        Stats {
            median: v[v.len() / 2],
            p99: v[p99],
            max: v[v.len() - 1],
            mean: v.iter().sum::<Duration>() / v.len() as u32,
        }
    }
}

/// An APDU with `n` command data bytes: case 1 for 0, short case 3 up to 255,
/// extended case 3 above.
pub fn apdu_with(n: usize) -> Vec<u8> {
    match n {
        0 => vec![0x80, 0xEE, 0x00, 0x00],
        1..=255 => {
            let mut a = vec![0x80, 0xEE, 0x00, 0x00, n as u8];
            a.extend((0..n).map(|i| (i * 7 + 3) as u8));
            a
        }
        _ => extended_apdu(n),
    }
}

/// Round trips of one APDU size through our driver and of the floors.
pub struct SizeRtt {
    pub ours: Samples,
    pub status: Samples,
    pub attrib: Samples,
    pub tcp: Samples,
    /// The C driver's round trips, measured in the same rounds.
    pub c: Samples,
    /// Rescheduling and function-call IPIs (cross-CPU wakeups, system-wide) during
    /// the blocks of ours, status, attrib and tcp.
    pub ipis: [u64; 4],
}

impl SizeRtt {
    /// IPIs per round trip of ours, status, attrib and tcp.
    pub fn ipis_per_op(&self) -> [f64; 4] {
        let n =
            [&self.ours, &self.status, &self.attrib, &self.tcp].map(|s| s.0.len().max(1) as f64);
        [0, 1, 2, 3].map(|k| self.ipis[k] as f64 / n[k])
    }
}

/// Rescheduling and function-call interrupts of all CPUs so far: each is a thread
/// woken (or work sent) across CPUs.
pub fn ipis() -> u64 {
    let text = std::fs::read_to_string("/proc/interrupts").unwrap_or_default();
    text.lines()
        .filter(|l| matches!(l.split_whitespace().next(), Some("RES:" | "CAL:")))
        .flat_map(|l| {
            l.split_whitespace()
                .skip(1)
                .map_while(|w| w.parse::<u64>().ok())
        })
        .sum()
}

pub const BLOCK: usize = 100;

/// Measures ours, SCardStatus, SCardGetAttrib and the TCP echo in turns of BLOCK
/// iterations each, after a warm-up of each.
pub fn interleaved_rtt(
    card: &Card,
    c: Option<(&Card, usize)>,
    echo: &mut EchoPeer,
    apdu: &[u8],
    iters: usize,
) -> SizeRtt {
    let expect = echo_reply(apdu);
    let mut buf = vec![0u8; pcsc::MAX_BUFFER_SIZE_EXTENDED];
    let (mut names, mut atr, mut attr) = ([0u8; 256], [0u8; 64], [0u8; 256]);
    let mut r = SizeRtt {
        ours: Samples::default(),
        status: Samples::default(),
        attrib: Samples::default(),
        tcp: Samples::default(),
        c: Samples::default(),
        ipis: [0; 4],
    };
    let rounds = iters.div_ceil(BLOCK);
    for round in 0..=rounds {
        let n = if round == 0 {
            BLOCK / 5
        } else {
            BLOCK.min(iters - (round - 1) * BLOCK)
        };
        // Round 0 warms up and is not kept.
        let keep = |s: &mut Samples, t: Duration| {
            if round > 0 {
                s.0.push(t);
            }
        };
        let count_ipis = |total: &mut u64, before: u64| {
            if round > 0 {
                *total += ipis().saturating_sub(before);
            }
        };
        let i0 = ipis();
        for _ in 0..n {
            let t = Instant::now();
            let reply = card.transmit(apdu, &mut buf).expect("transmit");
            keep(&mut r.ours, t.elapsed());
            assert_eq!(reply.len(), expect.len());
        }
        count_ipis(&mut r.ipis[0], i0);
        let i0 = ipis();
        for _ in 0..n {
            let t = Instant::now();
            card.status2(&mut names, &mut atr).expect("SCardStatus");
            keep(&mut r.status, t.elapsed());
        }
        count_ipis(&mut r.ipis[1], i0);
        let i0 = ipis();
        for _ in 0..n {
            let t = Instant::now();
            card.get_attribute(Attribute::AtrString, &mut attr)
                .expect("SCardGetAttrib");
            keep(&mut r.attrib, t.elapsed());
        }
        count_ipis(&mut r.ipis[2], i0);
        let i0 = ipis();
        for _ in 0..n {
            let t = Instant::now();
            let len = echo.round_trip(apdu);
            keep(&mut r.tcp, t.elapsed());
            assert_eq!(len, expect.len());
        }
        count_ipis(&mut r.ipis[3], i0);
        // The C driver, a few at a time (it takes 44 ms for most APDUs).
        if let Some((c_card, c_iters)) = c {
            let n = if round == 0 {
                1
            } else {
                c_iters.div_ceil(rounds)
            };
            for _ in 0..n {
                let t = Instant::now();
                let reply = c_card.transmit(apdu, &mut buf).expect("transmit (C)");
                keep(&mut r.c, t.elapsed());
                assert_eq!(reply, &expect[..], "C driver's echo");
            }
        }
    }
    assert_eq!(&buf[..expect.len()], &expect[..]);
    assert_eq!(&echo.reply[..expect.len()], &expect[..]);
    eprintln!(
        "relay bench: {} B APDU: ours mean {}, status mean {}, attrib mean {}, tcp mean {}",
        apdu.len(),
        us(r.ours.stats().mean),
        us(r.status.stats().mean),
        us(r.attrib.stats().mean),
        us(r.tcp.stats().mean)
    );
    r
}

/// A framed loopback TCP echo: the same frames as the driver sends, to the same echo
/// vicc code; one write per frame, a read of the header, then of the payload.
pub struct EchoPeer {
    pub client: TcpStream,
    pub _server: Vicc,
    pub frame: Vec<u8>,
    pub reply: Vec<u8>,
}

impl EchoPeer {
    pub fn new() -> EchoPeer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        client.set_nodelay(true).unwrap();
        let (server, _) = listener.accept().unwrap();
        EchoPeer {
            client,
            _server: Vicc::serve(server, Behaviour::Echo),
            frame: Vec::new(),
            reply: vec![0u8; 65535],
        }
    }

    pub fn round_trip(&mut self, apdu: &[u8]) -> usize {
        self.frame.clear();
        self.frame
            .extend_from_slice(&(apdu.len() as u16).to_be_bytes());
        self.frame.extend_from_slice(apdu);
        self.client.write_all(&self.frame).unwrap();
        let mut header = [0u8; 2];
        self.client.read_exact(&mut header).unwrap();
        let len = u16::from_be_bytes(header) as usize;
        self.client.read_exact(&mut self.reply[..len]).unwrap();
        len
    }
}
