//! The two recipes of docs/TEST-FRAMEWORKS.md for cards built on the `vpicc` crate
//! (Nitrokey's opcard-rs and piv-authenticator run their cards this way), proven with
//! a small vpicc card: wrapped as a `vpcd_test::Card` (no thread of your own, removal
//! and insertion, panics reported), or vpicc's own connection to the slot's address.

use std::net::{Shutdown, TcpStream};

use vpcd_test::{transmit, Card, Slot, CARD_WAIT};

/// A card as vpicc users write one.
struct Greeter {
    powered: bool,
}

impl vpicc::VSmartCard for Greeter {
    fn power_on(&mut self) {
        self.powered = true;
    }
    fn power_off(&mut self) {
        self.powered = false;
    }
    fn execute(&mut self, apdu: &[u8]) -> Vec<u8> {
        match apdu {
            [0x00, 0xCA, ..] if self.powered => b"hi\x90\x00".to_vec(),
            _ => vec![0x6D, 0x00],
        }
    }
}

/// Recipe 1: the adapter, four lines a project writes once.
struct Vpicc<C>(C);

impl<C: vpicc::VSmartCard + Send + 'static> Card for Vpicc<C> {
    fn atr(&mut self) -> Vec<u8> {
        self.0.atr().to_vec()
    }
    fn power_on(&mut self) {
        self.0.power_on()
    }
    fn power_off(&mut self) {
        self.0.power_off()
    }
    fn reset(&mut self) {
        self.0.reset()
    }
    fn transmit(&mut self, apdu: &[u8]) -> Vec<u8> {
        self.0.execute(apdu)
    }
}

#[test]
fn a_vpicc_card_through_the_adapter() {
    let mut slot = Slot::lease();
    slot.serve(Vpicc(Greeter { powered: false })).unwrap();
    let card = slot.connect().unwrap();
    assert_eq!(
        transmit(&card, &[0x00, 0xCA, 0x00, 0x00, 0x00]).unwrap(),
        b"hi\x90\x00"
    );
    drop(card);
    slot.remove_card().unwrap();
    slot.insert_card().unwrap();
}

#[test]
fn vpiccs_own_connection_to_the_slot() {
    // Recipe 2: vpicc connects to the slot's address (not its default
    // localhost:35963); the test keeps a handle on the socket to end the card.
    let slot = Slot::lease();
    let stream = TcpStream::connect(slot.addr()).unwrap();
    let stop = stream.try_clone().unwrap();
    let card_thread = std::thread::spawn(move || {
        let mut card = Greeter { powered: false };
        vpicc::Connection::from(stream).run(&mut card)
    });
    slot.wait_present(CARD_WAIT).unwrap();
    let card = slot.connect().unwrap();
    assert_eq!(
        transmit(&card, &[0x00, 0xCA, 0x00, 0x00, 0x00]).unwrap(),
        b"hi\x90\x00"
    );
    drop(card);
    // The card leaves when its connection closes; the lease then frees the slot.
    stop.shutdown(Shutdown::Both).unwrap();
    assert!(
        card_thread.join().unwrap().is_err(),
        "run() ends with the socket"
    );
    slot.wait_absent(CARD_WAIT).unwrap();
}
