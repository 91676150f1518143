//! The pure parts of the secure link (docs/TLS.md): key fingerprints, the PEM key file,
//! the trust list, the `vpcds://` pairing URI and the one field of an X.509 certificate
//! a pinned key needs (its SubjectPublicKeyInfo). No I/O and no cryptography: hashing
//! and the TLS handshake live in [`crate::link`] (feature `rustls`).
//!
//! ```text
//! key.pem    -----BEGIN PRIVATE KEY----- (PKCS#8)  -----BEGIN CERTIFICATE----- (self-signed)
//! trusted    # comment
//!            3f1c...64 hex digits...9a  alice-phone
//! URI        vpcds://192.168.1.20:35963?fp=3f1c...9a
//!            vpcds://192.168.1.20:35963?fp=3f1c...9a&pair=40123-0f5e...32 hex digits...c1
//! pairing    vicc: "vpcd-pair 1 TOKEN\n"   reader: "OK\n" | "REFUSED reason\n"
//! ```

use std::fmt;

/// The default port of a vpcd reader's slot 0, as in [`crate::config::DEFAULT_PORT`].
use crate::config::DEFAULT_PORT;

/// The most bytes a key or trust file may have: both are a few hundred bytes, and a
/// parser must not be made to hold an arbitrary file.
pub const MAX_FILE_LEN: usize = 256 * 1024;
/// The URI scheme of a secure vpcd slot.
pub const SCHEME: &str = "vpcds";
/// The key file's name in a TLS directory.
pub const KEY_FILE: &str = "key.pem";
/// The trust list's name in a TLS directory.
pub const TRUST_FILE: &str = "trusted";

/// The SHA-256 of a public key's DER SubjectPublicKeyInfo: what a peer is pinned by.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Fingerprint(pub [u8; 32]);

impl Fingerprint {
    /// Reads 64 hex digits, in either case, optionally in pairs separated by ':' and
    /// optionally after `sha256:` (as `openssl` and other tools print them).
    pub fn parse(s: &str) -> Result<Fingerprint, String> {
        let t = s.trim();
        let t = t
            .get(..7)
            .filter(|p| p.eq_ignore_ascii_case("sha256:"))
            .map_or(t, |_| &t[7..]);
        let digits: Vec<u8> = if t.contains(':') {
            let pairs: Vec<&str> = t.split(':').collect();
            if pairs.iter().any(|p| p.len() != 2) {
                return Err(format!("{s:?}: ':' separates pairs of hex digits"));
            }
            pairs.concat().into_bytes()
        } else {
            t.as_bytes().to_vec()
        };
        if digits.len() != 64 {
            return Err(format!(
                "{:?} is no key fingerprint: expected 64 hex digits (SHA-256), got {}",
                s.escape_debug().to_string(),
                digits.len()
            ));
        }
        let mut out = [0u8; 32];
        for (i, pair) in digits.chunks(2).enumerate() {
            let hi = hex_value(pair[0]);
            let lo = hex_value(pair[1]);
            match (hi, lo) {
                (Some(hi), Some(lo)) => out[i] = hi << 4 | lo,
                _ => return Err(format!("{s:?} is no key fingerprint: not hex")),
            }
        }
        Ok(Fingerprint(out))
    }

    /// The first 8 hex digits, for log lines next to a name.
    pub fn short(&self) -> String {
        self.to_string()[..8].to_owned()
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

fn hex_value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------
// PEM and base64

/// One `-----BEGIN LABEL-----` block, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PemBlock {
    pub label: String,
    pub der: Vec<u8>,
}

/// Every PEM block of `text`, in order. Text outside blocks is ignored (as OpenSSL
/// does: comments before a block are common); a block that does not end, a wrong END
/// label or bad base64 is an error naming the line.
pub fn pem_blocks(text: &str) -> Result<Vec<PemBlock>, String> {
    if text.len() > MAX_FILE_LEN {
        return Err(format!("longer than {MAX_FILE_LEN} bytes"));
    }
    let mut blocks = vec![];
    let mut open: Option<(String, usize, String)> = None;
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        let n = n + 1;
        match &mut open {
            None => {
                if let Some(label) = pem_marker(line, "BEGIN") {
                    open = Some((label.to_owned(), n, String::new()));
                } else if pem_marker(line, "END").is_some() {
                    return Err(format!("line {n}: END without BEGIN"));
                }
            }
            Some((label, _, body)) => {
                if let Some(end) = pem_marker(line, "END") {
                    if end != label {
                        return Err(format!("line {n}: END {end} closes BEGIN {label}"));
                    }
                    let der = base64_decode(body)
                        .map_err(|e| format!("line {n}: the {label} block: {e}"))?;
                    blocks.push(PemBlock {
                        label: std::mem::take(label),
                        der,
                    });
                    open = None;
                } else if pem_marker(line, "BEGIN").is_some() {
                    return Err(format!("line {n}: BEGIN inside the {label} block"));
                } else if line.contains(':') {
                    return Err(format!(
                        "line {n}: encrypted or annotated PEM is not supported"
                    ));
                } else {
                    body.push_str(line);
                }
            }
        }
    }
    match open {
        Some((label, n, _)) => Err(format!("line {n}: the {label} block never ends")),
        None => Ok(blocks),
    }
}

fn pem_marker<'a>(line: &'a str, kind: &str) -> Option<&'a str> {
    line.strip_prefix("-----")?
        .strip_suffix("-----")?
        .strip_prefix(kind)?
        .strip_prefix(' ')
        .filter(|label| !label.is_empty())
}

