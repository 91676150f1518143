//! The vpcd wire protocol as a pure codec: no sockets, no allocation beyond what a
//! caller asks for.
//!
//! Every message is a 2-byte big-endian length followed by that many bytes. A message
//! of exactly one byte is a control code from the reader to the card (power off, power
//! on, reset, get ATR). Anything longer is a command APDU; the card answers GET ATR and
//! every APDU with one framed reply. The length field bounds every frame at 65535
//! bytes, so a peer can never make us allocate more than that.

use std::fmt;

/// Size of the length prefix.
pub const HEADER_LEN: usize = 2;

/// Largest payload a frame can carry.
pub const MAX_PAYLOAD: usize = u16::MAX as usize;

/// Largest ATR ISO/IEC 7816-3 allows.
pub const MAX_ATR_LEN: usize = 33;

/// Largest command data an extended case 4 APDU can carry inside one frame:
/// header (4) + extended Lc (3) + data + extended Le (2) must fit in [`MAX_PAYLOAD`].
pub const MAX_APDU_DATA: usize = MAX_PAYLOAD - 4 - 3 - 2;

/// The one-byte control messages of the vpcd protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Control {
    PowerOff = 0,
    PowerOn = 1,
    Reset = 2,
    GetAtr = 4,
}

impl Control {
    pub const ALL: [Control; 4] = [
        Control::PowerOff,
        Control::PowerOn,
        Control::Reset,
        Control::GetAtr,
    ];

    pub fn from_byte(byte: u8) -> Option<Control> {
        Control::ALL.into_iter().find(|c| *c as u8 == byte)
    }

    /// The complete frame for this control message.
    pub fn frame(self) -> [u8; 3] {
        [0, 1, self as u8]
    }
}

/// Why a frame or its content was rejected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProtocolError {
    /// A payload longer than a frame can carry.
    TooLong(usize),
    /// A one-byte message whose byte is no known control code.
    UnknownControl(u8),
    /// A frame of length zero where a message was required.
    Empty,
    /// A command APDU too short to be one: a single byte would be read as a control
    /// code.
    CommandTooShort(usize),
    /// A reply larger than the space the caller has for it.
    ReplyTooLarge { len: usize, capacity: usize },
    /// An APDU reply without the two status bytes.
    ReplyTooShort(usize),
    /// An ATR that ISO/IEC 7816-3 does not allow.
    InvalidAtr(AtrError),
    /// Bytes after the one reply that was asked for.
    TrailingBytes(usize),
    /// A HELLO of the PIN pad extension that is not one (see [`crate::pinpad`]).
    InvalidHello(&'static str),
    /// A PIN request's parameters the vicc cannot take.
    InvalidPinRequest(&'static str),
    /// A vicc's answer to a PIN request that breaks the extension.
    InvalidPinAnswer(&'static str),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AtrError {
    Empty,
    TooLong(usize),
    BadTs(u8),
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProtocolError::TooLong(n) => {
                write!(f, "{n} bytes do not fit in one frame (max {MAX_PAYLOAD})")
            }
            ProtocolError::UnknownControl(b) => write!(f, "unknown control code 0x{b:02X}"),
            ProtocolError::Empty => write!(f, "empty frame"),
            ProtocolError::CommandTooShort(n) => write!(
                f,
                "a {n}-byte APDU cannot be sent: the vicc would take it for a control code"
            ),
            ProtocolError::ReplyTooLarge { len, capacity } => write!(
                f,
                "reply of {len} bytes is larger than the caller's buffer of {capacity}"
            ),
            ProtocolError::ReplyTooShort(n) => {
                write!(f, "reply of {n} byte(s) lacks the status word SW1 SW2")
            }
            ProtocolError::InvalidAtr(AtrError::Empty) => write!(f, "empty ATR"),
            ProtocolError::InvalidAtr(AtrError::TooLong(n)) => {
                write!(f, "ATR of {n} bytes is longer than {MAX_ATR_LEN}")
            }
            ProtocolError::InvalidAtr(AtrError::BadTs(ts)) => {
                write!(f, "ATR starts with TS=0x{ts:02X}, not 0x3B or 0x3F")
            }
            ProtocolError::TrailingBytes(n) => {
                write!(f, "{n} byte(s) after the reply nobody asked for")
            }
            ProtocolError::InvalidHello(why) => write!(f, "invalid HELLO: {why}"),
            ProtocolError::InvalidPinRequest(why) => write!(f, "invalid PIN request: {why}"),
            ProtocolError::InvalidPinAnswer(why) => write!(f, "invalid PIN answer: {why}"),
        }
    }
}

