//! The built-in virtual card of `vpcd-vicc`: a plain ISO/IEC 7816-4 card with a small
//! file system, std only.
//!
//! Commands (anything else answers 6D 00, or 6E 00 for a class other than 00 and 80):
//!
//! | APDU                 | command                                              |
//! |----------------------|------------------------------------------------------|
//! | `00 A4 P1 P2 [Lc data] [Le]` | SELECT by file id (P1 00/01/02), parent (03), DF name (04), path (08/09); P2 0C: no data, 04: FCP (62), 00: FCI (6F) |
//! | `00 B0 P1 P2 Le`     | READ BINARY of the current EF at offset P1P2 (15 bits) |
//! | `00 84 00 00 Le`     | GET CHALLENGE: Le pseudo-random bytes (not for cryptographic use) |
//! | `80 EE P1 P2 Lc data [Le]` | ECHO: the data field back, short or extended, up to 65526 bytes |
//! | `00 20 00 81 [Lc PIN]` | VERIFY the PIN (reference 81): 90 00, or 63 Cx with x tries left (3 in all), 69 83 once blocked; without data: the PIN's status (90 00 verified, 63 Cx not) |
//! | `00 20 FF 81`        | VERIFY, reset: the PIN is no longer verified |
//! | `00 24 00 81 Lc old new` | CHANGE REFERENCE DATA: the current PIN, then the new one (each may be padded with FF), counted like VERIFY |
//! | `00 24 01 81 Lc new` | CHANGE REFERENCE DATA with the PIN verified in this session: the new PIN alone |
//!
//! The PIN (default [`DEFAULT_PIN`], `--card-pin`) is ASCII digits; trailing FF bytes
//! of a PIN block are padding. It is verified until the next reset or power cycle; its
//! retry counter lasts as long as the process.
//!
//! The wire side (sockets, framing, tracing) is in [`server`]; it serves anything that
//! implements [`VirtualCard`]: the built-in [`Card`], or a [`relay::Relay`] to a real
//! card in a PC/SC reader.

pub mod apdu;
pub mod atr;
pub mod fs;
pub mod relay;
pub mod server;

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};

use apdu::Command;
use fs::{Df, Node, MF_FID};
use vpcd_protocol::vpcd::{Control, MAX_PAYLOAD};

/// Status words the card uses.
pub mod sw {
    pub const OK: u16 = 0x9000;
    /// End of file reached before reading Ne bytes.
    pub const END_OF_FILE: u16 = 0x6282;
    pub const WRONG_LENGTH: u16 = 0x6700;
    /// Command not allowed: no current EF.
    pub const NO_CURRENT_EF: u16 = 0x6986;
    pub const FUNCTION_NOT_SUPPORTED: u16 = 0x6A81;
    pub const FILE_NOT_FOUND: u16 = 0x6A82;
    pub const INCORRECT_P1P2: u16 = 0x6A86;
    /// Nc inconsistent with P1-P2.
    pub const NC_INCONSISTENT: u16 = 0x6A87;
    /// Security status not satisfied (CHANGE REFERENCE DATA without the PIN verified).
    pub const SECURITY_STATUS: u16 = 0x6982;
    /// Authentication method blocked: no tries left.
    pub const BLOCKED: u16 = 0x6983;
    /// Incorrect data field.
    pub const WRONG_DATA: u16 = 0x6A80;
    /// Referenced data not found (a PIN reference other than 81).
    pub const REF_NOT_FOUND: u16 = 0x6A88;
    /// Verification failed; the low nibble (added by the card) is the tries left.
    pub const TRIES_LEFT: u16 = 0x63C0;
    /// Wrong parameters P1-P2: offset outside the EF.
    pub const WRONG_OFFSET: u16 = 0x6B00;
    /// Wrong Le field; the low byte (added by the card) is the available length.
    pub const WRONG_LE: u16 = 0x6C00;
    pub const INS_NOT_SUPPORTED: u16 = 0x6D00;
    pub const CLA_NOT_SUPPORTED: u16 = 0x6E00;
}