/// One PEM block, 64 base64 characters a line.
pub fn pem_encode(label: &str, der: &[u8]) -> String {
    let b64 = base64_encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

pub fn base64_encode(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let v = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(B64[(v >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Standard base64 with padding; whitespace is skipped.
pub fn base64_decode(text: &str) -> Result<Vec<u8>, String> {
    let chars: Vec<u8> = text.bytes().filter(|c| !c.is_ascii_whitespace()).collect();
    if chars.len() % 4 != 0 {
        return Err("base64 of a length that is no multiple of 4".into());
    }
    let mut out = Vec::with_capacity(chars.len() / 4 * 3);
    let quads = chars.len() / 4;
    for (q, quad) in chars.chunks(4).enumerate() {
        let last = q + 1 == quads;
        let pad = quad.iter().rev().take_while(|c| **c == b'=').count();
        if pad > 2 || (pad > 0 && !last) {
            return Err("misplaced '=' in base64".into());
        }
        let mut v = 0u32;
        for &c in &quad[..4 - pad] {
            let d = B64
                .iter()
                .position(|b| *b == c)
                .ok_or_else(|| format!("{:?} is not base64", c as char))?;
            v = v << 6 | d as u32;
        }
        v <<= 6 * pad as u32;
        let bytes = [(v >> 16) as u8, (v >> 8) as u8, v as u8];
        out.extend_from_slice(&bytes[..3 - pad]);
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------
// The key file

/// A key file: a PKCS#8 private key and the self-signed certificate that carries its
/// public key (the certificate is only an envelope: its names and dates are ignored).
#[derive(Clone, PartialEq, Eq)]
pub struct KeyFile {
    pub key_pkcs8: Vec<u8>,
    pub cert: Vec<u8>,
}

impl fmt::Debug for KeyFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyFile")
            .field(
                "key_pkcs8",
                &format_args!("<{} bytes>", self.key_pkcs8.len()),
            )
            .field("cert", &format_args!("<{} bytes>", self.cert.len()))
            .finish()
    }
}

impl KeyFile {
    /// Exactly one `PRIVATE KEY` and one `CERTIFICATE` block, in any order.
    pub fn parse(text: &str) -> Result<KeyFile, String> {
        let mut key = None;
        let mut cert = None;
        for block in pem_blocks(text)? {
            let slot = match block.label.as_str() {
                "PRIVATE KEY" => &mut key,
                "CERTIFICATE" => &mut cert,
                "EC PRIVATE KEY" | "RSA PRIVATE KEY" | "ENCRYPTED PRIVATE KEY" => {
                    return Err(format!(
                        "a {} block: expected an unencrypted PKCS#8 PRIVATE KEY \
                         (vpcd-config tls init writes one)",
                        block.label
                    ))
                }
                other => return Err(format!("an unexpected {other} block")),
            };
            if slot.replace(block.der).is_some() {
                return Err(format!("more than one {} block", block.label));
            }
        }
        let key_pkcs8 = key.ok_or("no PRIVATE KEY block")?;
        let cert = cert.ok_or("no CERTIFICATE block")?;
        spki_of(&cert).map_err(|e| format!("the CERTIFICATE: {e}"))?;
        Ok(KeyFile { key_pkcs8, cert })
    }

    /// The file's text: the key, then the certificate.
    pub fn to_pem(&self) -> String {
        pem_encode("PRIVATE KEY", &self.key_pkcs8) + &pem_encode("CERTIFICATE", &self.cert)
    }
}

// ---------------------------------------------------------------------------------
// The trust list

/// One trusted peer key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustEntry {
    pub fingerprint: Fingerprint,
    /// A name for log lines (may be empty).
    pub name: String,
}

/// The peers a side trusts: one `FINGERPRINT [NAME]` a line, `#` comments.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustList {
    pub entries: Vec<TrustEntry>,
}

/// The most peers a trust list may name: far more than anyone pairs, and a bound for
/// a hostile file.
pub const MAX_TRUSTED: usize = 4096;

impl TrustList {
    pub fn parse(text: &str) -> Result<TrustList, String> {
        if text.len() > MAX_FILE_LEN {
            return Err(format!("longer than {MAX_FILE_LEN} bytes"));
        }
        let mut list = TrustList::default();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (fp, name) = line
                .split_once(char::is_whitespace)
                .map_or((line, ""), |(f, n)| (f, n.trim()));
            let fingerprint = Fingerprint::parse(fp).map_err(|e| format!("line {}: {e}", n + 1))?;
            check_name(name).map_err(|e| format!("line {}: {e}", n + 1))?;
            if list.entries.len() >= MAX_TRUSTED {
                return Err(format!("more than {MAX_TRUSTED} trusted keys"));
            }
            if !list.contains(&fingerprint) {
                list.entries.push(TrustEntry {
                    fingerprint,
                    name: name.to_owned(),
                });
            }
        }
        Ok(list)
    }

    pub fn contains(&self, fp: &Fingerprint) -> bool {
        self.get(fp).is_some()
    }

    pub fn get(&self, fp: &Fingerprint) -> Option<&TrustEntry> {
        self.entries.iter().find(|e| e.fingerprint == *fp)
    }

    /// The file's text.
    pub fn to_text(&self) -> String {
        let mut out = String::from(
            "# Peers this side of the vpcd link trusts: SHA-256 of the public key (hex), name.\n\
             # Managed by vpcd-config tls trust / untrust; see docs/TLS.md.\n",
        );
        for e in &self.entries {
            out.push_str(&entry_line(e));
        }
        out
    }
}

/// A trust list line.
pub fn entry_line(e: &TrustEntry) -> String {
    if e.name.is_empty() {
        format!("{}\n", e.fingerprint)
    } else {
        format!("{} {}\n", e.fingerprint, e.name)
    }
}

/// A peer's name: printable, one line, at most 64 characters.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.chars().count() > 64 {
        return Err("a name has at most 64 characters".into());
    }
    if name.chars().any(char::is_control) {
        return Err("a name has no control characters".into());
    }
    Ok(())
}

// ---------------------------------------------------------------------------------
// The pairing URI

/// `vpcds://HOST:PORT?fp=FINGERPRINT`: where a secure slot listens and the key it
/// proves itself with. What the host shows (text and QR code) for a vicc to pin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VpcdsUri {
    /// A host name, an IPv4 address or an IPv6 address (without brackets).
    pub host: String,
    pub port: u16,
    pub fingerprint: Fingerprint,
    /// A one-time pairing offer (`vpcd-config tls pair`), if the URI carries one.
    pub pair: Option<Pairing>,
}