impl std::error::Error for ProtocolError {}

/// The length prefix for a payload of `len` bytes.
pub fn header(len: usize) -> Result<[u8; HEADER_LEN], ProtocolError> {
    u16::try_from(len)
        .map(u16::to_be_bytes)
        .map_err(|_| ProtocolError::TooLong(len))
}

/// The payload length a prefix announces.
pub fn payload_len(header: [u8; HEADER_LEN]) -> usize {
    usize::from(u16::from_be_bytes(header))
}

/// Appends one complete frame (prefix and payload) to `out`, so that it can go out
/// in a single write.
pub fn encode(payload: &[u8], out: &mut Vec<u8>) -> Result<(), ProtocolError> {
    let prefix = header(payload.len())?;
    out.reserve(HEADER_LEN + payload.len());
    out.extend_from_slice(&prefix);
    out.extend_from_slice(payload);
    Ok(())
}

/// Checks an ATR the way pcscd will read it: 1 to 33 bytes, TS direct or inverse.
pub fn check_atr(atr: &[u8]) -> Result<(), ProtocolError> {
    match atr {
        [] => Err(ProtocolError::InvalidAtr(AtrError::Empty)),
        _ if atr.len() > MAX_ATR_LEN => {
            Err(ProtocolError::InvalidAtr(AtrError::TooLong(atr.len())))
        }
        [0x3B | 0x3F, ..] => Ok(()),
        [ts, ..] => Err(ProtocolError::InvalidAtr(AtrError::BadTs(*ts))),
    }
}

/// Checks an APDU reply: it must carry at least SW1 SW2 and fit the caller's buffer.
pub fn check_reply(len: usize, capacity: usize) -> Result<(), ProtocolError> {
    if len < 2 {
        Err(ProtocolError::ReplyTooShort(len))
    } else if len > capacity {
        Err(ProtocolError::ReplyTooLarge { len, capacity })
    } else {
        Ok(())
    }
}

/// How to finish reading one reply frame whose prefix has arrived, together with the
/// first `received` payload bytes, into a buffer of `capacity` bytes.
///
/// The reader side reads a reply greedily (one read usually takes the prefix and the
/// whole payload); this decides what the bytes so far mean, so the socket code is only
/// reads and the rules live here, pure and property-tested.
pub fn plan_reply(
    prefix: [u8; HEADER_LEN],
    received: usize,
    capacity: usize,
) -> Result<ReplyPlan, ReplyError> {
    let len = payload_len(prefix);
    if received > len {
        // The vicc answers one frame per command; more bytes mean it lost step.
        return Err(ReplyError::OutOfStep {
            len,
            extra: received - len,
        });
    }
    let refuse = |error| ReplyError::Refused {
        error,
        discard: len - received,
    };
    if len == 0 {
        return Err(refuse(ProtocolError::Empty));
    }
    if len > capacity {
        return Err(refuse(ProtocolError::ReplyTooLarge { len, capacity }));
    }
    Ok(ReplyPlan {
        len,
        remaining: len - received,
    })
}

/// A reply that fits: read `remaining` more bytes, up to `len` in all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplyPlan {
    pub len: usize,
    pub remaining: usize,
}

/// Why a reply cannot be taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplyError {
    /// Bytes beyond the frame arrived with it: the stream is out of step for good.
    OutOfStep { len: usize, extra: usize },
    /// The frame is refused (empty, or larger than the buffer); skipping `discard`
    /// more bytes keeps the stream in step for the next command.
    Refused {
        error: ProtocolError,
        discard: usize,
    },
}

impl fmt::Display for ReplyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReplyError::OutOfStep { len, extra } => {
                write!(f, "vicc sent {extra} bytes after its {len}-byte reply")
            }
            ReplyError::Refused { error, .. } => error.fmt(f),
        }
    }
}

impl std::error::Error for ReplyError {}

/// The most bytes a peer's answer to GET ATR can take: its frame, plus one to see
/// that it sent more.
pub const ATR_ANSWER_MAX: usize = HEADER_LEN + MAX_ATR_LEN + 1;

/// What the bytes a peer has sent so far in answer to GET ATR say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AtrAnswer<'a> {
    /// Not all there yet.
    Incomplete,
    /// A valid ATR, and nothing after it.
    Atr(&'a [u8]),
    /// Not an ATR a card could give: the peer is no card.
    Refused(ProtocolError),
}

