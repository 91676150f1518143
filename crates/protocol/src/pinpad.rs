//! The PIN pad extension of the vpcd protocol (docs/PINPAD.md): a vicc that has a
//! keypad says HELLO before its ATR, and the reader then asks it for PINs.
//!
//! - HELLO (vicc to reader, the first frame after connecting): `FF 'V' 'P' version
//!   features [reserved...]`, 5 to [`HELLO_MAX_LEN`] bytes. An ATR starts 3B or 3F, so
//!   a reader reading the answer to GET ATR tells the two apart by the first byte
//!   ([`read_probe_answer`]).
//! - PIN request (reader to vicc, only to a vicc that said HELLO with
//!   [`FEATURE_PIN_ENTRY`]): the one-byte control frame [`ENTER_PIN`], then one frame
//!   of [`PinParams`].
//! - PIN answer (vicc to reader): one frame, a status byte, and for
//!   [`Status::Entered`] each PIN as a length byte and that many ASCII digits
//!   ([`PinAnswer`]).

use std::fmt;

use crate::vpcd::{
    payload_len, read_atr_answer, AtrAnswer, ProtocolError, ATR_ANSWER_MAX, HEADER_LEN,
};

/// The first three bytes of a HELLO payload.
pub const HELLO_MAGIC: [u8; 3] = [0xFF, b'V', b'P'];
/// The shortest HELLO payload: magic, version, features.
pub const HELLO_MIN_LEN: usize = 5;
/// The longest HELLO payload; bytes after the features are reserved for later
/// versions and ignored.
pub const HELLO_MAX_LEN: usize = 32;
/// The version of the extension this crate speaks.
pub const VERSION: u8 = 1;
/// Features bit: the vicc enters PINs.
pub const FEATURE_PIN_ENTRY: u8 = 0x01;
/// The control code of a PIN request (a one-byte frame; the parameters follow).
pub const ENTER_PIN: u8 = 0x10;
/// The bytes of a v1 PIN request's parameter frame.
pub const PARAMS_LEN: usize = 7;
/// The most bytes a PIN answer can take: status, and two PINs of up to 255 digits.
pub const ANSWER_MAX_LEN: usize = 1 + 2 * (1 + 255);
/// The most bytes a peer's answer to the reader's first GET ATR can take: a HELLO
/// frame, the ATR frame, and one to see that it sent more.
pub const PROBE_ANSWER_MAX: usize = HEADER_LEN + HELLO_MAX_LEN + ATR_ANSWER_MAX;

/// What a vicc announced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hello {
    /// The highest version of the extension it speaks (it speaks every one below).
    pub version: u8,
    pub features: u8,
}

impl Hello {
    /// The HELLO of a vicc speaking this crate's version with `features`.
    pub fn new(features: u8) -> Hello {
        Hello {
            version: VERSION,
            features,
        }
    }

    /// The HELLO payload (frame it with [`crate::vpcd::encode`]).
    pub fn payload(&self) -> Vec<u8> {
        let mut p = HELLO_MAGIC.to_vec();
        p.extend([self.version, self.features]);
        p
    }

    /// Parses a complete HELLO payload.
    pub fn parse(payload: &[u8]) -> Result<Hello, ProtocolError> {
        if payload.len() < HELLO_MIN_LEN || payload.len() > HELLO_MAX_LEN {
            return Err(ProtocolError::InvalidHello("length outside 5 to 32 bytes"));
        }
        if payload[..3] != HELLO_MAGIC {
            return Err(ProtocolError::InvalidHello("not FF 'V' 'P'"));
        }
        if payload[3] == 0 {
            return Err(ProtocolError::InvalidHello("version 0"));
        }
        Ok(Hello {
            version: payload[3],
            features: payload[4],
        })
    }

    /// Whether the vicc enters PINs.
    pub fn pin_entry(&self) -> bool {
        self.features & FEATURE_PIN_ENTRY != 0
    }
}

