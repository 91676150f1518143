//! The secure link of a `tls=yes` reader (docs/TLS.md): its key, loaded when pcscd
//! opens the slot, its trust list, read again whenever the file changes, and the TLS
//! session of one peer.
//!
//! The driver never writes a file and never generates a key: under pcsc-lite 2.x's
//! hardened service it runs as user pcscd on a read-only file system. `vpcd-config tls`
//! manages the files; a missing, unreadable or malformed one makes the slot refuse to
//! open (no fallback to plain).
//!
//! A session is driven two ways:
//! - while its peer proves itself, by the slot's watcher on a non-blocking socket
//!   ([`Session::write_nonblocking`], [`Session::read_nonblocking`]): the whole
//!   handshake happens there, outside every pcscd call, within the proof budget;
//! - once it is the card, by pcscd's threads on the blocking socket with the reader's
//!   timeouts ([`Session::send`], [`Session::read_blocking`]), under the slot's `io`
//!   lock. Inside TLS the bytes are the same vpcd frames as on a plain slot.

use std::ffi::OsString;
use std::io::{self, IoSliceMut, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use rustls::{ClientConfig, ClientConnection, Connection, ServerConfig, ServerConnection};

use vpcd_protocol::config::{Endpoint, ReaderConfig};
use vpcd_protocol::link::{self, Identity};
use vpcd_protocol::tls::{Fingerprint, KeyFile, TrustList, KEY_FILE, MAX_FILE_LEN, TRUST_FILE};

/// Where the key and trust list live, unless `VPCD_TLS_DIR` says otherwise (tests,
/// other layouts). `vpcd-config tls` uses the same rule.
pub(crate) const DEFAULT_DIR: &str = "/etc/vpcd/tls";

/// The TLS directory of this process.
pub(crate) fn dir() -> PathBuf {
    dir_from(std::env::var_os("VPCD_TLS_DIR"))
}

/// The TLS directory `VPCD_TLS_DIR` names (`var`, apart so that tests need not set
/// the process's environment): an empty one counts as unset, not as pcscd's current
/// directory.
fn dir_from(var: Option<OsString>) -> PathBuf {
    var.filter(|d| !d.is_empty())
        .map_or_else(|| PathBuf::from(DEFAULT_DIR), PathBuf::from)
}

/// A secure slot's link: its key, and the TLS configuration built from its trust
/// list, which follows the file: `vpcd-config tls trust` / `untrust` take effect at the
/// next connection, without restarting pcscd. A connected card stays connected.
pub(crate) struct Setup {
    me: Identity,
    /// Whether the slot listens (the vicc is the TLS client) or connects out.
    listening: bool,
    trust_path: PathBuf,
    label: String,
    current: Mutex<Current>,
}

/// The configuration in use and the trust file it was built from.
struct Current {
    stamp: Option<Stamp>,
    config: Config,
}

/// Which side of the handshake the slot takes.
#[derive(Clone)]
enum Config {
    Server(Arc<ServerConfig>),
    Client(Arc<ClientConfig>),
}

/// What tells one version of the trust file from another, without reading it: a write
/// in place changes its time or length, a rename its inode.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct Stamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: (i64, i64),
}

fn stamp(path: &Path) -> Option<Stamp> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some(Stamp {
        dev: m.dev(),
        ino: m.ino(),
        len: m.len(),
        mtime: (m.mtime(), m.mtime_nsec()),
    })
}

fn configure(me: &Identity, listening: bool, trusted: TrustList) -> Result<Config, String> {
    Ok(if listening {
        Config::Server(link::server_config(me, trusted)?)
    } else {
        Config::Client(link::client_config(me, trusted)?)
    })
}

impl Setup {
    /// The secure link of a reader, if it has `tls=yes`; an error (for the refusal's log
    /// line) if its files are unusable. A plain reader that other machines can reach
    /// gets one warning naming the option, from its first slot.
    pub(crate) fn load(cfg: &ReaderConfig, label: &str, index: u16) -> io::Result<Option<Setup>> {
        Setup::load_in(&dir(), cfg, label, index)
    }

    /// [`Setup::load`] with the TLS directory `base`.
    fn load_in(
        base: &Path,
        cfg: &ReaderConfig,
        label: &str,
        index: u16,
    ) -> io::Result<Option<Setup>> {
        if !cfg.tls {
            if index == 0 && cfg.listens_beyond_loopback() {
                log::warn!(
                    "{label}: plain vpcd beyond loopback: any peer that reaches this port can \
                     be the card, and APDUs (PINs too) cross the network in the clear; add \
                     /tls=yes to the DEVICENAME for an authenticated, encrypted link \
                     (docs/TLS.md)"
                );
            }
            return Ok(None);
        }
        // A key set of its own (`keys=NAME`): the TLS directory's sub-directory NAME.
        let dir = match &cfg.tls_keys {
            Some(name) => base.join(name),
            None => base.to_owned(),
        };
        let refuse = |e: String| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("tls=yes, but {e}; the reader stays closed (no plain fallback)"),
            )
        };
        let trust_path = dir.join(TRUST_FILE);
        // Taken before the read: a write in between shows as a change at the next peer.
        let trust_stamp = stamp(&trust_path);
        let (me, trusted) = load_files(&dir).map_err(refuse)?;
        let listening = matches!(cfg.endpoint, Endpoint::Listen { .. });
        if index == 0 && trusted.entries.is_empty() {
            log::warn!(
                "{label}: {} trusts no peer key yet: every vicc will be refused \
                 (vpcd-config tls trust FINGERPRINT)",
                trust_path.display()
            );
        }
        if index == 0 {
            log::info!(
                "{label}: TLS 1.3 with key {} ({}), trusting {} peer key(s) of {}",
                me.fingerprint,
                dir.join(KEY_FILE).display(),
                trusted.entries.len(),
                trust_path.display()
            );
        }
        let config = configure(&me, listening, trusted).map_err(refuse)?;
        Ok(Some(Setup {
            me,
            listening,
            trust_path,
            label: label.to_owned(),
            current: Mutex::new(Current {
                stamp: trust_stamp,
                config,
            }),
        }))
    }

    /// The configuration for a new peer: rebuilt first if the trust file changed
    /// since. A trust file that became unreadable or malformed is reported once and
    /// the last good list stays in force (it never falls open).
    fn config(&self) -> Config {
        let mut current = self.current.lock();
        let now = stamp(&self.trust_path);
        if now != current.stamp {
            current.stamp = now;
            let reloaded = read_small(&self.trust_path)
                .and_then(|text| {
                    TrustList::parse(&text)
                        .map_err(|e| format!("{} is malformed: {e}", self.trust_path.display()))
                })
                .and_then(|trusted| {
                    let n = trusted.entries.len();
                    configure(&self.me, self.listening, trusted).map(|c| (c, n))
                });
            match reloaded {
                Ok((config, n)) => {
                    current.config = config;
                    log::info!(
                        "{}: trust list {} changed: trusting {n} peer key(s) from now on",
                        self.label,
                        self.trust_path.display()
                    );
                }
                Err(e) => log::error!("{}: {e}; keeping the trust list read before", self.label),
            }
        }
        current.config.clone()
    }

    /// A session for a new peer.
    pub(crate) fn session(&self) -> io::Result<Session> {
        let conn: Connection = match self.config() {
            Config::Server(config) => ServerConnection::new(config)
                .map_err(io::Error::other)?
                .into(),
            Config::Client(config) => ClientConnection::new(config, link::server_name())
                .map_err(io::Error::other)?
                .into(),
        };
        Ok(Session::new(conn))
    }
}

