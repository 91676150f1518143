//! A peer's connection as a slot holds it, whatever protocol the peer speaks: the
//! bookkeeping the vpcd slot and the VSCard hub share.
//!
//! Every connection gets a process-wide id that is never reused. Whoever acts on a
//! connection it looked up earlier (an exchange that failed, the watcher that saw a
//! hangup) removes it by that id, so it can never drop the peer that has taken its
//! place in the meantime.

use std::io;
use std::mem::MaybeUninit;
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use socket2::SockRef;
use vpcd_protocol::hex;

use crate::net;
use crate::tls::Session;

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// A new process-wide id (for connections, and for the VSCard hub's exchanges).
pub(crate) fn next_id() -> u64 {
    NEXT_ID.fetch_add(1, Ordering::Relaxed)
}

/// One connected peer. `X` is what the slot kind keeps with it (the vpcd slot: what
/// the vicc announced; the VSCard hub: the lock that keeps messages whole).
pub(crate) struct Conn<X> {
    pub id: u64,
    pub stream: TcpStream,
    pub peer: SocketAddr,
    pub extra: X,
    /// TLS hook: the session of a `tls=yes` reader's peer (src/tls.rs); the VSCard
    /// hub's peers have none.
    pub tls: Option<Session>,
}

impl<X> Conn<X> {
    /// Readies a peer for blocking exchanges bounded by `timeout`
    /// ([`net::configure_peer`]) and gives it an id; says why not.
    pub fn new(
        stream: TcpStream,
        peer: SocketAddr,
        timeout: Duration,
        extra: X,
    ) -> Result<Conn<X>, String> {
        net::configure_peer(&stream, timeout)
            .map_err(|e| format!("cannot set up connection from {peer}: {e}"))?;
        Ok(Conn {
            id: next_id(),
            stream,
            peer,
            extra,
            tls: None,
        })
    }

    /// The same connection, going through `tls` (the session its proof set up).
    pub fn with_tls(self, tls: Option<Session>) -> Conn<X> {
        Conn { tls, ..self }
    }

    /// Looks at the next byte without taking it and without blocking, through the
    /// TLS session if any: `Ok(0)` once the peer has closed, `Ok(n)` if it sent data,
    /// `WouldBlock` if nothing is there (or only TLS housekeeping, or an exchange holds
    /// the session).
    pub fn peek(&self) -> io::Result<usize> {
        let raw = peek(&self.stream);
        match &self.tls {
            Some(session) => session.peek(&self.stream, raw),
            None => raw,
        }
    }
}

/// Looks at the next byte of the socket without taking it and without blocking.
fn peek(stream: &TcpStream) -> io::Result<usize> {
    let mut byte = [MaybeUninit::<u8>::uninit(); 1];
    SockRef::from(stream).recv_with_flags(&mut byte, libc::MSG_PEEK | libc::MSG_DONTWAIT)
}

/// The one connection a slot (or a VSCard reader) serves, if any.
pub(crate) struct Current<X>(Option<Arc<Conn<X>>>);

impl<X> Default for Current<X> {
    fn default() -> Self {
        Current(None)
    }
}

impl<X> Current<X> {
    pub fn get(&self) -> Option<Arc<Conn<X>>> {
        self.0.clone()
    }

    /// Whether connection `id` is the current one.
    pub fn is(&self, id: u64) -> bool {
        self.0.as_ref().is_some_and(|c| c.id == id)
    }

    /// Makes `conn` the current connection unless there is one; `Err` names its peer.
    pub fn install(&mut self, conn: Conn<X>) -> Result<Arc<Conn<X>>, SocketAddr> {
        if let Some(active) = &self.0 {
            return Err(active.peer);
        }
        let conn = Arc::new(conn);
        self.0 = Some(Arc::clone(&conn));
        Ok(conn)
    }

    /// Takes connection `id` out, if it still is the current one, and shuts it down:
    /// an exchange blocked on it on another thread fails at once.
    pub fn remove(&mut self, id: u64) -> Option<Arc<Conn<X>>> {
        if !self.is(id) {
            return None;
        }
        self.close()
    }

    /// Takes whatever connection there is out and shuts it down.
    pub fn close(&mut self) -> Option<Arc<Conn<X>>> {
        let conn = self.0.take()?;
        let _ = conn.stream.shutdown(Shutdown::Both);
        Some(conn)
    }
}

/// Which way an APDU travels, for [`trace_apdu`].
#[derive(Debug, Clone, Copy)]
pub(crate) enum Way {
    Command,
    Reply,
}

