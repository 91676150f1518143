//! The VSCard decoder fed a byte stream in arbitrary pieces, every message decoded.
//!
//! Input: one byte that seeds the chunking, then the stream. Checks that the decoder
//! never panics and never holds a message over its bound, that the chunking does not
//! change what comes out, that a stream error is final (TooLong) and that every
//! message that decodes encodes back to the same header and payload (for the message
//! kinds whose encoding is canonical).

use vpcd_protocol::vscard::{decode, encode, CodecError, Decoder, Header, Message, MAX_PAYLOAD};

type Outcome = (Vec<(Header, Vec<u8>)>, Option<CodecError>);

fn decode_all(stream: &[u8], chunk: usize) -> Outcome {
    let mut decoder = Decoder::new();
    let mut messages = vec![];
    for piece in stream.chunks(chunk.max(1)) {
        decoder.feed(piece);
        loop {
            match decoder.next_message() {
                Ok(Some((header, payload))) => {
                    assert!(payload.len() <= MAX_PAYLOAD);
                    assert_eq!(payload.len() as u64, u64::from(header.length));
                    messages.push((header, payload.to_vec()));
                }
                Ok(None) => break,
                Err(e) => return (messages, Some(e)),
            }
        }
    }
    (messages, None)
}

fn check_message(header: &Header, payload: &[u8]) {
    let Ok(message) = decode(header, payload) else {
        return;
    };
    let canonical = match &message {
        // Body-less messages may carry ignored bytes; an Error may too.
        Message::ReaderRemove
        | Message::CardRemove
        | Message::Flush
        | Message::FlushComplete
        | Message::Error(_) => payload.len() == message_len(&message),
        Message::Init { capabilities, .. } => {
            !capabilities.is_empty() && payload.len() <= 8 + 4 * 64
        }
        _ => true,
    };
    let mut out = vec![];
    encode(header.reader_id, &message, &mut out).expect("a decoded message encodes");
    if canonical {
        assert_eq!(&out[..12], &header.to_bytes()[..]);
        assert_eq!(&out[12..], payload);
    }
}

fn message_len(message: &Message<'_>) -> usize {
    match message {
        Message::Error(_) => 4,
        _ => 0,
    }
}

fn main() {
    afl::fuzz!(|data: &[u8]| {
        let [seed, stream @ ..] = data else {
            return;
        };
        let whole = decode_all(stream, stream.len().max(1));
        let pieces = decode_all(stream, usize::from(*seed % 64) + 1);
        assert_eq!(whole, pieces, "chunking changed the outcome");
        if let Some(e) = &whole.1 {
            // Framing fails only on a length past the bound, and that is final.
            assert!(matches!(e, CodecError::TooLong(_)) && !e.keeps_stream());
        }
        for (header, payload) in &whole.0 {
            check_message(header, payload);
        }
    });
}
