//! The card's side of the vpcd protocol over TCP: serve a driver connection, connect
//! out to a driver (normal mode) or accept drivers one after the other (reversed).
//!
//! Every socket gets TCP_NODELAY, and every reply frame (length prefix and payload)
//! leaves in a single write.

use std::io::{self, ErrorKind, Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::time::Duration;

use super::{atr::to_hex, VirtualCard};
use vpcd_protocol::pinpad::{self, Hello, PinAnswer, PinParams, Status};
use vpcd_protocol::vpcd::{self as protocol, Control, Decoder, Message, HEADER_LEN};

/// The port of the first slot of a vpcd reader.
pub const DEFAULT_PORT: u16 = 35963;

/// How long one outgoing connection attempt may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// One line of the `-v` trace: `> 00 A4 00 0C 02 3F 00` for what the driver sent,
/// `< 90 00` for the card's reply, `* power on` for control messages.
pub fn trace_line(direction: char, bytes: &[u8]) -> String {
    if bytes.is_empty() {
        format!("{direction}")
    } else {
        format!("{direction} {}", to_hex(bytes))
    }
}

fn control_name(control: Control) -> &'static str {
    match control {
        Control::PowerOff => "power off",
        Control::PowerOn => "power on",
        Control::Reset => "reset",
        Control::GetAtr => "get ATR",
    }
}

