//! What the tool prints: one entry per slot, as text (with QR codes) or as JSON.

use std::io::{self, Write};
use std::net::IpAddr;

use vpcd_protocol::config::{Endpoint, Protocol};

use crate::addresses::{reachable_addresses, url_host, vpcd_url, LocalAddr, Reach};
use crate::qr::{render_qr, QrStyle};
use crate::readers::{Origin, Reader};

enum SlotKind {
    Listen {
        listen: IpAddr,
        hosts: Vec<String>,
        reach: Reach,
    },
    Reversed {
        host: String,
    },
}

pub(crate) struct SlotInfo<'a> {
    reader: &'a Reader,
    slot: u16,
    port: u16,
    kind: SlotKind,
}

impl SlotInfo<'_> {
    fn urls(&self) -> Vec<String> {
        match &self.kind {
            SlotKind::Listen { hosts, .. } if self.reader.config.tls => hosts
                .iter()
                .map(|h| {
                    let keys = self.reader.config.tls_keys.as_deref();
                    secure_url(h, self.port, reader_fingerprint(keys))
                })
                .collect(),
            SlotKind::Listen { hosts, .. } => {
                hosts.iter().map(|h| vpcd_url(h, self.port)).collect()
            }
            SlotKind::Reversed { .. } => vec![],
        }
    }
}

/// The key of the secure readers of key set `keys` (docs/TLS.md), if it can be read
/// here.
fn reader_fingerprint(keys: Option<&str>) -> Option<vpcd_protocol::tls::Fingerprint> {
    let key = vpcd_tools::keys::reader_dir(keys).join(vpcd_protocol::tls::KEY_FILE);
    let key = vpcd_tools::keys::load_key(&key).ok()?;
    vpcd_tools::keys::fingerprint(&key).ok()
}

/// A secure slot's `vpcds://` URI; without a readable key (not root, or no
/// `vpcd-config tls init` yet), the URI lacks its `fp=`, and a vicc refuses it.
fn secure_url(host: &str, port: u16, fp: Option<vpcd_protocol::tls::Fingerprint>) -> String {
    match fp {
        Some(fp) => format!("vpcds://{}:{port}?fp={fp}", url_host(host)),
        None => format!("vpcds://{}:{port}", url_host(host)),
    }
}

pub(crate) fn slots<'a>(
    readers: &'a [Reader],
    host: Option<&str>,
    local: &[LocalAddr],
) -> Vec<SlotInfo<'a>> {
    let mut out = vec![];
    for reader in readers {
        let kind = |_: u16| match &reader.config.endpoint {
            Endpoint::Listen { addr, v6only } => {
                let (hosts, reach) = match host {
                    Some(h) => (vec![h.to_owned()], Reach::Given),
                    None => {
                        let (ips, reach) = reachable_addresses(*addr, *v6only, local);
                        (ips.iter().map(IpAddr::to_string).collect(), reach)
                    }
                };
                SlotKind::Listen {
                    listen: *addr,
                    hosts,
                    reach,
                }
            }
            Endpoint::Connect { host } => SlotKind::Reversed { host: host.clone() },
        };
        for slot in 0..reader.config.slots {
            let Some(port) = reader.config.port_of(slot) else {
                break;
            };
            out.push(SlotInfo {
                reader,
                slot,
                port,
                kind: kind(slot),
            });
        }
    }
    out
}

fn origin_text(origin: &Origin) -> String {
    match origin {
        Origin::File { path, line } => format!("{}, line {line}", path.display()),
        Origin::CommandLine => "command line".into(),
        Origin::Default => "default configuration".into(),
    }
}

