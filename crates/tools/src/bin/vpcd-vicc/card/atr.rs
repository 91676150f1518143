//! The card's Answer To Reset: the default one, its check byte, and a structural check
//! of user-supplied ATRs (ISO/IEC 7816-3 §8.2).

/// The default ATR without its check byte:
///
/// ```text
/// 3B          TS   direct convention
/// 8A          T0   TD1 follows; 10 historical bytes
/// 80          TD1  TD2 follows; T=0
/// 01          TD2  T=1
/// 80          category indicator: COMPACT-TLV objects follow
/// 73 90 01 40 card capabilities: select by full DF name and by file id,
///             1-byte data units, extended Lc and Le fields
/// 54 76 70 63 64  card issuer's data: "vpcd"
/// ```
///
/// followed by TCK ([`tck`]). It offers T=0 and T=1; pcscd and the vpcd driver let
/// applications use either.
const DEFAULT_BODY: [u8; 14] = [
    0x3B, 0x8A, 0x80, 0x01, 0x80, 0x73, 0x90, 0x01, 0x40, 0x54, 0x76, 0x70, 0x63, 0x64,
];

/// The default ATR, `3B 8A 80 01 80 73 90 01 40 54 76 70 63 64 7C`.
pub fn default_atr() -> Vec<u8> {
    let mut atr = DEFAULT_BODY.to_vec();
    atr.push(tck(&DEFAULT_BODY));
    atr
}

/// The check byte for an ATR without it: the XOR of every byte after TS, so that T0
/// to TCK inclusive XOR to zero.
pub fn tck(atr_without_tck: &[u8]) -> u8 {
    atr_without_tck.iter().skip(1).fold(0, |x, b| x ^ b)
}

/// What [`check`] found wrong with an ATR.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AtrProblem {
    /// Fewer bytes than T0 and the interface bytes announce.
    Truncated,
    /// A protocol other than T=0 is offered, so TCK is required, and it is absent.
    MissingTck,
    /// TCK is present but wrong; carries the right value.
    BadTck { expected: u8, found: u8 },
    /// Bytes after the end of the ATR.
    TrailingBytes(usize),
}

impl std::fmt::Display for AtrProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AtrProblem::Truncated => write!(f, "ATR is shorter than its T0/TDi bytes announce"),
            AtrProblem::MissingTck => {
                write!(f, "ATR offers a protocol other than T=0 but has no TCK")
            }
            AtrProblem::BadTck { expected, found } => {
                write!(
                    f,
                    "ATR check byte TCK is {found:02X}, should be {expected:02X}"
                )
            }
            AtrProblem::TrailingBytes(n) => write!(f, "{n} byte(s) after the end of the ATR"),
        }
    }
}

/// Walks the interface bytes of an ATR (TS already known to be valid) and checks its
/// length and TCK.
pub fn check(atr: &[u8]) -> Result<(), AtrProblem> {
    let t0 = *atr.get(1).ok_or(AtrProblem::Truncated)?;
    let historical = usize::from(t0 & 0x0F);
    let mut y = t0 >> 4;
    let mut pos = 2;
    let mut needs_tck = false;
    loop {
        // TAi, TBi, TCi present per bits 1..3 of Yi; TDi per bit 4.
        pos += (y & 0x07).count_ones() as usize;
        if y & 0x08 == 0 {
            break;
        }
        let td = *atr.get(pos).ok_or(AtrProblem::Truncated)?;
        pos += 1;
        needs_tck |= td & 0x0F != 0;
        y = td >> 4;
    }
    let end = pos + historical;
    if atr.len() < end {
        return Err(AtrProblem::Truncated);
    }
    match (needs_tck, atr.len() - end) {
        (false, 0) => Ok(()),
        (true, 0) => Err(AtrProblem::MissingTck),
        (true, 1) => {
            let expected = tck(&atr[..end]);
            let found = atr[end];
            if expected == found {
                Ok(())
            } else {
                Err(AtrProblem::BadTck { expected, found })
            }
        }
        (false, n) => Err(AtrProblem::TrailingBytes(n)),
        (true, n) => Err(AtrProblem::TrailingBytes(n - 1)),
    }
}