/// Reads the key file and the trust list of `dir`.
pub(crate) fn load_files(dir: &Path) -> Result<(Identity, TrustList), String> {
    let key_path = dir.join(KEY_FILE);
    let key = KeyFile::parse(&read_small(&key_path)?)
        .map_err(|e| format!("{} is malformed: {e}", key_path.display()))?;
    let me = Identity::from_key_file(&key)
        .map_err(|e| format!("{} is unusable: {e}", key_path.display()))?;
    let trust_path = dir.join(TRUST_FILE);
    let trusted = TrustList::parse(&read_small(&trust_path)?)
        .map_err(|e| format!("{} is malformed: {e}", trust_path.display()))?;
    Ok((me, trusted))
}

fn read_small(path: &Path) -> Result<String, String> {
    let file = std::fs::File::open(path)
        .map_err(|e| format!("cannot read {}: {e}{}", path.display(), hint(e.kind())))?;
    let mut text = String::new();
    file.take(MAX_FILE_LEN as u64 + 1)
        .read_to_string(&mut text)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    Ok(text)
}

/// What to do about a file that cannot be opened, for the log line.
fn hint(kind: io::ErrorKind) -> &'static str {
    match kind {
        io::ErrorKind::NotFound => " (vpcd-config tls init creates it)",
        io::ErrorKind::PermissionDenied => " (pcscd's user must be able to read it)",
        _ => "",
    }
}

/// The TLS state of one peer's connection. The lock is uncontended: the watcher owns
/// a candidate's session, and a card's is used under the slot's `io` lock (the
/// watcher's idle check only tries it).
pub(crate) struct Session {
    link: Mutex<Link>,
}

/// A session's rustls connection and the buffers it keeps between exchanges.
struct Link {
    conn: Connection,
    /// Records read from the socket, not yet handed to rustls.
    inbound: Inbound,
    /// A send's records, kept so that the next send neither allocates nor faults in
    /// fresh pages (a 64 KiB buffer freed each time is handed back to the kernel).
    outbound: Vec<u8>,
}

/// How much one read of a card's socket may take: a whole largest reply (65537
/// plaintext bytes in five records, with their headers and tags) at once.
const INBOUND_LEN: usize = 72 * 1024;

/// Ciphertext taken from the socket but not yet given to rustls. rustls's own read of
/// a socket takes at most 4 KiB at a time (its record buffer grows in 4 KiB steps),
/// which makes a 64 KiB reply cost a dozen or more system calls; read here, it costs
/// one or two, and rustls takes the bytes from memory. Every byte read goes to
/// rustls, in order, before the socket is read again: nothing is lost or reordered,
/// and a partial record stays in rustls's buffer as before. Bytes a peer sent past
/// its reply, in the same read, wait here for the next peek (the next exchange's send
/// peeks first); the watcher's poll does not see them, as it did not see those rustls
/// had taken in its own reads before.
#[derive(Default)]
struct Inbound {
    /// Allocated at the first read (a peer that never gets past its proof costs
    /// nothing), kept for the connection's life.
    buf: Vec<u8>,
    /// The bytes not yet given to rustls: `buf[start..end]`.
    start: usize,
    end: usize,
}

impl Inbound {
    fn is_empty(&self) -> bool {
        self.start == self.end
    }
}

/// What rustls reads: first the bytes read before, then, once they are all taken, one
/// read of the socket into the whole buffer. The socket's errors (`WouldBlock` on a
/// non-blocking socket or when its read timeout expires) pass through with nothing
/// taken, and its end (`Ok(0)`) only once every byte read before has been taken.
struct Feed<'a> {
    inbound: &'a mut Inbound,
    stream: &'a TcpStream,
}

impl Read for Feed<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let inbound = &mut *self.inbound;
        if inbound.is_empty() {
            if out.is_empty() {
                return Ok(0);
            }
            // Allocated once; the same length again after.
            inbound.buf.resize(INBOUND_LEN, 0);
            let n = (&mut &*self.stream).read(&mut inbound.buf)?;
            inbound.start = 0;
            inbound.end = n;
        }
        let n = out.len().min(inbound.end - inbound.start);
        out[..n].copy_from_slice(&inbound.buf[inbound.start..inbound.start + n]);
        inbound.start += n;
        Ok(n)
    }
}