/// What the bytes a new peer has sent so far, in answer to the reader's first GET
/// ATR, say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeAnswer<'a> {
    /// Not all there yet.
    Incomplete,
    /// A valid ATR and nothing after it, after a HELLO if the vicc sent one.
    Card { hello: Option<Hello>, atr: &'a [u8] },
    /// Not what a card sends: the peer is no card.
    Refused(ProtocolError),
}

/// Reads a new peer's first bytes: at most one HELLO frame, then the answer to GET
/// ATR (read at most [`PROBE_ANSWER_MAX`] bytes). Without a HELLO (a first payload
/// byte other than FF) it decides exactly as [`read_atr_answer`]. Refuses as early as
/// the bytes allow.
pub fn read_probe_answer(bytes: &[u8]) -> ProbeAnswer<'_> {
    let (Some(prefix), Some(&0xFF)) = (bytes.get(..HEADER_LEN), bytes.get(HEADER_LEN)) else {
        return atr_only(bytes, None);
    };
    let len = payload_len([prefix[0], prefix[1]]);
    if !(HELLO_MIN_LEN..=HELLO_MAX_LEN).contains(&len) {
        return ProbeAnswer::Refused(ProtocolError::InvalidHello("length outside 5 to 32 bytes"));
    }
    let got = &bytes[HEADER_LEN..];
    let magic = got.len().min(HELLO_MAGIC.len());
    if got[..magic] != HELLO_MAGIC[..magic] {
        return ProbeAnswer::Refused(ProtocolError::InvalidHello("not FF 'V' 'P'"));
    }
    if got.len() < len {
        if got.len() > 3 && got[3] == 0 {
            return ProbeAnswer::Refused(ProtocolError::InvalidHello("version 0"));
        }
        return ProbeAnswer::Incomplete;
    }
    match Hello::parse(&got[..len]) {
        Ok(hello) => atr_only(&got[len..], Some(hello)),
        Err(e) => ProbeAnswer::Refused(e),
    }
}

fn atr_only(bytes: &[u8], hello: Option<Hello>) -> ProbeAnswer<'_> {
    match read_atr_answer(bytes) {
        AtrAnswer::Incomplete => ProbeAnswer::Incomplete,
        AtrAnswer::Atr(atr) => ProbeAnswer::Card { hello, atr },
        AtrAnswer::Refused(e) => ProbeAnswer::Refused(e),
    }
}

/// What a PIN request asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PinOperation {
    /// One PIN.
    Verify = 1,
    /// A new PIN, after the current one if asked.
    Modify = 2,
}

/// The parameters of a PIN request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PinParams {
    /// The version of the extension the reader uses: the lower of the vicc's and its own.
    pub version: u8,
    pub operation: PinOperation,
    /// Modify: the current PIN is entered first.
    pub current: bool,
    /// Modify: the new PIN is entered twice; the keypad compares them.
    pub confirm: bool,
    pub min_digits: u8,
    pub max_digits: u8,
    /// Seconds the user has; the keypad answers [`Status::TimedOut`] after them.
    pub timeout_secs: u8,
    /// The message index the application asked for (PC/SC part 10's bMsgIndex).
    pub message: u8,
}

/// Flags bits of the parameter frame.
const FLAG_CURRENT: u8 = 0x01;
const FLAG_CONFIRM: u8 = 0x02;

impl PinParams {
    /// The two frames' payloads of a request: the control code, then the parameters.
    pub fn request(&self) -> [Vec<u8>; 2] {
        let flags = if self.current { FLAG_CURRENT } else { 0 }
            | if self.confirm { FLAG_CONFIRM } else { 0 };
        [
            vec![ENTER_PIN],
            vec![
                self.version,
                self.operation as u8,
                flags,
                self.min_digits,
                self.max_digits,
                self.timeout_secs,
                self.message,
            ],
        ]
    }