/// Class byte of the interindustry commands.
pub const CLA_ISO: u8 = 0x00;
/// Class byte of the proprietary commands (ECHO).
pub const CLA_PROPRIETARY: u8 = 0x80;
pub const INS_SELECT: u8 = 0xA4;
pub const INS_READ_BINARY: u8 = 0xB0;
pub const INS_GET_CHALLENGE: u8 = 0x84;
/// `80 EE`: answers the command data unchanged with 90 00.
pub const INS_ECHO: u8 = 0xEE;
pub const INS_VERIFY: u8 = 0x20;
pub const INS_CHANGE_REFERENCE_DATA: u8 = 0x24;
/// The card's one PIN reference.
pub const PIN_REFERENCE: u8 = 0x81;
/// The PIN of a card made without `--card-pin`.
pub const DEFAULT_PIN: &str = "123456";
/// Wrong PINs in a row before the PIN blocks.
pub const PIN_TRIES: u8 = 3;
/// The most digits a PIN may have.
pub const MAX_PIN_LEN: usize = 16;

/// Most response data that fits one vpcd frame next to SW1 SW2.
pub const MAX_RESPONSE_DATA: usize = MAX_PAYLOAD - 2;

/// What [`server::serve`] needs of a card.
pub trait VirtualCard {
    /// A driver has connected: a new session begins. The built-in card resets.
    fn connected(&mut self) {}

    /// Handles a control message. Power off, power on and reset have no reply; GET
    /// ATR's reply is the ATR (empty if the card has none to give).
    fn control(&mut self, control: Control) -> Option<&[u8]>;

    /// Processes a command APDU and appends the response (data, SW1, SW2) to `out`.
    fn respond(&mut self, apdu: &[u8], out: &mut Vec<u8>);

    /// The keypad, for a vicc that is a PIN pad's (`--pinpad`): [`server::serve`] then
    /// says HELLO and answers the reader's PIN requests with it.
    fn keypad(&mut self) -> Option<&mut dyn PinEntry> {
        None
    }
}

/// Where a PIN pad's digits come from (`crate::keypad` implements it): the card knows
/// only this, so the keypad may build on the card and not the other way round.
pub trait PinEntry {
    /// The PIN(s) a reader's request asks for, or why there are none.
    fn enter(
        &mut self,
        params: &vpcd_protocol::pinpad::PinParams,
    ) -> vpcd_protocol::pinpad::PinAnswer;
}

impl VirtualCard for Card {
    fn connected(&mut self) {
        self.reset();
    }

    fn control(&mut self, control: Control) -> Option<&[u8]> {
        Card::control(self, control)
    }

    fn respond(&mut self, apdu: &[u8], out: &mut Vec<u8>) {
        Card::respond(self, apdu, out)
    }
}

/// A PIN without the FF padding of its block.
fn unpad(data: &[u8]) -> &[u8] {
    let end = data.iter().rposition(|b| *b != 0xFF).map_or(0, |i| i + 1);
    &data[..end]
}

/// Where SELECT has put the card: a path of child indices from the MF to the current
/// DF, and the index of the current EF in that DF, if any.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Position {
    df: Vec<usize>,
    ef: Option<usize>,
}

/// A virtual ISO 7816-4 card.
#[derive(Debug, Clone)]
pub struct Card {
    atr: Vec<u8>,
    mf: Df,
    pos: Position,
    rng: Rng,
    pin: Vec<u8>,
    tries_left: u8,
    verified: bool,
}

impl Default for Card {
    fn default() -> Card {
        Card::new(atr::default_atr(), Df::builtin())
    }
}

impl Card {
    /// A card with this ATR and file system, the MF selected.
    pub fn new(atr: Vec<u8>, mf: Df) -> Card {
        Card {
            atr,
            mf,
            pos: Position::default(),
            rng: Rng::seeded(),
            pin: DEFAULT_PIN.as_bytes().to_vec(),
            tries_left: PIN_TRIES,
            verified: false,
        }
    }

