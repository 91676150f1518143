//! The VSCard connection of one reader, shared by its slots.
//!
//! A hub is created when the reader's first slot opens, found by the others through a
//! registry keyed by the reader index (`lun >> 16`), and stopped and joined when its
//! last slot closes. The registry's lock is held only to look up, count and insert.
//!
//! Two kinds of thread touch a hub:
//! - its connection thread accepts the client on the reader's base port and reads
//!   every message it sends: reader and card events, which it applies to the slots and
//!   acknowledges, and APDU replies, which it hands to the exchange waiting for them.
//! - pcscd's threads, in [`VscardSlot`]: an exchange writes its APDU, then waits (up to
//!   the reader's timeout) for the connection thread to deliver the reply for its
//!   reader id. Exchanges on one slot are serialized; different slots run in parallel
//!   over the one connection, whose writes are serialized by a lock.
//!
//! A client that breaks the protocol, stalls past the timeout or disconnects is
//! dropped: every card it offered is removed, and the port accepts a new client.

use std::collections::HashMap;
use std::io::{self, Read};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use vpcd_protocol::config::{is_allowed, AllowedNet, Endpoint, ReaderConfig};
use vpcd_protocol::hex;
use vpcd_protocol::vpcd as protocol;
use vpcd_protocol::vscard::{
    self as codec, Decoder, ErrorCode, Message, HEADER_LEN, MAX_PAYLOAD, UNDEFINED_READER_ID,
    VERSION,
};

use super::conn::{self, next_id, trace_apdu, Current, Way};
use super::{CardSlot, Limits, PowerAction, SlotError};
use crate::net::{self, LogBudget, Watch, Watcher};
use crate::presence::Presence;
use crate::sys::{Interest, Ready};

/// How much the connection thread reads at a time.
const READ_CHUNK: usize = 16 * 1024;

/// The hubs of open vscard readers by reader index, with how many slots use each.
static HUBS: Mutex<Option<HashMap<u32, Registered>>> = Mutex::new(None);

struct Registered {
    hub: Arc<Hub>,
    users: usize,
}

/// One reader's listener and connection thread.
struct Hub {
    shared: Arc<Shared>,
    watcher: Watcher,
}

/// What the connection thread and the slots share.
struct Shared {
    label: String,
    timeout: Duration,
    trace_apdus: bool,
    state: Mutex<State>,
    /// Signalled whenever an exchange gets its outcome.
    answered: Condvar,
}

struct State {
    closing: bool,
    conn: Current<Mutex<()>>,
    /// One per slot of the reader; the index is the VSCard reader id.
    readers: Vec<Reader>,
}

#[derive(Default)]
struct Reader {
    /// A client reader is mapped onto this slot.
    attached: bool,
    /// The client's name for it, for log lines.
    name: String,
    /// The ATR of the inserted card: a card is present iff this is set.
    atr: Option<Vec<u8>>,
    /// The slot pcscd has open at this index, if any.
    cell: Option<Arc<Cell>>,
    /// The APDU exchange waiting for its reply.
    exchange: Option<Exchange>,
}

/// The part of a slot the hub updates.
#[derive(Default)]
struct Cell {
    presence: Presence,
    /// Held for the whole of one exchange on the slot.
    io: Mutex<()>,
}

struct Exchange {
    id: u64,
    outcome: Option<Result<Vec<u8>, Failure>>,
}

#[derive(Debug)]
enum Failure {
    /// The client answered the APDU with an Error message.
    ClientError(ErrorCode),
    /// The card was removed or reset (a new ATR) while the APDU was out.
    CardGone,
    /// The client was dropped (why).
    ClientDropped(String),
    /// pcscd closed the slot.
    SlotClosed,
    /// The hub stopped: the reader's last slot closed.
    ReaderClosed,
    /// The exchange was no longer the slot's when its outcome was due (a bug).
    Lost,
}

/// The connected client, with the lock held for each whole message written to it, so
/// messages never interleave.
type Conn = conn::Conn<Mutex<()>>;

impl Reader {
    /// Removes the card, if any: pcscd sees a removal, and an exchange in flight fails.
    fn remove_card(&mut self) -> bool {
        self.fail_exchange(Failure::CardGone);
        let had = self.atr.take().is_some();
        if had {
            if let Some(cell) = &self.cell {
                cell.presence.remove();
            }
        }
        had
    }

    fn fail_exchange(&mut self, why: Failure) {
        if let Some(x) = &mut self.exchange {
            if x.outcome.is_none() {
                x.outcome = Some(Err(why));
            }
        }
    }
}

