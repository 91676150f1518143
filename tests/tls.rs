//! The secure link (`tls=yes`, docs/TLS.md) through a real pcscd: vpcd-vicc as the
//! built-in card, as the relay of a real (here: another virtual) card, and reversed;
//! OpenSC and PC/SC clients on top. Every failure is refused with its log line while
//! another reader ("Other PCD", a plain reader with a good card) keeps answering
//! OpenSC within [`BOUND`].
//!
//! The keys are made by the tools themselves (`vpcd-config tls init`, `trust`), in
//! temporary directories; pcscd finds the reader's through `VPCD_TLS_DIR`.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use vpcd_protocol::link::cert_fingerprint;
use vpcd_protocol::tls::{Fingerprint, KeyFile};
use vpcd_testing::*;

/// How fast OpenSC must answer on the other reader while a peer misbehaves.
const BOUND: Duration = Duration::from_secs(1);
const SECURE: &str = "Secure PCD";
const OTHER: &str = "Other PCD";

/// A key directory made by `vpcd-config tls init`.
struct Keys {
    dir: PathBuf,
    fingerprint: Fingerprint,
}

fn init_keys(dir: &Path) -> Keys {
    init_key_set(
        dir.parent().unwrap(),
        dir.file_name().unwrap().to_str().unwrap(),
    )
}

/// `vpcd-config tls init --keys NAME --dir BASE`: the key set of readers with
/// `keys=NAME`, in BASE/NAME.
fn init_key_set(base: &Path, name: &str) -> Keys {
    let dir = base.join(name);
    if sandboxed() {
        // pcscd runs as user pcscd there and must reach the directory.
        use std::os::unix::fs::PermissionsExt;
        let open = std::fs::Permissions::from_mode(0o755);
        std::fs::set_permissions(base, open).unwrap();
    }
    let (ok, out) = run(Command::new(tool("vpcd-config"))
        .args(["tls", "init", "--keys", name, "--dir"])
        .arg(base));
    let dir = dir.as_path();
    assert!(ok, "vpcd-config tls init:\n{out}");
    let key = KeyFile::parse(&std::fs::read_to_string(dir.join("key.pem")).unwrap()).unwrap();
    let fingerprint = cert_fingerprint(&key.cert).unwrap();
    assert!(out.contains(&fingerprint.to_string()), "{out}");
    if sandboxed() {
        // pcscd runs as user pcscd there: test keys only.
        use std::os::unix::fs::PermissionsExt;
        for p in [dir.to_owned(), dir.join("key.pem"), dir.join("trusted")] {
            let mode = if p == dir { 0o755 } else { 0o644 };
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        }
    }
    Keys {
        dir: dir.to_owned(),
        fingerprint,
    }
}

fn trust(reader: &Keys, peer: &Fingerprint) {
    let (ok, out) = run(Command::new(tool("vpcd-config"))
        .args([
            "tls",
            "trust",
            &peer.to_string(),
            "--name",
            "test vicc",
            "--dir",
        ])
        .arg(&reader.dir));
    assert!(ok, "vpcd-config tls trust:\n{out}");
}

/// One pcscd: "Secure PCD" (`secure_device`, its slot 0 the one under test) and "Other
/// PCD", plain, with a good card.
struct Bed {
    pcscd: Pcscd,
    tmp: tempfile::TempDir,
    reader: Keys,
    vicc: Keys,
    port: u16,
    secure_reader: String,
    other_reader: String,
    _card: Vicc,
}

impl Bed {
    /// `device` gets `{port}`; the reader trusts the vicc key unless `trusting` is false.
    fn start(device: &str, trusting: bool) -> Bed {
        let tmp = temp_dir("tls");
        std::fs::create_dir_all(tmp.path().join("reader")).unwrap();
        std::fs::create_dir_all(tmp.path().join("vicc")).unwrap();
        let reader = init_keys(&tmp.path().join("reader"));
        let vicc = init_keys(&tmp.path().join("vicc"));
        if trusting {
            trust(&reader, &vicc.fingerprint);
        }
        let port = free_ports(3);
        std::env::set_var("VPCD_TLS_DIR", &reader.dir);
        let pcscd = Pcscd::start(&[
            Entry::device(SECURE, &device.replace("{port}", &port.to_string())),
            Entry::device(
                OTHER,
                &format!("/dev/null:{}/slots=1/listen=127.0.0.1", port + 2),
            ),
        ]);
        let secure_reader = reader_name(SECURE, 0, 0);
        let other_reader = reader_name(OTHER, 1, 0);
        let card = Vicc::connect(port + 2, Behaviour::Echo);
        pcscd.wait_readers(&[secure_reader.clone(), other_reader.clone()]);
        wait_card(&other_reader, true, 3 * BOUND);
        Bed {
            pcscd,
            tmp,
            reader,
            vicc,
            port,
            secure_reader,
            other_reader,
            _card: card,
        }
    }

