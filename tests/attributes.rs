//! The attributes and controls real clients ask of a reader, read through a real pcscd
//! with the `pcsc` crate, with and without a card.

use std::ffi::CString;

use pcsc::{Attribute, Protocols, ShareMode};
use vpcd_testing::*;

const NAME: &str = "Attr PCD";

fn attr(card: &pcsc::Card, a: Attribute) -> Vec<u8> {
    card.get_attribute_owned(a)
        .unwrap_or_else(|e| panic!("{a:?}: {e}"))
}

fn dword(bytes: &[u8]) -> u32 {
    u32::from_le_bytes(bytes[..4].try_into().unwrap())
}

/// The TLV properties (part 10) as tag -> value.
fn tlv_properties(card: &pcsc::Card) -> std::collections::HashMap<u8, Vec<u8>> {
    let mut buf = [0u8; 256];
    let features = card
        .control(pcsc::ctl_code(3400), &[], &mut buf)
        .expect("feature request")
        .to_vec();
    let ioctl = features
        .chunks(6)
        .find(|f| f[0] == 0x12)
        .map(|f| u32::from_be_bytes(f[2..6].try_into().unwrap()))
        .expect("FEATURE_GET_TLV_PROPERTIES");
    let props = card
        .control(ioctl.into(), &[], &mut buf)
        .expect("TLV properties")
        .to_vec();
    let mut map = std::collections::HashMap::new();
    let mut rest = &props[..];
    while let [tag, len, tail @ ..] = rest {
        let (value, next) = tail.split_at(usize::from(*len));
        map.insert(*tag, value.to_vec());
        rest = next;
    }
    map
}

#[test]
fn attributes_and_controls_with_and_without_a_card() {
    let port = free_ports(2);
    let pcscd = Pcscd::start(&[Entry::device(NAME, &format!("/dev/null:{port}"))]);
    let reader = reader_name(NAME, 0, 1);
    pcscd.wait_readers(&[reader_name(NAME, 0, 0), reader.clone()]);
    let ctx = pcscd.context();
    let name = CString::new(reader.clone()).unwrap();

    // No card: a direct connection to the reader.
    let direct = ctx
        .connect(&name, ShareMode::Direct, Protocols::UNDEFINED)
        .expect("direct connection");
    assert_eq!(
        dword(&attr(&direct, Attribute::ChannelId)),
        0x00F0_0000 | u32::from(port + 1),
        "vendor channel type 0xF0, the slot's TCP port"
    );
    assert_eq!(attr(&direct, Attribute::IccPresence), [0]);
    assert_eq!(attr(&direct, Attribute::IccInterfaceStatus), [0]);
    assert_eq!(attr(&direct, Attribute::IccTypePerAtr), [0]);
    assert_eq!(dword(&attr(&direct, Attribute::CurrentProtocolType)), 0);
    let serial = attr(&direct, Attribute::VendorIfdSerialNo);
    assert_eq!(serial, format!("vpcd-{port}\0").as_bytes());
    let props = tlv_properties(&direct);
    assert_eq!(props[&0x0A], 65526u32.to_le_bytes(), "dwMaxAPDUDataSize");
    assert_eq!(props[&0x0B], 0x18d1u16.to_le_bytes(), "wIdVendor");
    assert_eq!(props[&0x0C], 0x4ee1u16.to_le_bytes(), "wIdProduct");
    assert_eq!(props[&0x09], [0], "bPPDUSupport");
    // Windows' SCARD_CTL_CODE(3400), as RDP passes it, gets the same feature list.
    let mut a = [0u8; 64];
    let mut b = [0u8; 64];
    assert_eq!(
        direct.control(0x0031_3520, &[], &mut a).unwrap(),
        direct.control(pcsc::ctl_code(3400), &[], &mut b).unwrap()
    );
    drop(direct);

    // With a card, powered, T=1 negotiated.
    let _vicc = Vicc::connect(port + 1, Behaviour::Echo);
    wait_card(&reader, true, std::time::Duration::from_secs(3));
    let card = connect(&ctx, &reader);
    assert_eq!(attr(&card, Attribute::IccPresence), [2]);
    assert_eq!(attr(&card, Attribute::IccInterfaceStatus), [1]);
    assert_eq!(attr(&card, Attribute::IccTypePerAtr), [1]);
    assert_eq!(
        dword(&attr(&card, Attribute::CurrentProtocolType)),
        2,
        "SCARD_PROTOCOL_T1 (TEST_ATR offers T=1)"
    );
    assert_eq!(attr(&card, Attribute::AtrString), TEST_ATR);
    assert_eq!(attr(&card, Attribute::VendorIfdSerialNo), serial, "stable");
    // Both slots of the reader share its serial number and have their own channel.
    assert!(!pcscd.log_text().contains("no room for more"));
}

/// Any local client may read any attribute id: pcscd passes SCardGetAttrib to the
/// driver unfiltered, and a SCARD_SHARE_DIRECT connection needs no card. Reading
/// TAG_IFD_POLLING_THREAD_KILLABLE (0x0FB1), which pcscd itself reads when it tears a
/// reader down, once froze the slot: a vicc connecting afterwards was never seen. The
/// disconnect that follows is the client's last, so pcscd calls the stop callback too.
#[test]
fn reading_the_polling_thread_capabilities_changes_nothing() {
    let port = free_ports(2);
    let pcscd = Pcscd::start(&[Entry::device(NAME, &format!("/dev/null:{port}"))]);
    let reader = reader_name(NAME, 0, 0);
    pcscd.wait_readers(&[reader.clone(), reader_name(NAME, 0, 1)]);
    // pyscard's raw API: the `pcsc` crate only reads the attributes it names.
    let script = format!(
        r#"
from smartcard.scard import *
rv, ctx = SCardEstablishContext(SCARD_SCOPE_USER)
assert rv == 0, rv
rv, card, _ = SCardConnect(ctx, "{reader}", SCARD_SHARE_DIRECT, 0)
assert rv == 0, SCardGetErrorMessage(rv)
for tag in (0x0FB1, 0x0FB2, 0x0FB3, 0x0FAD):
    rv, value = SCardGetAttrib(card, tag)
    print("ATTR %04X %s %d" % (tag, "ok" if rv == 0 else SCardGetErrorMessage(rv), len(value)))
assert SCardDisconnect(card, SCARD_LEAVE_CARD) == 0
assert SCardReleaseContext(ctx) == 0
"#
    );
    let (ok, out) = run(std::process::Command::new("/usr/bin/python3").args(["-c", &script]));
    assert!(ok, "{out}");
    assert!(out.contains("ATTR 0FB1 ok 1"), "KILLABLE answered: {out}");

    let ctx = pcscd.context();
    let _vicc = Vicc::connect(port, Behaviour::Echo);
    wait_card(&reader, true, std::time::Duration::from_secs(5));
    let card = connect(&ctx, &reader);
    assert_eq!(attr(&card, Attribute::AtrString), TEST_ATR);
}