impl VpcdsUri {
    /// Parses the URI. Unknown query parameters are ignored (a later version may add
    /// some); `fp` must be there exactly once. The port defaults to 35963.
    pub fn parse(s: &str) -> Result<VpcdsUri, String> {
        let bad = |why: &str| format!("{:?}: {why}", s.escape_debug().to_string());
        if s.len() > 2048 {
            return Err(bad("too long for a vpcds URI"));
        }
        let rest = s
            .trim()
            .split_once("://")
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case(SCHEME))
            .map(|(_, rest)| rest)
            .ok_or_else(|| bad("expected vpcds://HOST:PORT?fp=FINGERPRINT"))?;
        let (authority, query) = rest.split_once('?').unwrap_or((rest, ""));
        let authority = authority.strip_suffix('/').unwrap_or(authority);
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (host, after) = v6
                .split_once(']')
                .ok_or_else(|| bad("an IPv6 address without its ']'"))?;
            let port = match after {
                "" => None,
                p => Some(
                    p.strip_prefix(':')
                        .ok_or_else(|| bad("expected ':' after ']'"))?,
                ),
            };
            if host.parse::<std::net::Ipv6Addr>().is_err() {
                return Err(bad("not an IPv6 address in []"));
            }
            (host, port)
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            }
        };
        if host.is_empty()
            || !host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-._:".contains(c))
        {
            return Err(bad("no valid host"));
        }
        if host.contains(':') && !authority.starts_with('[') {
            return Err(bad("an IPv6 host goes in []"));
        }
        let port = match port {
            None => DEFAULT_PORT,
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| bad("the port is no number from 1 to 65535"))?,
        };
        let mut fingerprint = None;
        let mut pairing = None;
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            if key == "fp" {
                if fingerprint.is_some() {
                    return Err(bad("fp given twice"));
                }
                fingerprint = Some(Fingerprint::parse(value).map_err(|e| bad(&e))?);
            } else if key == "pair" {
                if pairing.is_some() {
                    return Err(bad("pair given twice"));
                }
                pairing = Some(Pairing::parse(value).map_err(|e| bad(&e))?);
            }
        }
        Ok(VpcdsUri {
            host: host.to_owned(),
            port,
            fingerprint: fingerprint.ok_or_else(|| bad("no fp= (the host key's fingerprint)"))?,
            pair: pairing,
        })
    }
}

impl fmt::Display for VpcdsUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "{SCHEME}://[{}]:{}", self.host, self.port)?;
        } else {
            write!(f, "{SCHEME}://{}:{}", self.host, self.port)?;
        }
        write!(f, "?fp={}", self.fingerprint)?;
        match &self.pair {
            Some(p) => write!(f, "&pair={p}"),
            None => Ok(()),
        }
    }
}

// ---------------------------------------------------------------------------------
// One-step pairing (docs/TLS.md, "Pairing in one step")

/// The bytes of a pairing token: 128 bits from the OS's random generator.
pub const TOKEN_LEN: usize = 16;
/// The longest line either side of a pairing exchange sends, newline included: a
/// reader reads no more than this from a peer.
pub const MAX_PAIR_LINE: usize = 256;
/// What a vicc's pairing request starts with; the number is the exchange's version.
pub const PAIR_REQUEST: &str = "vpcd-pair 1 ";

/// A one-time pairing token. Compared in constant time, so that a peer guessing it
/// learns nothing from how fast a wrong guess is refused.
#[derive(Clone, PartialEq, Eq)]
pub struct PairToken(pub [u8; TOKEN_LEN]);

impl PairToken {
    /// Exactly 32 hex digits, in either case.
    pub fn parse(s: &str) -> Result<PairToken, String> {
        let digits = s.as_bytes();
        if digits.len() != 2 * TOKEN_LEN {
            return Err(format!(
                "a pairing token has {} hex digits, not {}",
                2 * TOKEN_LEN,
                digits.len()
            ));
        }
        let mut out = [0u8; TOKEN_LEN];
        for (i, pair) in digits.chunks(2).enumerate() {
            match (hex_value(pair[0]), hex_value(pair[1])) {
                (Some(hi), Some(lo)) => out[i] = hi << 4 | lo,
                _ => return Err("a pairing token is hex digits only".into()),
            }
        }
        Ok(PairToken(out))
    }

    /// Equal tokens, in time independent of where they differ.
    pub fn matches(&self, other: &PairToken) -> bool {
        let diff = self
            .0
            .iter()
            .zip(other.0.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        std::hint::black_box(diff) == 0
    }
}

impl fmt::Display for PairToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for PairToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // A secret until used: never in a debug print or a log line.
        f.write_str("PairToken(..)")
    }
}

/// A URI's `pair=PORT-TOKEN`: where `vpcd-config tls pair` listens (on the URI's
/// host) and the token it accepts once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pairing {
    pub port: u16,
    pub token: PairToken,
}

impl Pairing {
    pub fn parse(s: &str) -> Result<Pairing, String> {
        let (port, token) = s
            .split_once('-')
            .ok_or("pair= is PORT-TOKEN (vpcd-config tls pair prints it)")?;
        let port = port
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0 && port.bytes().all(|b| b.is_ascii_digit()))
            .ok_or("pair=: the pairing port is no number from 1 to 65535")?;
        let token = PairToken::parse(token).map_err(|e| format!("pair=: {e}"))?;
        Ok(Pairing { port, token })
    }
}

impl fmt::Display for Pairing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.port, self.token)
    }
}

/// The vicc's one line, sent inside TLS once the handshake is done.
pub fn pair_request(token: &PairToken) -> String {
    format!("{PAIR_REQUEST}{token}\n")
}

/// The token of a vicc's line (without its newline).
pub fn parse_pair_request(line: &str) -> Result<PairToken, String> {
    let token = line.strip_prefix(PAIR_REQUEST).ok_or_else(|| {
        format!(
            "expected \"{}TOKEN\", got {:?}",
            PAIR_REQUEST,
            line.chars().take(40).collect::<String>()
        )
    })?;
    PairToken::parse(token)
}

