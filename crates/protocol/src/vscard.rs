//! The VSCard wire protocol (QEMU's `ccid-card-passthru`, libcacard's
//! `vscard_common.h`) as a pure codec: no sockets, and no allocation larger than a
//! length it has checked.
//!
//! Every message is a 12-byte header, three `u32` in network byte order (type,
//! reader id, payload length), followed by the payload. The one field that is not in
//! network order is the Init magic: QEMU and libcacard put the four bytes `VSCD` on
//! the wire as they are (`VSCARD_MAGIC` is built to be those bytes in memory on
//! either endianness, and is sent without `htonl`).

use std::fmt;

/// Size of the message header.
pub const HEADER_LEN: usize = 12;

/// Largest payload we accept or send: an extended APDU with 64 KiB of data and its
/// header, Lc and Le (pcscd's 65548-byte buffer). QEMU caps a whole message at 64 KiB.
pub const MAX_PAYLOAD: usize = 65_548;

/// The Init magic, as its bytes go over the wire.
pub const MAGIC: [u8; 4] = *b"VSCD";

/// `VSCARD_VERSION`: `MAKE_VERSION(0, 0, 2)` (11 major, 11 middle, 10 minor bits).
pub const VERSION: u32 = 2;

/// The reader id of messages that concern no reader (Init, a refused ReaderAdd).
pub const UNDEFINED_READER_ID: u32 = 0xFFFF_FFFF;

/// The lowest reader id a host hands out.
pub const MINIMAL_READER_ID: u32 = 0;

/// Size of an Init payload with its one mandatory capability word.
pub const INIT_LEN: usize = 12;

/// Most capability words we keep from a peer's Init (the rest is ignored).
pub const MAX_CAPABILITIES: usize = 64;

/// `VSCMsgType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MsgType {
    Init = 1,
    Error = 2,
    ReaderAdd = 3,
    ReaderRemove = 4,
    Atr = 5,
    CardRemove = 6,
    Apdu = 7,
    Flush = 8,
    FlushComplete = 9,
}

impl MsgType {
    pub const ALL: [MsgType; 9] = [
        MsgType::Init,
        MsgType::Error,
        MsgType::ReaderAdd,
        MsgType::ReaderRemove,
        MsgType::Atr,
        MsgType::CardRemove,
        MsgType::Apdu,
        MsgType::Flush,
        MsgType::FlushComplete,
    ];

    pub fn from_u32(value: u32) -> Option<MsgType> {
        MsgType::ALL.into_iter().find(|t| *t as u32 == value)
    }
}

/// `VSCErrorCode`, the payload of an Error message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    Success,
    GeneralError,
    CannotAddMoreReaders,
    CardAlreadyInserted,
    /// A code this version of the protocol does not define.
    Other(u32),
}

impl ErrorCode {
    pub fn from_u32(code: u32) -> ErrorCode {
        match code {
            0 => ErrorCode::Success,
            1 => ErrorCode::GeneralError,
            2 => ErrorCode::CannotAddMoreReaders,
            3 => ErrorCode::CardAlreadyInserted,
            other => ErrorCode::Other(other),
        }
    }

    pub fn to_u32(self) -> u32 {
        match self {
            ErrorCode::Success => 0,
            ErrorCode::GeneralError => 1,
            ErrorCode::CannotAddMoreReaders => 2,
            ErrorCode::CardAlreadyInserted => 3,
            ErrorCode::Other(code) => code,
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ErrorCode::Success => write!(f, "VSC_SUCCESS"),
            ErrorCode::GeneralError => write!(f, "VSC_GENERAL_ERROR"),
            ErrorCode::CannotAddMoreReaders => write!(f, "VSC_CANNOT_ADD_MORE_READERS"),
            ErrorCode::CardAlreadyInserted => write!(f, "VSC_CARD_ALREADY_INSERTED"),
            ErrorCode::Other(code) => write!(f, "error code {code:#x}"),
        }
    }
}

/// A message header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// The message type as sent; not necessarily one we know.
    pub kind: u32,
    pub reader_id: u32,
    /// The payload length as announced; check it with [`Header::payload_len`].
    pub length: u32,
}

impl Header {
    pub fn parse(bytes: [u8; HEADER_LEN]) -> Header {
        let word =
            |i: usize| u32::from_be_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
        Header {
            kind: word(0),
            reader_id: word(4),
            length: word(8),
        }
    }

