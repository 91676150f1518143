//! `vpcd-config`: how a virtual card reaches the vpcd readers of this machine.
//!
//! The companion of the C vsmartcard tool of the same name. For every slot of every
//! vpcd reader that pcscd is configured to load, it prints the addresses and the port a
//! vicc connects to and, for the Remote Smart Card Reader app, a QR code of
//! `vpcd://HOST:PORT`. Readers in reversed mode connect out to their vicc and are
//! listed without a QR code.
//!
//! - The configuration is read as pcscd reads it (its `configfile.l` lexer): one
//!   `KEY value` per line, `#` comments, quoted values, an entry complete once it has
//!   FRIENDLYNAME, LIBPATH and DEVICENAME or CHANNELID. An entry is ours when its
//!   LIBPATH file is `libifdvpcd.so`. What would make pcscd refuse the file is reported.
//! - This machine's addresses come from its interfaces (getifaddrs, through the
//!   `if-addrs` crate): the tool sends nothing anywhere. It prefers addresses of
//!   running interfaces, then link-local ones, then loopback, and lists exactly the
//!   address a reader listens on when its entry names one (`listen=`).
//!
//! The modules, in the order the tool uses them:
//!
//! - `readerconf`: reader.conf files, parsed as pcscd parses them;
//! - `readers`: the vpcd readers they configure (or `--port`'s, or the default);
//! - `addresses`: this machine's addresses and the ones that reach a reader;
//! - `qr`: the QR code of a `vpcd://` URL;
//! - `output`: the slots of the readers, printed as text or JSON;
//! - `tls`: `vpcd-config tls`, the keys of the secure link (docs/TLS.md);
//! - `pair`: `vpcd-config tls pair`, one-step pairing with a one-time token.

#![deny(unsafe_code)]

mod addresses;
mod check;
mod output;
mod pair;
mod qr;
mod readerconf;
mod readers;
mod tls;

use std::ffi::OsString;
use std::io::{self, IsTerminal, Write};
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use vpcd_protocol::config::{Endpoint, DEFAULT_PORT, DEFAULT_SLOTS};
use vpcd_tools::cli;

use addresses::{local_addresses, unbracket, LocalAddr};
use output::{slots, write_json, write_text};
use qr::QrStyle;
use readerconf::DRIVER_FILE;
use readers::{command_line_reader, default_reader, load_readers, Loaded};

/// Where pcscd looks for reader entries (its PCSCLITE_CONFIG_DIR on Debian and most
/// distributions).
const DEFAULT_CONFIG: &str = "/etc/reader.conf.d";

const HELP: &str = "\
vpcd-config: show how a virtual smart card reaches the vpcd readers of this machine

Usage: vpcd-config [OPTIONS]

For every slot of every vpcd reader that pcscd is configured to load (reader.conf.d
entries whose LIBPATH is libifdvpcd.so), prints the addresses and the port a virtual
card (vicc) connects to, and a QR code of vpcd://HOST:PORT for the Remote Smart Card
Reader app. Readers in reversed mode connect out to their vicc and are listed without
a QR code. With no vpcd reader configured, shows the default: port 35963, 2 slots.

Options:
  -c, --config PATH   reader.conf file or reader.conf.d directory to read
                      [default: /etc/reader.conf.d]
  -P, --port PORT     describe a reader listening on PORT (slot n on PORT+n) instead
                      of reading the configuration; decimal or 0x hex
  -s, --slots N       number of slots with --port [default: 2]
      --listen ADDR   the address it listens on with --port [default: 0.0.0.0, every
                      IPv4 address; :: for IPv6 and IPv4]
  -H, --host HOST     put HOST (a DNS name, or the address of a router forwarding
                      the port) in the URLs instead of this machine's addresses
      --no-qr         print no QR codes
      --json          print a JSON list of the slots instead of text
      --color WHEN    draw QR codes with terminal colours: auto, always or never
                      [default: auto, when stdout is a terminal and NO_COLOR unset]
      --invert        without colours, draw QR codes for light text on a dark
                      background
      --check         tell what stands between a vicc and the readers, one line
                      per finding (see vpcd-config --check --help)
  tls ...             the keys of secure readers (/tls=yes): init, trust,
                      untrust, show, pair (see vpcd-config tls --help,
                      docs/TLS.md)
  -h, --help          print this help
  -V, --version       print the version

Older spellings still accepted: -p for -P, -l for --listen, --hostname for --host.

The addresses are those of this machine's network interfaces (getifaddrs): running
interfaces first, link-local addresses only when there is nothing else, loopback last.
Nothing is sent over the network.