impl Link {
    /// Moves the plaintext rustls holds into `bufs` past their first `filled` bytes
    /// (counted in `filled`). rustls's reader fails (`UnexpectedEof`) only once it was
    /// shown the socket's end, and it is shown that only by a read of the socket, which
    /// happens only when it holds no plaintext: no byte delivered is lost to that error.
    fn take_plaintext(
        &mut self,
        bufs: &mut [IoSliceMut<'_>],
        filled: &mut usize,
    ) -> io::Result<()> {
        while let Some(space) = unfilled(bufs, *filled) {
            match self.conn.reader().read(space) {
                // A close_notify: the next read_tls says so.
                Ok(0) => break,
                Ok(n) => *filled += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// A read's end after rustls met a bad record: the bytes of the good records
    /// before it first, if there are some (rustls keeps the error for the next read).
    fn failed(
        &mut self,
        e: &rustls::Error,
        bufs: &mut [IoSliceMut<'_>],
        mut filled: usize,
    ) -> io::Result<usize> {
        self.take_plaintext(bufs, &mut filled)?;
        if filled > 0 {
            Ok(filled)
        } else {
            Err(tls_error(e))
        }
    }

    /// Hands rustls more ciphertext: bytes read before if there are some (the socket
    /// is not touched then), else one read of the socket.
    fn read_tls(&mut self, stream: &TcpStream) -> io::Result<usize> {
        self.conn.read_tls(&mut Feed {
            inbound: &mut self.inbound,
            stream,
        })
    }
}

/// The part of `bufs` past its first `filled` bytes: the rest of the buffer it ends
/// in (`None` once all are full).
fn unfilled<'b>(bufs: &'b mut [IoSliceMut<'_>], mut filled: usize) -> Option<&'b mut [u8]> {
    for buf in bufs.iter_mut() {
        if filled < buf.len() {
            return Some(&mut buf[filled..]);
        }
        filled -= buf.len();
    }
    None
}

/// A handshake or record failure as an `InvalidData` error, in words for the log.
fn tls_error(e: &rustls::Error) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("TLS: {}", link::describe(e)),
    )
}

impl Session {
    fn new(conn: Connection) -> Session {
        Session {
            link: Mutex::new(Link {
                conn,
                inbound: Inbound::default(),
                outbound: Vec::new(),
            }),
        }
    }

    /// Whether the handshake is still going on.
    pub(crate) fn is_handshaking(&self) -> bool {
        self.link.lock().conn.is_handshaking()
    }

    /// The peer's key, once the handshake is done.
    pub(crate) fn peer_fingerprint(&self) -> Option<Fingerprint> {
        let link = self.link.lock();
        let cert = link.conn.peer_certificates()?.first()?;
        link::cert_fingerprint(cert.as_ref()).ok()
    }

    /// Queues `bytes` (sent once the handshake is done) and writes what the socket
    /// takes without blocking.
    pub(crate) fn write_nonblocking(&self, stream: &TcpStream, bytes: &[u8]) -> io::Result<()> {
        let mut link = self.link.lock();
        link.conn.writer().write_all(bytes)?;
        flush_nonblocking(&mut link.conn, stream)
    }

    /// The watcher's read of a proving peer: advances the handshake with what arrived,
    /// answers it, and returns application bytes if there are some (`WouldBlock` if
    /// not yet, `Ok(0)` when the peer closed).
    pub(crate) fn read_nonblocking(&self, stream: &TcpStream, buf: &mut [u8]) -> io::Result<usize> {
        let mut link = self.link.lock();
        loop {
            match link.conn.reader().read(buf) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
            let got = link.read_tls(stream)?;
            let processed = link.conn.process_new_packets();
            // Whatever rustls has to say (the next flight, or the alert that explains
            // a refusal to the peer) goes out before we report.
            let flushed = flush_nonblocking(&mut link.conn, stream);
            if let Err(e) = processed {
                return Err(tls_error(&e));
            }
            flushed?;
            if got == 0 {
                return Ok(0);
            }
        }
    }

    /// A card's send: encrypts `bytes` and writes the records within `timeout`.
    pub(crate) fn send(
        &self,
        stream: &TcpStream,
        bytes: &[u8],
        timeout: Duration,
    ) -> io::Result<()> {
        let mut link = self.link.lock();
        let Link { conn, outbound, .. } = &mut *link;
        outbound.clear();
        let mut rest = bytes;
        // rustls buffers a bounded amount of plaintext (64 KiB): a large frame is
        // encrypted in turns.
        while !rest.is_empty() {
            let n = conn.writer().write(rest)?;
            while conn.wants_write() {
                conn.write_tls(outbound)?;
            }
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            rest = &rest[n..];
        }
        crate::net::write_all_within(stream, outbound, timeout)
    }

    /// A card's read, on the blocking socket with its read timeout: at least one
    /// application byte, or the socket's error (`WouldBlock`/`TimedOut` when it timed
    /// out), `UnexpectedEof` when the peer is gone, `InvalidData` for a bad record.
    /// Fills `bufs` as far as the records already read allow; the socket is read only
    /// while nothing has been delivered, so a read never waits once it has bytes. An
    /// error met after some bytes waits for the next read (rustls keeps it).
    pub(crate) fn read_blocking(
        &self,
        stream: &TcpStream,
        bufs: &mut [IoSliceMut<'_>],
    ) -> io::Result<usize> {
        if unfilled(bufs, 0).is_none() {
            return Ok(0);
        }
        let mut link = self.link.lock();
        let mut filled = 0;
        // An error met by an earlier read, after the bytes it delivered.
        if let Err(e) = link.conn.process_new_packets() {
            return link.failed(&e, bufs, filled);
        }
        loop {
            link.take_plaintext(bufs, &mut filled)?;
            if filled > 0 && (link.inbound.is_empty() || unfilled(bufs, filled).is_none()) {
                return Ok(filled);
            }
            // With bytes delivered, rustls takes the bytes read before from memory (no
            // socket error, no end of the socket), or says its peer's close_notify.
            match link.read_tls(stream)? {
                0 if filled > 0 => return Ok(filled),
                0 => return Err(io::ErrorKind::UnexpectedEof.into()),
                _ => {}
            }
            if let Err(e) = link.conn.process_new_packets() {
                return link.failed(&e, bufs, filled);
            }
        }
    }

    /// Like a socket peek for a card between exchanges: `Ok(0)` once the peer closed
    /// (close_notify or TCP), `Ok(n)` if it sent application data nobody asked for,
    /// `WouldBlock` if nothing (or only TLS housekeeping) is there, or an exchange holds
    /// the session right now.
    pub(crate) fn peek(
        &self,
        stream: &TcpStream,
        raw_peek: io::Result<usize>,
    ) -> io::Result<usize> {
        let Some(mut link) = self.link.try_lock() else {
            return Err(io::ErrorKind::WouldBlock.into());
        };
        // What rustls holds, after it took the bytes read before (an exchange's read
        // may have taken more than its reply).
        let buffered = |link: &mut Link| -> io::Result<usize> {
            loop {
                let state = link.conn.process_new_packets().map_err(|e| tls_error(&e))?;
                if state.plaintext_bytes_to_read() > 0 {
                    return Ok(state.plaintext_bytes_to_read());
                }
                if state.peer_has_closed() {
                    return Ok(0);
                }
                if link.inbound.is_empty() {
                    return Err(io::ErrorKind::WouldBlock.into());
                }
                // From memory: the socket is not read while these last.
                link.read_tls(stream)?;
            }
        };
        match raw_peek {
            Ok(0) => Ok(0),
            Ok(_) => {
                // Bytes wait in the socket (or were read before), so this read does
                // not block.
                if link.read_tls(stream)? == 0 {
                    return Ok(0);
                }
                buffered(&mut link)
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => buffered(&mut link),
            Err(e) => Err(e),
        }
    }
}

/// Writes the session's pending records until the socket would block.
fn flush_nonblocking(conn: &mut Connection, stream: &TcpStream) -> io::Result<()> {
    while conn.wants_write() {
        match conn.write_tls(&mut &*stream) {
            Ok(_) => {}
            // The rest goes with the next read's flush; the proof's deadline bounds it.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The protocol crate's test keys (crates/protocol/testdata).
    const READER_KEY: &str = include_str!("../crates/protocol/testdata/reader-key.pem");
    const VICC_KEY: &str = include_str!("../crates/protocol/testdata/vicc-key.pem");

    fn identity(pem: &str) -> Identity {
        Identity::from_key_file(&KeyFile::parse(pem).unwrap()).unwrap()
    }

    /// The session a listening secure slot gives a new peer (trusting nobody): its
    /// handshake not begun.
    pub(crate) fn accepting_session() -> Session {
        let config = link::server_config(&identity(READER_KEY), TrustList::default()).unwrap();
        Session::new(ServerConnection::new(config).unwrap().into())
    }

    /// The session a listening secure slot gives a new peer, trusting the test vicc.
    fn session_trusting_the_vicc() -> Session {
        let trusted = TrustList::parse(&format!("{}\n", identity(VICC_KEY).fingerprint)).unwrap();
        let config = link::server_config(&identity(READER_KEY), trusted).unwrap();
        Session::new(ServerConnection::new(config).unwrap().into())
    }

    /// A vicc's end of a secure link: a rustls client on a blocking socket.
    fn vicc_end(stream: TcpStream) -> rustls::StreamOwned<ClientConnection, TcpStream> {
        let trusted = TrustList::parse(&format!("{}\n", identity(READER_KEY).fingerprint)).unwrap();
        let config = link::client_config(&identity(VICC_KEY), trusted).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        rustls::StreamOwned::new(
            ClientConnection::new(config, link::server_name()).unwrap(),
            stream,
        )
    }

    /// A peer proves itself through the watcher's non-blocking reads and writes, then
    /// exchanges as the card through the blocking ones, and its close_notify ends it.
    #[test]
    fn a_secure_peer_shakes_hands_without_blocking_then_exchanges_as_the_card() {
        let listener = std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap();
        let at = listener.local_addr().unwrap();
        let vicc = std::thread::spawn(move || {
            let mut tls = vicc_end(TcpStream::connect(at).unwrap());
            let mut asked = [0u8; 4];
            tls.read_exact(&mut asked).unwrap();
            tls.write_all(b"proof").unwrap();
            let mut reply = [0u8; 5];
            tls.read_exact(&mut reply).unwrap();
            tls.write_all(b"more").unwrap();
            let mut go = [0u8; 1];
            tls.read_exact(&mut go).unwrap();
            // Data nobody asked for; the end once told (a TCP close too would
            // show before the data in the session).
            tls.write_all(b"junk").unwrap();
            tls.flush().unwrap();
            tls.read_exact(&mut go).unwrap();
            tls.conn.send_close_notify();
            tls.flush().unwrap();
            (asked, reply)
        });
        let (stream, _) = listener.accept().unwrap();
        stream.set_nonblocking(true).unwrap();
        let session = session_trusting_the_vicc();
        assert!(session.is_handshaking());
        assert_eq!(session.peer_fingerprint(), None);
        // Queued until the handshake is done, then sent by a read's flush.
        session.write_nonblocking(&stream, b"atr?").unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let mut got = Vec::new();
        while got.len() < 5 {
            let mut buf = [0u8; 16];
            match session.read_nonblocking(&stream, &mut buf) {
                Ok(0) => panic!("the vicc closed"),
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    assert!(std::time::Instant::now() < deadline, "no proof came");
                    std::thread::yield_now();
                }
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(got, b"proof");
        assert!(!session.is_handshaking());
        assert_eq!(
            session.peer_fingerprint(),
            Some(identity(VICC_KEY).fingerprint)
        );
        // The card: blocking I/O with the reader's timeouts.
        crate::net::configure_peer(&stream, Duration::from_secs(5)).unwrap();
        session
            .send(&stream, b"reply", Duration::from_secs(5))
            .unwrap();
        let mut buf = [0u8; 16];
        let n = session
            .read_blocking(&stream, &mut [IoSliceMut::new(&mut buf)])
            .unwrap();
        assert_eq!(&buf[..n], b"more");
        // Idle between exchanges, looked at as the watcher does (through Conn::peek).
        let peer = stream.peer_addr().unwrap();
        let card = crate::slot::conn::Conn {
            id: 0,
            stream,
            peer,
            extra: (),
            tls: Some(session),
        };
        let (stream, session) = (&card.stream, card.tls.as_ref().unwrap());
        let peek = |what: &str| {
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            loop {
                match card.peek() {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        assert!(std::time::Instant::now() < deadline, "no {what}");
                        std::thread::yield_now();
                    }
                    other => break other.unwrap(),
                }
            }
        };
        let quiet = card.peek().unwrap_err();
        assert_eq!(quiet.kind(), io::ErrorKind::WouldBlock, "nothing yet");
        session.send(stream, b"?", Duration::from_secs(5)).unwrap();
        assert_eq!(peek("junk"), 4, "data nobody asked for");
        assert_eq!(card.peek().unwrap(), 4, "still there, in the session now");
        let n = session
            .read_blocking(stream, &mut [IoSliceMut::new(&mut buf)])
            .unwrap();
        assert_eq!(&buf[..n], b"junk");
        session.send(stream, b"!", Duration::from_secs(5)).unwrap();
        assert_eq!(peek("close_notify"), 0, "closed");
        let closed = session
            .read_blocking(stream, &mut [IoSliceMut::new(&mut buf)])
            .unwrap_err();
        assert_eq!(closed.kind(), io::ErrorKind::UnexpectedEof, "{closed}");
        let (asked, reply) = vicc.join().unwrap();
        assert_eq!(&asked, b"atr?");
        assert_eq!(&reply, b"reply");
    }

    #[test]
    fn a_plain_reader_that_others_can_reach_is_warned_about_once() {
        // One thread per slot index, to tell which slot said it.
        let threads = ["plain-warning-test-0", "plain-warning-test-1"];
        for (index, thread) in (0..).zip(threads) {
            crate::test_log::on_thread(thread, move || {
                let open = ReaderConfig::parse("/dev/null:35963/listen=0.0.0.0").unwrap();
                let local = ReaderConfig::parse("/dev/null:35963/listen=127.0.0.1").unwrap();
                for cfg in [&open, &local] {
                    assert!(Setup::load(cfg, "plain", index).unwrap().is_none());
                }
            });
        }
        let count = |thread| crate::test_log::count(thread, "plain: plain vpcd beyond loopback");
        assert_eq!(
            (count(threads[0]), count(threads[1])),
            (1, 0),
            "from the first slot of the reader that listens beyond loopback only"
        );
    }

    #[test]
    fn a_trust_file_is_read_whole_up_to_its_bound_and_a_missing_one_says_how_to_make_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(TRUST_FILE);
        let missing = read_small(&path).unwrap_err();
        assert!(
            missing.contains("vpcd-config tls init creates it"),
            "{missing}"
        );
        // One byte past the bound: read, so that the parser refuses it as too long.
        std::fs::write(&path, "#".repeat(MAX_FILE_LEN + 1)).unwrap();
        assert_eq!(read_small(&path).unwrap().len(), MAX_FILE_LEN + 1);
        std::fs::write(&path, "#".repeat(MAX_FILE_LEN + 100)).unwrap();
        assert_eq!(read_small(&path).unwrap().len(), MAX_FILE_LEN + 1);
        assert!(TrustList::parse(&read_small(&path).unwrap()).is_err());
    }

    /// A connected pair of loopback sockets: ours and the peer's.
    fn socket_pair() -> (TcpStream, TcpStream) {
        let listener = std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap();
        let ours = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (theirs, _) = listener.accept().unwrap();
        (ours, theirs)
    }

    /// The session a connecting secure slot gives its peer: its first flight (the
    /// ClientHello) waiting to go out.
    fn connecting_session() -> Session {
        let trusted = TrustList::parse(&format!("{}\n", identity(VICC_KEY).fingerprint)).unwrap();
        let config = link::client_config(&identity(READER_KEY), trusted).unwrap();
        Session::new(
            ClientConnection::new(config, link::server_name())
                .unwrap()
                .into(),
        )
    }

    #[test]
    fn a_flight_the_socket_refuses_fails_the_write() {
        let (ours, _theirs) = socket_pair();
        ours.set_nonblocking(true).unwrap();
        ours.shutdown(std::net::Shutdown::Write).unwrap();
        let err = connecting_session()
            .write_nonblocking(&ours, b"atr?")
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::BrokenPipe, "{err}");
    }

    #[test]
    fn a_flight_a_full_socket_cannot_take_yet_goes_out_with_a_later_flush() {
        let (ours, mut theirs) = socket_pair();
        ours.set_nonblocking(true).unwrap();
        theirs
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        // The peer reads nothing yet: fill both ends' buffers.
        let mut filled = 0;
        loop {
            match (&ours).write(&[0; 1 << 16]) {
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("{e}"),
            }
        }
        let session = connecting_session();
        session
            .write_nonblocking(&ours, b"atr?")
            .expect("a full socket is no error: the rest waits");
        let reader = std::thread::spawn(move || {
            let mut filler = vec![0; filled];
            theirs.read_exact(&mut filler).unwrap();
            let mut header = [0; 5];
            theirs.read_exact(&mut header).unwrap();
            header
        });
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !reader.is_finished() {
            session.write_nonblocking(&ours, b"").unwrap();
            assert!(
                std::time::Instant::now() < deadline,
                "the flight never went out"
            );
            std::thread::yield_now();
        }
        let header = reader.join().unwrap();
        assert_eq!(header[0], 0x16, "a TLS handshake record: {header:?}");
    }

    #[test]
    fn a_sockets_error_under_a_peek_is_reported_as_it_is() {
        let (ours, _theirs) = socket_pair();
        let session = accepting_session();
        let reset = session
            .peek(&ours, Err(io::ErrorKind::ConnectionReset.into()))
            .unwrap_err();
        assert_eq!(reset.kind(), io::ErrorKind::ConnectionReset, "{reset}");
        let quiet = session
            .peek(&ours, Err(io::ErrorKind::WouldBlock.into()))
            .unwrap_err();
        assert_eq!(quiet.kind(), io::ErrorKind::WouldBlock, "{quiet}");
    }

    #[test]
    fn the_tls_directory_is_the_default_one_unless_the_environment_names_another() {
        assert_eq!(dir_from(None), Path::new(DEFAULT_DIR));
        assert_eq!(
            dir_from(Some("".into())),
            Path::new(DEFAULT_DIR),
            "an empty one counts as unset"
        );
        assert_eq!(dir_from(Some("/srv/vpcd".into())), Path::new("/srv/vpcd"));
        // Whatever this process's environment says, never pcscd's current directory.
        assert!(!dir().as_os_str().is_empty());
    }

    #[test]
    fn a_file_that_cannot_be_opened_is_reported_with_what_to_do() {
        let missing = hint(io::ErrorKind::NotFound);
        assert!(missing.contains("vpcd-config tls init"), "{missing}");
        let denied = hint(io::ErrorKind::PermissionDenied);
        assert!(
            denied.contains("pcscd's user must be able to read"),
            "{denied}"
        );
        assert_eq!(hint(io::ErrorKind::InvalidData), "");
    }

    /// Writes the reader's test key and the trust list `trust` into `dir`.
    fn key_set(dir: &Path, trust: &str) {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join(KEY_FILE), READER_KEY).unwrap();
        std::fs::write(dir.join(TRUST_FILE), trust).unwrap();
    }

    #[test]
    fn a_secure_reader_uses_its_key_set_and_says_so_from_its_first_slot() {
        // One thread per slot index, to tell which slot said it.
        let threads = ["tls-load-test-0", "tls-load-test-1"];
        let base = tempfile::tempdir().unwrap();
        let root = base.path().to_owned();
        let vicc = identity(VICC_KEY).fingerprint;
        key_set(&root, "");
        key_set(&root.join("alice"), &format!("{vicc} phone\n"));
        for (index, thread) in (0..).zip(threads) {
            let at = root.clone();
            crate::test_log::on_thread(thread, move || {
                let listening = ReaderConfig::parse("/dev/null:35963/tls=yes").unwrap();
                let setup = Setup::load_in(&at, &listening, "default", index).unwrap();
                let setup = setup.expect("tls=yes has a setup");
                assert_eq!(setup.trust_path, at.join(TRUST_FILE));
                assert!(matches!(setup.config(), Config::Server(_)), "it listens");
                assert!(setup.session().unwrap().is_handshaking());
                let reversed = ReaderConfig::parse("localhost:35963/tls=yes/keys=alice").unwrap();
                let setup = Setup::load_in(&at, &reversed, "alice", index).unwrap();
                let setup = setup.expect("tls=yes has a setup");
                assert_eq!(setup.trust_path, at.join("alice").join(TRUST_FILE));
                assert!(matches!(setup.config(), Config::Client(_)), "it connects");
            });
        }
        let count = |line: &str| threads.map(|thread| crate::test_log::count(thread, line));
        let me = identity(READER_KEY).fingerprint;
        let using = |name: &str, dir: &Path, n: usize| {
            format!(
                "{name}: TLS 1.3 with key {me} ({}), trusting {n} peer key(s) of {}",
                dir.join(KEY_FILE).display(),
                dir.join(TRUST_FILE).display()
            )
        };
        assert_eq!(count(&using("default", &root, 0)), [1, 0]);
        assert_eq!(count(&using("alice", &root.join("alice"), 1)), [1, 0]);
        let nobody = format!(
            "default: {} trusts no peer key yet",
            root.join(TRUST_FILE).display()
        );
        assert_eq!(count(&nobody), [1, 0]);
        assert_eq!(count("trusts no peer key yet"), [1, 0], "alice trusts one");
    }

    #[test]
    fn a_secure_reader_with_unusable_files_stays_closed() {
        let base = tempfile::tempdir().unwrap();
        key_set(base.path(), "");
        let cfg = ReaderConfig::parse("/dev/null:35963/tls=yes/keys=bob").unwrap();
        let refused = |why: &str| {
            let err = Setup::load_in(base.path(), &cfg, "bob", 0).err().unwrap();
            assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
            let err = err.to_string();
            assert!(err.starts_with("tls=yes, but "), "{err}");
            assert!(err.contains(why), "{err}");
            assert!(err.ends_with("no plain fallback)"), "{err}");
        };
        let bob = base.path().join("bob");
        refused(&format!("cannot read {}", bob.join(KEY_FILE).display()));
        key_set(&bob, "not a fingerprint\n");
        refused(&format!("{} is malformed", bob.join(TRUST_FILE).display()));
        std::fs::write(bob.join(KEY_FILE), "not a key\n").unwrap();
        refused(&format!("{} is malformed", bob.join(KEY_FILE).display()));
    }

    /// A listening slot's setup whose trust list is the file at `trust_path`.
    fn listening_setup(trust_path: PathBuf) -> Setup {
        let me = identity(READER_KEY);
        let stamp = stamp(&trust_path);
        let trusted = TrustList::parse(&std::fs::read_to_string(&trust_path).unwrap()).unwrap();
        let config = configure(&me, true, trusted).unwrap();
        Setup {
            me,
            listening: true,
            trust_path,
            label: "tls-test".into(),
            current: Mutex::new(Current { stamp, config }),
        }
    }

    fn server(config: Config) -> Arc<ServerConfig> {
        match config {
            Config::Server(config) => config,
            Config::Client(_) => panic!("a listening slot is the TLS server"),
        }
    }

    /// Replaces the file as `vpcd-config tls trust` does: a new file renamed over it
    /// (a new inode, the length may stay the same).
    fn replace(path: &Path, text: &str) {
        let new = path.with_extension("new");
        std::fs::write(&new, text).unwrap();
        std::fs::rename(&new, path).unwrap();
    }

    #[test]
    fn the_trust_list_follows_its_file_and_a_spoiled_one_keeps_the_last_good() {
        let thread = "trust-reload-test";
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(TRUST_FILE);
        let vicc = identity(VICC_KEY).fingerprint;
        std::fs::write(&path, "# nobody yet\n").unwrap();
        crate::test_log::on_thread(thread, move || {
            let setup = listening_setup(path.clone());
            let first = server(setup.config());
            assert!(
                Arc::ptr_eq(&first, &server(setup.config())),
                "an unchanged file is not read again"
            );
            // Written in place: longer.
            std::fs::write(&path, format!("{vicc} phone\n")).unwrap();
            let second = server(setup.config());
            assert!(!Arc::ptr_eq(&first, &second), "rebuilt after a write");
            assert!(Arc::ptr_eq(&second, &server(setup.config())));
            // Renamed over, the same length.
            replace(&path, &format!("{vicc} other\n"));
            let third = server(setup.config());
            assert!(!Arc::ptr_eq(&second, &third), "rebuilt after a rename");
            // Spoiled: the last good list stays, and it is said once.
            replace(&path, "not a fingerprint\n");
            assert!(Arc::ptr_eq(&third, &server(setup.config())));
            assert!(Arc::ptr_eq(&third, &server(setup.config())));
            // Gone: the same.
            std::fs::remove_file(&path).unwrap();
            assert!(Arc::ptr_eq(&third, &server(setup.config())));
            assert!(Arc::ptr_eq(&third, &server(setup.config())));
            // Back, empty: trusting nobody from now on.
            std::fs::write(&path, "").unwrap();
            assert!(!Arc::ptr_eq(&third, &server(setup.config())));
        });
        let count = |line: &str| crate::test_log::count(thread, line);
        assert_eq!(count("changed: trusting 1 peer key(s) from now on"), 2);
        assert_eq!(count("changed: trusting 0 peer key(s) from now on"), 1);
        assert_eq!(count("is malformed: line 1"), 1, "said once");
        assert_eq!(count("cannot read"), 1, "said once");
        assert_eq!(count("keeping the trust list read before"), 2);
    }

    /// Moves what `from` has to send into `to`; whether there was anything.
    fn transfer(from: &mut Connection, to: &mut Connection) -> bool {
        let mut bytes = Vec::new();
        while from.wants_write() {
            from.write_tls(&mut bytes).unwrap();
        }
        let mut rest = &bytes[..];
        while !rest.is_empty() {
            to.read_tls(&mut rest).unwrap();
            to.process_new_packets().unwrap();
        }
        !bytes.is_empty()
    }

    /// A card's session whose handshake with the test vicc is done (in memory), and
    /// the vicc's connection, which makes the records the tests put on the wire.
    fn established() -> (Session, Connection) {
        let trusted = TrustList::parse(&format!("{}\n", identity(READER_KEY).fingerprint)).unwrap();
        let config = link::client_config(&identity(VICC_KEY), trusted).unwrap();
        let mut vicc: Connection = ClientConnection::new(config, link::server_name())
            .unwrap()
            .into();
        let session = session_trusting_the_vicc();
        {
            let mut link = session.link.lock();
            while transfer(&mut vicc, &mut link.conn) | transfer(&mut link.conn, &mut vicc) {}
            assert!(!link.conn.is_handshaking());
        }
        (session, vicc)
    }

    /// `plaintext` as the vicc's records on the wire.
    fn seal(vicc: &mut Connection, plaintext: &[u8]) -> Vec<u8> {
        vicc.writer().write_all(plaintext).unwrap();
        let mut records = Vec::new();
        while vicc.wants_write() {
            vicc.write_tls(&mut records).unwrap();
        }
        records
    }

    /// A card's end of a loopback connection (reads time out after `timeout`), and
    /// the vicc's raw end.
    fn card_socket(timeout: Duration) -> (TcpStream, TcpStream) {
        let (ours, theirs) = socket_pair();
        crate::net::configure_peer(&ours, timeout).unwrap();
        (ours, theirs)
    }

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    /// How many bytes wait in the socket, without taking them or blocking.
    fn waiting(stream: &TcpStream) -> usize {
        let mut buf = vec![std::mem::MaybeUninit::<u8>::uninit(); 1 << 18];
        match socket2::SockRef::from(stream)
            .recv_with_flags(&mut buf, libc::MSG_PEEK | libc::MSG_DONTWAIT)
        {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
            Err(e) => panic!("{e}"),
        }
    }

    /// Waits until at least `len` bytes wait in the socket.
    fn arrived(stream: &TcpStream, len: usize) {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while waiting(stream) < len {
            assert!(std::time::Instant::now() < deadline, "the bytes never came");
            std::thread::yield_now();
        }
    }

    /// The card's socket holds nothing more: its reads took it all.
    fn drained(stream: &TcpStream) {
        assert_eq!(waiting(stream), 0);
    }

    /// Puts `wire` on the vicc's end and waits until all of it is in the card's socket.
    fn deliver(theirs: &mut TcpStream, ours: &TcpStream, wire: &[u8]) {
        theirs.write_all(wire).unwrap();
        arrived(ours, wire.len());
    }

    /// One card read into `buf`.
    fn read_into(session: &Session, ours: &TcpStream, buf: &mut [u8]) -> io::Result<usize> {
        session.read_blocking(ours, &mut [IoSliceMut::new(buf)])
    }

    /// Card reads of at most `chunk` bytes, each delivering some, until `len` came.
    fn read_len(session: &Session, ours: &TcpStream, len: usize, chunk: usize) -> Vec<u8> {
        let mut got = Vec::new();
        let mut buf = vec![0u8; chunk];
        while got.len() < len {
            let n = read_into(session, ours, &mut buf).unwrap();
            assert!(n > 0 && n <= buf.len());
            got.extend_from_slice(&buf[..n]);
        }
        got
    }

    #[test]
    fn a_reply_of_several_records_fills_the_buffers_in_one_read() {
        let (session, mut vicc) = established();
        let (ours, mut theirs) = card_socket(Duration::from_secs(5));
        let reply = pattern(40_000);
        let records = seal(&mut vicc, &reply);
        assert!(records.len() > 2 * 16_384, "three records");
        theirs.write_all(&records).unwrap();
        let mut prefix = [0u8; 2];
        let mut into = vec![0u8; 65_536];
        let mut n = 0;
        // The bytes may reach the socket in pieces; each read delivers what came.
        while n < reply.len() {
            let mut bufs = [IoSliceMut::new(&mut prefix), IoSliceMut::new(&mut into)];
            let mut rest = &mut bufs[..];
            IoSliceMut::advance_slices(&mut rest, n);
            n += session.read_blocking(&ours, rest).unwrap();
        }
        assert_eq!(n, reply.len());
        assert_eq!(prefix, reply[..2]);
        assert_eq!(into[..n - 2], reply[2..]);
        // All of it at once, once it is all there.
        let records = seal(&mut vicc, &reply);
        deliver(&mut theirs, &ours, &records);
        let n = read_into(&session, &ours, &mut into).unwrap();
        assert_eq!(into[..n], reply[..], "one call, every record");
        drained(&ours);
    }

    #[test]
    fn a_small_buffer_takes_a_reply_in_turns_and_nothing_is_lost() {
        let (session, mut vicc) = established();
        let (ours, mut theirs) = card_socket(Duration::from_secs(5));
        let reply = pattern(50_000);
        theirs.write_all(&seal(&mut vicc, &reply)).unwrap();
        let got = read_len(&session, &ours, reply.len(), 777);
        assert_eq!(got, reply);
        assert_eq!(
            read_into(&session, &ours, &mut []).unwrap(),
            0,
            "no room: nothing read, nothing waited for"
        );
    }

    #[test]
    fn a_record_cut_by_the_read_timeout_is_completed_by_the_next_read() {
        let (session, mut vicc) = established();
        let (ours, mut theirs) = card_socket(Duration::from_millis(50));
        let reply = pattern(20_000);
        let records = seal(&mut vicc, &reply);
        let (first, second) = records.split_at(records.len() / 2 + 3);
        theirs.write_all(first).unwrap();
        let mut buf = vec![0u8; 65_536];
        let timed_out = read_into(&session, &ours, &mut buf).unwrap_err();
        assert!(
            matches!(
                timed_out.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ),
            "{timed_out}"
        );
        theirs.write_all(second).unwrap();
        let got = read_len(&session, &ours, reply.len(), buf.len());
        assert_eq!(got, reply, "the first half was kept, in order");
    }

    #[test]
    fn an_end_in_the_middle_of_a_record_is_an_unexpected_end() {
        let (session, mut vicc) = established();
        let (ours, mut theirs) = card_socket(Duration::from_secs(5));
        let records = seal(&mut vicc, &pattern(9000));
        theirs.write_all(&records[..records.len() - 1]).unwrap();
        theirs.shutdown(std::net::Shutdown::Write).unwrap();
        let mut buf = vec![0u8; 65_536];
        let cut = read_into(&session, &ours, &mut buf).unwrap_err();
        assert_eq!(cut.kind(), io::ErrorKind::UnexpectedEof, "{cut}");
    }

    /// A reply with data nobody asked for behind it, both in the card's socket; one
    /// read of the reply's length takes the reply and leaves the socket empty (the
    /// rest was read with it). The data behind it.
    fn reply_then_junk(
        session: &Session,
        vicc: &mut Connection,
        theirs: &mut TcpStream,
        ours: &TcpStream,
    ) -> Vec<u8> {
        // Large enough that rustls takes them from memory in several turns.
        let reply = pattern(10_000);
        let junk = pattern(9_000);
        let mut wire = seal(vicc, &reply);
        wire.extend(seal(vicc, &junk));
        deliver(theirs, ours, &wire);
        let mut buf = vec![0u8; reply.len()];
        let n = read_into(session, ours, &mut buf).unwrap();
        assert_eq!(buf[..n], reply[..]);
        drained(ours);
        junk
    }

    #[test]
    fn bytes_after_the_reply_wait_for_the_next_read_and_the_peek_sees_them() {
        let (session, mut vicc) = established();
        let (ours, mut theirs) = card_socket(Duration::from_secs(5));
        let junk = reply_then_junk(&session, &mut vicc, &mut theirs, &ours);
        // Not in the socket any more, but not lost.
        let seen = session
            .peek(&ours, Err(io::ErrorKind::WouldBlock.into()))
            .unwrap();
        assert_eq!(seen, junk.len(), "data nobody asked for");
        let mut more = vec![0u8; 65_536];
        let n = read_into(&session, &ours, &mut more).unwrap();
        assert_eq!(more[..n], junk[..]);
    }

    #[test]
    fn a_peek_with_bytes_in_the_socket_takes_the_bytes_read_before_first() {
        let (session, mut vicc) = established();
        let (ours, mut theirs) = card_socket(Duration::from_secs(5));
        let junk = reply_then_junk(&session, &mut vicc, &mut theirs, &ours);
        // More arrives behind the junk: the peek must not skip what was read before.
        theirs.write_all(&seal(&mut vicc, b"late")).unwrap();
        arrived(&ours, 1);
        assert_eq!(session.peek(&ours, Ok(1)).unwrap(), junk.len());
        let got = read_len(&session, &ours, junk.len() + 4, 65_536);
        assert_eq!(got[..junk.len()], junk[..]);
        assert_eq!(&got[junk.len()..], b"late");
    }

    #[test]
    fn a_bad_record_after_good_ones_fails_the_read_after_their_bytes() {
        let (session, mut vicc) = established();
        let (ours, mut theirs) = card_socket(Duration::from_secs(5));
        let reply = pattern(100);
        let mut wire = seal(&mut vicc, &reply);
        let mut bad = seal(&mut vicc, b"spoiled");
        let last = bad.len() - 1;
        bad[last] ^= 1;
        wire.extend(bad);
        deliver(&mut theirs, &ours, &wire);
        let mut buf = vec![0u8; 65_536];
        let n = read_into(&session, &ours, &mut buf).unwrap();
        assert_eq!(buf[..n], reply[..]);
        let bad = read_into(&session, &ours, &mut buf).unwrap_err();
        assert_eq!(bad.kind(), io::ErrorKind::InvalidData, "{bad}");
    }

    #[test]
    fn data_then_close_notify_in_one_read_gives_the_data_then_the_end() {
        let (session, mut vicc) = established();
        let (ours, mut theirs) = card_socket(Duration::from_secs(5));
        // Larger than rustls takes at once, and bytes after the close_notify (which
        // rustls ignores): the read has the data while some bytes read are left.
        let reply = pattern(5000);
        let mut wire = seal(&mut vicc, &reply);
        vicc.send_close_notify();
        wire.extend(seal(&mut vicc, b""));
        wire.extend(pattern(6000));
        deliver(&mut theirs, &ours, &wire);
        let mut buf = vec![0u8; 65_536];
        let n = read_into(&session, &ours, &mut buf).unwrap();
        assert_eq!(buf[..n], reply[..]);
        // The TCP connection stays open: the end is the close_notify, not the socket's.
        let end = read_into(&session, &ours, &mut buf).unwrap_err();
        assert_eq!(end.kind(), io::ErrorKind::UnexpectedEof, "{end}");
    }

    #[test]
    fn the_feed_gives_bytes_read_before_then_reads_the_socket_in_one_go() {
        let (ours, mut theirs) = card_socket(Duration::from_secs(5));
        let mut inbound = Inbound::default();
        theirs.write_all(&pattern(3000)).unwrap();
        arrived(&ours, 3000);
        let mut feed = Feed {
            inbound: &mut inbound,
            stream: &ours,
        };
        assert_eq!(
            feed.read(&mut []).unwrap(),
            0,
            "no room: the socket is not read"
        );
        assert!(feed.inbound.is_empty());
        let mut out = [0u8; 1000];
        assert_eq!(feed.read(&mut out).unwrap(), 1000);
        assert_eq!(out[..], pattern(3000)[..1000]);
        assert_eq!(
            feed.inbound.end - feed.inbound.start,
            2000,
            "the rest, kept"
        );
        drained(&ours);
        let mut big = [0u8; 4096];
        assert_eq!(feed.read(&mut big).unwrap(), 2000);
        assert_eq!(big[..2000], pattern(3000)[1000..]);
        assert!(feed.inbound.is_empty());
        theirs.shutdown(std::net::Shutdown::Write).unwrap();
        assert_eq!(feed.read(&mut big).unwrap(), 0, "the end");
    }
}
