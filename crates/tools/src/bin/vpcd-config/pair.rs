//! `vpcd-config tls pair`: one-step pairing with a one-time token (docs/TLS.md,
//! "Pairing in one step").
//!
//! The driver only reads its files (pcsc-lite 2.x runs it on a read-only file system),
//! so this command, run by the administrator, is the side that takes the token and
//! writes the trust list; the driver reads the new list at its next connection.
//!
//! It listens on a pairing port of its own, shakes hands (TLS 1.3) with the reader's
//! key, takes any client key its holder proves ([`link::pairing_server_config`]),
//! reads one line with the token, and trusts that key if the token is right. One
//! success ends the process, so a token works once; three wrong tokens or the end of
//! `--within` end it too, with nobody trusted.
//!
//! Connections are served at once, each on a thread of its own (at most
//! [`MAX_IN_FLIGHT`]), so a peer that connects and says nothing cannot keep the
//! vicc holding the token out. What they share is one [`Decision`] under one lock: it
//! alone says which line wins, counts the wrong ones and ends the pairing.

use std::collections::VecDeque;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use rustls::{ServerConfig, ServerConnection, StreamOwned};
use vpcd_protocol::link::{self, cert_fingerprint, Identity};
use vpcd_protocol::tls::{
    check_name, parse_pair_request, Fingerprint, PairAnswer, PairToken, Pairing, TrustEntry,
    VpcdsUri, MAX_PAIR_LINE, TOKEN_LEN,
};
use vpcd_tools::keys;

/// How many wrong tokens end the pairing: enough for a typo, far too few to guess
/// 128 bits.
pub(crate) const MAX_WRONG: u32 = 3;
/// How long one peer may take for its handshake and its line.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(10);
/// How many connections are served at once. A new one beyond that drops the oldest
/// (see [`InFlight`] for why the oldest goes, not the newcomer).
const MAX_IN_FLIGHT: usize = 16;

/// What `pair` was asked for.
pub(crate) struct Request<'a> {
    pub key_path: &'a Path,
    pub trust_path: &'a Path,
    /// The host in the URI (and the address to listen on, if it is one).
    pub host: String,
    /// The reader's port in the URI.
    pub port: u16,
    /// The pairing port; 0: any free one.
    pub pair_port: u16,
    pub within: Duration,
    pub name: String,
    pub qr: bool,
}

/// How one connection's exchange went, before the decision.
enum Attempt {
    Paired(Fingerprint),
    /// A line that was not the token: counted.
    Wrong(Fingerprint),
    /// No line (no TLS, a timeout, a hang-up): not counted, a peer that says nothing
    /// guesses nothing.
    Failed(String),
}

/// Why the pairing ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// A right token: its connection, and only it, writes the trust list.
    Paired,
    /// [`MAX_WRONG`] wrong tokens.
    TooManyWrong,
    /// `--within` ran out.
    Expired,
    /// The pairing port failed (accept).
    Broken,
}

impl End {
    /// The refusal of a line that came after the end.
    fn why(self) -> &'static str {
        match self {
            End::Paired => "the pairing is over: its token was used",
            End::TooManyWrong => "the pairing is over: too many wrong tokens",
            End::Expired => "the pairing is over: its time ran out",
            End::Broken => "the pairing is over",
        }
    }
}

/// What the connection that sent a line does.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// Trust its key, then answer OK: given once in a pairing, never again.
    Trust,
    /// Refuse it: wrong token `n` of [`MAX_WRONG`]; `last` if it closed the pairing.
    Wrong { n: u32, last: bool },
    /// The pairing had ended before this line counted: refuse it, count nothing.
    Over(End),
}

/// The pairing's one decision, shared by all its connections and taken under one
/// lock: the first right token wins, wrong ones are counted whichever connection
/// sent them, and once it has ended nothing changes it. Pure, so every path is unit
/// tested apart from the sockets.
#[derive(Debug, Default)]
struct Decision {
    wrong: u32,
    end: Option<End>,
}