    pub fn to_bytes(self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[..4].copy_from_slice(&self.kind.to_be_bytes());
        out[4..8].copy_from_slice(&self.reader_id.to_be_bytes());
        out[8..].copy_from_slice(&self.length.to_be_bytes());
        out
    }

    /// The announced payload length, refused beyond [`MAX_PAYLOAD`] before anyone
    /// allocates for it.
    pub fn payload_len(&self) -> Result<usize, CodecError> {
        usize::try_from(self.length)
            .ok()
            .filter(|len| *len <= MAX_PAYLOAD)
            .ok_or(CodecError::TooLong(u64::from(self.length)))
    }
}

/// A decoded message body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message<'a> {
    /// Version and capabilities; the magic has been checked.
    Init {
        version: u32,
        capabilities: Vec<u32>,
    },
    Error(ErrorCode),
    /// The client-side name of the reader (UTF-8 by the spec; not checked).
    ReaderAdd {
        name: &'a [u8],
    },
    ReaderRemove,
    Atr(&'a [u8]),
    CardRemove,
    Apdu(&'a [u8]),
    Flush,
    FlushComplete,
}

impl Message<'_> {
    pub fn kind(&self) -> MsgType {
        match self {
            Message::Init { .. } => MsgType::Init,
            Message::Error(_) => MsgType::Error,
            Message::ReaderAdd { .. } => MsgType::ReaderAdd,
            Message::ReaderRemove => MsgType::ReaderRemove,
            Message::Atr(_) => MsgType::Atr,
            Message::CardRemove => MsgType::CardRemove,
            Message::Apdu(_) => MsgType::Apdu,
            Message::Flush => MsgType::Flush,
            Message::FlushComplete => MsgType::FlushComplete,
        }
    }

    /// Our own Init: the magic, [`VERSION`] and one capability word of 0 (none).
    pub fn host_init() -> Message<'static> {
        Message::Init {
            version: VERSION,
            capabilities: vec![0],
        }
    }
}

/// Why bytes are no valid VSCard message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CodecError {
    /// A payload longer than [`MAX_PAYLOAD`]: the stream cannot be trusted any more.
    TooLong(u64),
    /// A message type the protocol does not define; the framing is intact.
    UnknownType(u32),
    /// A payload too short for its message type.
    TooShort {
        kind: MsgType,
        len: usize,
        min: usize,
    },
    /// An Init whose magic is not `VSCD`: the peer does not speak VSCard.
    BadMagic([u8; 4]),
    /// An Init whose capability array is not whole 32-bit words.
    RaggedCapabilities(usize),
}

impl CodecError {
    /// Whether the byte stream is still in step after this error: the message can be
    /// refused with an Error reply and the connection kept.
    pub fn keeps_stream(&self) -> bool {
        !matches!(self, CodecError::TooLong(_) | CodecError::BadMagic(_))
    }
}

impl fmt::Display for CodecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CodecError::TooLong(n) => {
                write!(f, "message of {n} bytes is longer than {MAX_PAYLOAD}")
            }
            CodecError::UnknownType(t) => write!(f, "unknown message type {t:#x}"),
            CodecError::TooShort { kind, len, min } => {
                write!(f, "{kind:?} of {len} bytes is shorter than {min}")
            }
            CodecError::BadMagic(m) => write!(
                f,
                "Init magic is {:02X} {:02X} {:02X} {:02X}, not \"VSCD\"",
                m[0], m[1], m[2], m[3]
            ),
            CodecError::RaggedCapabilities(n) => {
                write!(f, "Init of {n} bytes has a partial capability word")
            }
        }
    }
}

impl std::error::Error for CodecError {}

