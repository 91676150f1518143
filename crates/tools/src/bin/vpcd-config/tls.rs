//! `vpcd-config tls`: the reader's side of the secure link (docs/TLS.md). The driver
//! only reads its files (under pcsc-lite 2.x's hardened service it cannot write); this
//! is the administrator's command that makes and changes them.
//!
//! - `init`: the reader's key pair in `key.pem` (mode 0640, group pcscd when that group
//!   exists, else 0600) and an empty trust list `trusted`;
//! - `trust FINGERPRINT [--name NAME]`, `untrust FINGERPRINT`: the trust list;
//! - `show`: the reader's fingerprint, the `vpcds://` URI a vicc pins it with (and its
//!   QR code), and the trusted keys;
//! - `pair`: one-step pairing with a one-time token (`crate::pair`).

use std::ffi::OsString;
use std::io::{self, IsTerminal, Write};
use std::path::PathBuf;

use vpcd_protocol::config::DEFAULT_PORT;
use vpcd_protocol::tls::{check_name, Fingerprint, TrustEntry, VpcdsUri, KEY_FILE, TRUST_FILE};
use vpcd_tools::{cli, keys};

use crate::qr::{render_qr, QrStyle};

pub(crate) const HELP: &str = "\
vpcd-config tls: the keys of the secure vpcd link (readers with /tls=yes)

Usage: vpcd-config tls init [--force]
       vpcd-config tls trust FINGERPRINT [--name NAME]
       vpcd-config tls untrust FINGERPRINT
       vpcd-config tls show [-H HOST] [-P PORT] [--no-qr]
       vpcd-config tls pair [-H HOST] [-P PORT] [--name NAME] [--pair-port N]
                            [--within SECONDS] [--no-qr]

  init      make the reader's key pair (key.pem: readable by root and group pcscd
            only) and an empty trust list (trusted); --force replaces a key
  trust     trust a vicc's key: the fingerprint vpcd-vicc prints (or a phone shows)
  untrust   remove a key from the trust list
  show      this reader's key fingerprint, the vpcds://HOST:PORT?fp=... URI a vicc
            pins it with (vpcd-vicc --connect URI), its QR code, the trusted keys
  pair      one-step pairing: prints a URI with a one-time token,
            vpcds://HOST:PORT?fp=...&pair=PAIRPORT-TOKEN, and its QR code;
            waits for one vicc to bring the token (vpcd-vicc --connect URI),
            trusts its key and exits 0; after 3 wrong tokens or --within:
            exit 1, nobody trusted

