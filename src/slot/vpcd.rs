//! One slot of a reader: its vicc connection, its card state, and the watcher thread
//! that notices a vicc arriving or leaving the moment it happens.
//!
//! Two kinds of thread touch a slot:
//! - pcscd's threads call [`VpcdSlot::power`], [`VpcdSlot::transmit`] and friends. Each
//!   exchange holds the slot's `io` lock, so commands on one slot are serialized while
//!   other slots and readers run in parallel.
//! - the slot's watcher thread accepts (or, reversed, connects) peers, makes each prove
//!   it is a card before pcscd hears of it, and watches the card's connection for the
//!   peer going away. It never reads a card's data, so it cannot race an exchange for
//!   the bytes of a reply.
//!   Nor does it ever wait: not for an exchange (a PIN entry holds the I/O lock for
//!   minutes), not for a name server (reversed mode resolves on a thread of its own).
//!
//! A peer is a card only once it has answered GET ATR with a valid ATR, within
//! [`PROBE_TIMEOUT`], read by the watcher on a non-blocking socket outside every pcscd
//! call and lock. Until then pcscd sees an empty slot, so a silent or broken peer can
//! never make pcscd (and every PC/SC client waiting on that reader) wait.
//!
//! Card presence is whether a proven vicc is connected; every change goes through
//! [`Presence`], which wakes pcscd's polling callback, so an insertion or removal is
//! reported at once and no traffic is sent to the vicc while nothing changes.

