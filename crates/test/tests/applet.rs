//! A card implemented in the test through the `Card` trait: a small counter applet
//! with a PIN, seen through pcscd like any card (SELECT by AID, VERIFY, a counter in
//! non-volatile memory, a security state that a reset or a power cycle clears).

use std::sync::{Arc, Mutex};

use vpcd_test::pcsc::{Disposition, Protocols, ShareMode};
use vpcd_test::{transmit, Card, Slot, DEFAULT_ATR};

const AID: [u8; 6] = [0xF0, 0x00, 0x00, 0x0C, 0x0A, 0x01];
const PIN: &[u8] = b"2468";

/// What the reader did to the card, in order.
type Events = Arc<Mutex<Vec<&'static str>>>;

struct Counter {
    // Volatile: gone with the power.
    selected: bool,
    verified: bool,
    // Non-volatile.
    count: u32,
    tries: u8,
    events: Events,
}

impl Counter {
    fn new(events: Events) -> Counter {
        Counter {
            selected: false,
            verified: false,
            count: 0,
            tries: 3,
            events,
        }
    }

    fn volatile_reset(&mut self, why: &'static str) {
        self.selected = false;
        self.verified = false;
        self.events.lock().unwrap().push(why);
    }
}

impl Card for Counter {
    fn atr(&mut self) -> Vec<u8> {
        DEFAULT_ATR.to_vec()
    }
    fn power_on(&mut self) {
        self.volatile_reset("power on");
    }
    fn power_off(&mut self) {
        self.volatile_reset("power off");
    }
    fn reset(&mut self) {
        self.volatile_reset("reset");
    }
    fn transmit(&mut self, apdu: &[u8]) -> Vec<u8> {
        match apdu {
            [0x00, 0xA4, 0x04, _, lc, data @ ..] => {
                self.selected = data.get(..usize::from(*lc)) == Some(&AID[..]);
                if self.selected {
                    vec![0x90, 0x00]
                } else {
                    vec![0x6A, 0x82]
                }
            }
            _ if !self.selected => vec![0x69, 0x86],
            [0x00, 0x20, 0x00, 0x81, lc, pin @ ..] if usize::from(*lc) == pin.len() => {
                if self.tries == 0 {
                    vec![0x69, 0x83]
                } else if pin == PIN {
                    self.tries = 3;
                    self.verified = true;
                    vec![0x90, 0x00]
                } else {
                    self.tries -= 1;
                    vec![0x63, 0xC0 | self.tries]
                }
            }
            // INCREMENT: needs the PIN.
            [0x80, 0x10, 0x00, 0x00] if self.verified => {
                self.count += 1;
                vec![0x90, 0x00]
            }
            [0x80, 0x10, 0x00, 0x00] => vec![0x69, 0x82],
            // READ: four bytes, big-endian.
            [0x80, 0x12, 0x00, 0x00, 0x04] => {
                [&self.count.to_be_bytes()[..], &[0x90, 0x00]].concat()
            }
            _ => vec![0x6D, 0x00],
        }
    }
}

fn select(apdu_aid: &[u8]) -> Vec<u8> {
    [
        &[0x00, 0xA4, 0x04, 0x00, apdu_aid.len() as u8][..],
        apdu_aid,
    ]
    .concat()
}

const INCREMENT: [u8; 4] = [0x80, 0x10, 0x00, 0x00];
const READ: [u8; 5] = [0x80, 0x12, 0x00, 0x00, 0x04];

fn verify(pin: &[u8]) -> Vec<u8> {
    [&[0x00, 0x20, 0x00, 0x81, pin.len() as u8][..], pin].concat()
}

#[test]
fn the_applet_through_pcscd() {
    let events = Events::default();
    let mut slot = Slot::lease();
    slot.serve(Counter::new(events.clone())).unwrap();
    let card = slot.connect().unwrap();

    assert_eq!(
        transmit(&card, &READ).unwrap(),
        [0x69, 0x86],
        "nothing selected"
    );
    assert_eq!(
        transmit(&card, &select(&[0xA0, 0x00])).unwrap(),
        [0x6A, 0x82]
    );
    assert_eq!(transmit(&card, &select(&AID)).unwrap(), [0x90, 0x00]);
    assert_eq!(
        transmit(&card, &INCREMENT).unwrap(),
        [0x69, 0x82],
        "PIN first"
    );
    assert_eq!(transmit(&card, &verify(b"1111")).unwrap(), [0x63, 0xC2]);
    assert_eq!(transmit(&card, &verify(PIN)).unwrap(), [0x90, 0x00]);
    for _ in 0..3 {
        assert_eq!(transmit(&card, &INCREMENT).unwrap(), [0x90, 0x00]);
    }
    assert_eq!(transmit(&card, &READ).unwrap(), [0, 0, 0, 3, 0x90, 0x00]);

    // A warm reset clears the security state and the selection, not the counter.
    let mut card = card;
    card.reconnect(ShareMode::Shared, Protocols::ANY, Disposition::ResetCard)
        .unwrap();
    assert_eq!(transmit(&card, &select(&AID)).unwrap(), [0x90, 0x00]);
    assert_eq!(transmit(&card, &INCREMENT).unwrap(), [0x69, 0x82]);
    assert_eq!(transmit(&card, &READ).unwrap(), [0, 0, 0, 3, 0x90, 0x00]);
    drop(card);

    // Pulled out and put back: the same card, powered anew.
    slot.remove_card().unwrap();
    slot.insert_card().unwrap();
    let card = slot.connect().unwrap();
    assert_eq!(transmit(&card, &select(&AID)).unwrap(), [0x90, 0x00]);
    assert_eq!(transmit(&card, &READ).unwrap(), [0, 0, 0, 3, 0x90, 0x00]);
    drop(card);

    let seen = events.lock().unwrap().clone();
    assert!(seen.contains(&"power on"), "{seen:?}");
    // SCardReconnect(RESET) is a reset or a power cycle, as the driver maps it.
    assert!(
        seen.contains(&"reset") || seen.contains(&"power off"),
        "{seen:?}"
    );
}

#[test]
fn sixteen_applets_each_in_its_own_slot() {
    // Every lease serves its own counter; none sees another's count.
    std::thread::scope(|s| {
        for t in 0..16u32 {
            s.spawn(move || {
                let mut slot = Slot::lease();
                slot.serve(Counter::new(Events::default())).unwrap();
                let card = slot.connect().unwrap();
                transmit(&card, &select(&AID)).unwrap();
                assert_eq!(transmit(&card, &verify(PIN)).unwrap(), [0x90, 0x00]);
                for _ in 0..t {
                    assert_eq!(transmit(&card, &INCREMENT).unwrap(), [0x90, 0x00]);
                }
                let r = transmit(&card, &READ).unwrap();
                assert_eq!(r, [&t.to_be_bytes()[..], &[0x90, 0x00]].concat());
            });
        }
    });
}
