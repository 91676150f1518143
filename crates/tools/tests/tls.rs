//! `vpcd-config tls` and the TLS findings of `vpcd-config --check`: the files of the
//! secure link (docs/TLS.md), made, changed and diagnosed by the tools.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use vpcd_protocol::tls::{TrustList, VpcdsUri};
use vpcd_testing::*;

fn config(dir: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new(build_dir().join("vpcd-config"))
        .arg("tls")
        .args(args)
        .arg("--dir")
        .arg(dir)
        .output()
        .expect("run vpcd-config tls");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    println!("$ vpcd-config tls {}\n{text}", args.join(" "));
    (out.status.success(), text)
}

const FP: &str = "8e02000000000000000000000000000000000000000000000000000000000051";

#[test]
fn init_trust_untrust_and_show() {
    let tmp = temp_dir("tls-config");
    let dir = tmp.path().join("tls");
    let (ok, out) = config(&dir, &["init"]);
    assert!(ok, "{out}");
    let mode = std::fs::metadata(dir.join("key.pem")).unwrap().mode() & 0o777;
    assert!(mode == 0o600 || mode == 0o640, "key mode {mode:o}");
    let (ok, out) = config(&dir, &["init"]);
    assert!(
        !ok && out.contains("--force"),
        "a second init keeps the key: {out}"
    );

    let (ok, out) = config(&dir, &["trust", FP, "--name", "alice phone"]);
    assert!(ok, "{out}");
    let (ok, out) = config(&dir, &["trust", &FP.to_uppercase()]);
    assert!(ok && out.contains("1 key(s)"), "the same key once: {out}");
    let list = TrustList::parse(&std::fs::read_to_string(dir.join("trusted")).unwrap()).unwrap();
    assert_eq!(list.entries.len(), 1);
    let (ok, out) = config(&dir, &["trust", "12345"]);
    assert!(!ok && out.contains("64 hex digits"), "{out}");

    let (ok, out) = config(
        &dir,
        &["show", "-H", "pc.example", "-P", "35964", "--no-qr"],
    );
    assert!(ok, "{out}");
    let uri = out
        .lines()
        .find(|l| l.starts_with("vpcds://"))
        .unwrap_or_else(|| panic!("no URI: {out}"));
    let uri = VpcdsUri::parse(uri).unwrap();
    assert_eq!((uri.host.as_str(), uri.port), ("pc.example", 35964));
    assert!(
        out.contains(&format!("reader key {}", uri.fingerprint)),
        "{out}"
    );
    assert!(out.contains(FP), "the trusted keys are listed: {out}");

    let (ok, out) = config(&dir, &["untrust", FP]);
    assert!(ok, "{out}");
    let (ok, out) = config(&dir, &["untrust", FP]);
    assert!(!ok && out.contains("is not in"), "{out}");

    // --force makes a new key: a new fingerprint.
    let (ok, _) = config(&dir, &["init", "--force"]);
    assert!(ok);
    let (_, again) = config(&dir, &["show", "--no-qr"]);
    assert!(!again.contains(&uri.fingerprint.to_string()), "{again}");
}