use std::io::{self, IoSliceMut, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use socket2::{Domain, Socket, Type};

use vpcd_protocol::config::{is_allowed, AllowedNet, Endpoint, ReaderConfig};
use vpcd_protocol::hex;
use vpcd_protocol::part10::{Operation, PinCommand};
use vpcd_protocol::pinpad::{self, Hello, PinAnswer, PinOperation, PinParams, ANSWER_MAX_LEN};
use vpcd_protocol::vpcd::{
    self as protocol, Control, ProtocolError, ReplyError, HEADER_LEN, MAX_ATR_LEN,
};

use super::conn::{self, trace_apdu, Current, Way};
use super::decide::{self, Pending, Proof, ReadBound};
use super::{CardSlot, Limits, PowerAction, SlotError};
use crate::net::{self, LogBudget, Watch, Watcher};
use crate::presence::Presence;
use crate::sys::{Interest, Ready};
use crate::tls::{Session, Setup};

/// First wait before reconnecting to a reversed-mode vicc, and the cap of the backoff.
const RECONNECT_FIRST: Duration = Duration::from_millis(20);
const RECONNECT_MAX: Duration = Duration::from_millis(1000);
/// How long one outgoing connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a new peer has at most to answer GET ATR before it is dropped (and never
/// more than the reader's timeout). Nobody waits for it: pcscd sees an empty slot
/// meanwhile. Every vicc answers GET ATR at once from memory (the phone app from the
/// card it relays), so one round trip on a slow mobile network is all it costs.
pub(crate) const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// The most peers proving themselves at once; a newer one evicts the oldest, so a
/// flood of silent connections cannot keep an honest vicc out for long.
const MAX_CANDIDATES: usize = 8;
/// How long the ATR may take at power up and reset (at most the reader's timeout),
/// while pcscd holds the slot's lock. A phone powers up the card it relays (an NFC
/// activation takes well under a second) and answers in one network round trip.
const ATR_TIMEOUT: Duration = Duration::from_secs(5);

/// One connected vicc, with what it announced before its ATR (the PIN pad extension),
/// if anything, and its TLS session on a `tls=yes` reader.
type Conn = conn::Conn<Option<Hello>>;

#[derive(Default)]
struct State {
    conn: Current<Option<Hello>>,
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
    /// Runs in `power` between the card's answer and storing its ATR: the tests make
    /// the watcher's work happen there.
    #[cfg(test)]
    after_atr: Mutex<Option<Box<dyn Fn() + Send>>>,
}

/// Where the watcher gets its vicc from.
enum Source {
    Listener(net::Acceptor),
    Connector(Connector),
}

pub(crate) struct VpcdSlot {
    shared: Arc<Shared>,
    watcher: Watcher,
}

impl VpcdSlot {
    /// Opens slot `index` of a reader on `port` (that slot's port, which
    /// [`super::open`] checked): loads its TLS files if it has `tls=yes`, binds it (or
    /// prepares to connect out) and starts its watcher thread.
    pub(crate) fn open(
        cfg: &ReaderConfig,
        lun: u32,
        index: u16,
        port: u16,
    ) -> io::Result<VpcdSlot> {
        let (label, source) = match &cfg.endpoint {
            Endpoint::Listen { addr, v6only } => {
                let at = SocketAddr::new(*addr, port);
                let listener = net::listen(at, *v6only)
                    .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {at}: {e}")))?;
                (
                    format!("lun {lun:#x} listen {at}"),
                    Source::Listener(net::Acceptor::new(listener)),
                )
            }
            Endpoint::Connect { host } => (
                format!("lun {lun:#x} connect {host}:{port}"),
                Source::Connector(Connector::new(host.clone(), port, system_resolver())),
            ),
        };
        // TLS hook: the key and trust list, or the reason the slot stays closed.
        let tls = Setup::load(cfg, &label, index)
            .map_err(|e| io::Error::new(e.kind(), format!("{label}: {e}")))?;
        VpcdSlot::start(cfg, lun, label, source, tls)
    }

    /// Starts the slot's watcher on `source`.
    fn start(
        cfg: &ReaderConfig,
        lun: u32,
        label: String,
        source: Source,
        tls: Option<Setup>,
    ) -> io::Result<VpcdSlot> {
        let shared = Arc::new(Shared {
            label,
            timeout: cfg.timeout,
            trace_apdus: cfg.trace_apdus,
            state: Mutex::new(State::default()),
            presence: Presence::new(),
            io: Mutex::new(Vec::new()),
            #[cfg(test)]
            after_atr: Mutex::new(None),
        });
        let watcher = Watcher::spawn(
            format!("vpcd-{lun:x}"),
            shared.label.clone(),
            SlotWatch {
                shared: Arc::clone(&shared),
                source,
                allow: cfg.allow.clone(),
                tls,
                card: None,
                candidates: Pending::new(MAX_CANDIDATES),
                roles: Vec::new(),
                budget: LogBudget::new(net::PEER_LOG_LINES, net::PEER_LOG_WINDOW),
                card_recheck: None,
            },
        )?;
        log::info!("{}: slot open", shared.label);
        Ok(VpcdSlot { shared, watcher })
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
        self.shared.set_atr(conn.id, None);
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
                    let n = self
                        .shared
                        .receive(&conn, &mut atr, self.shared.atr_timeout())?;
                    protocol::check_atr(&atr[..n])?;
                    Ok(atr[..n].to_vec())
                })
            }
        };
        #[cfg(test)]
        if let Some(hook) = &*self.shared.after_atr.lock() {
            hook();
        }
        match result {
            Ok(atr) if atr.is_empty() => Ok(atr),
            Ok(atr) => {
                // Under the exchange's lock and only for the card that gave it: the
                // watcher may have removed that card since (it does not wait for us).
                if !self.shared.set_atr(conn.id, Some(atr.clone())) {
                    return Err(SlotError::NoCard);
                }
                drop(io);
                log::debug!("{}: ATR {}", self.label(), hex(&atr));
                Ok(atr)
            }
            Err(e) => {
                drop(io);
                Err(self.shared.fail(&conn, e))
            }
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
        trace_apdu(self.shared.trace_apdus, self.label(), Way::Command, apdu);
        let mut io = self.shared.io.lock();
        io.clear();
        let result = protocol::encode(apdu, &mut io)
            .map_err(SlotError::from)
            .and_then(|()| self.shared.send(&conn, &io))
            .and_then(|()| self.shared.receive(&conn, reply, self.shared.timeout))
            .and_then(|n| {
                protocol::check_reply(n, reply.len())?;
                Ok(n)
            });
        drop(io);
        match result {
            Ok(n) => {
                trace_apdu(
                    self.shared.trace_apdus,
                    self.label(),
                    Way::Reply,
                    &reply[..n],
                );
                Ok(n)
            }
            Err(e) => Err(self.shared.fail(&conn, e)),
        }
    }

    fn pin_entry(&self) -> bool {
        self.shared
            .current()
            .is_some_and(|c| c.extra.is_some_and(|h| h.pin_entry()))
    }

    /// Asks the vicc for the PIN(s), then sends the APDU built from them to it.
    fn enter_pin(&self, command: &PinCommand, reply: &mut [u8]) -> Result<usize, SlotError> {
        let conn = self.shared.current().ok_or(SlotError::NoCard)?;
        let Some(hello) = conn.extra.filter(Hello::pin_entry) else {
            return Err(SlotError::Unsupported);
        };
        if reply.len() < 2 {
            return Err(SlotError::ReplyTooLarge {
                len: 2,
                capacity: reply.len(),
            });
        }
        let params = pin_params(command, hello.version);
        let mut io = self.shared.io.lock();
        let result = self
            .shared
            .pin_exchange(&conn, &mut io, command, &params, reply);
        // The buffer held the PIN.
        io.fill(0);
        io.clear();
        drop(io);
        result.map_err(|e| self.shared.fail(&conn, e))
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
            s.conn.close();
        }
        self.shared.presence.close();
        if self.watcher.stop() {
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
        self.state.lock().conn.get()
    }

    /// Sets the ATR of card `id` if it still is the slot's card; returns whether it is.
    fn set_atr(&self, id: u64, atr: Option<Vec<u8>>) -> bool {
        let mut s = self.state.lock();
        let current = s.conn.is(id);
        if current {
            s.atr = atr;
        }
        current
    }

    fn atr_timeout(&self) -> Duration {
        self.timeout.min(ATR_TIMEOUT)
    }

    /// The peer of the slot's card, unless it has just left (then it is removed).
    fn live_card(&self) -> Option<SocketAddr> {
        let conn = self.current()?;
        if matches!(conn.peek(), Ok(0)) {
            self.remove(conn.id, "vicc closed the connection");
            return None;
        }
        Some(conn.peer)
    }

    /// Writes a whole frame sequence within the reader's timeout.
    /// Before that, makes sure the vicc has not sent anything unasked: stale bytes
    /// would be taken for the reply to this command.
    fn send(&self, conn: &Conn, bytes: &[u8]) -> Result<(), SlotError> {
        match conn.peek() {
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
        match &conn.tls {
            Some(session) => session.send(&conn.stream, bytes, self.timeout)?,
            None => net::write_all_within(&conn.stream, bytes, self.timeout)?,
        }
        Ok(())
    }

    /// Reads one reply frame into `into`; the frame must fit.
    fn receive(&self, conn: &Conn, into: &mut [u8], within: Duration) -> Result<usize, SlotError> {
        let mut reader = DeadlineReader::new(&conn.stream, self.timeout, within);
        reader.tls = conn.tls.as_ref();
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

    /// One PIN entry on `conn`, under the slot's `io` lock (`io` is its buffer): the
    /// request, the vicc's answer, and then the APDU and the card's reply.
    fn pin_exchange(
        &self,
        conn: &Conn,
        io: &mut Vec<u8>,
        command: &PinCommand,
        params: &PinParams,
        reply: &mut [u8],
    ) -> Result<usize, SlotError> {
        io.clear();
        for payload in params.request() {
            protocol::encode(&payload, io)?;
        }
        self.send(conn, io)?;
        log::info!(
            "{}: PIN entry asked of vicc {} ({:?}, {}-{} digits, {} s)",
            self.label,
            conn.peer,
            params.operation,
            params.min_digits,
            params.max_digits,
            params.timeout_secs
        );
        let mut answer = [0u8; ANSWER_MAX_LEN];
        // The keypad enforces the timeout; the reader's timeout covers the network.
        let within = Duration::from_secs(u64::from(params.timeout_secs)) + self.timeout;
        let n = self.receive(conn, &mut answer, within);
        let parsed = n.and_then(|n| {
            PinAnswer::parse(&answer[..n], params).map_err(|e| {
                // A vicc that breaks the extension is dropped like any broken peer.
                SlotError::Io(io::Error::new(io::ErrorKind::InvalidData, e.to_string()))
            })
        });
        answer.fill(0);
        let mut pins = match parsed? {
            PinAnswer::Not(status) => {
                log::info!("{}: no PIN entered: {status:?}", self.label);
                let sw = status.status_word().unwrap_or([0x6F, 0x00]);
                reply[..2].copy_from_slice(&sw);
                return Ok(2);
            }
            PinAnswer::Entered(pins) => pins,
        };
        let built = command.build_apdu(&pins.iter().map(Vec::as_slice).collect::<Vec<_>>());
        for pin in &mut pins {
            pin.fill(0);
        }
        let mut apdu = built.map_err(|e| SlotError::Protocol(e.to_string()))?;
        if self.trace_apdus {
            log::info!(
                "{}: PIN APDU > {} (PIN block hidden)",
                self.label,
                hex(&apdu[..4])
            );
        }
        io.clear();
        let encoded = protocol::encode(&apdu, io);
        apdu.fill(0);
        encoded?;
        self.send(conn, io)?;
        let n = self.receive(conn, reply, self.timeout)?;
        protocol::check_reply(n, reply.len())?;
        if self.trace_apdus {
            log::info!("{}: PIN APDU < {}", self.label, hex(&reply[..n]));
        }
        Ok(n)
    }

    /// Logs a failed exchange; drops the vicc unless the stream is still in step.
    fn fail(&self, conn: &Conn, e: SlotError) -> SlotError {
        if decide::drops_peer(&e) {
            log::error!("{}: {e}; dropping vicc {}", self.label, conn.peer);
            self.remove(conn.id, "exchange failed");
        } else if !matches!(e, SlotError::NoCard | SlotError::Unsupported) {
            log::error!("{}: {e}", self.label);
        }
        e
    }

    /// Makes a proven vicc the slot's card, unless the slot already has one; returns
    /// whether it did.
    fn insert(
        &self,
        stream: TcpStream,
        peer: SocketAddr,
        hello: Option<Hello>,
        tls: Option<Session>,
    ) -> Result<(), String> {
        let conn = Conn::new(stream, peer, self.timeout, hello)?.with_tls(tls);
        if let Some(active) = self.live_card() {
            return Err(format!("slot is busy with {active}"));
        }
        let mut s = self.state.lock();
        if s.closing {
            return Err("slot is closing".into());
        }
        s.conn
            .install(conn)
            .map_err(|active| format!("slot is busy with {active}"))?;
        s.atr = None;
        self.presence.insert();
        Ok(())
    }

    /// Drops the vicc `id` if it is still the slot's card.
    fn remove(&self, id: u64, why: &str) {
        let mut s = self.state.lock();
        let Some(conn) = s.conn.remove(id) else {
            return;
        };
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

/// A peer that has connected but not yet proven it is a card.
struct Candidate {
    stream: TcpStream,
    peer: SocketAddr,
    proof: Proof,
    /// What it announced before its ATR, once proven.
    hello: Option<Hello>,
    /// TLS hook: its session, handshaking until the proof.
    tls: Option<Session>,
}

/// What the descriptor at one position of the watcher's poll set is.
#[derive(Clone, Copy)]
enum Role {
    Listener,
    Connecting,
    Card,
    Candidate(usize),
}

/// The slot's watcher thread: takes peers in, proves them, watches the card.
struct SlotWatch {
    shared: Arc<Shared>,
    source: Source,
    allow: Vec<AllowedNet>,
    /// TLS hook: the reader's secure link, if `tls=yes`.
    tls: Option<Setup>,
    /// The card's connection, as of the last `arm`.
    card: Option<Arc<Conn>>,
    candidates: Pending<Candidate>,
    roles: Vec<Role>,
    budget: LogBudget,
    /// The card's connection stirred during an exchange: it is not watched again
    /// before this (the exchange handles it), so the watcher neither waits nor spins.
    card_recheck: Option<Instant>,
}

/// How long the watcher leaves the card's connection to a running exchange before it
/// looks again.
const BUSY_RECHECK: Duration = Duration::from_millis(100);

impl Watch for SlotWatch {
    fn arm<'a>(
        &'a mut self,
        fds: &mut Vec<(BorrowedFd<'a>, Interest)>,
    ) -> Option<Option<Duration>> {
        {
            let s = self.shared.state.lock();
            if s.closing {
                return None;
            }
            self.card = s.conn.get();
        }
        if self.card.is_some() && !self.candidates.is_empty() {
            self.drop_candidates("the slot has a card");
        }
        let idle = self.card.is_none() && self.candidates.is_empty();
        if let (Source::Connector(c), true) = (&mut self.source, idle) {
            if let Some(stream) = c.step(&self.shared.label) {
                let peer = stream.peer_addr().unwrap_or(c.target());
                self.admit(stream, peer);
            }
        }
        let now = Instant::now();
        let mut deadline: Option<Instant> = None;
        self.roles.clear();
        match &self.source {
            Source::Listener(acceptor) => match acceptor.armed(now) {
                Ok(fd) => {
                    fds.push((fd, Interest::Read));
                    self.roles.push(Role::Listener);
                }
                Err(until) => deadline = Some(until),
            },
            Source::Connector(c) if self.card.is_none() && self.candidates.is_empty() => {
                if let Some((socket, _)) = &c.pending {
                    fds.push((socket.as_fd(), Interest::Write));
                    self.roles.push(Role::Connecting);
                }
                deadline = c.next_step(now);
            }
            Source::Connector(_) => {}
        }
        if self.card.is_none() || self.card_recheck.is_some_and(|at| now >= at) {
            self.card_recheck = None;
        }
        if let Some(at) = self.card_recheck {
            deadline = Some(deadline.map_or(at, |d| d.min(at)));
        } else if let Some(card) = &self.card {
            fds.push((card.stream.as_fd(), Interest::Hangup));
            self.roles.push(Role::Card);
        }
        for (i, candidate) in self.candidates.iter().enumerate() {
            fds.push((candidate.stream.as_fd(), Interest::Read));
            self.roles.push(Role::Candidate(i));
        }
        if let Some(due) = self.candidates.next_deadline() {
            deadline = Some(deadline.map_or(due, |d| d.min(due)));
        }
        Some(deadline.map(|d| d.saturating_duration_since(now)))
    }

    fn on_ready(&mut self, ready: &[Ready]) {
        let roles = std::mem::take(&mut self.roles);
        let mut heard = vec![];
        for (role, ready) in roles.iter().zip(ready) {
            if !(ready.readable || ready.writable || ready.hangup) {
                continue;
            }
            match *role {
                // The old vicc's goodbye before the new one's hello (the card comes
                // before the listener in this loop's effects: see below).
                Role::Card => {
                    if let Some(card) = &self.card {
                        if check_idle_conn(&self.shared, card) == IdleCheck::Busy {
                            self.card_recheck = Some(Instant::now() + BUSY_RECHECK);
                        }
                    }
                }
                Role::Candidate(i) => heard.push(i),
                Role::Listener | Role::Connecting => {}
            }
        }
        // Candidates are read before new peers are admitted, so indices hold.
        let mut proven = None;
        for &i in heard.iter().rev() {
            if let Some(outcome) = self.read_candidate(i) {
                let candidate = self.candidates.remove(i);
                match outcome {
                    Ok(()) if proven.is_none() => proven = Some(candidate),
                    Ok(()) => self.log_peer(&format!(
                        "dropping {}: another vicc took the slot first",
                        candidate.peer
                    )),
                    Err(why) => self.reject(candidate, &why),
                }
            }
        }
        for candidate in self.candidates.expire(Instant::now()) {
            let budget = self.shared.timeout.min(PROBE_TIMEOUT);
            // TLS hook: a peer still handshaking never got as far as GET ATR.
            let why = match &candidate.tls {
                Some(s) if s.is_handshaking() => format!(
                    "no TLS handshake within {budget:?} of connecting \
                     (a plain vicc on a tls=yes reader?)"
                ),
                _ => format!("no ATR within {budget:?} of connecting"),
            };
            self.reject(candidate, &why);
        }
        if let Some(candidate) = proven {
            self.promote(candidate);
        }
        if roles
            .iter()
            .zip(ready)
            .any(|(role, r)| matches!(role, Role::Listener) && (r.readable || r.hangup))
        {
            if let Source::Listener(acceptor) = &mut self.source {
                let mut accepted = vec![];
                acceptor.accept_all(&self.shared.label, &mut self.budget, |stream, peer| {
                    accepted.push((stream, peer))
                });
                for (stream, peer) in accepted {
                    self.admit(stream, peer);
                }
            }
        }
    }

    fn attach(&mut self, waker: net::Waker) {
        if let Source::Connector(c) = &mut self.source {
            c.waker = Some(waker);
        }
    }

    fn finish(&mut self) {
        if let Source::Connector(c) = &mut self.source {
            c.abandon(&self.shared.label);
        }
        self.candidates.clear();
        self.shared.state.lock().conn.close();
    }
}

impl SlotWatch {
    /// A new connection: refused at once if the reader does not allow its address or
    /// the slot has a card; otherwise asked for its ATR.
    fn admit(&mut self, stream: TcpStream, peer: SocketAddr) {
        let listening = matches!(self.source, Source::Listener(_));
        if listening && !is_allowed(&self.allow, peer.ip()) {
            self.log_peer(&format!("refusing {peer}: not in the reader's allow list"));
            return;
        }
        if let Some(active) = self.shared.live_card() {
            self.log_peer(&format!("refusing vicc {peer}: slot is busy with {active}"));
            return;
        }
        // TLS hook: the GET ATR waits in the session until the handshake is done.
        let tls = match self.tls.as_ref().map(Setup::session).transpose() {
            Ok(tls) => tls,
            Err(e) => return self.log_peer(&format!("dropping {peer}: {e}")),
        };
        let asked = stream
            .set_nonblocking(true)
            .and_then(|()| stream.set_nodelay(true))
            .and_then(|()| match &tls {
                Some(session) => session
                    .write_nonblocking(&stream, &Control::GetAtr.frame())
                    .map(|()| 3),
                None => (&stream).write(&Control::GetAtr.frame()),
            });
        match asked {
            Ok(3) => {
                let candidate = Candidate {
                    stream,
                    peer,
                    proof: Proof::default(),
                    hello: None,
                    tls,
                };
                let due = Instant::now() + self.shared.timeout.min(PROBE_TIMEOUT);
                if let Some(oldest) = self.candidates.admit(candidate, due) {
                    self.reject(
                        oldest,
                        "too many peers at once; the oldest unproven one goes",
                    );
                }
            }
            Ok(_) => self.log_peer(&format!("dropping {peer}: cannot ask for its ATR")),
            Err(e) => self.log_peer(&format!("dropping {peer}: cannot ask for its ATR: {e}")),
        }
    }

    /// Reads what candidate `i` sent; `Some` once its answer is decided.
    fn read_candidate(&mut self, i: usize) -> Option<Result<(), String>> {
        let c = self.candidates.get_mut(i);
        // TLS hook: each read advances the handshake; application bytes come after it.
        let read = match &c.tls {
            Some(session) => session.read_nonblocking(&c.stream, c.proof.space()),
            None => (&c.stream).read(c.proof.space()),
        };
        let hello = c.proof.received(read)?;
        Some(hello.map(|hello| c.hello = hello))
    }

    fn promote(&mut self, candidate: Candidate) {
        let peer = candidate.peer;
        let hello = candidate.hello;
        let secure = candidate.tls.as_ref().and_then(Session::peer_fingerprint);
        match self
            .shared
            .insert(candidate.stream, peer, hello, candidate.tls)
        {
            Ok(()) => {
                if let Source::Connector(c) = &mut self.source {
                    c.connected(&self.shared.label);
                }
                self.drop_candidates("another vicc took the slot first");
                let extension = match hello {
                    Some(h) if h.pin_entry() => {
                        format!(" (PIN pad extension v{}, PIN entry)", h.version)
                    }
                    Some(h) => format!(" (PIN pad extension v{})", h.version),
                    None => String::new(),
                };
                let extension = match secure {
                    Some(fp) => format!("{extension} over TLS 1.3, key {fp}"),
                    None => extension,
                };
                self.log_peer_at(
                    log::Level::Info,
                    &format!(
                        "vicc {peer} connected and sent a valid ATR{extension}: card inserted"
                    ),
                );
            }
            Err(why) => self.log_peer(&format!("dropping vicc {peer}: {why}")),
        }
    }

    fn reject(&mut self, candidate: Candidate, why: &str) {
        let _ = candidate.stream.shutdown(std::net::Shutdown::Both);
        if let Source::Connector(c) = &mut self.source {
            c.failed(
                &self.shared.label,
                &io::Error::new(io::ErrorKind::InvalidData, why.to_owned()),
            );
        }
        self.log_peer(&format!("{} is not a card: {why}", candidate.peer));
    }

    fn drop_candidates(&mut self, why: &str) {
        for candidate in self.candidates.clear() {
            log::debug!("{}: dropping {}: {why}", self.shared.label, candidate.peer);
        }
    }

    /// A line about a peer, within the slot's log budget: a peer that connects again
    /// and again, or a flood of them, costs the log a bounded number of lines.
    fn log_peer(&mut self, line: &str) {
        self.log_peer_at(log::Level::Warn, line);
    }

    fn log_peer_at(&mut self, level: log::Level, line: &str) {
        self.budget.log(level, &self.shared.label, line);
    }
}

/// What the watcher learnt of the card's connection when it stirred.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum IdleCheck {
    /// No exchange ran: the connection was checked (and the card removed if it left).
    Checked,
    /// An exchange runs: it reads its connection itself, and sees the peer leave.
    Busy,
}

/// The card's connection stirred: if no exchange runs, the peer went away or sent
/// bytes nobody asked for, and either way it is no longer a usable card. The watcher
/// never waits for an exchange (a PIN entry holds the lock for minutes): when one
/// runs, its reply is what woke us on systems without POLLRDHUP, or the exchange meets
/// the peer's hangup itself.
fn check_idle_conn(shared: &Shared, conn: &Conn) -> IdleCheck {
    let Some(_io) = shared.io.try_lock() else {
        return IdleCheck::Busy;
    };
    // TLS hook: the peek goes through the session (a close_notify is a hangup).
    if let Some(why) = decide::idle_verdict(conn.peek()) {
        shared.remove(conn.id, &why);
    }
    IdleCheck::Checked
}

/// How a reversed-mode slot finds the addresses of its vicc's host: getaddrinfo, or a
/// test's stand-in.
type Resolve = Arc<dyn Fn(&str, u16) -> io::Result<Vec<SocketAddr>> + Send + Sync>;

fn system_resolver() -> Resolve {
    Arc::new(|host, port| Ok((host, port).to_socket_addrs()?.collect()))
}

/// After this long, a name resolution still running is logged (once).
const RESOLVE_SLOW: Duration = Duration::from_secs(5);

/// A name resolution running on its own thread: getaddrinfo blocks for as long as the
/// system's resolver lets it (10 to 30 s for a DNS server that does not answer), and
/// neither the watcher nor pcscd's close may wait for that.
struct Lookup {
    thread: std::thread::JoinHandle<()>,
    answer: Arc<Mutex<Option<io::Result<Vec<SocketAddr>>>>>,
    since: Instant,
    slow_logged: bool,
}

/// Reversed mode: connects out with a non-blocking connect and capped backoff, so
/// neither pcscd nor the watcher ever blocks on an absent vicc, and resolves the host
/// on a thread of its own ([`Lookup`]).
struct Connector {
    host: String,
    port: u16,
    resolve: Resolve,
    waker: Option<net::Waker>,
    pending: Option<(Socket, Instant)>,
    lookup: Option<Lookup>,
    candidates: Vec<SocketAddr>,
    backoff: net::Backoff,
    failures: u32,
}

impl Connector {
    fn new(host: String, port: u16, resolve: Resolve) -> Connector {
        Connector {
            host,
            port,
            resolve,
            waker: None,
            pending: None,
            lookup: None,
            candidates: Vec::new(),
            backoff: net::Backoff::new(RECONNECT_FIRST, RECONNECT_MAX),
            failures: 0,
        }
    }

    fn target(&self) -> SocketAddr {
        self.candidates
            .first()
            .copied()
            .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], self.port)))
    }

    /// When the watcher must call [`Connector::step`] again if nothing wakes it
    /// (`None`: a lookup's end wakes it).
    fn next_step(&self, now: Instant) -> Option<Instant> {
        if let Some((_, deadline)) = &self.pending {
            return Some(*deadline);
        }
        match &self.lookup {
            Some(l) if !l.slow_logged => Some(l.since + RESOLVE_SLOW),
            Some(_) => None,
            None => Some(self.backoff.waiting(now).unwrap_or(now)),
        }
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
        if self.backoff.waiting(now).is_some() {
            return None;
        }
        if self.candidates.is_empty() {
            match self.resolved(label, now)? {
                Ok(addrs) if addrs.is_empty() => {
                    self.failed(
                        label,
                        &io::Error::new(io::ErrorKind::NotFound, "no address"),
                    );
                    return None;
                }
                Ok(addrs) => self.candidates = addrs,
                Err(e) => {
                    self.failed(label, &e);
                    return None;
                }
            }
        }
        let addr = self.candidates[0];
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

    /// The addresses of the host once a lookup has them; starts one if none runs.
    fn resolved(&mut self, label: &str, now: Instant) -> Option<io::Result<Vec<SocketAddr>>> {
        let Some(lookup) = &mut self.lookup else {
            let answer = Arc::new(Mutex::new(None));
            let (resolve, host, port) = (Arc::clone(&self.resolve), self.host.clone(), self.port);
            let (waker, done) = (self.waker.clone(), Arc::clone(&answer));
            let spawned = std::thread::Builder::new()
                .name("vpcd-resolve".into())
                .spawn(move || {
                    let addrs = resolve(&host, port);
                    *done.lock() = Some(addrs);
                    if let Some(waker) = waker {
                        waker.wake();
                    }
                });
            match spawned {
                Ok(thread) => {
                    self.lookup = Some(Lookup {
                        thread,
                        answer,
                        since: now,
                        slow_logged: false,
                    })
                }
                Err(e) => return Some(Err(e)),
            }
            return None;
        };
        let answer = lookup.answer.lock().take();
        if answer.is_none() {
            if !lookup.slow_logged && now >= lookup.since + RESOLVE_SLOW {
                lookup.slow_logged = true;
                log::info!(
                    "{label}: resolving {} takes more than {RESOLVE_SLOW:?}; still waiting",
                    self.host
                );
            }
            return None;
        }
        let lookup = self.lookup.take()?;
        // It has answered: only its return is left.
        let _ = lookup.thread.join();
        answer
    }

    /// The slot closes: a lookup that has not answered is left to finish on its own.
    fn abandon(&mut self, label: &str) {
        let Some(lookup) = self.lookup.take() else {
            return;
        };
        if lookup.answer.lock().is_some() {
            let _ = lookup.thread.join();
            return;
        }
        // getaddrinfo cannot be interrupted. The thread ends when the resolver gives
        // up; pcscd may unload us before, so the library stays mapped for it.
        let pinned = crate::sys::pin_library();
        log::debug!(
            "{label}: leaving the resolution of {} to finish on its own (library pinned: {pinned})",
            self.host
        );
    }

    fn failed(&mut self, label: &str, e: &io::Error) {
        self.pending = None;
        // Try the host's next address; resolve again once all failed.
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
            self.backoff.fail(Instant::now());
        }
    }

    fn connected(&mut self, label: &str) {
        log::debug!(
            "{label}: connected after {} failed attempt(s)",
            self.failures
        );
        self.failures = 0;
        self.backoff.succeed();
        self.candidates.clear();
    }
}

