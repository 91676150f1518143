//! The virtual PIN pad (`pinpad=yes`, docs/PINPAD.md) through a real pcscd: a PC/SC
//! client sends PIN_VERIFY_STRUCTURE / PIN_MODIFY_STRUCTURE the way OpenSC's pcsc
//! reader code builds them (reader-pcsc.c, part10_build_verify_pin_block and
//! part10_build_modify_pin_block, for an ASCII PIN without padding) to the control
//! codes the reader's feature list names; `vpcd-vicc --pinpad` enters the PINs and its
//! built-in card checks them.

use std::collections::HashMap;
use std::process::Command;
use std::time::{Duration, Instant};

use vpcd_testing::*;

const NAME: &str = "Pinpad PCD";
const FEATURE_VERIFY_PIN_DIRECT: u8 = 0x06;
const FEATURE_MODIFY_PIN_DIRECT: u8 = 0x07;

/// A private pcscd with one pinpad=yes reader (`options` added), and a
/// `vpcd-vicc` started with `vicc_args` as its card.
struct Setup {
    _vicc: Process,
    vicc_log: std::path::PathBuf,
    reader: String,
    pcscd: Pcscd,
    _dir: tempfile::TempDir,
}

fn setup(options: &str, vicc_args: &[&str]) -> Setup {
    let port = free_ports(1);
    let pcscd = Pcscd::start(&[Entry::device(
        NAME,
        &format!("/dev/null:{port}/slots=1/listen=127.0.0.1{options}"),
    )]);
    let reader = reader_name(NAME, 0, 0);
    pcscd.wait_readers(std::slice::from_ref(&reader));
    let dir = temp_dir("pinpad");
    let log = dir.path().join("vicc.log");
    let vicc = Process::spawn(
        Command::new(tool("vpcd-vicc"))
            .args(["-H", "127.0.0.1", "-P", &port.to_string()])
            .args(vicc_args)
            .env_remove("VPCD_PIN"),
        log.clone(),
    );
    wait_card(&reader, true, Duration::from_secs(10));
    Setup {
        _vicc: vicc,
        vicc_log: log,
        reader,
        pcscd,
        _dir: dir,
    }
}

/// The features the reader lists: tag -> control code.
fn features(card: &pcsc::Card) -> HashMap<u8, u32> {
    let mut buf = [0u8; 256];
    let list = card
        .control(pcsc::ctl_code(3400), &[], &mut buf)
        .expect("feature request");
    list.chunks(6)
        .map(|f| (f[0], u32::from_be_bytes(f[2..6].try_into().unwrap())))
        .collect()
}

/// PIN_VERIFY_STRUCTURE, field by field as OpenSC fills it for an ASCII PIN of
/// `min`-`max` digits without padding: bmFormatString 0x02 (ASCII, units bits,
/// position 0), bmPINBlockString 0, bmPINLengthFormat 0, validation key, no messages,
/// and the case 3 VERIFY with Lc 0 (iso7816_build_pin_apdu with no PIN to pad).
fn verify_structure(timeout: u8, min: u8, max: u8) -> Vec<u8> {
    let apdu = [0x00, 0x20, 0x00, 0x81, 0x00];
    let mut s = vec![
        timeout, // bTimerOut
        timeout, // bTimerOut2
        0x02,    // bmFormatString
        0x00,    // bmPINBlockString
        0x00,    // bmPINLengthFormat
        max,     // wPINMaxExtraDigit, little-endian 0xXXYY: max
        min,     //   then min
        0x02,    // bEntryValidationCondition: validation key
        0x00,    // bNumberMessage
        0x00, 0x00, // wLangId
        0x00, // bMsgIndex
        0x00, 0x00, 0x00, // bTeoPrologue
    ];
    s.extend_from_slice(&(apdu.len() as u32).to_le_bytes()); // ulDataLength
    s.extend_from_slice(&apdu);
    s
}

