//! The tools against a real private pcscd with our driver: `vpcd-vicc` (the built-in
//! card, reversed mode, relay mode) with the `pcsc` crate as client, and `vpcd-config`.

use std::net::IpAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use pcsc::{Disposition, Protocols, ShareMode};
use vpcd_testing::*;

const NAME: &str = "Virtual PCD";
const VICC: &str = env!("CARGO_BIN_EXE_vpcd-vicc");
const CONFIG: &str = env!("CARGO_BIN_EXE_vpcd-config");
/// The built-in card's ATR.
const VICC_ATR: &[u8] = &[
    0x3B, 0x8A, 0x80, 0x01, 0x80, 0x73, 0x90, 0x01, 0x40, 0x54, 0x76, 0x70, 0x63, 0x64, 0x7C,
];
const HELLO: &[u8] = b"Hello from vpcd-vicc";
const OK: [u8; 2] = [0x90, 0x00];
const WAIT: Duration = Duration::from_secs(10);

const SELECT_MF: &[u8] = &[0x00, 0xA4, 0x00, 0x0C, 0x02, 0x3F, 0x00];
/// SELECT by path from the MF: DF 5000, EF 5001.
const SELECT_5001: &[u8] = &[0x00, 0xA4, 0x08, 0x0C, 0x04, 0x50, 0x00, 0x50, 0x01];
const READ_BINARY: &[u8] = &[0x00, 0xB0, 0x00, 0x00, 0x00];
const GET_CHALLENGE: &[u8] = &[0x00, 0x84, 0x00, 0x00, 0x08];

fn with_sw(data: &[u8], sw: [u8; 2]) -> Vec<u8> {
    let mut v = data.to_vec();
    v.extend_from_slice(&sw);
    v
}

/// A `vpcd-vicc` with these arguments, its output in `dir`, killed on drop.
fn vicc(dir: &Path, tag: &str, args: &[&str]) -> Process {
    Process::spawn(
        Command::new(VICC).args(args),
        dir.join(format!("vpcd-vicc-{tag}.log")),
    )
}

