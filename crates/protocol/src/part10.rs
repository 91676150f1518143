//! PC/SC part 10 secure PIN entry: `PIN_VERIFY_STRUCTURE` and `PIN_MODIFY_STRUCTURE`
//! (pcsc-lite's `reader.h`, CCID's `abPINDataStructure`), parsed strictly, and the
//! APDU built from their template with the digits the keypad entered.
//!
//! Both structures are packed and little-endian: a fixed header, `ulDataLength`, then
//! that many bytes of APDU template (`abData`). [`PinCommand::parse_verify`] and
//! [`PinCommand::parse_modify`] check every length, offset and format field, and that
//! every PIN length between the structure's minimum and maximum can be formatted into
//! the template, before anyone is asked for a PIN: a structure that parses can always
//! be turned into an APDU by [`PinCommand::build_apdu`].
//!
//! Formatting (CCID 6.1.11, as libccid and every CCID PIN pad read it):
//! - `bmFormatString`: bit 7 system units (0 bits, 1 bytes), bits 6-3 the PIN's
//!   position in the PIN block in those units, bit 2 justification (0 left, 1 right),
//!   bits 1-0 the digits' encoding (00 binary: one byte 0x00-0x09 per digit, 01 BCD:
//!   one nibble per digit, 10 ASCII: one byte '0'-'9' per digit).
//! - `bmPINBlockString`: bits 7-4 the size in bits of a PIN length field, bits 3-0 the
//!   PIN block's size in bytes. A block of 0 bytes means "variable": the encoded PIN is
//!   inserted into the template's data field (BCD padded with an F nibble to a whole
//!   byte) and Lc grows by its length; it takes neither a position nor a length field.
//! - `bmPINLengthFormat`: bit 4 system units of the length field's position (0 bits,
//!   1 bytes), bits 3-0 that position in the PIN block.
//! - Positions count from the most significant bit of the block's first byte; a fixed
//!   block starts at the first byte of the APDU's data field (VERIFY), or at
//!   `bInsertionOffsetOld` / `bInsertionOffsetNew` bytes into it (MODIFY). Template
//!   bytes a PIN does not cover stay as they are (a template full of FF pads with FF).
//!
//! Only short APDUs are taken as templates: `CLA INS P1 P2`, `CLA INS P1 P2 00`, or
//! `CLA INS P1 P2 Lc data [Le]`.

use std::fmt;

/// Bytes before `abData` in a PIN_VERIFY_STRUCTURE.
pub const VERIFY_HEADER_LEN: usize = 19;
/// Bytes before `abData` in a PIN_MODIFY_STRUCTURE.
pub const MODIFY_HEADER_LEN: usize = 24;
/// The most digits a PIN may have here; a structure's larger maximum is lowered to it.
pub const MAX_PIN_DIGITS: u8 = 16;
/// The PIN entry timeout when the structure's bTimerOut is 0, in seconds.
pub const DEFAULT_TIMEOUT_SECS: u8 = 30;
/// The longest PIN entry timeout honoured, in seconds; a larger bTimerOut is lowered.
pub const MAX_TIMEOUT_SECS: u8 = 120;
/// The longest template: a short case 4 APDU.
pub const MAX_TEMPLATE_LEN: usize = 4 + 1 + 255 + 1;

/// Why a structure is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Malformed(pub String);

impl fmt::Display for Malformed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Malformed {}

fn bad<T>(why: impl Into<String>) -> Result<T, Malformed> {
    Err(Malformed(why.into()))
}

/// How digits are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Binary,
    Bcd,
    Ascii,
}

impl Encoding {
    fn digit_bits(self) -> usize {
        match self {
            Encoding::Bcd => 4,
            Encoding::Binary | Encoding::Ascii => 8,
        }
    }

    fn digit_value(self, digit: u8) -> u32 {
        let d = u32::from(digit - b'0');
        match self {
            Encoding::Ascii => d + 0x30,
            Encoding::Binary | Encoding::Bcd => d,
        }
    }
}

/// What the PIN pad is asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// One PIN, inserted at the start of the data field.
    Verify,
    /// A new PIN (entered twice if `confirm`), and the current one first if `old`.
    Modify {
        old: bool,
        confirm: bool,
        old_offset: usize,
        new_offset: usize,
    },
}

/// The formatting fields, decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Format {
    pub encoding: Encoding,
    pub right_justify: bool,
    /// The PIN's position in its block, in bits.
    pub pin_position: usize,
    /// The PIN block's size in bytes; 0: variable.
    pub block_len: usize,
    /// The PIN length field's size in bits; 0: none.
    pub length_bits: usize,
    /// The PIN length field's position in the block, in bits.
    pub length_position: usize,
}

/// A short APDU template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    pub header: [u8; 4],
    pub data: Vec<u8>,
    pub le: Option<u8>,
}

impl Template {
    /// Parses `abData` as a short APDU.
    pub fn parse(bytes: &[u8]) -> Result<Template, Malformed> {
        let Some((header, rest)) = bytes.split_first_chunk::<4>() else {
            return bad(format!(
                "the APDU template has {} bytes: fewer than CLA INS P1 P2",
                bytes.len()
            ));
        };
        let (data, le) = match rest {
            [] | [0] => (&[][..], None),
            [lc, body @ ..] => {
                let lc = usize::from(*lc);
                match body.len().checked_sub(lc) {
                    _ if lc == 0 => {
                        return bad("the APDU template has Lc 0 followed by more bytes (an extended APDU?): only short APDUs are taken")
                    }
                    Some(0) => (body, None),
                    Some(1) => (&body[..lc], Some(body[lc])),
                    _ => {
                        return bad(format!(
                            "the APDU template's Lc says {lc} data bytes, {} follow",
                            body.len()
                        ))
                    }
                }
            }
        };
        Ok(Template {
            header: *header,
            data: data.to_vec(),
            le,
        })
    }