impl Hub {
    fn start(cfg: &ReaderConfig, key: u32) -> io::Result<Hub> {
        let Endpoint::Listen { addr, v6only } = &cfg.endpoint else {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "protocol=vscard listens for its client: use DEVICENAME /dev/null:PORT/protocol=vscard \
                 (reversed mode is not available with VSCard)",
            ));
        };
        let at = SocketAddr::new(*addr, cfg.port);
        let listener = net::listen(at, *v6only)
            .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {at}: {e}")))?;
        let shared = Arc::new(Shared {
            label: format!("reader {key} vscard {at}"),
            timeout: cfg.timeout,
            trace_apdus: cfg.trace_apdus,
            state: Mutex::new(State {
                closing: false,
                conn: Current::default(),
                readers: (0..cfg.slots).map(|_| Reader::default()).collect(),
            }),
            answered: Condvar::new(),
        });
        let watcher = Watcher::spawn(
            format!("vscard-{key:x}"),
            shared.label.clone(),
            HubWatch {
                shared: Arc::clone(&shared),
                acceptor: net::Acceptor::new(listener),
                listening: false,
                allow: cfg.allow.clone(),
                budget: LogBudget::new(net::PEER_LOG_LINES, net::PEER_LOG_WINDOW),
                decoder: Decoder::new(),
                chunk: vec![0u8; READ_CHUNK],
                conn: None,
                reading: None,
                partial_since: None,
            },
        )?;
        log::info!("{}: listening for a VSCard client", shared.label);
        Ok(Hub { shared, watcher })
    }

    /// Drops the client, stops the connection thread and joins it. Idempotent.
    fn shutdown(&self) {
        {
            let mut s = self.shared.state.lock();
            s.closing = true;
            s.conn.close();
            for r in &mut s.readers {
                r.fail_exchange(Failure::ReaderClosed);
            }
        }
        self.shared.answered.notify_all();
        if self.watcher.stop() {
            log::info!("{}: closed", self.shared.label);
        }
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// The hub of reader `key`, created (listening on `cfg`'s base port) for its first
/// slot.
fn acquire(cfg: &ReaderConfig, key: u32) -> io::Result<Arc<Hub>> {
    let mut table = HUBS.lock();
    let map = table.get_or_insert_with(HashMap::new);
    if let Some(entry) = map.get_mut(&key) {
        entry.users += 1;
        return Ok(Arc::clone(&entry.hub));
    }
    // Binding and spawning are quick and never wait on a peer.
    let hub = Arc::new(Hub::start(cfg, key)?);
    map.insert(
        key,
        Registered {
            hub: Arc::clone(&hub),
            users: 1,
        },
    );
    Ok(hub)
}

/// Gives back one slot's use of `hub`; the last one stops and joins it.
fn release(key: u32, hub: &Arc<Hub>) {
    let last = {
        let mut table = HUBS.lock();
        match table.as_mut() {
            Some(map) => match map.get_mut(&key) {
                Some(entry) if Arc::ptr_eq(&entry.hub, hub) => {
                    entry.users -= 1;
                    if entry.users == 0 {
                        map.remove(&key);
                        true
                    } else {
                        false
                    }
                }
                _ => false,
            },
            None => false,
        }
    };
    if last {
        hub.shutdown();
    }
}

/// One slot of a vscard reader: the card the client offers in the client reader
/// mapped onto it.
pub(crate) struct VscardSlot {
    label: String,
    index: usize,
    key: u32,
    cell: Arc<Cell>,
    hub: Mutex<Option<Arc<Hub>>>,
}

impl VscardSlot {
    /// Opens slot `index` of reader `lun >> 16`: the first slot of a reader starts its
    /// hub (the listener on the base port), the others join it.
    pub(crate) fn open(cfg: &ReaderConfig, lun: u32, index: u16) -> io::Result<VscardSlot> {
        let key = lun >> 16;
        let hub = acquire(cfg, key)?;
        let index = usize::from(index);
        let cell = Arc::new(Cell::default());
        {
            let mut s = hub.shared.state.lock();
            match s.readers.get_mut(index) {
                Some(reader) => {
                    if reader.atr.is_some() {
                        // The client was quicker than pcscd opening this slot.
                        cell.presence.insert();
                    }
                    reader.cell = Some(Arc::clone(&cell));
                }
                None => {
                    drop(s);
                    release(key, &hub);
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!("slot {index} is beyond the slots of the reader's first entry"),
                    ));
                }
            }
        }
        let label = format!("lun {lun:#x} vscard reader id {index}");
        log::info!("{label}: slot open ({})", hub.shared.label);
        Ok(VscardSlot {
            label,
            index,
            key,
            cell,
            hub: Mutex::new(Some(hub)),
        })
    }

    fn hub(&self) -> Option<Arc<Hub>> {
        self.hub.lock().clone()
    }

    fn current_atr(&self) -> Option<Vec<u8>> {
        let hub = self.hub()?;
        let s = hub.shared.state.lock();
        let reader = s.readers.get(self.index)?;
        reader.atr.clone().filter(|_| reader.attached)
    }
}

impl CardSlot for VscardSlot {
    fn label(&self) -> &str {
        &self.label
    }

    fn limits(&self) -> Limits {
        Limits {
            max_command: MAX_PAYLOAD,
            // Extended APDUs carry at most 65535 bytes of data (a 2-byte Lc).
            max_command_data: usize::from(u16::MAX),
        }
    }

    fn presence(&self) -> &Presence {
        &self.cell.presence
    }

