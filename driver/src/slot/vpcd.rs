//! One slot of a reader: its vicc connection, its card state, and the watcher thread
//! that notices a vicc arriving or leaving the moment it happens.
//!
//! Two kinds of thread touch a slot:
//! - pcscd's threads call [`VpcdSlot::power`], [`VpcdSlot::transmit`] and friends. Each
//!   exchange holds the slot's `io` lock, so commands on one slot are serialized while
//!   other slots and readers run in parallel.
//! - the slot's watcher thread accepts (or, reversed, connects) vicc sockets and
//!   watches the connected one for the peer going away. It never reads data, so it
//!   cannot race an exchange for the bytes of a reply.
//!
//! Card presence is whether a vicc is connected; every change goes through
//! [`Presence`], which wakes pcscd's polling callback, so an insertion or removal is
//! reported at once and no traffic is sent to the vicc while nothing changes.

use std::io::{self, IoSliceMut, Read, Write};
use std::mem::MaybeUninit;
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use socket2::{Domain, SockRef, Socket, Type};

use vpcd_protocol::config::{Endpoint, ReaderConfig};
use vpcd_protocol::hex;
use vpcd_protocol::vpcd::{
    self as protocol, Control, ProtocolError, ReplyError, HEADER_LEN, MAX_ATR_LEN,
};

use super::{CardSlot, Limits, PowerAction, SlotError};
use crate::net;
use crate::presence::Presence;
use crate::sys::{self, Interest};

/// First wait before reconnecting to a reversed-mode vicc, and the cap of the backoff.
const RECONNECT_FIRST: Duration = Duration::from_millis(20);
const RECONNECT_MAX: Duration = Duration::from_millis(1000);
/// How long one outgoing connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

static NEXT_CONN_ID: AtomicU64 = AtomicU64::new(1);

/// One connected vicc.
struct Conn {
    id: u64,
    stream: TcpStream,
    peer: SocketAddr,
}

#[derive(Default)]
struct State {
    conn: Option<Arc<Conn>>,
    closing: bool,
    /// The ATR of the powered card.
    atr: Option<Vec<u8>>,
}

/// The part of a slot its watcher thread shares.
struct Shared {
    label: String,
    timeout: Duration,
    trace_apdus: bool,
    state: Mutex<State>,
    presence: Presence,
    /// Held for the whole of one command/reply exchange.
    io: Mutex<Vec<u8>>,
}

/// Where the watcher gets its vicc from.
enum Source {
    Listener(TcpListener),
    Connector(Connector),
}

pub(crate) struct VpcdSlot {
    shared: Arc<Shared>,
    wake: UnixStream,
    watcher: Mutex<Option<JoinHandle<()>>>,
}

impl VpcdSlot {
    /// Opens slot `index` of a reader: binds its port (or prepares to connect out)
    /// and starts its watcher thread.
    pub(crate) fn open(cfg: &ReaderConfig, lun: u32, index: u16) -> io::Result<VpcdSlot> {
        let port = cfg.port_of(index).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "slot {index} does not exist: the reader has {} slot(s)",
                    cfg.slots
                ),
            )
        })?;
        let (label, source) = match &cfg.endpoint {
            Endpoint::Listen { addr, v6only } => {
                let at = SocketAddr::new(*addr, port);
                let listener = net::listen(at, *v6only)
                    .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {at}: {e}")))?;
                (
                    format!("lun {lun:#x} listen {at}"),
                    Source::Listener(listener),
                )
            }
            Endpoint::Connect { host } => (
                format!("lun {lun:#x} connect {host}:{port}"),
                Source::Connector(Connector::new(host.clone(), port)),
            ),
        };
        let shared = Arc::new(Shared {
            label,
            timeout: cfg.timeout,
            trace_apdus: cfg.trace_apdus,
            state: Mutex::new(State::default()),
            presence: Presence::new(),
            io: Mutex::new(Vec::new()),
        });
        let (wake, wake_rx) = UnixStream::pair()?;
        wake.set_nonblocking(true)?;
        wake_rx.set_nonblocking(true)?;
        let watcher_shared = Arc::clone(&shared);
        let handle = std::thread::Builder::new()
            .name(format!("vpcd-{lun:x}"))
            .spawn(move || watch(&watcher_shared, source, wake_rx))?;
        log::info!("{}: slot open", shared.label);
        Ok(VpcdSlot {
            shared,
            wake,
            watcher: Mutex::new(Some(handle)),
        })
    }
}

