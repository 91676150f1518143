//! Command APDU parsing (ISO/IEC 7816-3 §12.1, 7816-4 §5.1): the four cases in their
//! short and extended forms, as one pure function.

/// A parsed command APDU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Command<'a> {
    pub cla: u8,
    pub ins: u8,
    pub p1: u8,
    pub p2: u8,
    /// The command data field (Nc bytes; empty in cases 1 and 2).
    pub data: &'a [u8],
    /// Ne, the most response data the reader expects; `None` without an Le field
    /// (cases 1 and 3). An Le of `00` (short) or `00 00` (extended) is 256 or 65536.
    pub ne: Option<usize>,
    /// Whether Lc/Le used the extended (3-byte / 2-byte) form.
    pub extended: bool,
}

impl Command<'_> {
    /// Whether Le asked for "as much as you have": `00` short or `00 00` extended.
    /// ISO 7816-4 lets the card answer such a request with fewer bytes and 90 00.
    pub fn ne_is_max(&self) -> bool {
        matches!(
            (self.ne, self.extended),
            (Some(256), false) | (Some(65536), true)
        )
    }
}

/// Why a byte string is not a command APDU. The card answers all of these with
/// 67 00 (wrong length).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApduError {
    /// Fewer than the four header bytes.
    TooShort(usize),
    /// The body does not match any case: Lc disagrees with the length.
    BadLength,
}

/// Parses a command APDU.
///
/// | body after CLA INS P1 P2     | case |
/// |------------------------------|------|
/// | (none)                       | 1    |
/// | Le                           | 2S   |
/// | 00 Le Le                     | 2E   |
/// | Lc data (Lc ≠ 0)             | 3S   |
/// | Lc data Le                   | 4S   |
/// | 00 Lc Lc data (Lc ≠ 0)       | 3E   |
/// | 00 Lc Lc data Le Le          | 4E   |
pub fn parse(apdu: &[u8]) -> Result<Command<'_>, ApduError> {
    if apdu.len() < 4 {
        return Err(ApduError::TooShort(apdu.len()));
    }
    let (cla, ins, p1, p2, body) = (apdu[0], apdu[1], apdu[2], apdu[3], &apdu[4..]);
    let cmd = |data, ne, extended| Command {
        cla,
        ins,
        p1,
        p2,
        data,
        ne,
        extended,
    };
    let short_ne = |b: u8| if b == 0 { 256 } else { usize::from(b) };
    let ext_ne = |hi: u8, lo: u8| match u16::from_be_bytes([hi, lo]) {
        0 => 65536,
        n => usize::from(n),
    };
    match body {
        [] => Ok(cmd(&[], None, false)),
        [le] => Ok(cmd(&[], Some(short_ne(*le)), false)),
        [0, hi, lo] => Ok(cmd(&[], Some(ext_ne(*hi, *lo)), true)),
        [0, hi, lo, rest @ ..] => {
            let nc = usize::from(u16::from_be_bytes([*hi, *lo]));
            if nc == 0 {
                return Err(ApduError::BadLength);
            }
            match rest.len().checked_sub(nc) {
                Some(0) => Ok(cmd(rest, None, true)),
                Some(2) => Ok(cmd(&rest[..nc], Some(ext_ne(rest[nc], rest[nc + 1])), true)),
                _ => Err(ApduError::BadLength),
            }
        }
        // A short Lc of 00 is not allowed: `00 xx` is neither 2S nor 2E.
        [0, _] => Err(ApduError::BadLength),
        [lc, rest @ ..] => {
            let nc = usize::from(*lc);
            match rest.len().checked_sub(nc) {
                Some(0) => Ok(cmd(rest, None, false)),
                Some(1) => Ok(cmd(&rest[..nc], Some(short_ne(rest[nc])), false)),
                _ => Err(ApduError::BadLength),
            }
        }
    }
}

