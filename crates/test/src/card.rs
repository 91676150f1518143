//! A card the test implements ([`Card`]), served to its slot from a thread of the
//! test process: this module is the vicc, speaking the vpcd protocol (through
//! `vpcd-protocol`'s codec) for the card, so that a test needs no separate vicc.
//!
//! Removal and insertion work as for a real vicc: the connection to the slot closes
//! (the driver reports the card gone at once) and opens again (the driver asks for
//! the ATR and reports the card present). The card object stays the same across
//! them, like a card pulled out and put back.

use std::io::{self, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use vpcd_protocol::vpcd::{self as protocol, Control, Message};

/// A smart card implemented by the test: what the reader asks of a card in the vpcd
/// protocol. The methods run on the slot's serving thread, one call at a time.
///
/// A panic in a method is caught: the card leaves the reader (its connection
/// closes) and the lease panics with the message when it is dropped, so the test
/// fails with the card's own words.
pub trait Card: Send + 'static {
    /// The Answer To Reset the reader gets (1 to 33 bytes, starting 3B or 3F).
    fn atr(&mut self) -> Vec<u8>;

    /// The reader powers the card (before the first command, after a power off).
    fn power_on(&mut self) {}

    /// The reader cuts the power (pcscd does this a moment after the last client
    /// left): volatile state such as a selected application or a verified PIN goes.
    fn power_off(&mut self) {}

    /// A warm reset (SCardReconnect with SCARD_RESET_CARD, or a reset by pcscd).
    fn reset(&mut self) {}

    /// One command APDU; the response must end with the status word SW1 SW2.
    fn transmit(&mut self, apdu: &[u8]) -> Vec<u8>;
}

/// The ATR of a card without particular needs: direct convention, T=1, the
/// historical bytes "vpcd", and the check byte T=1 requires.
pub const DEFAULT_ATR: [u8; 9] = [0x3B, 0x84, 0x80, 0x01, b'v', b'p', b'c', b'd', 0x04];

/// What happened to a served card, shared between its thread and its handle.
#[derive(Debug, Default)]
struct State {
    /// The card should be in the reader.
    inserted: bool,
    /// The handle asked the thread to end.
    stop: bool,
    /// The current connection (a clone, to close it from the handle).
    connection: Option<TcpStream>,
    /// The handle closed the current connection: its end is a removal, even if an
    /// insertion comes before the thread sees the end.
    closed: bool,
    /// Connections made so far, to wait for the next one.
    connections: u64,
    /// The card misbehaved or the reader went away: the first such problem.
    failure: Option<String>,
}

#[derive(Debug, Default)]
struct Shared {
    state: Mutex<State>,
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn fail(&self, why: String) {
        let mut s = self.lock();
        s.failure.get_or_insert(why);
        s.inserted = false;
        self.changed.notify_all();
    }
}

/// How long the slot's port may refuse connections (a driver not yet listening)
/// before serving gives up.
const CONNECT_WAIT: Duration = Duration::from_secs(5);

/// A card served to a slot. Dropping it takes the card out and ends the thread.
pub struct Served {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Served {
    /// Starts serving `card` to the slot at `addr` (the card is inserted: the thread
    /// connects at once).
    pub fn start<C: Card>(addr: SocketAddr, card: C) -> Served {
        let shared = Arc::new(Shared::default());
        shared.lock().inserted = true;
        let thread = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name(format!("vpcd-test card {}", addr.port()))
                .spawn(move || run(addr, Box::new(card), &shared))
                .expect("start a card thread")
        };
        Served {
            shared,
            thread: Some(thread),
        }
    }

    /// Takes the card out: returns once its connection is closed (the reader may
    /// report the removal a moment later: wait for it with the slot's
    /// `wait_absent`).
    pub fn remove(&self) {
        let mut s = self.shared.lock();
        s.inserted = false;
        if let Some(c) = s.connection.take() {
            s.closed = true;
            let _ = c.shutdown(Shutdown::Both);
        }
        self.shared.changed.notify_all();
    }

    /// Puts the card back: returns once it is connected to the slot again.
    pub fn insert(&self) -> Result<(), String> {
        let mut s = self.shared.lock();
        if let Some(f) = &s.failure {
            return Err(f.clone());
        }
        if s.inserted {
            return Ok(());
        }
        let before = s.connections;
        s.inserted = true;
        self.shared.changed.notify_all();
        let deadline = Instant::now() + CONNECT_WAIT * 2;
        while s.connections == before && s.failure.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err("the card did not connect to its slot again".into());
            }
            s = self
                .shared
                .changed
                .wait_timeout(s, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        match &s.failure {
            Some(f) => Err(f.clone()),
            None => Ok(()),
        }
    }

    /// What went wrong with the card, if anything: a panic in one of its methods, a
    /// reply without status word, a slot that refused it.
    pub fn failure(&self) -> Option<String> {
        self.shared.lock().failure.clone()
    }

