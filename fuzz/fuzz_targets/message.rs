//! One vpcd payload as the card side and the reader side classify it:
//! `Message::parse`, `check_atr`, `check_reply`, and the frame prefix round trip.

use vpcd_protocol::vpcd::{
    self as protocol, check_atr, check_reply, AtrError, Control, Message, ProtocolError,
    HEADER_LEN, MAX_ATR_LEN, MAX_PAYLOAD,
};

fn run(payload: &[u8]) {
    match Message::parse(payload) {
        Ok(Message::Control(c)) => {
            assert_eq!(payload, [c as u8]);
            assert!(Control::ALL.contains(&c));
        }
        Ok(Message::Apdu(a)) => {
            assert!(a.len() >= 2);
            assert_eq!(a, payload);
        }
        Err(ProtocolError::Empty) => assert!(payload.is_empty()),
        Err(ProtocolError::UnknownControl(b)) => {
            assert_eq!(payload, [b]);
            assert!(!Control::ALL.iter().any(|c| *c as u8 == b));
        }
        Err(e) => panic!("Message::parse gave {e}"),
    }

    match check_atr(payload) {
        Ok(()) => {
            assert!(!payload.is_empty() && payload.len() <= MAX_ATR_LEN);
            assert!(payload[0] == 0x3B || payload[0] == 0x3F);
        }
        Err(ProtocolError::InvalidAtr(AtrError::Empty)) => assert!(payload.is_empty()),
        Err(ProtocolError::InvalidAtr(AtrError::TooLong(n))) => {
            assert_eq!(n, payload.len());
            assert!(n > MAX_ATR_LEN);
        }
        Err(ProtocolError::InvalidAtr(AtrError::BadTs(ts))) => {
            assert_eq!(ts, payload[0]);
            assert!(ts != 0x3B && ts != 0x3F);
            assert!(payload.len() <= MAX_ATR_LEN);
        }
        Err(e) => panic!("check_atr gave {e}"),
    }

    // A capacity taken from the input, as a hostile caller could pass.
    let capacity = payload
        .get(..4)
        .map_or(0, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize);
    match check_reply(payload.len(), capacity) {
        Ok(()) => assert!(payload.len() >= 2 && payload.len() <= capacity),
        Err(ProtocolError::ReplyTooShort(n)) => assert!(n < 2),
        Err(ProtocolError::ReplyTooLarge { len, capacity: c }) => {
            assert!(len > c && c == capacity)
        }
        Err(e) => panic!("check_reply gave {e}"),
    }

    // The prefix and a whole frame.
    match protocol::header(payload.len()) {
        Ok(h) => {
            assert_eq!(protocol::payload_len(h), payload.len());
            let mut out = Vec::new();
            protocol::encode(payload, &mut out).unwrap();
            assert_eq!(out.len(), HEADER_LEN + payload.len());
            assert_eq!(&out[HEADER_LEN..], payload);
        }
        Err(ProtocolError::TooLong(n)) => assert!(n > MAX_PAYLOAD),
        Err(e) => panic!("header gave {e}"),
    }
}

fn main() {
    afl::fuzz!(|data: &[u8]| run(data));
}