    fn uri(&self) -> String {
        format!(
            "vpcds://127.0.0.1:{}?fp={}",
            self.port, self.reader.fingerprint
        )
    }

    /// `vpcd-config tls pair` for the secure reader (60 s, no QR code, `extra`
    /// options), and the URI it offers, once it shows it.
    fn start_pairing(&self, extra: &[&str]) -> (Process, String) {
        let mut cmd = Command::new(tool("vpcd-config"));
        cmd.args([
            "tls",
            "pair",
            "-H",
            "127.0.0.1",
            "-P",
            &self.port.to_string(),
        ])
        .args(["--no-qr", "--within", "60"])
        .args(extra)
        .arg("--dir")
        .arg(&self.reader.dir);
        let pair = Process::spawn(&mut cmd, self.tmp.path().join("pair.log"));
        let out = wait_output(&pair, "vicc: vpcd-vicc --connect");
        let uri = out
            .lines()
            .find(|l| l.starts_with("vpcds://"))
            .unwrap_or_else(|| panic!("no URI:\n{out}"))
            .to_owned();
        assert!(uri.contains("&pair="), "{uri}");
        (pair, uri)
    }

    fn vicc(&self, tag: &str, args: &[&str]) -> Process {
        let mut cmd = Command::new(tool("vpcd-vicc"));
        cmd.args(args)
            .arg("--tls-key")
            .arg(self.vicc.dir.join("key.pem"));
        Process::spawn(&mut cmd, self.tmp.path().join(format!("{tag}.log")))
    }

    /// OpenSC on the other reader: it answers, within BOUND.
    fn other_reader_answers(&self) {
        let start = Instant::now();
        let (ok, out) = run(Command::new("opensc-tool").args([
            "-r",
            &self.other_reader,
            "-s",
            "80 EE 00 00 02 CA FE",
        ]));
        let took = start.elapsed();
        assert!(ok, "opensc-tool on the other reader:\n{out}");
        assert!(out.contains("CA FE"), "{out}");
        assert!(
            took < BOUND,
            "opensc-tool on the other reader took {took:?}"
        );
    }

    fn wait_log(&self, needle: &str) {
        assert!(
            self.pcscd.wait_log(needle, Duration::from_secs(10)),
            "no {needle:?} in pcscd's log:\n{}",
            self.pcscd.log_text()
        );
    }

    fn assert_secure_slot_empty(&self) {
        wait_card(&self.secure_reader, false, BOUND);
    }
}