impl CardSlot for VpcdSlot {
    fn label(&self) -> &str {
        &self.shared.label
    }

    fn limits(&self) -> Limits {
        Limits {
            max_command: protocol::MAX_PAYLOAD,
            max_command_data: protocol::MAX_APDU_DATA,
        }
    }

    fn presence(&self) -> &Presence {
        &self.shared.presence
    }

    /// The ATR of the powered card, if any.
    fn atr(&self) -> Option<Vec<u8>> {
        self.shared.state.lock().atr.clone()
    }

    /// Powers the card up, down or resets it; returns the ATR (empty after power down).
    fn power(&self, action: PowerAction) -> Result<Vec<u8>, SlotError> {
        let conn = match (self.shared.current(), action) {
            (Some(conn), _) => conn,
            (None, PowerAction::Down) => return Ok(Vec::new()),
            (None, _) => return Err(SlotError::NoCard),
        };
        let mut io = self.shared.io.lock();
        self.shared.state.lock().atr = None;
        let result = match action {
            PowerAction::Down => self
                .shared
                .send(&conn, &Control::PowerOff.frame())
                .map(|()| Vec::new()),
            PowerAction::Up | PowerAction::Reset => {
                let first = if action == PowerAction::Up {
                    Control::PowerOn
                } else {
                    Control::Reset
                };
                io.clear();
                io.extend_from_slice(&first.frame());
                io.extend_from_slice(&Control::GetAtr.frame());
                self.shared.send(&conn, &io).and_then(|()| {
                    let mut atr = [0u8; MAX_ATR_LEN];
                    let n = self.shared.receive(&conn, &mut atr)?;
                    protocol::check_atr(&atr[..n])?;
                    Ok(atr[..n].to_vec())
                })
            }
        };
        drop(io);
        match result {
            Ok(atr) => {
                if !atr.is_empty() {
                    log::debug!("{}: ATR {}", self.label(), hex(&atr));
                    self.shared.state.lock().atr = Some(atr.clone());
                }
                Ok(atr)
            }
            Err(e) => Err(self.shared.fail(&conn, e)),
        }
    }

    /// Sends one command APDU and copies the vicc's reply into `reply`; returns its
    /// length.
    fn transmit(&self, apdu: &[u8], reply: &mut [u8]) -> Result<usize, SlotError> {
        let conn = self.shared.current().ok_or(SlotError::NoCard)?;
        if apdu.len() < 2 {
            let e = ProtocolError::CommandTooShort(apdu.len());
            log::error!("{}: refusing the command: {e}", self.label());
            return Err(e.into());
        }
        if self.shared.trace_apdus {
            log::info!("{}: APDU > {}", self.label(), hex(apdu));
        }
        let mut io = self.shared.io.lock();
        io.clear();
        let result = protocol::encode(apdu, &mut io)
            .map_err(SlotError::from)
            .and_then(|()| self.shared.send(&conn, &io))
            .and_then(|()| self.shared.receive(&conn, reply))
            .and_then(|n| {
                protocol::check_reply(n, reply.len())?;
                Ok(n)
            });
        drop(io);
        match result {
            Ok(n) => {
                if self.shared.trace_apdus {
                    log::info!("{}: APDU < {}", self.label(), hex(&reply[..n]));
                }
                Ok(n)
            }
            Err(e) => Err(self.shared.fail(&conn, e)),
        }
    }

    /// Drops the connected vicc, if any: a card removal, and an exchange in flight
    /// fails at once.
    fn drop_peer(&self, why: &str) {
        if let Some(conn) = self.shared.current() {
            self.shared.remove(conn.id, why);
        }
    }

    /// Stops the watcher thread and drops the vicc; blocked exchanges on other threads
    /// fail at once. Idempotent.
    fn close(&self) {
        {
            let mut s = self.shared.state.lock();
            s.closing = true;
            if let Some(conn) = s.conn.take() {
                let _ = conn.stream.shutdown(std::net::Shutdown::Both);
            }
        }
        self.shared.presence.close();
        let _ = (&self.wake).write(&[1]);
        if let Some(handle) = self.watcher.lock().take() {
            if handle.join().is_err() {
                log::error!("{}: watcher thread panicked", self.label());
            }
            log::info!("{}: slot closed", self.label());
        }
    }
}

impl Drop for VpcdSlot {
    fn drop(&mut self) {
        self.close();
    }
}