    fn atr(&self) -> Option<Vec<u8>> {
        self.current_atr()
    }

    /// VSCard has no power control: the card stays powered while it is inserted.
    /// Power up and reset give its ATR without any traffic; power down changes nothing.
    fn power(&self, action: PowerAction) -> Result<Vec<u8>, SlotError> {
        match action {
            PowerAction::Down => Ok(Vec::new()),
            PowerAction::Up | PowerAction::Reset => {
                let atr = self.current_atr().ok_or(SlotError::NoCard)?;
                log::debug!("{}: {action:?}: ATR {}", self.label, hex(&atr));
                Ok(atr)
            }
        }
    }

    fn transmit(&self, apdu: &[u8], reply: &mut [u8]) -> Result<usize, SlotError> {
        let hub = self.hub().ok_or(SlotError::NoCard)?;
        if apdu.is_empty() || apdu.len() > MAX_PAYLOAD {
            // Nothing was sent and the client stays: the command cannot travel.
            let e = SlotError::Protocol(format!(
                "a {}-byte APDU cannot travel in VSCard (1 to {MAX_PAYLOAD} bytes)",
                apdu.len()
            ));
            log::error!("{}: refusing the command: {e}", self.label);
            return Err(e);
        }
        let _io = self.cell.io.lock();
        let outcome = hub.shared.exchange(self.index, apdu, &self.label)?;
        let len = outcome.len();
        protocol::check_reply(len, reply.len()).map_err(|e| {
            log::error!("{}: {e}", self.label);
            SlotError::from(e)
        })?;
        reply[..len].copy_from_slice(&outcome);
        Ok(len)
    }

    /// Drops the client: the peer of this card is the connection that carries every
    /// card of the reader, so all of them are removed.
    fn drop_peer(&self, why: &str) {
        if let Some(hub) = self.hub() {
            let conn = hub.shared.state.lock().conn.get();
            if let Some(conn) = conn {
                hub.shared.drop_client(conn.id, why);
            }
        }
    }

    fn close(&self) {
        let Some(hub) = self.hub.lock().take() else {
            return;
        };
        {
            let mut s = hub.shared.state.lock();
            if let Some(reader) = s.readers.get_mut(self.index) {
                if reader
                    .cell
                    .as_ref()
                    .is_some_and(|c| Arc::ptr_eq(c, &self.cell))
                {
                    reader.cell = None;
                    reader.fail_exchange(Failure::SlotClosed);
                }
            }
        }
        hub.shared.answered.notify_all();
        self.cell.presence.close();
        release(self.key, &hub);
        log::info!("{}: slot closed", self.label);
    }
}

impl Drop for VscardSlot {
    fn drop(&mut self) {
        self.close();
    }
}