/// Waits until `process`'s output contains `needle`.
fn wait_output(process: &Process, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = process.output();
        if out.contains(needle) {
            return out;
        }
        assert!(Instant::now() < deadline, "no {needle:?} in:\n{out}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The built-in card's ECHO through OpenSC on `reader`.
fn opensc_echo(reader: &str) {
    let (ok, out) = run(Command::new("opensc-tool").args([
        "-r",
        reader,
        "-s",
        "80 EE 00 00 04 DE AD BE EF",
        "-s",
        "00 A4 04 0C 06 F0 76 70 63 64 01",
        "-s",
        "00 A4 02 0C 02 50 01",
        "-s",
        "00 B0 00 00 00",
    ]));
    assert!(ok, "opensc-tool:\n{out}");
    assert!(out.contains("DE AD BE EF"), "{out}");
    assert!(
        out.contains("48 65 6C 6C 6F"),
        "no 'Hello' read from EF 5001:\n{out}"
    );
    assert!(!out.contains("SW1=0x6"), "an error status:\n{out}");
}

#[test]
fn the_built_in_card_over_tls_through_opensc() {
    let bed = Bed::start("/dev/null:{port}/slots=1/listen=127.0.0.1/tls=yes", true);
    bed.wait_log(&format!("TLS 1.3 with key {}", bed.reader.fingerprint));
    let vicc = bed.vicc("card", &["--connect", &bed.uri()]);
    wait_output(&vicc, &bed.vicc.fingerprint.to_string());
    wait_card(&bed.secure_reader, true, Duration::from_secs(5));
    bed.wait_log(&format!("over TLS 1.3, key {}", bed.vicc.fingerprint));
    opensc_echo(&bed.secure_reader);
    // Extended APDUs and many round trips, through PC/SC.
    let ctx = bed.pcscd.context();
    let card = connect(&ctx, &bed.secure_reader);
    for n in [1usize, 255, 256, 4000, 65000] {
        let apdu = extended_apdu(n);
        let reply = transmit(&card, &apdu).expect("transmit");
        assert_eq!(reply.len(), n + 2, "ECHO of {n} bytes");
        assert_eq!(&reply[..n], &apdu[7..7 + n]);
    }
    // The largest APDU one vpcd frame holds: its frame is larger than the plaintext
    // rustls buffers at once (64 KiB). Too long for the card's ECHO, but it answers.
    let reply = transmit(&card, &extended_apdu(65528)).expect("transmit 65535 bytes");
    assert!(reply.len() >= 2, "{reply:?}");
    // And the link is still in step.
    assert_eq!(
        transmit(&card, &extended_apdu(3)).unwrap(),
        [3, 10, 17, 0x90, 0x00]
    );
    bed.other_reader_answers();
    // The vicc goes: the card is removed at once.
    drop(card);
    drop(vicc);
    wait_card(&bed.secure_reader, false, BOUND);
    bed.wait_log("card removed");
}

#[test]
fn a_relayed_card_over_tls() {
    // The "card on another machine" case: vpcd-vicc --relay takes the card of a local
    // reader (here the other reader's card, through the same pcscd) to a secure slot.
    let bed = Bed::start("/dev/null:{port}/slots=1/listen=127.0.0.1/tls=yes", true);
    let relay = bed.vicc(
        "relay",
        &["--relay", &bed.other_reader, "--connect", &bed.uri()],
    );
    wait_output(&relay, "over TLS 1.3");
    wait_card(&bed.secure_reader, true, Duration::from_secs(5));
    let (ok, out) = run(Command::new("opensc-tool").args([
        "-r",
        &bed.secure_reader,
        "-s",
        "00 11 22 33 02 AB CD",
    ]));
    assert!(ok, "opensc-tool:\n{out}\nrelay:\n{}", relay.output());
    // The echo card answers its APDU back, plus 90 00.
    assert!(out.contains("AB CD"), "{out}");
}

#[test]
fn reversed_mode_over_tls() {
    let tmp_port = free_ports(1);
    let bed = Bed::start(
        &format!("127.0.0.1:{tmp_port}/slots=1/tls=yes/timeout=2"),
        true,
    );
    let fp = bed.reader.fingerprint.to_string();
    let vicc = bed.vicc(
        "reversed",
        &[
            "-r",
            "--listen",
            "127.0.0.1",
            "-P",
            &tmp_port.to_string(),
            "--tls-peer",
            &fp,
        ],
    );
    wait_output(&vicc, "waiting for vpcd");
    wait_card(&bed.secure_reader, true, Duration::from_secs(10));
    wait_output(&vicc, "TLS 1.3 with the pinned reader key");
    opensc_echo(&bed.secure_reader);
    bed.other_reader_answers();
}

#[test]
fn a_plain_vicc_on_a_secure_slot_is_refused() {
    let bed = Bed::start(
        "/dev/null:{port}/slots=1/listen=127.0.0.1/tls=yes/timeout=1",
        true,
    );
    let plain = Process::spawn(
        Command::new(tool("vpcd-vicc")).args(["-P", &bed.port.to_string()]),
        bed.tmp.path().join("plain.log"),
    );
    wait_output(&plain, "connected to vpcd");
    bed.other_reader_answers();
    bed.wait_log("no TLS handshake within 1s of connecting (a plain vicc on a tls=yes reader?)");
    bed.assert_secure_slot_empty();
    bed.other_reader_answers();
    // A PIN pad vicc speaks first: its HELLO is no TLS record.
    let pinpad = Process::spawn(
        Command::new(tool("vpcd-vicc")).args(["-P", &bed.port.to_string(), "--pinpad"]),
        bed.tmp.path().join("pinpad.log"),
    );
    wait_output(&pinpad, "connected to vpcd");
    bed.wait_log("does not speak TLS");
    bed.assert_secure_slot_empty();
    bed.other_reader_answers();
}

#[test]
fn a_vicc_with_an_unknown_key_is_refused() {
    let bed = Bed::start("/dev/null:{port}/slots=1/listen=127.0.0.1/tls=yes", false);
    let vicc = bed.vicc("unknown", &["--connect", &bed.uri()]);
    bed.wait_log(&format!(
        "its key {} is not trusted (if it is the right peer: vpcd-config tls trust {})",
        bed.vicc.fingerprint, bed.vicc.fingerprint
    ));
    wait_output(&vicc, "connection to vpcd failed: TLS: it refused our key");
    bed.assert_secure_slot_empty();
    bed.other_reader_answers();
}

#[test]
fn trust_and_untrust_take_effect_at_the_next_connection_without_a_restart() {
    let bed = Bed::start("/dev/null:{port}/slots=1/listen=127.0.0.1/tls=yes", false);
    let before = bed.vicc("before", &["--connect", &bed.uri()]);
    wait_output(
        &before,
        "connection to vpcd failed: TLS: it refused our key",
    );
    drop(before);
    bed.assert_secure_slot_empty();

    // Paired while pcscd runs: the next connection is the card.
    trust(&bed.reader, &bed.vicc.fingerprint);
    let paired = bed.vicc("paired", &["--connect", &bed.uri()]);
    wait_card(&bed.secure_reader, true, 3 * BOUND);
    bed.wait_log("changed: trusting 1 peer key(s) from now on");
    opensc_echo(&bed.secure_reader);

    // Unpaired: the card connected stays, the next connection is refused.
    let (ok, out) = run(Command::new(tool("vpcd-config"))
        .args(["tls", "untrust", &bed.vicc.fingerprint.to_string(), "--dir"])
        .arg(&bed.reader.dir));
    assert!(ok, "vpcd-config tls untrust:\n{out}");
    opensc_echo(&bed.secure_reader);
    drop(paired);
    bed.assert_secure_slot_empty();
    let after = bed.vicc("after", &["--connect", &bed.uri()]);
    wait_output(&after, "connection to vpcd failed: TLS: it refused our key");
    bed.wait_log("changed: trusting 0 peer key(s) from now on");
    bed.assert_secure_slot_empty();

    // A trust list spoiled meanwhile never opens the slot to everyone: the last good
    // one (no key) stays in force, and says so once.
    std::fs::write(bed.reader.dir.join("trusted"), "not a fingerprint\n").unwrap();
    let spoiled = bed.vicc("spoiled", &["--connect", &bed.uri()]);
    wait_output(
        &spoiled,
        "connection to vpcd failed: TLS: it refused our key",
    );
    bed.wait_log("keeping the trust list read before");
    bed.assert_secure_slot_empty();
    bed.other_reader_answers();
}

/// One-step pairing: `vpcd-config tls pair` (the admin's command) takes the token and
/// writes the trust list; the driver, which cannot write, reads it at the next
/// connection. No `trust` command anywhere.
#[test]
fn one_step_pairing_makes_the_card_without_a_trust_command_and_only_once() {
    let bed = Bed::start("/dev/null:{port}/slots=1/listen=127.0.0.1/tls=yes", false);
    let (mut pair, uri) = bed.start_pairing(&["--name", "test phone"]);

    let card = bed.vicc("paired", &["--connect", &uri]);
    wait_output(&card, "the reader trusts this card's key now");
    wait_card(&bed.secure_reader, true, 3 * BOUND);
    bed.wait_log("changed: trusting 1 peer key(s) from now on");
    opensc_echo(&bed.secure_reader);
    let status = pair.wait_exit(Duration::from_secs(10));
    let log = pair.output();
    assert!(status.success(), "{log}");
    assert!(
        log.contains(&format!("trusting {} \"test phone\"", bed.vicc.fingerprint)),
        "{log}"
    );
    drop(card);
    bed.assert_secure_slot_empty();

    // The same URI from another vicc: the token is used, the pairing is over.
    let other_key = bed.tmp.path().join("other-key.pem");
    let mut cmd = Command::new(tool("vpcd-vicc"));
    cmd.args(["--connect", &uri, "--tls-key"]).arg(&other_key);
    let other = Process::spawn(&mut cmd, bed.tmp.path().join("other.log"));
    let out = wait_output(
        &other,
        "the pairing is over (its token was used, or it expired)",
    );
    assert!(!out.contains("paired with"), "{out}");
    bed.assert_secure_slot_empty();
    // Its key was never trusted: without the pairing offer the reader refuses it.
    let plain = uri.split("&pair=").next().unwrap();
    let mut cmd = Command::new(tool("vpcd-vicc"));
    cmd.args(["--connect", plain, "--tls-key"]).arg(&other_key);
    let refused = Process::spawn(&mut cmd, bed.tmp.path().join("refused.log"));
    wait_output(
        &refused,
        "connection to vpcd failed: TLS: it refused our key",
    );
    bed.assert_secure_slot_empty();
    bed.other_reader_answers();
}

#[test]
fn readers_with_key_sets_of_their_own_trust_only_their_own_peers() {
    let tmp = temp_dir("tls-keys");
    let base = tmp.path().join("tls");
    std::fs::create_dir_all(&base).unwrap();
    let alice = init_key_set(&base, "alice");
    let bob = init_key_set(&base, "bob");
    assert_ne!(alice.fingerprint, bob.fingerprint);
    let vicc = init_keys(&tmp.path().join("vicc"));
    trust(&alice, &vicc.fingerprint);
    std::env::set_var("VPCD_TLS_DIR", &base);
    let port = free_ports(2);
    let pcscd = Pcscd::start(&[
        Entry::device(
            "Alice PCD",
            &format!("/dev/null:{port}/slots=1/listen=127.0.0.1/tls=yes/keys=alice"),
        ),
        Entry::device(
            "Bob PCD",
            &format!(
                "/dev/null:{}/slots=1/listen=127.0.0.1/tls=yes/keys=bob",
                port + 1
            ),
        ),
    ]);
    let (alice_reader, bob_reader) = (reader_name("Alice PCD", 0, 0), reader_name("Bob PCD", 1, 0));
    pcscd.wait_readers(&[alice_reader.clone(), bob_reader.clone()]);
    let card = |tag: &str, port: u16, reader: &Keys| {
        let mut cmd = Command::new(tool("vpcd-vicc"));
        cmd.args([
            "--connect",
            &format!("vpcds://127.0.0.1:{port}?fp={}", reader.fingerprint),
        ])
        .arg("--tls-key")
        .arg(vicc.dir.join("key.pem"));
        Process::spawn(&mut cmd, tmp.path().join(format!("{tag}.log")))
    };
    // Alice's reader: its own key, its own trust list, which has the vicc.
    let _at_alice = card("alice", port, &alice);
    wait_card(&alice_reader, true, 3 * BOUND);
    opensc_echo(&alice_reader);
    // Bob's reader proves Bob's key and trusts nobody: the same vicc is refused.
    let at_bob = card("bob", port + 1, &bob);
    wait_output(
        &at_bob,
        "connection to vpcd failed: TLS: it refused our key",
    );
    assert!(
        pcscd.wait_log(
            &format!("its key {} is not trusted", vicc.fingerprint),
            Duration::from_secs(10)
        ),
        "{}",
        pcscd.log_text()
    );
    wait_card(&bob_reader, false, BOUND);
    let log = pcscd.log_text();
    for keys in [&alice, &bob] {
        assert!(
            log.contains(&format!("TLS 1.3 with key {}", keys.fingerprint)),
            "{log}"
        );
    }
}

#[test]
fn a_reader_key_other_than_the_pinned_one_is_refused_by_the_vicc() {
    // A man in the middle: the vicc pinned one key, the slot proves another.
    let bed = Bed::start("/dev/null:{port}/slots=1/listen=127.0.0.1/tls=yes", true);
    let pinned = bed.vicc.fingerprint;
    let uri = format!("vpcds://127.0.0.1:{}?fp={pinned}", bed.port);
    let vicc = bed.vicc("mitm", &["--connect", &uri]);
    let out = wait_output(&vicc, "cannot connect to vpcd");
    assert!(
        out.contains(&format!(
            "the reader's key is {}, not the pinned {pinned}",
            bed.reader.fingerprint
        )),
        "{out}"
    );
    bed.wait_log("it refused our key");
    bed.assert_secure_slot_empty();
    bed.other_reader_answers();
}

#[test]
fn stalled_and_garbage_handshakes_cost_nobody_anything() {
    let bed = Bed::start(
        "/dev/null:{port}/slots=1/listen=127.0.0.1/tls=yes/timeout=2",
        true,
    );
    // Silent: connects and never says a word.
    let mut silent = TcpStream::connect(("127.0.0.1", bed.port)).unwrap();
    // A ClientHello's record header, then nothing more.
    let mut stalled = TcpStream::connect(("127.0.0.1", bed.port)).unwrap();
    stalled
        .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
        .unwrap();
    // Garbage.
    let mut garbage = TcpStream::connect(("127.0.0.1", bed.port)).unwrap();
    garbage.write_all(&noise(3, 300)).unwrap();
    for _ in 0..3 {
        bed.other_reader_answers();
    }
    bed.wait_log("does not speak TLS");
    bed.wait_log("no TLS handshake within 2s");
    for (name, stream) in [
        ("silent", &mut silent),
        ("stalled", &mut stalled),
        ("garbage", &mut garbage),
    ] {
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut sink = [0u8; 4096];
        let closed = loop {
            match stream.read(&mut sink) {
                Ok(0) => break true,
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break true,
                Err(_) => break false,
            }
        };
        assert!(closed, "{name}: the driver kept the peer");
    }
    bed.assert_secure_slot_empty();
    // A good vicc still gets the slot afterwards.
    let vicc = bed.vicc("good", &["--connect", &bed.uri()]);
    wait_card(&bed.secure_reader, true, Duration::from_secs(5));
    opensc_echo(&bed.secure_reader);
    drop(vicc);
}

/// A secure reader whose files are unusable at pcscd's start: it does not start (no
/// plain fallback), and says why; the other reader works, and the plain reader beyond
/// loopback warns once, naming the option.
fn refused_at_start(spoil: impl Fn(&Path), needle: &str) {
    let tmp = temp_dir("tls-broken");
    let dir = tmp.path().join("reader");
    std::fs::create_dir_all(&dir).unwrap();
    let keys = init_keys(&dir);
    spoil(&keys.dir);
    std::env::set_var("VPCD_TLS_DIR", &keys.dir);
    let port = free_ports(3);
    let pcscd = Pcscd::start(&[
        Entry::device(
            SECURE,
            &format!("/dev/null:{port}/slots=1/listen=127.0.0.1/tls=yes"),
        ),
        Entry::device(OTHER, &format!("/dev/null:{}/slots=1", port + 2)),
    ]);
    // The secure reader never started, so the other one is pcscd's first.
    let other_reader = reader_name(OTHER, 0, 0);
    let _card = Vicc::connect(port + 2, Behaviour::Echo);
    pcscd.wait_readers(std::slice::from_ref(&other_reader));
    assert!(
        pcscd.wait_log(needle, Duration::from_secs(5)),
        "no {needle:?}:\n{}",
        pcscd.log_text()
    );
    assert!(pcscd.wait_log("no plain fallback", Duration::from_secs(1)));
    let ctx = pcscd.context();
    assert!(
        !list_readers(&ctx).iter().any(|r| r.starts_with(SECURE)),
        "the secure reader started: {:?}",
        list_readers(&ctx)
    );
    // Nothing listens on its port: no plain fallback.
    assert!(TcpStream::connect(("127.0.0.1", port)).is_err());
    wait_card(&other_reader, true, 3 * BOUND);
    let (ok, out) =
        run(Command::new("opensc-tool").args(["-r", &other_reader, "-s", "80 EE 00 00 01 01"]));
    assert!(ok && out.contains("SW1=0x90, SW2=0x00"), "{out}");
    let log = pcscd.log_text();
    let warnings = log.matches("plain vpcd beyond loopback").count();
    assert_eq!(warnings, 1, "{log}");
    assert!(log.contains("add /tls=yes to the DEVICENAME"), "{log}");
}

#[test]
fn a_missing_key_file_keeps_the_reader_closed() {
    refused_at_start(
        |dir| std::fs::remove_file(dir.join("key.pem")).unwrap(),
        "key.pem: No such file or directory (os error 2) (vpcd-config tls init creates it)",
    );
}

#[test]
fn a_malformed_key_file_keeps_the_reader_closed() {
    refused_at_start(
        |dir| {
            std::fs::write(
                dir.join("key.pem"),
                "-----BEGIN PRIVATE KEY-----\nnot base64!\n",
            )
            .unwrap()
        },
        "key.pem is malformed",
    );
}

#[test]
fn a_malformed_trust_list_keeps_the_reader_closed() {
    refused_at_start(
        |dir| std::fs::write(dir.join("trusted"), "not-a-fingerprint alice\n").unwrap(),
        "trusted is malformed: line 1",
    );
}

#[test]
fn an_unreadable_key_file_keeps_the_reader_closed() {
    if running_as_root() {
        // root reads any file: make it a directory instead.
        refused_at_start(
            |dir| {
                std::fs::remove_file(dir.join("key.pem")).unwrap();
                std::fs::create_dir(dir.join("key.pem")).unwrap();
            },
            "cannot read",
        );
    } else {
        use std::os::unix::fs::PermissionsExt;
        refused_at_start(
            |dir| {
                std::fs::set_permissions(
                    dir.join("key.pem"),
                    std::fs::Permissions::from_mode(0o000),
                )
                .unwrap()
            },
            "Permission denied",
        );
    }
}

fn running_as_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

#[test]
fn live_removal_and_insertion_over_tls() {
    let bed = Bed::start("/dev/null:{port}/slots=1/listen=127.0.0.1/tls=yes", true);
    let control = bed.tmp.path().join("control.sock");
    let control_arg = control.to_str().unwrap();
    let _vicc = bed.vicc(
        "control",
        &["--connect", &bed.uri(), "--control", control_arg],
    );
    wait_card(&bed.secure_reader, true, Duration::from_secs(5));
    let ctl = |command: &str| {
        let (ok, out) = run(Command::new(tool("vpcd-vicc")).args(["ctl", control_arg, command]));
        assert!(ok, "vpcd-vicc ctl {command}:\n{out}");
        out
    };
    assert!(ctl("remove").contains("removed"));
    wait_card(&bed.secure_reader, false, BOUND);
    assert!(ctl("insert").contains("inserted"));
    wait_card(&bed.secure_reader, true, BOUND);
    opensc_echo(&bed.secure_reader);
    let inserted = bed.pcscd.log_text().matches("over TLS 1.3, key").count();
    assert_eq!(inserted, 2, "two secure connections");
}

#[test]
fn reversed_mode_refuses_an_unknown_vicc_and_backs_off() {
    // The reader connects out, is shown a key it does not trust, refuses it, and tries
    // again with backoff.
    let port = free_ports(1);
    let bed = Bed::start(
        &format!("127.0.0.1:{port}/slots=1/tls=yes/timeout=2"),
        false,
    );
    let fp = bed.reader.fingerprint.to_string();
    let vicc = bed.vicc(
        "reversed-unknown",
        &[
            "-r",
            "--listen",
            "127.0.0.1",
            "-P",
            &port.to_string(),
            "--tls-peer",
            &fp,
        ],
    );
    bed.wait_log(&format!("its key {} is not trusted", bed.vicc.fingerprint));
    wait_output(&vicc, "it refused our key");
    bed.other_reader_answers();
    bed.assert_secure_slot_empty();
    // Backoff: a second refusal comes, but not a flood of them.
    let start = Instant::now();
    while bed.pcscd.log_text().matches("is not a card: TLS").count() < 2 {
        assert!(start.elapsed() < Duration::from_secs(5), "no retry");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_secs(2));
    let refusals = bed.pcscd.log_text().matches("is not a card: TLS").count();
    assert!(refusals <= 12, "{refusals} refusals in about 3 s");
}

#[test]
fn a_reversed_vicc_refuses_a_reader_key_it_did_not_pin() {
    let port = free_ports(1);
    let bed = Bed::start(&format!("127.0.0.1:{port}/slots=1/tls=yes/timeout=2"), true);
    let wrong = bed.vicc.fingerprint.to_string();
    let vicc = bed.vicc(
        "reversed-mitm",
        &[
            "-r",
            "--listen",
            "127.0.0.1",
            "-P",
            &port.to_string(),
            "--tls-peer",
            &wrong,
        ],
    );
    let out = wait_output(&vicc, "not the pinned");
    assert!(
        out.contains(&format!("the reader's key is {}", bed.reader.fingerprint)),
        "{out}"
    );
    bed.wait_log("it refused our key");
    bed.other_reader_answers();
    bed.assert_secure_slot_empty();
}

/// tests/tls-vicc/vicc.py pairs in one step as docs/TLS.md's exchange on the wire
/// says (OpenSSL, not rustls): a wrong token is refused and counted, the right one
/// makes it the card.
#[test]
fn a_vicc_on_another_tls_stack_pairs_in_one_step_as_documented() {
    let bed = Bed::start("/dev/null:{port}/slots=1/listen=127.0.0.1/tls=yes", false);
    let (pair, uri) = bed.start_pairing(&[]);
    let offer = uri.split_once("&pair=").unwrap().1.to_owned();
    let script = repo_root().join("tests/tls-vicc/vicc.py");
    let python = |tag: &str, offer: &str| {
        Process::spawn(
            Command::new("/usr/bin/python3")
                .arg(&script)
                .args(["127.0.0.1", &bed.port.to_string()])
                .arg(bed.vicc.dir.join("key.pem"))
                .arg(bed.reader.fingerprint.to_string())
                .arg(offer),
            bed.tmp.path().join(format!("{tag}.log")),
        )
    };
    // The token with its last digit changed.
    let flipped = if offer.ends_with('0') { '1' } else { '0' };
    let wrong_offer = format!("{}{flipped}", &offer[..offer.len() - 1]);
    let wrong = python("wrong", &wrong_offer);
    wait_output(&wrong, "vicc.py: pairing refused: wrong token (1 of 3)");
    let card = python("right", &offer);
    wait_output(&card, "vicc.py: paired");
    wait_output(&card, "TLSv1.3, reader key pinned");
    wait_card(&bed.secure_reader, true, Duration::from_secs(5));
    bed.wait_log(&format!("over TLS 1.3, key {}", bed.vicc.fingerprint));
    let (ok, out) = run(Command::new("opensc-tool").args([
        "-r",
        &bed.secure_reader,
        "-s",
        "00 11 22 33 02 AB CD",
    ]));
    assert!(ok && out.contains("AB CD"), "{out}\n{}", card.output());
    let log = wait_output(&pair, "paired 127.0.0.1:");
    assert!(
        log.contains(&format!("trusting {}", bed.vicc.fingerprint)),
        "{log}"
    );
    bed.other_reader_answers();
}

#[test]
fn a_vicc_on_another_tls_stack_pairs_as_documented() {
    // tests/tls-vicc/vicc.py: Python's ssl (OpenSSL), written from docs/TLS.md alone,
    // with the key file vpcd-config tls init wrote for it.
    let bed = Bed::start("/dev/null:{port}/slots=1/listen=127.0.0.1/tls=yes", true);
    let script = repo_root().join("tests/tls-vicc/vicc.py");
    let key = bed.vicc.dir.join("key.pem");
    let vicc = Process::spawn(
        Command::new("/usr/bin/python3")
            .arg(&script)
            .args(["127.0.0.1", &bed.port.to_string()])
            .arg(&key)
            .arg(bed.reader.fingerprint.to_string()),
        bed.tmp.path().join("python.log"),
    );
    wait_output(&vicc, "TLSv1.3, reader key pinned");
    wait_card(&bed.secure_reader, true, Duration::from_secs(5));
    bed.wait_log(&format!("over TLS 1.3, key {}", bed.vicc.fingerprint));
    let (ok, out) = run(Command::new("opensc-tool").args([
        "-r",
        &bed.secure_reader,
        "-s",
        "00 11 22 33 02 AB CD",
    ]));
    assert!(ok && out.contains("AB CD"), "{out}\n{}", vicc.output());
    bed.other_reader_answers();
    drop(vicc);
    wait_card(&bed.secure_reader, false, BOUND);
    // Pinning a wrong key, it refuses the reader before a single frame.
    let wrong = bed.vicc.fingerprint.to_string();
    let refusing = Process::spawn(
        Command::new("/usr/bin/python3")
            .arg(&script)
            .args(["127.0.0.1", &(bed.port).to_string()])
            .arg(&key)
            .arg(&wrong),
        bed.tmp.path().join("python-wrong.log"),
    );
    wait_output(&refusing, "is not the pinned");
}
