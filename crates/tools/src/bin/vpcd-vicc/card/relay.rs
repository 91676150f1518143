//! Relay mode of `vpcd-vicc`: the card in a vpcd slot is a real card in a local PC/SC
//! reader, so that a card here can be used where the vpcd driver runs.
//!
//! | from the driver | to the real card                                                  |
//! |-----------------|-------------------------------------------------------------------|
//! | power on, reset | SCardConnect (shared, T=0 or T=1), or SCardReconnect with a reset |
//! | GET ATR         | the ATR SCardStatus reports                                       |
//! | power off       | SCardDisconnect (unpower by default, see [`PowerOff`])            |
//! | an APDU         | SCardTransmit; 6F 00 when the card cannot answer                  |
//!
//! The PC/SC side is behind the [`Link`] trait ([`PcscLink`] talks to pcscd), so the
//! relay's decisions can be tested without a reader.

use std::ffi::{CStr, CString};
use std::fmt;

use pcsc::{Context, Disposition, Protocols, ReaderState, Scope, ShareMode, State};

use super::atr::to_hex;
use super::VirtualCard;
use vpcd_protocol::vpcd::Control;

/// What the relay answers an APDU with when the card cannot: "no precise diagnosis".
pub const SW_NO_DIAGNOSIS: [u8; 2] = [0x6F, 0x00];

/// What a power off from the driver does to the real card.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum PowerOff {
    /// Disconnect and unpower the card (SCARD_UNPOWER_CARD).
    #[default]
    Unpower,
    /// Disconnect and reset the card (SCARD_RESET_CARD).
    Reset,
    /// Disconnect and leave the card as it is (SCARD_LEAVE_CARD).
    Leave,
}

impl PowerOff {
    /// `unpower`, `reset` or `leave`.
    pub fn parse(text: &str) -> Option<PowerOff> {
        match text {
            "unpower" => Some(PowerOff::Unpower),
            "reset" => Some(PowerOff::Reset),
            "leave" => Some(PowerOff::Leave),
            _ => None,
        }
    }

    fn disposition(self) -> Disposition {
        match self {
            PowerOff::Unpower => Disposition::UnpowerCard,
            PowerOff::Reset => Disposition::ResetCard,
            PowerOff::Leave => Disposition::LeaveCard,
        }
    }
}

/// The PC/SC operations the relay uses on its one reader.
pub trait Link {
    /// Whether a card handle is open.
    fn is_connected(&self) -> bool;
    /// SCardConnect, shared, T=0 or T=1.
    fn connect(&mut self) -> Result<(), pcsc::Error>;
    /// SCardReconnect, shared, T=0 or T=1, with this initialization.
    fn reconnect(&mut self, init: Disposition) -> Result<(), pcsc::Error>;
    /// SCardDisconnect; closes the handle whatever happens.
    fn disconnect(&mut self, disposition: Disposition);
    /// The card's ATR (SCardStatus).
    fn atr(&mut self) -> Result<Vec<u8>, pcsc::Error>;
    /// SCardTransmit; the reply goes to the start of `reply`, its length is returned.
    fn transmit(&mut self, apdu: &[u8], reply: &mut [u8]) -> Result<usize, pcsc::Error>;
}

/// A relay to the card in one PC/SC reader.
pub struct Relay<L: Link = PcscLink> {
    link: L,
    reader: String,
    power_off: PowerOff,
    /// The ATR of the current connection; empty if there is none.
    atr: Vec<u8>,
    /// Connected and no APDU sent since: the card is as it was right after its reset,
    /// so a power on or reset from the driver need not reset it again.
    fresh: bool,
}

impl<L: Link> fmt::Debug for Relay<L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Relay")
            .field("reader", &self.reader)
            .field("connected", &self.link.is_connected())
            .field("atr", &to_hex(&self.atr))
            .finish()
    }
}

impl Relay<PcscLink> {
    /// A relay to the card in `reader` (its full PC/SC name), through pcscd.
    pub fn open(reader: &str, power_off: PowerOff) -> Result<Relay, String> {
        let link = PcscLink::new(reader)?;
        Ok(Relay::new(link, reader, power_off))
    }
}

impl<L: Link> Relay<L> {
    pub fn new(link: L, reader: &str, power_off: PowerOff) -> Relay<L> {
        Relay {
            link,
            reader: reader.to_owned(),
            power_off,
            atr: Vec::new(),
            fresh: false,
        }
    }