    fn encode(&self, data: &[u8]) -> Vec<u8> {
        let mut apdu = self.header.to_vec();
        if !data.is_empty() {
            // build_apdu checked that it fits.
            apdu.push(data.len() as u8);
            apdu.extend_from_slice(data);
        }
        if let Some(le) = self.le {
            apdu.push(le);
        }
        apdu
    }
}

/// A parsed PIN_VERIFY_STRUCTURE or PIN_MODIFY_STRUCTURE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PinCommand {
    pub operation: Operation,
    /// PIN entry timeout in seconds (bTimerOut, 0 replaced by the default, capped).
    pub timeout_secs: u8,
    pub min_digits: u8,
    pub max_digits: u8,
    /// The first message to show (bMsgIndex / bMsgIndex1).
    pub message: u8,
    pub format: Format,
    pub template: Template,
}

fn u16_le(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_le(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// The structure's abData, checked against ulDataLength at `at`.
fn ab_data<'a>(bytes: &'a [u8], header_len: usize, what: &str) -> Result<&'a [u8], Malformed> {
    if bytes.len() < header_len {
        return bad(format!(
            "{what} of {} bytes is shorter than its {header_len}-byte header",
            bytes.len()
        ));
    }
    let declared = u32_le(bytes, header_len - 4);
    let given = bytes.len() - header_len;
    if u64::from(declared) != given as u64 {
        return bad(format!(
            "{what}: ulDataLength says {declared} bytes of APDU, {given} follow"
        ));
    }
    if given > MAX_TEMPLATE_LEN {
        return bad(format!(
            "{what}: an APDU template of {given} bytes is not a short APDU"
        ));
    }
    Ok(&bytes[header_len..])
}

fn decode_format(format: u8, block: u8, length: u8) -> Result<Format, Malformed> {
    let encoding = match format & 0x03 {
        0 => Encoding::Binary,
        1 => Encoding::Bcd,
        2 => Encoding::Ascii,
        _ => return bad("bmFormatString: PIN format 11 is reserved"),
    };
    if length & 0xE0 != 0 {
        return bad(format!(
            "bmPINLengthFormat {length:#04x}: bits 7-5 are reserved"
        ));
    }
    let unit = |bytes: bool| if bytes { 8 } else { 1 };
    Ok(Format {
        encoding,
        right_justify: format & 0x04 != 0,
        pin_position: usize::from((format >> 3) & 0x0F) * unit(format & 0x80 != 0),
        block_len: usize::from(block & 0x0F),
        length_bits: usize::from(block >> 4),
        length_position: usize::from(length & 0x0F) * unit(length & 0x10 != 0),
    })
}

fn min_max(w: u16) -> Result<(u8, u8), Malformed> {
    let [max, min] = w.to_le_bytes();
    if max == 0 {
        return bad("wPINMaxExtraDigit: a maximum of 0 digits");
    }
    if min > max {
        return bad(format!(
            "wPINMaxExtraDigit: minimum {min} digits above maximum {max}"
        ));
    }
    if min > MAX_PIN_DIGITS {
        return bad(format!(
            "wPINMaxExtraDigit: minimum {min} digits above this PIN pad's {MAX_PIN_DIGITS}"
        ));
    }
    Ok((min.max(1), max.min(MAX_PIN_DIGITS)))
}

fn timeout(t: u8) -> u8 {
    match t {
        0 => DEFAULT_TIMEOUT_SECS,
        t => t.min(MAX_TIMEOUT_SECS),
    }
}

/// Bits `[start, end)` of a fixed block.
type Span = (usize, usize);

fn overlap(a: Span, b: Span) -> bool {
    a.0 < b.1 && b.0 < a.1
}

impl PinCommand {
    /// Parses a PIN_VERIFY_STRUCTURE (FEATURE_VERIFY_PIN_DIRECT's input).
    pub fn parse_verify(bytes: &[u8]) -> Result<PinCommand, Malformed> {
        let ab = ab_data(bytes, VERIFY_HEADER_LEN, "PIN_VERIFY_STRUCTURE")?;
        let (min_digits, max_digits) = min_max(u16_le(bytes, 5))?;
        let command = PinCommand {
            operation: Operation::Verify,
            timeout_secs: timeout(bytes[0]),
            min_digits,
            max_digits,
            message: bytes[11],
            format: decode_format(bytes[2], bytes[3], bytes[4])?,
            template: Template::parse(ab)?,
        };
        command.check()?;
        Ok(command)
    }

    /// Parses a PIN_MODIFY_STRUCTURE (FEATURE_MODIFY_PIN_DIRECT's input).
    pub fn parse_modify(bytes: &[u8]) -> Result<PinCommand, Malformed> {
        let ab = ab_data(bytes, MODIFY_HEADER_LEN, "PIN_MODIFY_STRUCTURE")?;
        let (min_digits, max_digits) = min_max(u16_le(bytes, 7))?;
        let confirm = bytes[9];
        if confirm & !0x03 != 0 {
            return bad(format!(
                "bConfirmPIN {confirm:#04x}: only bits 0 (confirm) and 1 (current PIN) are supported"
            ));
        }
        let command = PinCommand {
            operation: Operation::Modify {
                old: confirm & 0x02 != 0,
                confirm: confirm & 0x01 != 0,
                old_offset: usize::from(bytes[5]),
                new_offset: usize::from(bytes[6]),
            },
            timeout_secs: timeout(bytes[0]),
            min_digits,
            max_digits,
            message: bytes[14],
            format: decode_format(bytes[2], bytes[3], bytes[4])?,
            template: Template::parse(ab)?,
        };
        command.check()?;
        Ok(command)
    }

