//! What a `reader.conf.d` entry asks of a reader: the DEVICENAME (or CHANNELID)
//! syntax of the C vpcd, plus our options.
//!
//! ```text
//! DEVICENAME /dev/null:0x8C7B              listen on 35963 (slot n: 35963 + n), C form
//! DEVICENAME localhost:35963               reversed: connect out to a listening vicc
//! DEVICENAME [::1]:35963                   reversed over IPv6
//! DEVICENAME Virtual PCD                   no ':' (macOS friendly name): listen on 35963
//! DEVICENAME /dev/null:35963/slots=4/listen=127.0.0.1/timeout=10
//! DEVICENAME /dev/null:35963/listen=::/tls=yes  only TLS 1.3 peers with a trusted key
//! DEVICENAME /dev/null:35973/tls=yes/keys=alice  the same, with key set `alice`
//! DEVICENAME ::1:35963/timeout=5           reversed over IPv6, unquoted
//! DEVICENAME "[::1]:35963"                 the same, quoted (pcscd keeps the quotes)
//! ```
//!
//! Options follow the port, each after a '/'. pcscd's config lexer accepts only
//! letters, digits and `= \ / - . _ @ :` in an unquoted value (a ',' or '[' makes it
//! refuse the whole file), and the C driver reads its port with `strtoul`, which stops
//! at the '/': an entry with options still means the same port to the C driver.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

/// The port the C vpcd listens on by default (0x8C7B).
pub const DEFAULT_PORT: u16 = 35963;
/// Slots per reader when the entry does not say: two, as in the C driver.
pub const DEFAULT_SLOTS: u16 = 2;
/// Most slots one reader may have (pcscd reads a reader's slot count as one byte;
/// pcsc-lite before 2.5 serves at most 16 slots in all, counting every reader's).
pub const MAX_SLOTS: u16 = 255;
/// How long a vicc may take to answer one command. A real card relayed over a
/// mobile network generating an RSA key fits; a stalled peer is dropped after it.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// Which protocol a reader speaks on its sockets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Vpcd,
    VsCard,
}

/// Where a reader's vicc comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// Wait for vicc connections on this address.
    Listen { addr: IpAddr, v6only: bool },
    /// Reversed mode: connect out to a vicc that listens on this host.
    Connect { host: String },
}

/// A parsed reader.conf.d entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReaderConfig {
    pub endpoint: Endpoint,
    /// Port of slot 0; slot n uses `port + n`.
    pub port: u16,
    pub slots: u16,
    pub timeout: Duration,
    pub protocol: Protocol,
    /// Log verbosity for this reader (`log=` option), if set.
    pub log_level: Option<log::LevelFilter>,
    /// Log every APDU and reply (`trace=yes`): off by default, APDUs carry PINs.
    pub trace_apdus: bool,
    /// The peers that may connect (`allow=` options); empty: any.
    pub allow: Vec<AllowedNet>,
    /// A PIN pad reader (`pinpad=yes`): PIN entry on the vicc's side, for viccs that
    /// announced it (docs/PINPAD.md).
    pub pinpad: bool,
    /// A secure reader (`tls=yes`): every slot speaks TLS 1.3 with mutual
    /// authentication by pinned keys, with the key and trust list of the TLS directory
    /// (docs/TLS.md).
    pub tls: bool,
    /// The key set of a secure reader (`keys=NAME`): its key and trust list are those
    /// of the TLS directory's sub-directory NAME, so that readers trust different
    /// peers. None: the TLS directory's own.
    pub tls_keys: Option<String>,
}

/// The longest key set name (`keys=`).
pub const MAX_KEYS_NAME: usize = 64;

/// Checks a key set name: 1 to [`MAX_KEYS_NAME`] letters, digits, `-` or `_`, so that
/// it names one sub-directory and nothing else (no `/`, no `..`).
pub fn check_keys_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_KEYS_NAME {
        return Err(format!("expected 1 to {MAX_KEYS_NAME} characters"));
    }
    match name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
    {
        Some(c) => Err(format!("{c:?} is not a letter, digit, - or _")),
        None => Ok(()),
    }
}

/// A peer address or network named by an `allow=` option: `ADDR` or `ADDR_PREFIXLEN`
/// (`192.168.1.0_24`, `fd00::_8`). pcscd's config lexer refuses `,` and the options
/// are separated by `/`, so the prefix length follows a `_`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AllowedNet {
    addr: IpAddr,
    prefix: u8,
}