    /// Takes the card out for good and ends its thread; returns [`Served::failure`].
    pub fn stop(&mut self) -> Option<String> {
        {
            let mut s = self.shared.lock();
            s.stop = true;
            s.inserted = false;
            if let Some(c) = s.connection.take() {
                s.closed = true;
                let _ = c.shutdown(Shutdown::Both);
            }
            self.shared.changed.notify_all();
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.failure()
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The card's thread: connect while inserted, serve, wait for the next insertion.
fn run(addr: SocketAddr, mut card: Box<dyn Card>, shared: &Shared) {
    loop {
        {
            let mut s = shared.lock();
            while !s.inserted && !s.stop {
                s = shared.changed.wait(s).unwrap_or_else(|e| e.into_inner());
            }
            if s.stop {
                return;
            }
        }
        let mut stream = match connect(addr, shared) {
            Ok(Some(stream)) => stream,
            Ok(None) => continue, // removed or stopped while connecting
            Err(e) => {
                shared.fail(format!("cannot connect to the slot at {addr}: {e}"));
                continue;
            }
        };
        {
            let mut s = shared.lock();
            if !s.inserted || s.stop {
                continue;
            }
            s.connection = stream.try_clone().ok();
            s.connections += 1;
            shared.changed.notify_all();
        }
        let outcome = serve(&mut stream, card.as_mut());
        let mut s = shared.lock();
        s.connection = None;
        let ours = std::mem::take(&mut s.closed) || !s.inserted || s.stop;
        drop(s);
        match outcome {
            // We closed it (removal): the reader reads that as the card going.
            _ if ours => {}
            Ok(()) => shared.fail(format!(
                "the reader at {addr} closed the connection (pcscd ended, or the \
                 driver refused the card: see pcscd's log)"
            )),
            Err(e) => shared.fail(e),
        }
    }
}

/// Connects, retrying while the port refuses; `None` if the card was taken out
/// or stopped meanwhile.
fn connect(addr: SocketAddr, shared: &Shared) -> io::Result<Option<TcpStream>> {
    let deadline = Instant::now() + CONNECT_WAIT;
    let mut pause = Duration::from_millis(2);
    loop {
        match TcpStream::connect(addr) {
            Ok(s) => {
                let _ = s.set_nodelay(true);
                return Ok(Some(s));
            }
            Err(e) if e.kind() == ErrorKind::ConnectionRefused && Instant::now() < deadline => {
                let s = shared.lock();
                if !s.inserted || s.stop {
                    return Ok(None);
                }
                // The only wait without an event: a port nobody listens on yet
                // tells nobody when it starts to.
                let _ = shared
                    .changed
                    .wait_timeout(s, pause)
                    .unwrap_or_else(|e| e.into_inner());
                pause = (pause * 2).min(Duration::from_millis(100));
            }
            Err(e) => return Err(e),
        }
    }
}

/// Serves one connection until it closes: `Ok` when the reader (or our removal)
/// closed it, `Err` with the reason when the card or the peer broke the protocol.
fn serve(stream: &mut TcpStream, card: &mut dyn Card) -> Result<(), String> {
    let mut out = Vec::with_capacity(protocol::HEADER_LEN + 258);
    loop {
        let payload = match read_frame(stream) {
            Ok(Some(p)) => p,
            Ok(None) => return Ok(()),
            // Our own shutdown of a removal shows as a reset or broken connection.
            Err(_) => return Ok(()),
        };
        let message = Message::parse(&payload)
            .map_err(|e| format!("the reader sent what is no vpcd message: {e}"))?;
        let reply = match message {
            Message::Control(control) => {
                let call = AssertUnwindSafe(|| match control {
                    Control::PowerOff => {
                        card.power_off();
                        None
                    }
                    Control::PowerOn => {
                        card.power_on();
                        None
                    }
                    Control::Reset => {
                        card.reset();
                        None
                    }
                    Control::GetAtr => Some(card.atr()),
                });
                let reply = catch_unwind(call)
                    .map_err(|p| format!("the card panicked in {control:?}: {}", text(&p)))?;
                if let Some(atr) = &reply {
                    protocol::check_atr(atr).map_err(|e| format!("the card's ATR: {e}"))?;
                }
                reply
            }
            Message::Apdu(apdu) => {
                let response =
                    catch_unwind(AssertUnwindSafe(|| card.transmit(apdu))).map_err(|p| {
                        format!(
                            "the card panicked in transmit({}): {}",
                            vpcd_protocol::hex(apdu),
                            text(&p)
                        )
                    })?;
                protocol::check_reply(response.len(), protocol::MAX_PAYLOAD).map_err(|e| {
                    format!("the card's response to {}: {e}", vpcd_protocol::hex(apdu))
                })?;
                Some(response)
            }
        };
        if let Some(reply) = reply {
            out.clear();
            protocol::encode(&reply, &mut out).map_err(|e| e.to_string())?;
            if stream.write_all(&out).is_err() {
                return Ok(());
            }
        }
    }
}

/// One frame's payload; `None` at the end of the connection. The length prefix
/// bounds it at 65535 bytes.
fn read_frame(stream: &mut TcpStream) -> io::Result<Option<Vec<u8>>> {
    let mut prefix = [0u8; protocol::HEADER_LEN];
    match stream.read_exact(&mut prefix) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let mut payload = vec![0u8; protocol::payload_len(prefix)];
    stream.read_exact(&mut payload)?;
    Ok(Some(payload))
}

fn text(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".into())
}

#[cfg(test)]
mod tests {
    //! The protocol side against a scripted reader (a listening socket here); the
    //! real reader, pcscd with the driver, is in tests/.
    use super::*;
    use std::net::TcpListener;

    struct Echo {
        log: Arc<Mutex<Vec<String>>>,
    }

    impl Card for Echo {
        fn atr(&mut self) -> Vec<u8> {
            DEFAULT_ATR.to_vec()
        }
        fn power_on(&mut self) {
            self.log.lock().unwrap().push("on".into());
        }
        fn power_off(&mut self) {
            self.log.lock().unwrap().push("off".into());
        }
        fn reset(&mut self) {
            self.log.lock().unwrap().push("reset".into());
        }
        fn transmit(&mut self, apdu: &[u8]) -> Vec<u8> {
            match apdu {
                [0xFF, ..] => panic!("told to panic"),
                [0xEE, ..] => vec![0x90],
                _ => [apdu, &[0x90, 0x00]].concat(),
            }
        }
    }

    fn send(s: &mut TcpStream, payload: &[u8]) {
        let mut out = vec![];
        protocol::encode(payload, &mut out).unwrap();
        s.write_all(&out).unwrap();
    }

    fn reply(s: &mut TcpStream) -> Vec<u8> {
        read_frame(s).unwrap().expect("a reply")
    }

    fn reader() -> (TcpListener, SocketAddr) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let a = l.local_addr().unwrap();
        (l, a)
    }

    #[test]
    fn the_default_atr_is_valid_with_its_check_byte() {
        protocol::check_atr(&DEFAULT_ATR).unwrap();
        assert_eq!(DEFAULT_ATR[1..].iter().fold(0, |x, b| x ^ b), 0);
    }

    #[test]
    fn answers_the_reader_and_follows_removal_and_insertion() {
        let (listener, addr) = reader();
        let log = Arc::new(Mutex::new(vec![]));
        let mut served = Served::start(addr, Echo { log: log.clone() });
        let (mut s, _) = listener.accept().unwrap();
        send(&mut s, &[Control::GetAtr as u8]);
        assert_eq!(reply(&mut s), DEFAULT_ATR);
        send(&mut s, &[Control::PowerOn as u8]);
        send(&mut s, &[Control::Reset as u8]);
        send(&mut s, &[0x00, 0xA4, 0x04, 0x00]);
        assert_eq!(reply(&mut s), [0x00, 0xA4, 0x04, 0x00, 0x90, 0x00]);
        send(&mut s, &[Control::PowerOff as u8]);
        let big = vec![0x80; 4000];
        send(&mut s, &big);
        assert_eq!(reply(&mut s).len(), 4002);
        assert_eq!(*log.lock().unwrap(), ["on", "reset", "off"]);

        served.remove();
        assert_eq!(read_frame(&mut s).ok().flatten(), None, "connection closed");
        let mut s = std::thread::scope(|scope| {
            let inserting = scope.spawn(|| served.insert());
            let (s, _) = listener.accept().unwrap();
            inserting.join().unwrap().unwrap();
            s
        });
        send(&mut s, &[Control::GetAtr as u8]);
        assert_eq!(reply(&mut s), DEFAULT_ATR);
        assert_eq!(served.stop(), None);
    }

    #[test]
    fn a_panic_or_a_bad_reply_is_reported_and_the_card_leaves() {
        for (apdu, words) in [
            (
                vec![0xFF, 0, 0, 0],
                "panicked in transmit(FF 00 00 00): told to panic",
            ),
            (vec![0xEE, 0, 0, 0], "lacks the status word"),
        ] {
            let (listener, addr) = reader();
            let mut served = Served::start(
                addr,
                Echo {
                    log: Default::default(),
                },
            );
            let (mut s, _) = listener.accept().unwrap();
            send(&mut s, &apdu);
            assert_eq!(read_frame(&mut s).ok().flatten(), None);
            let failure = served.stop().expect("a failure");
            assert!(failure.contains(words), "{failure}");
        }
    }

    #[test]
    fn the_reader_closing_is_a_failure() {
        let (listener, addr) = reader();
        let served = Served::start(
            addr,
            Echo {
                log: Default::default(),
            },
        );
        drop(listener.accept().unwrap());
        let s = served.shared.lock();
        let (s, _) = served
            .shared
            .changed
            .wait_timeout_while(s, Duration::from_secs(5), |s| s.failure.is_none())
            .unwrap();
        drop(s);
        assert!(served.failure().unwrap().contains("closed the connection"));
    }
}