/// Reads one reply from a vicc socket before a deadline, however slowly the bytes
/// trickle in. The socket's receive timeout stays at the reader's full timeout between
/// exchanges, so the first read of an exchange costs no extra system call; only a
/// reply that arrives in pieces re-arms it for the time left (and restores it after).
struct DeadlineReader<'a> {
    stream: &'a TcpStream,
    full: Duration,
    bound: ReadBound,
    rearmed: bool,
    /// TLS hook: reads go through the card's session.
    tls: Option<&'a Session>,
}

impl<'a> DeadlineReader<'a> {
    /// A reader that must be done `within` (at most the socket's `full` timeout).
    fn new(stream: &'a TcpStream, full: Duration, within: Duration) -> DeadlineReader<'a> {
        DeadlineReader {
            stream,
            full,
            bound: ReadBound::new(Instant::now(), full, within),
            rearmed: false,
            tls: None,
        }
    }

    /// One read into `bufs`; at least one byte, or an error (EOF is an error here).
    fn read(&mut self, bufs: &mut [IoSliceMut<'_>]) -> io::Result<usize> {
        loop {
            if let Some(remaining) = self.bound.next(Instant::now())? {
                self.stream.set_read_timeout(Some(remaining))?;
                self.rearmed = true;
            }
            let read = match self.tls {
                Some(session) => session.read_blocking(self.stream, bufs),
                None => (&mut &*self.stream).read_vectored(bufs),
            };
            match read {
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

/// The parameters of the PIN request for `command`, in the version both sides speak.
fn pin_params(command: &PinCommand, vicc_version: u8) -> PinParams {
    let (operation, current, confirm) = match command.operation {
        Operation::Verify => (PinOperation::Verify, false, false),
        Operation::Modify { old, confirm, .. } => (PinOperation::Modify, old, confirm),
    };
    PinParams {
        version: vicc_version.min(pinpad::VERSION),
        operation,
        current,
        confirm,
        min_digits: command.min_digits,
        max_digits: command.max_digits,
        timeout_secs: command.timeout_secs,
        message: command.message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, TcpListener};
    use std::sync::atomic::Ordering;

    /// A free loopback port (bound, then released).
    fn free_port() -> u16 {
        TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    fn config(extra: &str) -> (ReaderConfig, u16) {
        let port = free_port();
        let cfg = ReaderConfig::parse(&format!(
            "/dev/null:{port}/listen=127.0.0.1/timeout=5{extra}"
        ))
        .unwrap();
        (cfg, port)
    }

    const ATR: [u8; 5] = [0x3B, 0x80, 0x80, 0x01, 0x01];

    fn frame(payload: &[u8]) -> Vec<u8> {
        let mut out = (payload.len() as u16).to_be_bytes().to_vec();
        out.extend_from_slice(payload);
        out
    }

    fn read_frame(stream: &mut TcpStream) -> Vec<u8> {
        let mut len = [0u8; 2];
        stream.read_exact(&mut len).unwrap();
        let mut payload = vec![0u8; usize::from(u16::from_be_bytes(len))];
        stream.read_exact(&mut payload).unwrap();
        payload
    }

    /// A vicc on `port` that has answered the watcher's GET ATR.
    fn vicc(port: u16) -> TcpStream {
        let mut stream = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        assert_eq!(read_frame(&mut stream), [4], "GET ATR");
        stream.write_all(&frame(&ATR)).unwrap();
        stream
    }

    fn wait_present(slot: &VpcdSlot, present: bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while slot.presence().is_present() != present {
            assert!(Instant::now() < deadline, "presence never became {present}");
            slot.presence().wait_for_event(Duration::from_millis(50));
        }
    }

    /// The watcher removes the card while power() has its ATR in hand: the departed
    /// card's ATR must not be stored (TAG_IFD_ATR, ICC_INTERFACE_STATUS and the
    /// current protocol would describe a card that is not there).
    #[test]
    fn an_atr_that_arrives_as_its_card_leaves_is_not_kept() {
        let (cfg, port) = config("");
        let slot = VpcdSlot::open(&cfg, 0xA70 << 16, 0, port).unwrap();
        let mut card = vicc(port);
        wait_present(&slot, true);
        let answer = std::thread::spawn(move || {
            assert_eq!(read_frame(&mut card), [1], "power on");
            assert_eq!(read_frame(&mut card), [4], "GET ATR");
            card.write_all(&frame(&ATR)).unwrap();
            card
        });
        let shared = Arc::clone(&slot.shared);
        *slot.shared.after_atr.lock() = Some(Box::new(move || {
            let id = shared.current().unwrap().id;
            shared.remove(id, "left during power up");
        }));
        assert!(matches!(
            slot.power(PowerAction::Up),
            Err(SlotError::NoCard)
        ));
        assert!(!slot.presence().is_present());
        assert_eq!(slot.atr(), None, "the departed card's ATR was stored");
        drop(answer.join().unwrap());
    }

    /// An exchange holds the slot's I/O lock for as long as the card takes (a PIN
    /// entry: up to 120 s and the timeout). The watcher must go on serving the port
    /// meanwhile, even when the card's connection stirs.
    #[test]
    fn the_watcher_serves_new_peers_while_an_exchange_runs() {
        let (cfg, port) = config("");
        let slot = VpcdSlot::open(&cfg, 0xA71 << 16, 0, port).unwrap();
        let card = vicc(port);
        wait_present(&slot, true);
        let exchange = slot.shared.io.lock();
        // The card's connection stirs (its peer half-closes) during the exchange.
        card.shutdown(std::net::Shutdown::Write).unwrap();
        let mut next = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).unwrap();
        next.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let started = Instant::now();
        let mut got = [0u8; 3];
        let heard = next.read(&mut got);
        let waited = started.elapsed();
        drop(exchange);
        // Refused (closed) or asked for its ATR: either way, handled.
        assert!(
            matches!(heard, Ok(0) | Ok(3)),
            "the new peer was not served while the exchange ran: {heard:?} after {waited:?}"
        );
        assert!(waited < Duration::from_secs(2), "took {waited:?}");
    }

    /// A listener whose accept keeps failing (EMFILE when pcscd runs out of
    /// descriptors) must not flood pcscd's log nor be retried in a tight loop. A
    /// socket bound but not listening fails every accept (EINVAL) and polls as hung
    /// up, the same persistent failure without touching the process's limits.
    #[test]
    fn a_failing_accept_backs_off_and_stays_within_the_log_budget() {
        crate::test_log::init();
        let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        socket
            .bind(&SocketAddr::from((Ipv4Addr::LOCALHOST, 0)).into())
            .unwrap();
        socket.set_nonblocking(true).unwrap();
        let (cfg, _) = config("");
        let lun = 0xA72 << 16;
        let slot = VpcdSlot::start(
            &cfg,
            lun,
            "broken listener".into(),
            Source::Listener(net::Acceptor::new(socket.into())),
            None,
        )
        .unwrap();
        // A rate, measured over a while: 20 lines a second before the backoff.
        std::thread::sleep(Duration::from_millis(1500));
        slot.close();
        let lines = crate::test_log::count(&format!("vpcd-{lun:x}"), "accept failed");
        assert!(lines >= 1, "the failure is logged");
        assert!(lines <= 6, "{lines} lines about a failing accept in 1.5 s");
    }

    /// Reversed mode resolves the vicc's host name, which may take as long as the
    /// system's resolver lets it (a DNS server that does not answer: 10 to 30 s).
    /// Closing the slot (pcscd's shutdown, a reader's removal) must not wait for it.
    #[test]
    fn closing_a_reversed_slot_does_not_wait_for_name_resolution() {
        let (entered_tx, entered) = std::sync::mpsc::channel();
        let (release, released) = std::sync::mpsc::channel::<()>();
        let released = Mutex::new(released);
        let resolve: Resolve = Arc::new(move |_, _| {
            let _ = entered_tx.send(());
            // Stalls like a resolver whose server never answers, for the test's sake
            // at most 5 s.
            let _ = released.lock().recv_timeout(Duration::from_secs(5));
            Err(io::Error::new(io::ErrorKind::TimedOut, "resolver stalled"))
        });
        let cfg = ReaderConfig::parse("stalled.invalid:35999/timeout=5").unwrap();
        let slot = VpcdSlot::start(
            &cfg,
            0xA73 << 16,
            "stalled resolver".into(),
            Source::Connector(Connector::new("stalled.invalid".into(), 35999, resolve)),
            None,
        )
        .unwrap();
        entered
            .recv_timeout(Duration::from_secs(5))
            .expect("the slot resolves its host");
        let started = Instant::now();
        slot.close();
        let took = started.elapsed();
        let _ = release.send(());
        assert!(
            took < Duration::from_secs(1),
            "close waited {took:?} for DNS"
        );
    }

    /// The lookup's thread wakes the watcher with its answer: a failed one backs off
    /// and resolves again, a good one is connected to.
    #[test]
    fn a_reversed_slot_connects_to_what_its_lookup_thread_found() {
        let vicc_side = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let addr = vicc_side.local_addr().unwrap();
        let calls = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let counted = Arc::clone(&calls);
        let resolve: Resolve = Arc::new(move |host, port| {
            assert_eq!((host, port), ("vicc.test", 35998));
            if counted.fetch_add(1, Ordering::SeqCst) == 0 {
                return Err(io::Error::new(io::ErrorKind::NotFound, "not yet"));
            }
            // Slower than a poll round, so the answer has to wake the watcher.
            std::thread::sleep(Duration::from_millis(50));
            Ok(vec![addr])
        });
        let cfg = ReaderConfig::parse("vicc.test:35998/timeout=5").unwrap();
        let slot = VpcdSlot::start(
            &cfg,
            0xA74 << 16,
            "reversed".into(),
            Source::Connector(Connector::new("vicc.test".into(), 35998, resolve)),
            None,
        )
        .unwrap();
        let (mut card, _) = vicc_side.accept().unwrap();
        card.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        assert_eq!(read_frame(&mut card), [4], "GET ATR");
        card.write_all(&frame(&ATR)).unwrap();
        wait_present(&slot, true);
        assert_eq!(
            calls.load(Ordering::SeqCst),
            2,
            "resolved again after a failure"
        );
        slot.close();
    }
}
