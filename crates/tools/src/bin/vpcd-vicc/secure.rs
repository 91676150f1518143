//! The card's side of the secure link (docs/TLS.md): its own key pair (made on first
//! use), the reader key it pins, and the TLS handshake before the vpcd frames, which
//! are the same inside TLS as on a plain connection.
//!
//! With a one-time pairing offer in the URI (`pair=`, `vpcd-config tls pair`), the card
//! first connects to the pairing port (TLS 1.3, the same pinned reader key, its own key
//! presented), sends the token, and reads the answer: after `OK` the reader trusts it.
//!
//! Connecting (normal mode), the card is the TLS client; listening (`--reversed`), the
//! server. Either way both keys are checked: the reader's against the pinned
//! fingerprint, the card's by the reader's trust list.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::{ClientConfig, ClientConnection, ServerConfig, ServerConnection, StreamOwned};

use vpcd_protocol::link::{self, Identity, Untrusted};
use vpcd_protocol::tls::{
    pair_request, Fingerprint, PairAnswer, Pairing, TrustEntry, TrustList, MAX_PAIR_LINE,
};
use vpcd_tools::keys;

use crate::card::VirtualCard;

/// How long a handshake may take before the peer is given up.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The card's key and the reader key it pins.
pub struct Secure {
    pub pinned: Fingerprint,
    client: Arc<ClientConfig>,
    server: Arc<ServerConfig>,
}

/// Where the card's key lives by default: `$XDG_CONFIG_HOME/vpcd-vicc/key.pem`, else
/// `~/.config/vpcd-vicc/key.pem`.
pub fn default_key_path() -> PathBuf {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
        .unwrap_or_else(|| PathBuf::from("."));
    base.join("vpcd-vicc").join("key.pem")
}

impl Secure {
    /// Loads (or makes) the card's key and pins `pinned`; tells the user the card's
    /// fingerprint and the one command that makes the reader trust it.
    pub fn new(key_path: &Path, pinned: Fingerprint, pairing: bool) -> Result<Secure, String> {
        let (key, created) = keys::load_or_create(key_path)?;
        let me = Identity::from_key_file(&key)
            .map_err(|e| format!("{} is unusable: {e}", key_path.display()))?;
        if created {
            eprintln!("vpcd-vicc: made a new key pair in {}", key_path.display());
        }
        if let Ok(Some(problem)) = keys::key_permission_problem(key_path) {
            eprintln!("vpcd-vicc: warning: {problem}");
        }
        if pairing {
            eprintln!(
                "vpcd-vicc: TLS: this card's key is {}\n  Pinned reader key: {pinned}",
                me.fingerprint
            );
        } else {
            eprintln!(
                "vpcd-vicc: TLS: this card's key is {fp}\n  \
                 On the reader's machine, trust it once: sudo vpcd-config tls trust {fp} --name NAME\n  \
                 Pinned reader key: {pinned}",
                fp = me.fingerprint
            );
        }
        let trust = TrustList {
            entries: vec![TrustEntry {
                fingerprint: pinned,
                name: "reader".into(),
            }],
        };
        Ok(Secure {
            pinned,
            client: link::client_config(&me, trust.clone())?,
            server: link::server_config(&me, trust)?,
        })
    }

    /// One-step pairing: the token to `host`'s pairing port, over TLS with the pinned
    /// reader key; Ok once the reader trusts this card's key.
    pub fn pair(&self, host: &str, pairing: &Pairing) -> Result<(), String> {
        let at = format!("{host}:{}", pairing.port);
        let tcp = crate::card::server::connect(host, pairing.port).map_err(|e| {
            format!(
                "pairing with {at} failed: cannot reach it ({e}): the pairing is over (its \
                 token was used, or it expired) or it is elsewhere; ask for a new URI \
                 (vpcd-config tls pair)"
            )
        })?;
        let mut tls = self
            .connect(tcp)
            .map_err(|e| format!("pairing with {at} failed: {e}"))?;
        tls.sock
            .set_read_timeout(Some(HANDSHAKE_TIMEOUT))
            .map_err(|e| e.to_string())?;
        let mut line = Vec::with_capacity(MAX_PAIR_LINE);
        let exchanged = tls
            .write_all(pair_request(&pairing.token).as_bytes())
            .and_then(|()| tls.flush())
            .and_then(|()| {
                BufReader::new(Read::by_ref(&mut tls).take(MAX_PAIR_LINE as u64))
                    .read_until(b'\n', &mut line)
            });
        if let Err(e) = exchanged {
            if line.is_empty() {
                return Err(format!("pairing with {at} failed: {}", in_words(e)));
            }
        }
        let text = String::from_utf8_lossy(&line);
        match PairAnswer::parse(text.trim_end_matches(['\n', '\r'])) {
            Ok(PairAnswer::Ok) => Ok(()),
            Ok(PairAnswer::Refused(why)) => Err(format!("pairing refused by {at}: {why}")),
            Err(_) if line.is_empty() => Err(format!(
                "pairing with {at} failed: it closed the connection without an answer"
            )),
            Err(e) => Err(format!("pairing with {at} failed: {e}")),
        }
    }