    /// Where the PINs go: (offset in the data field) for each PIN, in entry order.
    fn offsets(&self) -> Vec<usize> {
        match self.operation {
            Operation::Verify => vec![0],
            Operation::Modify {
                old: true,
                old_offset,
                new_offset,
                ..
            } => vec![old_offset, new_offset],
            Operation::Modify { new_offset, .. } => vec![new_offset],
        }
    }

    /// How many PINs the keypad returns (a confirmation is checked by the keypad).
    pub fn pin_count(&self) -> usize {
        self.offsets().len()
    }

    /// Checks that every PIN length from min to max formats into the template.
    fn check(&self) -> Result<(), Malformed> {
        let f = &self.format;
        let data_len = self.template.data.len();
        let max = usize::from(self.max_digits);
        let digit_bits = f.encoding.digit_bits();
        if f.block_len == 0 {
            if f.length_bits != 0 {
                return bad("bmPINBlockString: a PIN length field needs a fixed PIN block");
            }
            if f.pin_position != 0 {
                return bad("bmFormatString: a PIN position needs a fixed PIN block");
            }
            if f.right_justify {
                return bad("bmFormatString: right justification needs a fixed PIN block");
            }
            for offset in self.offsets() {
                if offset > data_len {
                    return bad(format!(
                        "insertion offset {offset} is past the template's {data_len} data bytes"
                    ));
                }
            }
            let pin_bytes = (max * digit_bits).div_ceil(8);
            let total = data_len + self.pin_count() * pin_bytes;
            if total > 255 {
                return bad(format!(
                    "{max}-digit PINs make a data field of {total} bytes, more than a short APDU carries"
                ));
            }
            return Ok(());
        }
        let block_bits = f.block_len * 8;
        let digits: Span = if f.right_justify {
            (block_bits.saturating_sub(max * digit_bits), block_bits)
        } else {
            (f.pin_position, f.pin_position + max * digit_bits)
        };
        if max * digit_bits > block_bits || digits.1 > block_bits || digits.0 < f.pin_position {
            return bad(format!(
                "{max} digits at bit {} do not fit a PIN block of {} bytes",
                f.pin_position, f.block_len
            ));
        }
        if f.length_bits > 0 {
            let length: Span = (f.length_position, f.length_position + f.length_bits);
            if length.1 > block_bits {
                return bad(format!(
                    "the {}-bit PIN length field at bit {} is outside the {}-byte PIN block",
                    f.length_bits, f.length_position, f.block_len
                ));
            }
            if f.length_bits < 8 && max >= 1 << f.length_bits {
                return bad(format!(
                    "a PIN length of {max} does not fit {} bits",
                    f.length_bits
                ));
            }
            if overlap(length, digits) {
                return bad("the PIN length field overlaps the PIN's digits");
            }
        }
        let mut blocks: Vec<Span> = vec![];
        for offset in self.offsets() {
            if offset + f.block_len > data_len {
                return bad(format!(
                    "a {}-byte PIN block at offset {offset} does not fit the template's {data_len} data bytes",
                    f.block_len
                ));
            }
            let block = (offset, offset + f.block_len);
            if blocks.iter().any(|b| overlap(*b, block)) {
                return bad("the current and the new PIN blocks overlap");
            }
            blocks.push(block);
        }
        Ok(())
    }

    /// Checks the digits the keypad entered: one PIN per [`PinCommand::pin_count`],
    /// each of min to max ASCII digits.
    pub fn check_pins(&self, pins: &[&[u8]]) -> Result<(), Malformed> {
        if pins.len() != self.pin_count() {
            return bad(format!(
                "{} PIN(s) entered, {} wanted",
                pins.len(),
                self.pin_count()
            ));
        }
        for pin in pins {
            let n = pin.len();
            if n < usize::from(self.min_digits) || n > usize::from(self.max_digits) {
                return bad(format!(
                    "a PIN of {n} digits, outside {}-{}",
                    self.min_digits, self.max_digits
                ));
            }
            if !pin.iter().all(u8::is_ascii_digit) {
                return bad("a PIN with something other than the digits 0-9");
            }
        }
        Ok(())
    }

    /// The APDU to send: the template with the PINs (ASCII digits, in entry order:
    /// the current PIN first when asked for) formatted in.
    pub fn build_apdu(&self, pins: &[&[u8]]) -> Result<Vec<u8>, Malformed> {
        self.check_pins(pins)?;
        let f = &self.format;
        let mut data = self.template.data.clone();
        if f.block_len == 0 {
            // Insert each encoded PIN at its offset; at the same offset the current
            // PIN comes first. Offsets refer to the template.
            let mut inserts: Vec<(usize, usize, Vec<u8>)> = self
                .offsets()
                .into_iter()
                .zip(pins)
                .enumerate()
                .map(|(i, (offset, pin))| (offset, i, encode_variable(f.encoding, pin)))
                .collect();
            inserts.sort();
            for (offset, _, bytes) in inserts.into_iter().rev() {
                data.splice(offset..offset, bytes);
            }
        } else {
            for (offset, pin) in self.offsets().into_iter().zip(pins) {
                let block = &mut data[offset..offset + f.block_len];
                let bits = f.encoding.digit_bits();
                let start = if f.right_justify {
                    f.block_len * 8 - pin.len() * bits
                } else {
                    f.pin_position
                };
                for (i, digit) in pin.iter().enumerate() {
                    write_bits(
                        block,
                        start + i * bits,
                        bits,
                        f.encoding.digit_value(*digit),
                    );
                }
                if f.length_bits > 0 {
                    write_bits(block, f.length_position, f.length_bits, pin.len() as u32);
                }
            }
        }
        if data.len() > 255 {
            return bad("the PIN does not fit a short APDU");
        }
        Ok(self.template.encode(&data))
    }
}