    /// The ATR of the connected card; empty if not connected.
    pub fn atr(&self) -> &[u8] {
        &self.atr
    }

    #[cfg(test)]
    pub fn link(&self) -> &L {
        &self.link
    }

    fn log(&self, what: &str, e: &pcsc::Error) {
        eprintln!(
            "vpcd-vicc: relay: {what} the card in \"{}\": {e}",
            self.reader
        );
    }

    /// Connects to the card, or resets it if already connected and used; reads its
    /// ATR. Returns whether the card is powered.
    pub fn power_up(&mut self) -> bool {
        self.atr.clear();
        let result = if !self.link.is_connected() {
            self.link.connect()
        } else if self.fresh {
            Ok(())
        } else {
            self.link.reconnect(Disposition::ResetCard).or_else(|_| {
                // Removed and inserted again, or the handle went stale: start over.
                self.link.disconnect(Disposition::LeaveCard);
                self.link.connect()
            })
        };
        match result.and_then(|()| self.link.atr()) {
            Ok(atr) => {
                self.atr = atr;
                self.fresh = true;
                true
            }
            Err(e) => {
                self.log("cannot power up", &e);
                if self.link.is_connected() {
                    self.link.disconnect(Disposition::LeaveCard);
                }
                self.fresh = false;
                false
            }
        }
    }

    fn power_down(&mut self) {
        if self.link.is_connected() {
            self.link.disconnect(self.power_off.disposition());
        }
        self.atr.clear();
        self.fresh = false;
    }

    /// Sends an APDU to the card and appends its reply, or 6F 00 if there is none.
    fn relay(&mut self, apdu: &[u8], out: &mut Vec<u8>) {
        let start = out.len();
        if !self.link.is_connected() {
            eprintln!(
                "vpcd-vicc: relay: no card connected in \"{}\"; answering 6F 00",
                self.reader
            );
            out.extend_from_slice(&SW_NO_DIAGNOSIS);
            return;
        }
        self.fresh = false;
        out.resize(start + pcsc::MAX_BUFFER_SIZE_EXTENDED, 0);
        let mut result = self.link.transmit(apdu, &mut out[start..]);
        if let Err(pcsc::Error::ResetCard) = result {
            // Another application reset the card: its state is gone, but the card is
            // there. Acknowledge the reset and send the command again.
            eprintln!(
                "vpcd-vicc: relay: the card in \"{}\" was reset by another application",
                self.reader
            );
            result = self
                .link
                .reconnect(Disposition::LeaveCard)
                .and_then(|()| self.link.transmit(apdu, &mut out[start..]));
        }
        match result {
            Ok(n) if n >= 2 => out.truncate(start + n),
            Ok(n) => {
                eprintln!("vpcd-vicc: relay: reply of {n} byte(s) from the card; answering 6F 00");
                out.truncate(start);
                out.extend_from_slice(&SW_NO_DIAGNOSIS);
            }
            Err(e) => {
                self.log("cannot transmit to", &e);
                if is_gone(&e) {
                    self.link.disconnect(Disposition::LeaveCard);
                    self.atr.clear();
                }
                out.truncate(start);
                out.extend_from_slice(&SW_NO_DIAGNOSIS);
            }
        }
    }
}

/// Errors after which the card handle is of no further use.
fn is_gone(e: &pcsc::Error) -> bool {
    matches!(
        e,
        pcsc::Error::RemovedCard
            | pcsc::Error::NoSmartcard
            | pcsc::Error::ReaderUnavailable
            | pcsc::Error::UnknownReader
            | pcsc::Error::InvalidHandle
            | pcsc::Error::NoService
            | pcsc::Error::ServiceStopped
            | pcsc::Error::UnpoweredCard
            | pcsc::Error::UnresponsiveCard
    )
}

impl<L: Link> VirtualCard for Relay<L> {
    fn control(&mut self, control: Control) -> Option<&[u8]> {
        match control {
            Control::PowerOn | Control::Reset => {
                self.power_up();
                None
            }
            Control::PowerOff => {
                self.power_down();
                None
            }
            Control::GetAtr => {
                if self.atr.is_empty() {
                    self.power_up();
                }
                Some(&self.atr)
            }
        }
    }

    fn respond(&mut self, apdu: &[u8], out: &mut Vec<u8>) {
        self.relay(apdu, out);
    }
}

/// [`Link`] to a reader through pcscd (libpcsclite).
pub struct PcscLink {
    ctx: Context,
    reader: CString,
    card: Option<pcsc::Card>,
}

