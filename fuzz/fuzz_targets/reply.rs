//! The reader side's reply reader (`plan_reply`) over any byte stream.
//!
//! Input: two bytes of buffer capacity, one byte for the size of the first read, then
//! the stream. The target reads the way the driver's slot does (a first read that
//! takes the prefix and at most `capacity` payload bytes, then what the plan says) and
//! checks that it never reads past the frame or the buffer, that a taken reply is the
//! frame's payload exactly, and that a refusal leaves the stream at the next frame.

use vpcd_protocol::vpcd::{plan_reply, ProtocolError, ReplyError, HEADER_LEN, MAX_PAYLOAD};

fn run(data: &[u8]) {
    let [c0, c1, first, stream @ ..] = data else {
        return;
    };
    let capacity = usize::from(u16::from_be_bytes([*c0, *c1]));
    if stream.len() < HEADER_LEN {
        return;
    }
    let prefix = [stream[0], stream[1]];
    let len = usize::from(u16::from_be_bytes(prefix));
    let first = (usize::from(*first) + HEADER_LEN)
        .min(stream.len())
        .min(HEADER_LEN + capacity);
    let received = first - HEADER_LEN;
    match plan_reply(prefix, received, capacity) {
        Ok(plan) => {
            assert_eq!(plan.len, len);
            assert!(plan.len > 0 && plan.len <= capacity && plan.len <= MAX_PAYLOAD);
            assert_eq!(received + plan.remaining, len);
            // What the driver copies is the payload, nothing of the next frame.
            if let Some(payload) = stream.get(HEADER_LEN..HEADER_LEN + plan.len) {
                assert_eq!(payload.len(), len);
            }
        }
        Err(ReplyError::OutOfStep { len: l, extra }) => {
            assert_eq!(l, len);
            assert!(extra > 0);
            assert_eq!(received, len + extra);
        }
        Err(ReplyError::Refused { error, discard }) => {
            assert_eq!(received + discard, len, "the stream stays in step");
            match error {
                ProtocolError::Empty => assert_eq!(len, 0),
                ProtocolError::ReplyTooLarge {
                    len: l,
                    capacity: c,
                } => {
                    assert_eq!((l, c), (len, capacity));
                    assert!(len > capacity);
                }
                other => panic!("unexpected refusal {other:?}"),
            }
        }
    }
}

fn main() {
    afl::fuzz!(|data: &[u8]| run(data));
}