impl Shared {
    /// Sends `apdu` to reader `index` and waits for the client's reply.
    fn exchange(&self, index: usize, apdu: &[u8], label: &str) -> Result<Vec<u8>, SlotError> {
        let id = next_id();
        let conn = {
            let mut s = self.state.lock();
            let conn = s.conn.get();
            let reader = s.readers.get_mut(index).ok_or(SlotError::NoCard)?;
            let conn = match conn {
                Some(conn) if reader.attached && reader.atr.is_some() => conn,
                _ => return Err(SlotError::NoCard),
            };
            reader.exchange = Some(Exchange { id, outcome: None });
            conn
        };
        trace_apdu(self.trace_apdus, label, Way::Command, apdu);
        let mut frame = Vec::with_capacity(HEADER_LEN + apdu.len());
        let sent = codec::encode(index as u32, &Message::Apdu(apdu), &mut frame)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))
            .and_then(|()| self.send(&conn, &frame));
        if let Err(e) = sent {
            self.take_outcome(index, id);
            log::error!(
                "{label}: cannot send the APDU: {e}; dropping client {}",
                conn.peer
            );
            self.drop_client(conn.id, "APDU could not be sent");
            return Err(e.into());
        }
        let deadline = Instant::now() + self.timeout;
        let mut s = self.state.lock();
        let outcome = loop {
            let Some(reader) = s.readers.get_mut(index) else {
                break Err(Failure::Lost);
            };
            match &mut reader.exchange {
                Some(x) if x.id == id => {
                    if let Some(outcome) = x.outcome.take() {
                        reader.exchange = None;
                        break outcome;
                    }
                }
                // Replaced or cleared: exchanges on a slot are serialized and only
                // their own thread clears them, so this is a bug; fail it plainly.
                _ => break Err(Failure::Lost),
            }
            if Instant::now() >= deadline {
                reader.exchange = None;
                drop(s);
                log::error!(
                    "{label}: no reply within {:?}; dropping client {}",
                    self.timeout,
                    conn.peer
                );
                self.drop_client(conn.id, "APDU reply timed out");
                return Err(SlotError::Timeout);
            }
            self.answered.wait_until(&mut s, deadline);
        };
        drop(s);
        match outcome {
            Ok(reply) => {
                trace_apdu(self.trace_apdus, label, Way::Reply, &reply);
                Ok(reply)
            }
            Err(Failure::ClientError(code)) => {
                log::error!("{label}: the client answered the APDU with {code}");
                Err(SlotError::Io(io::Error::other(format!(
                    "the client answered the APDU with {code}"
                ))))
            }
            Err(Failure::CardGone) => Err(SlotError::NoCard),
            Err(Failure::ClientDropped(why)) => Err(SlotError::Io(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                format!("the VSCard client was dropped while the APDU was out ({why})"),
            ))),
            Err(Failure::SlotClosed) => Err(SlotError::Io(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "pcscd closed the slot while its APDU was out",
            ))),
            Err(Failure::ReaderClosed) => Err(SlotError::Io(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "the reader closed while the APDU was out",
            ))),
            Err(Failure::Lost) => {
                log::error!("{label}: internal error: the APDU's exchange was lost");
                Err(SlotError::Io(io::Error::other(
                    "internal error: the APDU's exchange was lost",
                )))
            }
        }
    }

    /// Ends exchange `id` on reader `index` without an outcome.
    fn take_outcome(&self, index: usize, id: u64) {
        let mut s = self.state.lock();
        if let Some(reader) = s.readers.get_mut(index) {
            if reader.exchange.as_ref().is_some_and(|x| x.id == id) {
                reader.exchange = None;
            }
        }
    }

    /// Writes one whole message within the reader's timeout.
    fn send(&self, conn: &Conn, bytes: &[u8]) -> io::Result<()> {
        let _write = conn.extra.lock();
        net::write_all_within(&conn.stream, bytes, self.timeout)
    }

    /// Sends one message to the client.
    fn reply(&self, conn: &Conn, reader_id: u32, message: &Message<'_>) -> Result<(), String> {
        let mut out = Vec::with_capacity(HEADER_LEN + 16);
        codec::encode(reader_id, message, &mut out).map_err(|e| e.to_string())?;
        self.send(conn, &out)
            .map_err(|e| format!("cannot send {:?}: {e}", message.kind()))
    }

    fn ack(&self, conn: &Conn, reader_id: u32, code: ErrorCode) -> Result<(), String> {
        self.reply(conn, reader_id, &Message::Error(code))
    }

    /// Drops client `id` if it is still the connected one: every card it offered is
    /// removed and every exchange with it fails.
    fn drop_client(&self, id: u64, why: &str) {
        let conn = {
            let mut s = self.state.lock();
            let Some(conn) = s.conn.remove(id) else {
                return;
            };
            for r in &mut s.readers {
                r.remove_card();
                r.fail_exchange(Failure::ClientDropped(why.to_owned()));
                r.attached = false;
                r.name.clear();
            }
            conn
        };
        self.answered.notify_all();
        log::info!(
            "{}: client {} gone ({why}): its readers and cards removed",
            self.label,
            conn.peer
        );
    }

    /// Makes a new connection the reader's client, unless it has one; says why not.
    fn accept(&self, stream: TcpStream, peer: SocketAddr) -> Result<(), String> {
        let conn = Conn::new(stream, peer, self.timeout, Mutex::new(()))?;
        let mut s = self.state.lock();
        if s.closing {
            return Ok(());
        }
        s.conn
            .install(conn)
            .map_err(|active| format!("refusing client {peer}: client {active} is connected"))?;
        drop(s);
        log::info!("{}: client {peer} connected", self.label);
        Ok(())
    }

    /// Handles every whole message buffered in `decoder`; returns how many there
    /// were. An error means the client must be dropped.
    fn process(&self, conn: &Conn, decoder: &mut Decoder) -> Result<usize, String> {
        let mut count = 0;
        loop {
            let (header, payload) = match decoder.next_message() {
                Ok(Some(message)) => message,
                Ok(None) => return Ok(count),
                Err(e) => return Err(e.to_string()),
            };
            count += 1;
            match codec::decode(&header, payload) {
                Ok(message) => self.handle(conn, header.reader_id, message)?,
                Err(e) if e.keeps_stream() => {
                    log::warn!("{}: client {}: {e}", self.label, conn.peer);
                    self.ack(conn, header.reader_id, ErrorCode::GeneralError)?;
                }
                Err(e) => return Err(e.to_string()),
            }
        }
    }

    /// The reader of `reader_id`, if it is one of our slots.
    fn index(&self, reader_id: u32, readers: usize) -> Option<usize> {
        usize::try_from(reader_id).ok().filter(|i| *i < readers)
    }

    /// Applies one message from the client and answers it the way QEMU's
    /// ccid-card-passthru does.
    fn handle(&self, conn: &Conn, reader_id: u32, message: Message<'_>) -> Result<(), String> {
        let label = &self.label;
        let peer = conn.peer;
        match message {
            Message::Init {
                version,
                capabilities,
            } => {
                if version != VERSION {
                    log::warn!(
                        "{label}: client {peer} speaks VSCard version {version:#x}, we {VERSION:#x}"
                    );
                }
                log::info!("{label}: client {peer} Init, capabilities {capabilities:?}");
                self.reply(conn, UNDEFINED_READER_ID, &Message::host_init())
            }
            Message::ReaderAdd { name } => {
                let name = String::from_utf8_lossy(&name[..name.len().min(128)]).into_owned();
                let allocated = {
                    let mut s = self.state.lock();
                    let free = s.readers.iter().position(|r| !r.attached);
                    if let Some(i) = free {
                        let reader = &mut s.readers[i];
                        reader.attached = true;
                        reader.name.clone_from(&name);
                    }
                    free
                };
                match allocated {
                    Some(i) => {
                        log::info!("{label}: client reader \"{name}\" added as reader id {i}");
                        self.ack(conn, i as u32, ErrorCode::Success)
                    }
                    None => {
                        log::warn!(
                            "{label}: client reader \"{name}\" refused: every slot is taken"
                        );
                        self.ack(conn, UNDEFINED_READER_ID, ErrorCode::CannotAddMoreReaders)
                    }
                }
            }
            Message::ReaderRemove => {
                let code = {
                    let mut s = self.state.lock();
                    match self.index(reader_id, s.readers.len()) {
                        Some(i) => {
                            let reader = &mut s.readers[i];
                            if reader.attached {
                                reader.remove_card();
                                reader.attached = false;
                                log::info!(
                                    "{label}: client reader \"{}\" (id {i}) removed",
                                    reader.name
                                );
                                reader.name.clear();
                            }
                            // Removing an absent reader succeeds: vscclient clears
                            // reader 0 that way when it connects.
                            ErrorCode::Success
                        }
                        None => ErrorCode::GeneralError,
                    }
                };
                self.answered.notify_all();
                self.ack(conn, reader_id, code)
            }
            Message::Atr(atr) => {
                let code = {
                    let mut s = self.state.lock();
                    match self.index(reader_id, s.readers.len()) {
                        Some(i) if s.readers[i].attached => match protocol::check_atr(atr) {
                            Ok(()) => {
                                let reader = &mut s.readers[i];
                                // A new ATR on a present card is a reset on the client
                                // side: pcscd sees it as removal and insertion.
                                reader.remove_card();
                                reader.atr = Some(atr.to_vec());
                                if let Some(cell) = &reader.cell {
                                    cell.presence.insert();
                                }
                                log::info!(
                                    "{label}: card inserted in reader id {i}: ATR {}",
                                    hex(atr)
                                );
                                ErrorCode::Success
                            }
                            Err(e) => {
                                log::warn!("{label}: reader id {i}: refusing the card: {e}");
                                ErrorCode::GeneralError
                            }
                        },
                        _ => {
                            log::warn!(
                                "{label}: ATR for reader id {reader_id}, which was not added"
                            );
                            ErrorCode::GeneralError
                        }
                    }
                };
                self.answered.notify_all();
                self.ack(conn, reader_id, code)
            }
            Message::CardRemove => {
                let code = {
                    let mut s = self.state.lock();
                    match self.index(reader_id, s.readers.len()) {
                        Some(i) if s.readers[i].attached => {
                            if s.readers[i].remove_card() {
                                log::info!("{label}: card removed from reader id {i}");
                            }
                            ErrorCode::Success
                        }
                        _ => ErrorCode::GeneralError,
                    }
                };
                self.answered.notify_all();
                self.ack(conn, reader_id, code)
            }
            Message::Apdu(reply) => {
                if !self.deliver(reader_id, Ok(reply)) {
                    log::warn!(
                        "{label}: client {peer} sent an APDU for reader id {reader_id}, which \
                         has no command outstanding; ignored"
                    );
                }
                Ok(())
            }
            Message::Error(code) => {
                if !self.deliver(reader_id, Err(code)) {
                    log::info!("{label}: client {peer} reports {code} for reader id {reader_id}");
                }
                Ok(())
            }
            // Defined host -> client; answer it anyway, there is never anything pending.
            Message::Flush => self.reply(conn, reader_id, &Message::FlushComplete),
            Message::FlushComplete => {
                log::debug!("{label}: client {peer} FlushComplete for reader id {reader_id}");
                Ok(())
            }
        }
    }

    /// Hands a reply to the exchange waiting on `reader_id`; false if none waits.
    fn deliver(&self, reader_id: u32, outcome: Result<&[u8], ErrorCode>) -> bool {
        let mut s = self.state.lock();
        let Some(i) = self.index(reader_id, s.readers.len()) else {
            return false;
        };
        match &mut s.readers[i].exchange {
            Some(x) if x.outcome.is_none() => {
                x.outcome = Some(outcome.map(<[u8]>::to_vec).map_err(Failure::ClientError));
                drop(s);
                self.answered.notify_all();
                true
            }
            _ => false,
        }
    }
}