    /// The same card with another PIN (ASCII digits, 1 to 16).
    pub fn with_pin(mut self, pin: &str) -> Result<Card, String> {
        if pin.is_empty() || pin.len() > MAX_PIN_LEN || !pin.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!(
                "bad PIN \"{pin}\": expected 1 to {MAX_PIN_LEN} digits"
            ));
        }
        self.pin = pin.as_bytes().to_vec();
        Ok(self)
    }

    pub fn atr(&self) -> &[u8] {
        &self.atr
    }

    /// Back to the state after a reset: the MF selected, no current EF.
    pub fn reset(&mut self) {
        self.pos = Position::default();
        self.verified = false;
    }

    /// Handles a control message. Power off, power on and reset reset the card and have
    /// no reply; GET ATR's reply is the ATR.
    pub fn control(&mut self, control: Control) -> Option<&[u8]> {
        match control {
            Control::PowerOff | Control::PowerOn | Control::Reset => {
                self.reset();
                None
            }
            Control::GetAtr => Some(&self.atr),
        }
    }

    /// Processes a command APDU and appends the response (data, SW1, SW2) to `out`.
    pub fn respond(&mut self, apdu: &[u8], out: &mut Vec<u8>) {
        let start = out.len();
        let sw = match apdu::parse(apdu) {
            Err(_) => sw::WRONG_LENGTH,
            Ok(cmd) => match (cmd.cla, cmd.ins) {
                (CLA_ISO, INS_SELECT) => self.select(&cmd, out),
                (CLA_ISO, INS_READ_BINARY) => self.read_binary(&cmd, out),
                (CLA_ISO, INS_GET_CHALLENGE) => self.get_challenge(&cmd, out),
                (CLA_PROPRIETARY, INS_ECHO) => {
                    out.extend_from_slice(cmd.data);
                    sw::OK
                }
                (CLA_ISO, INS_VERIFY) => self.verify(&cmd),
                (CLA_ISO, INS_CHANGE_REFERENCE_DATA) => self.change_reference_data(&cmd),
                (CLA_ISO | CLA_PROPRIETARY, _) => sw::INS_NOT_SUPPORTED,
                _ => sw::CLA_NOT_SUPPORTED,
            },
        };
        // Only the success and warning statuses carry data.
        if sw != sw::OK && sw != sw::END_OF_FILE {
            out.truncate(start);
        }
        out.extend_from_slice(&sw.to_be_bytes());
    }

    /// [`Card::respond`] into a new buffer.
    #[cfg(test)]
    pub fn transmit(&mut self, apdu: &[u8]) -> Vec<u8> {
        let mut out = vec![];
        self.respond(apdu, &mut out);
        out
    }

    /// 63 Cx after a wrong PIN, 69 83 once none is left.
    fn wrong_pin(&mut self) -> u16 {
        self.verified = false;
        self.tries_left = self.tries_left.saturating_sub(1);
        sw::TRIES_LEFT | u16::from(self.tries_left)
    }

    fn right_pin(&mut self) {
        self.tries_left = PIN_TRIES;
        self.verified = true;
    }

    fn verify(&mut self, cmd: &Command) -> u16 {
        if cmd.p2 != PIN_REFERENCE {
            return sw::REF_NOT_FOUND;
        }
        match cmd.p1 {
            0xFF if cmd.data.is_empty() => {
                self.verified = false;
                return sw::OK;
            }
            0x00 => {}
            _ => return sw::INCORRECT_P1P2,
        }
        if self.tries_left == 0 {
            return sw::BLOCKED;
        }
        if cmd.data.is_empty() {
            return if self.verified {
                sw::OK
            } else {
                sw::TRIES_LEFT | u16::from(self.tries_left)
            };
        }
        if unpad(cmd.data) == self.pin {
            self.right_pin();
            sw::OK
        } else {
            self.wrong_pin()
        }
    }

    fn change_reference_data(&mut self, cmd: &Command) -> u16 {
        if cmd.p2 != PIN_REFERENCE {
            return sw::REF_NOT_FOUND;
        }
        if self.tries_left == 0 {
            return sw::BLOCKED;
        }
        let new = match cmd.p1 {
            0x00 => {
                let Some(rest) = cmd.data.strip_prefix(&self.pin[..]) else {
                    return self.wrong_pin();
                };
                // The current PIN's block may be padded: the new PIN follows the FFs.
                let start = rest.iter().take_while(|b| **b == 0xFF).count();
                unpad(&rest[start..])
            }
            0x01 if self.verified => unpad(cmd.data),
            0x01 => return sw::SECURITY_STATUS,
            _ => return sw::INCORRECT_P1P2,
        };
        if new.is_empty() || new.len() > MAX_PIN_LEN || !new.iter().all(u8::is_ascii_digit) {
            return sw::WRONG_DATA;
        }
        self.pin = new.to_vec();
        self.right_pin();
        sw::OK
    }

    fn df(&self, path: &[usize]) -> &Df {
        let mut df = &self.mf;
        for &i in path {
            match df.children.get(i) {
                Some(Node::Df(child)) => df = child,
                // Positions are built from the tree itself, so this does not happen.
                _ => return &self.mf,
            }
        }
        df
    }

    fn node(&self, pos: &Position) -> Option<&Node> {
        pos.ef.and_then(|i| self.df(&pos.df).children.get(i))
    }

    /// The position of child `fid` of the DF at `df`, if it exists and is of the kind
    /// wanted (`Some(true)`: a DF, `Some(false)`: an EF, `None`: either).
    fn child_position(&self, df: &[usize], fid: u16, want_df: Option<bool>) -> Option<Position> {
        let (i, node) = self.df(df).child(fid)?;
        let is_df = matches!(node, Node::Df(_));
        if want_df.is_some_and(|w| w != is_df) {
            return None;
        }
        let mut pos = Position {
            df: df.to_vec(),
            ef: None,
        };
        if is_df {
            pos.df.push(i);
        } else {
            pos.ef = Some(i);
        }
        Some(pos)
    }

    /// SELECT by file identifier (P1 = 00): the MF, a child of the current DF, the
    /// current DF itself, its parent, or a sibling of it.
    fn find_fid(&self, fid: u16) -> Option<Position> {
        if fid == MF_FID {
            return Some(Position::default());
        }
        let cur = &self.pos.df;
        if let Some(pos) = self.child_position(cur, fid, None) {
            return Some(pos);
        }
        let (_, parent) = cur.split_last()?;
        if self.df(cur).fid == fid {
            return Some(Position {
                df: cur.clone(),
                ef: None,
            });
        }
        if self.df(parent).fid == fid {
            return Some(Position {
                df: parent.to_vec(),
                ef: None,
            });
        }
        self.child_position(parent, fid, None)
    }

    /// The first DF, depth first from the MF, whose name starts with `name`.
    fn find_name(&self, name: &[u8]) -> Option<Position> {
        fn walk(df: &Df, path: &mut Vec<usize>, name: &[u8]) -> bool {
            if df.name.as_deref().is_some_and(|n| n.starts_with(name)) {
                return true;
            }
            for (i, child) in df.children.iter().enumerate() {
                if let Node::Df(child) = child {
                    path.push(i);
                    if walk(child, path, name) {
                        return true;
                    }
                    path.pop();
                }
            }
            false
        }
        let mut path = vec![];
        walk(&self.mf, &mut path, name).then_some(Position { df: path, ef: None })
    }

    /// Follows a path of file identifiers from the DF at `from`.
    fn find_path(&self, from: &[usize], fids: &[u16]) -> Option<Position> {
        let (last, dfs) = fids.split_last()?;
        let mut df = from.to_vec();
        for &fid in dfs {
            df = self.child_position(&df, fid, Some(true))?.df;
        }
        self.child_position(&df, *last, None)
    }

    fn select(&mut self, cmd: &Command, out: &mut Vec<u8>) -> u16 {
        if cmd.p2 & 0xF3 != 0 {
            // Only the first occurrence, and no FMD.
            return sw::INCORRECT_P1P2;
        }
        let template = match cmd.p2 & 0x0C {
            0x0C => None,
            0x04 => Some(0x62),
            0x00 => Some(0x6F),
            _ => return sw::INCORRECT_P1P2,
        };
        let fids: Vec<u16> = cmd
            .data
            .chunks(2)
            .map(|c| u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]))
            .collect();
        let one_fid = match cmd.data {
            [hi, lo] => Some(u16::from_be_bytes([*hi, *lo])),
            _ => None,
        };
        let target = match cmd.p1 {
            0x00 if cmd.data.is_empty() => Some(Position::default()),
            0x00..=0x02 => {
                let Some(fid) = one_fid else {
                    return sw::NC_INCONSISTENT;
                };
                match cmd.p1 {
                    0x00 => self.find_fid(fid),
                    0x01 => self.child_position(&self.pos.df, fid, Some(true)),
                    _ => self.child_position(&self.pos.df, fid, Some(false)),
                }
            }
            0x03 => {
                if !cmd.data.is_empty() {
                    return sw::NC_INCONSISTENT;
                }
                self.pos.df.split_last().map(|(_, parent)| Position {
                    df: parent.to_vec(),
                    ef: None,
                })
            }
            0x04 if cmd.data.is_empty() => Some(Position::default()),
            0x04 => self.find_name(cmd.data),
            0x08 | 0x09 => {
                if cmd.data.is_empty() || cmd.data.len() % 2 != 0 {
                    return sw::NC_INCONSISTENT;
                }
                if cmd.p1 == 0x08 {
                    // The path leaves out the MF; tolerate it anyway.
                    let fids = fids.strip_prefix(&[MF_FID]).unwrap_or(&fids);
                    if fids.is_empty() {
                        Some(Position::default())
                    } else {
                        self.find_path(&[], fids)
                    }
                } else {
                    self.find_path(&self.pos.df, &fids)
                }
            }
            _ => return sw::INCORRECT_P1P2,
        };
        let Some(target) = target else {
            return sw::FILE_NOT_FOUND;
        };
        if let Some(tag) = template {
            let fcp = self.fcp(&target, tag);
            if let Some(ne) = cmd.ne {
                if ne < fcp.len() {
                    return sw::WRONG_LE | fcp.len() as u16;
                }
            }
            out.extend_from_slice(&fcp);
        }
        self.pos = target;
        sw::OK
    }

    /// The FCP template (tag 62) or an FCI template holding the same objects (6F):
    /// file descriptor, file id, DF name or EF size, life cycle status.
    fn fcp(&self, pos: &Position, tag: u8) -> Vec<u8> {
        let mut body = vec![];
        match self.node(pos) {
            Some(Node::Ef(ef)) => {
                // Working EF, transparent structure.
                body.extend_from_slice(&[0x82, 0x01, 0x01, 0x83, 0x02]);
                body.extend_from_slice(&ef.fid.to_be_bytes());
                body.extend_from_slice(&[0x80, 0x02]);
                body.extend_from_slice(&(ef.data.len() as u16).to_be_bytes());
            }
            _ => {
                let df = self.df(&pos.df);
                body.extend_from_slice(&[0x82, 0x01, 0x38, 0x83, 0x02]);
                body.extend_from_slice(&df.fid.to_be_bytes());
                if let Some(name) = &df.name {
                    body.extend_from_slice(&[0x84, name.len() as u8]);
                    body.extend_from_slice(name);
                }
            }
        }
        // Life cycle status: operational, activated.
        body.extend_from_slice(&[0x8A, 0x01, 0x05]);
        let mut fcp = vec![tag, body.len() as u8];
        fcp.extend_from_slice(&body);
        fcp
    }

    fn read_binary(&mut self, cmd: &Command, out: &mut Vec<u8>) -> u16 {
        if cmd.p1 & 0x80 != 0 {
            // Short EF identifiers are not supported.
            return sw::FUNCTION_NOT_SUPPORTED;
        }
        if !cmd.data.is_empty() {
            return sw::WRONG_LENGTH;
        }
        let Some(ne) = cmd.ne else {
            return sw::WRONG_LENGTH;
        };
        let Some(Node::Ef(ef)) = self.node(&self.pos) else {
            return sw::NO_CURRENT_EF;
        };
        let offset = usize::from(u16::from_be_bytes([cmd.p1, cmd.p2]));
        if offset >= ef.data.len() {
            return sw::WRONG_OFFSET;
        }
        let n = ne.min(ef.data.len() - offset).min(MAX_RESPONSE_DATA);
        out.extend_from_slice(&ef.data[offset..offset + n]);
        if n < ne && !cmd.ne_is_max() {
            sw::END_OF_FILE
        } else {
            sw::OK
        }
    }

    fn get_challenge(&mut self, cmd: &Command, out: &mut Vec<u8>) -> u16 {
        if cmd.p1 != 0 || cmd.p2 != 0 {
            return sw::INCORRECT_P1P2;
        }
        if !cmd.data.is_empty() {
            return sw::WRONG_LENGTH;
        }
        let Some(ne) = cmd.ne else {
            return sw::WRONG_LENGTH;
        };
        let n = ne.min(MAX_RESPONSE_DATA);
        let start = out.len();
        out.resize(start + n, 0);
        self.rng.fill(&mut out[start..]);
        sw::OK
    }
}