pub(crate) fn write_text(
    out: &mut dyn Write,
    slots: &[SlotInfo],
    qr: Option<QrStyle>,
) -> io::Result<()> {
    for (n, s) in slots.iter().enumerate() {
        if n > 0 {
            writeln!(out)?;
        }
        writeln!(
            out,
            "{}, slot {} ({}: {})",
            s.reader.name,
            s.slot,
            origin_text(&s.reader.origin),
            s.reader.device
        )?;
        match &s.kind {
            SlotKind::Reversed { host } => {
                writeln!(out, "reversed: connects to {}:{}", url_host(host), s.port)?;
            }
            SlotKind::Listen {
                listen,
                hosts,
                reach,
            } => {
                for (i, h) in hosts.iter().enumerate() {
                    let label = if i == 0 { "VPCD hostname:" } else { "" };
                    writeln!(out, "{label:<16}{h}")?;
                }
                writeln!(out, "{:<16}{}", "VPCD port:", s.port)?;
                let note = match reach {
                    Reach::Network | Reach::Given => None,
                    Reach::LinkLocal => Some(
                        "link-local addresses only: a vicc must be on the same network link"
                            .to_owned(),
                    ),
                    Reach::Down => Some(
                        "the interfaces with these addresses have no link at the moment".to_owned(),
                    ),
                    Reach::Loopback => Some(
                        "no network address found: only a vicc on this machine can connect"
                            .to_owned(),
                    ),
                    Reach::Configured if listen.is_loopback() => Some(format!(
                        "the reader listens on {listen} only: only a vicc on this machine can connect"
                    )),
                    Reach::Configured => None,
                };
                if let Some(note) = note {
                    writeln!(out, "{:<16}{note}", "Note:")?;
                }
                let Some(url) = s.urls().into_iter().next() else {
                    continue;
                };
                writeln!(out, "{:<16}{url}", "URL:")?;
                if s.reader.config.protocol != Protocol::Vpcd {
                    writeln!(
                        out,
                        "This slot speaks the vscard protocol, not the app's vpcd: no QR code."
                    )?;
                    continue;
                }
                let Some(style) = qr else { continue };
                writeln!(
                    out,
                    "On your NFC phone with the Remote Smart Card Reader app scan this code:"
                )?;
                match render_qr(&url, style) {
                    Ok(code) => writeln!(out, "{code}")?,
                    Err(e) => writeln!(out, "(no QR code: {e})")?,
                }
            }
        }
    }
    Ok(())
}

/// `s` as a JSON string.
fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if u32::from(c) < 0x20 || c == '\u{7f}' || c == '\u{2028}' || c == '\u{2029}' => {
                out.push_str(&format!("\\u{:04x}", u32::from(c)));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn json_list(items: &[String]) -> String {
    let items: Vec<String> = items.iter().map(|s| json_string(s)).collect();
    format!("[{}]", items.join(", "))
}

pub(crate) fn write_json(out: &mut dyn Write, slots: &[SlotInfo]) -> io::Result<()> {
    if slots.is_empty() {
        return writeln!(out, "[]");
    }
    writeln!(out, "[")?;
    for (n, s) in slots.iter().enumerate() {
        let mut fields = vec![
            format!("\"reader\": {}", json_string(&s.reader.name)),
            format!("\"slot\": {}", s.slot),
            format!("\"port\": {}", s.port),
        ];
        match &s.kind {
            SlotKind::Listen {
                listen,
                hosts,
                reach,
            } => {
                fields.push("\"mode\": \"listen\"".into());
                fields.push(format!("\"listen\": {}", json_string(&listen.to_string())));
                fields.push(format!("\"addresses\": {}", json_list(hosts)));
                fields.push(format!("\"urls\": {}", json_list(&s.urls())));
                let reach = match reach {
                    Reach::Network => "network",
                    Reach::LinkLocal => "link-local",
                    Reach::Down => "down",
                    Reach::Loopback => "loopback",
                    Reach::Configured => "configured",
                    Reach::Given => "given",
                };
                fields.push(format!("\"reach\": \"{reach}\""));
            }
            SlotKind::Reversed { host } => {
                fields.push("\"mode\": \"reversed\"".into());
                fields.push(format!("\"host\": {}", json_string(host)));
                fields.push("\"addresses\": []".into());
                fields.push("\"urls\": []".into());
            }
        }
        let protocol = match s.reader.config.protocol {
            Protocol::Vpcd => "vpcd",
            Protocol::VsCard => "vscard",
        };
        fields.push(format!("\"protocol\": \"{protocol}\""));
        match &s.reader.origin {
            Origin::File { path, line } => {
                fields.push(format!(
                    "\"config\": {}",
                    json_string(&path.to_string_lossy())
                ));
                fields.push(format!("\"line\": {line}"));
            }
            Origin::CommandLine | Origin::Default => {
                fields.push("\"config\": null".into());
                fields.push("\"line\": null".into());
            }
        }
        fields.push(format!("\"device\": {}", json_string(&s.reader.device)));
        let comma = if n + 1 < slots.len() { "," } else { "" };
        writeln!(out, "  {{{}}}{comma}", fields.join(", "))?;
    }
    writeln!(out, "]")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_strings_are_escaped() {
        let nasty = "a\"b\\c\nd\te\u{1}f\u{2028}é";
        let json = json_string(nasty);
        let back: String = serde_json::from_str(&json).unwrap();
        assert_eq!(back, nasty);
    }
}