/// PIN_MODIFY_STRUCTURE as OpenSC fills it for CHANGE REFERENCE DATA of an ASCII PIN
/// without padding: both insertion offsets 0 (pin1.offset - 5, pin2.offset - 5),
/// bConfirmPIN 0x03 (current PIN, new PIN, confirmation), message indexes 0, 1, 2.
fn modify_structure(timeout: u8, min: u8, max: u8) -> Vec<u8> {
    let apdu = [0x00, 0x24, 0x00, 0x81, 0x00];
    let mut s = vec![
        timeout, timeout, 0x02, 0x00, 0x00, // timers and formats
        0x00, 0x00, // bInsertionOffsetOld, bInsertionOffsetNew
        max, min,  // wPINMaxExtraDigit
        0x03, // bConfirmPIN
        0x02, // bEntryValidationCondition
        0x00, // bNumberMessage
        0x00, 0x00, // wLangId
        0x00, 0x01, 0x02, // bMsgIndex1-3
        0x00, 0x00, 0x00, // bTeoPrologue
    ];
    s.extend_from_slice(&(apdu.len() as u32).to_le_bytes());
    s.extend_from_slice(&apdu);
    s
}

fn pin_control(card: &pcsc::Card, ioctl: u32, structure: &[u8]) -> Result<Vec<u8>, pcsc::Error> {
    let mut buf = [0u8; 258];
    card.control(ioctl.into(), structure, &mut buf)
        .map(<[u8]>::to_vec)
}

/// VERIFY without data: the PIN's status on the card (63 Cx: x tries left).
fn pin_status(card: &pcsc::Card) -> Vec<u8> {
    transmit(card, &[0x00, 0x20, 0x00, 0x81]).unwrap()
}

#[test]
fn verify_right_and_wrong_pin() {
    let s = setup(
        "/pinpad=yes",
        &["--pinpad", "--pin-entry", "123456,111111,123456"],
    );
    let ctx = s.pcscd.context();
    let card = connect(&ctx, &s.reader);
    let f = features(&card);
    let verify = f[&FEATURE_VERIFY_PIN_DIRECT];
    assert!(f.contains_key(&FEATURE_MODIFY_PIN_DIRECT), "{f:?}");
    assert_eq!(pin_status(&card), [0x63, 0xC3]);
    assert_eq!(
        pin_control(&card, verify, &verify_structure(30, 4, 8)).unwrap(),
        [0x90, 0x00]
    );
    assert_eq!(pin_status(&card), [0x90, 0x00]);
    assert_eq!(
        pin_control(&card, verify, &verify_structure(30, 4, 8)).unwrap(),
        [0x63, 0xC2]
    );
    assert_eq!(pin_status(&card), [0x63, 0xC2]);
    assert_eq!(
        pin_control(&card, verify, &verify_structure(30, 4, 8)).unwrap(),
        [0x90, 0x00]
    );
    assert_eq!(pin_status(&card), [0x90, 0x00]);
    // The TLV properties a PIN pad reports.
    let mut buf = [0u8; 256];
    let props = card
        .control(f[&0x12].into(), &[], &mut buf)
        .unwrap()
        .to_vec();
    let mut tlv = HashMap::new();
    let mut rest = &props[..];
    while let [tag, len, tail @ ..] = rest {
        let (value, next) = tail.split_at(usize::from(*len));
        tlv.insert(*tag, value.to_vec());
        rest = next;
    }
    assert_eq!(tlv[&0x01], [0, 0], "wLcdLayout: no display");
    assert_eq!(tlv[&0x02], [0x02], "bEntryValidationCondition");
    assert_eq!(tlv[&0x06], [1], "bMinPINSize");
    assert_eq!(tlv[&0x07], [16], "bMaxPINSize");
}