Exit status: 0 on success, 1 when the configuration cannot be read or none of its vpcd
readers is usable, 2 on a usage error.
";

fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    if args.first().is_some_and(|a| a == "tls") {
        return ExitCode::from(tls::main(&args[1..]));
    }
    if let Some(i) = args.iter().position(|a| a == "--check") {
        let rest: Vec<OsString> = [&args[..i], &args[i + 1..]].concat();
        return ExitCode::from(check::main(&rest));
    }
    let ctx = Context {
        stdout_is_terminal: io::stdout().is_terminal(),
        no_color: std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty()),
        default_config: PathBuf::from(DEFAULT_CONFIG),
        interfaces: local_addresses,
    };
    let code = run(
        &args,
        &ctx,
        &mut io::stdout().lock(),
        &mut io::stderr().lock(),
    );
    ExitCode::from(code)
}

/// What `run` needs from the machine, so tests can stand in for it.
struct Context {
    stdout_is_terminal: bool,
    no_color: bool,
    default_config: PathBuf,
    interfaces: fn() -> io::Result<Vec<LocalAddr>>,
}

// ---------------------------------------------------------------------------------
// Command line

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ColorWhen {
    Auto,
    Always,
    Never,
}

#[derive(Debug, PartialEq, Eq)]
enum Source {
    /// Read reader.conf entries from this file or directory (None: the default one).
    Config(Option<PathBuf>),
    /// A reader given on the command line.
    Port {
        port: String,
        slots: Option<String>,
        listen: Option<IpAddr>,
    },
}

#[derive(Debug, PartialEq, Eq)]
struct Options {
    source: Source,
    host: Option<String>,
    qr: bool,
    json: bool,
    color: ColorWhen,
    invert: bool,
}

#[derive(Debug, PartialEq, Eq)]
enum Command {
    Run(Options),
    Help,
    Version,
}

/// Parses the command line (without the program name), with the conventions of
/// [`vpcd_tools::cli`].
fn parse_args(args: &[OsString]) -> Result<Command, String> {
    use lexopt::Arg::{Long, Short, Value};
    let mut config: Option<PathBuf> = None;
    let mut port: Option<String> = None;
    let mut slots: Option<String> = None;
    let mut listen: Option<IpAddr> = None;
    let mut host: Option<String> = None;
    let mut qr = true;
    let mut json = false;
    let mut color = ColorWhen::Auto;
    let mut invert = false;

    let mut parser = lexopt::Parser::from_args(args);
    while let Some(arg) = parser.next().map_err(|e| e.to_string())? {
        let name = cli::option_name(&arg);
        match arg {
            Short('h') | Long("help") => return Ok(Command::Help),
            Short('V') | Long("version") => return Ok(Command::Version),
            Short('c') | Long("config") => config = Some(cli::os_value(&mut parser)?.into()),
            // -p: this tool's spelling before -P, the one vpcd-vicc has.
            Short('P' | 'p') | Long("port") => port = Some(cli::value(&mut parser, &name)?),
            Short('s') | Long("slots") => slots = Some(cli::value(&mut parser, &name)?),
            // -l: this tool's spelling before vpcd-vicc's --listen (whose -l is --loop).
            Short('l') | Long("listen") => {
                let v = cli::value(&mut parser, &name)?;
                let ip = unbracket(&v)
                    .parse()
                    .map_err(|_| format!("{name}: \"{v}\" is not an IPv4 or IPv6 address"))?;
                listen = Some(ip);
            }
            // --hostname: vpcd-vicc's alias (vsmartcard's vicc spells it so).
            Short('H') | Long("host" | "hostname") => {
                let v = cli::value(&mut parser, &name)?;
                let v = unbracket(v.trim()).to_owned();
                if v.is_empty() || v.contains(|c: char| c.is_whitespace() || "/[]@?#".contains(c)) {
                    return Err(format!("{name}: \"{v}\" is not a host name or address"));
                }
                host = Some(v);
            }
            Long("color" | "colour") => {
                color = match cli::value(&mut parser, &name)?.as_str() {
                    "auto" => ColorWhen::Auto,
                    "always" | "yes" => ColorWhen::Always,
                    "never" | "no" => ColorWhen::Never,
                    other => {
                        return Err(format!("{name}: \"{other}\" is not auto, always or never"))
                    }
                }
            }
            Long("no-qr") => qr = false,
            Long("json") => json = true,
            Long("invert") => invert = true,
            Short(_) | Long(_) | Value(_) => return Err(arg.unexpected().to_string()),
        }
    }

    let source = match port {
        Some(port) => {
            if config.is_some() {
                return Err("--port and --config exclude each other".into());
            }
            Source::Port {
                port,
                slots,
                listen,
            }
        }
        None => {
            if slots.is_some() || listen.is_some() {
                return Err("--slots and --listen go with --port".into());
            }
            Source::Config(config)
        }
    };
    Ok(Command::Run(Options {
        source,
        host,
        qr,
        json,
        color,
        invert,
    }))
}

