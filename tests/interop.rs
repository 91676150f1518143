//! Interoperability: the reference Python vicc through our driver, seen by real
//! PC/SC clients (opensc-tool, pyscard).

use std::process::Command;
use std::time::Duration;

use vpcd_testing::*;

const NAME: &str = "Virtual PCD";
/// The ATR of the Python vicc's iso7816 card.
const PY_ATR: &str = "3b:95:13:81:01:80:73:ff:01:00:0b";

fn opensc_tool(reader: &str, args: &[&str]) -> String {
    let (ok, out) = run(Command::new("opensc-tool").args(["-r", reader]).args(args));
    assert!(ok, "opensc-tool {args:?} failed:\n{out}");
    out
}

#[test]
fn opensc_tool_talks_to_the_python_vicc_through_our_driver() {
    let port = free_ports(2);
    let pcscd = Pcscd::start(&[Entry::device(NAME, &format!("/dev/null:{port}"))]);
    let reader = reader_name(NAME, 0, 0);
    pcscd.wait_readers(&[reader.clone(), reader_name(NAME, 0, 1)]);
    let vicc = python_vicc(pcscd.dir(), &["-t", "iso7816", "-P", &port.to_string()]);
    wait_card(&reader, true, Duration::from_secs(10));

    let atr = opensc_tool(&reader, &["-a"]);
    assert!(
        atr.to_lowercase().contains(PY_ATR),
        "opensc-tool -a:\n{atr}\n{}",
        vicc.output()
    );

    let out = opensc_tool(&reader, &["-s", "00A4000C023F00", "-s", "0084000008"]);
    assert_eq!(out.matches("SW1=0x90, SW2=0x00").count(), 2, "{out}");
    // The challenge: opensc-tool's hex dump after the last status line.
    let challenge = out.rsplit("SW2=0x00").next().unwrap();
    let bytes = challenge
        .split_whitespace()
        .filter(|w| w.len() == 2 && u8::from_str_radix(w, 16).is_ok())
        .count();
    assert_eq!(bytes, 8, "{out}");
}

#[test]
fn pyscard_lists_and_uses_the_card() {
    let port = free_ports(2);
    let pcscd = Pcscd::start(&[Entry::device(NAME, &format!("/dev/null:{port}"))]);
    let reader = reader_name(NAME, 0, 1);
    pcscd.wait_readers(&[reader_name(NAME, 0, 0), reader.clone()]);
    let _vicc = python_vicc(
        pcscd.dir(),
        &["-t", "iso7816", "-P", &(port + 1).to_string()],
    );
    wait_card(&reader, true, Duration::from_secs(10));
    let script = format!(
        r#"
from smartcard.System import readers
r = [x for x in readers() if str(x) == "{reader}"][0]
c = r.createConnection()
c.connect()
print("ATR", " ".join("%02X" % b for b in c.getATR()))
data, sw1, sw2 = c.transmit([0x00, 0x84, 0x00, 0x00, 0x08])
print("CHALLENGE", len(data), "%02X%02X" % (sw1, sw2))
"#
    );
    let (ok, out) = run(Command::new("/usr/bin/python3").args(["-c", &script]));
    assert!(ok, "{out}");
    assert!(
        out.contains("ATR 3B 95 13 81 01 80 73 FF 01 00 0B"),
        "{out}"
    );
    assert!(out.contains("CHALLENGE 8 9000"), "{out}");
}

#[test]
fn reversed_mode_reaches_a_listening_python_vicc() {
    let port = free_ports(2);
    let dir = temp_dir("pyvicc");
    let _v0 = python_vicc(
        dir.path(),
        &["-t", "iso7816", "--reversed", "-P", &port.to_string()],
    );
    let pcscd = Pcscd::start(&[Entry::device(NAME, &format!("localhost:{port}"))]);
    let reader = reader_name(NAME, 0, 0);
    pcscd.wait_readers(&[reader.clone(), reader_name(NAME, 0, 1)]);
    wait_card(&reader, true, Duration::from_secs(10));
    let atr = opensc_tool(&reader, &["-a"]);
    assert!(atr.to_lowercase().contains(PY_ATR), "{atr}");
}

#[test]
fn pcsc_scan_and_opensc_tool_list_the_readers_and_the_card() {
    let port = free_ports(2);
    let pcscd = Pcscd::start(&[Entry::device(NAME, &format!("/dev/null:{port}"))]);
    let reader = reader_name(NAME, 0, 0);
    pcscd.wait_readers(&[reader.clone(), reader_name(NAME, 0, 1)]);
    let _vicc = Vicc::connect(port, Behaviour::Echo);
    wait_card(&reader, true, Duration::from_secs(5));

    let (ok, readers) = run(Command::new("pcsc_scan").arg("-r"));
    assert!(ok, "{readers}");
    assert!(
        readers.contains("0: Virtual PCD 00 00") && readers.contains("1: Virtual PCD 00 01"),
        "{readers}"
    );

    // pcsc_scan -c lists the card in each reader, with its ATR.
    let (_, cards) = run(Command::new("timeout").args(["5", "pcsc_scan", "-c"]));
    assert!(cards.contains("3B 80 80 01 01"), "{cards}");

    let (ok, listed) = run(Command::new("opensc-tool").arg("-l"));
    assert!(ok, "{listed}");
    assert!(
        listed.contains("Virtual PCD 00 00") && listed.contains("Virtual PCD 00 01"),
        "{listed}"
    );
}

#[test]
fn opensc_explorer_browses_the_built_in_card() {
    let port = free_ports(2);
    let pcscd = Pcscd::start(&[Entry::device(NAME, &format!("/dev/null:{port}"))]);
    let reader = reader_name(NAME, 0, 0);
    pcscd.wait_readers(&[reader.clone(), reader_name(NAME, 0, 1)]);
    let _card = Process::spawn(
        Command::new(tool("vpcd-vicc")).args(["-H", "127.0.0.1", "-P", &port.to_string()]),
        pcscd.dir().join("vicc.log"),
    );
    wait_card(&reader, true, Duration::from_secs(5));

    let script = pcscd.dir().join("explorer.txt");
    std::fs::write(&script, "cd 5000\ncat 5001\napdu 00 84 00 00 08\nquit\n").unwrap();
    let (_, out) = run(Command::new("opensc-explorer")
        .args(["-r", &reader])
        .stdin(std::fs::File::open(&script).unwrap()));
    assert!(out.contains("Hello from vpcd-"), "{out}");
    assert!(out.contains("Received (SW1=0x90, SW2=0x00)"), "{out}");
}