impl PcscLink {
    /// Establishes a PC/SC context for `reader` (not yet connected to its card).
    pub fn new(reader: &str) -> Result<PcscLink, String> {
        let reader = CString::new(reader).map_err(|_| "a reader name has no NUL byte")?;
        let ctx = establish()?;
        Ok(PcscLink {
            ctx,
            reader,
            card: None,
        })
    }
}

impl Link for PcscLink {
    fn is_connected(&self) -> bool {
        self.card.is_some()
    }

    fn connect(&mut self) -> Result<(), pcsc::Error> {
        if let Some(card) = self.card.take() {
            let _ = card.disconnect(Disposition::LeaveCard);
        }
        // A context whose pcscd went away (restarted) is of no use: establish anew.
        if self.ctx.is_valid().is_err() {
            self.ctx = Context::establish(Scope::User)?;
        }
        let card = self.ctx.connect(
            &self.reader,
            ShareMode::Shared,
            Protocols::T0 | Protocols::T1,
        )?;
        self.card = Some(card);
        Ok(())
    }

    fn reconnect(&mut self, init: Disposition) -> Result<(), pcsc::Error> {
        match &mut self.card {
            Some(card) => card.reconnect(ShareMode::Shared, Protocols::T0 | Protocols::T1, init),
            None => Err(pcsc::Error::InvalidHandle),
        }
    }

    fn disconnect(&mut self, disposition: Disposition) {
        if let Some(card) = self.card.take() {
            if let Err((card, e)) = card.disconnect(disposition) {
                eprintln!("vpcd-vicc: relay: disconnecting from the card: {e}");
                // Dropping a pcsc::Card would reset the card: leave it instead.
                let _ = card.disconnect(Disposition::LeaveCard);
            }
        }
    }

    fn atr(&mut self) -> Result<Vec<u8>, pcsc::Error> {
        let card = self.card.as_ref().ok_or(pcsc::Error::InvalidHandle)?;
        Ok(card.status2_owned()?.atr().to_vec())
    }

    fn transmit(&mut self, apdu: &[u8], reply: &mut [u8]) -> Result<usize, pcsc::Error> {
        let card = self.card.as_ref().ok_or(pcsc::Error::InvalidHandle)?;
        card.transmit(apdu, reply).map(<[u8]>::len)
    }
}

impl Drop for PcscLink {
    fn drop(&mut self) {
        // Leave the card to the other applications as it is.
        self.disconnect(Disposition::LeaveCard);
    }
}

fn establish() -> Result<Context, String> {
    Context::establish(Scope::User).map_err(|e| format!("cannot reach pcscd: {e}"))
}

/// A PC/SC reader and what is in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReaderInfo {
    pub name: String,
    /// The ATR of the card in it, if there is one.
    pub atr: Option<Vec<u8>>,
}

/// The readers pcscd has, in its order, with their cards.
pub fn list_readers() -> Result<Vec<ReaderInfo>, String> {
    let ctx = establish()?;
    let names = match ctx.list_readers_owned() {
        Ok(names) => names,
        Err(pcsc::Error::NoReadersAvailable) => return Ok(vec![]),
        Err(e) => return Err(format!("cannot list the readers: {e}")),
    };
    let mut states: Vec<ReaderState> = names
        .iter()
        .map(|n| ReaderState::new(n.clone(), State::UNAWARE))
        .collect();
    // With UNAWARE current states, this returns at once with the present ones.
    let known = ctx
        .get_status_change(std::time::Duration::ZERO, &mut states)
        .is_ok();
    Ok(states
        .iter()
        .map(|s| ReaderInfo {
            name: reader_name(s.name()),
            atr: (known && s.event_state().contains(State::PRESENT)).then(|| s.atr().to_vec()),
        })
        .collect())
}

fn reader_name(name: &CStr) -> String {
    name.to_string_lossy().into_owned()
}

/// `opensc-tool -l`-like lines for `readers`.
pub fn format_readers(readers: &[ReaderInfo]) -> String {
    if readers.is_empty() {
        return "No PC/SC readers found.\n".into();
    }
    let mut s = String::from("# PC/SC readers\nNr.  Card  Name\n");
    for (i, r) in readers.iter().enumerate() {
        let card = if r.atr.is_some() { "Yes" } else { "No" };
        s += &format!("{i:<4} {card:<5} {}\n", r.name);
        if let Some(atr) = r.atr.as_ref().filter(|a| !a.is_empty()) {
            s += &format!("          ATR {}\n", to_hex(atr));
        }
    }
    s
}