impl Decision {
    /// The verdict on a line with the right token or not.
    fn line(&mut self, right: bool) -> Verdict {
        if let Some(end) = self.end {
            return Verdict::Over(end);
        }
        if right {
            self.end = Some(End::Paired);
            return Verdict::Trust;
        }
        self.wrong += 1;
        let last = self.wrong >= MAX_WRONG;
        if last {
            self.end = Some(End::TooManyWrong);
        }
        Verdict::Wrong {
            n: self.wrong,
            last,
        }
    }

    /// Ends the pairing for `why` unless it has ended already.
    fn stop(&mut self, why: End) {
        self.end.get_or_insert(why);
    }

    fn end(&self) -> Option<End> {
        self.end
    }
}

/// The connections being served, oldest first, at most `cap` of them.
///
/// When all places are taken, a new connection drops the oldest rather than being
/// refused: refusing would hand the port to whoever fills the places first and keeps
/// them filled (reconnecting as each one's 10 s run out), the very denial of service
/// this is for. A vicc that holds the token needs its connection for one handshake
/// and one line, milliseconds on a LAN, so it is never the oldest for long; a peer
/// that says nothing is the one that ages. Pushing the vicc out would take `cap` new
/// connections within those milliseconds, each costing its sender a TCP handshake.
struct InFlight<T> {
    cap: usize,
    next: u64,
    live: VecDeque<(u64, T)>,
}

impl<T> InFlight<T> {
    fn new(cap: usize) -> Self {
        InFlight {
            cap,
            next: 0,
            live: VecDeque::with_capacity(cap),
        }
    }

    /// Takes a new connection in: its id, and the oldest one if this made one too
    /// many.
    fn admit(&mut self, conn: T) -> (u64, Option<T>) {
        let id = self.next;
        self.next += 1;
        let dropped = if self.live.len() >= self.cap {
            self.live.pop_front().map(|(_, old)| old)
        } else {
            None
        };
        self.live.push_back((id, conn));
        (id, dropped)
    }

    /// A connection whose exchange is over (it may have been dropped already).
    fn finish(&mut self, id: u64) {
        self.live.retain(|(i, _)| *i != id);
    }

    /// Every connection still served, oldest first; none afterwards.
    fn drain(&mut self) -> Vec<T> {
        self.live.drain(..).map(|(_, conn)| conn).collect()
    }
}

/// One connection as the accepting thread sees it: a handle on its socket, so its
/// blocked reads can be ended from outside.
struct Live {
    sock: TcpStream,
    /// Dropped for a newer connection (not ended by the pairing's end).
    dropped: AtomicBool,
}

/// The pairing's state behind its one lock.
#[derive(Default)]
struct State {
    decision: Decision,
    /// The winner's outcome: its stdout line, or why the trust list did not take it.
    report: Option<Result<String, String>>,
    /// The accepting thread still waits for connections (the watcher wakes it).
    accepting: bool,
}

/// What every connection's thread shares.
struct Shared<'a> {
    config: Arc<ServerConfig>,
    token: PairToken,
    trust_path: &'a Path,
    name: &'a str,
    state: Mutex<State>,
    /// Signalled when the decision ends or the accepting thread stops.
    changed: Condvar,
    in_flight: Mutex<InFlight<Arc<Live>>>,
}

