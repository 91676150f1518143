//! A slot per test against the real thing: the private pcscd with the built driver,
//! the built-in card (vpcd-vicc), cards served from the test, PC/SC clients in this
//! process and in child processes. Needs a workspace build (`cargo build`).

use std::process::Command;
use std::time::Duration;

use vpcd_test::{transmit, Card, Slot, DEFAULT_ATR};

/// SELECT the built-in card's DF, its EF 5001, READ BINARY: its greeting.
fn read_greeting(card: &vpcd_test::pcsc::Card) -> Vec<u8> {
    let ok = |r: Vec<u8>| {
        assert_eq!(r[r.len() - 2..], [0x90, 0x00], "{r:02X?}");
        r[..r.len() - 2].to_vec()
    };
    ok(transmit(
        card,
        &[
            0x00, 0xA4, 0x04, 0x0C, 0x06, 0xF0, 0x76, 0x70, 0x63, 0x64, 0x01,
        ],
    )
    .unwrap());
    ok(transmit(card, &[0x00, 0xA4, 0x02, 0x0C, 0x02, 0x50, 0x01]).unwrap());
    ok(transmit(card, &[0x00, 0xB0, 0x00, 0x00, 0x00]).unwrap())
}

#[test]
fn the_builtin_card_works_and_comes_and_goes() {
    let mut slot = Slot::lease();
    assert!(
        slot.reader().starts_with("Virtual PCD 00 "),
        "{}",
        slot.reader()
    );
    assert_eq!(slot.addr().ip().to_string(), "127.0.0.1");
    slot.insert_builtin().unwrap();
    let card = slot.connect().unwrap();
    assert_eq!(read_greeting(&card), b"Hello from vpcd-vicc");
    drop(card);

    slot.remove_card().unwrap();
    assert!(slot.connect().is_err(), "no card after the removal");
    slot.insert_card().unwrap();
    let card = slot.connect().unwrap();
    assert_eq!(
        transmit(&card, &[0x80, 0xEE, 0x00, 0x00, 0x02, 0xCA, 0xFE]).unwrap(),
        [0xCA, 0xFE, 0x90, 0x00]
    );
}

#[test]
fn options_reach_the_builtin_card() {
    let mut slot = Slot::lease();
    slot.insert_builtin_with(&["--atr", "3B 80 80 01 01"])
        .unwrap();
    let card = slot.connect().unwrap();
    let mut names = [0u8; 256];
    let mut atr = [0u8; 64];
    let status = card.status2(&mut names, &mut atr).unwrap();
    assert_eq!(status.atr(), [0x3B, 0x80, 0x80, 0x01, 0x01]);
}

/// A card whose every answer is its slot's port, to tell the slots apart.
struct Whoami(u16);

impl Card for Whoami {
    fn atr(&mut self) -> Vec<u8> {
        DEFAULT_ATR.to_vec()
    }
    fn transmit(&mut self, _apdu: &[u8]) -> Vec<u8> {
        [&self.0.to_be_bytes()[..], &[0x90, 0x00]].concat()
    }
}

#[test]
fn leases_are_distinct_and_a_dropped_lease_frees_its_slot_empty() {
    let mut a = Slot::lease();
    let mut b = Slot::lease();
    assert_ne!(a.index(), b.index());
    assert_ne!(a.port(), b.port());
    a.serve(Whoami(a.port())).unwrap();
    b.serve(Whoami(b.port())).unwrap();
    for s in [&a, &b] {
        let card = s.connect().unwrap();
        let r = transmit(&card, &[0x00, 0x00, 0x00, 0x00]).unwrap();
        assert_eq!(r[..2], s.port().to_be_bytes(), "{}'s own card", s.reader());
    }
    // Dropping b takes its card out before the slot is free: whoever gets the slot
    // next finds it empty.
    let reader = b.reader().to_owned();
    drop(b);
    let ctx = a.context();
    let mut states = [vpcd_test::pcsc::ReaderState::new(
        std::ffi::CString::new(reader).unwrap(),
        vpcd_test::pcsc::State::UNAWARE,
    )];
    ctx.get_status_change(Duration::ZERO, &mut states).unwrap();
    assert!(states[0]
        .event_state()
        .contains(vpcd_test::pcsc::State::EMPTY));
}

