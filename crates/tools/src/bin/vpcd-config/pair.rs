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

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::Arc;
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

/// How one connection ended.
enum Attempt {
    Paired(Fingerprint),
    /// A line that was not the token: counted.
    Wrong(Fingerprint),
    /// No line (no TLS, a timeout, a hang-up): not counted, a peer that says nothing
    /// guesses nothing.
    Failed(String),
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

    let deadline = Instant::now() + r.within;
    wake_at(deadline, local);
    let mut wrong = 0;
    loop {
        let accepted = listener.accept();
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(fail(format!(
                "no vicc paired within {} s: nobody trusted; start again for a new token",
                r.within.as_secs()
            )));
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
            Err(e) => return Err(fail(format!("cannot accept connections: {e}"))),
        };
        // One bound for the whole exchange, never past the pairing's end: a peer that
        // trickles bytes holds the port no longer than a silent one.
        let until = Instant::now() + left.min(EXCHANGE_TIMEOUT);
        let mut stream = match handshake(tcp, &config, until) {
            Ok(stream) => stream,
            Err(why) => {
                eprintln!("vpcd-config tls pair: {peer}: no pairing: {why}");
                continue;
            }
        };
        match attempt(&mut stream, &token, until) {
            Attempt::Paired(fp) => {
                let name = if r.name.is_empty() {
                    default_name(&peer)
                } else {
                    r.name.clone()
                };
                let count = match trust(r.trust_path, fp, &name) {
                    Ok(count) => count,
                    Err(e) => {
                        answer(
                            &mut stream,
                            PairAnswer::Refused("the reader could not save its trust list".into()),
                        );
                        return Err(fail(e));
                    }
                };
                // Trusted before the answer: a vicc told OK connects at once, and
                // the driver's next connection must find its key.
                answer(&mut stream, PairAnswer::Ok);
                let _ = writeln!(
                    out,
                    "paired {peer}: trusting {fp} \"{name}\" ({count} key(s) in {}); the driver \
                     reads it at the next connection",
                    r.trust_path.display()
                );
                return Ok(());
            }
            Attempt::Wrong(fp) => {
                wrong += 1;
                let last = wrong >= MAX_WRONG;
                let why = if last {
                    format!("wrong token ({wrong} of {MAX_WRONG}): pairing closed")
                } else {
                    format!("wrong token ({wrong} of {MAX_WRONG})")
                };
                eprintln!("vpcd-config tls pair: refused {peer} (key {fp}): {why}");
                answer(&mut stream, PairAnswer::Refused(why));
                if last {
                    return Err(fail(format!(
                        "{MAX_WRONG} wrong tokens: pairing closed, nobody trusted; start again \
                         for a new token"
                    )));
                }
            }
            Attempt::Failed(why) => eprintln!("vpcd-config tls pair: {peer}: no pairing: {why}"),
        }
    }
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

/// Ends the blocking accept at `deadline`: a connection of our own, which the loop
/// then sees is too late. Detached: the process ends with the pairing.
fn wake_at(deadline: Instant, local: SocketAddr) {
    let target = match local.ip() {
        IpAddr::V6(ip) if ip.is_unspecified() => (Ipv6Addr::LOCALHOST, local.port()).into(),
        IpAddr::V4(ip) if ip.is_unspecified() => (Ipv4Addr::LOCALHOST, local.port()).into(),
        _ => local,
    };
    std::thread::spawn(move || {
        std::thread::sleep(deadline.saturating_duration_since(Instant::now()));
        let _ = TcpStream::connect_timeout(&target, Duration::from_secs(1));
    });
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