/// A lock whose holder never leaves its data half-changed: a panic elsewhere does not
/// poison the pairing.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Runs the pairing; `Err` carries the exit status and the message.
pub(crate) fn run(r: &Request, out: &mut dyn Write) -> Result<(), (u8, String)> {
    let fail = |e: String| (1u8, e);
    let key = keys::load_key(r.key_path).map_err(|e| {
        fail(format!(
            "{e}; make the reader's key first: sudo vpcd-config tls init"
        ))
    })?;
    let me = Identity::from_key_file(&key)
        .map_err(|e| fail(format!("{} is unusable: {e}", r.key_path.display())))?;
    // A trust list this command could not extend is found now, not after a pairing.
    keys::load_trust(r.trust_path).map_err(fail)?;
    check_writable(r.trust_path).map_err(fail)?;
    let config = link::pairing_server_config(&me).map_err(fail)?;
    let mut token = [0u8; TOKEN_LEN];
    link::random(&mut token).map_err(fail)?;
    let token = PairToken(token);
    let listener = listen(&r.host, r.pair_port).map_err(|e| {
        fail(format!(
            "cannot listen on pairing port {}: {e}",
            r.pair_port
        ))
    })?;
    let local = listener
        .local_addr()
        .map_err(|e| fail(format!("cannot listen: {e}")))?;
    let uri = VpcdsUri {
        host: r.host.clone(),
        port: r.port,
        fingerprint: me.fingerprint,
        pair: Some(Pairing {
            port: local.port(),
            token: token.clone(),
        }),
    };
    let _ = writeln!(
        out,
        "reader key {}\npairing open on port {} for {} s: one vicc, once (Ctrl-C cancels)\n{uri}",
        me.fingerprint,
        local.port(),
        r.within.as_secs()
    );
    if r.qr {
        if let Ok(code) = crate::qr::render_qr(&uri.to_string(), crate::tls::qr_style()) {
            let _ = writeln!(out, "{code}");
        }
    }
    let _ = writeln!(out, "vicc: vpcd-vicc --connect '{uri}'");
    let _ = out.flush();

    let shared = Shared {
        config,
        token,
        trust_path: r.trust_path,
        name: &r.name,
        state: Mutex::new(State {
            accepting: true,
            ..State::default()
        }),
        changed: Condvar::new(),
        in_flight: Mutex::new(InFlight::new(MAX_IN_FLIGHT)),
    };
    let deadline = Instant::now() + r.within;
    // Every thread is scoped: none outlives the pairing.
    let broken = std::thread::scope(|s| {
        let shared = &shared;
        s.spawn(move || watch(shared, deadline, local));
        let broken = serve_port(s, shared, listener, deadline);
        // The port is closed now: a late vicc is refused at once. The connections
        // still in flight are ended: a blocked read returns, a peer with a line
        // pending gets its refusal (`exchange`).
        for live in lock(&shared.in_flight).drain() {
            let _ = live.sock.shutdown(Shutdown::Read);
        }
        broken
    });
    let state = shared
        .state
        .into_inner()
        .unwrap_or_else(PoisonError::into_inner);
    match (state.decision.end(), state.report) {
        (Some(End::Paired), Some(Ok(line))) => {
            let _ = writeln!(out, "{line}");
            Ok(())
        }
        (Some(End::Paired), Some(Err(e))) => Err(fail(e)),
        (Some(End::TooManyWrong), _) => Err(fail(format!(
            "{MAX_WRONG} wrong tokens: pairing closed, nobody trusted; start again for a new \
             token"
        ))),
        (Some(End::Expired), _) => Err(fail(format!(
            "no vicc paired within {} s: nobody trusted; start again for a new token",
            r.within.as_secs()
        ))),
        _ => Err(fail(format!(
            "cannot accept connections: {}",
            broken.unwrap_or_else(|| "the pairing ended".into())
        ))),
    }
}

/// Accepts connections until the pairing ends, each served on a thread of its own;
/// the accept error that ended it, if one did. The listener is closed on return.
fn serve_port<'scope>(
    s: &'scope std::thread::Scope<'scope, '_>,
    shared: &'scope Shared<'scope>,
    listener: TcpListener,
    deadline: Instant,
) -> Option<String> {
    let mut broken = None;
    loop {
        let accepted = listener.accept();
        if lock(&shared.state).decision.end().is_some() {
            break;
        }
        let (tcp, peer) = match accepted {
            Ok(accepted) => accepted,
            // A peer gone before it was accepted is its own loss, not the pairing's.
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted
                ) =>
            {
                continue
            }
            Err(e) => {
                lock(&shared.state).decision.stop(End::Broken);
                broken = Some(e.to_string());
                break;
            }
        };
        // One bound for the whole exchange, never past the pairing's end: a peer that
        // trickles bytes holds its place no longer than a silent one.
        let until = deadline.min(Instant::now() + EXCHANGE_TIMEOUT);
        let sock = match tcp.try_clone() {
            Ok(sock) => sock,
            Err(e) => {
                eprintln!("vpcd-config tls pair: {peer}: no pairing: {e}");
                continue;
            }
        };
        let live = Arc::new(Live {
            sock,
            dropped: AtomicBool::new(false),
        });
        let (id, oldest) = lock(&shared.in_flight).admit(Arc::clone(&live));
        if let Some(old) = oldest {
            old.dropped.store(true, Ordering::SeqCst);
            let _ = old.sock.shutdown(Shutdown::Both);
        }
        let spawned = std::thread::Builder::new()
            .name("vpcd-pair-peer".into())
            .spawn_scoped(s, move || {
                exchange(shared, tcp, peer, (id, &live), until);
                lock(&shared.in_flight).finish(id);
            });
        if let Err(e) = spawned {
            eprintln!("vpcd-config tls pair: {peer}: no pairing: no thread for it: {e}");
            lock(&shared.in_flight).finish(id);
        }
    }
    lock(&shared.state).accepting = false;
    shared.changed.notify_all();
    broken
}