fn word(bytes: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

/// Decodes the payload of a message whose header is `header`. `payload` must be
/// exactly the announced length.
///
/// Lenient where the C implementations are: a body-less message (ReaderRemove,
/// CardRemove, Flush, FlushComplete) may carry bytes, which are ignored, and so may an
/// Error after its code. Strict where they read fields: an Init needs the magic, the
/// version and at least one capability word; an Error needs its code.
pub fn decode<'a>(header: &Header, payload: &'a [u8]) -> Result<Message<'a>, CodecError> {
    let kind = MsgType::from_u32(header.kind).ok_or(CodecError::UnknownType(header.kind))?;
    let need = |min: usize| {
        if payload.len() < min {
            Err(CodecError::TooShort {
                kind,
                len: payload.len(),
                min,
            })
        } else {
            Ok(())
        }
    };
    Ok(match kind {
        MsgType::Init => {
            need(INIT_LEN)?;
            let magic = [payload[0], payload[1], payload[2], payload[3]];
            if magic != MAGIC {
                return Err(CodecError::BadMagic(magic));
            }
            if (payload.len() - 8) % 4 != 0 {
                return Err(CodecError::RaggedCapabilities(payload.len()));
            }
            Message::Init {
                version: word(payload, 4),
                capabilities: payload[8..]
                    .chunks_exact(4)
                    .take(MAX_CAPABILITIES)
                    .map(|w| word(w, 0))
                    .collect(),
            }
        }
        MsgType::Error => {
            need(4)?;
            Message::Error(ErrorCode::from_u32(word(payload, 0)))
        }
        MsgType::ReaderAdd => Message::ReaderAdd { name: payload },
        MsgType::ReaderRemove => Message::ReaderRemove,
        MsgType::Atr => Message::Atr(payload),
        MsgType::CardRemove => Message::CardRemove,
        MsgType::Apdu => Message::Apdu(payload),
        MsgType::Flush => Message::Flush,
        MsgType::FlushComplete => Message::FlushComplete,
    })
}

/// Appends one complete message (header and payload) to `out`, so that it can go out
/// in a single write.
pub fn encode(reader_id: u32, message: &Message<'_>, out: &mut Vec<u8>) -> Result<(), CodecError> {
    let start = out.len();
    out.extend_from_slice(&[0u8; HEADER_LEN]);
    match message {
        Message::Init {
            version,
            capabilities,
        } => {
            out.extend_from_slice(&MAGIC);
            out.extend_from_slice(&version.to_be_bytes());
            // The array has at least one word, even when nothing is offered.
            if capabilities.is_empty() {
                out.extend_from_slice(&[0; 4]);
            }
            for c in capabilities.iter().take(MAX_CAPABILITIES) {
                out.extend_from_slice(&c.to_be_bytes());
            }
        }
        Message::Error(code) => out.extend_from_slice(&code.to_u32().to_be_bytes()),
        Message::ReaderAdd { name: bytes } | Message::Atr(bytes) | Message::Apdu(bytes) => {
            if bytes.len() > MAX_PAYLOAD {
                out.truncate(start);
                return Err(CodecError::TooLong(bytes.len() as u64));
            }
            out.extend_from_slice(bytes)
        }
        Message::ReaderRemove | Message::CardRemove | Message::Flush | Message::FlushComplete => {}
    }
    let header = Header {
        kind: message.kind() as u32,
        reader_id,
        length: (out.len() - start - HEADER_LEN) as u32,
    };
    out[start..start + HEADER_LEN].copy_from_slice(&header.to_bytes());
    Ok(())
}

/// Incremental message splitter for a byte stream: feed it what arrived, take out
/// whole messages. A header announcing more than [`MAX_PAYLOAD`] is refused as soon
/// as its 12 bytes are in, so the buffer never holds more than one message plus the
/// last chunk fed.
#[derive(Debug, Default)]
pub struct Decoder {
    buf: Vec<u8>,
    /// Bytes of `buf` already handed out, dropped at the next feed.
    taken: usize,
}

impl Decoder {
    pub fn new() -> Decoder {
        Decoder::default()
    }