#[test]
fn check_reports_missing_and_exposed_tls_files() {
    let tmp = temp_dir("tls-check");
    let dir = tmp.path().join("tls");
    let conf = tmp.path().join("reader.conf");
    std::fs::write(
        &conf,
        format!(
            "FRIENDLYNAME \"Secure\"\nDEVICENAME /dev/null:35963/tls=yes\nLIBPATH {}\n",
            driver_path().display()
        ),
    )
    .unwrap();
    let check = || {
        let out = Command::new(build_dir().join("vpcd-config"))
            .arg("--check")
            .arg("--config")
            .arg(&conf)
            .env("VPCD_TLS_DIR", &dir)
            .env("PCSCLITE_CSOCK_NAME", tmp.path().join("no-pcscd"))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        println!("{text}");
        text
    };
    let out = check();
    assert!(
        out.lines()
            .any(|l| l.starts_with("error:") && l.contains("key.pem is missing")),
        "{out}"
    );
    let (ok, _) = config(&dir, &["init"]);
    assert!(ok);
    let out = check();
    assert!(
        out.lines().any(|l| l.starts_with("ok: the reader key")),
        "{out}"
    );
    assert!(
        out.lines()
            .any(|l| l.starts_with("warning:") && l.contains("trusts no vicc key")),
        "{out}"
    );
    std::fs::set_permissions(dir.join("key.pem"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = check();
    assert!(
        out.lines()
            .any(|l| l.starts_with("error:") && l.contains("accessible to every user")),
        "{out}"
    );
    std::fs::write(dir.join("trusted"), "garbage\n").unwrap();
    let out = check();
    assert!(
        out.lines()
            .any(|l| l.starts_with("error:") && l.contains("trusted is malformed")),
        "{out}"
    );
}

// ---------------------------------------------------------------------------------
// vpcd-config tls pair: one-step pairing with a one-time token

/// `vpcd-config tls pair` running in `dir` (a reader key made first), and its URI.
fn start_pair(dir: &Path, extra: &[&str]) -> (Process, VpcdsUri) {
    let (ok, out) = config(dir, &["init"]);
    assert!(ok, "{out}");
    // The reader's port: nothing listens there, a paired vicc's connection fails.
    let reader_port = free_ports(1).to_string();
    let mut cmd = Command::new(build_dir().join("vpcd-config"));
    cmd.args([
        "tls",
        "pair",
        "-H",
        "127.0.0.1",
        "-P",
        &reader_port,
        "--no-qr",
    ])
    .args(extra)
    .arg("--dir")
    .arg(dir);
    let pair = Process::spawn(&mut cmd, dir.join("pair.log"));
    let uri = wait_line(&pair, "vpcds://");
    let uri = VpcdsUri::parse(&uri).unwrap_or_else(|e| panic!("{e}"));
    (pair, uri)
}

/// The first line of `process`'s output that starts with `start`, waited for.
fn wait_line(process: &Process, start: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = process.output();
        if let Some(line) = out.lines().find(|l| l.starts_with(start)) {
            return line.to_owned();
        }
        assert!(Instant::now() < deadline, "no {start:?} line in:\n{out}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// vpcd-vicc --connect URI with its key at `key`: (success, output).
fn vicc(uri: &str, key: &Path) -> (bool, String) {
    let (ok, out) = run(Command::new(build_dir().join("vpcd-vicc"))
        .args(["--connect", uri, "--tls-key"])
        .arg(key));
    println!("$ vpcd-vicc --connect {uri}\n{out}");
    (ok, out)
}

fn trusted(dir: &Path) -> TrustList {
    TrustList::parse(&std::fs::read_to_string(dir.join("trusted")).unwrap()).unwrap()
}

/// The URI with another token: the same length, one digit changed.
fn wrong_token(uri: &VpcdsUri, i: usize) -> String {
    let mut wrong = uri.clone();
    let pair = wrong.pair.as_mut().unwrap();
    pair.token.0[i] ^= 0x5A;
    wrong.to_string()
}

#[test]
fn pairing_trusts_one_vicc_once() {
    let tmp = temp_dir("tls-pair");
    let dir = tmp.path().join("tls");
    let (mut pair, uri) = start_pair(&dir, &["--name", "test phone"]);
    assert!(uri.pair.is_some(), "{uri}");
    assert_eq!(trusted(&dir).entries.len(), 0);

    let (_, out) = vicc(&uri.to_string(), &tmp.path().join("vicc1.pem"));
    assert!(
        out.contains(&format!(
            "paired with 127.0.0.1:{}: the reader trusts this card's key now",
            uri.pair.as_ref().unwrap().port
        )),
        "{out}"
    );
    let status = pair.wait_exit(Duration::from_secs(10));
    let log = pair.output();
    assert!(status.success(), "{log}");
    let list = trusted(&dir);
    assert_eq!(list.entries.len(), 1, "{list:?}");
    assert_eq!(list.entries[0].name, "test phone");
    let fp = list.entries[0].fingerprint;
    assert!(out.contains(&format!("this card's key is {fp}")), "{out}");
    assert!(
        log.contains(&format!("trusting {fp} \"test phone\"")),
        "{log}"
    );

    // The token again, from another vicc: the pairing is over, nobody else trusted.
    let (ok, out) = vicc(&uri.to_string(), &tmp.path().join("vicc2.pem"));
    assert!(!ok);
    assert!(
        out.contains("the pairing is over (its token was used, or it expired)"),
        "{out}"
    );
    assert!(!out.contains("paired with"), "{out}");
    assert_eq!(trusted(&dir), list);
}

#[test]
fn three_wrong_tokens_end_the_pairing_with_nobody_trusted() {
    let tmp = temp_dir("tls-pair-wrong");
    let dir = tmp.path().join("tls");
    let (mut pair, uri) = start_pair(&dir, &[]);
    let key = tmp.path().join("vicc.pem");
    for n in 1..=3 {
        let (ok, out) = vicc(&wrong_token(&uri, n), &key);
        assert!(!ok);
        assert!(out.contains("pairing refused by 127.0.0.1:"), "{out}");
        assert!(out.contains(&format!("wrong token ({n} of 3)")), "{out}");
    }
    let status = pair.wait_exit(Duration::from_secs(10));
    let log = pair.output();
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(
        log.contains("3 wrong tokens: pairing closed, nobody trusted"),
        "{log}"
    );
    assert_eq!(
        log.matches("vpcd-config tls pair: refused 127.0.0.1:")
            .count(),
        3,
        "{log}"
    );
    assert_eq!(trusted(&dir).entries.len(), 0);
    // The right token now finds no pairing.
    let (ok, out) = vicc(&uri.to_string(), &key);
    assert!(!ok && out.contains("the pairing is over"), "{out}");
    assert_eq!(trusted(&dir).entries.len(), 0);
}

#[test]
fn pairing_ends_after_within_seconds() {
    let tmp = temp_dir("tls-pair-late");
    let dir = tmp.path().join("tls");
    let start = Instant::now();
    let (mut pair, uri) = start_pair(&dir, &["--within", "1"]);
    // A wrong token first: it does not extend the time.
    let key = tmp.path().join("vicc.pem");
    let (ok, _) = vicc(&wrong_token(&uri, 0), &key);
    assert!(!ok);
    let status = pair.wait_exit(Duration::from_secs(10));
    let took = start.elapsed();
    let log = pair.output();
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(
        log.contains("no vicc paired within 1 s: nobody trusted"),
        "{log}"
    );
    assert!(took >= Duration::from_secs(1), "{took:?}");
    assert!(took < Duration::from_secs(5), "{took:?}");
    let (ok, out) = vicc(&uri.to_string(), &key);
    assert!(!ok && out.contains("the pairing is over"), "{out}");
    assert_eq!(trusted(&dir).entries.len(), 0);

    // Without --no-qr the URI comes with its QR code (as show draws it), and each run
    // makes a new token.
    let (ok, out) = config(&dir, &["pair", "-H", "127.0.0.1", "--within", "1"]);
    assert!(!ok && out.contains("no vicc paired within 1 s"), "{out}");
    assert!(out.contains('\u{2588}'), "a QR code: {out}");
    let again = out.lines().find(|l| l.starts_with("vpcds://")).unwrap();
    let again = VpcdsUri::parse(again).unwrap();
    assert_ne!(again.pair.unwrap().token, uri.pair.unwrap().token);
}

#[test]
fn pairing_ignores_peers_that_say_nothing_and_refuses_bad_options() {
    use std::io::{Read, Write};
    let tmp = temp_dir("tls-pair-quiet");
    let dir = tmp.path().join("tls");
    let (mut pair, uri) = start_pair(&dir, &["--within", "30"]);
    let port = uri.pair.as_ref().unwrap().port;
    // Not TLS: refused, not counted as a wrong token.
    for _ in 0..4 {
        let mut plain = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        plain.write_all(b"vpcd-pair 1 0000\n").unwrap();
        let mut rest = vec![];
        let _ = plain.read_to_end(&mut rest);
    }
    // The pairing still works.
    let (_, out) = vicc(&uri.to_string(), &tmp.path().join("vicc.pem"));
    assert!(
        out.contains("the reader trusts this card's key now"),
        "{out}"
    );
    let status = pair.wait_exit(Duration::from_secs(10));
    let log = pair.output();
    assert!(status.success(), "{log}");
    assert_eq!(
        log.matches("no pairing: TLS: it does not speak TLS")
            .count(),
        4,
        "{log}"
    );
    assert!(log.contains("\"paired 20"), "the default name: {log}");

    for (args, why) in [
        (&["pair", "--within", "0"][..], "--within"),
        (&["pair", "--pair-port", "x"], "--pair-port"),
    ] {
        let (ok, out) = config(&dir, args);
        assert!(!ok && out.contains(why), "{args:?}: {out}");
    }
    let (ok, out) = config(&tmp.path().join("none"), &["pair", "--within", "1"]);
    assert!(!ok && out.contains("vpcd-config tls init"), "{out}");
}

/// A peer that trickles its line a byte at a time holds the pairing no longer than
/// --within: the exchange has one deadline, not one per read.
#[test]
fn a_trickling_peer_does_not_hold_the_pairing_open() {
    use std::io::Write;

    let tmp = temp_dir("tls-pair-trickle");
    let dir = tmp.path().join("tls");
    let start = Instant::now();
    let (mut pair, uri) = start_pair(&dir, &["--within", "2"]);
    let (_, mut tls) = pairing_peer(&uri).unwrap();
    // Never a newline, and fewer bytes than the line's limit: only time ends it.
    let mut sent = 0;
    let status = loop {
        if let Some(status) = pair.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "still open after {sent} bytes:\n{}",
            pair.output()
        );
        if sent < 200 && tls.write_all(b"v").and_then(|()| tls.flush()).is_ok() {
            sent += 1;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let took = start.elapsed();
    let log = pair.output();
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(
        log.contains("no vicc paired within 2 s: nobody trusted"),
        "{log}"
    );
    assert!(log.contains("no pairing: no token in time"), "{log}");
    assert!(took < Duration::from_secs(4), "{took:?}");
    assert!(sent > 10, "the peer trickled: {sent} bytes");
    assert_eq!(trusted(&dir).entries.len(), 0);
}

/// A TLS client of the pairing port with a key of its own, its handshake done (or
/// why not, within 5 s): what a vicc is before it sends its line.
type PairPeer = rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream>;

fn pairing_peer(uri: &VpcdsUri) -> Result<(vpcd_protocol::tls::Fingerprint, PairPeer), String> {
    use vpcd_protocol::link::{self, Identity};
    use vpcd_protocol::tls::TrustEntry;
    let me = Identity::from_key_file(&vpcd_tools::keys::generate().unwrap()).unwrap();
    let reader = TrustList {
        entries: vec![TrustEntry {
            fingerprint: uri.fingerprint,
            name: String::new(),
        }],
    };
    let conn = rustls::ClientConnection::new(
        link::client_config(&me, reader).unwrap(),
        link::server_name(),
    )
    .unwrap();
    let port = uri.pair.as_ref().unwrap().port;
    let tcp = std::net::TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    tcp.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    while tls.conn.is_handshaking() {
        tls.conn
            .complete_io(&mut tls.sock)
            .map_err(|e| format!("handshake: {e}"))?;
    }
    Ok((me.fingerprint, tls))
}

/// The pairing server's one-line answer on `peer`, or why there is none.
fn pair_answer(peer: &mut PairPeer) -> Result<vpcd_protocol::tls::PairAnswer, String> {
    use std::io::{BufRead, BufReader, Read};
    let mut line = Vec::new();
    let read = BufReader::new(Read::by_ref(peer).take(256)).read_until(b'\n', &mut line);
    if line.is_empty() {
        return Err(format!("no answer: {read:?}"));
    }
    let text = String::from_utf8_lossy(&line);
    vpcd_protocol::tls::PairAnswer::parse(text.trim_end())
}

/// Whether a peer's connection was closed by the other side (not merely quiet
/// until its read timed out).
fn closed(sock: &mut std::net::TcpStream, within: Duration) -> bool {
    use std::io::{ErrorKind, Read};
    sock.set_read_timeout(Some(within)).unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match sock.read(&mut buf) {
            Ok(0) => return true,
            // A TLS peer's handshake or a refusal: read on to the close.
            Ok(_) => continue,
            Err(e) => return !matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
        }
    }
}

/// Peers that hold pairing connections open (silent TCP, TLS then silent, TLS then a
/// byte now and then) do not keep the vicc that holds the token out: connections are
/// served at once, up to 16, a new one beyond that dropping the oldest. The vicc
/// pairs at once, not after each peer's 10 s; then the others are refused or closed
/// and the command exits.
#[test]
fn peers_holding_the_pairing_port_do_not_keep_the_vicc_out() {
    use std::io::Write;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::mpsc;
    use vpcd_protocol::tls::PairAnswer;

    const SILENT: usize = 20;
    const IN_FLIGHT: usize = 16;
    let tmp = temp_dir("tls-pair-busy");
    let dir = tmp.path().join("tls");
    let (mut pair, uri) = start_pair(&dir, &["--within", "30", "--name", "phone"]);
    let port = uri.pair.as_ref().unwrap().port;
    let mut silent: Vec<_> = (0..SILENT)
        .map(|_| std::net::TcpStream::connect(("127.0.0.1", port)).unwrap())
        .collect();
    let stop = AtomicBool::new(false);
    let (ready, handshakes) = mpsc::channel();
    let (vicc_took, out, answers, shaken, dropped) = std::thread::scope(|s| {
        // 2 TLS peers that say nothing after the handshake, 3 that trickle bytes.
        let peers: Vec<_> = (0..5)
            .map(|i| {
                let (uri, ready, stop) = (&uri, ready.clone(), &stop);
                s.spawn(move || {
                    let (_, mut tls) = match pairing_peer(uri) {
                        Ok(peer) => peer,
                        Err(e) => {
                            let _ = ready.send(Err(e.clone()));
                            return Err(e);
                        }
                    };
                    let _ = ready.send(Ok(()));
                    let mut sent = 0;
                    while i >= 2 && !stop.load(Ordering::SeqCst) && sent < 100 {
                        if tls.write_all(b"v").and_then(|()| tls.flush()).is_err() {
                            break;
                        }
                        sent += 1;
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    if i >= 2 {
                        return Ok(None);
                    }
                    pair_answer(&mut tls).map(Some)
                })
            })
            .collect();
        drop(ready);
        // All of them in flight before the vicc comes (checked after it: the vicc's
        // promptness is the point).
        let until = Instant::now() + Duration::from_secs(3);
        let mut shaken = Vec::new();
        while shaken.len() < 5 {
            match handshakes.recv_timeout(until.saturating_duration_since(Instant::now())) {
                Ok(handshake) => shaken.push(handshake),
                Err(_) => break,
            }
        }
        // The oldest silent peers beyond the 16 places were dropped as newer
        // connections came.
        let dropped = silent[..SILENT - IN_FLIGHT]
            .iter_mut()
            .all(|sock| closed(sock, Duration::from_secs(2)));

        let start = Instant::now();
        let (_, out) = vicc(&uri.to_string(), &tmp.path().join("vicc.pem"));
        let took = start.elapsed();
        println!("the vicc paired in {took:?} with 25 peers holding the port");
        stop.store(true, Ordering::SeqCst);
        let answers: Vec<_> = peers.into_iter().map(|p| p.join().unwrap()).collect();
        (took, out, answers, shaken, dropped)
    });
    assert!(
        out.contains("the reader trusts this card's key now") && vicc_took < Duration::from_secs(3),
        "the vicc did not pair within 3 s of 25 peers holding the port (it took \
         {vicc_took:?}):\n{out}\n{}",
        pair.output()
    );
    assert_eq!(shaken, vec![Ok(()); 5], "the TLS peers' handshakes");
    assert!(dropped, "the oldest silent peers were not dropped");
    let status = pair.wait_exit(Duration::from_secs(3));
    let log = pair.output();
    assert!(status.success(), "{log}");
    assert_eq!(trusted(&dir).entries.len(), 1);
    assert_eq!(log.matches("trusting ").count(), 1, "{log}");

    // The TLS peers still waiting for an answer get a refusal, the others are closed.
    let over = "the pairing is over: its token was used";
    for answer in &answers[..2] {
        assert_eq!(answer, &Ok(Some(PairAnswer::Refused(over.into()))), "{log}");
    }
    for answer in &answers[2..] {
        assert_eq!(answer, &Ok(None));
    }
    for (i, sock) in silent.iter_mut().enumerate() {
        assert!(
            closed(sock, Duration::from_secs(2)),
            "silent peer {i} is still connected"
        );
    }
    // 4 silent peers dropped by newer silent ones, 5 by the TLS peers, 1 by the vicc:
    // always the oldest. The 15 left were ended with the pairing.
    assert_eq!(
        log.matches(": no pairing: dropped for a newer connection (16 at once at most")
            .count(),
        SILENT - IN_FLIGHT + 5 + 1,
        "{log}"
    );
    assert_eq!(
        log.matches(&format!(": no pairing: {over}")).count(),
        IN_FLIGHT - 1,
        "{log}"
    );
}

/// Two vicc presenting the right token at the same moment: exactly one key is
/// trusted, the other is refused (a token works once).
#[test]
fn two_right_tokens_at_once_trust_exactly_one_key() {
    use std::io::Write;
    use std::sync::{Condvar, Mutex};
    use vpcd_protocol::tls::{pair_request, PairAnswer};

    for round in 0..3 {
        let tmp = temp_dir("tls-pair-race");
        let dir = tmp.path().join("tls");
        let (mut pair, uri) = start_pair(&dir, &["--within", "30"]);
        let token = uri.pair.as_ref().unwrap().token.clone();
        let ready = (Mutex::new(0), Condvar::new());
        let results: Vec<_> = std::thread::scope(|s| {
            let peers: Vec<_> = (0..2)
                .map(|_| {
                    let (uri, ready, token) = (&uri, &ready, &token);
                    s.spawn(move || {
                        let peer = pairing_peer(uri);
                        // Both lines go once both peers are through their
                        // handshakes (or 3 s have passed: then the test fails).
                        let (count, both) = ready;
                        *count.lock().unwrap() += 1;
                        both.notify_all();
                        let _ = both
                            .wait_timeout_while(
                                count.lock().unwrap(),
                                Duration::from_secs(3),
                                |n| *n < 2,
                            )
                            .unwrap();
                        let (fp, mut tls) = peer?;
                        tls.write_all(pair_request(token).as_bytes())
                            .and_then(|()| tls.flush())
                            .map_err(|e| e.to_string())?;
                        Ok::<_, String>((fp, pair_answer(&mut tls)?))
                    })
                })
                .collect();
            peers.into_iter().map(|p| p.join().unwrap()).collect()
        });
        let status = pair.wait_exit(Duration::from_secs(10));
        let log = pair.output();
        println!("round {round}: {results:?}\n{log}");
        let results: Vec<_> = results
            .into_iter()
            .map(|r| r.unwrap_or_else(|e| panic!("{e}\n{log}")))
            .collect();
        assert!(status.success(), "{log}");
        let winners: Vec<_> = results
            .iter()
            .filter(|(_, answer)| *answer == PairAnswer::Ok)
            .collect();
        assert_eq!(winners.len(), 1, "{results:?}");
        let list = trusted(&dir);
        assert_eq!(list.entries.len(), 1, "{list:?}");
        assert_eq!(list.entries[0].fingerprint, winners[0].0);
        let refused = PairAnswer::Refused("the pairing is over: its token was used".into());
        assert!(results.iter().any(|(_, a)| *a == refused), "{results:?}");
        assert_eq!(log.matches("trusting ").count(), 1, "{log}");
    }
}

/// A trust list that cannot take the key when the right token comes (turned into a
/// directory after the start): the vicc is told, nobody is trusted, exit status 1.
#[test]
fn pairing_refuses_the_vicc_when_the_trust_list_cannot_take_its_key() {
    let tmp = temp_dir("tls-pair-unsaved");
    let dir = tmp.path().join("tls");
    let (mut pair, uri) = start_pair(&dir, &["--within", "30"]);
    let list = dir.join("trusted");
    let _ = std::fs::remove_file(&list);
    std::fs::create_dir(&list).unwrap();
    let (ok, out) = vicc(&uri.to_string(), &tmp.path().join("vicc.pem"));
    assert!(!ok, "{out}");
    assert!(
        out.contains("pairing refused by 127.0.0.1:")
            && out.contains("the reader could not save its trust list"),
        "{out}"
    );
    let status = pair.wait_exit(Duration::from_secs(10));
    let log = pair.output();
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(
        log.contains(&format!("cannot read {}", list.display())),
        "{log}"
    );
    assert!(!log.contains("trusting"), "{log}");
}

/// --keys NAME pairs into the key set's directory, over IPv6 too; a trust list this
/// user cannot change is found before any token is shown.
#[test]
fn pairing_into_a_key_set_over_ipv6_and_a_read_only_directory() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = temp_dir("tls-pair-keys");
    let base = tmp.path().join("tls");
    let run_config = |args: &[&str]| {
        run(Command::new(build_dir().join("vpcd-config"))
            .arg("tls")
            .args(args)
            .args(["--keys", "alice", "--dir"])
            .arg(&base))
    };
    let (ok, out) = run_config(&["init"]);
    assert!(ok, "{out}");
    let reader_port = free_ports(1).to_string();
    let mut cmd = Command::new(build_dir().join("vpcd-config"));
    cmd.args(["tls", "pair", "-H", "::1", "-P", &reader_port, "--no-qr"])
        .args(["--keys", "alice", "--dir"])
        .arg(&base);
    let mut pair = Process::spawn(&mut cmd, tmp.path().join("pair.log"));
    let line = wait_line(&pair, "vpcds://");
    assert!(line.starts_with("vpcds://[::1]:"), "{line}");
    let (_, out) = vicc(&line, &tmp.path().join("vicc.pem"));
    assert!(out.contains("paired with ::1:"), "{out}");
    assert!(pair.wait_exit(Duration::from_secs(10)).success());
    assert_eq!(trusted(&base.join("alice")).entries.len(), 1);
    assert!(
        !base.join("trusted").exists(),
        "the key set's list, not the base's"
    );

    // A directory this user cannot write in: as root (who writes anyway), the
    // command runs as user nobody, from a copy it can reach.
    let alice = base.join("alice");
    let mut cmd = if is_root() {
        let bin = tmp.path().join("vpcd-config");
        std::fs::copy(build_dir().join("vpcd-config"), &bin).unwrap();
        for p in [tmp.path(), &base, &alice] {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        std::fs::set_permissions(
            alice.join("key.pem"),
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        let mut cmd = Command::new("setpriv");
        cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(&bin);
        cmd
    } else {
        std::fs::set_permissions(&alice, std::fs::Permissions::from_mode(0o555)).unwrap();
        Command::new(build_dir().join("vpcd-config"))
    };
    let (ok, out) = run(cmd
        .args(["tls", "pair", "--within", "30", "--no-qr", "--dir"])
        .arg(&alice));
    std::fs::set_permissions(&alice, std::fs::Permissions::from_mode(0o755)).unwrap();
    println!("{out}");
    assert!(!ok && out.contains("cannot write in"), "{out}");
    assert!(!out.contains("vpcds://"), "no token shown: {out}");
    assert_eq!(trusted(&alice).entries.len(), 1);
}

/// Whether this test runs as root (file permissions do not stop root).
fn is_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}