/// Ends the pairing at `deadline`, and wakes the blocking accept once it has ended
/// (for whatever reason) with a connection of our own, which the accepting thread
/// then sees is too late; again until it has stopped accepting.
fn watch(shared: &Shared, deadline: Instant, local: SocketAddr) {
    let target = match local.ip() {
        IpAddr::V6(ip) if ip.is_unspecified() => (Ipv6Addr::LOCALHOST, local.port()).into(),
        IpAddr::V4(ip) if ip.is_unspecified() => (Ipv4Addr::LOCALHOST, local.port()).into(),
        _ => local,
    };
    let mut state = lock(&shared.state);
    while state.accepting {
        if state.decision.end().is_some() {
            drop(state);
            let _ = TcpStream::connect_timeout(&target, Duration::from_secs(1));
            state = lock(&shared.state);
            if state.accepting {
                state = shared
                    .changed
                    .wait_timeout(state, Duration::from_millis(200))
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
            }
            continue;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            state.decision.stop(End::Expired);
            continue;
        }
        state = shared
            .changed
            .wait_timeout(state, left)
            .unwrap_or_else(PoisonError::into_inner)
            .0;
    }
}

/// One connection's exchange, on its own thread: handshake, line, verdict, answer.
fn exchange(
    shared: &Shared,
    tcp: TcpStream,
    peer: SocketAddr,
    (id, live): (u64, &Live),
    until: Instant,
) {
    // Why it ended without a line: its own reason unless it was cut short, dropped
    // for a newer connection or ended with the pairing (then that end, which a peer
    // through its handshake is told).
    let no_pairing = |why: String, timed_out: &str| {
        let (why, ended) = if live.dropped.load(Ordering::SeqCst) {
            let why = format!(
                "dropped for a newer connection ({MAX_IN_FLIGHT} at once at most, the oldest \
                 goes)"
            );
            (why, None)
        } else {
            match lock(&shared.state).decision.end() {
                // Cut at the pairing's time limit, which is its own too.
                Some(_) if Instant::now() >= until => (timed_out.to_owned(), None),
                Some(end) => (end.why().to_owned(), Some(end)),
                None => (why, None),
            }
        };
        eprintln!("vpcd-config tls pair: {peer}: no pairing: {why}");
        ended
    };
    let mut stream = match handshake(tcp, &shared.config, until) {
        Ok(stream) => stream,
        Err(why) => {
            no_pairing(why, "the TLS handshake timed out");
            return;
        }
    };
    let (fp, right) = match attempt(&mut stream, &shared.token, until) {
        Attempt::Paired(fp) => (fp, true),
        Attempt::Wrong(fp) => (fp, false),
        Attempt::Failed(why) => {
            if let Some(end) = no_pairing(why, "no token in time") {
                answer(&mut stream, PairAnswer::Refused(end.why().into()));
            }
            return;
        }
    };
    // Its line is in: no longer one that can hold a place, so neither a newer
    // connection nor the end cuts its answer (a winner's OK above all). Few get this
    // far: MAX_WRONG + 1 lines end the pairing, and no connection is accepted after.
    lock(&shared.in_flight).finish(id);
    let (verdict, saved) = {
        let mut state = lock(&shared.state);
        let verdict = state.decision.line(right);
        if verdict == Verdict::Trust {
            // Under the lock, by the one winner: the trust list is written once.
            let name = if shared.name.is_empty() {
                default_name(&peer)
            } else {
                shared.name.to_owned()
            };
            state.report = Some(trust(shared.trust_path, fp, &name).map(|count| {
                format!(
                    "paired {peer}: trusting {fp} \"{name}\" ({count} key(s) in {}); the \
                     driver reads it at the next connection",
                    shared.trust_path.display()
                )
            }));
        }
        (verdict, matches!(state.report, Some(Ok(_))))
    };
    shared.changed.notify_all();
    let reply = match verdict {
        // Trusted before the answer: a vicc told OK connects at once, and the
        // driver's next connection must find its key.
        Verdict::Trust if saved => PairAnswer::Ok,
        Verdict::Trust => PairAnswer::Refused("the reader could not save its trust list".into()),
        Verdict::Wrong { n, last } => {
            let why = if last {
                format!("wrong token ({n} of {MAX_WRONG}): pairing closed")
            } else {
                format!("wrong token ({n} of {MAX_WRONG})")
            };
            eprintln!("vpcd-config tls pair: refused {peer} (key {fp}): {why}");
            PairAnswer::Refused(why)
        }
        Verdict::Over(end) => {
            eprintln!("vpcd-config tls pair: {peer}: no pairing: {}", end.why());
            PairAnswer::Refused(end.why().into())
        }
    };
    answer(&mut stream, reply);
}