    /// Parses a parameter frame (vicc side). Bytes after the seventh are reserved and
    /// ignored.
    pub fn parse(payload: &[u8]) -> Result<PinParams, ProtocolError> {
        let [version, op, flags, min, max, timeout, message, ..] = *payload else {
            return Err(ProtocolError::InvalidPinRequest("fewer than 7 bytes"));
        };
        if version == 0 {
            return Err(ProtocolError::InvalidPinRequest("version 0"));
        }
        let operation = match op {
            1 => PinOperation::Verify,
            2 => PinOperation::Modify,
            _ => return Err(ProtocolError::InvalidPinRequest("unknown operation")),
        };
        if min == 0 || min > max {
            return Err(ProtocolError::InvalidPinRequest("bad digit limits"));
        }
        Ok(PinParams {
            version,
            operation,
            current: flags & FLAG_CURRENT != 0,
            confirm: flags & FLAG_CONFIRM != 0,
            min_digits: min,
            max_digits: max,
            timeout_secs: timeout,
            message,
        })
    }

    /// How many PINs an [`Status::Entered`] answer carries.
    pub fn pin_count(&self) -> usize {
        match self.operation {
            PinOperation::Verify => 1,
            PinOperation::Modify if self.current => 2,
            PinOperation::Modify => 1,
        }
    }
}

/// The status byte of a PIN answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Entered = 0,
    Cancelled = 1,
    TimedOut = 2,
    /// The new PIN and its confirmation differ.
    Mismatch = 3,
    /// The user entered a PIN outside the limits.
    BadLength = 4,
}

impl Status {
    const ALL: [Status; 5] = [
        Status::Entered,
        Status::Cancelled,
        Status::TimedOut,
        Status::Mismatch,
        Status::BadLength,
    ];

    /// The status word a PIN pad reader returns for it (PC/SC part 10); none for
    /// [`Status::Entered`], where the card answers.
    pub fn status_word(self) -> Option<[u8; 2]> {
        match self {
            Status::Entered => None,
            Status::TimedOut => Some([0x64, 0x00]),
            Status::Cancelled => Some([0x64, 0x01]),
            Status::Mismatch => Some([0x64, 0x02]),
            Status::BadLength => Some([0x64, 0x03]),
        }
    }
}

/// A vicc's answer to a PIN request.
#[derive(Clone, PartialEq, Eq)]
pub enum PinAnswer {
    /// The PINs, as ASCII digits, in entry order (the current PIN first).
    Entered(Vec<Vec<u8>>),
    /// No PIN: why.
    Not(Status),
}

impl fmt::Debug for PinAnswer {
    /// Never shows the digits.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PinAnswer::Entered(pins) => write!(f, "Entered({} PIN(s))", pins.len()),
            PinAnswer::Not(s) => write!(f, "Not({s:?})"),
        }
    }
}

impl PinAnswer {
    /// The answer's payload (vicc side).
    pub fn payload(&self) -> Vec<u8> {
        match self {
            PinAnswer::Entered(pins) => {
                let mut p = vec![Status::Entered as u8];
                for pin in pins {
                    p.push(pin.len().min(255) as u8);
                    p.extend_from_slice(&pin[..pin.len().min(255)]);
                }
                p
            }
            PinAnswer::Not(status) => vec![*status as u8],
        }
    }