/// Reads a peer's answer to GET ATR from the bytes received so far (read at most
/// [`ATR_ANSWER_MAX`] of them). Refuses as early as the bytes allow: an empty or
/// oversized length or a wrong TS needs no waiting for the rest.
pub fn read_atr_answer(bytes: &[u8]) -> AtrAnswer<'_> {
    let Some(prefix) = bytes.get(..HEADER_LEN) else {
        return AtrAnswer::Incomplete;
    };
    let len = payload_len([prefix[0], prefix[1]]);
    if len == 0 {
        return AtrAnswer::Refused(ProtocolError::InvalidAtr(AtrError::Empty));
    }
    if len > MAX_ATR_LEN {
        return AtrAnswer::Refused(ProtocolError::InvalidAtr(AtrError::TooLong(len)));
    }
    let payload = &bytes[HEADER_LEN..];
    if let Some(&ts) = payload.first() {
        if ts != 0x3B && ts != 0x3F {
            return AtrAnswer::Refused(ProtocolError::InvalidAtr(AtrError::BadTs(ts)));
        }
    }
    match payload.len().cmp(&len) {
        std::cmp::Ordering::Less => AtrAnswer::Incomplete,
        std::cmp::Ordering::Greater => {
            AtrAnswer::Refused(ProtocolError::TrailingBytes(payload.len() - len))
        }
        std::cmp::Ordering::Equal => match check_atr(payload) {
            Ok(()) => AtrAnswer::Atr(payload),
            Err(e) => AtrAnswer::Refused(e),
        },
    }
}

/// A message as the card side sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Message<'a> {
    Control(Control),
    Apdu(&'a [u8]),
}

impl<'a> Message<'a> {
    /// Classifies a received payload (card side).
    pub fn parse(payload: &'a [u8]) -> Result<Message<'a>, ProtocolError> {
        match payload {
            [] => Err(ProtocolError::Empty),
            [byte] => Control::from_byte(*byte)
                .map(Message::Control)
                .ok_or(ProtocolError::UnknownControl(*byte)),
            apdu => Ok(Message::Apdu(apdu)),
        }
    }
}

/// Incremental frame decoder for a byte stream (tokio-util style, without tokio):
/// feed it whatever arrived, take out complete payloads.
#[derive(Debug, Default)]
pub struct Decoder {
    buf: Vec<u8>,
}

impl Decoder {
    pub fn new() -> Decoder {
        Decoder::default()
    }

