//! Power cycles of an idle card: how often pcscd powers a card down and up again, and
//! how often the driver asks the vicc for its ATR, while nobody uses the card. A phone
//! relaying a contactless card turns each power cycle into a cold reset of that card.

use std::ffi::CString;
use std::time::Duration;

use pcsc::{Context, Disposition, Protocols, ShareMode};
use vpcd_testing::Vicc;

/// What a vicc received during one window.
#[derive(Debug, Clone, Copy, Default)]
pub struct Controls {
    pub power_off: u32,
    pub power_on: u32,
    pub reset: u32,
    pub get_atr: u32,
}

impl Controls {
    fn of(vicc: &Vicc) -> Controls {
        Controls {
            power_off: vicc.control_count(0),
            power_on: vicc.control_count(1),
            reset: vicc.control_count(2),
            get_atr: vicc.control_count(4),
        }
    }

    fn since(self, before: Controls) -> Controls {
        Controls {
            power_off: self.power_off - before.power_off,
            power_on: self.power_on - before.power_on,
            reset: self.reset - before.reset,
            get_atr: self.get_atr - before.get_atr,
        }
    }

    pub fn cell(&self) -> String {
        format!(
            "{} / {} / {} / {}",
            self.power_off, self.power_on, self.reset, self.get_atr
        )
    }
}

/// The controls each of `cards` (reader, its vicc) received while a client held the
/// card connected but unused for `held`, then, after one APDU and SCardDisconnect
/// (LEAVE_CARD), while nobody used it for `released`. The cards are watched at once.
pub fn idle_power_cycles(
    cards: &[(&str, &Vicc)],
    held: Duration,
    released: Duration,
) -> Vec<(Controls, Controls)> {
    let ctx = Context::establish(pcsc::Scope::User).expect("context");
    let handles: Vec<_> = cards
        .iter()
        .map(|(reader, vicc)| {
            let name = CString::new(*reader).unwrap();
            let before = Controls::of(vicc);
            let card = ctx
                .connect(&name, ShareMode::Shared, Protocols::ANY)
                .expect("connect");
            (card, before)
        })
        .collect();
    std::thread::sleep(held);
    let mut out = vec![];
    let mut releases = vec![];
    for ((card, before), (_, vicc)) in handles.into_iter().zip(cards) {
        let in_use = Controls::of(vicc).since(before);
        let mut buf = [0u8; 258];
        card.transmit(&[0x80, 0xEE, 0x00, 0x00, 0x00], &mut buf)
            .expect("APDU");
        card.disconnect(Disposition::LeaveCard)
            .map_err(|(_, e)| e)
            .expect("disconnect");
        out.push(in_use);
        releases.push(Controls::of(vicc));
    }
    std::thread::sleep(released);
    out.into_iter()
        .zip(releases)
        .zip(cards)
        .map(|((in_use, at_release), (_, vicc))| (in_use, Controls::of(vicc).since(at_release)))
        .collect()
}