/// The reader's answer: `OK`, or `REFUSED` and a reason for the vicc's user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PairAnswer {
    Ok,
    Refused(String),
}

impl PairAnswer {
    /// The line, newline included; a reason is one line, cut to fit.
    pub fn to_line(&self) -> String {
        match self {
            PairAnswer::Ok => "OK\n".into(),
            PairAnswer::Refused(why) => {
                let mut line = String::from("REFUSED ");
                for c in why.chars().map(|c| if c.is_control() { ' ' } else { c }) {
                    if line.len() + c.len_utf8() >= MAX_PAIR_LINE {
                        break;
                    }
                    line.push(c);
                }
                line.push('\n');
                line
            }
        }
    }

    /// A line (without its newline).
    pub fn parse(line: &str) -> Result<PairAnswer, String> {
        if line == "OK" {
            return Ok(PairAnswer::Ok);
        }
        match line.strip_prefix("REFUSED") {
            Some(why) if why.is_empty() || why.starts_with(' ') => {
                Ok(PairAnswer::Refused(why.trim().to_owned()))
            }
            _ => Err(format!(
                "not a pairing answer: {:?}",
                line.chars().take(40).collect::<String>()
            )),
        }
    }
}

// ---------------------------------------------------------------------------------
// DER: the certificate's public key

/// One DER element: its tag, its contents, and the whole element.
struct Der<'a> {
    tag: u8,
    contents: &'a [u8],
    whole: &'a [u8],
}

/// Reads the DER element at the start of `input`; returns it and what follows.
fn der_next(input: &[u8]) -> Result<(Der<'_>, &[u8]), String> {
    let (&tag, rest) = input.split_first().ok_or("truncated DER")?;
    if tag & 0x1F == 0x1F {
        return Err("a multi-byte DER tag".into());
    }
    let (&first, mut rest) = rest.split_first().ok_or("truncated DER")?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let n = usize::from(first & 0x7F);
        if n == 0 || n > 4 || rest.len() < n {
            return Err("a bad DER length".into());
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, b| acc << 8 | usize::from(*b));
        rest = &rest[n..];
        len
    };
    if rest.len() < len {
        return Err("DER longer than its input".into());
    }
    let header = input.len() - rest.len();
    Ok((
        Der {
            tag,
            contents: &rest[..len],
            whole: &input[..header + len],
        },
        &rest[len..],
    ))
}

fn der_expect<'a>(input: &'a [u8], tag: u8, what: &str) -> Result<(Der<'a>, &'a [u8]), String> {
    let (el, rest) = der_next(input)?;
    if el.tag != tag {
        return Err(format!("expected {what}, found tag {:#04x}", el.tag));
    }
    Ok((el, rest))
}

/// The DER SubjectPublicKeyInfo of an X.509 certificate: what a fingerprint hashes.
pub fn spki_of(cert: &[u8]) -> Result<&[u8], String> {
    const SEQ: u8 = 0x30;
    let (cert_el, _) = der_expect(cert, SEQ, "a certificate")?;
    let (tbs, _) = der_expect(cert_el.contents, SEQ, "the certificate body")?;
    let mut rest = tbs.contents;
    let (first, after) = der_next(rest)?;
    if first.tag == 0xA0 {
        rest = after;
    }
    let (_, rest) = der_expect(rest, 0x02, "the serial number")?;
    let (_, rest) = der_expect(rest, SEQ, "the signature algorithm")?;
    let (_, rest) = der_expect(rest, SEQ, "the issuer")?;
    let (_, rest) = der_expect(rest, SEQ, "the validity")?;
    let (_, rest) = der_expect(rest, SEQ, "the subject")?;
    let (spki, _) = der_expect(rest, SEQ, "the public key")?;
    Ok(spki.whole)
}

/// Everything the fuzz target feeds: no input may panic or allocate without bound.
pub fn parse_any(text: &str) {
    let _ = Fingerprint::parse(text);
    let _ = VpcdsUri::parse(text);
    let _ = Pairing::parse(text);
    let _ = parse_pair_request(text);
    let _ = PairAnswer::parse(text);
    let _ = TrustList::parse(text);
    let _ = KeyFile::parse(text);
    let _ = spki_of(text.as_bytes());
}

/// Test material: real certificates and keys made with `openssl req -x509` (ECDSA
/// P-256), in testdata/.
#[cfg(test)]
pub(crate) mod tests_support {
    /// The certificate of testdata/reader-key.pem.
    pub(crate) const CERT_B64: &str = "MIIBdjCCARugAwIBAgIUVvNosGgE+I+HTWdczG3wOZse4pAwCgYIKoZIzj0EAwIwDzENMAsGA1UEAwwEdnBjZDAgFw0yNjEyMDcwMDM5NDdaGA8yMTI2MTExMzAwMzk0N1owDzENMAsGA1UEAwwEdnBjZDBZMBMGByqGSM49AgEGCCqGSM49AwEHA0IABJ9KX3m7DYuONx7DRlQWLxUeTMHnxPXzdAFNr92ps60hgjJQTgoWCX7iI+nXRYWUGC/zsgM7uPlLRGv9LmEuqpijUzBRMB0GA1UdDgQWBBQf9wHmYRszqRnKL3Mok3Gc50mq1DAfBgNVHSMEGDAWgBQf9wHmYRszqRnKL3Mok3Gc50mq1DAPBgNVHRMBAf8EBTADAQH/MAoGCCqGSM49BAMCA0kAMEYCIQD5upbGDX7CLpZXHvIpHL9nsy+duQyuRE3tCNtX+/+rfAIhAI4wTiQBSlyTvcS1BUu1I45HZndRoBF27xEO9cE4xg9I";
    pub(crate) const READER_KEY: &str = include_str!("../testdata/reader-key.pem");
    pub(crate) const VICC_KEY: &str = include_str!("../testdata/vicc-key.pem");
}

#[cfg(test)]
mod tests {
    use super::tests_support::*;
    use super::*;
    use proptest::prelude::*;

    const FP: &str = "3f1c0000000000000000000000000000000000000000000000000000000000a9";

