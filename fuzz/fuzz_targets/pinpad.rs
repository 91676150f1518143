//! The PIN pad extension's readers and PC/SC part 10's structures: what a new peer
//! sends first (`read_probe_answer`), a PIN_VERIFY / PIN_MODIFY structure from a
//! PC/SC client (`PinCommand::parse_*`, `build_apdu`), and a vicc's PIN answer
//! (`PinAnswer::parse`).
//!
//! Input: one selector byte, then the bytes. The target checks that nothing panics,
//! that a probe refusal is final for every longer stream and a card's answer ends in a
//! valid ATR, that a structure that parses builds an APDU for every PIN length it
//! allows, with the template's header and a consistent Lc, and that a PIN answer's
//! PINs are what was asked for.

use vpcd_protocol::part10::{PinCommand, MAX_TEMPLATE_LEN};
use vpcd_protocol::pinpad::{
    read_probe_answer, PinAnswer, PinOperation, PinParams, ProbeAnswer, PROBE_ANSWER_MAX,
};
use vpcd_protocol::vpcd::check_atr;

fn probe(bytes: &[u8]) {
    let bytes = &bytes[..bytes.len().min(PROBE_ANSWER_MAX)];
    let whole = read_probe_answer(bytes);
    if let ProbeAnswer::Card { atr, .. } = &whole {
        assert!(check_atr(atr).is_ok());
        assert!(bytes.ends_with(atr));
    }
    for n in 0..bytes.len() {
        if let ProbeAnswer::Refused(_) = read_probe_answer(&bytes[..n]) {
            assert!(
                matches!(whole, ProbeAnswer::Refused(_)),
                "refusal at {n} not final"
            );
        }
    }
}

fn structure(bytes: &[u8], modify: bool) {
    let parsed = if modify {
        PinCommand::parse_modify(bytes)
    } else {
        PinCommand::parse_verify(bytes)
    };
    let Ok(command) = parsed else { return };
    assert!(command.min_digits >= 1 && command.min_digits <= command.max_digits);
    for n in command.min_digits..=command.max_digits {
        let pin = vec![b'9'; usize::from(n)];
        let pins = vec![&pin[..]; command.pin_count()];
        let apdu = command
            .build_apdu(&pins)
            .expect("a parsed structure always builds");
        assert_eq!(apdu[..4], command.template.header);
        assert!(apdu.len() <= MAX_TEMPLATE_LEN);
        if apdu.len() > 5 {
            let le = usize::from(command.template.le.is_some());
            assert_eq!(usize::from(apdu[4]), apdu.len() - 5 - le);
        }
    }
    let short = vec![b'1'; usize::from(command.min_digits) - 1];
    assert!(command
        .build_apdu(&vec![&short[..]; command.pin_count()])
        .is_err());
}

fn answer(bytes: &[u8]) {
    let [min, extra, current, rest @ ..] = bytes else {
        return;
    };
    let min = min % 16 + 1;
    let params = PinParams {
        version: 1,
        operation: PinOperation::Modify,
        current: current & 1 == 1,
        confirm: false,
        min_digits: min,
        max_digits: min.saturating_add(extra % 16),
        timeout_secs: 1,
        message: 0,
    };
    if let Ok(PinAnswer::Entered(pins)) = PinAnswer::parse(rest, &params) {
        assert_eq!(pins.len(), params.pin_count());
        for pin in pins {
            assert!(pin.len() >= usize::from(params.min_digits));
            assert!(pin.len() <= usize::from(params.max_digits));
            assert!(pin.iter().all(u8::is_ascii_digit));
        }
    }
}

fn run(data: &[u8]) {
    let Some((selector, bytes)) = data.split_first() else {
        return;
    };
    match selector % 4 {
        0 => probe(bytes),
        1 => structure(bytes, false),
        2 => structure(bytes, true),
        _ => answer(bytes),
    }
}

fn main() {
    afl::fuzz!(|data: &[u8]| run(data));
}