/// Encodes a command APDU, choosing the short form when Nc ≤ 255 and Ne ≤ 256 and
/// the extended form otherwise. The inverse of [`parse`], for tests.
#[cfg(test)]
pub fn encode(cla: u8, ins: u8, p1: u8, p2: u8, data: &[u8], ne: Option<usize>) -> Vec<u8> {
    let extended = data.len() > 255 || ne.is_some_and(|n| n > 256);
    let mut out = Vec::with_capacity(4 + 3 + data.len() + 2);
    out.extend_from_slice(&[cla, ins, p1, p2]);
    if !data.is_empty() {
        if extended {
            out.push(0);
            out.extend_from_slice(&(data.len() as u16).to_be_bytes());
        } else {
            out.push(data.len() as u8);
        }
        out.extend_from_slice(data);
    }
    if let Some(ne) = ne {
        if extended {
            if data.is_empty() {
                out.push(0);
            }
            out.extend_from_slice(&((ne % 65536) as u16).to_be_bytes());
        } else {
            out.push((ne % 256) as u8);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(data: &[u8], ne: Option<usize>, extended: bool) -> Command<'_> {
        Command {
            cla: 0x00,
            ins: 0xA4,
            p1: 0x04,
            p2: 0x0C,
            data,
            ne,
            extended,
        }
    }

    #[test]
    fn short_cases() {
        assert_eq!(parse(&[0, 0xA4, 4, 0x0C]), Ok(c(&[], None, false)));
        assert_eq!(
            parse(&[0, 0xA4, 4, 0x0C, 0x10]),
            Ok(c(&[], Some(16), false))
        );
        assert_eq!(
            parse(&[0, 0xA4, 4, 0x0C, 0x00]),
            Ok(c(&[], Some(256), false))
        );
        assert_eq!(
            parse(&[0, 0xA4, 4, 0x0C, 2, 0x3F, 0]),
            Ok(c(&[0x3F, 0], None, false))
        );
        assert_eq!(
            parse(&[0, 0xA4, 4, 0x0C, 2, 0x3F, 0, 0]),
            Ok(c(&[0x3F, 0], Some(256), false))
        );
        assert_eq!(
            parse(&[0, 0xA4, 4, 0x0C, 1, 0xAA, 0xFF]),
            Ok(c(&[0xAA], Some(255), false))
        );
    }

    #[test]
    fn extended_cases() {
        assert_eq!(
            parse(&[0, 0xA4, 4, 0x0C, 0, 1, 0]),
            Ok(c(&[], Some(256), true))
        );
        assert_eq!(
            parse(&[0, 0xA4, 4, 0x0C, 0, 0, 0]),
            Ok(c(&[], Some(65536), true))
        );
        let mut a = vec![0, 0xA4, 4, 0x0C, 0, 1, 0];
        a.extend(std::iter::repeat(7).take(256));
        assert_eq!(parse(&a), Ok(c(&[7; 256], None, true)));
        a.extend([0, 0]);
        assert_eq!(parse(&a), Ok(c(&[7; 256], Some(65536), true)));
        let a = [0, 0xA4, 4, 0x0C, 0, 0, 2, 1, 2, 0x12, 0x34];
        assert_eq!(parse(&a), Ok(c(&[1, 2], Some(0x1234), true)));
    }

    #[test]
    fn malformed() {
        assert_eq!(parse(&[]), Err(ApduError::TooShort(0)));
        assert_eq!(parse(&[0, 0xA4, 4]), Err(ApduError::TooShort(3)));
        // Lc says 2, one byte present.
        assert_eq!(
            parse(&[0, 0xA4, 4, 0x0C, 2, 0x3F]),
            Err(ApduError::BadLength)
        );
        // Lc says 1, three bytes follow.
        assert_eq!(
            parse(&[0, 0xA4, 4, 0x0C, 1, 1, 2, 3]),
            Err(ApduError::BadLength)
        );
        // 00 then one byte: neither 2S nor 2E.
        assert_eq!(parse(&[0, 0xA4, 4, 0x0C, 0, 1]), Err(ApduError::BadLength));
        // Extended Lc of zero with data following.
        assert_eq!(
            parse(&[0, 0xA4, 4, 0x0C, 0, 0, 0, 5]),
            Err(ApduError::BadLength)
        );
        // Extended Lc of 2, then one byte of Le: 4E needs two.
        assert_eq!(
            parse(&[0, 0xA4, 4, 0x0C, 0, 0, 2, 1, 2, 3]),
            Err(ApduError::BadLength)
        );
    }

    #[test]
    fn largest_extended_echo_fits_a_frame() {
        let data = vec![0x5A; vpcd_protocol::vpcd::MAX_APDU_DATA];
        let a = encode(0x80, 0xEE, 0, 0, &data, Some(65536));
        assert_eq!(a.len(), vpcd_protocol::vpcd::MAX_PAYLOAD);
        let cmd = parse(&a).unwrap();
        assert_eq!(cmd.data.len(), 65526);
        assert_eq!(cmd.ne, Some(65536));
        assert!(cmd.extended && cmd.ne_is_max());
    }

    #[test]
    fn ne_is_max_only_for_zero_le() {
        assert!(parse(&[0, 0xB0, 0, 0, 0]).unwrap().ne_is_max());
        assert!(!parse(&[0, 0xB0, 0, 0, 0, 1, 0]).unwrap().ne_is_max());
        assert!(parse(&[0, 0xB0, 0, 0, 0, 0, 0]).unwrap().ne_is_max());
        assert!(!parse(&[0, 0xB0, 0, 0, 1]).unwrap().ne_is_max());
    }

    #[test]
    fn encode_round_trips_every_case() {
        let big = vec![1u8; 300];
        let cases: [(&[u8], Option<usize>); 10] = [
            (&[], None),
            (&[], Some(1)),
            (&[], Some(256)),
            (&[], Some(257)),
            (&[], Some(65536)),
            (&[9], None),
            (&[9; 255], Some(256)),
            (&big, None),
            (&big, Some(2)),
            (&[9], Some(65536)),
        ];
        for (data, ne) in cases {
            let a = encode(0x80, 0xEE, 1, 2, data, ne);
            let cmd = parse(&a).unwrap_or_else(|e| panic!("{a:02X?}: {e:?}"));
            assert_eq!((cmd.cla, cmd.ins, cmd.p1, cmd.p2), (0x80, 0xEE, 1, 2));
            assert_eq!(cmd.data, data);
            assert_eq!(cmd.ne, ne);
        }
    }

    #[test]
    fn parse_never_panics_on_short_garbage() {
        // Every byte string up to 7 bytes built from the interesting values.
        let vals = [0u8, 1, 2, 0xFF];
        for len in 0..=7u32 {
            for n in 0..vals.len().pow(len) {
                let mut k = n;
                let bytes: Vec<u8> = (0..len)
                    .map(|_| {
                        let b = vals[k % vals.len()];
                        k /= vals.len();
                        b
                    })
                    .collect();
                if let Ok(cmd) = parse(&bytes) {
                    assert!(cmd.data.len() + 4 <= bytes.len());
                }
            }
        }
    }
}