/// The connection thread: accepts the client and reads every message it sends.
struct HubWatch {
    shared: Arc<Shared>,
    acceptor: net::Acceptor,
    /// Whether the last `arm` polls the listener (not while accept backs off).
    listening: bool,
    allow: Vec<AllowedNet>,
    budget: LogBudget,
    decoder: Decoder,
    chunk: Vec<u8>,
    /// The connection being read, the one `decoder` holds bytes of, and since when a
    /// partial message waits.
    conn: Option<Arc<Conn>>,
    reading: Option<u64>,
    partial_since: Option<Instant>,
}

impl Watch for HubWatch {
    fn arm<'a>(
        &'a mut self,
        fds: &mut Vec<(BorrowedFd<'a>, Interest)>,
    ) -> Option<Option<Duration>> {
        let conn = {
            let s = self.shared.state.lock();
            if s.closing {
                return None;
            }
            s.conn.get()
        };
        if conn.as_ref().map(|c| c.id) != self.reading {
            self.decoder.clear();
            self.partial_since = None;
            self.reading = conn.as_ref().map(|c| c.id);
        }
        self.conn = conn;
        let now = Instant::now();
        let mut deadline = self.partial_since.map(|t| t + self.shared.timeout);
        match self.acceptor.armed(now) {
            Ok(fd) => {
                fds.push((fd, Interest::Read));
                self.listening = true;
            }
            Err(until) => {
                deadline = Some(deadline.map_or(until, |d| d.min(until)));
                self.listening = false;
            }
        }
        if let Some(conn) = &self.conn {
            fds.push((conn.stream.as_fd(), Interest::Read));
        }
        Some(deadline.map(|d| d.saturating_duration_since(now)))
    }