    /// Parses a vicc's answer to `params` (reader side): a known status; for
    /// [`Status::Entered`] exactly the PINs asked for, each within the limits and
    /// digits only; nothing after them.
    pub fn parse(payload: &[u8], params: &PinParams) -> Result<PinAnswer, ProtocolError> {
        let Some((&status, mut rest)) = payload.split_first() else {
            return Err(ProtocolError::InvalidPinAnswer("empty"));
        };
        let status = Status::ALL
            .into_iter()
            .find(|s| *s as u8 == status)
            .ok_or(ProtocolError::InvalidPinAnswer("unknown status"))?;
        if status != Status::Entered {
            return match rest {
                [] => Ok(PinAnswer::Not(status)),
                _ => Err(ProtocolError::InvalidPinAnswer(
                    "bytes after a status without PIN",
                )),
            };
        }
        let mut pins = Vec::with_capacity(2);
        for _ in 0..params.pin_count() {
            let Some((&len, tail)) = rest.split_first() else {
                return Err(ProtocolError::InvalidPinAnswer("fewer PINs than asked for"));
            };
            let len = usize::from(len);
            if len < usize::from(params.min_digits) || len > usize::from(params.max_digits) {
                return Err(ProtocolError::InvalidPinAnswer(
                    "a PIN outside the digit limits",
                ));
            }
            let Some((pin, tail)) = tail.split_at_checked(len) else {
                return Err(ProtocolError::InvalidPinAnswer(
                    "a PIN shorter than its length",
                ));
            };
            if !pin.iter().all(u8::is_ascii_digit) {
                return Err(ProtocolError::InvalidPinAnswer("a PIN with other than 0-9"));
            }
            pins.push(pin.to_vec());
            rest = tail;
        }
        if !rest.is_empty() {
            return Err(ProtocolError::InvalidPinAnswer("bytes after the PINs"));
        }
        Ok(PinAnswer::Entered(pins))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vpcd::{encode, AtrError, MAX_ATR_LEN};
    use proptest::prelude::*;

    fn frame(payload: &[u8]) -> Vec<u8> {
        let mut out = vec![];
        encode(payload, &mut out).unwrap();
        out
    }

    const ATR: [u8; 5] = [0x3B, 0x80, 0x80, 0x01, 0x01];

    #[test]
    fn hello_then_atr() {
        let hello = Hello::new(FEATURE_PIN_ENTRY);
        let mut wire = frame(&hello.payload());
        assert_eq!(wire, [0, 5, 0xFF, b'V', b'P', 1, 1]);
        wire.extend(frame(&ATR));
        for n in 0..wire.len() {
            assert_eq!(
                read_probe_answer(&wire[..n]),
                ProbeAnswer::Incomplete,
                "{n}"
            );
        }
        assert_eq!(
            read_probe_answer(&wire),
            ProbeAnswer::Card {
                hello: Some(hello),
                atr: &ATR
            }
        );
        // A later version with reserved bytes.
        let mut wire = frame(&[0xFF, b'V', b'P', 7, 0x81, 1, 2, 3]);
        wire.extend(frame(&ATR));
        assert_eq!(
            read_probe_answer(&wire),
            ProbeAnswer::Card {
                hello: Some(Hello {
                    version: 7,
                    features: 0x81
                }),
                atr: &ATR
            }
        );
    }

    #[test]
    fn without_hello_it_is_the_atr_answer() {
        let wire = frame(&ATR);
        assert_eq!(
            read_probe_answer(&wire),
            ProbeAnswer::Card {
                hello: None,
                atr: &ATR
            }
        );
        assert_eq!(
            read_probe_answer(&[0, 5, 0x00]),
            ProbeAnswer::Refused(ProtocolError::InvalidAtr(AtrError::BadTs(0)))
        );
    }

    #[test]
    fn bad_hellos_are_refused_early() {
        use ProbeAnswer::Refused;
        for bytes in [
            &[0, 4, 0xFF][..],
            &[0, 33, 0xFF],
            &[0, 5, 0xFF, b'X'],
            &[0, 5, 0xFF, b'V', b'Q'],
            &[0, 5, 0xFF, b'V', b'P', 0],
        ] {
            assert!(matches!(read_probe_answer(bytes), Refused(_)), "{bytes:?}");
        }
        // Two HELLOs: the second is no ATR.
        let mut wire = frame(&Hello::new(1).payload());
        wire.extend(frame(&Hello::new(1).payload()));
        assert!(matches!(read_probe_answer(&wire), Refused(_)));
        // Bytes after the ATR.
        let mut wire = frame(&Hello::new(1).payload());
        wire.extend(frame(&ATR));
        wire.push(0);
        assert_eq!(
            read_probe_answer(&wire),
            Refused(ProtocolError::TrailingBytes(1))
        );
    }

    #[test]
    fn requests_and_answers_round_trip() {
        let params = PinParams {
            version: 1,
            operation: PinOperation::Modify,
            current: true,
            confirm: true,
            min_digits: 4,
            max_digits: 8,
            timeout_secs: 30,
            message: 0,
        };
        let [control, p] = params.request();
        assert_eq!(control, [ENTER_PIN]);
        assert_eq!(p, [1, 2, 3, 4, 8, 30, 0]);
        assert_eq!(PinParams::parse(&p), Ok(params));
        let mut longer = p.clone();
        longer.push(9);
        assert_eq!(PinParams::parse(&longer), Ok(params));
        assert!(PinParams::parse(&p[..6]).is_err());
        let answer = PinAnswer::Entered(vec![b"1234".to_vec(), b"567890".to_vec()]);
        assert_eq!(answer.payload(), b"\x00\x041234\x06567890");
        assert_eq!(PinAnswer::parse(&answer.payload(), &params), Ok(answer));
        assert_eq!(
            PinAnswer::parse(&[1], &params),
            Ok(PinAnswer::Not(Status::Cancelled))
        );
        for bad in [
            &[][..],
            &[9],
            &[1, 0],
            b"\x00\x041234",
            b"\x00\x041234\x0412a4",
            b"\x00\x03123\x041234",
            b"\x00\x041234\x041234\x00",
            b"\x00\x041234\x0512",
        ] {
            assert!(PinAnswer::parse(bad, &params).is_err(), "{bad:?}");
        }
        assert_eq!(
            format!("{:?}", PinAnswer::Entered(vec![b"1234".to_vec()])),
            "Entered(1 PIN(s))"
        );
    }

    #[test]
    fn hello_lengths_versions_and_features() {
        let mut p = vec![0xFF, b'V', b'P', 1, FEATURE_PIN_ENTRY];
        assert_eq!(Hello::parse(&p), Ok(Hello::new(FEATURE_PIN_ENTRY)));
        assert!(Hello::parse(&p[..4]).is_err());
        p.resize(HELLO_MAX_LEN, 0xEE);
        assert_eq!(Hello::parse(&p), Ok(Hello::new(FEATURE_PIN_ENTRY)));
        p.push(0xEE);
        assert!(Hello::parse(&p).is_err());
        assert!(Hello::parse(&[0xFF, b'V', b'P', 0, 1]).is_err());
        assert!(Hello::parse(&[0xFF, b'V', b'Q', 1, 1]).is_err());
        assert_eq!(
            Hello::parse(&[0xFF, b'V', b'P', 2, 0]),
            Ok(Hello {
                version: 2,
                features: 0
            })
        );
        assert!(Hello::new(FEATURE_PIN_ENTRY).pin_entry());
        assert!(Hello::new(0x81).pin_entry());
        assert!(!Hello::new(0).pin_entry());
        assert!(!Hello::new(0x02).pin_entry());
        // In the probe too: a HELLO of 32 bytes is one, of 33 none.
        let mut wire = frame(&p[..HELLO_MAX_LEN]);
        wire.extend(frame(&ATR));
        assert!(matches!(
            read_probe_answer(&wire),
            ProbeAnswer::Card { hello: Some(_), .. }
        ));
        assert!(matches!(
            read_probe_answer(&frame(&p)),
            ProbeAnswer::Refused(ProtocolError::InvalidHello(_))
        ));
        let mut wire = frame(&[0xFF, b'V', b'P', 1, 0]);
        wire.extend(frame(&ATR));
        assert!(matches!(
            read_probe_answer(&wire),
            ProbeAnswer::Card { hello: Some(_), .. }
        ));
    }

    #[test]
    fn pin_params_flags_and_limits() {
        let params = |current: bool, confirm: bool| PinParams {
            version: 1,
            operation: PinOperation::Modify,
            current,
            confirm,
            min_digits: 4,
            max_digits: 8,
            timeout_secs: 30,
            message: 2,
        };
        for (current, confirm, flags) in [
            (false, false, 0),
            (true, false, 1),
            (false, true, 2),
            (true, true, 3),
        ] {
            let p = params(current, confirm);
            let [_, bytes] = p.request();
            assert_eq!(bytes[2], flags);
            assert_eq!(PinParams::parse(&bytes), Ok(p));
            assert_eq!(p.pin_count(), if current { 2 } else { 1 });
        }
        let verify = PinParams {
            operation: PinOperation::Verify,
            ..params(true, false)
        };
        assert_eq!(verify.pin_count(), 1);
        assert_eq!(verify.request()[1][1], 1);
        // The digit limits: 1 <= min <= max.
        let limits = |min: u8, max: u8| PinParams::parse(&[1, 1, 0, min, max, 30, 0]);
        assert!(limits(4, 4).is_ok());
        assert!(limits(1, 16).is_ok());
        assert!(limits(5, 4).is_err());
        assert!(limits(0, 4).is_err());
        assert!(
            PinParams::parse(&[0, 1, 0, 4, 8, 30, 0]).is_err(),
            "version 0"
        );
        assert!(
            PinParams::parse(&[1, 3, 0, 4, 8, 30, 0]).is_err(),
            "operation 3"
        );
    }

    #[test]
    fn pins_of_exactly_the_limits_and_long_pins() {
        let params = PinParams {
            version: 1,
            operation: PinOperation::Verify,
            current: false,
            confirm: false,
            min_digits: 4,
            max_digits: 8,
            timeout_secs: 30,
            message: 0,
        };
        for pin in [&b"1234"[..], b"12345678"] {
            let answer = PinAnswer::Entered(vec![pin.to_vec()]);
            assert_eq!(PinAnswer::parse(&answer.payload(), &params), Ok(answer));
        }
        for pin in [&b"123"[..], b"123456789"] {
            let answer = PinAnswer::Entered(vec![pin.to_vec()]);
            assert!(PinAnswer::parse(&answer.payload(), &params).is_err());
        }
        // A PIN longer than a length byte says is cut to 255 digits.
        let long = PinAnswer::Entered(vec![vec![b'3'; 300]]);
        let payload = long.payload();
        assert_eq!(payload.len(), 1 + 1 + 255);
        assert_eq!(payload[1], 255);
        let widest = PinParams {
            min_digits: 1,
            max_digits: 255,
            ..params
        };
        assert_eq!(
            PinAnswer::parse(&payload, &widest),
            Ok(PinAnswer::Entered(vec![vec![b'3'; 255]]))
        );
        assert_eq!(
            format!("{:?}", PinAnswer::Not(Status::Mismatch)),
            "Not(Mismatch)"
        );
    }

    #[test]
    fn the_read_bounds_fit_the_longest_messages() {
        // Two PINs of 255 digits.
        let longest = PinAnswer::Entered(vec![vec![b'1'; 255], vec![b'2'; 255]]);
        assert_eq!(longest.payload().len(), ANSWER_MAX_LEN);
        assert_eq!(ANSWER_MAX_LEN, 513);
        // The longest HELLO and ATR frames, and one byte to see that more came.
        let mut wire = frame(&[0xFF; HELLO_MAX_LEN]);
        wire.extend(frame(&[0x3B; MAX_ATR_LEN]));
        assert_eq!(PROBE_ANSWER_MAX, wire.len() + 1);
        assert_eq!(PROBE_ANSWER_MAX, 70);
    }

    #[test]
    fn statuses_map_to_part10_status_words() {
        assert_eq!(Status::Entered.status_word(), None);
        assert_eq!(Status::TimedOut.status_word(), Some([0x64, 0x00]));
        assert_eq!(Status::Cancelled.status_word(), Some([0x64, 0x01]));
        assert_eq!(Status::Mismatch.status_word(), Some([0x64, 0x02]));
        assert_eq!(Status::BadLength.status_word(), Some([0x64, 0x03]));
        let params = PinParams::parse(&[1, 1, 0, 4, 8, 30, 0]).unwrap();
        for status in Status::ALL.into_iter().skip(1) {
            let answer = PinAnswer::Not(status);
            assert_eq!(answer.payload(), [status as u8]);
            assert_eq!(PinAnswer::parse(&answer.payload(), &params), Ok(answer));
        }
    }

    proptest! {
        /// Fed in any pieces, a probe answer is refused at the first piece that
        /// decides it, never later; a card's answer has a valid ATR that ends the bytes.
        #[test]
        fn a_probe_answer_is_decided_by_its_bytes_alone(
            bytes in proptest::collection::vec(any::<u8>(), 0..PROBE_ANSWER_MAX),
        ) {
            let whole = read_probe_answer(&bytes);
            if let ProbeAnswer::Card { atr, .. } = &whole {
                prop_assert!(crate::vpcd::check_atr(atr).is_ok());
                prop_assert!(bytes.ends_with(atr));
            }
            for n in 0..bytes.len() {
                if let ProbeAnswer::Refused(_) = read_probe_answer(&bytes[..n]) {
                    prop_assert!(matches!(whole, ProbeAnswer::Refused(_)));
                }
            }
        }

        /// Without a leading FF payload byte, nothing changes for legacy viccs.
        #[test]
        fn legacy_answers_decide_as_before(bytes in proptest::collection::vec(any::<u8>(), 0..ATR_ANSWER_MAX)) {
            prop_assume!(bytes.get(2) != Some(&0xFF));
            let old = read_atr_answer(&bytes);
            let new = read_probe_answer(&bytes);
            match (old, new) {
                (AtrAnswer::Incomplete, ProbeAnswer::Incomplete) => {}
                (AtrAnswer::Atr(a), ProbeAnswer::Card { hello: None, atr }) => prop_assert_eq!(a, atr),
                (AtrAnswer::Refused(a), ProbeAnswer::Refused(b)) => prop_assert_eq!(a, b),
                (old, new) => prop_assert!(false, "{old:?} became {new:?}"),
            }
        }

        #[test]
        fn any_hello_and_atr_is_a_card(
            version in 1u8.., features: u8,
            reserved in proptest::collection::vec(any::<u8>(), 0..HELLO_MAX_LEN - 5),
            atr in proptest::collection::vec(any::<u8>(), 0..MAX_ATR_LEN),
        ) {
            let mut hello = vec![0xFF, b'V', b'P', version, features];
            hello.extend(&reserved);
            let mut atr = atr;
            atr.insert(0, 0x3B);
            let mut wire = frame(&hello);
            wire.extend(frame(&atr));
            prop_assert!(wire.len() <= PROBE_ANSWER_MAX);
            prop_assert_eq!(
                read_probe_answer(&wire),
                ProbeAnswer::Card { hello: Some(Hello { version, features }), atr: &atr }
            );
        }

        #[test]
        fn pin_answers_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64), min in 1u8..8, extra in 0u8..8, current: bool) {
            let params = PinParams {
                version: 1, operation: PinOperation::Modify, current, confirm: false,
                min_digits: min, max_digits: min + extra, timeout_secs: 1, message: 0,
            };
            if let Ok(PinAnswer::Entered(pins)) = PinAnswer::parse(&bytes, &params) {
                prop_assert_eq!(pins.len(), params.pin_count());
                for pin in pins {
                    prop_assert!(pin.len() >= usize::from(min) && pin.len() <= usize::from(min + extra));
                }
            }
        }
    }
}