/// Parses hex bytes written the usual ways: `3B8A80`, `3B 8A 80`, `3b:8a:80`.
pub fn parse_hex(s: &str) -> Result<Vec<u8>, String> {
    let digits: Vec<u8> = s
        .bytes()
        .filter(|b| !matches!(b, b' ' | b':' | b'\t' | b'\n' | b'-'))
        .collect();
    if digits.len() % 2 != 0 {
        return Err(format!("odd number of hex digits in \"{s}\""));
    }
    digits
        .chunks(2)
        .map(|pair| {
            let text = String::from_utf8_lossy(pair);
            if !pair.iter().all(u8::is_ascii_hexdigit) {
                return Err(format!("\"{text}\" is not a hex byte"));
            }
            u8::from_str_radix(&text, 16).map_err(|_| format!("\"{text}\" is not a hex byte"))
        })
        .collect()
}

/// Hex with spaces, the way pcsc_scan and opensc-tool print bytes (and the driver
/// logs them).
pub use vpcd_protocol::hex as to_hex;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tck_is_xor_after_ts() {
        assert_eq!(tck(&[0x3B]), 0);
        assert_eq!(tck(&[0x3B, 0x80, 0x01]), 0x81);
        assert_eq!(tck(&[0xFF, 0x0F, 0xF0]), 0xFF);
        let atr = default_atr();
        assert_eq!(atr.iter().skip(1).fold(0, |x, b| x ^ b), 0);
    }

    #[test]
    fn default_atr_is_valid_and_offers_t1() {
        let atr = default_atr();
        assert_eq!(to_hex(&atr), "3B 8A 80 01 80 73 90 01 40 54 76 70 63 64 7C");
        assert_eq!(check(&atr), Ok(()));
        assert!(vpcd_protocol::vpcd::check_atr(&atr).is_ok());
        // TD2 offers T=1.
        assert_eq!(atr[3] & 0x0F, 1);
    }

    #[test]
    fn check_finds_problems() {
        // T=0 only: no TCK.
        assert_eq!(check(&[0x3B, 0x00]), Ok(()));
        assert_eq!(check(&[0x3B, 0x02, 0x14, 0x50]), Ok(()));
        assert_eq!(check(&[0x3B, 0x02, 0x14]), Err(AtrProblem::Truncated));
        assert_eq!(
            check(&[0x3B, 0x00, 0x99]),
            Err(AtrProblem::TrailingBytes(1))
        );
        assert_eq!(check(&[0x3B]), Err(AtrProblem::Truncated));
        // TA1 present.
        assert_eq!(check(&[0x3B, 0x10, 0x96]), Ok(()));
        assert_eq!(check(&[0x3B, 0x10]), Err(AtrProblem::Truncated));
        // T=1: TCK required.
        let mut atr = default_atr();
        atr.pop();
        assert_eq!(check(&atr), Err(AtrProblem::MissingTck));
        atr.push(0x00);
        assert_eq!(
            check(&atr),
            Err(AtrProblem::BadTck {
                expected: 0x7C,
                found: 0
            })
        );
        // TD1 present but missing.
        assert_eq!(check(&[0x3B, 0x80]), Err(AtrProblem::Truncated));
    }

    #[test]
    fn hex() {
        assert_eq!(parse_hex("3B8a 80:01"), Ok(vec![0x3B, 0x8A, 0x80, 0x01]));
        assert_eq!(parse_hex(""), Ok(vec![]));
        assert!(parse_hex("3B8").is_err());
        assert!(parse_hex("3G").is_err());
        assert!(parse_hex("+1").is_err());
        assert_eq!(to_hex(&[0x90, 0x00]), "90 00");
        assert_eq!(to_hex(&[]), "");
    }
}