    /// Appends received bytes.
    pub fn feed(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes received but not yet returned as a frame.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The next complete payload, if one has fully arrived.
    pub fn next_frame(&mut self) -> Option<Vec<u8>> {
        let prefix: [u8; HEADER_LEN] = self.buf.get(..HEADER_LEN)?.try_into().ok()?;
        let end = HEADER_LEN + payload_len(prefix);
        if self.buf.len() < end {
            return None;
        }
        let payload = self.buf[HEADER_LEN..end].to_vec();
        self.buf.drain(..end);
        Some(payload)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn control_frames_are_three_bytes() {
        assert_eq!(Control::PowerOff.frame(), [0, 1, 0]);
        assert_eq!(Control::PowerOn.frame(), [0, 1, 1]);
        assert_eq!(Control::Reset.frame(), [0, 1, 2]);
        assert_eq!(Control::GetAtr.frame(), [0, 1, 4]);
    }

    #[test]
    fn control_codes_round_trip_and_unknown_ones_are_rejected() {
        for byte in 0..=255u8 {
            match Control::from_byte(byte) {
                Some(c) => assert_eq!(c as u8, byte),
                None => assert!(![0, 1, 2, 4].contains(&byte)),
            }
        }
        assert_eq!(Message::parse(&[3]), Err(ProtocolError::UnknownControl(3)));
        assert_eq!(Message::parse(&[]), Err(ProtocolError::Empty));
    }

    #[test]
    fn header_limits() {
        assert_eq!(header(0), Ok([0, 0]));
        assert_eq!(header(0x1234), Ok([0x12, 0x34]));
        assert_eq!(header(MAX_PAYLOAD), Ok([0xFF, 0xFF]));
        assert_eq!(
            header(MAX_PAYLOAD + 1),
            Err(ProtocolError::TooLong(MAX_PAYLOAD + 1))
        );
        let mut out = vec![];
        assert!(encode(&vec![0; MAX_PAYLOAD + 1], &mut out).is_err());
        assert!(out.is_empty(), "a rejected frame writes nothing");
    }

    #[test]
    fn extended_apdu_limit_fits_a_frame() {
        assert_eq!(4 + 3 + MAX_APDU_DATA + 2, MAX_PAYLOAD);
    }

    #[test]
    fn an_atr_answer_read_takes_the_longest_atr_and_one_byte_more() {
        let mut wire = vec![];
        encode(&[0x3B; MAX_ATR_LEN], &mut wire).unwrap();
        assert_eq!(ATR_ANSWER_MAX, wire.len() + 1);
        assert_eq!(ATR_ANSWER_MAX, 36);
    }

    #[test]
    fn atr_checks() {
        assert!(check_atr(&[0x3B, 0x00]).is_ok());
        assert!(check_atr(&[0x3F]).is_ok());
        assert!(check_atr(&[0x3B; 33]).is_ok());
        assert_eq!(
            check_atr(&[]),
            Err(ProtocolError::InvalidAtr(AtrError::Empty))
        );
        assert_eq!(
            check_atr(&[0x3B; 34]),
            Err(ProtocolError::InvalidAtr(AtrError::TooLong(34)))
        );
        assert_eq!(
            check_atr(&[0x00, 0x11]),
            Err(ProtocolError::InvalidAtr(AtrError::BadTs(0)))
        );
    }

    #[test]
    fn reply_checks() {
        assert_eq!(check_reply(0, 10), Err(ProtocolError::ReplyTooShort(0)));
        assert_eq!(check_reply(1, 10), Err(ProtocolError::ReplyTooShort(1)));
        assert_eq!(check_reply(2, 10), Ok(()));
        assert_eq!(check_reply(10, 10), Ok(()));
        assert_eq!(
            check_reply(11, 10),
            Err(ProtocolError::ReplyTooLarge {
                len: 11,
                capacity: 10
            })
        );
    }

    #[test]
    fn reply_plans() {
        assert_eq!(
            plan_reply([0, 4], 2, 10),
            Ok(ReplyPlan {
                len: 4,
                remaining: 2
            })
        );
        assert_eq!(
            plan_reply([0, 4], 4, 4),
            Ok(ReplyPlan {
                len: 4,
                remaining: 0
            })
        );
        assert_eq!(
            plan_reply([0, 2], 3, 10),
            Err(ReplyError::OutOfStep { len: 2, extra: 1 })
        );
        assert_eq!(
            plan_reply([0, 0], 0, 10),
            Err(ReplyError::Refused {
                error: ProtocolError::Empty,
                discard: 0
            })
        );
        assert_eq!(
            plan_reply([0xFF, 0xFF], 10, 10),
            Err(ReplyError::Refused {
                error: ProtocolError::ReplyTooLarge {
                    len: 65535,
                    capacity: 10
                },
                discard: 65525
            })
        );
    }

    #[test]
    fn atr_answers() {
        use AtrAnswer::*;
        assert_eq!(read_atr_answer(&[]), Incomplete);
        assert_eq!(read_atr_answer(&[0]), Incomplete);
        assert_eq!(read_atr_answer(&[0, 2, 0x3B]), Incomplete);
        assert_eq!(read_atr_answer(&[0, 2, 0x3B, 0]), Atr(&[0x3B, 0]));
        assert_eq!(
            read_atr_answer(&[0, 2, 0x3B, 0, 9]),
            Refused(ProtocolError::TrailingBytes(1))
        );
        assert_eq!(
            read_atr_answer(&[0, 0]),
            Refused(ProtocolError::InvalidAtr(AtrError::Empty))
        );
        assert_eq!(
            read_atr_answer(&[0xFF, 0xFF]),
            Refused(ProtocolError::InvalidAtr(AtrError::TooLong(0xFFFF)))
        );
        assert_eq!(
            read_atr_answer(&[0, 34]),
            Refused(ProtocolError::InvalidAtr(AtrError::TooLong(34)))
        );
        assert_eq!(
            read_atr_answer(&[0, 5, 0x00]),
            Refused(ProtocolError::InvalidAtr(AtrError::BadTs(0)))
        );
    }

    #[test]
    fn decoder_waits_for_complete_frames() {
        let mut d = Decoder::new();
        assert_eq!(d.next_frame(), None);
        d.feed(&[0]);
        assert_eq!(d.next_frame(), None);
        d.feed(&[3, 1, 2]);
        assert_eq!(d.next_frame(), None);
        d.feed(&[3, 0, 0, 0, 1]);
        assert_eq!(d.next_frame(), Some(vec![1, 2, 3]));
        assert_eq!(d.next_frame(), Some(vec![]));
        assert_eq!(d.buffered(), 2);
        assert_eq!(d.next_frame(), None);
    }

    #[test]
    fn errors_say_what_happened() {
        let cases = [
            (
                ProtocolError::TooLong(70000),
                "70000 bytes do not fit in one frame (max 65535)",
            ),
            (
                ProtocolError::UnknownControl(3),
                "unknown control code 0x03",
            ),
            (ProtocolError::Empty, "empty frame"),
            (
                ProtocolError::CommandTooShort(1),
                "a 1-byte APDU cannot be sent: the vicc would take it for a control code",
            ),
            (
                ProtocolError::ReplyTooLarge {
                    len: 9,
                    capacity: 8,
                },
                "reply of 9 bytes is larger than the caller's buffer of 8",
            ),
            (
                ProtocolError::ReplyTooShort(1),
                "reply of 1 byte(s) lacks the status word SW1 SW2",
            ),
            (ProtocolError::InvalidAtr(AtrError::Empty), "empty ATR"),
            (
                ProtocolError::InvalidAtr(AtrError::TooLong(34)),
                "ATR of 34 bytes is longer than 33",
            ),
            (
                ProtocolError::InvalidAtr(AtrError::BadTs(0x3C)),
                "ATR starts with TS=0x3C, not 0x3B or 0x3F",
            ),
            (
                ProtocolError::TrailingBytes(2),
                "2 byte(s) after the reply nobody asked for",
            ),
            (ProtocolError::InvalidHello("x"), "invalid HELLO: x"),
            (
                ProtocolError::InvalidPinRequest("y"),
                "invalid PIN request: y",
            ),
            (
                ProtocolError::InvalidPinAnswer("z"),
                "invalid PIN answer: z",
            ),
        ];
        for (error, text) in cases {
            assert_eq!(error.to_string(), text);
        }
        assert_eq!(
            ReplyError::OutOfStep { len: 4, extra: 2 }.to_string(),
            "vicc sent 2 bytes after its 4-byte reply"
        );
        assert_eq!(
            ReplyError::Refused {
                error: ProtocolError::Empty,
                discard: 0
            }
            .to_string(),
            "empty frame"
        );
    }

    #[test]
    fn an_atr_answer_with_either_ts() {
        assert_eq!(
            read_atr_answer(&[0, 2, 0x3F, 0x00]),
            AtrAnswer::Atr(&[0x3F, 0x00])
        );
        assert_eq!(read_atr_answer(&[0, 2, 0x3F]), AtrAnswer::Incomplete);
        assert_eq!(
            read_atr_answer(&[0, 1, 0x3B, 9, 9]),
            AtrAnswer::Refused(ProtocolError::TrailingBytes(2))
        );
        assert_eq!(
            read_atr_answer(&[0, 33, 0x3B]),
            AtrAnswer::Incomplete,
            "33 bytes is the longest ATR"
        );
        assert_eq!(
            Message::parse(&[0x00, 0xA4]),
            Ok(Message::Apdu(&[0x00, 0xA4]))
        );
        assert_eq!(Message::parse(&[4]), Ok(Message::Control(Control::GetAtr)));
        let mut out = vec![9];
        encode(&[1, 2, 3], &mut out).unwrap();
        assert_eq!(out, [9, 0, 3, 1, 2, 3]);
        assert_eq!(payload_len([0x01, 0x02]), 0x0102);
    }

    proptest! {
        #[test]
        fn encode_then_decode_in_any_chunking(
            payloads in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..600), 0..8),
            chunk in 1usize..97,
        ) {
            let mut wire = vec![];
            for p in &payloads {
                encode(p, &mut wire).unwrap();
            }
            let mut d = Decoder::new();
            let mut got = vec![];
            for piece in wire.chunks(chunk) {
                d.feed(piece);
                while let Some(f) = d.next_frame() {
                    got.push(f);
                }
            }
            prop_assert_eq!(got, payloads);
            prop_assert_eq!(d.buffered(), 0);
        }

        /// Reading a stream the way the driver does (a first read of any size that
        /// holds the prefix, then what the plan says) takes exactly one frame when it
        /// fits, and otherwise refuses it with the stream left in step (or says why
        /// it cannot be).
        #[test]
        fn a_reply_read_in_any_first_piece_is_one_frame(
            payload in proptest::collection::vec(any::<u8>(), 0..700),
            trailing in proptest::collection::vec(any::<u8>(), 0..4),
            first in 2usize..800,
            capacity in 0usize..800,
        ) {
            let mut wire = vec![];
            encode(&payload, &mut wire).unwrap();
            wire.extend_from_slice(&trailing);
            // The first read fills the prefix and at most `capacity` payload bytes.
            let first = first.min(wire.len()).min(HEADER_LEN + capacity);
            let prefix = [wire[0], wire[1]];
            let received = first - HEADER_LEN;
            match plan_reply(prefix, received, capacity) {
                Ok(plan) => {
                    prop_assert_eq!(plan.len, payload.len());
                    prop_assert!(plan.len > 0 && plan.len <= capacity);
                    prop_assert_eq!(HEADER_LEN + received + plan.remaining, HEADER_LEN + payload.len());
                }
                Err(ReplyError::OutOfStep { len, extra }) => {
                    prop_assert_eq!(len, payload.len());
                    prop_assert_eq!(received, len + extra);
                    prop_assert!(!trailing.is_empty());
                }
                Err(ReplyError::Refused { error, discard }) => {
                    prop_assert_eq!(received + discard, payload.len());
                    prop_assert!(payload.is_empty() || payload.len() > capacity);
                    match error {
                        ProtocolError::Empty => prop_assert!(payload.is_empty()),
                        ProtocolError::ReplyTooLarge { len, capacity: c } => {
                            prop_assert_eq!((len, c), (payload.len(), capacity));
                        }
                        other => prop_assert!(false, "unexpected {other:?}"),
                    }
                }
            }
        }

        /// Fed in any pieces, an answer is refused or taken at the first piece that
        /// decides it, never later, and a valid ATR frame is always taken whole.
        #[test]
        fn an_atr_answer_is_decided_by_its_bytes_alone(
            bytes in proptest::collection::vec(any::<u8>(), 0..ATR_ANSWER_MAX),
        ) {
            let whole = read_atr_answer(&bytes);
            if let AtrAnswer::Atr(atr) = whole {
                prop_assert!(check_atr(atr).is_ok());
                prop_assert_eq!(HEADER_LEN + atr.len(), bytes.len());
            }
            // A refusal holds for every longer stream.
            for n in 0..bytes.len() {
                if let AtrAnswer::Refused(_) = read_atr_answer(&bytes[..n]) {
                    prop_assert!(matches!(whole, AtrAnswer::Refused(_)));
                }
            }
        }

        #[test]
        fn a_valid_atr_is_taken(atr in proptest::collection::vec(any::<u8>(), 0..MAX_ATR_LEN), inverse: bool) {
            let mut atr = atr;
            atr.insert(0, if inverse { 0x3F } else { 0x3B });
            let mut wire = vec![];
            encode(&atr, &mut wire).unwrap();
            prop_assert_eq!(read_atr_answer(&wire), AtrAnswer::Atr(&atr[..]));
        }

        #[test]
        fn decoder_never_panics_on_garbage(bytes in proptest::collection::vec(any::<u8>(), 0..2000)) {
            let mut d = Decoder::new();
            d.feed(&bytes);
            let mut total = 0;
            while let Some(f) = d.next_frame() {
                prop_assert!(f.len() <= MAX_PAYLOAD);
                total += HEADER_LEN + f.len();
            }
            prop_assert_eq!(total + d.buffered(), bytes.len());
        }

        #[test]
        fn parse_classifies_by_length(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            match Message::parse(&bytes) {
                Ok(Message::Control(c)) => prop_assert_eq!(bytes, vec![c as u8]),
                Ok(Message::Apdu(a)) => { prop_assert!(a.len() >= 2); prop_assert_eq!(a, &bytes[..]); }
                Err(ProtocolError::Empty) => prop_assert!(bytes.is_empty()),
                Err(ProtocolError::UnknownControl(b)) => prop_assert_eq!(bytes, vec![b]),
                Err(e) => prop_assert!(false, "unexpected {e}"),
            }
        }

        #[test]
        fn check_atr_matches_the_rules(atr in proptest::collection::vec(any::<u8>(), 0..40)) {
            let ok = !atr.is_empty() && atr.len() <= MAX_ATR_LEN && (atr[0] == 0x3B || atr[0] == 0x3F);
            prop_assert_eq!(check_atr(&atr).is_ok(), ok);
        }
    }
}