/// Whether the trust list's directory takes a new file (the list is replaced by a
/// rename), tried with a file of our own: the trust list itself is left alone, so the
/// driver sees no change.
fn check_writable(trust_path: &Path) -> Result<(), String> {
    let dir = trust_path.parent().unwrap_or(Path::new("."));
    let probe = dir.join(format!(".trusted.pair{}", std::process::id()));
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)
        .map_err(|e| {
            format!(
                "cannot write in {} ({e}): the trust list could not take the paired key \
                 (run it as the user that may change it, e.g. with sudo)",
                dir.display()
            )
        })?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

/// On the URI's host if it is an address of this machine, else on every address (as a
/// reader without `listen=`): `::`, which on Linux takes IPv4 too, or `0.0.0.0`.
fn listen(host: &str, port: u16) -> io::Result<TcpListener> {
    if let Ok(ip) = host.trim_matches(['[', ']']).parse::<IpAddr>() {
        if let Ok(listener) = TcpListener::bind((ip, port)) {
            return Ok(listener);
        }
    }
    TcpListener::bind((Ipv6Addr::UNSPECIFIED, port))
        .or_else(|_| TcpListener::bind((Ipv4Addr::UNSPECIFIED, port)))
}

type Tls = StreamOwned<ServerConnection, TcpStream>;

/// Sets the socket's timeouts to what is left until `until`; an error once nothing is.
fn time_left(sock: &TcpStream, until: Instant) -> io::Result<()> {
    let left = until.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(io::ErrorKind::TimedOut.into());
    }
    sock.set_read_timeout(Some(left))?;
    sock.set_write_timeout(Some(left))
}

fn handshake(tcp: TcpStream, config: &Arc<ServerConfig>, until: Instant) -> Result<Tls, String> {
    let conn = ServerConnection::new(Arc::clone(config)).map_err(|e| e.to_string())?;
    let mut s = StreamOwned::new(conn, tcp);
    while s.conn.is_handshaking() {
        let step = time_left(&s.sock, until).and_then(|()| s.conn.complete_io(&mut s.sock));
        if let Err(e) = step {
            return Err(
                match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
                    Some(tls) => format!("TLS: {}", link::describe(tls)),
                    None if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                    {
                        "the TLS handshake timed out".into()
                    }
                    None => format!("the TLS handshake failed: {e}"),
                },
            );
        }
    }
    Ok(s)
}

/// A TLS stream read until a deadline, whatever the pace of its bytes.
struct Until<'a> {
    stream: &'a mut Tls,
    until: Instant,
}