#[test]
fn child_processes_are_clients_of_the_same_pcscd() {
    let mut slot = Slot::lease();
    slot.insert_builtin().unwrap();
    // opensc-tool, a client of its own, finds the card through the variables.
    let out = Command::new("opensc-tool")
        .args(["-r", slot.reader(), "-s", "80 EE 00 00 03 01 02 03"])
        .envs(slot.env_vars())
        .output()
        .expect("opensc-tool (Debian: opensc)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("SW1=0x90, SW2=0x00"), "{text}");
    assert!(text.contains("01 02 03"), "{text}");
}

#[test]
fn the_python_vicc_in_a_slot() {
    // vsmartcard's vicc connects to the slot's address; the lease ends it.
    let mut slot = Slot::lease();
    // In the environment's directory, which goes with the environment.
    let dir = slot.socket().parent().unwrap().join("pyshim");
    std::fs::create_dir_all(&dir).unwrap();
    let alias = dir.join("Crypto");
    if !alias.exists() {
        // Debian ships PyCryptodome as Cryptodome; the vicc imports Crypto.
        std::os::unix::fs::symlink("/usr/lib/python3/dist-packages/Cryptodome", &alias).unwrap();
    }
    let mut vicc = Command::new("/usr/bin/python3");
    vicc.args(["/usr/bin/vicc", "-t", "iso7816", "-H", "127.0.0.1", "-P"])
        .arg(slot.port().to_string())
        .env(
            "PYTHONPATH",
            format!(
                "{}:/usr/lib/python3/site-packages/virtualsmartcard",
                dir.display()
            ),
        );
    slot.spawn_vicc(vicc).unwrap();
    let card = slot.connect().unwrap();
    // SELECT the MF, GET CHALLENGE: eight bytes and 90 00.
    let r = transmit(&card, &[0x00, 0xA4, 0x00, 0x0C, 0x02, 0x3F, 0x00]).unwrap();
    assert_eq!(r, [0x90, 0x00]);
    let r = transmit(&card, &[0x00, 0x84, 0x00, 0x00, 0x08]).unwrap();
    assert_eq!((r.len(), &r[8..]), (10, &[0x90, 0x00][..]), "{r:02X?}");
    drop(card);
    slot.eject().unwrap();
}

/// A card that fails the way test code does.
struct Panicky;

impl Card for Panicky {
    fn atr(&mut self) -> Vec<u8> {
        DEFAULT_ATR.to_vec()
    }
    fn transmit(&mut self, apdu: &[u8]) -> Vec<u8> {
        assert_eq!(apdu[1], 0xA4, "only SELECT is implemented");
        vec![0x90, 0x00]
    }
}

#[test]
fn a_card_that_panics_fails_the_test_with_its_message() {
    let mut slot = Slot::lease();
    slot.serve(Panicky).unwrap();
    let card = slot.connect().unwrap();
    assert!(transmit(&card, &[0x00, 0xB0, 0x00, 0x00, 0x00]).is_err());
    drop(card);
    let e = slot.eject().unwrap_err().to_string();
    assert!(e.contains("only SELECT is implemented"), "{e}");
    assert!(e.contains("panicked in transmit(00 B0 00 00 00)"), "{e}");
}

#[test]
fn a_vicc_that_cannot_start_says_why() {
    let mut slot = Slot::lease();
    let mut bad = Command::new("/bin/sh");
    bad.args(["-c", "echo no such card >&2; exit 3"]);
    let e = slot.spawn_vicc(bad).unwrap_err().to_string();
    assert!(
        e.contains("exit status: 3") && e.contains("no such card"),
        "{e}"
    );
    // The slot is usable again at once.
    slot.insert_builtin().unwrap();
}