#[test]
fn modify_then_verify_with_the_new_pin() {
    let s = setup(
        "/pinpad=yes",
        &["--pinpad", "--pin-entry", "123456,24681357,24681357"],
    );
    let ctx = s.pcscd.context();
    let card = connect(&ctx, &s.reader);
    let f = features(&card);
    assert_eq!(
        pin_control(
            &card,
            f[&FEATURE_MODIFY_PIN_DIRECT],
            &modify_structure(30, 4, 8)
        )
        .unwrap(),
        [0x90, 0x00]
    );
    // The old PIN no longer works; the new one (the last entry, repeated) does.
    assert_eq!(
        transmit(&card, b"\x00\x20\x00\x81\x06123456").unwrap(),
        [0x63, 0xC2]
    );
    assert_eq!(
        pin_control(
            &card,
            f[&FEATURE_VERIFY_PIN_DIRECT],
            &verify_structure(30, 4, 8)
        )
        .unwrap(),
        [0x90, 0x00]
    );
}

#[test]
fn confirmation_that_differs_is_refused_by_the_pin_pad() {
    let s = setup(
        "/pinpad=yes",
        &["--pinpad", "--pin-entry", "123456,24681357,24681358"],
    );
    let ctx = s.pcscd.context();
    let card = connect(&ctx, &s.reader);
    let f = features(&card);
    assert_eq!(
        pin_control(
            &card,
            f[&FEATURE_MODIFY_PIN_DIRECT],
            &modify_structure(30, 4, 8)
        )
        .unwrap(),
        [0x64, 0x02]
    );
    assert_eq!(pin_status(&card), [0x63, 0xC3], "the card saw nothing");
}

#[test]
fn cancel_and_timeout() {
    let s = setup("/pinpad=yes", &["--pinpad", "--pin-entry", "cancel,never"]);
    let ctx = s.pcscd.context();
    let card = connect(&ctx, &s.reader);
    let verify = features(&card)[&FEATURE_VERIFY_PIN_DIRECT];
    assert_eq!(
        pin_control(&card, verify, &verify_structure(30, 4, 8)).unwrap(),
        [0x64, 0x01]
    );
    let start = Instant::now();
    assert_eq!(
        pin_control(&card, verify, &verify_structure(1, 4, 8)).unwrap(),
        [0x64, 0x00]
    );
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(10),
        "{took:?}"
    );
    // The card is still there and untouched.
    assert_eq!(pin_status(&card), [0x63, 0xC3]);
}

#[test]
fn malformed_structures_are_refused_and_never_reach_the_card() {
    // A keypad that would enter a wrong PIN: any structure that got through would
    // cost the card a try.
    let s = setup("/pinpad=yes", &["--pinpad", "-v", "--pin-entry", "111111"]);
    let ctx = s.pcscd.context();
    let card = connect(&ctx, &s.reader);
    let f = features(&card);
    let (verify, modify) = (f[&FEATURE_VERIFY_PIN_DIRECT], f[&FEATURE_MODIFY_PIN_DIRECT]);
    let good = verify_structure(30, 4, 8);
    let mut cases: Vec<(&str, u32, Vec<u8>)> = vec![
        ("empty", verify, vec![]),
        ("truncated header", verify, good[..10].to_vec()),
        ("truncated APDU", verify, good[..good.len() - 1].to_vec()),
        ("min > max", verify, verify_structure(30, 9, 8)),
        ("max 0", verify, verify_structure(30, 0, 0)),
        ("a verify structure to modify", modify, good.clone()),
    ];
    let mut long = good.clone();
    long[15] = 6; // ulDataLength one more than given
    cases.push(("ulDataLength too large", verify, long));
    let mut short = good.clone();
    short[15] = 4;
    cases.push(("ulDataLength too small", verify, short));
    let mut block = good.clone();
    block[3] = 0x08; // an 8-byte PIN block in a template without data
    cases.push(("PIN block past the template", verify, block));
    let mut format = good.clone();
    format[2] = 0x03; // reserved PIN format
    cases.push(("reserved format", verify, format));
    let mut offsets = modify_structure(30, 4, 8);
    offsets[6] = 9; // bInsertionOffsetNew past the data field
    cases.push(("offset past the template", modify, offsets));
    let mut confirm = modify_structure(30, 4, 8);
    confirm[9] = 0x07; // bConfirmPIN with the advanced bit
    cases.push(("unsupported bConfirmPIN", modify, confirm));
    let mut lc = verify_structure(30, 4, 8);
    lc[VERIFY_APDU_LC] = 3; // Lc says 3 data bytes, none follow
    cases.push(("Lc past the APDU", verify, lc));
    for (what, ioctl, structure) in &cases {
        assert_eq!(
            pin_control(&card, *ioctl, structure),
            Err(pcsc::Error::NotTransacted),
            "{what}"
        );
    }
    assert_eq!(pin_status(&card), [0x63, 0xC3], "retry counter unchanged");
    let log = std::fs::read_to_string(&s.vicc_log).unwrap();
    assert!(!log.contains("PIN entry"), "the keypad was asked:\n{log}");
}