/// A PIN as a variable block: whole bytes, BCD padded with an F nibble.
fn encode_variable(encoding: Encoding, pin: &[u8]) -> Vec<u8> {
    match encoding {
        Encoding::Bcd => pin
            .chunks(2)
            .map(|pair| {
                let hi = pair[0] - b'0';
                let lo = pair.get(1).map_or(0x0F, |d| d - b'0');
                hi << 4 | lo
            })
            .collect(),
        e => pin.iter().map(|d| e.digit_value(*d) as u8).collect(),
    }
}

/// Writes the low `bits` bits of `value` at bit `at` (counted from the most
/// significant bit of `buf[0]`), most significant bit first. The caller checked the
/// bounds.
fn write_bits(buf: &mut [u8], at: usize, bits: usize, value: u32) {
    for i in 0..bits {
        let bit = (value >> (bits - 1 - i)) & 1;
        let pos = at + i;
        let mask = 0x80u8 >> (pos % 8);
        if bit == 1 {
            buf[pos / 8] |= mask;
        } else {
            buf[pos / 8] &= !mask;
        }
    }
}

/// A PIN_VERIFY_STRUCTURE as OpenSC's pcsc reader builds it (reader-pcsc.c,
/// `part10_build_verify_pin_block`), for tests and tools: timeouts 30 s, entry on the
/// validation key, no messages, the APDU template last.
pub fn verify_structure(
    format: u8,
    block: u8,
    length: u8,
    min: u8,
    max: u8,
    apdu: &[u8],
) -> Vec<u8> {
    let mut s = vec![
        30, 30, format, block, length, max, min, 0x02, 0x00, 0, 0, 0, 0, 0, 0,
    ];
    s.extend_from_slice(&(apdu.len() as u32).to_le_bytes());
    s.extend_from_slice(apdu);
    s
}