impl Read for Until<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        time_left(&self.stream.sock, self.until)?;
        self.stream.read(buf)
    }
}

/// Reads the peer's one line (at most [`MAX_PAIR_LINE`] bytes) and checks its token.
fn attempt(stream: &mut Tls, token: &PairToken, until: Instant) -> Attempt {
    let Some(fp) = stream
        .conn
        .peer_certificates()
        .and_then(|c| c.first())
        .and_then(|c| cert_fingerprint(c.as_ref()).ok())
    else {
        return Attempt::Failed("no client key".into());
    };
    let mut line = Vec::with_capacity(MAX_PAIR_LINE);
    let read = BufReader::new(Until { stream, until }.take(MAX_PAIR_LINE as u64))
        .read_until(b'\n', &mut line);
    if let Err(e) = read {
        return Attempt::Failed(match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => "no token in time".into(),
            _ => format!("no token: {e}"),
        });
    }
    if line.is_empty() {
        return Attempt::Failed("it hung up without a token".into());
    }
    let text = String::from_utf8_lossy(&line);
    match parse_pair_request(text.trim_end_matches(['\n', '\r'])) {
        Ok(sent) if sent.matches(token) => Attempt::Paired(fp),
        _ => Attempt::Wrong(fp),
    }
}

fn answer(stream: &mut Tls, answer: PairAnswer) {
    // A peer that does not read gets its answer dropped, not the pairing stalled.
    let _ = stream.sock.set_write_timeout(Some(Duration::from_secs(2)));
    let _ = stream.write_all(answer.to_line().as_bytes());
    stream.conn.send_close_notify();
    let _ = stream.flush();
}

/// Adds `fp` to the trust list (a key already there keeps its place and gets the new
/// name); the number of keys trusted now.
fn trust(path: &Path, fingerprint: Fingerprint, name: &str) -> Result<usize, String> {
    let mut list = keys::load_trust(path)?;
    let entry = TrustEntry {
        fingerprint,
        name: name.to_owned(),
    };
    match list
        .entries
        .iter_mut()
        .find(|e| e.fingerprint == fingerprint)
    {
        Some(e) => *e = entry,
        None => list.entries.push(entry),
    }
    keys::write_file(path, &list.to_text(), 0o644, None)
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    Ok(list.entries.len())
}