// ---------------------------------------------------------------------------------

/// The whole tool; returns the exit status.
fn run(args: &[OsString], ctx: &Context, out: &mut dyn Write, err: &mut dyn Write) -> u8 {
    let opts = match parse_args(args) {
        Ok(Command::Run(opts)) => opts,
        Ok(Command::Help) => {
            let _ = out.write_all(HELP.as_bytes());
            return 0;
        }
        Ok(Command::Version) => {
            let _ = writeln!(out, "vpcd-config {}", env!("CARGO_PKG_VERSION"));
            return 0;
        }
        Err(e) => {
            let _ = writeln!(err, "{}", cli::usage_error("vpcd-config", e));
            return cli::USAGE;
        }
    };

    let readers = match &opts.source {
        Source::Port {
            port,
            slots,
            listen,
        } => match command_line_reader(port, slots.as_deref(), *listen) {
            Ok(reader) => vec![reader],
            Err(e) => {
                let _ = writeln!(err, "{}", cli::usage_error("vpcd-config", e));
                return cli::USAGE;
            }
        },
        Source::Config(given) => {
            let path = given.as_deref().unwrap_or(&ctx.default_config);
            let loaded = match load_readers(path, err) {
                Ok(loaded) => loaded,
                Err(e) if given.is_none() && e.kind() == io::ErrorKind::NotFound => Loaded {
                    readers: vec![],
                    broken: 0,
                },
                Err(e) => {
                    let _ = writeln!(err, "vpcd-config: error: {}: {e}", path.display());
                    return 1;
                }
            };
            if !loaded.readers.is_empty() {
                loaded.readers
            } else if loaded.broken > 0 {
                let _ = writeln!(
                    err,
                    "vpcd-config: error: no usable vpcd reader in {}",
                    path.display()
                );
                return 1;
            } else {
                let _ = writeln!(
                    err,
                    "vpcd-config: no vpcd reader (LIBPATH .../{DRIVER_FILE}) configured in {}; \
                     showing the default: port {DEFAULT_PORT}, {DEFAULT_SLOTS} slots",
                    path.display()
                );
                vec![default_reader()]
            }
        }
    };

    let needs_interfaces = opts.host.is_none()
        && readers.iter().any(|r| {
            matches!(&r.config.endpoint, Endpoint::Listen { addr, .. } if addr.is_unspecified())
        });
    let local = if needs_interfaces {
        (ctx.interfaces)().unwrap_or_else(|e| {
            let _ = writeln!(
                err,
                "vpcd-config: warning: cannot list this machine's network interfaces: {e}"
            );
            vec![]
        })
    } else {
        vec![]
    };
    let slots = slots(&readers, opts.host.as_deref(), &local);

    let written = if opts.json {
        write_json(out, &slots)
    } else {
        let color = match opts.color {
            ColorWhen::Always => true,
            ColorWhen::Never => false,
            ColorWhen::Auto => ctx.stdout_is_terminal && !ctx.no_color,
        };
        let style = match (color, opts.invert) {
            (true, _) => QrStyle::Ansi,
            (false, false) => QrStyle::Plain,
            (false, true) => QrStyle::Inverted,
        };
        write_text(out, &slots, opts.qr.then_some(style))
    };
    match written.and_then(|()| out.flush()) {
        Ok(()) => 0,
        // A closed pipe (`vpcd-config | head`) is no error worth a message.
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => 0,
        Err(e) => {
            let _ = writeln!(err, "vpcd-config: error: cannot write the output: {e}");
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::addresses::tests::typical_host;
    use crate::qr::ANSI_BLACK_ON_WHITE;

    fn test_ctx(default_config: PathBuf) -> Context {
        Context {
            stdout_is_terminal: false,
            no_color: false,
            default_config,
            interfaces: || Ok(typical_host()),
        }
    }

    fn run_with(args: &[&str], ctx: &Context) -> (u8, String, String) {
        let args: Vec<OsString> = args.iter().map(OsString::from).collect();
        let (mut out, mut err) = (vec![], vec![]);
        let code = run(&args, ctx, &mut out, &mut err);
        (
            code,
            String::from_utf8(out).unwrap(),
            String::from_utf8(err).unwrap(),
        )
    }

    /// A fresh directory under the system's temporary one, removed on drop.
    fn temp_dir() -> tempfile::TempDir {
        tempfile::Builder::new()
            .prefix("vpcd-config-test-")
            .tempdir()
            .unwrap()
    }

    /// Five vpcd slots in four entries, and an entry of another driver.
    const MIXED_CONF: &str = include_str!("../../../tests/data/mixed-reader.conf");

    #[test]
    fn text_output_from_a_config() {
        let dir = temp_dir();
        std::fs::write(dir.path().join("vpcd"), MIXED_CONF).unwrap();
        std::fs::write(
            dir.path().join(".hidden"),
            "FRIENDLYNAME x\nLIBPATH libifdvpcd.so\nCHANNELID 1\n",
        )
        .unwrap();
        let ctx = test_ctx(dir.path().to_path_buf());
        let (code, out, err) = run_with(&["--color=never"], &ctx);
        assert_eq!(code, 0, "{err}");
        let blocks: Vec<&str> = out.split("\n\n").collect();
        assert_eq!(blocks.len(), 5, "2 + 1 + 1 + 1 slots:\n{out}");
        assert!(blocks[0].starts_with("Virtual PCD, slot 0 ("), "{out}");
        assert!(blocks[0].contains("VPCD hostname:  192.168.1.10\n                172.17.0.1\n"));
        assert!(blocks[0].contains("VPCD port:      35963\n"));
        assert!(blocks[0].contains("URL:            vpcd://192.168.1.10:35963\n"));
        assert!(blocks[0].contains("Remote Smart Card Reader app scan this code:\n"));
        assert!(blocks[1].contains("VPCD port:      35964\n"));
        assert!(blocks[2].contains("VPCD hostname:  127.0.0.1\n"));
        assert!(blocks[2].contains("only a vicc on this machine"));
        assert!(blocks[3].contains("reversed: connects to phone.local:35970"));
        assert!(
            !blocks[3].contains('\u{2588}'),
            "no QR code for a reversed reader"
        );
        assert!(blocks[4].contains("URL:            vpcd://[::1]:41000"));
        assert!(!out.contains("Serial"));
        // The LIBPATHs of this test do not exist here: pcscd would refuse to start.
        assert!(err.contains("does not exist"), "{err}");

        let (code, out, _) = run_with(&["--no-qr", "--config", dir.path().to_str().unwrap()], &ctx);
        assert_eq!(code, 0);
        assert!(!out.contains("scan this code") && !out.contains('\u{2580}'));
    }

    #[test]
    fn fallback_to_the_default() {
        let dir = temp_dir();
        let ctx = test_ctx(dir.path().join("missing"));
        let (code, out, err) = run_with(&["--json"], &ctx);
        assert_eq!(code, 0);
        assert!(
            err.contains("showing the default: port 35963, 2 slots"),
            "{err}"
        );
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v.as_array().unwrap().len(), 2);
        assert_eq!(v[1]["port"], 35964);
        assert_eq!(v[0]["config"], serde_json::Value::Null);

        // A file with no vpcd entry falls back too.
        std::fs::write(
            dir.path().join("other"),
            "FRIENDLYNAME a\nLIBPATH /x/libccid.so\nCHANNELID 1\n",
        )
        .unwrap();
        let (code, _, err) = run_with(&["-c", dir.path().join("other").to_str().unwrap()], &ctx);
        assert_eq!(code, 0);
        assert!(err.contains("showing the default"));

        // A file named on the command line must exist.
        let (code, out, err) = run_with(
            &["--config", dir.path().join("nope").to_str().unwrap()],
            &ctx,
        );
        assert_eq!((code, out.as_str()), (1, ""));
        assert!(err.contains("nope"), "{err}");

        // Broken vpcd entries only: an error, not the default.
        std::fs::write(
            dir.path().join("bad"),
            "FRIENDLYNAME a\nLIBPATH libifdvpcd.so\nDEVICENAME /dev/null:0\n",
        )
        .unwrap();
        let (code, _, err) = run_with(&["-c", dir.path().join("bad").to_str().unwrap()], &ctx);
        assert_eq!(code, 1);
        assert!(
            err.contains("no usable vpcd reader") && err.contains("port"),
            "{err}"
        );
    }

    #[test]
    fn command_line_reader_and_options() {
        let ctx = test_ctx(PathBuf::from("/nonexistent"));
        let (code, out, _) = run_with(
            &["--port", "0x8C7B", "--slots=3", "--listen", "::", "--json"],
            &ctx,
        );
        assert_eq!(code, 0);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v.as_array().unwrap().len(), 3);
        assert_eq!(v[2]["port"], 35965);
        assert_eq!(v[0]["listen"], "::");
        assert_eq!(v[0]["urls"][1], "vpcd://[2001:db8::10]:35963");

        let (code, out, _) = run_with(&["-p", "4000", "--host", "[2001:db8::5]", "--no-qr"], &ctx);
        assert_eq!(code, 0);
        assert!(
            out.contains("URL:            vpcd://[2001:db8::5]:4000"),
            "{out}"
        );

        for bad in [
            &["--port", "0"][..],
            &["--port", "4000/slots=2"],
            &["--port", "65535", "--slots", "2"],
            &["--slots", "2"],
            &["--port", "1", "--config", "/x"],
            &["--listen", "nowhere", "--port", "1"],
            &["--host", "a b"],
            &["--color", "sometimes"],
            &["--json=yes"],
            &["--frobnicate"],
            &["--port"],
        ] {
            let (code, out, err) = run_with(bad, &ctx);
            assert_eq!((code, out.as_str()), (2, ""), "{bad:?}");
            assert!(err.contains("--help"), "{bad:?}: {err}");
        }

        let (code, out, _) = run_with(&["--help"], &ctx);
        assert_eq!(code, 0);
        assert!(out.contains("--config PATH") && out.contains("--json"));
        let (code, out, _) = run_with(&["-V"], &ctx);
        assert_eq!(
            (code, out.trim()),
            (0, concat!("vpcd-config ", env!("CARGO_PKG_VERSION")))
        );
    }

    #[test]
    fn unified_spellings() {
        // The spellings vpcd-vicc shares (-H/--host, -P/--port, --listen), and the old
        // ones of this tool (-p, -l), mean the same.
        let ctx = test_ctx(PathBuf::from("/nonexistent"));
        let mut outputs = vec![];
        for args in [
            &["-P", "4000", "--listen", "::", "-H", "h.example", "--json"][..],
            &["--port=4000", "--listen=::", "--host=h.example", "--json"],
            &[
                "-p",
                "4000",
                "-l",
                "::",
                "--hostname",
                "h.example",
                "--json",
            ],
            &["-P4000", "-l::", "-Hh.example", "--json"],
        ] {
            let (code, out, err) = run_with(args, &ctx);
            assert_eq!(code, 0, "{args:?}: {err}");
            assert!(out.contains("vpcd://h.example:4000"), "{args:?}: {out}");
            outputs.push(out);
        }
        assert!(outputs.windows(2).all(|w| w[0] == w[1]));
    }

    #[test]
    fn errors_name_the_option() {
        let ctx = test_ctx(PathBuf::from("/nonexistent"));
        for (args, named) in [
            (&["--frobnicate"][..], "'--frobnicate'"),
            (&["-x"], "'-x'"),
            (&["-P"], "'-P'"),
            (&["--port"], "'--port'"),
            (&["--json=yes"], "'--json'"),
            (&["-P", "1", "--listen", "nowhere"], "--listen: \"nowhere\""),
            (&["-H", "a b"], "-H: \"a b\""),
            (&["--colour", "sometimes"], "--colour: \"sometimes\""),
            (&["stray"], "\"stray\""),
        ] {
            let (code, out, err) = run_with(args, &ctx);
            assert_eq!((code, out.as_str()), (2, ""), "{args:?}");
            assert!(err.contains(named), "{args:?}: {err}");
            assert!(
                err.ends_with("Try 'vpcd-config --help' for more information.\n"),
                "{err}"
            );
        }
    }

    #[test]
    fn colours() {
        let mut ctx = test_ctx(PathBuf::from("/nonexistent"));
        ctx.stdout_is_terminal = true;
        let (_, out, _) = run_with(&["--port", "1"], &ctx);
        assert!(out.contains(ANSI_BLACK_ON_WHITE), "colours on a terminal");
        ctx.no_color = true;
        let (_, out, _) = run_with(&["--port", "1"], &ctx);
        assert!(!out.contains('\x1b'), "NO_COLOR");
        let (_, out, _) = run_with(&["--port", "1", "--color", "always"], &ctx);
        assert!(out.contains(ANSI_BLACK_ON_WHITE));
    }
}