/// Logs an APDU of a reader that traces them (`trace=yes`).
pub(crate) fn trace_apdu(on: bool, label: &str, way: Way, apdu: &[u8]) {
    if on {
        let arrow = match way {
            Way::Command => '>',
            Way::Reply => '<',
        };
        log::info!("{label}: APDU {arrow} {}", hex(apdu));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::net::{Ipv4Addr, TcpListener};

    fn conn(extra: u8) -> (Conn<u8>, TcpStream) {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let theirs = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (ours, peer) = listener.accept().unwrap();
        (
            Conn::new(ours, peer, Duration::from_secs(5), extra).unwrap(),
            theirs,
        )
    }

    fn closed(mut theirs: TcpStream) -> bool {
        theirs
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        matches!(theirs.read(&mut [0u8; 1]), Ok(0))
    }

    #[test]
    fn peek_neither_waits_nor_takes_the_byte() {
        use std::io::Write;
        let (ours, mut theirs) = conn(0);
        let err = ours.peek().expect_err("nothing sent yet");
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
        theirs.write_all(b"xy").unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let seen = loop {
            match ours.peek() {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    assert!(std::time::Instant::now() < deadline, "the bytes never came");
                    std::thread::yield_now();
                }
                Err(e) => panic!("peek: {e}"),
            }
        };
        assert_eq!(seen, 1, "peek looks at one byte");
        let mut got = [0u8; 2];
        (&ours.stream).read_exact(&mut got).unwrap();
        assert_eq!(&got, b"xy", "the peeked byte is still there");
        drop(theirs);
    }

    /// A secure connection is looked at through its session: bytes that are no TLS
    /// record are a TLS error, not data a card sent.
    #[test]
    fn a_secure_connections_peek_goes_through_its_session() {
        use std::io::Write;
        let (ours, mut theirs) = conn(0);
        let ours = ours.with_tls(Some(crate::tls::tests::accepting_session()));
        assert!(ours.tls.is_some());
        theirs.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let err = loop {
            match ours.peek() {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    assert!(std::time::Instant::now() < deadline, "the bytes never came");
                    std::thread::yield_now();
                }
                other => break other.expect_err("no application data"),
            }
        };
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
        assert!(err.to_string().starts_with("TLS: "), "{err}");
        assert!(ours.with_tls(None).tls.is_none());
    }

    #[test]
    fn apdus_are_traced_only_when_asked_with_their_direction() {
        let thread = "trace-test";
        crate::test_log::on_thread(thread, || {
            trace_apdu(true, "r", Way::Command, &[0x00, 0xA4]);
            trace_apdu(true, "r", Way::Reply, &[0x90, 0x00]);
            trace_apdu(false, "r", Way::Command, &[0x11]);
        });
        assert_eq!(crate::test_log::count(thread, "r: APDU > 00 A4"), 1);
        assert_eq!(crate::test_log::count(thread, "r: APDU < 90 00"), 1);
        assert_eq!(crate::test_log::count(thread, "APDU"), 2, "not when off");
    }

    #[test]
    fn ids_are_never_reused() {
        let (a, _ta) = conn(1);
        let (b, _tb) = conn(2);
        assert!(b.id > a.id);
        assert!(next_id() > b.id);
    }

    #[test]
    fn one_connection_at_a_time() {
        let mut current = Current::default();
        assert!(current.get().is_none());
        let (a, _ta) = conn(1);
        let (b, _tb) = conn(2);
        let (a_id, a_peer) = (a.id, a.peer);
        let installed = current.install(a).unwrap();
        assert_eq!(installed.extra, 1);
        assert!(current.is(a_id));
        assert_eq!(
            current.install(b).err(),
            Some(a_peer),
            "busy: names the peer"
        );
        assert_eq!(current.get().unwrap().id, a_id, "the first one stays");
    }

    #[test]
    fn a_removal_by_a_stale_id_leaves_the_successor_alone() {
        let mut current = Current::default();
        let (a, ta) = conn(1);
        let a_id = a.id;
        current.install(a).unwrap();
        assert_eq!(current.remove(a_id).unwrap().id, a_id);
        assert!(closed(ta), "removed means shut down");
        assert!(current.remove(a_id).is_none(), "once");
        let (b, _tb) = conn(2);
        let b_id = b.id;
        current.install(b).unwrap();
        assert!(
            current.remove(a_id).is_none(),
            "the old id misses the new peer"
        );
        assert!(!current.is(a_id));
        assert!(current.is(b_id));
        assert_eq!(current.close().unwrap().id, b_id);
        assert!(current.close().is_none());
        assert!(!current.is(b_id));
    }
}