impl AllowedNet {
    pub fn parse(s: &str) -> Result<AllowedNet, String> {
        let (addr, prefix) = match s.split_once('_') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (s, None),
        };
        let addr: IpAddr = unbracket(addr)
            .parse()
            .map_err(|_| format!("{s:?} is not an address or ADDRESS_PREFIXLEN"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("prefix length {p:?} is not 0 to {max}"))?,
        };
        Ok(AllowedNet { addr, prefix })
    }

    /// Whether `peer` is in this network. An IPv4 peer reaching a dual-stack
    /// listener shows as `::ffff:a.b.c.d`: it is matched as the IPv4 address it is.
    pub fn contains(&self, peer: IpAddr) -> bool {
        let peer = match peer {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(peer, IpAddr::V4),
            v4 => v4,
        };
        match (self.addr, peer) {
            (IpAddr::V4(net), IpAddr::V4(peer)) => {
                prefix_eq(&net.octets(), &peer.octets(), self.prefix)
            }
            (IpAddr::V6(net), IpAddr::V6(peer)) => {
                prefix_eq(&net.octets(), &peer.octets(), self.prefix)
            }
            _ => false,
        }
    }
}

impl fmt::Display for AllowedNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// Whether the first `bits` bits of `a` and `b` agree.
fn prefix_eq(a: &[u8], b: &[u8], bits: u8) -> bool {
    let bits = usize::from(bits);
    let (whole, rest) = (bits / 8, bits % 8);
    if a[..whole] != b[..whole] {
        return false;
    }
    rest == 0 || {
        let mask = 0xFFu8 << (8 - rest);
        a[whole] & mask == b[whole] & mask
    }
}

/// Whether `peer` may connect to a reader allowing `allow` (empty: anyone).
pub fn is_allowed(allow: &[AllowedNet], peer: IpAddr) -> bool {
    allow.is_empty() || allow.iter().any(|net| net.contains(peer))
}

/// Why a DEVICENAME or CHANNELID was refused. Its text quotes the input and says
/// what was expected, for pcscd's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub input: String,
    pub reason: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "cannot use DEVICENAME \"{}\": {}; expected /dev/null:PORT (listen), HOST:PORT (reversed) \
             or CHANNELID PORT, optionally followed by /slots=N /listen=ADDR /v6only=yes|no \
             /timeout=SECONDS /protocol=vpcd|vscard /log=error|warn|info|debug|trace /trace=yes|no \
             /allow=ADDR[_PREFIXLEN] /pinpad=yes|no /tls=yes|no /keys=NAME",
            self.input.escape_debug(),
            self.reason
        )
    }
}

impl std::error::Error for ConfigError {}

impl ReaderConfig {
    fn new(endpoint: Endpoint, port: u16) -> ReaderConfig {
        ReaderConfig {
            endpoint,
            port,
            slots: DEFAULT_SLOTS,
            timeout: DEFAULT_TIMEOUT,
            protocol: Protocol::Vpcd,
            log_level: None,
            trace_apdus: false,
            allow: Vec::new(),
            pinpad: false,
            tls: false,
            tls_keys: None,
        }
    }

    fn listen_all(port: u16) -> ReaderConfig {
        ReaderConfig::new(
            Endpoint::Listen {
                addr: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                v6only: false,
            },
            port,
        )
    }