    fn on_ready(&mut self, ready: &[Ready]) {
        // The old client's goodbye before a new one's hello: a client that replaces
        // another in quick succession must not find the port still busy.
        let (listener, client) = if self.listening {
            (ready[0], ready.get(1))
        } else {
            (Ready::default(), ready.first())
        };
        if let Some(conn) = self.conn.take() {
            self.on_client(&conn, client.copied().unwrap_or_default());
        }
        let shared = &*self.shared;
        if listener.readable || listener.hangup {
            let mut accepted = vec![];
            self.acceptor
                .accept_all(&shared.label, &mut self.budget, |stream, peer| {
                    accepted.push((stream, peer))
                });
            for (stream, peer) in accepted {
                let refused = if is_allowed(&self.allow, peer.ip()) {
                    shared.accept(stream, peer).err()
                } else {
                    Some(format!("refusing {peer}: not in the reader's allow list"))
                };
                if let Some(why) = refused {
                    self.budget.log(log::Level::Warn, &shared.label, &why);
                }
            }
        }
    }

    fn finish(&mut self) {
        let conn = self.shared.state.lock().conn.get();
        if let Some(conn) = conn {
            self.shared.drop_client(conn.id, "reader closing");
        }
    }
}

impl HubWatch {
    /// Reads what the client sent, if anything; drops it when it broke the protocol,
    /// left, or left a message unfinished for too long.
    fn on_client(&mut self, conn: &Conn, ready: Ready) {
        let shared = &*self.shared;
        if ready.readable || ready.hangup {
            match (&conn.stream).read(&mut self.chunk) {
                Ok(0) => {
                    shared.drop_client(conn.id, "client closed the connection");
                    return;
                }
                Ok(n) => {
                    self.decoder.feed(&self.chunk[..n]);
                    match shared.process(conn, &mut self.decoder) {
                        Ok(handled) => {
                            self.partial_since = match (self.decoder.buffered(), handled) {
                                (0, _) => None,
                                // A new partial message started.
                                (_, 1..) => Some(Instant::now()),
                                (_, 0) => self.partial_since.or(Some(Instant::now())),
                            };
                        }
                        Err(why) => {
                            log::error!("{}: client {}: {why}", shared.label, conn.peer);
                            shared.drop_client(conn.id, "protocol violation");
                            return;
                        }
                    }
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock
                            | io::ErrorKind::Interrupted
                            | io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => {
                    shared.drop_client(conn.id, &e.to_string());
                    return;
                }
            }
        }
        if self
            .partial_since
            .is_some_and(|t| t.elapsed() >= shared.timeout)
        {
            log::error!(
                "{}: client {} left a message unfinished for {:?}",
                shared.label,
                conn.peer,
                shared.timeout
            );
            shared.drop_client(conn.id, "message incomplete");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::net::TcpListener;
    use vpcd_protocol::vscard::{Header, MsgType};

    fn config(extra: &str) -> (ReaderConfig, u16) {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let cfg = ReaderConfig::parse(&format!(
            "/dev/null:{port}/protocol=vscard/listen=127.0.0.1/timeout=2{extra}"
        ))
        .unwrap();
        (cfg, port)
    }

    fn send(stream: &mut TcpStream, reader: u32, message: &Message<'_>) {
        let mut out = vec![];
        codec::encode(reader, message, &mut out).unwrap();
        stream.write_all(&out).unwrap();
    }

    fn recv(stream: &mut TcpStream) -> (Header, Vec<u8>) {
        let mut head = [0u8; HEADER_LEN];
        stream.read_exact(&mut head).unwrap();
        let header = Header::parse(head);
        let mut payload = vec![0; header.payload_len().unwrap()];
        stream.read_exact(&mut payload).unwrap();
        (header, payload)
    }

    fn ack(stream: &mut TcpStream) -> (u32, ErrorCode) {
        let (h, p) = recv(stream);
        match codec::decode(&h, &p).unwrap() {
            Message::Error(code) => (h.reader_id, code),
            other => panic!("expected an Error, got {other:?}"),
        }
    }

    fn wait_present(slot: &VscardSlot, present: bool) {
        let deadline = Instant::now() + Duration::from_secs(2);
        while slot.presence().check() != present {
            assert!(Instant::now() < deadline, "presence never became {present}");
            slot.presence().wait_for_event(Duration::from_millis(50));
        }
    }

    #[test]
    fn a_client_outside_the_allow_list_is_closed_and_an_allowed_one_served() {
        let (cfg, port) = config("/allow=127.0.0.2");
        let slot = VscardSlot::open(&cfg, 0xBEE7 << 16, 0).unwrap();
        let from = |source: [u8; 4]| {
            let socket =
                socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
            socket.bind(&SocketAddr::from((source, 0)).into()).unwrap();
            socket
                .connect(&SocketAddr::from(([127, 0, 0, 1], port)).into())
                .unwrap();
            TcpStream::from(socket)
        };
        let mut refused = from([127, 0, 0, 3]);
        refused
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        // Closed is an end of stream or a reset; a timeout (WouldBlock or TimedOut)
        // means the slot kept the connection open.
        let mut byte = [0u8; 1];
        match refused.read(&mut byte) {
            Ok(0) => {}
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {}
            other => panic!("127.0.0.3 must be closed, the read gave {other:?}"),
        }
        let mut allowed = from([127, 0, 0, 2]);
        send(&mut allowed, UNDEFINED_READER_ID, &Message::host_init());
        assert_eq!(recv(&mut allowed).0.kind, MsgType::Init as u32);
        drop(slot);
    }

    #[test]
    fn slots_share_one_hub_which_the_last_close_joins() {
        let (cfg, port) = config("");
        let key = 0xBEE1;
        let s0 = VscardSlot::open(&cfg, key << 16, 0).unwrap();
        let s1 = VscardSlot::open(&cfg, key << 16 | 1, 1).unwrap();
        assert_eq!(HUBS.lock().as_ref().unwrap()[&key].users, 2);

        let mut client = TcpStream::connect(("127.0.0.1", port)).unwrap();
        send(&mut client, 0, &Message::host_init());
        let (h, p) = recv(&mut client);
        assert_eq!(h.kind, MsgType::Init as u32);
        assert_eq!(codec::decode(&h, &p).unwrap(), Message::host_init());
        for want in [0, 1] {
            send(
                &mut client,
                UNDEFINED_READER_ID,
                &Message::ReaderAdd { name: b"r" },
            );
            assert_eq!(ack(&mut client), (want, ErrorCode::Success));
        }
        let atr = [0x3B, 0x80, 0x80, 0x01, 0x01];
        send(&mut client, 1, &Message::Atr(&atr));
        assert_eq!(ack(&mut client), (1, ErrorCode::Success));
        wait_present(&s1, true);
        assert!(!s0.presence().check());

        // Power: no traffic, and power down leaves the card usable.
        assert_eq!(s1.power(PowerAction::Down).unwrap(), Vec::<u8>::new());
        assert_eq!(s1.atr().unwrap(), atr);
        assert_eq!(s1.power(PowerAction::Reset).unwrap(), atr);
        assert!(matches!(s0.power(PowerAction::Up), Err(SlotError::NoCard)));

        // An exchange: the reply comes back on reader id 1.
        let mut peer = client.try_clone().unwrap();
        let answer = std::thread::spawn(move || {
            let (h, p) = recv(&mut peer);
            assert_eq!((h.kind, h.reader_id), (MsgType::Apdu as u32, 1));
            let mut reply = p.clone();
            reply.extend_from_slice(&[0x90, 0x00]);
            send(&mut peer, 1, &Message::Apdu(&reply));
        });
        let mut reply = [0u8; 64];
        let n = s1.transmit(&[0x00, 0xB0, 0x00, 0x00], &mut reply).unwrap();
        assert_eq!(&reply[..n], [0x00, 0xB0, 0x00, 0x00, 0x90, 0x00]);
        answer.join().unwrap();
        // A reply too large for the caller's buffer is refused, the card stays.
        let mut peer = client.try_clone().unwrap();
        let answer = std::thread::spawn(move || {
            recv(&mut peer);
            send(&mut peer, 1, &Message::Apdu(&[0x61; 100]));
        });
        let mut small = [0u8; 8];
        assert!(matches!(
            s1.transmit(&[0x00, 0xB0, 0x00, 0x00], &mut small),
            Err(SlotError::ReplyTooLarge { .. })
        ));
        answer.join().unwrap();
        assert!(s1.atr().is_some());

        // The first close keeps the hub for the other slot; the last one frees the port.
        s0.close();
        assert_eq!(HUBS.lock().as_ref().unwrap()[&key].users, 1);
        assert!(TcpListener::bind(("127.0.0.1", port)).is_err());
        s1.close();
        s1.close();
        assert!(!HUBS.lock().as_ref().unwrap().contains_key(&key));
        let mut end = [0u8; 1];
        assert_eq!(client.read(&mut end).unwrap_or(0), 0, "client dropped");
        TcpListener::bind(("127.0.0.1", port)).expect("port released");
    }

    #[test]
    fn a_slot_beyond_the_reader_and_reversed_mode_are_refused() {
        let (cfg, _) = config("/slots=1");
        assert!(VscardSlot::open(&cfg, 0xBEE2 << 16 | 1, 1).is_err());
        let reversed = ReaderConfig::parse("localhost:4000/protocol=vscard").unwrap();
        let e = VscardSlot::open(&reversed, 0xBEE3 << 16, 0)
            .err()
            .expect("refused");
        assert_eq!(e.kind(), io::ErrorKind::Unsupported);
        assert!(!HUBS
            .lock()
            .as_ref()
            .is_some_and(|m| m.contains_key(&0xBEE2) || m.contains_key(&0xBEE3)));
    }

    #[test]
    fn close_ends_an_exchange_in_flight_at_once() {
        let (cfg, port) = config("/timeout=60");
        let slot = Arc::new(VscardSlot::open(&cfg, 0xBEE4 << 16, 0).unwrap());
        let mut client = TcpStream::connect(("127.0.0.1", port)).unwrap();
        send(
            &mut client,
            UNDEFINED_READER_ID,
            &Message::ReaderAdd { name: b"" },
        );
        assert_eq!(ack(&mut client), (0, ErrorCode::Success));
        send(&mut client, 0, &Message::Atr(&[0x3B, 0x00]));
        assert_eq!(ack(&mut client), (0, ErrorCode::Success));
        wait_present(&slot, true);
        let exchange = {
            let slot = Arc::clone(&slot);
            std::thread::spawn(move || {
                let mut reply = [0u8; 16];
                slot.transmit(&[0x00, 0xB0, 0x00, 0x00], &mut reply)
            })
        };
        recv(&mut client);
        let start = Instant::now();
        slot.close();
        let e = exchange.join().unwrap().unwrap_err();
        assert!(start.elapsed() < Duration::from_secs(2));
        assert!(
            e.to_string()
                .contains("pcscd closed the slot while its APDU was out"),
            "{e}"
        );
    }

    /// A command VSCard cannot carry is refused before anything is sent: a protocol
    /// error, not a failed connection, and the client and its card stay.
    #[test]
    fn an_apdu_that_cannot_travel_is_refused_and_the_card_stays() {
        let (cfg, port) = config("");
        let slot = VscardSlot::open(&cfg, 0xBEE5 << 16, 0).unwrap();
        let mut client = TcpStream::connect(("127.0.0.1", port)).unwrap();
        send(
            &mut client,
            UNDEFINED_READER_ID,
            &Message::ReaderAdd { name: b"" },
        );
        assert_eq!(ack(&mut client), (0, ErrorCode::Success));
        send(&mut client, 0, &Message::Atr(&[0x3B, 0x00]));
        assert_eq!(ack(&mut client), (0, ErrorCode::Success));
        wait_present(&slot, true);
        let mut reply = [0u8; 16];
        for apdu in [vec![], vec![0u8; MAX_PAYLOAD + 1]] {
            match slot.transmit(&apdu, &mut reply) {
                Err(SlotError::Protocol(e)) => assert!(e.contains("cannot travel"), "{e}"),
                other => panic!("{}-byte APDU: {other:?}", apdu.len()),
            }
        }
        assert!(slot.atr().is_some(), "the card stays");
        assert!(slot.hub().unwrap().shared.state.lock().conn.get().is_some());
    }

    /// An exchange whose client is dropped fails as its card's removal (the card goes
    /// with the client), at once.
    #[test]
    fn an_exchange_cut_by_a_dropped_client_fails_as_a_removal() {
        let (cfg, port) = config("");
        let slot = Arc::new(VscardSlot::open(&cfg, 0xBEE6 << 16, 0).unwrap());
        let mut client = TcpStream::connect(("127.0.0.1", port)).unwrap();
        send(
            &mut client,
            UNDEFINED_READER_ID,
            &Message::ReaderAdd { name: b"" },
        );
        assert_eq!(ack(&mut client), (0, ErrorCode::Success));
        send(&mut client, 0, &Message::Atr(&[0x3B, 0x00]));
        assert_eq!(ack(&mut client), (0, ErrorCode::Success));
        wait_present(&slot, true);
        let exchange = {
            let slot = Arc::clone(&slot);
            std::thread::spawn(move || {
                let mut reply = [0u8; 16];
                slot.transmit(&[0x00, 0xB0, 0x00, 0x00], &mut reply)
            })
        };
        recv(&mut client);
        slot.drop_peer("a test drops it");
        assert!(matches!(exchange.join().unwrap(), Err(SlotError::NoCard)));
        assert!(slot.atr().is_none());
    }
}