/// Serves one driver connection: answers GET ATR and every APDU with one frame, power
/// events with nothing, until the driver closes the connection (`Ok`) or it fails.
/// A connection closed in the middle of a frame is an `UnexpectedEof` error.
///
/// A card with a keypad first says HELLO (the PIN pad extension, docs/PINPAD.md) and
/// answers each PIN request (the control code ENTER_PIN, then a parameter frame) with
/// one frame from its keypad.
pub fn serve<S: Read + Write, C: VirtualCard + ?Sized>(
    stream: &mut S,
    card: &mut C,
    trace: bool,
) -> io::Result<()> {
    let mut decoder = Decoder::new();
    let mut chunk = vec![0u8; HEADER_LEN + protocol::MAX_PAYLOAD];
    let mut out: Vec<u8> = Vec::with_capacity(HEADER_LEN + protocol::MAX_PAYLOAD);
    if card.keypad().is_some() {
        protocol::encode(&Hello::new(pinpad::FEATURE_PIN_ENTRY).payload(), &mut out)
            .map_err(io::Error::other)?;
        stream.write_all(&out)?;
    }
    // The driver asked for a PIN: the next frame is the request's parameters.
    let mut pin_request = false;
    loop {
        while let Some(frame) = decoder.next_frame() {
            if std::mem::take(&mut pin_request) {
                enter_pin(&frame, card, trace, &mut out);
                stream.write_all(&out)?;
            } else if frame == [pinpad::ENTER_PIN] && card.keypad().is_some() {
                pin_request = true;
            } else if answer(&frame, card, trace, &mut out) {
                stream.write_all(&out)?;
            }
        }
        let n = match stream.read(&mut chunk) {
            Ok(0) if decoder.buffered() == 0 => return Ok(()),
            Ok(0) => {
                return Err(io::Error::new(
                    ErrorKind::UnexpectedEof,
                    format!(
                        "driver closed the connection {} bytes into a frame",
                        decoder.buffered()
                    ),
                ))
            }
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        decoder.feed(&chunk[..n]);
    }
}

/// Asks the keypad for the PIN(s) a request's parameters want; its answer frame in
/// `out`.
fn enter_pin<C: VirtualCard + ?Sized>(params: &[u8], card: &mut C, trace: bool, out: &mut Vec<u8>) {
    let answer = match (PinParams::parse(params), card.keypad()) {
        (Ok(params), Some(keypad)) => {
            if trace {
                eprintln!(
                    "* PIN entry: {:?}, {}-{} digits, {} s",
                    params.operation, params.min_digits, params.max_digits, params.timeout_secs
                );
            }
            keypad.enter(&params)
        }
        (Err(e), _) => {
            eprintln!("vpcd-vicc: a PIN request the keypad cannot take ({e}): cancelled");
            PinAnswer::Not(Status::Cancelled)
        }
        (_, None) => PinAnswer::Not(Status::Cancelled),
    };
    if trace {
        eprintln!("* PIN entry: {answer:?}");
    }
    let mut payload = answer.payload();
    out.clear();
    // A PIN answer is at most 513 bytes: it always fits a frame.
    let _ = protocol::encode(&payload, out);
    payload.fill(0);
}

/// Builds the reply frame for one received payload in `out`; false if there is none.
fn answer<C: VirtualCard + ?Sized>(
    payload: &[u8],
    card: &mut C,
    trace: bool,
    out: &mut Vec<u8>,
) -> bool {
    out.clear();
    out.extend_from_slice(&[0; HEADER_LEN]);
    match Message::parse(payload) {
        Ok(Message::Control(control)) => {
            if trace {
                eprintln!("* {}", control_name(control));
            }
            match card.control(control) {
                Some(atr) => out.extend_from_slice(atr),
                None => return false,
            }
        }
        Ok(Message::Apdu(apdu)) => {
            if trace {
                eprintln!("{}", trace_line('>', apdu));
            }
            card.respond(apdu, out);
        }
        Err(e) => {
            eprintln!("vpcd-vicc: ignoring a frame from the driver: {e}");
            return false;
        }
    }
    let prefix = match protocol::header(out.len() - HEADER_LEN) {
        Ok(prefix) => prefix,
        Err(_) => {
            // Cannot happen: the card bounds its responses. Answer 6F 00 anyway.
            out.truncate(HEADER_LEN);
            out.extend_from_slice(&[0x6F, 0x00]);
            [0, 2]
        }
    };
    out[..HEADER_LEN].copy_from_slice(&prefix);
    if trace {
        eprintln!("{}", trace_line('<', &out[HEADER_LEN..]));
    }
    true
}

/// Connects to a driver slot, trying each address `host` resolves to.
pub fn connect(host: &str, port: u16) -> io::Result<TcpStream> {
    let mut last = io::Error::new(ErrorKind::NotFound, format!("{host} has no address"));
    for addr in (unbracket(host), port).to_socket_addrs()? {
        match TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT) {
            Ok(stream) => {
                stream.set_nodelay(true)?;
                return Ok(stream);
            }
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// Listens for drivers (reversed mode). Without an address: on `::`, which on Linux
/// also accepts IPv4, falling back to `0.0.0.0` where IPv6 is missing.
pub fn listen(addr: Option<&str>, port: u16) -> io::Result<TcpListener> {
    let addrs: Vec<SocketAddr> = match addr {
        None => vec![
            (Ipv6Addr::UNSPECIFIED, port).into(),
            (Ipv4Addr::UNSPECIFIED, port).into(),
        ],
        Some(host) => (unbracket(host), port).to_socket_addrs()?.collect(),
    };
    let mut first_err = None;
    for addr in addrs {
        match TcpListener::bind(addr) {
            Ok(listener) => return Ok(listener),
            Err(e) => {
                first_err.get_or_insert(io::Error::new(e.kind(), format!("{addr}: {e}")));
            }
        }
    }
    Err(first_err.unwrap_or_else(|| io::Error::new(ErrorKind::NotFound, "no address to listen on")))
}

/// Accepts drivers one after the other and serves each until it leaves, telling the
/// card of each ([`VirtualCard::connected`]: the built-in card resets). Returns after
/// `max_connections` connections if given (for tests), otherwise only if accepting
/// fails for good.
pub fn serve_listener<C: VirtualCard + ?Sized>(
    listener: &TcpListener,
    card: &mut C,
    trace: bool,
    max_connections: Option<usize>,
) -> io::Result<()> {
    let mut served = 0;
    while max_connections.map_or(true, |max| served < max) {
        let (mut stream, peer) = match listener.accept() {
            Ok(accepted) => accepted,
            Err(e) if is_transient_accept_error(&e) => {
                eprintln!("vpcd-vicc: accept failed: {e}");
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
            Err(e) => return Err(e),
        };
        served += 1;
        let peer = SocketAddr::new(peer.ip().to_canonical(), peer.port());
        eprintln!("vpcd-vicc: driver connected from {peer}");
        card.connected();
        let result = stream
            .set_nodelay(true)
            .and_then(|()| serve(&mut stream, card, trace));
        match result {
            Ok(()) => eprintln!("vpcd-vicc: driver {peer} closed the connection"),
            Err(e) => eprintln!("vpcd-vicc: connection with {peer} failed: {e}"),
        }
    }
    Ok(())
}

fn is_transient_accept_error(e: &io::Error) -> bool {
    !matches!(
        e.kind(),
        ErrorKind::InvalidInput | ErrorKind::PermissionDenied | ErrorKind::Unsupported
    )
}

/// `[::1]` to `::1`, so that bracketed IPv6 literals work as host names.
fn unbracket(host: &str) -> &str {
    host.strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::card::apdu::encode;
    use crate::card::atr::default_atr;
    use crate::card::Card;
    use std::thread;

    /// A byte stream made of scripted input, delivered in small pieces, and the output
    /// collected with the size of each write.
    struct Script {
        input: Vec<u8>,
        pos: usize,
        piece: usize,
        writes: Vec<Vec<u8>>,
    }

    impl Read for Script {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.piece.min(buf.len()).min(self.input.len() - self.pos);
            buf[..n].copy_from_slice(&self.input[self.pos..self.pos + n]);
            self.pos += n;
            Ok(n)
        }
    }

    impl Write for Script {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.writes.push(buf.to_vec());
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn frame(payload: &[u8]) -> Vec<u8> {
        let mut out = vec![];
        protocol::encode(payload, &mut out).unwrap();
        out
    }

    fn read_frame(stream: &mut TcpStream) -> Vec<u8> {
        let mut prefix = [0; HEADER_LEN];
        stream.read_exact(&mut prefix).unwrap();
        let mut payload = vec![0; protocol::payload_len(prefix)];
        stream.read_exact(&mut payload).unwrap();
        payload
    }

    #[test]
    fn serve_answers_in_one_write_per_frame_despite_short_reads() {
        let mut input = vec![];
        for c in [Control::PowerOff, Control::PowerOn, Control::GetAtr] {
            input.extend_from_slice(&c.frame());
        }
        input.extend(frame(&[0x80, 0xEE, 0, 0, 3, 1, 2, 3]));
        input.extend(frame(&[5])); // unknown control code: ignored
        input.extend(frame(&[0x00, 0xA4, 0x00, 0x0C, 0x02, 0x3F, 0x00]));
        for piece in [1, 2, 3, 1000] {
            let mut s = Script {
                input: input.clone(),
                pos: 0,
                piece,
                writes: vec![],
            };
            serve(&mut s, &mut Card::default(), false).unwrap();
            assert_eq!(
                s.writes,
                vec![
                    frame(&default_atr()),
                    frame(&[1, 2, 3, 0x90, 0x00]),
                    frame(&[0x90, 0x00]),
                ],
                "read size {piece}"
            );
        }
    }

    #[test]
    fn close_mid_frame_is_an_error() {
        let mut s = Script {
            input: vec![0, 5, 0x00, 0xA4],
            pos: 0,
            piece: 10,
            writes: vec![],
        };
        let e = serve(&mut s, &mut Card::default(), false).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::UnexpectedEof);
    }

    #[test]
    fn trace_format() {
        assert_eq!(
            trace_line('>', &[0x00, 0xA4, 0x00, 0x0C, 0x02, 0x3F, 0x00]),
            "> 00 A4 00 0C 02 3F 00"
        );
        assert_eq!(trace_line('<', &[0x90, 0x00]), "< 90 00");
        assert_eq!(unbracket("[::1]"), "::1");
        assert_eq!(unbracket("localhost"), "localhost");
    }

    /// Reversed mode end to end: the card listens, a "driver" connects, powers on,
    /// gets the ATR and exchanges APDUs, twice in turn; then the server thread ends.
    #[test]
    fn reversed_mode_serves_drivers_in_turn() {
        let listener = listen(Some("127.0.0.1"), 0).unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = thread::spawn(move || {
            let mut card = Card::default();
            serve_listener(&listener, &mut card, true, Some(2))
        });
        for _ in 0..2 {
            let mut driver = connect("127.0.0.1", port).unwrap();
            driver
                .set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            driver.write_all(&Control::PowerOn.frame()).unwrap();
            driver.write_all(&Control::GetAtr.frame()).unwrap();
            assert_eq!(read_frame(&mut driver), default_atr());
            let select = [
                0x00, 0xA4, 0x04, 0x0C, 0x06, 0xF0, 0x76, 0x70, 0x63, 0x64, 0x01,
            ];
            driver.write_all(&frame(&select)).unwrap();
            assert_eq!(read_frame(&mut driver), [0x90, 0x00]);
            driver
                .write_all(&frame(&[0x00, 0xA4, 0x02, 0x0C, 0x02, 0x50, 0x01]))
                .unwrap();
            assert_eq!(read_frame(&mut driver), [0x90, 0x00]);
            driver
                .write_all(&frame(&[0x00, 0xB0, 0x00, 0x00, 0x00]))
                .unwrap();
            let reply = read_frame(&mut driver);
            assert_eq!(&reply[..reply.len() - 2], super::super::fs::HELLO);
            // The largest extended echo, in one frame each way.
            let data: Vec<u8> = (0..protocol::MAX_APDU_DATA).map(|i| i as u8).collect();
            let apdu = encode(0x80, 0xEE, 0, 0, &data, Some(65536));
            driver.write_all(&frame(&apdu)).unwrap();
            let reply = read_frame(&mut driver);
            assert_eq!(reply.len(), data.len() + 2);
            assert_eq!(&reply[..data.len()], &data[..]);
            driver.write_all(&Control::PowerOff.frame()).unwrap();
            // Closing the connection ends this turn of the server.
        }
        server.join().unwrap().unwrap();
    }

    /// Normal mode: the test plays vpcd's listening slot and the card connects to it.
    #[test]
    fn connect_mode_serves_until_the_driver_closes() {
        let slot = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = slot.local_addr().unwrap().port();
        let card = thread::spawn(move || {
            let mut stream = connect("localhost", port)?;
            assert!(stream.nodelay()?);
            serve(&mut stream, &mut Card::default(), false)
        });
        let (mut driver, _) = slot.accept().unwrap();
        driver
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        driver.write_all(&Control::Reset.frame()).unwrap();
        driver
            .write_all(&frame(&[0x00, 0x84, 0x00, 0x00, 0x10]))
            .unwrap();
        let reply = read_frame(&mut driver);
        assert_eq!(reply.len(), 18);
        assert_eq!(reply[16..], [0x90, 0x00]);
        drop(driver);
        card.join().unwrap().unwrap();
    }
}