/// `paired 2026-12-07 from 192.168.1.5`, cut to a trust list name's 64 characters.
fn default_name(peer: &SocketAddr) -> String {
    let days = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() / 86_400);
    let (y, m, d) = civil_date(days as i64);
    let mut name = format!("paired {y:04}-{m:02}-{d:02} from {}", peer.ip());
    while check_name(&name).is_err() {
        name.pop();
    }
    name
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (H. Hinnant's
/// days-to-civil algorithm).
fn civil_date(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_right_token_wins_and_nothing_after_it_counts() {
        let mut d = Decision::default();
        assert_eq!(d.line(false), Verdict::Wrong { n: 1, last: false });
        assert_eq!(d.end(), None);
        assert_eq!(d.line(true), Verdict::Trust);
        assert_eq!(d.end(), Some(End::Paired));
        // The same token at the same moment on another connection: refused.
        assert_eq!(d.line(true), Verdict::Over(End::Paired));
        assert_eq!(d.line(false), Verdict::Over(End::Paired));
        assert_eq!(d.wrong, 1, "a line after the end is not counted");
        d.stop(End::Expired);
        assert_eq!(d.end(), Some(End::Paired), "the first end stays");
    }

    #[test]
    fn wrong_tokens_are_counted_across_connections_up_to_the_end() {
        let mut d = Decision::default();
        assert_eq!(d.line(false), Verdict::Wrong { n: 1, last: false });
        assert_eq!(d.line(false), Verdict::Wrong { n: 2, last: false });
        assert_eq!(
            d.line(false),
            Verdict::Wrong {
                n: MAX_WRONG,
                last: true
            }
        );
        assert_eq!(d.end(), Some(End::TooManyWrong));
        assert_eq!(d.line(true), Verdict::Over(End::TooManyWrong));
        assert_eq!(d.line(false), Verdict::Over(End::TooManyWrong));
        assert_eq!(d.wrong, MAX_WRONG);
    }

    #[test]
    fn expiry_ends_it_with_nobody_trusted() {
        let mut d = Decision::default();
        d.stop(End::Expired);
        assert_eq!(d.line(true), Verdict::Over(End::Expired));
        d.stop(End::Broken);
        assert_eq!(d.end(), Some(End::Expired));
        let mut d = Decision::default();
        d.stop(End::Broken);
        assert_eq!(d.line(true), Verdict::Over(End::Broken));
        for end in [End::Paired, End::TooManyWrong, End::Expired, End::Broken] {
            assert!(end.why().starts_with("the pairing is over"), "{end:?}");
        }
        assert_ne!(End::Paired.why(), End::Expired.why());
    }

    /// However many threads race with right and wrong lines, exactly one line ends
    /// the pairing (a right one, or the last wrong one), wrong lines are numbered
    /// once each, and every line after the end is refused.
    #[test]
    fn racing_threads_get_one_decision() {
        for _ in 0..50 {
            let decision = Mutex::new(Decision::default());
            let verdicts: Vec<Verdict> = std::thread::scope(|s| {
                let handles: Vec<_> = (0..8)
                    .map(|i| {
                        let decision = &decision;
                        s.spawn(move || lock(decision).line(i % 3 == 0))
                    })
                    .collect();
                handles.into_iter().map(|h| h.join().unwrap()).collect()
            });
            let ends = verdicts
                .iter()
                .filter(|v| matches!(v, Verdict::Trust | Verdict::Wrong { last: true, .. }))
                .count();
            assert_eq!(ends, 1, "{verdicts:?}");
            let mut wrong: Vec<u32> = verdicts
                .iter()
                .filter_map(|v| match v {
                    Verdict::Wrong { n, .. } => Some(*n),
                    _ => None,
                })
                .collect();
            wrong.sort();
            assert_eq!(wrong, (1..=wrong.len() as u32).collect::<Vec<_>>());
            let over = verdicts
                .iter()
                .filter(|v| matches!(v, Verdict::Over(_)))
                .count();
            let trusted = verdicts.iter().filter(|v| **v == Verdict::Trust).count();
            assert_eq!(over + wrong.len() + trusted, 8, "{verdicts:?}");
        }
    }

    #[test]
    fn a_new_connection_beyond_the_cap_drops_the_oldest() {
        let mut f = InFlight::new(3);
        assert_eq!(f.admit('a'), (0, None));
        assert_eq!(f.admit('b'), (1, None));
        assert_eq!(f.admit('c'), (2, None));
        assert_eq!(f.admit('d'), (3, Some('a')));
        // A finished one frees its place: no drop.
        f.finish(2);
        assert_eq!(f.admit('e'), (4, None));
        assert_eq!(f.admit('f'), (5, Some('b')));
        // Finishing one already dropped changes nothing.
        f.finish(0);
        assert_eq!(f.drain(), vec!['d', 'e', 'f']);
        assert_eq!(f.drain(), Vec::<char>::new());
        assert_eq!(f.admit('g'), (6, None), "ids are never reused");
    }

    #[test]
    fn civil_dates() {
        assert_eq!(civil_date(0), (1970, 1, 1));
        assert_eq!(civil_date(59), (1970, 3, 1));
        assert_eq!(civil_date(11_016), (2000, 2, 29));
        assert_eq!(civil_date(20_794), (2026, 12, 7));
        assert_eq!(civil_date(-1), (1969, 12, 31));
    }

    #[test]
    fn default_names_fit_a_trust_list() {
        let v6: SocketAddr = "[fd00:1111:2222:3333:4444:5555:6666:7777]:1"
            .parse()
            .unwrap();
        for peer in [v6, "192.168.1.5:40000".parse().unwrap()] {
            let name = default_name(&peer);
            assert!(name.starts_with("paired 20"), "{name}");
            assert_eq!(check_name(&name), Ok(()), "{name}");
        }
    }
}