    #[test]
    fn fingerprints_in_every_spelling() {
        let fp = Fingerprint::parse(FP).unwrap();
        assert_eq!(fp.to_string(), FP);
        assert_eq!(Fingerprint::parse(&FP.to_uppercase()).unwrap(), fp);
        assert_eq!(Fingerprint::parse(&format!("SHA256:{FP}")).unwrap(), fp);
        let colons: Vec<String> = FP
            .as_bytes()
            .chunks(2)
            .map(|p| String::from_utf8(p.to_vec()).unwrap())
            .collect();
        assert_eq!(Fingerprint::parse(&colons.join(":")).unwrap(), fp);
        assert_eq!(fp.short(), "3f1c0000");
        for bad in ["", "3f", &FP[1..], &format!("{FP}0"), &FP.replace('a', "g")] {
            assert!(Fingerprint::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn base64_known_answers() {
        for (plain, b64) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64_encode(plain.as_bytes()), b64);
            assert_eq!(base64_decode(b64).unwrap(), plain.as_bytes());
        }
        for bad in ["Zg=", "Z===", "Zg==Zg==", "Zm9*"] {
            assert!(base64_decode(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_spki_of_a_certificate() {
        let cert = base64_decode(CERT_B64).unwrap();
        let spki = spki_of(&cert).unwrap();
        assert_eq!(spki.len(), 91, "P-256 SPKI");
        assert_eq!(&spki[..4], &[0x30, 0x59, 0x30, 0x13]);
        assert!(spki_of(&cert[..cert.len() / 2]).is_err());
        assert!(spki_of(&[]).is_err());
        assert!(spki_of(spki).is_err(), "an SPKI is no certificate");
        for pem in [READER_KEY, VICC_KEY] {
            let k = KeyFile::parse(pem).unwrap();
            assert_eq!(KeyFile::parse(&k.to_pem()).unwrap(), k);
        }
    }

    #[test]
    fn key_files() {
        let cert = base64_decode(CERT_B64).unwrap();
        let k = KeyFile {
            key_pkcs8: vec![0x30, 0x03, 0x02, 0x01, 0x00],
            cert,
        };
        let text = k.to_pem();
        assert_eq!(KeyFile::parse(&text).unwrap(), k);
        let commented = format!("# made by hand\n{text}");
        assert_eq!(KeyFile::parse(&commented).unwrap(), k);
        let only_key = pem_encode("PRIVATE KEY", &k.key_pkcs8);
        assert!(KeyFile::parse(&only_key)
            .unwrap_err()
            .contains("no CERTIFICATE"));
        assert!(KeyFile::parse("").unwrap_err().contains("no PRIVATE KEY"));
        let twice = format!("{text}{only_key}");
        assert!(KeyFile::parse(&twice)
            .unwrap_err()
            .contains("more than one"));
        let ec = pem_encode("EC PRIVATE KEY", &[1, 2, 3]);
        assert!(KeyFile::parse(&ec).unwrap_err().contains("PKCS#8"));
        let cut = &text[..text.len() - 30];
        assert!(KeyFile::parse(cut).unwrap_err().contains("never ends"));
        let bad_cert = pem_encode("PRIVATE KEY", &[1]) + &pem_encode("CERTIFICATE", &[0x30, 0]);
        assert!(KeyFile::parse(&bad_cert)
            .unwrap_err()
            .contains("CERTIFICATE"));
        assert!(format!("{k:?}").contains("bytes"), "no key bytes in Debug");
    }

    #[test]
    fn trust_lists() {
        let other = FP.replace("3f1c", "0000");
        let text = format!("# peers\n\n{FP} alice phone\n{other}\n  {FP} again\n");
        let list = TrustList::parse(&text).unwrap();
        assert_eq!(list.entries.len(), 2);
        assert_eq!(list.entries[0].name, "alice phone");
        assert_eq!(list.entries[1].name, "");
        assert!(list.contains(&Fingerprint::parse(&other).unwrap()));
        assert_eq!(TrustList::parse(&list.to_text()).unwrap(), list);
        let e = TrustList::parse(&format!("{FP}\nnot-a-key\n")).unwrap_err();
        assert!(e.starts_with("line 2:"), "{e}");
        assert!(TrustList::parse(&format!("{FP} a\u{7}b")).is_err());
        assert_eq!(TrustList::parse("").unwrap().entries.len(), 0);
    }

    #[test]
    fn uris() {
        let u = VpcdsUri::parse(&format!("vpcds://192.168.1.20:35964?fp={FP}")).unwrap();
        assert_eq!((u.host.as_str(), u.port), ("192.168.1.20", 35964));
        assert_eq!(u.fingerprint.to_string(), FP);
        assert_eq!(VpcdsUri::parse(&u.to_string()).unwrap(), u);
        let v6 = VpcdsUri::parse(&format!("VPCDS://[fd00::1]?fp={FP}&name=x")).unwrap();
        assert_eq!((v6.host.as_str(), v6.port), ("fd00::1", DEFAULT_PORT));
        assert_eq!(VpcdsUri::parse(&v6.to_string()).unwrap(), v6);
        let named = VpcdsUri::parse(&format!("vpcds://pc.example/?fp={FP}")).unwrap();
        assert_eq!(named.host, "pc.example");
        for bad in [
            format!("vpcd://h:1?fp={FP}"),
            "vpcds://h:1".into(),
            format!("vpcds://h:0?fp={FP}"),
            format!("vpcds://h:x?fp={FP}"),
            format!("vpcds://:1?fp={FP}"),
            format!("vpcds://fd00::1:1?fp={FP}"),
            format!("vpcds://[fd00::1:1?fp={FP}"),
            format!("vpcds://h:1?fp={FP}&fp={FP}"),
            "vpcds://h:1?fp=00".into(),
            format!("vpcds://h%20x:1?fp={FP}"),
        ] {
            assert!(VpcdsUri::parse(&bad).is_err(), "{bad}");
        }
    }

    const TOKEN: &str = "0f5e00000000000000000000000000c1";

    #[test]
    fn uris_with_a_pairing_offer() {
        let u = VpcdsUri::parse(&format!("vpcds://pc:35963?fp={FP}&pair=40123-{TOKEN}")).unwrap();
        let pair = u.pair.clone().unwrap();
        assert_eq!(pair.port, 40123);
        assert_eq!(pair.token.to_string(), TOKEN);
        assert_eq!(VpcdsUri::parse(&u.to_string()).unwrap(), u);
        assert!(u.to_string().ends_with(&format!("&pair=40123-{TOKEN}")));
        // Either order, either case; other parameters still ignored.
        let upper = format!(
            "vpcds://pc?x=1&pair=40123-{}&fp={FP}&y",
            TOKEN.to_uppercase()
        );
        assert_eq!(VpcdsUri::parse(&upper).unwrap().pair, Some(pair));
        assert_eq!(
            VpcdsUri::parse(&format!("vpcds://pc?fp={FP}"))
                .unwrap()
                .pair,
            None
        );
        for (bad, why) in [
            ("pair=", "PORT-TOKEN"),
            (&format!("pair={TOKEN}") as &str, "PORT-TOKEN"),
            (&format!("pair=0-{TOKEN}"), "pairing port"),
            (&format!("pair=65536-{TOKEN}"), "pairing port"),
            (&format!("pair=+1-{TOKEN}"), "pairing port"),
            (&format!("pair=x-{TOKEN}"), "pairing port"),
            ("pair=1-0f5e", "32 hex digits"),
            (&format!("pair=1-{TOKEN}00"), "32 hex digits"),
            (
                &format!("pair=1-{}", TOKEN.replace('f', "g")),
                "hex digits only",
            ),
            (
                &format!("pair=1-{TOKEN}&pair=2-{TOKEN}"),
                "pair given twice",
            ),
        ] {
            let e = VpcdsUri::parse(&format!("vpcds://pc?fp={FP}&{bad}")).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn the_pairing_exchange() {
        let token = PairToken::parse(TOKEN).unwrap();
        let line = pair_request(&token);
        assert_eq!(line, format!("vpcd-pair 1 {TOKEN}\n"));
        assert!(parse_pair_request(line.trim_end()).unwrap().matches(&token));
        for bad in ["", "vpcd-pair 1 ", "vpcd-pair 2 0f5e", "GET / HTTP/1.1"] {
            assert!(parse_pair_request(bad).is_err(), "{bad}");
        }
        assert!(parse_pair_request(&format!("vpcd-pair 2 {TOKEN}"))
            .unwrap_err()
            .starts_with("expected \"vpcd-pair 1 TOKEN\""));
        let other = PairToken::parse(&TOKEN.replace("c1", "c0")).unwrap();
        assert!(!token.matches(&other));
        assert_eq!(format!("{token:?}"), "PairToken(..)", "no secret in Debug");
        assert_eq!(PairAnswer::Ok.to_line(), "OK\n");
        assert_eq!(PairAnswer::parse("OK"), Ok(PairAnswer::Ok));
        let no = PairAnswer::Refused("wrong token\nOK".into());
        assert_eq!(no.to_line(), "REFUSED wrong token OK\n");
        assert_eq!(
            PairAnswer::parse("REFUSED wrong token"),
            Ok(PairAnswer::Refused("wrong token".into()))
        );
        assert_eq!(
            PairAnswer::parse("REFUSED"),
            Ok(PairAnswer::Refused("".into()))
        );
        for bad in ["", "ok", "OK ", "REFUSEDx", "HTTP/1.1 200 OK"] {
            assert!(PairAnswer::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn fingerprint_debug_shows_the_hex() {
        let fp = Fingerprint::parse(FP).unwrap();
        assert_eq!(format!("{fp:?}"), format!("Fingerprint({FP})"));
    }

    /// Every byte value at every position of inputs of 0..=6 bytes, against a
    /// reference encoder written the slow way (bit by bit).
    #[test]
    fn base64_exhaustive_round_trips() {
        fn reference(data: &[u8]) -> String {
            let bits: Vec<u8> = data
                .iter()
                .flat_map(|b| (0..8).rev().map(move |i| b >> i & 1))
                .collect();
            let mut out: String = bits
                .chunks(6)
                .map(|c| {
                    let v = (0..6).fold(0usize, |acc, i| {
                        acc * 2 + usize::from(*c.get(i).unwrap_or(&0))
                    });
                    B64[v] as char
                })
                .collect();
            while out.len() % 4 != 0 {
                out.push('=');
            }
            out
        }
        for len in 0..=6usize {
            for pos in 0..len.max(1) {
                for v in 0..=255u8 {
                    let mut data: Vec<u8> = (0..len)
                        .map(|i| (i as u8).wrapping_mul(0x5B) ^ 0xA5)
                        .collect();
                    if len > 0 {
                        data[pos] = v;
                    }
                    let b64 = base64_encode(&data);
                    assert_eq!(b64, reference(&data), "{data:02x?}");
                    assert_eq!(base64_decode(&b64).unwrap(), data, "{b64}");
                }
            }
        }
        assert_eq!(base64_encode(&[0xFF; 3]), "////");
        assert_eq!(base64_decode("////").unwrap(), [0xFF; 3]);
        assert_eq!(base64_encode(&[0xFB, 0xEF, 0xBE]), "++++");
        assert_eq!(base64_decode("AAAA").unwrap(), [0; 3]);
        assert_eq!(base64_decode("/w==").unwrap(), [0xFF]);
        assert_eq!(base64_decode("//8=").unwrap(), [0xFF, 0xFF]);
    }

    #[test]
    fn pem_errors_name_their_line() {
        let e = pem_blocks("-----END X-----\n").unwrap_err();
        assert_eq!(e, "line 1: END without BEGIN");
        let e = pem_blocks("# c\n-----BEGIN A-----\n-----END B-----\n").unwrap_err();
        assert_eq!(e, "line 3: END B closes BEGIN A");
        let e = pem_blocks("-----BEGIN A-----\n").unwrap_err();
        assert_eq!(e, "line 1: the A block never ends");
        let e = pem_blocks("-----BEGIN A-----\n-----BEGIN B-----\n").unwrap_err();
        assert_eq!(e, "line 2: BEGIN inside the A block");
        let e = pem_blocks("-----BEGIN A-----\nProc-Type: 4\n").unwrap_err();
        assert!(e.starts_with("line 2: encrypted"), "{e}");
        let e = pem_blocks("-----BEGIN A-----\nZg=\n-----END A-----").unwrap_err();
        assert!(e.starts_with("line 3: the A block: "), "{e}");
        // Markers need the dashes, the kind, a space and a label.
        let blocks = pem_blocks("-----BEGIN -----\n----BEGIN A-----\n-----BEGINA-----\n").unwrap();
        assert!(blocks.is_empty());
    }

    /// Text of exactly `len` bytes: comment lines (ignored by every parser here).
    fn comments(len: usize) -> String {
        let mut s = "#".repeat(99) + "\n";
        s = s.repeat(len / 100);
        s.push_str(&"#".repeat(len % 100));
        assert_eq!(s.len(), len);
        s
    }

    #[test]
    fn files_up_to_the_size_limit() {
        assert_eq!(MAX_FILE_LEN, 262_144);
        let key = base64_decode(CERT_B64).unwrap();
        let block = pem_encode("CERTIFICATE", &key);
        let at_limit = comments(MAX_FILE_LEN - block.len()) + "\n" + &block;
        let at_limit = &at_limit[1..];
        assert_eq!(at_limit.len(), MAX_FILE_LEN);
        assert_eq!(pem_blocks(at_limit).unwrap()[0].der, key);
        for over in [MAX_FILE_LEN + 1, MAX_FILE_LEN + 2] {
            let e = pem_blocks(&comments(over)).unwrap_err();
            assert_eq!(e, format!("longer than {MAX_FILE_LEN} bytes"));
            let e = TrustList::parse(&comments(over)).unwrap_err();
            assert_eq!(e, format!("longer than {MAX_FILE_LEN} bytes"));
        }
        let line = format!("{FP} bob\n");
        let at_limit = comments(MAX_FILE_LEN - line.len() - 1) + "\n" + &line;
        assert_eq!(at_limit.len(), MAX_FILE_LEN);
        assert_eq!(TrustList::parse(&at_limit).unwrap().entries[0].name, "bob");
    }

    #[test]
    fn trust_list_limits() {
        let key = |i: usize| {
            Fingerprint({
                let mut b = [0u8; 32];
                b[..8].copy_from_slice(&(i as u64).to_be_bytes());
                b
            })
        };
        // The shortest line is 64 hex digits and a newline: the file limit binds
        // before MAX_TRUSTED can (it is a second bound, should the first grow).
        let fits = MAX_FILE_LEN / 65;
        assert!(fits < MAX_TRUSTED);
        let mut text: String = (0..fits).map(|i| format!("{}\n", key(i))).collect();
        let list = TrustList::parse(&text).unwrap();
        assert_eq!(list.entries.len(), fits);
        assert_eq!(list.entries[fits - 1].fingerprint, key(fits - 1));
        text.push_str(&format!("{}\n", key(0)));
        let e = TrustList::parse(&text).unwrap_err();
        assert_eq!(e, format!("longer than {MAX_FILE_LEN} bytes"));
        let e = TrustList::parse(&format!("{FP} {}", "n".repeat(65))).unwrap_err();
        assert_eq!(e, "line 1: a name has at most 64 characters");
    }

    #[test]
    fn names_of_at_most_64_characters() {
        assert_eq!(check_name(""), Ok(()));
        assert_eq!(check_name(&"é".repeat(64)), Ok(()), "characters, not bytes");
        assert_eq!(check_name(&"x".repeat(64)), Ok(()));
        for long in ["x".repeat(65), "x".repeat(66)] {
            assert_eq!(
                check_name(&long),
                Err("a name has at most 64 characters".into())
            );
        }
        assert_eq!(
            check_name("a\tb"),
            Err("a name has no control characters".into())
        );
    }

    #[test]
    fn uris_up_to_2048_bytes() {
        let base = format!("vpcds://h:1?fp={FP}&x=");
        let at_limit = format!("{base}{}", "y".repeat(2048 - base.len()));
        assert_eq!(at_limit.len(), 2048);
        assert_eq!(VpcdsUri::parse(&at_limit).unwrap().host, "h");
        for over in [2049, 2050] {
            let s = format!("{base}{}", "y".repeat(over - base.len()));
            let e = VpcdsUri::parse(&s).unwrap_err();
            assert!(e.ends_with(": too long for a vpcds URI"), "{e}");
        }
    }

    /// A DER element: tag 0x04, the length bytes as given, then `body` bytes.
    fn der(len_bytes: &[u8], body: usize) -> Vec<u8> {
        let mut v = vec![0x04];
        v.extend_from_slice(len_bytes);
        v.extend((0..body).map(|i| i as u8));
        v
    }

    #[test]
    fn der_length_encodings() {
        let ok = |input: &[u8], header: usize, len: usize| {
            let (el, rest) = der_next(input).unwrap();
            assert_eq!(el.tag, 0x04);
            assert_eq!(el.contents, &input[header..header + len], "{input:02x?}");
            assert_eq!(el.whole, &input[..header + len]);
            assert_eq!(rest, &input[header + len..]);
        };
        // Short form, up to 127.
        ok(&der(&[0], 0), 2, 0);
        ok(&der(&[0], 3), 2, 0);
        ok(&der(&[5], 6), 2, 5);
        ok(&der(&[127], 127), 2, 127);
        // Long form: 0x81, 0x82, up to 4 length bytes, leading zeros allowed.
        ok(&der(&[0x81, 128], 128), 3, 128);
        ok(&der(&[0x81, 255], 256), 3, 255);
        ok(&der(&[0x82, 1, 0], 256), 4, 256);
        ok(&der(&[0x82, 0, 0], 0), 4, 0);
        ok(&der(&[0x82, 0x01, 0x02], 258), 4, 258);
        ok(&der(&[0x83, 0, 1, 0], 256), 5, 256);
        ok(&der(&[0x84, 0, 0, 0, 3], 3), 6, 3);
        let err = |input: &[u8], what: &str| {
            let e = der_next(input).err().unwrap();
            assert_eq!(e, what, "{input:02x?}");
        };
        err(&[], "truncated DER");
        err(&[0x04], "truncated DER");
        err(&der(&[127], 126), "DER longer than its input");
        err(&der(&[0x81, 128], 127), "DER longer than its input");
        err(&der(&[0x82, 1, 0], 255), "DER longer than its input");
        // 0x80 (indefinite) is no DER length, with or without 128 bytes after it.
        err(&der(&[0x80], 200), "a bad DER length");
        err(&der(&[0x80], 0), "a bad DER length");
        err(&der(&[0x85, 0, 0, 0, 0, 1], 5), "a bad DER length");
        err(&der(&[0x88, 0, 0, 0, 0, 0, 0, 0, 0], 5), "a bad DER length");
        // Length bytes cut off.
        err(&der(&[0x81], 0), "a bad DER length");
        err(&der(&[0x82, 0], 0), "a bad DER length");
        err(&der(&[0x84, 0, 0, 0], 0), "a bad DER length");
        // Tags: low 5 bits all set means a multi-byte tag; anything else is one byte.
        for tag in [0x1F, 0x3F, 0xFF, 0x9F] {
            err(&[tag, 0], "a multi-byte DER tag");
        }
        for tag in [0x00, 0x1E, 0x30, 0xA0, 0x02] {
            let input = [tag, 0, 9];
            let (el, rest) = der_next(&input).unwrap();
            assert_eq!((el.tag, el.contents, rest), (tag, &[][..], &[9][..]));
        }
    }

    #[test]
    fn der_expect_names_the_tag() {
        let e = der_expect(&[0x02, 0], 0x30, "a certificate").err().unwrap();
        assert_eq!(e, "expected a certificate, found tag 0x02");
    }

    proptest! {
        #[test]
        fn base64_round_trips(data in proptest::collection::vec(any::<u8>(), 0..300)) {
            prop_assert_eq!(base64_decode(&base64_encode(&data)).unwrap(), data);
        }

        #[test]
        fn pem_round_trips(der in proptest::collection::vec(any::<u8>(), 0..600)) {
            let text = pem_encode("CERTIFICATE", &der);
            let blocks = pem_blocks(&text).unwrap();
            prop_assert_eq!(blocks.len(), 1);
            prop_assert_eq!(&blocks[0].der, &der);
        }

        #[test]
        fn fingerprints_and_uris_round_trip(
            bytes in any::<[u8; 32]>(), port in 1u16.., v6 in any::<bool>(),
            pair in proptest::option::of((1u16.., any::<[u8; TOKEN_LEN]>())),
        ) {
            let fp = Fingerprint(bytes);
            prop_assert_eq!(Fingerprint::parse(&fp.to_string()).unwrap(), fp);
            let host = if v6 { "fd00::17".to_owned() } else { "card-host.example".to_owned() };
            let pair = pair.map(|(port, t)| Pairing { port, token: PairToken(t) });
            let uri = VpcdsUri { host, port, fingerprint: fp, pair };
            prop_assert_eq!(VpcdsUri::parse(&uri.to_string()).unwrap(), uri);
        }

        #[test]
        fn pairing_lines_round_trip(
            token in any::<[u8; TOKEN_LEN]>(), why in "\\PC{0,300}",
        ) {
            let token = PairToken(token);
            let line = pair_request(&token);
            prop_assert!(line.len() <= MAX_PAIR_LINE);
            let parsed = parse_pair_request(line.strip_suffix('\n').unwrap()).unwrap();
            prop_assert!(parsed.matches(&token));
            let answer = PairAnswer::Refused(why).to_line();
            prop_assert!(answer.len() <= MAX_PAIR_LINE, "{}", answer.len());
            prop_assert_eq!(answer.matches('\n').count(), 1);
            let parsed = PairAnswer::parse(answer.strip_suffix('\n').unwrap()).unwrap();
            prop_assert!(matches!(parsed, PairAnswer::Refused(_)));
        }

        #[test]
        fn pair_values_parse_exactly_when_valid(
            port in "0{0,2}[1-9][0-9]{0,5}", token in "[0-9a-fA-F]{30,34}",
        ) {
            let s = format!("{port}-{token}");
            let valid = port.parse::<u32>().unwrap() <= 65535 && token.len() == 32;
            match Pairing::parse(&s) {
                Ok(p) => {
                    prop_assert!(valid, "{s}");
                    prop_assert_eq!(Pairing::parse(&p.to_string()).unwrap(), p.clone());
                    // Canonical: lowercase digits, the port without leading zeros.
                    let canonical = format!("{}-{}", port.trim_start_matches('0'), token);
                    prop_assert_eq!(p.to_string(), canonical.to_lowercase());
                }
                Err(e) => prop_assert!(!valid, "{s}: {e}"),
            }
        }

        #[test]
        fn tokens_match_only_themselves(
            a in any::<[u8; TOKEN_LEN]>(), i in 0..TOKEN_LEN, flip in 1u8..,
        ) {
            let mut b = a;
            b[i] ^= flip;
            prop_assert!(PairToken(a).matches(&PairToken(a)));
            prop_assert!(!PairToken(a).matches(&PairToken(b)));
        }

        #[test]
        fn trust_lists_round_trip(
            keys in proptest::collection::vec((any::<[u8; 32]>(), "[a-z0-9 ._-]{0,20}"), 0..8),
        ) {
            let mut list = TrustList::default();
            for (k, name) in keys {
                let fingerprint = Fingerprint(k);
                if !list.contains(&fingerprint) {
                    list.entries.push(TrustEntry { fingerprint, name: name.trim().to_owned() });
                }
            }
            prop_assert_eq!(TrustList::parse(&list.to_text()).unwrap(), list);
        }

        #[test]
        fn no_input_panics(s in "\\PC{0,200}") {
            parse_any(&s);
        }

        #[test]
        fn no_der_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = spki_of(&bytes);
        }
    }
}