/// Waits until the process's output contains `needle`; fails with the output.
fn wait_output(p: &Process, needle: &str) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let out = p.output();
        if out.contains(needle) {
            return out;
        }
        assert!(
            Instant::now() < deadline,
            "no \"{needle}\" in the output:\n{out}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The ATR a `vpcd-vicc` reported at its start (`card ATR ...` or `relaying ..., ATR ...`).
fn printed_atr(out: &str) -> Vec<u8> {
    let line = out
        .lines()
        .find(|l| l.contains("ATR "))
        .unwrap_or_else(|| panic!("no ATR line in:\n{out}"));
    let hex = line.rsplit("ATR ").next().unwrap();
    hex.split_whitespace()
        .map(|b| u8::from_str_radix(b, 16).unwrap_or_else(|_| panic!("bad ATR line {line}")))
        .collect()
}

fn card_atr(card: &pcsc::Card) -> Vec<u8> {
    let mut names = [0u8; 512];
    let mut atr = [0u8; pcsc::MAX_ATR_SIZE];
    card.status2(&mut names, &mut atr).unwrap().atr().to_vec()
}

fn tx(card: &pcsc::Card, apdu: &[u8]) -> Vec<u8> {
    transmit(card, apdu).unwrap_or_else(|e| panic!("transmit {:02X?}: {e}", &apdu[..4]))
}

/// An extended case 4 ECHO (80 EE) of `n` data bytes, Le 65536.
fn extended_echo(n: usize) -> (Vec<u8>, Vec<u8>) {
    let data: Vec<u8> = (0..n).map(|i| (i * 31 + 7) as u8).collect();
    let apdu = echo_apdu(&data);
    (apdu, with_sw(&data, OK))
}

/// SELECT MF, SELECT EF 5001, READ BINARY: the built-in card's file, as seen by `card`.
fn read_hello(card: &pcsc::Card) {
    assert_eq!(tx(card, SELECT_MF), OK);
    assert_eq!(tx(card, SELECT_5001), OK);
    assert_eq!(tx(card, READ_BINARY), with_sw(HELLO, OK));
}

#[test]
fn vicc_is_the_builtin_card_in_a_listening_slot() {
    let port = free_ports(1);
    let pcscd = Pcscd::start(&[Entry::device(NAME, &format!("/dev/null:{port}/slots=1"))]);
    let reader = reader_name(NAME, 0, 0);
    pcscd.wait_readers(std::slice::from_ref(&reader));
    let p = port.to_string();
    let vicc = vicc(pcscd.dir(), "card", &["-H", "127.0.0.1", "-P", &p, "-v"]);
    let ctx = pcscd.context();
    wait_card(&reader, true, WAIT);
    let card = connect(&ctx, &reader);

    let out = wait_output(&vicc, "connected to vpcd");
    assert_eq!(printed_atr(&out), VICC_ATR, "{out}");
    assert_eq!(card_atr(&card), VICC_ATR);

    read_hello(&card);
    let c1 = tx(&card, GET_CHALLENGE);
    let c2 = tx(&card, GET_CHALLENGE);
    assert_eq!((c1.len(), &c1[8..]), (10, &OK[..]));
    assert_eq!((c2.len(), &c2[8..]), (10, &OK[..]));
    assert_ne!(c1, c2, "two challenges alike");

    // Extended APDUs: 4 KiB, and the largest data field one vpcd frame carries.
    for n in [4096, 65526] {
        let (apdu, want) = extended_echo(n);
        let reply = tx(&card, &apdu);
        assert!(
            reply == want,
            "echo of {n} bytes: {} bytes back",
            reply.len()
        );
    }
    // The -v trace.
    let out = wait_output(&vicc, "< 48 65 6C 6C 6F");
    assert!(out.contains("> 00 B0 00 00 00"), "{out}");
    assert!(
        out.contains("* power on") || out.contains("* reset"),
        "{out}"
    );

    drop(card);
    drop(vicc);
    wait_card(&reader, false, WAIT);
}

#[test]
fn vicc_reversed_is_reached_by_a_reversed_reader() {
    let port = free_ports(1);
    let dir = temp_dir("tools");
    let p = port.to_string();
    let vicc = vicc(
        dir.path(),
        "reversed",
        &["--reversed", "--listen", "127.0.0.1", "-P", &p],
    );
    wait_output(&vicc, "waiting for vpcd on 127.0.0.1");
    let pcscd = Pcscd::start(&[Entry::device(NAME, &format!("127.0.0.1:{port}/slots=1"))]);
    let reader = reader_name(NAME, 0, 0);
    pcscd.wait_readers(std::slice::from_ref(&reader));
    let ctx = pcscd.context();
    wait_card(&reader, true, WAIT);
    let card = connect(&ctx, &reader);
    assert_eq!(card_atr(&card), VICC_ATR);
    read_hello(&card);
    wait_output(&vicc, "driver connected from 127.0.0.1");
    drop(card);
    drop(vicc);
    wait_card(&reader, false, WAIT);
}

#[test]
fn vicc_relays_a_card_of_one_slot_into_another() {
    let port = free_ports(2);
    let pcscd = Pcscd::start(&[Entry::device(NAME, &format!("/dev/null:{port}/slots=2"))]);
    let (slot0, slot1) = (reader_name(NAME, 0, 0), reader_name(NAME, 0, 1));
    pcscd.wait_readers(&[slot0.clone(), slot1.clone()]);
    let dir = pcscd.dir();
    let ctx = pcscd.context();

    // The real card: a vpcd-vicc in slot 0.
    let p0 = port.to_string();
    let card0 = vicc(dir, "slot0", &["-H", "127.0.0.1", "-P", &p0]);
    wait_card(&slot0, true, WAIT);

    // The readers as the tool lists them: slot 0 with its card.
    let (ok, list) = run(Command::new(VICC).arg("--list-readers"));
    assert!(ok, "{list}");
    assert!(list.contains(&format!("0    Yes   {slot0}\n")), "{list}");
    assert!(list.contains(&format!("1    No    {slot1}\n")), "{list}");
    assert!(list.contains("ATR 3B 8A 80 01"), "{list}");
    let (ok, list2) = run(Command::new(VICC).args(["--relay", "?"]));
    assert!(ok && list2 == list, "{list2}");

    // The relay: slot 0's card, in slot 1.
    let p1 = (port + 1).to_string();
    let relay = vicc(
        dir,
        "relay",
        &["--relay", &slot0, "-H", "127.0.0.1", "-P", &p1, "-v"],
    );
    wait_card(&slot1, true, WAIT);
    let out = wait_output(&relay, "connected to vpcd");
    assert_eq!(printed_atr(&out), VICC_ATR, "{out}");

    let direct = connect(&ctx, &slot0);
    let relayed = connect(&ctx, &slot1);
    assert_eq!(card_atr(&relayed), card_atr(&direct));
    assert_eq!(card_atr(&relayed), VICC_ATR);
    for apdu in [SELECT_MF, SELECT_5001, READ_BINARY] {
        assert_eq!(tx(&relayed, apdu), tx(&direct, apdu), "{apdu:02X?}");
    }
    assert_eq!(tx(&relayed, READ_BINARY), with_sw(HELLO, OK));
    let challenge = tx(&relayed, GET_CHALLENGE);
    assert_eq!((challenge.len(), &challenge[8..]), (10, &OK[..]));
    let (apdu, want) = extended_echo(4096);
    assert!(
        tx(&relayed, &apdu) == want,
        "extended echo through the relay"
    );
    // The relay's -v trace.
    let out = wait_output(&relay, "< 48 65 6C 6C 6F");
    assert!(out.contains("> 00 B0 00 00 00"), "{out}");

    // The real card goes: the relay answers 6F 00.
    drop(direct);
    drop(card0);
    wait_card(&slot0, false, WAIT);
    assert_eq!(tx(&relayed, READ_BINARY), [0x6F, 0x00]);
    wait_output(&relay, "cannot transmit to the card");

    // It comes back: a reset of the relayed card connects to it again.
    let _card0 = vicc(dir, "slot0-again", &["-H", "127.0.0.1", "-P", &p0]);
    wait_card(&slot0, true, WAIT);
    let mut relayed = relayed;
    relayed
        .reconnect(ShareMode::Shared, Protocols::ANY, Disposition::ResetCard)
        .unwrap();
    read_hello(&relayed);

    drop(relayed);
    drop(relay);
    wait_card(&slot1, false, WAIT);
}

#[test]
fn vicc_relay_of_an_unknown_reader_fails_and_lists_the_readers() {
    let port = free_ports(1);
    let pcscd = Pcscd::start(&[Entry::device(NAME, &format!("/dev/null:{port}/slots=1"))]);
    let reader = reader_name(NAME, 0, 0);
    pcscd.wait_readers(std::slice::from_ref(&reader));
    let out = Command::new(VICC)
        .args(["--relay", "No Such Reader", "-P", &port.to_string()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("no PC/SC reader \"No Such Reader\""), "{err}");
    assert!(err.contains(&reader), "{err}");
    // Nothing connected to the slot.
    wait_card(&reader, false, Duration::from_secs(1));
}

#[test]
fn vicc_help_and_usage_errors() {
    let out = Command::new(VICC).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{help}");
    assert!(help.contains("--relay READER"), "{help}");
    assert!(help.contains("--list-readers"), "{help}");
    for bad in [
        &["--bogus"][..],
        &["-P", "70000"],
        &["--relay", "x", "--atr", "3B 00"],
    ] {
        let out = Command::new(VICC).args(bad).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{bad:?}: {err}");
        assert!(err.contains("--help"), "{bad:?}: {err}");
    }
}

#[test]
fn config_lists_the_slots_of_a_config_file_as_json() {
    let dir = temp_dir("tools");
    let lib = driver_path();
    let conf = dir.path().join("reader.conf");
    std::fs::write(
        &conf,
        format!(
            "FRIENDLYNAME \"Listening\"\nDEVICENAME /dev/null:20000/slots=3\nLIBPATH {lib}\n\n\
             FRIENDLYNAME \"Reversed\"\nDEVICENAME 127.0.0.1:21000/slots=1\nLIBPATH {lib}\n",
            lib = lib.display()
        ),
    )
    .unwrap();
    let out = Command::new(CONFIG)
        .arg("--config")
        .arg(&conf)
        .arg("--json")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let slots: Vec<serde_json::Value> = serde_json::from_str(&text).unwrap();
    let got: Vec<(&str, u64, u64, &str)> = slots
        .iter()
        .map(|s| {
            (
                s["reader"].as_str().unwrap(),
                s["slot"].as_u64().unwrap(),
                s["port"].as_u64().unwrap(),
                s["mode"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("Listening", 0, 20000, "listen"),
            ("Listening", 1, 20001, "listen"),
            ("Listening", 2, 20002, "listen"),
            ("Reversed", 0, 21000, "reversed"),
        ],
        "{text}"
    );
    assert_eq!(slots[3]["host"], "127.0.0.1", "{text}");
    assert_eq!(slots[3]["urls"], serde_json::json!([]), "{text}");
}

#[test]
fn config_describes_a_port_given_on_the_command_line() {
    let (ok, out) = run(Command::new(CONFIG).args(["--port", "40000", "--no-qr"]));
    assert!(ok, "{out}");
    assert!(out.contains("VPCD port:      40000\n"), "{out}");
    assert!(out.contains("VPCD port:      40001\n"), "{out}");
    // No QR code: no block characters.
    assert!(!out.contains('█') && !out.contains('▀'), "{out}");

    let out = Command::new(CONFIG).arg("--help").output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("--no-qr"));
    let out = Command::new(CONFIG).arg("--bogus").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn both_tools_share_help_version_and_usage_errors() {
    for (tool, name) in [(VICC, "vpcd-vicc"), (CONFIG, "vpcd-config")] {
        for flag in ["--help", "-h"] {
            let out = Command::new(tool).arg(flag).output().unwrap();
            let help = String::from_utf8_lossy(&out.stdout);
            assert!(out.status.success(), "{name} {flag}");
            for option in [
                "-H, --host HOST",
                "-P, --port PORT",
                "--listen ADDR",
                "-V, --version",
            ] {
                assert!(help.contains(option), "{name} {flag}: no {option}:\n{help}");
            }
        }
        for flag in ["--version", "-V"] {
            let out = Command::new(tool).arg(flag).output().unwrap();
            assert!(out.status.success(), "{name} {flag}");
            assert_eq!(
                String::from_utf8_lossy(&out.stdout).trim(),
                format!("{name} {}", env!("CARGO_PKG_VERSION"))
            );
        }
        let out = Command::new(tool)
            .args(["-P", "1", "--bogus"])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{name}: {err}");
        assert_eq!(
            err,
            format!(
                "{name}: invalid option '--bogus'\nTry '{name} --help' for more information.\n"
            )
        );
    }
}

/// The mixed file of the vpcd-config unit tests: five vpcd slots in four entries, and
/// an entry of another driver.
const MIXED_CONF: &str = include_str!("data/mixed-reader.conf");

#[test]
fn config_prints_json_for_a_config_file() {
    let dir = temp_dir("tools");
    let conf = dir.path().join("vpcd.conf");
    std::fs::write(&conf, MIXED_CONF).unwrap();
    let output = Command::new(CONFIG)
        .arg("--config")
        .arg(&conf)
        .arg("--json")
        .output()
        .unwrap();
    let stdout = String::from_utf8(output.stdout).unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let v: serde_json::Value = serde_json::from_str(&stdout).expect("JSON on stdout");
    let slots = v.as_array().unwrap();
    assert_eq!(slots.len(), 5, "{stdout}");

    for (i, s) in slots[..2].iter().enumerate() {
        assert_eq!(s["reader"], "Virtual PCD");
        assert_eq!(s["slot"], i);
        assert_eq!(s["port"], 35963 + i);
        assert_eq!(s["mode"], "listen");
        assert_eq!(s["listen"], "0.0.0.0");
        assert_eq!(s["config"], conf.to_str().unwrap());
        assert_eq!(s["line"], 2);
        // The addresses of whatever machine this runs on: IPv4, and a URL each.
        let addresses = s["addresses"].as_array().unwrap();
        let urls = s["urls"].as_array().unwrap();
        assert!(!addresses.is_empty());
        assert_eq!(addresses.len(), urls.len());
        for (a, u) in addresses.iter().zip(urls) {
            let a: IpAddr = a.as_str().unwrap().parse().unwrap();
            assert!(a.is_ipv4());
            assert_eq!(u.as_str().unwrap(), format!("vpcd://{a}:{}", 35963 + i));
        }
    }
    assert_eq!(slots[2]["reader"], "Loopback \\ reader");
    assert_eq!(slots[2]["addresses"], serde_json::json!(["127.0.0.1"]));
    assert_eq!(
        slots[2]["urls"],
        serde_json::json!(["vpcd://127.0.0.1:40000"])
    );
    assert_eq!(slots[3]["mode"], "reversed");
    assert_eq!(slots[3]["host"], "phone.local");
    assert_eq!(slots[3]["port"], 35970);
    assert_eq!(slots[3]["urls"], serde_json::json!([]));
    assert_eq!(slots[4]["reader"], "IPv6");
    assert_eq!(slots[4]["urls"], serde_json::json!(["vpcd://[::1]:41000"]));
    assert!(slots.iter().all(|s| s["reader"] != "Serial"));
}

/// The built-in card's echo command, extended case 4 (Lc = data, Le = 65536).
fn echo_apdu(data: &[u8]) -> Vec<u8> {
    let mut apdu = vec![
        0x80,
        0xEE,
        0x00,
        0x00,
        0x00,
        (data.len() >> 8) as u8,
        data.len() as u8,
    ];
    apdu.extend_from_slice(data);
    apdu.extend_from_slice(&[0x00, 0x00]);
    apdu
}