impl Shared {
    fn current(&self) -> Option<Arc<Conn>> {
        self.state.lock().conn.clone()
    }

    /// Writes a whole frame sequence within the reader's timeout.
    /// Before that, makes sure the vicc has not sent anything unasked: stale bytes
    /// would be taken for the reply to this command.
    fn send(&self, conn: &Conn, bytes: &[u8]) -> Result<(), SlotError> {
        match peek(&conn.stream) {
            Ok(0) => return Err(SlotError::Io(io::ErrorKind::UnexpectedEof.into())),
            Ok(_) => {
                return Err(SlotError::Io(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "vicc sent data nobody asked for",
                )))
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e.into()),
        }
        net::write_all_within(&conn.stream, bytes, self.timeout)?;
        Ok(())
    }

    /// Reads one reply frame into `into`; the frame must fit.
    fn receive(&self, conn: &Conn, into: &mut [u8]) -> Result<usize, SlotError> {
        let mut reader = DeadlineReader::new(&conn.stream, self.timeout);
        let mut prefix = [0u8; HEADER_LEN];
        // One readv usually takes the prefix and the whole reply, straight into place.
        let n = reader.read(&mut [IoSliceMut::new(&mut prefix), IoSliceMut::new(into)])?;
        if n < HEADER_LEN {
            reader.read_exact(&mut prefix[n..])?;
        }
        let got = n.saturating_sub(HEADER_LEN);
        match protocol::plan_reply(prefix, got, into.len()) {
            Ok(plan) => {
                reader.read_exact(&mut into[got..plan.len])?;
                Ok(plan.len)
            }
            Err(e @ ReplyError::OutOfStep { .. }) => Err(SlotError::Io(io::Error::new(
                io::ErrorKind::InvalidData,
                e.to_string(),
            ))),
            Err(ReplyError::Refused { error, discard }) => {
                reader.discard(discard)?;
                Err(error.into())
            }
        }
    }

    /// Logs a failed exchange; drops the vicc unless the stream is still in step.
    fn fail(&self, conn: &Conn, e: SlotError) -> SlotError {
        match &e {
            SlotError::Protocol(_) | SlotError::ReplyTooLarge { .. } => {
                log::error!("{}: {e}", self.label)
            }
            SlotError::NoCard => {}
            SlotError::Timeout | SlotError::Io(_) => {
                log::error!("{}: {e}; dropping vicc {}", self.label, conn.peer);
                self.remove(conn.id, "exchange failed");
            }
        }
        e
    }

    /// Makes a connected vicc the slot's card, unless the slot already has one.
    fn insert(&self, stream: TcpStream, peer: SocketAddr) {
        if let Err(e) = net::configure_peer(&stream, self.timeout) {
            log::error!("{}: cannot set up connection from {peer}: {e}", self.label);
            return;
        }
        let mut s = self.state.lock();
        if s.closing {
            return;
        }
        // The active vicc may have left a moment ago, unnoticed yet.
        let gone = s.conn.as_ref().filter(|c| matches!(peek(&c.stream), Ok(0)));
        if let Some(id) = gone.map(|c| c.id) {
            drop(s);
            self.remove(id, "vicc closed the connection");
            s = self.state.lock();
            if s.closing {
                return;
            }
        }
        if let Some(active) = &s.conn {
            log::warn!(
                "{}: refusing vicc {peer}: slot is busy with {}",
                self.label,
                active.peer
            );
            return;
        }
        s.conn = Some(Arc::new(Conn {
            id: NEXT_CONN_ID.fetch_add(1, Ordering::Relaxed),
            stream,
            peer,
        }));
        s.atr = None;
        self.presence.insert();
        drop(s);
        log::info!("{}: vicc {peer} connected: card inserted", self.label);
    }

    /// Drops the vicc `id` if it is still the slot's card.
    fn remove(&self, id: u64, why: &str) {
        let mut s = self.state.lock();
        if s.conn.as_ref().map(|c| c.id) != Some(id) {
            return;
        }
        let Some(conn) = s.conn.take() else {
            return;
        };
        let _ = conn.stream.shutdown(std::net::Shutdown::Both);
        s.atr = None;
        self.presence.remove();
        drop(s);
        log::info!(
            "{}: vicc {} gone ({why}): card removed",
            self.label,
            conn.peer
        );
    }
}