/// A PIN_MODIFY_STRUCTURE as OpenSC builds it (`part10_build_modify_pin_block`):
/// `confirm` is bConfirmPIN (0x03: current PIN, new PIN, confirmation).
#[allow(clippy::too_many_arguments)]
pub fn modify_structure(
    format: u8,
    block: u8,
    length: u8,
    old_offset: u8,
    new_offset: u8,
    min: u8,
    max: u8,
    confirm: u8,
    apdu: &[u8],
) -> Vec<u8> {
    let mut s = vec![
        30, 30, format, block, length, old_offset, new_offset, max, min, confirm, 0x02, 0x00, 0, 0,
        0, 1, 2, 0, 0, 0,
    ];
    s.extend_from_slice(&(apdu.len() as u32).to_le_bytes());
    s.extend_from_slice(apdu);
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const VERIFY: [u8; 5] = [0x00, 0x20, 0x00, 0x81, 0x00];

    #[test]
    fn header_sizes_match_reader_h() {
        assert_eq!(
            verify_structure(2, 0, 0, 4, 8, &[]).len(),
            VERIFY_HEADER_LEN
        );
        assert_eq!(
            modify_structure(2, 0, 0, 0, 0, 4, 8, 3, &[]).len(),
            MODIFY_HEADER_LEN
        );
    }

    #[test]
    fn opensc_ascii_verify_without_padding() {
        let s = verify_structure(0x02, 0x00, 0x00, 4, 8, &VERIFY);
        let c = PinCommand::parse_verify(&s).unwrap();
        assert_eq!((c.min_digits, c.max_digits, c.timeout_secs), (4, 8, 30));
        assert_eq!(
            c.build_apdu(&[b"123456"]).unwrap(),
            [0x00, 0x20, 0x00, 0x81, 6, b'1', b'2', b'3', b'4', b'5', b'6']
        );
    }

    #[test]
    fn opensc_ascii_verify_padded_to_8() {
        let mut apdu = vec![0x00, 0x20, 0x00, 0x81, 0x08];
        apdu.extend([0xFF; 8]);
        let c = PinCommand::parse_verify(&verify_structure(0x02, 0x08, 0x00, 4, 8, &apdu)).unwrap();
        let mut want = vec![0x00, 0x20, 0x00, 0x81, 0x08];
        want.extend(b"1234");
        want.extend([0xFF; 4]);
        assert_eq!(c.build_apdu(&[b"1234"]).unwrap(), want);
    }

    #[test]
    fn glp_bcd_with_length_nibble() {
        // OpenSC's GLP: BCD, PIN at bit 8, 4-bit length at bit 4, 8-byte block.
        let mut apdu = vec![0x00, 0x20, 0x00, 0x81, 0x08, 0x20];
        apdu.extend([0xFF; 7]);
        let c =
            PinCommand::parse_verify(&verify_structure(0x01 | (8 << 3), 0x48, 0x04, 4, 12, &apdu))
                .unwrap();
        let got = c.build_apdu(&[b"12345"]).unwrap();
        assert_eq!(&got[5..], [0x25, 0x12, 0x34, 0x5F, 0xFF, 0xFF, 0xFF, 0xFF]);
    }

    #[test]
    fn right_justified_bcd_in_bytes() {
        let apdu = [0x00, 0x20, 0x00, 0x01, 0x04, 0, 0, 0, 0];
        let c = PinCommand::parse_verify(&verify_structure(0x85, 0x04, 0x00, 4, 8, &apdu)).unwrap();
        assert_eq!(&c.build_apdu(&[b"1234"]).unwrap()[5..], [0, 0, 0x12, 0x34]);
    }

    #[test]
    fn opensc_ascii_modify_without_padding() {
        let apdu = [0x00, 0x24, 0x00, 0x81, 0x00];
        let c = PinCommand::parse_modify(&modify_structure(0x02, 0, 0, 0, 0, 4, 8, 0x03, &apdu))
            .unwrap();
        assert_eq!(c.pin_count(), 2);
        let got = c.build_apdu(&[b"1234", b"98765"]).unwrap();
        assert_eq!(&got[..5], [0x00, 0x24, 0x00, 0x81, 9]);
        assert_eq!(&got[5..], b"123498765");
        // bConfirmPIN 0x01: new PIN only.
        let c = PinCommand::parse_modify(&modify_structure(0x02, 0, 0, 0, 0, 4, 8, 0x01, &apdu))
            .unwrap();
        assert_eq!(&c.build_apdu(&[b"5555"]).unwrap()[5..], b"5555");
    }

    #[test]
    fn padded_modify_with_offsets() {
        let mut apdu = vec![0x00, 0x24, 0x00, 0x81, 16];
        apdu.extend([0xFF; 16]);
        let c = PinCommand::parse_modify(&modify_structure(0x02, 0x08, 0, 0, 8, 4, 8, 0x03, &apdu))
            .unwrap();
        let got = c.build_apdu(&[b"1234", b"87654321"]).unwrap();
        assert_eq!(&got[5..9], b"1234");
        assert_eq!(&got[9..13], [0xFF; 4]);
        assert_eq!(&got[13..], b"87654321");
    }

    #[test]
    fn malformed_structures_are_refused() {
        let ok = verify_structure(0x02, 0, 0, 4, 8, &VERIFY);
        assert!(PinCommand::parse_verify(&ok).is_ok());
        // Truncated anywhere.
        for n in 0..ok.len() {
            assert!(PinCommand::parse_verify(&ok[..n]).is_err(), "{n} bytes");
        }
        // ulDataLength off by one either way.
        let mut s = ok.clone();
        s[15] = 6;
        assert!(PinCommand::parse_verify(&s).is_err());
        s[15] = 4;
        assert!(PinCommand::parse_verify(&s).is_err());
        // min > max, max 0.
        assert!(PinCommand::parse_verify(&verify_structure(2, 0, 0, 9, 8, &VERIFY)).is_err());
        assert!(PinCommand::parse_verify(&verify_structure(2, 0, 0, 0, 0, &VERIFY)).is_err());
        // Reserved encoding.
        assert!(PinCommand::parse_verify(&verify_structure(3, 0, 0, 4, 8, &VERIFY)).is_err());
        // A block past the template.
        assert!(PinCommand::parse_verify(&verify_structure(2, 8, 0, 4, 8, &VERIFY)).is_err());
        // Lc disagreeing with the template.
        assert!(PinCommand::parse_verify(&verify_structure(
            2,
            0,
            0,
            4,
            8,
            &[0, 0x20, 0, 0x81, 3, 1]
        ))
        .is_err());
        // 12 ASCII digits in an 8-byte block.
        let mut apdu = vec![0x00, 0x20, 0x00, 0x81, 0x08];
        apdu.extend([0xFF; 8]);
        assert!(PinCommand::parse_verify(&verify_structure(2, 8, 0, 4, 12, &apdu)).is_err());
        // Modify: offsets past the template, overlapping blocks, reserved confirm bits.
        let apdu16 = {
            let mut a = vec![0x00, 0x24, 0x00, 0x81, 16];
            a.extend([0xFF; 16]);
            a
        };
        assert!(
            PinCommand::parse_modify(&modify_structure(2, 8, 0, 0, 9, 4, 8, 3, &apdu16)).is_err()
        );
        assert!(
            PinCommand::parse_modify(&modify_structure(2, 8, 0, 0, 4, 4, 8, 3, &apdu16)).is_err()
        );
        assert!(
            PinCommand::parse_modify(&modify_structure(2, 0, 0, 0, 0, 4, 8, 4, &VERIFY)).is_err()
        );
        assert!(
            PinCommand::parse_modify(&modify_structure(2, 0, 0, 6, 0, 4, 8, 3, &VERIFY)).is_err()
        );
    }

    #[test]
    fn entered_pins_are_checked() {
        let c = PinCommand::parse_verify(&verify_structure(2, 0, 0, 4, 8, &VERIFY)).unwrap();
        assert!(c.build_apdu(&[b"123"]).is_err());
        assert!(c.build_apdu(&[b"123456789"]).is_err());
        assert!(c.build_apdu(&[b"12a4"]).is_err());
        assert!(c.build_apdu(&[b"1234", b"1234"]).is_err());
        assert!(c.build_apdu(&[]).is_err());
    }

    #[test]
    fn limits_are_capped() {
        let s = verify_structure(2, 0, 0, 1, 40, &VERIFY);
        let c = PinCommand::parse_verify(&s).unwrap();
        assert_eq!(c.max_digits, MAX_PIN_DIGITS);
        let mut s = verify_structure(2, 0, 0, 0, 8, &VERIFY);
        s[0] = 250;
        let c = PinCommand::parse_verify(&s).unwrap();
        assert_eq!((c.min_digits, c.timeout_secs), (1, MAX_TIMEOUT_SECS));
    }

    /// `verify_structure` with the bytes the parser skips (bTeoPrologue) set, so that
    /// reading ulDataLength from a neighbouring byte shows.
    fn verify_with_prologue(
        format: u8,
        block: u8,
        length: u8,
        min: u8,
        max: u8,
        apdu: &[u8],
    ) -> Vec<u8> {
        let mut s = verify_structure(format, block, length, min, max, apdu);
        s[12..15].copy_from_slice(&[0xA5, 0x5A, 0xC3]);
        s
    }

    #[test]
    fn a_refusal_says_why() {
        let e = PinCommand::parse_verify(&[0; 10]).unwrap_err();
        assert_eq!(e.to_string(), e.0);
        assert_eq!(
            e.to_string(),
            "PIN_VERIFY_STRUCTURE of 10 bytes is shorter than its 19-byte header"
        );
        // The whole header and no template: the header is there, the APDU is not.
        let e = PinCommand::parse_verify(&verify_structure(2, 0, 0, 4, 8, &[])).unwrap_err();
        assert!(e.0.contains("the APDU template has 0 bytes"), "{e}");
    }

    #[test]
    fn templates_of_each_short_case() {
        let header = [0x00, 0x20, 0x00, 0x81];
        let t = |bytes: &[u8]| Template::parse(bytes);
        let want = |data: &[u8], le: Option<u8>| {
            Ok(Template {
                header,
                data: data.to_vec(),
                le,
            })
        };
        assert_eq!(t(&header), want(&[], None));
        assert_eq!(t(&[0x00, 0x20, 0x00, 0x81, 0x00]), want(&[], None));
        assert_eq!(
            t(&[0x00, 0x20, 0x00, 0x81, 2, 0xAA, 0xBB]),
            want(&[0xAA, 0xBB], None)
        );
        assert_eq!(
            t(&[0x00, 0x20, 0x00, 0x81, 2, 0xAA, 0xBB, 0x10]),
            want(&[0xAA, 0xBB], Some(0x10))
        );
        for bad in [
            &[0x00, 0x20, 0x00][..],
            // Lc 0 and more bytes: an extended APDU, even with a single byte after it.
            &[0x00, 0x20, 0x00, 0x81, 0x00, 0x05],
            &[0x00, 0x20, 0x00, 0x81, 0x00, 0x05, 0x06],
            &[0x00, 0x20, 0x00, 0x81, 2, 0xAA],
            &[0x00, 0x20, 0x00, 0x81, 2, 0xAA, 0xBB, 0x10, 0x11],
        ] {
            assert!(t(bad).is_err(), "{bad:02X?}");
        }
        // Le stays at the end of the built APDU.
        let c = PinCommand::parse_verify(&verify_structure(
            0x02,
            0,
            0,
            4,
            8,
            &[0x00, 0x20, 0x00, 0x81, 1, 0xAA, 0x00],
        ))
        .unwrap();
        assert_eq!(
            c.build_apdu(&[b"1234"]).unwrap(),
            [0x00, 0x20, 0x00, 0x81, 5, b'1', b'2', b'3', b'4', 0xAA, 0x00]
        );
    }

    #[test]
    fn the_longest_template_has_a_data_length_above_255() {
        // Case 4 with 255 data bytes and Le: 261 bytes, ulDataLength 05 01 00 00.
        let mut apdu = vec![0x00, 0x20, 0x00, 0x81, 0xFF];
        apdu.extend([0xFF; 255]);
        apdu.push(0x00);
        assert_eq!(apdu.len(), MAX_TEMPLATE_LEN);
        assert_eq!(MAX_TEMPLATE_LEN, 261);
        let s = verify_with_prologue(0x02, 0x08, 0x00, 4, 8, &apdu);
        assert_eq!(s[15..19], [0x05, 0x01, 0x00, 0x00]);
        let c = PinCommand::parse_verify(&s).unwrap();
        assert_eq!((c.template.data.len(), c.template.le), (255, Some(0)));
        let built = c.build_apdu(&[b"1234"]).unwrap();
        assert_eq!(built.len(), MAX_TEMPLATE_LEN);
        assert_eq!(&built[5..13], b"1234\xFF\xFF\xFF\xFF");
        let mut m = modify_structure(0x02, 0x08, 0x00, 0, 8, 4, 8, 0x03, &apdu);
        m[17..20].copy_from_slice(&[0xA5, 0x5A, 0xC3]);
        assert_eq!(m[20..24], [0x05, 0x01, 0x00, 0x00]);
        let c = PinCommand::parse_modify(&m).unwrap();
        assert_eq!(c.template.data.len(), 255);
        // Any other ulDataLength is refused, whichever byte differs.
        for at in 15..19 {
            let mut wrong = s.clone();
            wrong[at] ^= 0x01;
            assert!(PinCommand::parse_verify(&wrong).is_err(), "byte {at}");
        }
        // One byte more is no short APDU.
        let mut longer = apdu.clone();
        longer.push(0x00);
        let e = PinCommand::parse_verify(&verify_with_prologue(0x02, 0x08, 0, 4, 8, &longer))
            .unwrap_err();
        assert!(e.0.contains("262 bytes is not a short APDU"), "{e}");
    }

    #[test]
    fn format_fields_decode() {
        // BCD, right-justified, at byte 3; a 4-bit length field at byte 2; 8 bytes.
        assert_eq!(
            decode_format(0x80 | (3 << 3) | 0x04 | 0x01, 0x48, 0x10 | 0x02),
            Ok(Format {
                encoding: Encoding::Bcd,
                right_justify: true,
                pin_position: 24,
                block_len: 8,
                length_bits: 4,
                length_position: 16,
            })
        );
        // ASCII, left-justified, at bit 5; an 8-bit length field at bit 15; 15 bytes.
        assert_eq!(
            decode_format((5 << 3) | 0x02, 0x8F, 0x0F),
            Ok(Format {
                encoding: Encoding::Ascii,
                right_justify: false,
                pin_position: 5,
                block_len: 15,
                length_bits: 8,
                length_position: 15,
            })
        );
        assert_eq!(
            decode_format(0x00, 0, 0).unwrap().encoding,
            Encoding::Binary
        );
        assert!(decode_format(0x03, 0, 0).is_err());
        for reserved in [0x20, 0x40, 0x80] {
            assert!(decode_format(0x02, 0, reserved).is_err(), "{reserved:#x}");
        }
        assert!(decode_format(0x02, 0, 0x1F).is_ok());
    }

    #[test]
    fn binary_and_bcd_digits() {
        let mut apdu = vec![0x00, 0x20, 0x00, 0x81, 0x08];
        apdu.extend([0xFF; 8]);
        let c = PinCommand::parse_verify(&verify_structure(0x00, 0x08, 0, 4, 8, &apdu)).unwrap();
        assert_eq!(
            &c.build_apdu(&[b"0912"]).unwrap()[5..],
            [0, 9, 1, 2, 0xFF, 0xFF, 0xFF, 0xFF]
        );
        // Variable length: whole bytes, BCD padded with an F nibble.
        let c = PinCommand::parse_verify(&verify_structure(0x01, 0, 0, 4, 8, &VERIFY)).unwrap();
        assert_eq!(
            &c.build_apdu(&[b"12345"]).unwrap()[4..],
            [3, 0x12, 0x34, 0x5F]
        );
        assert_eq!(&c.build_apdu(&[b"9876"]).unwrap()[4..], [2, 0x98, 0x76]);
        let c = PinCommand::parse_verify(&verify_structure(0x00, 0, 0, 4, 8, &VERIFY)).unwrap();
        assert_eq!(&c.build_apdu(&[b"0912"]).unwrap()[4..], [4, 0, 9, 1, 2]);
    }

    #[test]
    fn digit_limits_and_timeouts_at_their_bounds() {
        let limits = |min: u8, max: u8| {
            PinCommand::parse_verify(&verify_structure(2, 0, 0, min, max, &VERIFY))
                .map(|c| (c.min_digits, c.max_digits))
        };
        assert_eq!(limits(4, 4), Ok((4, 4)));
        assert_eq!(limits(16, 20), Ok((16, 16)));
        assert!(limits(17, 20).is_err());
        assert!(limits(5, 4).is_err());
        assert!(limits(0, 0).is_err());
        assert_eq!(limits(0, 1), Ok((1, 1)));
        let timeout = |t: u8| {
            let mut s = verify_structure(2, 0, 0, 4, 8, &VERIFY);
            s[0] = t;
            PinCommand::parse_verify(&s).unwrap().timeout_secs
        };
        assert_eq!(timeout(0), DEFAULT_TIMEOUT_SECS);
        assert_eq!(timeout(7), 7);
        assert_eq!(timeout(MAX_TIMEOUT_SECS), MAX_TIMEOUT_SECS);
        assert_eq!(timeout(MAX_TIMEOUT_SECS + 1), MAX_TIMEOUT_SECS);
        // Entered PINs of exactly the minimum and the maximum are taken.
        let c = PinCommand::parse_verify(&verify_structure(2, 0, 0, 4, 8, &VERIFY)).unwrap();
        assert!(c.check_pins(&[b"1234"]).is_ok());
        assert!(c.check_pins(&[b"12345678"]).is_ok());
        assert!(c.check_pins(&[b"123"]).is_err());
        assert!(c.check_pins(&[b"123456789"]).is_err());
    }

    #[test]
    fn variable_pins_fill_a_short_apdu_exactly() {
        // Data bytes + every PIN's bytes at the maximum may make 255, not 256.
        let case = |encoding: u8, max: u8, data: usize, modify: bool| {
            let mut apdu = vec![0x00, 0x20, 0x00, 0x81, data as u8];
            apdu.extend(std::iter::repeat(0xEE).take(data));
            if modify {
                PinCommand::parse_modify(&modify_structure(
                    encoding, 0, 0, 0, 0, 1, max, 0x03, &apdu,
                ))
            } else {
                PinCommand::parse_verify(&verify_structure(encoding, 0, 0, 1, max, &apdu))
            }
        };
        let ascii = case(0x02, 16, 239, false).unwrap();
        let pin = [b'5'; 16];
        let built = ascii.build_apdu(&[&pin]).unwrap();
        assert_eq!((built.len(), built[4]), (4 + 1 + 255, 255));
        assert!(case(0x02, 16, 240, false).is_err());
        // BCD: 15 digits take 8 bytes.
        assert!(case(0x01, 15, 247, false).is_ok());
        assert!(case(0x01, 15, 248, false).is_err());
        // Two PINs.
        assert!(case(0x02, 16, 223, true).is_ok());
        assert!(case(0x02, 16, 224, true).is_err());
    }

    #[test]
    fn fixed_blocks_at_their_bounds() {
        let block8 = {
            let mut a = vec![0x00, 0x20, 0x00, 0x81, 0x08];
            a.extend([0xFF; 8]);
            a
        };
        let verify = |format: u8, block: u8, length: u8, min: u8, max: u8, apdu: &[u8]| {
            PinCommand::parse_verify(&verify_structure(format, block, length, min, max, apdu))
        };
        // BCD from byte 2 of an 8-byte block: 12 digits end on its last bit.
        assert!(verify(0x80 | (2 << 3) | 0x01, 0x08, 0, 4, 12, &block8).is_ok());
        assert!(verify(0x80 | (2 << 3) | 0x01, 0x08, 0, 4, 13, &block8).is_err());
        // Right-justified in 4 bytes, the PIN may start at its position, not before.
        let block4 = [0x00, 0x20, 0x00, 0x01, 0x04, 0, 0, 0, 0];
        assert!(verify(0x80 | (2 << 3) | 0x04 | 0x01, 0x04, 0, 4, 4, &block4).is_ok());
        assert!(verify(0x80 | (2 << 3) | 0x04 | 0x01, 0x04, 0, 4, 5, &block4).is_err());
        // An 8-bit length field in the last byte of the block.
        let block2 = [0x00, 0x20, 0x00, 0x81, 0x02, 0xFF, 0xFF];
        let c = verify(0x02, 0x82, 0x11, 1, 1, &block2).unwrap();
        assert_eq!(&c.build_apdu(&[b"7"]).unwrap()[5..], [b'7', 1]);
        assert!(verify(0x02, 0x82, 0x12, 1, 1, &block2).is_err());
        // Right-justified from bit 0: the digits must fit the block all the same.
        let block2 = [0x00, 0x20, 0x00, 0x81, 0x02, 0x00, 0x00];
        assert!(verify(0x04 | 0x01, 0x02, 0, 4, 4, &block2).is_ok());
        assert!(verify(0x04 | 0x01, 0x02, 0, 4, 5, &block2).is_err());
        assert!(verify(0x04 | 0x02, 0x02, 0, 1, 2, &block2).is_ok());
        assert!(verify(0x04 | 0x02, 0x02, 0, 1, 3, &block2).is_err());
        // A 4-bit length field holds up to 15.
        let mut block15 = vec![0x00, 0x20, 0x00, 0x81, 0x0F];
        block15.extend([0xFF; 15]);
        assert!(verify(0x01 | (8 << 3), 0x4F, 0x04, 4, 15, &block15).is_ok());
        assert!(verify(0x01 | (8 << 3), 0x4F, 0x04, 4, 16, &block15).is_err());
        // A length field right after the digits does not overlap them.
        let c = verify(0x01, 0x48, 0x12, 4, 4, &block8).unwrap();
        assert_eq!(&c.build_apdu(&[b"1234"]).unwrap()[5..8], [0x12, 0x34, 0x4F]);
        // No length field: its position means nothing.
        assert!(verify(0x02, 0x08, 0x1F, 4, 8, &block8).is_ok());
    }

    #[test]
    fn modify_flags_and_blocks_in_any_order() {
        let mut apdu16 = vec![0x00, 0x24, 0x00, 0x81, 16];
        apdu16.extend([0xFF; 16]);
        let op = |confirm: u8| {
            PinCommand::parse_modify(&modify_structure(2, 8, 0, 0, 8, 4, 8, confirm, &apdu16))
                .unwrap()
                .operation
        };
        let modify = |old: bool, confirm: bool| Operation::Modify {
            old,
            confirm,
            old_offset: 0,
            new_offset: 8,
        };
        assert_eq!(op(0x00), modify(false, false));
        assert_eq!(op(0x01), modify(false, true));
        assert_eq!(op(0x02), modify(true, false));
        assert_eq!(op(0x03), modify(true, true));
        // The new PIN's block before the current one's.
        let c =
            PinCommand::parse_modify(&modify_structure(2, 8, 0, 8, 0, 4, 8, 3, &apdu16)).unwrap();
        let got = c.build_apdu(&[b"1111", b"2222"]).unwrap();
        assert_eq!(&got[5..9], b"2222");
        assert_eq!(&got[13..17], b"1111");
    }

    proptest! {
        /// Any bytes: parsing never panics, and whatever parses builds an APDU for
        /// every PIN length it allows, whose header is the template's.
        #[test]
        fn whatever_parses_builds(bytes in proptest::collection::vec(any::<u8>(), 0..80), modify: bool) {
            let parsed = if modify { PinCommand::parse_modify(&bytes) } else { PinCommand::parse_verify(&bytes) };
            if let Ok(c) = parsed {
                for n in c.min_digits..=c.max_digits {
                    let pin = vec![b'7'; usize::from(n)];
                    let pins = vec![&pin[..]; c.pin_count()];
                    let apdu = c.build_apdu(&pins).unwrap();
                    prop_assert_eq!(&apdu[..4], &c.template.header[..]);
                }
            }
        }

        /// Structures in the shape OpenSC sends, with any format fields and limits.
        #[test]
        fn opensc_shaped_structures(
            format: u8, block: u8, length: u8, min in 0u8..20, max in 0u8..20,
            pad in 0usize..20, digits in "[0-9]{1,16}",
        ) {
            let mut apdu = vec![0x00, 0x20, 0x00, 0x81, pad as u8];
            apdu.extend(std::iter::repeat(0xFF).take(pad));
            if let Ok(c) = PinCommand::parse_verify(&verify_structure(format, block, length, min, max, &apdu)) {
                let ok = digits.len() >= usize::from(c.min_digits) && digits.len() <= usize::from(c.max_digits);
                let built = c.build_apdu(&[digits.as_bytes()]);
                prop_assert_eq!(built.is_ok(), ok);
                if let Ok(apdu) = built {
                    prop_assert!(apdu.len() <= MAX_TEMPLATE_LEN);
                    if apdu.len() > 4 {
                        prop_assert_eq!(usize::from(apdu[4]), apdu.len() - 5);
                    }
                }
            }
        }
    }
}