/// Where the APDU's Lc sits in [`verify_structure`].
const VERIFY_APDU_LC: usize = 19 + 4;

#[test]
fn legacy_vicc_gets_no_pin_pad_and_nothing_new() {
    let port = free_ports(1);
    let pcscd = Pcscd::start(&[Entry::device(
        NAME,
        &format!("/dev/null:{port}/slots=1/listen=127.0.0.1/pinpad=yes"),
    )]);
    let reader = reader_name(NAME, 0, 0);
    pcscd.wait_readers(std::slice::from_ref(&reader));
    let vicc = Vicc::connect(port, Behaviour::Echo);
    let ctx = pcscd.context();
    wait_card(&reader, true, Duration::from_secs(10));
    let card = connect(&ctx, &reader);
    let f = features(&card);
    assert!(!f.contains_key(&FEATURE_VERIFY_PIN_DIRECT), "{f:?}");
    assert!(!f.contains_key(&FEATURE_MODIFY_PIN_DIRECT), "{f:?}");
    // The control code a PIN pad would have: refused without a word to the vicc.
    assert_eq!(
        pin_control(&card, 0x4233_0006, &verify_structure(30, 4, 8)),
        Err(pcsc::Error::UnsupportedFeature)
    );
    assert!(pin_control(&card, 0x4233_0007, &modify_structure(30, 4, 8)).is_err());
    assert_eq!(
        transmit(&card, &[0x80, 0xEE, 0, 0, 1, 7]).unwrap(),
        [0x80, 0xEE, 0, 0, 1, 7, 0x90, 0x00]
    );
    assert_eq!(
        vicc.apdus.load(std::sync::atomic::Ordering::Relaxed),
        1,
        "the vicc received our one APDU and nothing else"
    );
}

#[test]
fn vpcd_vicc_without_pinpad_is_no_pin_pad() {
    let s = setup("/pinpad=yes", &[]);
    let card = connect(&s.pcscd.context(), &s.reader);
    assert!(!features(&card).contains_key(&FEATURE_VERIFY_PIN_DIRECT));
}

#[test]
fn a_reader_without_pinpad_takes_the_keypad_vicc_as_a_card() {
    let s = setup("", &["--pinpad", "--pin-entry", "123456"]);
    let card = connect(&s.pcscd.context(), &s.reader);
    assert!(!features(&card).contains_key(&FEATURE_VERIFY_PIN_DIRECT));
    assert!(pin_control(&card, 0x4233_0006, &verify_structure(30, 4, 8)).is_err());
    assert_eq!(pin_status(&card), [0x63, 0xC3]);
}

#[test]
fn opensc_tool_lists_the_pin_pad() {
    let s = setup("/pinpad=yes", &["--pinpad", "--pin-entry", "123456"]);
    let (ok, listed) = run(Command::new("opensc-tool").arg("-l"));
    assert!(ok, "opensc-tool -l:\n{listed}");
    let line = listed
        .lines()
        .find(|l| l.contains(&s.reader))
        .unwrap_or_else(|| panic!("{} not listed:\n{listed}", s.reader));
    assert!(line.contains("PIN pad"), "{listed}");
    eprintln!("opensc-tool -l:\n{listed}");
}