/// The watcher thread's loop.
fn watch(shared: &Shared, mut source: Source, wake_rx: UnixStream) {
    loop {
        let conn = {
            let s = shared.state.lock();
            if s.closing {
                break;
            }
            s.conn.clone()
        };
        if let (Source::Connector(c), None) = (&mut source, &conn) {
            if let Some(stream) = c.step(&shared.label) {
                c.connected(&shared.label);
                let peer = stream.peer_addr().unwrap_or(c.target());
                shared.insert(stream, peer);
                continue;
            }
        }
        let mut fds = vec![(wake_rx.as_fd(), Interest::Read)];
        let mut timeout = None;
        match &source {
            Source::Listener(l) => fds.push((l.as_fd(), Interest::Read)),
            Source::Connector(c) if conn.is_none() => match &c.pending {
                Some((socket, deadline)) => {
                    fds.push((socket.as_fd(), Interest::Write));
                    timeout = Some(deadline.saturating_duration_since(Instant::now()));
                }
                None => timeout = Some(c.next_try.saturating_duration_since(Instant::now())),
            },
            Source::Connector(_) => {}
        }
        let conn_index = conn.as_ref().map(|c| {
            fds.push((c.stream.as_fd(), Interest::Hangup));
            fds.len() - 1
        });
        let ready = match sys::poll(&fds, timeout) {
            Ok(ready) => ready,
            Err(e) => {
                log::error!("{}: poll failed: {e}", shared.label);
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        drop(fds);
        if ready[0].readable {
            let mut sink = [0u8; 64];
            while matches!((&wake_rx).read(&mut sink), Ok(n) if n > 0) {}
        }
        // The old vicc's goodbye before the new one's hello: a vicc that replaces
        // another in quick succession must not find the slot still busy.
        if let (Some(i), Some(conn)) = (conn_index, conn) {
            if ready[i].readable || ready[i].hangup {
                check_idle_conn(shared, &conn);
            }
        }
        if let Source::Listener(listener) = &source {
            if ready[1].readable || ready[1].hangup {
                net::accept_all(listener, &shared.label, |stream, peer| {
                    shared.insert(stream, peer)
                });
            }
        }
    }
    if let Some(conn) = shared.state.lock().conn.take() {
        let _ = conn.stream.shutdown(std::net::Shutdown::Both);
    }
}

/// The watched connection stirred while no exchange was running: the peer went away
/// or sent bytes nobody asked for. Either way it is no longer a usable card.
fn check_idle_conn(shared: &Shared, conn: &Conn) {
    // Wait for a running exchange to finish: its reply is what woke us on systems
    // without POLLRDHUP, and it reads that reply itself.
    let _io = shared.io.lock();
    match peek(&conn.stream) {
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
        Ok(0) => shared.remove(conn.id, "vicc closed the connection"),
        Ok(_) => {
            log::error!(
                "{}: vicc {} sent data nobody asked for",
                shared.label,
                conn.peer
            );
            shared.remove(conn.id, "protocol violation");
        }
        Err(e) => shared.remove(conn.id, &e.to_string()),
    }
}

/// Reversed mode: connects out with a non-blocking connect and capped backoff, so
/// neither pcscd nor the watcher ever blocks on an absent vicc.
struct Connector {
    host: String,
    port: u16,
    pending: Option<(Socket, Instant)>,
    candidates: Vec<SocketAddr>,
    next_try: Instant,
    backoff: Duration,
    failures: u32,
}

impl Connector {
    fn new(host: String, port: u16) -> Connector {
        Connector {
            host,
            port,
            pending: None,
            candidates: Vec::new(),
            next_try: Instant::now(),
            backoff: RECONNECT_FIRST,
            failures: 0,
        }
    }

    fn target(&self) -> SocketAddr {
        self.candidates
            .first()
            .copied()
            .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], self.port)))
    }

    /// Advances the connection attempt; returns the stream once connected.
    fn step(&mut self, label: &str) -> Option<TcpStream> {
        let now = Instant::now();
        if let Some((socket, deadline)) = &self.pending {
            match socket.take_error() {
                Ok(None) if socket.peer_addr().is_ok() => {
                    let (socket, _) = self.pending.take()?;
                    return Some(socket.into());
                }
                Ok(None) if now < *deadline => return None,
                Ok(None) => self.failed(label, &io::ErrorKind::TimedOut.into()),
                Ok(Some(e)) | Err(e) => self.failed(label, &e),
            }
        }
        if now < self.next_try {
            return None;
        }
        if self.candidates.is_empty() {
            match (self.host.as_str(), self.port).to_socket_addrs() {
                Ok(addrs) => self.candidates = addrs.collect(),
                Err(e) => {
                    self.failed(label, &e);
                    return None;
                }
            }
        }
        let Some(addr) = self.candidates.first().copied() else {
            self.failed(
                label,
                &io::Error::new(io::ErrorKind::NotFound, "no address"),
            );
            return None;
        };
        let attempt = Socket::new(Domain::for_address(addr), Type::STREAM, None).and_then(|s| {
            s.set_nonblocking(true)?;
            match s.connect(&addr.into()) {
                Ok(()) => Ok(s),
                Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => Ok(s),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(s),
                Err(e) => Err(e),
            }
        });
        match attempt {
            Ok(socket) => self.pending = Some((socket, now + CONNECT_TIMEOUT)),
            Err(e) => self.failed(label, &e),
        }
        None
    }

    fn failed(&mut self, label: &str, e: &io::Error) {
        self.pending = None;
        // Try the host's next address; re-resolve once all failed.
        if !self.candidates.is_empty() {
            self.candidates.remove(0);
        }
        if self.failures == 0 {
            log::info!("{label}: no vicc yet ({e}); retrying with backoff up to {RECONNECT_MAX:?}");
        } else {
            log::trace!("{label}: connect failed: {e}");
        }
        self.failures += 1;
        if self.candidates.is_empty() {
            self.next_try = Instant::now() + self.backoff;
            self.backoff = (self.backoff * 2).min(RECONNECT_MAX);
        }
    }

    fn connected(&mut self, label: &str) {
        log::debug!(
            "{label}: connected after {} failed attempt(s)",
            self.failures
        );
        self.failures = 0;
        self.backoff = RECONNECT_FIRST;
        self.candidates.clear();
        self.next_try = Instant::now();
    }
}