/// The reader `spec` means: its exact name, its number in the list, or the one name
/// it is part of.
pub fn resolve_reader(spec: &str, readers: &[ReaderInfo]) -> Result<String, String> {
    if let Some(r) = readers.iter().find(|r| r.name == spec) {
        return Ok(r.name.clone());
    }
    if let Ok(i) = spec.parse::<usize>() {
        if let Some(r) = readers.get(i) {
            return Ok(r.name.clone());
        }
    }
    let matches: Vec<&ReaderInfo> = readers.iter().filter(|r| r.name.contains(spec)).collect();
    match matches.as_slice() {
        [one] => Ok(one.name.clone()),
        [] => Err(format!(
            "no PC/SC reader \"{spec}\"\n{}",
            format_readers(readers).trim_end()
        )),
        _ => Err(format!(
            "\"{spec}\" matches several readers: {}",
            matches
                .iter()
                .map(|r| format!("\"{}\"", r.name))
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reader with a scripted card: records the calls, answers APDUs with 90 00
    /// after the APDU, fails as told.
    #[derive(Default)]
    struct Fake {
        card_present: bool,
        connected: bool,
        calls: Vec<String>,
        /// Errors the next transmits return, first first.
        transmit_errors: Vec<pcsc::Error>,
        reconnect_fails: bool,
    }

    const ATR: &[u8] = &[0x3B, 0x80, 0x80, 0x01, 0x01];

    impl Link for Fake {
        fn is_connected(&self) -> bool {
            self.connected
        }
        fn connect(&mut self) -> Result<(), pcsc::Error> {
            self.calls.push("connect".into());
            if !self.card_present {
                return Err(pcsc::Error::NoSmartcard);
            }
            self.connected = true;
            Ok(())
        }
        fn reconnect(&mut self, init: Disposition) -> Result<(), pcsc::Error> {
            self.calls.push(format!("reconnect {init:?}"));
            if self.reconnect_fails {
                return Err(pcsc::Error::RemovedCard);
            }
            Ok(())
        }
        fn disconnect(&mut self, disposition: Disposition) {
            self.calls.push(format!("disconnect {disposition:?}"));
            self.connected = false;
        }
        fn atr(&mut self) -> Result<Vec<u8>, pcsc::Error> {
            Ok(ATR.to_vec())
        }
        fn transmit(&mut self, apdu: &[u8], reply: &mut [u8]) -> Result<usize, pcsc::Error> {
            self.calls.push("transmit".into());
            if !self.transmit_errors.is_empty() {
                return Err(self.transmit_errors.remove(0));
            }
            reply[..apdu.len()].copy_from_slice(apdu);
            reply[apdu.len()..apdu.len() + 2].copy_from_slice(&[0x90, 0x00]);
            Ok(apdu.len() + 2)
        }
    }

    fn relay(present: bool) -> Relay<Fake> {
        let fake = Fake {
            card_present: present,
            ..Fake::default()
        };
        Relay::new(fake, "Reader 00 00", PowerOff::Unpower)
    }

    fn respond(r: &mut Relay<Fake>, apdu: &[u8]) -> Vec<u8> {
        let mut out = vec![0xAA];
        r.respond(apdu, &mut out);
        assert_eq!(out[0], 0xAA, "appends");
        out.split_off(1)
    }

    #[test]
    fn power_on_connects_once_and_reset_resets_a_used_card() {
        let mut r = relay(true);
        assert_eq!(r.control(Control::PowerOn), None);
        assert_eq!(r.control(Control::GetAtr), Some(ATR));
        // A fresh connection is not reset again.
        r.control(Control::Reset);
        assert_eq!(r.link().calls, ["connect"]);
        assert_eq!(
            respond(&mut r, &[0, 0xB0, 0, 0, 1]),
            [0, 0xB0, 0, 0, 1, 0x90, 0]
        );
        r.control(Control::Reset);
        assert_eq!(r.control(Control::GetAtr), Some(ATR));
        assert_eq!(
            r.link().calls,
            ["connect", "transmit", "reconnect ResetCard"]
        );
    }

    #[test]
    fn power_off_disconnects_as_configured_and_power_on_connects_again() {
        for (mode, disposition) in [
            (PowerOff::Unpower, "UnpowerCard"),
            (PowerOff::Leave, "LeaveCard"),
            (PowerOff::Reset, "ResetCard"),
        ] {
            let mut r = relay(true);
            r.power_off = mode;
            r.control(Control::PowerOn);
            r.control(Control::PowerOff);
            assert!(!r.link().connected);
            assert_eq!(r.atr(), b"");
            r.control(Control::PowerOn);
            assert_eq!(
                r.link().calls,
                [
                    "connect",
                    format!("disconnect {disposition}").as_str(),
                    "connect"
                ]
            );
        }
    }

    #[test]
    fn no_card_means_an_empty_atr_and_6f00() {
        let mut r = relay(false);
        r.control(Control::PowerOn);
        assert_eq!(r.control(Control::GetAtr), Some(&[][..]));
        assert_eq!(respond(&mut r, &[0, 0x84, 0, 0, 8]), SW_NO_DIAGNOSIS);
        // The card arrives: the next power on finds it.
        r.link.card_present = true;
        r.control(Control::PowerOn);
        assert_eq!(r.control(Control::GetAtr), Some(ATR));
    }

    #[test]
    fn a_removed_card_answers_6f00_and_is_connected_again_at_power_on() {
        let mut r = relay(true);
        r.control(Control::PowerOn);
        r.link.transmit_errors.push(pcsc::Error::RemovedCard);
        assert_eq!(respond(&mut r, &[0, 0x84, 0, 0, 8]), SW_NO_DIAGNOSIS);
        assert!(!r.link().connected);
        assert_eq!(respond(&mut r, &[0, 0x84, 0, 0, 8]), SW_NO_DIAGNOSIS);
        r.control(Control::PowerOn);
        assert_eq!(
            respond(&mut r, &[0x80, 0xEE, 0, 0]),
            [0x80, 0xEE, 0, 0, 0x90, 0]
        );
    }

    #[test]
    fn a_reset_by_another_application_is_acknowledged_and_the_apdu_resent() {
        let mut r = relay(true);
        r.control(Control::PowerOn);
        r.link.transmit_errors.push(pcsc::Error::ResetCard);
        assert_eq!(respond(&mut r, &[0, 0xA4, 0, 0]), [0, 0xA4, 0, 0, 0x90, 0]);
        assert_eq!(
            r.link().calls,
            ["connect", "transmit", "reconnect LeaveCard", "transmit"]
        );
    }

    #[test]
    fn a_failed_reset_connects_anew() {
        let mut r = relay(true);
        r.control(Control::PowerOn);
        respond(&mut r, &[0, 0xA4, 0, 0]);
        r.link.reconnect_fails = true;
        r.control(Control::Reset);
        assert_eq!(r.atr(), ATR);
        assert_eq!(
            r.link().calls,
            [
                "connect",
                "transmit",
                "reconnect ResetCard",
                "disconnect LeaveCard",
                "connect"
            ]
        );
    }

    fn info(name: &str, atr: Option<&[u8]>) -> ReaderInfo {
        ReaderInfo {
            name: name.into(),
            atr: atr.map(<[u8]>::to_vec),
        }
    }

    #[test]
    fn readers_are_found_by_name_number_or_part() {
        let readers = [
            info("Virtual PCD 00 00", Some(ATR)),
            info("Virtual PCD 00 01", None),
            info("Yubico YubiKey 01 00", None),
        ];
        let r = |s| resolve_reader(s, &readers);
        assert_eq!(r("Virtual PCD 00 01").unwrap(), "Virtual PCD 00 01");
        assert_eq!(r("0").unwrap(), "Virtual PCD 00 00");
        assert_eq!(r("Yubi").unwrap(), "Yubico YubiKey 01 00");
        assert!(r("Virtual").unwrap_err().contains("several"));
        assert!(r("7").unwrap_err().contains("no PC/SC reader"));
        let list = format_readers(&readers);
        assert!(list.contains("0    Yes   Virtual PCD 00 00\n"), "{list}");
        assert!(list.contains("ATR 3B 80 80 01 01"), "{list}");
        assert!(list.contains("1    No    Virtual PCD 00 01\n"), "{list}");
        assert_eq!(format_readers(&[]), "No PC/SC readers found.\n");
    }

    #[test]
    fn power_off_modes_parse() {
        assert_eq!(PowerOff::parse("leave"), Some(PowerOff::Leave));
        assert_eq!(PowerOff::parse("unpower"), Some(PowerOff::Unpower));
        assert_eq!(PowerOff::parse("reset"), Some(PowerOff::Reset));
        assert_eq!(PowerOff::parse("eject"), None);
    }
}