    /// Appends received bytes.
    pub fn feed(&mut self, bytes: &[u8]) {
        if self.taken > 0 {
            self.buf.drain(..self.taken);
            self.taken = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes received but not yet returned in a message: a partial message.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.taken
    }

    /// Forgets everything buffered (a new connection).
    pub fn clear(&mut self) {
        self.buf.clear();
        self.taken = 0;
    }

    /// The next whole message, as its header and raw payload, if one has arrived.
    /// Fails on an oversized length; the caller must then drop the stream.
    pub fn next_message(&mut self) -> Result<Option<(Header, &[u8])>, CodecError> {
        let rest = &self.buf[self.taken..];
        let Some(head) = rest.get(..HEADER_LEN) else {
            return Ok(None);
        };
        let mut bytes = [0u8; HEADER_LEN];
        bytes.copy_from_slice(head);
        let header = Header::parse(bytes);
        let len = header.payload_len()?;
        if rest.len() < HEADER_LEN + len {
            return Ok(None);
        }
        let start = self.taken + HEADER_LEN;
        self.taken = start + len;
        Ok(Some((header, &self.buf[start..start + len])))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn round_trip(reader_id: u32, message: &Message<'_>) {
        let mut out = vec![];
        encode(reader_id, message, &mut out).unwrap();
        let mut d = Decoder::new();
        d.feed(&out);
        let (header, payload) = d.next_message().unwrap().unwrap();
        assert_eq!(header.reader_id, reader_id);
        assert_eq!(header.kind, message.kind() as u32);
        assert_eq!(header.length as usize, out.len() - HEADER_LEN);
        assert_eq!(&decode(&header, payload).unwrap(), message);
        assert_eq!(d.buffered(), 0);
        assert!(d.next_message().unwrap().is_none());
    }

    #[test]
    fn every_message_type_round_trips() {
        let atr = [0x3B, 0x80, 0x80, 0x01, 0x01];
        let messages = [
            Message::host_init(),
            Message::Init {
                version: 0x0040_0801,
                capabilities: vec![1, 2, 3],
            },
            Message::Error(ErrorCode::Success),
            Message::Error(ErrorCode::GeneralError),
            Message::Error(ErrorCode::CannotAddMoreReaders),
            Message::Error(ErrorCode::CardAlreadyInserted),
            Message::Error(ErrorCode::Other(0xDEAD)),
            Message::ReaderAdd { name: b"" },
            Message::ReaderAdd {
                name: b"E-Gate 0 0",
            },
            Message::ReaderRemove,
            Message::Atr(&atr),
            Message::CardRemove,
            Message::Apdu(&[0x00, 0xA4, 0x04, 0x00]),
            Message::Flush,
            Message::FlushComplete,
        ];
        for (i, m) in messages.iter().enumerate() {
            round_trip(i as u32, m);
            round_trip(UNDEFINED_READER_ID, m);
        }
        for t in MsgType::ALL {
            assert_eq!(MsgType::from_u32(t as u32), Some(t));
        }
        assert_eq!(MsgType::from_u32(0), None);
        assert_eq!(MsgType::from_u32(10), None);
    }

    #[test]
    fn init_is_byte_exact_with_qemu_and_libcacard() {
        // What ccid-card-passthru and vscclient send: type 1, reader id, length 12,
        // the bytes "VSCD", htonl(VSCARD_VERSION), one capability word of 0.
        let mut out = vec![];
        encode(UNDEFINED_READER_ID, &Message::host_init(), &mut out).unwrap();
        assert_eq!(
            out,
            [
                0, 0, 0, 1, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 0, 12, b'V', b'S', b'C', b'D', 0, 0, 0,
                2, 0, 0, 0, 0
            ]
        );
        // An empty capability list still sends the mandatory word.
        let mut empty = vec![];
        let init = Message::Init {
            version: VERSION,
            capabilities: vec![],
        };
        encode(UNDEFINED_READER_ID, &init, &mut empty).unwrap();
        assert_eq!(empty, out);
    }

    #[test]
    fn error_and_apdu_layout() {
        let mut out = vec![];
        encode(
            1,
            &Message::Error(ErrorCode::CannotAddMoreReaders),
            &mut out,
        )
        .unwrap();
        assert_eq!(out, [0, 0, 0, 2, 0, 0, 0, 1, 0, 0, 0, 4, 0, 0, 0, 2]);
        out.clear();
        encode(0x0102_0304, &Message::Apdu(&[0x90, 0x00]), &mut out).unwrap();
        assert_eq!(out, [0, 0, 0, 7, 1, 2, 3, 4, 0, 0, 0, 2, 0x90, 0x00]);
    }

    #[test]
    fn init_lengths_are_checked_and_longer_capabilities_accepted() {
        let header = |len: usize| Header {
            kind: 1,
            reader_id: 0,
            length: len as u32,
        };
        let mut init = b"VSCD".to_vec();
        init.extend_from_slice(&2u32.to_be_bytes());
        for short in 0..INIT_LEN {
            assert!(matches!(
                decode(&header(short), &init[..short.min(init.len())]),
                Err(CodecError::TooShort { .. })
            ));
        }
        init.extend_from_slice(&7u32.to_be_bytes());
        init.extend_from_slice(&9u32.to_be_bytes());
        assert_eq!(
            decode(&header(init.len()), &init).unwrap(),
            Message::Init {
                version: 2,
                capabilities: vec![7, 9]
            }
        );
        init.push(0);
        assert_eq!(
            decode(&header(init.len()), &init),
            Err(CodecError::RaggedCapabilities(17))
        );
        let mut bad = init[..12].to_vec();
        bad[..4].copy_from_slice(b"DCSV");
        let e = decode(&header(12), &bad).unwrap_err();
        assert_eq!(e, CodecError::BadMagic(*b"DCSV"));
        assert!(!e.keeps_stream());
    }

    #[test]
    fn error_needs_its_code_and_bodyless_messages_ignore_extra_bytes() {
        let h = |kind: MsgType, len: usize| Header {
            kind: kind as u32,
            reader_id: 3,
            length: len as u32,
        };
        assert!(matches!(
            decode(&h(MsgType::Error, 3), &[0, 0, 0]),
            Err(CodecError::TooShort { min: 4, .. })
        ));
        assert_eq!(
            decode(&h(MsgType::Error, 6), &[0, 0, 0, 2, 9, 9]).unwrap(),
            Message::Error(ErrorCode::CannotAddMoreReaders)
        );
        assert_eq!(
            decode(&h(MsgType::CardRemove, 2), &[1, 2]).unwrap(),
            Message::CardRemove
        );
        let e = decode(
            &Header {
                kind: 77,
                reader_id: 0,
                length: 0,
            },
            &[],
        )
        .unwrap_err();
        assert_eq!(e, CodecError::UnknownType(77));
        assert!(e.keeps_stream());
    }

    #[test]
    fn oversized_lengths_are_refused_from_the_header_alone() {
        for len in [MAX_PAYLOAD as u32 + 1, 0x0100_0000, u32::MAX] {
            let mut d = Decoder::new();
            d.feed(
                &Header {
                    kind: 7,
                    reader_id: 0,
                    length: len,
                }
                .to_bytes(),
            );
            let e = d.next_message().unwrap_err();
            assert_eq!(e, CodecError::TooLong(u64::from(len)));
            assert!(!e.keeps_stream());
        }
        // The largest payload is fine.
        let apdu = vec![0x5A; MAX_PAYLOAD];
        round_trip(0, &Message::Apdu(&apdu));
        let too_big = vec![0; MAX_PAYLOAD + 1];
        let mut out = vec![1, 2, 3];
        assert!(encode(0, &Message::Apdu(&too_big), &mut out).is_err());
        assert_eq!(out, [1, 2, 3], "a refused message leaves nothing behind");
    }

    #[test]
    fn truncated_input_waits_for_the_rest() {
        let mut out = vec![];
        encode(1, &Message::Atr(&[0x3B, 0x00]), &mut out).unwrap();
        encode(1, &Message::Apdu(&[0x90, 0x00]), &mut out).unwrap();
        let mut d = Decoder::new();
        let mut got = vec![];
        for b in &out {
            d.feed(std::slice::from_ref(b));
            while let Some((h, p)) = d.next_message().unwrap() {
                got.push((h.kind, p.to_vec()));
            }
        }
        assert_eq!(got, [(5, vec![0x3B, 0x00]), (7, vec![0x90, 0x00])]);
        assert_eq!(d.buffered(), 0);
        d.feed(&out[..HEADER_LEN + 1]);
        assert!(d.next_message().unwrap().is_none());
        assert_eq!(d.buffered(), HEADER_LEN + 1);
        d.clear();
        assert_eq!(d.buffered(), 0);
    }

    #[test]
    fn errors_and_codes_say_what_they_are() {
        for (code, text) in [
            (ErrorCode::Success, "VSC_SUCCESS"),
            (ErrorCode::GeneralError, "VSC_GENERAL_ERROR"),
            (
                ErrorCode::CannotAddMoreReaders,
                "VSC_CANNOT_ADD_MORE_READERS",
            ),
            (ErrorCode::CardAlreadyInserted, "VSC_CARD_ALREADY_INSERTED"),
            (ErrorCode::Other(0x1F), "error code 0x1f"),
        ] {
            assert_eq!(code.to_string(), text);
            assert_eq!(ErrorCode::from_u32(code.to_u32()), code);
        }
        for (error, text) in [
            (
                CodecError::TooLong(70000),
                "message of 70000 bytes is longer than 65548",
            ),
            (CodecError::UnknownType(0x10), "unknown message type 0x10"),
            (
                CodecError::TooShort {
                    kind: MsgType::Error,
                    len: 3,
                    min: 4,
                },
                "Error of 3 bytes is shorter than 4",
            ),
            (
                CodecError::BadMagic(*b"QEMU"),
                "Init magic is 51 45 4D 55, not \"VSCD\"",
            ),
            (
                CodecError::RaggedCapabilities(13),
                "Init of 13 bytes has a partial capability word",
            ),
        ] {
            assert_eq!(error.to_string(), text);
        }
        assert!(CodecError::RaggedCapabilities(13).keeps_stream());
        assert!(CodecError::TooShort {
            kind: MsgType::Init,
            len: 0,
            min: 12
        }
        .keeps_stream());
    }

    #[test]
    fn encoding_after_other_bytes_frames_only_the_new_message() {
        let mut out = vec![0xAB; 5];
        encode(7, &Message::Apdu(&[0x90, 0x00]), &mut out).unwrap();
        assert_eq!(
            out,
            [0xAB, 0xAB, 0xAB, 0xAB, 0xAB, 0, 0, 0, 7, 0, 0, 0, 7, 0, 0, 0, 2, 0x90, 0x00]
        );
        let mut out = vec![0xAB; 20];
        encode(1, &Message::host_init(), &mut out).unwrap();
        assert_eq!(out[20..32], [0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 12]);
        // More capabilities than kept are not sent either.
        let mut out = vec![];
        let many = Message::Init {
            version: VERSION,
            capabilities: (0..100).collect(),
        };
        encode(0, &many, &mut out).unwrap();
        assert_eq!(out.len(), HEADER_LEN + 8 + 4 * MAX_CAPABILITIES);
        // A decoder fed after taking a message keeps only what is left.
        let mut d = Decoder::new();
        let mut wire = vec![];
        encode(0, &Message::Flush, &mut wire).unwrap();
        encode(0, &Message::Apdu(&[1, 2]), &mut wire).unwrap();
        d.feed(&wire[..HEADER_LEN + 3]);
        assert_eq!(
            d.next_message().unwrap().unwrap().0.kind,
            MsgType::Flush as u32
        );
        assert_eq!(d.buffered(), 3);
        d.feed(&wire[HEADER_LEN + 3..]);
        assert_eq!(d.buffered(), HEADER_LEN + 2);
        assert_eq!(d.buf.len(), HEADER_LEN + 2, "the Flush taken is dropped");
        let (h, p) = d.next_message().unwrap().unwrap();
        assert_eq!((h.kind, p), (MsgType::Apdu as u32, &[1u8, 2][..]));
    }

    #[test]
    fn init_capability_words() {
        let header = |len: usize| Header {
            kind: MsgType::Init as u32,
            reader_id: 0,
            length: len as u32,
        };
        let mut init = b"VSCD".to_vec();
        init.extend_from_slice(&2u32.to_be_bytes());
        for words in 1..4usize {
            let mut p = init.clone();
            p.extend((0..words as u32).flat_map(u32::to_be_bytes));
            assert_eq!(
                decode(&header(p.len()), &p),
                Ok(Message::Init {
                    version: 2,
                    capabilities: (0..words as u32).collect()
                })
            );
            for extra in 1..4 {
                let mut ragged = p.clone();
                ragged.extend(std::iter::repeat(0).take(extra));
                assert_eq!(
                    decode(&header(ragged.len()), &ragged),
                    Err(CodecError::RaggedCapabilities(ragged.len()))
                );
            }
        }
    }

    fn any_message() -> impl Strategy<Value = (u32, u32, Vec<u8>)> {
        // (type, reader id, payload) of well-formed messages.
        (
            1u32..=9,
            any::<u32>(),
            proptest::collection::vec(any::<u8>(), 0..300),
        )
            .prop_map(|(kind, reader, mut payload)| {
                if kind == 1 {
                    payload.truncate(payload.len() / 4 * 4);
                    let mut init = b"VSCD".to_vec();
                    init.extend_from_slice(&[0, 0, 0, 2]);
                    init.extend_from_slice(&payload);
                    if payload.is_empty() {
                        init.extend_from_slice(&[0; 4]);
                    }
                    payload = init;
                } else if kind == 2 && payload.len() < 4 {
                    payload.resize(4, 0);
                }
                (kind, reader, payload)
            })
    }

    proptest! {
        #[test]
        fn garbage_never_panics_and_never_overallocates(
            chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 0..32)
        ) {
            let mut d = Decoder::new();
            'feed: for chunk in &chunks {
                d.feed(chunk);
                loop {
                    match d.next_message() {
                        Ok(Some((h, p))) => {
                            prop_assert_eq!(p.len(), h.length as usize);
                            let _ = decode(&h, p);
                        }
                        Ok(None) => break,
                        Err(e) => {
                            prop_assert!(!e.keeps_stream());
                            break 'feed;
                        }
                    }
                }
                prop_assert!(d.buffered() <= HEADER_LEN + MAX_PAYLOAD + 64);
            }
        }

        #[test]
        fn well_framed_garbage_never_panics(
            kind in 0u32..12,
            reader in any::<u32>(),
            magic in any::<bool>(),
            mut payload in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            if magic && payload.len() >= 4 {
                payload[..4].copy_from_slice(&MAGIC);
            }
            let header = Header { kind, reader_id: reader, length: payload.len() as u32 };
            match decode(&header, &payload) {
                Ok(Message::Init { capabilities, .. }) => {
                    prop_assert!(!capabilities.is_empty());
                    prop_assert_eq!(kind, 1);
                }
                Ok(m) => prop_assert_eq!(m.kind() as u32, kind),
                Err(CodecError::UnknownType(t)) => prop_assert!(t == 0 || t > 9),
                Err(e) => prop_assert!(e.keeps_stream() || matches!(e, CodecError::BadMagic(_))),
            }
        }

        #[test]
        fn decoded_messages_re_encode_to_the_same_bytes((kind, reader, payload) in any_message()) {
            let header = Header { kind, reader_id: reader, length: payload.len() as u32 };
            let message = decode(&header, &payload).unwrap();
            let mut out = vec![];
            encode(reader, &message, &mut out).unwrap();
            let mut wire = header.to_bytes().to_vec();
            wire.extend_from_slice(&payload);
            // Body-less messages and Errors drop what they ignore; the rest is exact.
            match message {
                Message::ReaderRemove | Message::CardRemove | Message::Flush
                | Message::FlushComplete => prop_assert_eq!(out.len(), HEADER_LEN),
                Message::Error(_) => {
                    let mut want = Header { kind, reader_id: reader, length: 4 }.to_bytes().to_vec();
                    want.extend_from_slice(&payload[..4]);
                    prop_assert_eq!(out, want)
                }
                Message::Init { ref capabilities, .. } if capabilities.len() == (payload.len() - 8) / 4 => {
                    prop_assert_eq!(out, wire)
                }
                Message::Init { .. } => {}
                _ => prop_assert_eq!(out, wire),
            }
        }

        #[test]
        fn a_stream_of_messages_splits_anywhere((msgs, cuts) in (
            proptest::collection::vec(any_message(), 1..8),
            proptest::collection::vec(1usize..50, 1..20),
        )) {
            let mut wire = vec![];
            for (kind, reader, payload) in &msgs {
                wire.extend_from_slice(&Header { kind: *kind, reader_id: *reader, length: payload.len() as u32 }.to_bytes());
                wire.extend_from_slice(payload);
            }
            let mut d = Decoder::new();
            let mut got = vec![];
            let mut at = 0;
            let mut i = 0;
            while at < wire.len() {
                let n = cuts[i % cuts.len()].min(wire.len() - at);
                d.feed(&wire[at..at + n]);
                at += n;
                i += 1;
                while let Some((h, p)) = d.next_message().unwrap() {
                    got.push((h.kind, h.reader_id, p.to_vec()));
                }
            }
            prop_assert_eq!(got, msgs);
        }
    }
}