/// Looks at the next byte without taking it and without blocking.
fn peek(stream: &TcpStream) -> io::Result<usize> {
    let mut byte = [MaybeUninit::<u8>::uninit(); 1];
    SockRef::from(stream).recv_with_flags(&mut byte, libc::MSG_PEEK | libc::MSG_DONTWAIT)
}

/// Reads one reply from a vicc socket before a deadline, however slowly the bytes
/// trickle in. The socket's receive timeout stays at the reader's full timeout between
/// exchanges, so the first read of an exchange costs no extra system call; only a
/// reply that arrives in pieces re-arms it for the time left (and restores it after).
struct DeadlineReader<'a> {
    stream: &'a TcpStream,
    full: Duration,
    deadline: Instant,
    first: bool,
    rearmed: bool,
}

impl<'a> DeadlineReader<'a> {
    fn new(stream: &'a TcpStream, timeout: Duration) -> DeadlineReader<'a> {
        DeadlineReader {
            stream,
            full: timeout,
            deadline: Instant::now() + timeout,
            first: true,
            rearmed: false,
        }
    }

    /// One read into `bufs`; at least one byte, or an error (EOF is an error here).
    fn read(&mut self, bufs: &mut [IoSliceMut<'_>]) -> io::Result<usize> {
        loop {
            if !std::mem::replace(&mut self.first, false) {
                let remaining = self.deadline.saturating_duration_since(Instant::now());
                if remaining.is_zero() {
                    return Err(io::ErrorKind::TimedOut.into());
                }
                self.stream.set_read_timeout(Some(remaining))?;
                self.rearmed = true;
            }
            match (&mut &*self.stream).read_vectored(bufs) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return Err(io::ErrorKind::TimedOut.into())
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn read_exact(&mut self, mut buf: &mut [u8]) -> io::Result<()> {
        while !buf.is_empty() {
            let n = self.read(&mut [IoSliceMut::new(buf)])?;
            buf = &mut buf[n..];
        }
        Ok(())
    }

    fn discard(&mut self, mut len: usize) -> io::Result<()> {
        let mut sink = [0u8; 4096];
        while len > 0 {
            let n = len.min(sink.len());
            self.read_exact(&mut sink[..n])?;
            len -= n;
        }
        Ok(())
    }
}

impl Drop for DeadlineReader<'_> {
    fn drop(&mut self) {
        if self.rearmed {
            let _ = self.stream.set_read_timeout(Some(self.full));
        }
    }
}