/// xorshift64*, seeded from the time, the process id and std's per-process random
/// hash keys. Good enough to make GET CHALLENGE vary; NOT a cryptographic generator.
#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    fn seeded() -> Rng {
        let mut h = RandomState::new().build_hasher();
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        h.write_u128(nanos);
        h.write_u32(std::process::id());
        Rng(h.finish() | 1)
    }

    fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let bytes = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::card::apdu::encode;
    use crate::card::atr::parse_hex;

    fn hex(s: &str) -> Vec<u8> {
        parse_hex(s).unwrap()
    }

    /// Sends an APDU written in hex, returns the response in hex.
    fn tx(card: &mut Card, apdu: &str) -> String {
        atr::to_hex(&card.transmit(&hex(apdu)))
    }

    fn sw_of(resp: &[u8]) -> u16 {
        u16::from_be_bytes([resp[resp.len() - 2], resp[resp.len() - 1]])
    }

    #[test]
    fn pin_verify_counts_and_blocks() {
        let mut c = Card::default();
        assert_eq!(c.transmit(&[0x00, 0x20, 0x00, 0x81]), [0x63, 0xC3]);
        assert_eq!(c.transmit(b"\x00\x20\x00\x81\x06123456"), [0x90, 0x00]);
        assert_eq!(c.transmit(&[0x00, 0x20, 0x00, 0x81]), [0x90, 0x00]);
        assert_eq!(c.transmit(&[0x00, 0x20, 0xFF, 0x81]), [0x90, 0x00]);
        assert_eq!(c.transmit(&[0x00, 0x20, 0x00, 0x81]), [0x63, 0xC3]);
        assert_eq!(c.transmit(b"\x00\x20\x00\x81\x041111"), [0x63, 0xC2]);
        // Padded with FF: the same PIN.
        assert_eq!(
            c.transmit(b"\x00\x20\x00\x81\x08123456\xFF\xFF"),
            [0x90, 0x00]
        );
        assert_eq!(c.transmit(b"\x00\x20\x00\x82\x06123456"), [0x6A, 0x88]);
        for left in [2, 1, 0] {
            assert_eq!(c.transmit(b"\x00\x20\x00\x81\x041111"), [0x63, 0xC0 | left]);
        }
        assert_eq!(c.transmit(b"\x00\x20\x00\x81\x06123456"), [0x69, 0x83]);
        assert_eq!(c.transmit(&[0x00, 0x20, 0x00, 0x81]), [0x69, 0x83]);
    }

    #[test]
    fn change_reference_data() {
        let mut c = Card::default().with_pin("1234").unwrap();
        assert_eq!(c.transmit(b"\x00\x24\x00\x81\x0811115678"), [0x63, 0xC2]);
        assert_eq!(c.transmit(b"\x00\x24\x01\x81\x045678"), [0x69, 0x82]);
        assert_eq!(c.transmit(b"\x00\x24\x00\x81\x0812345678"), [0x90, 0x00]);
        assert_eq!(c.transmit(b"\x00\x20\x00\x81\x041234"), [0x63, 0xC2]);
        assert_eq!(c.transmit(b"\x00\x20\x00\x81\x045678"), [0x90, 0x00]);
        // Padded blocks of 8.
        assert_eq!(
            c.transmit(b"\x00\x24\x00\x81\x105678\xFF\xFF\xFF\xFF24681357"),
            [0x90, 0x00]
        );
        assert_eq!(c.transmit(b"\x00\x24\x01\x81\x03999"), [0x90, 0x00]);
        assert_eq!(c.transmit(b"\x00\x20\x00\x81\x03999"), [0x90, 0x00]);
        assert_eq!(c.transmit(b"\x00\x24\x01\x81\x02\x41\x42"), [0x6A, 0x80]);
        assert!(Card::default().with_pin("12a").is_err());
        assert!(Card::default().with_pin("").is_err());
    }

    #[test]
    fn select_by_fid_and_read() {
        let mut c = Card::default();
        assert_eq!(tx(&mut c, "00 A4 00 0C 02 3F 00"), "90 00");
        assert_eq!(tx(&mut c, "00 A4 00 0C 02 50 00"), "90 00");
        assert_eq!(tx(&mut c, "00 A4 02 0C 02 50 01"), "90 00");
        let r = c.transmit(&hex("00 B0 00 00 00"));
        assert_eq!(&r[..r.len() - 2], fs::HELLO);
        assert_eq!(sw_of(&r), sw::OK);
        // Offset and explicit Le.
        assert_eq!(
            c.transmit(&hex("00 B0 00 06 04")),
            [b"from".as_slice(), &[0x90, 0x00]].concat()
        );
        // Explicit Le beyond the end: what there is, with 62 82.
        let r = c.transmit(&hex("00 B0 00 10 08"));
        assert_eq!(r, [b"vicc".as_slice(), &[0x62, 0x82]].concat());
        // Extended Le 00 00: everything, 90 00.
        let r = c.transmit(&hex("00 B0 00 00 00 00 00"));
        assert_eq!(&r[..r.len() - 2], fs::HELLO);
        assert_eq!(sw_of(&r), sw::OK);
        // Beyond the end.
        assert_eq!(tx(&mut c, "00 B0 00 14 01"), "6B 00");
        assert_eq!(tx(&mut c, "00 B0 7F FF 00"), "6B 00");
        // No Le, data field, SFI.
        assert_eq!(tx(&mut c, "00 B0 00 00"), "67 00");
        assert_eq!(tx(&mut c, "00 B0 00 00 01 00"), "67 00");
        assert_eq!(tx(&mut c, "00 B0 81 00 00"), "6A 81");
        // Sibling EF of the current EF's DF by P1=00, then the parent DF by its fid.
        assert_eq!(tx(&mut c, "00 A4 00 0C 02 50 01"), "90 00");
        assert_eq!(tx(&mut c, "00 A4 00 0C 02 50 00"), "90 00");
        assert_eq!(tx(&mut c, "00 B0 00 00 01"), "69 86");
        // EF.DIR from inside DF 5000: a sibling of the current DF.
        assert_eq!(tx(&mut c, "00 A4 00 0C 02 2F 00"), "90 00");
        assert_eq!(tx(&mut c, "00 B0 00 00 02"), "61 13 90 00");
    }

    #[test]
    fn select_variants() {
        let mut c = Card::default();
        // No EF selected after reset.
        assert_eq!(tx(&mut c, "00 B0 00 00 00"), "69 86");
        // Not found, and the wrong kind for P1=01/02.
        assert_eq!(tx(&mut c, "00 A4 00 0C 02 12 34"), "6A 82");
        assert_eq!(tx(&mut c, "00 A4 01 0C 02 2F 00"), "6A 82");
        assert_eq!(tx(&mut c, "00 A4 02 0C 02 50 00"), "6A 82");
        assert_eq!(tx(&mut c, "00 A4 01 0C 02 50 00"), "90 00");
        // 5001 is not in the MF.
        assert_eq!(tx(&mut c, "00 A4 03 0C"), "90 00");
        assert_eq!(tx(&mut c, "00 A4 02 0C 02 50 01"), "6A 82");
        assert_eq!(tx(&mut c, "00 A4 03 0C"), "6A 82", "the MF has no parent");
        // By DF name, full and partial.
        assert_eq!(tx(&mut c, "00 A4 04 0C 06 F0 76 70 63 64 01"), "90 00");
        assert_eq!(tx(&mut c, "00 A4 02 0C 02 50 01"), "90 00");
        assert_eq!(tx(&mut c, "00 A4 04 0C 03 F0 76 70"), "90 00");
        assert_eq!(tx(&mut c, "00 A4 04 0C 06 A0 00 00 00 03 10"), "6A 82");
        // By path.
        assert_eq!(tx(&mut c, "00 A4 08 0C 04 50 00 50 01"), "90 00");
        assert_eq!(tx(&mut c, "00 B0 00 00 05"), atr::to_hex(b"Hello\x90\x00"));
        assert_eq!(tx(&mut c, "00 A4 08 0C 06 3F 00 50 00 50 01"), "90 00");
        assert_eq!(tx(&mut c, "00 A4 08 0C 04 50 01 50 00"), "6A 82");
        assert_eq!(tx(&mut c, "00 A4 09 0C 02 50 01"), "90 00");
        // Bad parameters and lengths.
        assert_eq!(tx(&mut c, "00 A4 00 0C 01 3F"), "6A 87");
        assert_eq!(tx(&mut c, "00 A4 08 0C 03 50 00 50"), "6A 87");
        assert_eq!(tx(&mut c, "00 A4 05 0C 02 3F 00"), "6A 86");
        assert_eq!(tx(&mut c, "00 A4 00 0D 02 3F 00"), "6A 86");
        assert_eq!(tx(&mut c, "00 A4 00 08 02 3F 00"), "6A 86");
        assert_eq!(tx(&mut c, "00 A4 00 0C 05 3F 00"), "67 00");
        // MF by empty data.
        assert_eq!(tx(&mut c, "00 A4 00 0C"), "90 00");
        assert_eq!(tx(&mut c, "00 A4 02 0C 02 50 01"), "6A 82");
    }

    #[test]
    fn select_returns_fcp_or_fci() {
        let mut c = Card::default();
        assert_eq!(
            tx(&mut c, "00 A4 04 04 06 F0 76 70 63 64 01 00"),
            "62 12 82 01 38 83 02 50 00 84 06 F0 76 70 63 64 01 8A 01 05 90 00"
        );
        assert_eq!(
            tx(&mut c, "00 A4 02 00 02 50 01 00"),
            "6F 0E 82 01 01 83 02 50 01 80 02 00 14 8A 01 05 90 00"
        );
        // Case 3 with P2=04 still answers the FCP (as most cards do over T=1).
        assert_eq!(
            tx(&mut c, "00 A4 00 04 02 3F 00"),
            "62 0A 82 01 38 83 02 3F 00 8A 01 05 90 00"
        );
        // Le too small: 6C with the right length, and the selection does not change.
        assert_eq!(tx(&mut c, "00 A4 02 04 02 2F 00 04"), "6C 10");
        assert_eq!(tx(&mut c, "00 B0 00 00 00"), "69 86");
    }

    #[test]
    fn get_challenge() {
        let mut c = Card::default();
        let a = c.transmit(&hex("00 84 00 00 08"));
        let b = c.transmit(&hex("00 84 00 00 08"));
        assert_eq!(a.len(), 10);
        assert_eq!(sw_of(&a), sw::OK);
        assert_ne!(a, b);
        assert_eq!(c.transmit(&hex("00 84 00 00 00")).len(), 258);
        assert_eq!(c.transmit(&hex("00 84 00 00 00 01 01")).len(), 259);
        assert_eq!(tx(&mut c, "00 84 00 00"), "67 00");
        assert_eq!(tx(&mut c, "00 84 00 01 08"), "6A 86");
        // Extended Le 00 00: as much as a frame carries.
        let r = c.transmit(&hex("00 84 00 00 00 00 00"));
        assert_eq!(r.len(), MAX_PAYLOAD);
    }

    #[test]
    fn echo_short_and_extended() {
        let mut c = Card::default();
        assert_eq!(
            tx(&mut c, "80 EE 00 00 04 DE AD BE EF"),
            "DE AD BE EF 90 00"
        );
        assert_eq!(tx(&mut c, "80 EE 00 00 02 01 02 00"), "01 02 90 00");
        assert_eq!(tx(&mut c, "80 EE 00 00"), "90 00");
        for len in [255, 256, 4096, 65526] {
            let data: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
            let r = c.transmit(&encode(0x80, 0xEE, 0, 0, &data, Some(65536)));
            assert_eq!(r.len(), len + 2);
            assert_eq!(&r[..len], &data[..]);
            assert_eq!(sw_of(&r), sw::OK);
        }
        // Case 3E, the largest one a frame carries.
        let data = vec![0xA5; MAX_PAYLOAD - 7];
        let r = c.transmit(&encode(0x80, 0xEE, 0, 0, &data, None));
        assert_eq!(r.len(), data.len() + 2);
    }

    #[test]
    fn errors() {
        let mut c = Card::default();
        assert_eq!(tx(&mut c, "00 CA 01 00 00"), "6D 00");
        assert_eq!(tx(&mut c, "80 A4 00 0C 02 3F 00"), "6D 00");
        assert_eq!(tx(&mut c, "00 EE 00 00 01 00"), "6D 00");
        assert_eq!(tx(&mut c, "FF CA 00 00 00"), "6E 00");
        assert_eq!(tx(&mut c, "A0 A4 00 00 02 3F 00"), "6E 00");
        assert_eq!(tx(&mut c, "00 A4 00"), "67 00");
        assert_eq!(tx(&mut c, "00 A4 00 0C 02 3F"), "67 00");
    }

    #[test]
    fn power_events_reset_the_selection() {
        let mut c = Card::default();
        for control in [Control::PowerOff, Control::PowerOn, Control::Reset] {
            assert_eq!(tx(&mut c, "00 A4 08 0C 04 50 00 50 01"), "90 00");
            assert_eq!(c.control(control), None);
            assert_eq!(tx(&mut c, "00 B0 00 00 01"), "69 86");
            assert_eq!(
                tx(&mut c, "00 A4 02 0C 02 50 01"),
                "6A 82",
                "back in the MF"
            );
        }
        assert_eq!(c.control(Control::GetAtr), Some(&atr::default_atr()[..]));
    }

    #[test]
    fn custom_atr_and_fs() {
        let mut mf = Df::empty_mf();
        mf.children.push(Node::Ef(fs::Ef {
            fid: 0x0101,
            data: vec![1, 2, 3],
        }));
        let mut c = Card::new(vec![0x3B, 0x00], mf);
        assert_eq!(c.atr(), [0x3B, 0x00]);
        assert_eq!(tx(&mut c, "00 A4 02 0C 02 01 01"), "90 00");
        assert_eq!(tx(&mut c, "00 B0 00 01 00"), "02 03 90 00");
        assert_eq!(tx(&mut c, "00 A4 04 0C 01 F0"), "6A 82");
    }

    #[test]
    fn rng_fills_any_length() {
        let mut r = Rng(1);
        let mut a = [0u8; 13];
        r.fill(&mut a);
        assert!(a.iter().any(|b| *b != 0));
        let mut s = Rng::seeded();
        assert_ne!(s.next_u64(), s.next_u64());
    }
}
