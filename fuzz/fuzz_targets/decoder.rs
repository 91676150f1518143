//! The vpcd frame decoder fed a byte stream in arbitrary pieces.
//!
//! Input: one byte that seeds the chunking, then the stream. Checks that the decoder
//! never panics, never returns a frame over the 65535-byte limit, that the frames it
//! returns re-encode to exactly the bytes it consumed, that the chunking does not
//! change the result, and that every frame is classified (`Message::parse`,
//! `check_atr`, `check_reply`) by the protocol's rules.

use vpcd_protocol::vpcd::{
    self as protocol, check_atr, check_reply, Control, Decoder, Message, ProtocolError, HEADER_LEN,
    MAX_ATR_LEN, MAX_PAYLOAD,
};

fn check_frame(frame: &[u8]) {
    assert!(frame.len() <= MAX_PAYLOAD);
    match Message::parse(frame) {
        Ok(Message::Control(c)) => {
            assert_eq!(frame, [c as u8]);
            assert_eq!(Control::from_byte(c as u8), Some(c));
            assert_eq!(c.frame(), [0, 1, c as u8]);
        }
        Ok(Message::Apdu(a)) => {
            assert!(a.len() >= 2);
            assert_eq!(a, frame);
        }
        Err(ProtocolError::Empty) => assert!(frame.is_empty()),
        Err(ProtocolError::UnknownControl(b)) => {
            assert_eq!(frame, [b]);
            assert_eq!(Control::from_byte(b), None);
        }
        Err(e) => panic!("Message::parse gave {e}"),
    }
    let atr_ok = matches!(frame.first(), Some(0x3B | 0x3F)) && frame.len() <= MAX_ATR_LEN;
    assert_eq!(check_atr(frame).is_ok(), atr_ok);
    if let Err(e) = check_atr(frame) {
        let _ = e.to_string();
    }
    for capacity in [0, 1, 2, MAX_ATR_LEN, frame.len(), MAX_PAYLOAD + 13] {
        let ok = frame.len() >= 2 && frame.len() <= capacity;
        assert_eq!(check_reply(frame.len(), capacity).is_ok(), ok);
    }
}

fn run(data: &[u8]) {
    let Some((&seed, stream)) = data.split_first() else {
        return;
    };
    // Chunked: piece sizes from a small generator seeded by the first byte.
    let mut chunked = Decoder::new();
    let mut frames = Vec::new();
    let mut x = u32::from(seed) | 0x100;
    let mut rest = stream;
    while !rest.is_empty() {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        let n = match seed % 4 {
            0 => 1,
            1 => 1 + (x as usize % 3),
            2 => 1 + (x as usize % 64),
            _ => rest.len(),
        }
        .min(rest.len());
        let (piece, tail) = rest.split_at(n);
        chunked.feed(piece);
        while let Some(frame) = chunked.next_frame() {
            frames.push(frame);
        }
        rest = tail;
    }
    // The frames re-encode to exactly the consumed prefix of the stream.
    let mut wire = Vec::new();
    for frame in &frames {
        check_frame(frame);
        protocol::encode(frame, &mut wire).expect("a decoded frame always re-encodes");
    }
    assert_eq!(wire.len() + chunked.buffered(), stream.len());
    assert_eq!(&wire[..], &stream[..wire.len()]);
    // What is left is an incomplete frame.
    let left = &stream[wire.len()..];
    if left.len() >= HEADER_LEN {
        assert!(left.len() < HEADER_LEN + protocol::payload_len([left[0], left[1]]));
    }
    // Fed all at once, the decoder gives the same frames.
    let mut whole = Decoder::new();
    whole.feed(stream);
    for frame in &frames {
        assert_eq!(whole.next_frame().as_ref(), Some(frame));
    }
    assert_eq!(whole.next_frame(), None);
    assert_eq!(whole.buffered(), chunked.buffered());
}

fn main() {
    afl::fuzz!(|data: &[u8]| run(data));
}