    /// Shakes hands as the client on a connected stream.
    pub fn connect(&self, tcp: TcpStream) -> io::Result<StreamOwned<ClientConnection, TcpStream>> {
        let conn = ClientConnection::new(Arc::clone(&self.client), link::server_name())
            .map_err(io::Error::other)?;
        self.finish(StreamOwned::new(conn, tcp))
    }

    /// Shakes hands as the server on an accepted stream.
    pub fn accept(&self, tcp: TcpStream) -> io::Result<StreamOwned<ServerConnection, TcpStream>> {
        let conn = ServerConnection::new(Arc::clone(&self.server)).map_err(io::Error::other)?;
        self.finish(StreamOwned::new(conn, tcp))
    }

    fn finish<C, D>(
        &self,
        mut s: StreamOwned<C, TcpStream>,
    ) -> io::Result<StreamOwned<C, TcpStream>>
    where
        C: std::ops::DerefMut<Target = rustls::ConnectionCommon<D>>,
        D: rustls::SideData,
    {
        s.sock.set_read_timeout(Some(HANDSHAKE_TIMEOUT))?;
        s.sock.set_write_timeout(Some(HANDSHAKE_TIMEOUT))?;
        while s.conn.is_handshaking() {
            if let Err(e) = s.conn.complete_io(&mut s.sock) {
                return Err(self.explain(e));
            }
        }
        s.sock.set_read_timeout(None)?;
        s.sock.set_write_timeout(None)?;
        Ok(s)
    }

    /// A failed handshake in words: a reader key that is not the pinned one is the
    /// man-in-the-middle case, and says so.
    fn explain(&self, e: io::Error) -> io::Error {
        let Some(tls) = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) else {
            return match e.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => io::Error::new(
                    io::ErrorKind::TimedOut,
                    "TLS handshake timed out (a plain vpcd reader, without tls=yes?)",
                ),
                io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset => io::Error::new(
                    e.kind(),
                    "the reader closed the connection during the TLS handshake: it does not \
                     trust this card's key yet, or it is a plain vpcd reader",
                ),
                _ => e,
            };
        };
        let text = match tls {
            rustls::Error::InvalidCertificate(rustls::CertificateError::Other(other)) => {
                match other.0.downcast_ref::<Untrusted>() {
                    Some(Untrusted(fp)) => format!(
                        "TLS: the reader's key is {fp}, not the pinned {}: refusing it (someone \
                         in between, or the reader got a new key: then pair again)",
                        self.pinned
                    ),
                    None => format!("TLS: {}", link::describe(tls)),
                }
            }
            _ => format!("TLS: {}", link::describe(tls)),
        };
        io::Error::new(io::ErrorKind::InvalidData, text)
    }
}

/// `--reversed` with TLS: accepts readers one after the other, shakes hands, and serves
/// each like [`crate::card::server::serve_listener`].
pub fn serve_listener<C: VirtualCard + ?Sized>(
    secure: &Secure,
    listener: &TcpListener,
    card: &mut C,
    trace: bool,
) -> io::Result<()> {
    loop {
        let (tcp, peer) = match listener.accept() {
            Ok(accepted) => accepted,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                eprintln!("vpcd-vicc: accept failed: {e}");
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        eprintln!("vpcd-vicc: driver connected from {peer}");
        let _ = tcp.set_nodelay(true);
        let mut stream = match secure.accept(tcp) {
            Ok(stream) => stream,
            Err(e) => {
                eprintln!("vpcd-vicc: refusing {peer}: {e}");
                continue;
            }
        };
        eprintln!("vpcd-vicc: TLS 1.3 with the pinned reader key");
        card.connected();
        match crate::card::server::serve(&mut EndAsEof(&mut stream), card, trace) {
            Ok(()) => eprintln!("vpcd-vicc: driver {peer} closed the connection"),
            Err(e) => eprintln!("vpcd-vicc: connection with {peer} failed: {e}"),
        }
    }
}

/// A TLS stream whose end without close_notify reads as an end: the driver drops a
/// card by closing the socket, and that is how a plain connection ends too. A cut in
/// the middle of a frame is still an error (the frame decoder sees it).
pub struct EndAsEof<S>(pub S);

impl<S: io::Read> io::Read for EndAsEof<S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.0.read(buf) {
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(0),
            Err(e) => Err(in_words(e)),
            other => other,
        }
    }
}

/// A TLS error after the handshake in words: in TLS 1.3 the server checks the
/// client's key after the client has finished, so a refusal of this card's key
/// arrives as the first read's alert.
fn in_words(e: io::Error) -> io::Error {
    match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
        Some(tls) => io::Error::new(e.kind(), format!("TLS: {}", link::describe(tls))),
        None => e,
    }
}

impl crate::control::Link for EndAsEof<StreamOwned<ClientConnection, TcpStream>> {
    fn tcp(&self) -> &TcpStream {
        &self.0.sock
    }
}

impl<S: io::Write> io::Write for EndAsEof<S> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}