    /// The entry of a reader.conf.d file with an empty DEVICENAME: listen on CHANNELID.
    pub fn from_channel_id(channel: u32) -> Result<ReaderConfig, ConfigError> {
        let input = format!("CHANNELID {channel:#X}");
        let port = u16::try_from(channel)
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| ConfigError {
                input: input.clone(),
                reason: "the channel is no TCP port (1 to 65535)".into(),
            })?;
        let cfg = ReaderConfig::listen_all(port);
        cfg.check_ports()
            .map_err(|reason| ConfigError { input, reason })?;
        Ok(cfg)
    }

    /// Parses a DEVICENAME value.
    pub fn parse(device_name: &str) -> Result<ReaderConfig, ConfigError> {
        let fail = |reason: String| ConfigError {
            input: device_name.to_owned(),
            reason,
        };
        let value = device_name.trim();
        let value = value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .unwrap_or(value)
            .trim();
        // pcscd's USB hotplug names a pretend-USB bundle's device "usb:VID/PID:...";
        // like the C driver, such a reader listens on the default port.
        if value.starts_with("usb:") {
            return Ok(ReaderConfig::listen_all(DEFAULT_PORT));
        }
        let (base, options) = split_options(value);
        let mut cfg = match base.rsplit_once(':') {
            // macOS hands us the bundle's friendly name: the C driver's default port.
            None => ReaderConfig::listen_all(DEFAULT_PORT),
            Some((host, port)) => {
                let port = parse_port(port).map_err(fail)?;
                match host {
                    "/dev/null" => ReaderConfig::listen_all(port),
                    "" => {
                        return Err(fail(
                            "the host before ':' is empty; write /dev/null:PORT to listen".into(),
                        ))
                    }
                    host => {
                        let host = unbracket(host);
                        if host.is_empty() || host.contains(char::is_whitespace) {
                            return Err(fail(format!("\"{host}\" is no host name")));
                        }
                        ReaderConfig::new(
                            Endpoint::Connect {
                                host: host.to_owned(),
                            },
                            port,
                        )
                    }
                }
            }
        };
        if let Some(options) = options {
            cfg.apply_options(options).map_err(fail)?;
        }
        cfg.check_ports().map_err(fail)?;
        Ok(cfg)
    }

    fn apply_options(&mut self, options: &str) -> Result<(), String> {
        let mut unknown = vec![];
        let mut v6only = None;
        for option in options.split('/').map(str::trim).filter(|o| !o.is_empty()) {
            let (key, value) = option.split_once('=').unwrap_or((option, ""));
            let bad = |what: &str| format!("option {key}={value}: {what}");
            match key {
                "slots" => {
                    self.slots = value
                        .parse()
                        .ok()
                        .filter(|n| (1..=MAX_SLOTS).contains(n))
                        .ok_or_else(|| bad(&format!("expected 1 to {MAX_SLOTS}")))?;
                }
                "listen" => {
                    let addr: IpAddr = unbracket(value)
                        .parse()
                        .map_err(|_| bad("expected an IPv4 or IPv6 address"))?;
                    match &mut self.endpoint {
                        Endpoint::Listen { addr: a, .. } => *a = addr,
                        Endpoint::Connect { .. } => {
                            return Err(bad("reversed mode connects out and listens nowhere"))
                        }
                    }
                }
                "v6only" => {
                    v6only = Some(parse_bool(value).ok_or_else(|| bad("expected yes or no"))?)
                }
                "timeout" => {
                    let secs: f64 = value
                        .parse()
                        .ok()
                        .filter(|s: &f64| s.is_finite() && *s >= 0.001 && *s <= 86_400.0)
                        .ok_or_else(|| bad("expected seconds, 0.001 to 86400"))?;
                    self.timeout = Duration::from_secs_f64(secs);
                }
                "protocol" => {
                    self.protocol = match value {
                        "vpcd" => Protocol::Vpcd,
                        "vscard" => Protocol::VsCard,
                        _ => return Err(bad("expected vpcd or vscard")),
                    }
                }
                "log" => {
                    self.log_level = Some(
                        value
                            .parse()
                            .map_err(|_| bad("expected off, error, warn, info, debug or trace"))?,
                    )
                }
                "trace" => {
                    self.trace_apdus = parse_bool(value).ok_or_else(|| bad("expected yes or no"))?
                }
                "pinpad" => {
                    self.pinpad = parse_bool(value).ok_or_else(|| bad("expected yes or no"))?
                }
                "tls" => self.tls = parse_bool(value).ok_or_else(|| bad("expected yes or no"))?,
                "keys" => {
                    check_keys_name(value).map_err(|e| bad(&e))?;
                    self.tls_keys = Some(value.to_owned());
                }
                "allow" => {
                    if let Endpoint::Connect { .. } = self.endpoint {
                        return Err(bad("reversed mode connects out and accepts no peers"));
                    }
                    self.allow
                        .push(AllowedNet::parse(value).map_err(|e| bad(&e))?);
                }
                _ => unknown.push(key.to_owned()),
            }
        }
        if !unknown.is_empty() {
            return Err(format!("unknown option(s): {}", unknown.join(", ")));
        }
        if self.pinpad && self.protocol != Protocol::Vpcd {
            return Err("option pinpad needs the vpcd protocol: VSCard has no PIN entry".into());
        }
        if self.tls_keys.is_some() && !self.tls {
            return Err("option keys names the key set of a secure reader: add /tls=yes".into());
        }
        if self.tls && self.protocol != Protocol::Vpcd {
            return Err("option tls needs the vpcd protocol: VSCard peers speak no TLS".into());
        }
        if let Some(flag) = v6only {
            match &mut self.endpoint {
                Endpoint::Listen {
                    addr: IpAddr::V6(_),
                    v6only,
                } => *v6only = flag,
                _ => return Err("option v6only applies only to an IPv6 listen address".into()),
            }
        }
        Ok(())
    }

    fn check_ports(&self) -> Result<(), String> {
        if u32::from(self.port) + u32::from(self.slots) - 1 > u32::from(u16::MAX) {
            return Err(format!(
                "port {} + {} slots runs past 65535",
                self.port, self.slots
            ));
        }
        Ok(())
    }

    /// The TCP port of `slot`, if the reader has that slot.
    pub fn port_of(&self, slot: u16) -> Option<u16> {
        (slot < self.slots).then(|| self.port + slot)
    }

    /// A serial number for the reader, stable across restarts: where it listens or
    /// what it connects to (SCARD_ATTR_VENDOR_IFD_SERIAL_NO).
    pub fn serial_number(&self) -> String {
        match &self.endpoint {
            Endpoint::Listen { .. } => format!("vpcd-{}", self.port),
            Endpoint::Connect { host } => format!("vpcd-{host}-{}", self.port),
        }
    }

    /// True when a listening reader accepts connections from other machines.
    pub fn listens_beyond_loopback(&self) -> bool {
        matches!(&self.endpoint, Endpoint::Listen { addr, .. } if !addr.is_loopback())
    }
}