Options:
      --dir DIR     the directory of key.pem and trusted [default: $VPCD_TLS_DIR,
                    else /etc/vpcd/tls]; pcscd reads the same one
      --keys NAME   the key set of the readers with /keys=NAME: DIR/NAME
  -H, --host HOST   the host in the URI [default: this machine's name]
  -P, --port PORT   the port in the URI [default: 35963]
      --no-qr       no QR code
      --name NAME   trust/pair: the vicc's name in the trust list [pair default:
                    \"paired DATE from ADDRESS\"]
      --pair-port N pair: the pairing port [default: any free one]; listened on
                    on HOST if it is an address of this machine, else on all
      --within SECS pair: how long the token is good for [default: 300]

The driver reads the trust list again at the next connection after it changed:
trust/untrust/pair need no pcscd restart (the key: restart after init).
Pairing in one step (the token works once; pcscd needs no write access):
  here:     sudo vpcd-config tls pair --name phone
                -> vpcds://pc:35963?fp=...&pair=...
  vicc:     vpcd-vicc --connect 'vpcds://pc:35963?fp=...&pair=...'
Or by hand, one step on each side:
  here:     vpcd-config tls show            -> vpcds://pc:35963?fp=...
  vicc:     vpcd-vicc --connect 'vpcds://pc:35963?fp=...'   -> prints its key
  here:     sudo vpcd-config tls trust KEY --name phone
";

struct Options {
    dir: PathBuf,
    force: bool,
    name: String,
    host: Option<String>,
    port: u16,
    qr: bool,
    pair_port: u16,
    within: std::time::Duration,
    words: Vec<String>,
}

/// `vpcd-config tls ARGS`; returns the exit status.
pub(crate) fn main(args: &[OsString]) -> u8 {
    match run(args, &mut io::stdout().lock()) {
        Ok(()) => 0,
        Err((code, e)) => {
            if code == cli::USAGE {
                eprintln!("{}", cli::usage_error("vpcd-config tls", e));
            } else {
                eprintln!("vpcd-config tls: error: {e}");
            }
            code
        }
    }
}

fn parse(args: &[OsString]) -> Result<Option<Options>, String> {
    use lexopt::Arg::{Long, Short, Value};
    let mut o = Options {
        dir: keys::driver_dir(),
        force: false,
        name: String::new(),
        host: None,
        port: DEFAULT_PORT,
        qr: true,
        pair_port: 0,
        within: std::time::Duration::from_secs(300),
        words: vec![],
    };
    let mut keys = None;
    let mut parser = lexopt::Parser::from_args(args);
    while let Some(arg) = parser.next().map_err(|e| e.to_string())? {
        let name = cli::option_name(&arg);
        match arg {
            Short('h') | Long("help") => return Ok(None),
            Long("dir") => o.dir = PathBuf::from(cli::os_value(&mut parser)?),
            Long("force") => o.force = true,
            Long("name") => {
                o.name = cli::value(&mut parser, &name)?;
                check_name(&o.name).map_err(|e| format!("{name}: {e}"))?;
            }
            Short('H') | Long("host") => o.host = Some(cli::value(&mut parser, &name)?),
            Short('P') | Long("port") => {
                let v = cli::value(&mut parser, &name)?;
                o.port = v
                    .parse()
                    .ok()
                    .filter(|p| *p != 0)
                    .ok_or_else(|| format!("{name}: bad port \"{v}\""))?;
            }
            Long("keys") => {
                let v = cli::value(&mut parser, &name)?;
                vpcd_protocol::config::check_keys_name(&v).map_err(|e| format!("{name}: {e}"))?;
                keys = Some(v);
            }
            Long("no-qr") => o.qr = false,
            Long("pair-port") => {
                let v = cli::value(&mut parser, &name)?;
                o.pair_port = v
                    .parse()
                    .ok()
                    .filter(|p| *p != 0)
                    .ok_or_else(|| format!("{name}: bad port \"{v}\""))?;
            }
            Long("within") => {
                let v = cli::value(&mut parser, &name)?;
                let secs: u64 = v
                    .parse()
                    .ok()
                    .filter(|s| (1..=86_400).contains(s))
                    .ok_or_else(|| format!("{name}: \"{v}\": expected 1 to 86400 seconds"))?;
                o.within = std::time::Duration::from_secs(secs);
            }
            Value(v) => o.words.push(cli::text(&name, v)?),
            Short(_) | Long(_) => return Err(arg.unexpected().to_string()),
        }
    }
    // After the loop: --keys picks a sub-directory of --dir in either order.
    if let Some(keys) = keys {
        o.dir.push(keys);
    }
    Ok(Some(o))
}

fn run(args: &[OsString], out: &mut dyn Write) -> Result<(), (u8, String)> {
    let usage = |e: String| (cli::USAGE, e);
    let fail = |e: String| (1u8, e);
    let Some(o) = parse(args).map_err(usage)? else {
        let _ = out.write_all(HELP.as_bytes());
        return Ok(());
    };
    let key_path = o.dir.join(KEY_FILE);
    let trust_path = o.dir.join(TRUST_FILE);
    let words: Vec<&str> = o.words.iter().map(String::as_str).collect();
    match words.as_slice() {
        ["init"] => {
            if key_path.exists() && !o.force {
                return Err(fail(format!(
                    "{} exists; vpcd-config tls init --force replaces it (every paired vicc \
                     must then pin the new key)",
                    key_path.display()
                )));
            }
            std::fs::create_dir_all(&o.dir)
                .map_err(|e| fail(format!("cannot create {}: {e}", o.dir.display())))?;
            let key = keys::generate().map_err(fail)?;
            // pcscd's user reads the key through its group; without that group (pcscd
            // runs as root) the key is root's alone.
            let group = keys::group_id("pcscd").filter(|_| is_root());
            let mode = if group.is_some() { 0o640 } else { 0o600 };
            keys::write_file(&key_path, &key.to_pem(), mode, group)
                .map_err(|e| fail(format!("cannot write {}: {e}", key_path.display())))?;
            if !trust_path.exists() {
                let empty = vpcd_protocol::tls::TrustList::default().to_text();
                keys::write_file(&trust_path, &empty, 0o644, None)
                    .map_err(|e| fail(format!("cannot write {}: {e}", trust_path.display())))?;
            }
            let fp = keys::fingerprint(&key).map_err(fail)?;
            let _ = writeln!(
                out,
                "made the reader key {fp}\n  {} (mode {mode:o}{})\n  {}\n\
                 Next: vpcd-config tls show, for the vicc to pin it",
                key_path.display(),
                if group.is_some() { ", group pcscd" } else { "" },
                trust_path.display()
            );
            Ok(())
        }
        ["trust", fp] => {
            let fingerprint = Fingerprint::parse(fp).map_err(usage)?;
            let mut list = keys::load_trust(&trust_path).map_err(fail)?;
            if list.contains(&fingerprint) {
                list.entries.retain(|e| e.fingerprint != fingerprint);
            }
            list.entries.push(TrustEntry {
                fingerprint,
                name: o.name.clone(),
            });
            keys::write_file(&trust_path, &list.to_text(), 0o644, None)
                .map_err(|e| fail(format!("cannot write {}: {e}", trust_path.display())))?;
            let _ = writeln!(
                out,
                "trusting {fingerprint}{} ({} key(s) in {}); the driver reads it at the next \
                 connection",
                if o.name.is_empty() {
                    String::new()
                } else {
                    format!(" \"{}\"", o.name)
                },
                list.entries.len(),
                trust_path.display()
            );
            Ok(())
        }
        ["untrust", fp] => {
            let fingerprint = Fingerprint::parse(fp).map_err(usage)?;
            let mut list = keys::load_trust(&trust_path).map_err(fail)?;
            let before = list.entries.len();
            list.entries.retain(|e| e.fingerprint != fingerprint);
            if list.entries.len() == before {
                return Err(fail(format!(
                    "{fingerprint} is not in {}",
                    trust_path.display()
                )));
            }
            keys::write_file(&trust_path, &list.to_text(), 0o644, None)
                .map_err(|e| fail(format!("cannot write {}: {e}", trust_path.display())))?;
            let _ = writeln!(out, "no longer trusting {fingerprint}");
            Ok(())
        }
        ["show"] => {
            let key = keys::load_key(&key_path).map_err(|e| {
                fail(format!(
                    "{e}; make the reader's key first: sudo vpcd-config tls init"
                ))
            })?;
            let fingerprint = keys::fingerprint(&key).map_err(fail)?;
            let host = o.host.clone().unwrap_or_else(hostname);
            let uri = VpcdsUri {
                host,
                port: o.port,
                fingerprint,
                pair: None,
            };
            let _ = writeln!(out, "reader key {fingerprint}\n{uri}");
            if o.qr {
                if let Ok(code) = render_qr(&uri.to_string(), qr_style()) {
                    let _ = writeln!(out, "{code}");
                }
            }
            let _ = writeln!(out, "vicc: vpcd-vicc --connect '{uri}'");
            let list = keys::load_trust(&trust_path).map_err(fail)?;
            let _ = writeln!(out, "trusted keys ({}):", trust_path.display());
            if list.entries.is_empty() {
                let _ = writeln!(
                    out,
                    "  none yet: vpcd-config tls trust FINGERPRINT --name NAME"
                );
            }
            for e in &list.entries {
                let _ = writeln!(out, "  {} {}", e.fingerprint, e.name);
            }
            Ok(())
        }
        ["pair"] => crate::pair::run(
            &crate::pair::Request {
                key_path: &key_path,
                trust_path: &trust_path,
                host: o.host.clone().unwrap_or_else(hostname),
                port: o.port,
                pair_port: o.pair_port,
                within: o.within,
                name: o.name.clone(),
                qr: o.qr,
            },
            out,
        ),
        _ => Err(usage(
            "expected init, trust FINGERPRINT, untrust FINGERPRINT, show or pair".into(),
        )),
    }
}

/// Colours on a terminal; plain characters in a file or a pipe.
pub(crate) fn qr_style() -> QrStyle {
    if io::stdout().is_terminal() {
        QrStyle::Ansi
    } else {
        QrStyle::Plain
    }
}

fn is_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false)
}

/// This machine's name, for the URI (a vicc on the network resolves it, or the user
/// gives -H).
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}