/// The `::` listen address, for callers that want dual-stack.
pub const IPV6_ANY: IpAddr = IpAddr::V6(Ipv6Addr::UNSPECIFIED);

/// Splits `HOST:PORT/opt=v/...` at the first '/' after the first ':' (the host
/// `/dev/null` has slashes of its own; an IPv6 host has colons).
fn split_options(value: &str) -> (&str, Option<&str>) {
    let Some(colon) = value.find(':') else {
        return (value, None);
    };
    match value[colon..].find('/') {
        Some(slash) => (&value[..colon + slash], Some(&value[colon + slash + 1..])),
        None => (value, None),
    }
}

fn unbracket(s: &str) -> &str {
    s.strip_prefix('[')
        .and_then(|s| s.strip_suffix(']'))
        .unwrap_or(s)
}

fn parse_bool(s: &str) -> Option<bool> {
    match s {
        "yes" | "true" | "on" | "1" => Some(true),
        "no" | "false" | "off" | "0" => Some(false),
        _ => None,
    }
}

/// A port as the C driver reads it with `strtoul(s, NULL, 0)`: decimal, `0x` hex or
/// `0` octal.
fn parse_port(s: &str) -> Result<u16, String> {
    let s = s.trim();
    let parsed = if let Some(hex) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        u32::from_str_radix(hex, 16)
    } else if s.len() > 1 && s.starts_with('0') {
        u32::from_str_radix(&s[1..], 8)
    } else {
        s.parse::<u32>()
    };
    match parsed {
        Ok(port @ 1..=65535) => Ok(port as u16),
        _ => Err(format!(
            "port \"{s}\" is not a number from 1 to 65535 (decimal or 0x hex)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn listen(addr: &str, v6only: bool) -> Endpoint {
        Endpoint::Listen {
            addr: addr.parse().unwrap(),
            v6only,
        }
    }

    #[test]
    fn c_driver_forms() {
        let c = ReaderConfig::parse("/dev/null:0x8C7B").unwrap();
        assert_eq!(c.endpoint, listen("0.0.0.0", false));
        assert_eq!((c.port, c.slots), (35963, 2));
        assert_eq!(ReaderConfig::parse("/dev/null:35963").unwrap(), c);
        assert_eq!(
            ReaderConfig::parse("/dev/null:0106173").unwrap().port,
            35963
        );

        let r = ReaderConfig::parse("localhost:35963").unwrap();
        assert_eq!(
            r.endpoint,
            Endpoint::Connect {
                host: "localhost".into()
            }
        );
        assert_eq!(r.port, 35963);

        let u = ReaderConfig::parse("usb:18d1/4ee1:libudev:0:/dev/bus/usb/001/005").unwrap();
        assert_eq!(u.port, DEFAULT_PORT);

        let m = ReaderConfig::parse("Virtual PCD").unwrap();
        assert_eq!(
            (m.endpoint, m.port),
            (listen("0.0.0.0", false), DEFAULT_PORT)
        );
    }

    #[test]
    fn ipv6_reversed_hosts() {
        for name in [
            "[::1]:4000",
            "::1:4000",
            "\"[::1]:4000\"",
            "::1:4000/timeout=1",
        ] {
            let c = ReaderConfig::parse(name).unwrap();
            assert_eq!(c.endpoint, Endpoint::Connect { host: "::1".into() });
            assert_eq!(c.port, 4000);
        }
    }

    #[test]
    fn channel_id() {
        let c = ReaderConfig::from_channel_id(0x8C7B).unwrap();
        assert_eq!((c.port, c.slots), (35963, 2));
        assert!(ReaderConfig::from_channel_id(0).is_err());
        assert!(ReaderConfig::from_channel_id(70000).is_err());
        assert!(
            ReaderConfig::from_channel_id(65535).is_err(),
            "slot 1 would be 65536"
        );
    }

    #[test]
    fn options() {
        let c = ReaderConfig::parse(
            "/dev/null:35963/slots=4/listen=::1/timeout=2.5/log=debug/trace=yes",
        )
        .unwrap();
        assert_eq!(c.slots, 4);
        assert_eq!(c.endpoint, listen("::1", false));
        assert_eq!(c.timeout, Duration::from_millis(2500));
        assert_eq!(c.log_level, Some(log::LevelFilter::Debug));
        assert!(c.trace_apdus);
        assert!(!c.pinpad);
        assert!(
            ReaderConfig::parse("/dev/null:35963/pinpad=yes")
                .unwrap()
                .pinpad
        );
        assert!(
            !ReaderConfig::parse("/dev/null:35963/pinpad=no")
                .unwrap()
                .pinpad
        );
        assert!(ReaderConfig::parse("/dev/null:35963/pinpad=maybe").is_err());
        assert!(ReaderConfig::parse("/dev/null:35963/pinpad=yes/protocol=vscard").is_err());
        assert_eq!(c.port_of(3), Some(35966));
        assert_eq!(c.port_of(4), None);

        let d = ReaderConfig::parse("/dev/null:35963/listen=::/v6only=yes").unwrap();
        assert_eq!(d.endpoint, listen("::", true));
        assert_eq!(
            ReaderConfig::parse("/dev/null:1/protocol=vscard")
                .unwrap()
                .protocol,
            Protocol::VsCard
        );
        assert!(!ReaderConfig::parse("/dev/null:1/listen=127.0.0.1")
            .unwrap()
            .listens_beyond_loopback());
    }

    #[test]
    fn errors_quote_the_input_and_name_the_problem() {
        let cases = [
            ("/dev/null:", "port"),
            ("/dev/null:99999", "port"),
            ("/dev/null:0", "port"),
            ("/dev/null:abc", "port"),
            ("/dev/null:1/slots=0", "slots"),
            ("/dev/null:1/slots=256", "slots"),
            ("/dev/null:1/colour=red/flavour", "colour, flavour"),
            ("/dev/null:1/listen=nowhere", "listen"),
            ("/dev/null:1/v6only=yes", "v6only"),
            ("host:1/listen=::1", "reversed"),
            ("/dev/null:65535", "65535"),
            ("/dev/null:1/timeout=0", "timeout"),
            ("/dev/null:1/timeout=nan", "timeout"),
            (":35963", "empty"),
        ];
        for (input, needle) in cases {
            let e = ReaderConfig::parse(input).unwrap_err();
            let text = e.to_string();
            assert!(text.contains(input), "{text}");
            assert!(text.contains(needle), "{input}: {text}");
        }
    }

    #[test]
    fn hosts_must_be_names() {
        for bad in ["[]:35963", "card host:35963", "\"[ ]:35963\""] {
            let e = ReaderConfig::parse(bad).unwrap_err();
            assert!(e.to_string().contains("is no host name"), "{bad}: {e}");
        }
        assert_eq!(
            ReaderConfig::parse("/dev/null:1/protocol=vpcd")
                .unwrap()
                .protocol,
            Protocol::Vpcd
        );
    }

    #[test]
    fn the_last_slot_may_take_port_65535() {
        let c = ReaderConfig::parse("/dev/null:65534").unwrap();
        assert_eq!(c.port_of(1), Some(65535));
        assert_eq!(
            ReaderConfig::parse("/dev/null:65535/slots=1").unwrap().port,
            65535
        );
        assert!(ReaderConfig::parse("/dev/null:65533/slots=3").is_ok());
        assert!(ReaderConfig::parse("/dev/null:65533/slots=4").is_err());
        assert!(ReaderConfig::from_channel_id(65534).is_ok());
    }

    #[test]
    fn serial_numbers_and_exposure() {
        let listen = ReaderConfig::parse("/dev/null:35963").unwrap();
        assert_eq!(listen.serial_number(), "vpcd-35963");
        assert!(listen.listens_beyond_loopback(), "0.0.0.0");
        let connect = ReaderConfig::parse("card.example:4000").unwrap();
        assert_eq!(connect.serial_number(), "vpcd-card.example-4000");
        assert!(!connect.listens_beyond_loopback(), "connects out");
        assert!(!ReaderConfig::parse("/dev/null:1/listen=::1")
            .unwrap()
            .listens_beyond_loopback());
        assert!(ReaderConfig::parse("/dev/null:1/listen=::")
            .unwrap()
            .listens_beyond_loopback());
    }

    /// What pcscd 1.9's config lexer accepts in an unquoted value (configfile.l).
    fn pcscd_passes_unquoted(value: &str) -> bool {
        value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "=\\/-._@:".contains(c))
    }

    #[test]
    fn every_option_can_be_written_unquoted_in_reader_conf() {
        let entries = [
            "/dev/null:0x8C7B",
            "localhost:35963",
            "::1:35963/timeout=5",
            "/dev/null:35963/slots=4/listen=127.0.0.1/timeout=2.5",
            "/dev/null:35963/listen=::/v6only=yes/log=debug/trace=yes",
            "/dev/null:35963/protocol=vscard",
            "card-host.example_org:35963/slots=1",
        ];
        for entry in entries {
            assert!(pcscd_passes_unquoted(entry), "{entry}");
            ReaderConfig::parse(entry).unwrap_or_else(|e| panic!("{e}"));
        }
        assert!(!pcscd_passes_unquoted("[::1]:35963"), "needs quotes");
    }

    proptest! {
        #[test]
        fn parse_never_panics(s in ".{0,80}") {
            if let Ok(c) = ReaderConfig::parse(&s) {
                prop_assert!((1..=MAX_SLOTS).contains(&c.slots));
                prop_assert!(c.port_of(c.slots - 1).is_some());
            }
        }

        #[test]
        fn any_listen_port_round_trips(port in 1u16..=65534, slots in 1u16..=16) {
            let s = format!("/dev/null:{port:#x}/slots={slots}");
            match ReaderConfig::parse(&s) {
                Ok(c) => prop_assert_eq!((c.port, c.slots), (port, slots)),
                Err(_) => prop_assert!(u32::from(port) + u32::from(slots) > 65536),
            }
        }
    }

    #[test]
    fn the_tls_option() {
        assert!(!ReaderConfig::parse("/dev/null:35963").unwrap().tls);
        for entry in [
            "/dev/null:35963/tls=yes",
            "pc.example:35963/tls=on/timeout=3",
        ] {
            assert!(pcscd_passes_unquoted(entry), "{entry}");
            assert!(ReaderConfig::parse(entry).unwrap().tls, "{entry}");
        }
        assert!(!ReaderConfig::parse("/dev/null:1/tls=no").unwrap().tls);
        let e = ReaderConfig::parse("/dev/null:1/tls=maybe").unwrap_err();
        assert!(e.to_string().contains("tls=maybe"), "{e}");
        let e = ReaderConfig::parse("/dev/null:1/tls=yes/protocol=vscard").unwrap_err();
        assert!(e.to_string().contains("VSCard"), "{e}");
    }

    #[test]
    fn the_keys_option_names_one_sub_directory() {
        assert_eq!(
            ReaderConfig::parse("/dev/null:1/tls=yes").unwrap().tls_keys,
            None
        );
        for (entry, name) in [
            ("/dev/null:35963/tls=yes/keys=alice", "alice"),
            ("pc.example:35963/keys=phone-2_b/tls=yes", "phone-2_b"),
        ] {
            assert!(pcscd_passes_unquoted(entry), "{entry}");
            let c = ReaderConfig::parse(entry).unwrap();
            assert!(c.tls, "{entry}");
            assert_eq!(c.tls_keys.as_deref(), Some(name), "{entry}");
        }
        let longest = "k".repeat(MAX_KEYS_NAME);
        let c = ReaderConfig::parse(&format!("/dev/null:1/tls=yes/keys={longest}")).unwrap();
        assert_eq!(c.tls_keys, Some(longest.clone()));
        for (entry, why) in [
            ("/dev/null:1/keys=alice", "add /tls=yes"),
            ("/dev/null:1/tls=no/keys=alice", "add /tls=yes"),
            ("/dev/null:1/tls=yes/keys=", "expected 1 to 64 characters"),
            ("/dev/null:1/tls=yes/keys=..", "'.' is not a letter"),
            ("/dev/null:1/tls=yes/keys=a.b", "'.' is not a letter"),
            ("/dev/null:1/tls=yes/keys=a@b", "'@' is not a letter"),
            ("/dev/null:1/tls=yes/keys=a\\b", "is not a letter"),
        ] {
            let e = ReaderConfig::parse(entry).unwrap_err().to_string();
            assert!(e.contains(why), "{entry}: {e}");
        }
        let e = ReaderConfig::parse(&format!("/dev/null:1/tls=yes/keys={longest}k"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("expected 1 to 64 characters"), "{e}");
        assert_eq!(check_keys_name("A-z_09"), Ok(()));
        assert!(check_keys_name("é").is_err());
    }

    #[test]
    fn allow_lists_parse_and_match() {
        let c = ReaderConfig::parse(
            "/dev/null:35963/listen=::/allow=127.0.0.1/allow=192.168.1.0_24/allow=fd00::_8",
        )
        .unwrap();
        assert_eq!(c.allow.len(), 3);
        let ok = |a: &str| is_allowed(&c.allow, a.parse().unwrap());
        assert!(ok("127.0.0.1"));
        assert!(!ok("127.0.0.2"));
        assert!(ok("192.168.1.77"));
        assert!(
            ok("::ffff:192.168.1.77"),
            "IPv4 through a dual-stack listener"
        );
        assert!(!ok("192.168.2.1"));
        assert!(ok("fd12:3456::1"));
        assert!(!ok("fe80::1"));
        assert!(!ok("::1"));
        assert!(
            is_allowed(&[], "203.0.113.9".parse().unwrap()),
            "no list: anyone"
        );
        assert_eq!(c.allow[1].to_string(), "192.168.1.0/24");
        assert!(AllowedNet::parse("0.0.0.0_0")
            .unwrap()
            .contains("8.8.8.8".parse().unwrap()));
        assert!(AllowedNet::parse("10.0.0.0_7")
            .unwrap()
            .contains("11.1.2.3".parse().unwrap()));
        assert!(!AllowedNet::parse("10.0.0.0_8")
            .unwrap()
            .contains("11.1.2.3".parse().unwrap()));
        for bad in [
            "",
            "10.0.0.0_33",
            "::_129",
            "host.example",
            "10.0.0.0_",
            "10.0.0.0/8",
        ] {
            assert!(
                ReaderConfig::parse(&format!("/dev/null:35963/allow={bad}")).is_err(),
                "{bad}"
            );
        }
        assert!(ReaderConfig::parse("localhost:35963/allow=127.0.0.1").is_err());
    }

    proptest! {
        #[test]
        fn an_allowed_net_contains_exactly_the_addresses_sharing_its_prefix(
            net in any::<u32>(), peer in any::<u32>(), prefix in 0u8..=32,
        ) {
            let n = AllowedNet::parse(&format!("{}_{prefix}", std::net::Ipv4Addr::from(net))).unwrap();
            let mask = if prefix == 0 { 0 } else { u32::MAX << (32 - u32::from(prefix)) };
            prop_assert_eq!(
                n.contains(IpAddr::V4(peer.into())),
                net & mask == peer & mask
            );
        }
    }
}
