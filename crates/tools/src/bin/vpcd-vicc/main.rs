//! `vpcd-vicc`: a built-in virtual ISO 7816-4 card for the vpcd reader, like
//! vsmartcard's `vicc` without Python, or (`--relay`) a relay to a real card in a local
//! PC/SC reader. The card itself is `card`, the relay `crate::card::relay`; `keypad`
//! is `--pinpad`, the keypad of a vpcd-rs PIN pad reader (docs/PINPAD.md); `control`
//! the live removal and insertion, `hint` the advice on a failed connection.

#![forbid(unsafe_code)]

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use crate::card::atr::{self, to_hex};
use crate::card::fs::{self, Df};
use crate::card::relay::{self, PowerOff, Relay};
use crate::card::server::{self, DEFAULT_PORT};
use crate::card::{Card, VirtualCard};
use crate::keypad::{Keypad, WithKeypad};
use vpcd_protocol::tls::{Fingerprint, Pairing, VpcdsUri};
use vpcd_protocol::vpcd as protocol;
use vpcd_tools::cli;

mod card;
mod control;
mod hint;
mod keypad;
mod secure;

const FIRST_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

fn help() -> String {
    format!(
        "\
vpcd-vicc {version}: a virtual ISO 7816-4 smart card for the vpcd reader

Usage: vpcd-vicc [options]
       vpcd-vicc --relay READER [options]
       vpcd-vicc --list-readers

Connects to a slot of the vpcd driver in pcscd, like vsmartcard's vicc, and is
the card in that slot until the driver closes the connection: the built-in card,
or with --relay the real card in a PC/SC reader of this machine.

Options:
  -H, --host HOST      vpcd to connect to (default: localhost; also --hostname)
  -P, --port PORT      slot port (default: {port}; slot N listens on {port}+N)
  -l, --loop           reconnect whenever the connection ends or fails
  -r, --reversed       let vpcd connect instead (DEVICENAME HOST:PORT in vpcd)
      --listen ADDR    address to listen on with -r (default: the -H host if
                       given, else :: with a fallback to 0.0.0.0)
      --atr HEX        Answer To Reset, e.g. '3B 80 80 01 01' (default:
                       {atr})
      --fs DIR         file system from DIR: files named XXXX (4 hex digits) are
                       EFs in the MF, subdirectories XXXX/ are DFs
      --relay READER   relay the card in this PC/SC reader (its name, its number
                       in --list-readers, or a unique part of its name) instead
                       of being the built-in card; an empty READER or '?' lists
                       the readers
      --power-off MODE what a power off from vpcd does to the relayed card:
                       unpower (default), reset or leave
      --pinpad         be the keypad of a PIN pad reader (vpcd-rs with
                       /pinpad=yes): say so when connecting, and enter the PINs
                       the reader asks for (docs/PINPAD.md). Not for the C vpcd
      --pin-entry LIST the PINs to enter, instead of asking on the terminal:
                       comma-separated digits, cancel or never (times out); each
                       PIN asked for takes the next, the last repeats (default:
                       $VPCD_PIN if set)
      --card-pin PIN   the built-in card's PIN (default: {pin})
      --connect URI    a secure reader (tls=yes): vpcds://HOST:PORT?fp=KEY, as
                       vpcd-config tls show prints it; sets -H and -P and pins
                       the reader's key (docs/TLS.md); with &pair=PORT-TOKEN
                       (vpcd-config tls pair) it first pairs: the token makes
                       the reader trust this card's key, once
      --tls-peer KEY   speak TLS 1.3 and pin the reader's key (its SHA-256
                       fingerprint, vpcd-config tls show); with -r too
      --tls-key FILE   this card's key pair, made on first use (default:
                       ~/.config/vpcd-vicc/key.pem); its fingerprint is printed
                       for the reader's trust list
  -L, --list-readers   list the PC/SC readers of this machine and their cards
  -v, --verbose        trace APDUs to stderr (> command, < response)
  -h, --help           this help
  -V, --version        version

Relay mode (--relay): power on and reset from vpcd connect to the card (shared,
T=0 or T=1) or reset it, GET ATR answers the card's ATR, power off disconnects,
and every APDU goes to the card with SCardTransmit, extended ones included. If
the card is gone, APDUs answer 6F 00 (and the reason goes to stderr). The PC/SC
side is the local pcscd (PCSCLITE_CSOCK_NAME selects another one).

The card (built-in file system):
  3F00 MF
    2F00 EF.DIR, 2F01 EF.ATR
    5000 DF named F0 76 70 63 64 01
      5001 EF \"Hello from vpcd-vicc\"
  00 A4  SELECT by id (P1 00-03), DF name (04), path (08/09);
         P2 0C: no data, 04: FCP, 00: FCI
  00 B0  READ BINARY at offset P1P2, short or extended Le
  00 84  GET CHALLENGE (pseudo-random, not for cryptographic use)
  80 EE  ECHO: returns the data field, short or extended (up to 65526 bytes)
  00 20  VERIFY the PIN, reference 81: 90 00, 63 Cx (x tries left of 3), 69 83
         blocked; no data: 90 00 if verified, else 63 Cx; P1 FF: unverify
  00 24  CHANGE REFERENCE DATA, reference 81: P1 00 current PIN then new PIN,
         P1 01 new PIN alone (PIN verified); PINs may be padded with FF

Examples:
  vpcd-vicc -v                  the card in slot 0 of the local vpcd, traced
  vpcd-vicc -P {port2} -l         the card in slot 1, back after pcscd restarts
  vpcd-vicc -r -P {port}         reversed: vpcd has DEVICENAME host:{port}
  vpcd-vicc --fs ./card         the files of ./card instead of the built-in ones
  vpcd-vicc -L                  the local readers, numbered
  vpcd-vicc --relay 0 -H pc.example -l
                                the card in local reader 0, in slot 0 of the vpcd
                                on pc.example, whenever that vpcd is up
  opensc-tool -s '00 A4 04 0C 06 F0 76 70 63 64 01' -s '00 A4 02 0C 02 50 01' \\
              -s '00 B0 00 00 00'
  opensc-tool -s '80 EE 00 00 04 DE AD BE EF'
  pcsc_scan

Exit status: 0 when vpcd closed the connection, 1 on errors, 2 on bad usage.
",
        version = env!("CARGO_PKG_VERSION"),
        port = DEFAULT_PORT,
        port2 = DEFAULT_PORT + 1,
        atr = to_hex(&atr::default_atr()),
        pin = card::DEFAULT_PIN,
    )
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Options {
    host: Option<String>,
    port: u16,
    run_loop: bool,
    reversed: bool,
    listen: Option<String>,
    atr: Option<String>,
    fs: Option<PathBuf>,
    verbose: bool,
    /// The reader to relay (`--relay`), as given.
    relay: Option<String>,
    power_off: Option<PowerOff>,
    /// The control socket (`--control`) for live removal and insertion.
    control: Option<PathBuf>,
    /// Be a PIN pad's keypad (`--pinpad`).
    pinpad: bool,
    /// The scripted PIN entries (`--pin-entry`), as given.
    pin_entry: Option<String>,
    /// The built-in card's PIN (`--card-pin`).
    card_pin: Option<String>,
    /// The pinned reader key of a secure link (`--connect`, `--tls-peer`).
    tls_peer: Option<Fingerprint>,
    /// This card's key pair (`--tls-key`).
    tls_key: Option<PathBuf>,
    /// A one-time pairing offer (`--connect` with `pair=`).
    pair: Option<Pairing>,
}

// Made once per run: the size of its largest variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, PartialEq, Eq)]
enum Parsed {
    Run(Options),
    ListReaders,
    Help,
    Version,
}

/// Parses the command line (without the program name), with the conventions of
/// [`vpcd_tools::cli`]: `-P 1`, `-P1`, `--port 1`, `--port=1`, bundled flags (`-lv`).
fn parse_args<I>(args: I) -> Result<Parsed, String>
where
    I: IntoIterator,
    I::Item: Into<OsString>,
{
    use lexopt::Arg::{Long, Short, Value};
    let mut o = Options {
        host: None,
        port: DEFAULT_PORT,
        run_loop: false,
        reversed: false,
        listen: None,
        atr: None,
        fs: None,
        verbose: false,
        relay: None,
        power_off: None,
        control: None,
        pinpad: false,
        pin_entry: None,
        card_pin: None,
        tls_peer: None,
        tls_key: None,
        pair: None,
    };
    let mut parser = lexopt::Parser::from_args(args);
    while let Some(arg) = parser.next().map_err(|e| e.to_string())? {
        let name = cli::option_name(&arg);
        match arg {
            Short('h') | Long("help") => return Ok(Parsed::Help),
            Short('V') | Long("version") => return Ok(Parsed::Version),
            Short('L') | Long("list-readers") => return Ok(Parsed::ListReaders),
            Short('l') | Long("loop") => o.run_loop = true,
            Short('r') | Long("reversed") => o.reversed = true,
            Short('v') | Long("verbose") => o.verbose = true,
            // --hostname: vsmartcard's vicc spells it so.
            Short('H') | Long("host" | "hostname") => {
                o.host = Some(cli::value(&mut parser, &name)?)
            }
            Short('P') | Long("port") => {
                let value = cli::value(&mut parser, &name)?;
                o.port = value
                    .parse()
                    .map_err(|_| format!("{name}: bad port \"{value}\": expected 0 to 65535"))?
            }
            Long("listen") => o.listen = Some(cli::value(&mut parser, &name)?),
            Long("pinpad") => o.pinpad = true,
            Long("pin-entry") => {
                let value = cli::value(&mut parser, &name)?;
                keypad::parse_entries(&value).map_err(|e| format!("{name}: {e}"))?;
                o.pin_entry = Some(value)
            }
            Long("card-pin") => o.card_pin = Some(cli::value(&mut parser, &name)?),
            Long("connect") => {
                let uri = VpcdsUri::parse(&cli::value(&mut parser, &name)?)
                    .map_err(|e| format!("{name}: {e}"))?;
                o.host = Some(uri.host);
                o.port = uri.port;
                o.tls_peer = Some(uri.fingerprint);
                o.pair = uri.pair;
            }
            Long("tls-peer") => {
                let value = cli::value(&mut parser, &name)?;
                o.tls_peer = Some(Fingerprint::parse(&value).map_err(|e| format!("{name}: {e}"))?)
            }
            Long("tls-key") => o.tls_key = Some(PathBuf::from(cli::os_value(&mut parser)?)),
            Long("atr") => o.atr = Some(cli::value(&mut parser, &name)?),
            Long("fs") => o.fs = Some(PathBuf::from(cli::os_value(&mut parser)?)),
            Long("control") => o.control = Some(PathBuf::from(cli::os_value(&mut parser)?)),
            Long("relay") => {
                // `--relay` alone, at the end: list the readers to choose from.
                o.relay = Some(match parser.value() {
                    Ok(value) => cli::text(&name, value)?,
                    Err(lexopt::Error::MissingValue { .. }) => String::new(),
                    Err(e) => return Err(e.to_string()),
                })
            }
            Long("power-off") => {
                let value = cli::value(&mut parser, &name)?;
                o.power_off = Some(PowerOff::parse(&value).ok_or_else(|| {
                    format!("bad {name} \"{value}\": expected unpower, reset or leave")
                })?)
            }
            Short(_) | Long(_) | Value(_) => return Err(arg.unexpected().to_string()),
        }
    }
    if o.relay
        .as_deref()
        .is_some_and(|r| r.trim().is_empty() || r == "?")
    {
        return Ok(Parsed::ListReaders);
    }
    if o.relay.is_some() {
        if o.atr.is_some() || o.fs.is_some() {
            return Err("--atr and --fs are for the built-in card, not with --relay".into());
        }
        if o.card_pin.is_some() {
            return Err("--card-pin is for the built-in card, not with --relay".into());
        }
    } else if o.power_off.is_some() {
        return Err("--power-off only makes sense with --relay".into());
    }
    if o.pin_entry.is_some() && !o.pinpad {
        return Err("--pin-entry only makes sense with --pinpad".into());
    }
    if o.tls_key.is_some() && o.tls_peer.is_none() {
        return Err("--tls-key goes with --connect or --tls-peer".into());
    }
    if o.port == 0 && !o.reversed {
        return Err("port 0 only makes sense with --reversed".into());
    }
    Ok(Parsed::Run(o))
}

/// Builds the card from the options: ATR and file system.
fn make_card(o: &Options) -> Result<Card, String> {
    let atr = match &o.atr {
        None => atr::default_atr(),
        Some(text) => {
            let atr = atr::parse_hex(text).map_err(|e| format!("--atr: {e}"))?;
            protocol::check_atr(&atr).map_err(|e| format!("--atr: {e}"))?;
            if let Err(problem) = atr::check(&atr) {
                eprintln!("vpcd-vicc: warning: --atr {}: {problem}", to_hex(&atr));
            }
            atr
        }
    };
    let mf = match &o.fs {
        None => Df::builtin(),
        Some(dir) => {
            let (mf, skipped) = fs::load_dir(dir).map_err(|e| format!("--fs: {e}"))?;
            for path in skipped {
                eprintln!(
                    "vpcd-vicc: ignoring {} (not a file id of 4 hex digits)",
                    path.display()
                );
            }
            mf
        }
    };
    let card = Card::new(atr, mf);
    match &o.card_pin {
        Some(pin) => card.with_pin(pin).map_err(|e| format!("--card-pin: {e}")),
        None => Ok(card),
    }
}

/// The keypad `--pinpad` asks for: scripted by `--pin-entry` or `VPCD_PIN`, else a
/// prompt on the terminal.
fn make_keypad(o: &Options) -> Result<Keypad, String> {
    match &o.pin_entry {
        Some(list) => Ok(Keypad::scripted(keypad::parse_entries(list)?)),
        None => match std::env::var("VPCD_PIN") {
            Ok(list) => keypad::parse_entries(&list)
                .map(Keypad::scripted)
                .map_err(|e| format!("VPCD_PIN: {e}")),
            Err(_) => Ok(Keypad::prompt()),
        },
    }
}

/// Runs `card`, with the keypad if `--pinpad`.
fn run_card<C: VirtualCard>(o: &Options, card: C) -> ExitCode {
    if !o.pinpad {
        let mut card = card;
        return run(o, &mut card);
    }
    match make_keypad(o) {
        Ok(keypad) => {
            eprintln!("vpcd-vicc: PIN pad keypad (for a vpcd-rs reader with /pinpad=yes)");
            run(o, &mut WithKeypad { card, keypad })
        }
        Err(e) => {
            eprintln!("{}", cli::usage_error("vpcd-vicc", e));
            ExitCode::from(cli::USAGE)
        }
    }
}

/// The secure link, if `--connect` or `--tls-peer` asked for one.
fn make_secure(o: &Options) -> Result<Option<secure::Secure>, String> {
    let Some(pinned) = o.tls_peer else {
        return Ok(None);
    };
    let path = o.tls_key.clone().unwrap_or_else(secure::default_key_path);
    let secure = secure::Secure::new(&path, pinned, o.pair.is_some())?;
    if let Some(pairing) = &o.pair {
        // Once, before the first connection: a token works once.
        let host = o.host.as_deref().unwrap_or("localhost");
        match secure.pair(host, pairing) {
            Ok(()) => eprintln!(
                "vpcd-vicc: paired with {host}:{}: the reader trusts this card's key now",
                pairing.port
            ),
            Err(e) => return Err(e),
        }
    }
    Ok(Some(secure))
}

fn run_reversed<C: VirtualCard>(o: &Options, card: &mut C) -> Result<(), String> {
    let secure = make_secure(o)?;
    let addr = o.listen.as_deref().or(o.host.as_deref());
    let listener = server::listen(addr, o.port).map_err(|e| format!("cannot listen: {e}"))?;
    let local = listener
        .local_addr()
        .map_err(|e| format!("cannot listen: {e}"))?;
    eprintln!("vpcd-vicc: waiting for vpcd on {local}");
    match &secure {
        Some(secure) => secure::serve_listener(secure, &listener, card, o.verbose),
        None => server::serve_listener(&listener, card, o.verbose, None),
    }
    .map_err(|e| format!("cannot accept connections: {e}"))
}

fn run_connect<C: VirtualCard>(o: &Options, card: &mut C) -> Result<(), String> {
    let host = o.host.as_deref().unwrap_or("localhost");
    match make_secure(o)? {
        // The secure link: the handshake, then the same frames inside TLS.
        Some(secure) => connect_loop(o, card, host, " over TLS 1.3, reader key pinned", || {
            server::connect(host, o.port)
                .and_then(|tcp| secure.connect(tcp))
                .map(secure::EndAsEof)
        }),
        None => connect_loop(o, card, host, "", || server::connect(host, o.port)),
    }
}

/// Connects with `connect` and serves the card, again and again with `--loop`.
fn connect_loop<C, S, F>(
    o: &Options,
    card: &mut C,
    host: &str,
    how: &str,
    mut connect: F,
) -> Result<(), String>
where
    C: VirtualCard,
    S: control::Link,
    F: FnMut() -> std::io::Result<S>,
{
    let mut backoff = FIRST_BACKOFF;
    let mut reported = false;
    loop {
        control::wait_inserted();
        match connect() {
            Ok(mut stream) => {
                eprintln!("vpcd-vicc: connected to vpcd at {host}:{}{how}", o.port);
                reported = false;
                backoff = FIRST_BACKOFF;
                card.connected();
                let result = control::serve(&mut stream, card, o.verbose, &mut connect);
                match (result, o.run_loop) {
                    (Ok(()), false) => {
                        eprintln!("vpcd-vicc: vpcd closed the connection");
                        return Ok(());
                    }
                    (Err(e), false) => return Err(format!("connection to vpcd failed: {e}")),
                    (Ok(()), true) => eprintln!("vpcd-vicc: vpcd closed the connection"),
                    (Err(e), true) => eprintln!("vpcd-vicc: connection to vpcd failed: {e}"),
                }
            }
            Err(e) if !o.run_loop => return Err(hint::connect_failed(host, o.port, &e)),
            Err(e) => {
                if !reported {
                    let message = hint::connect_failed(host, o.port, &e);
                    eprintln!("vpcd-vicc: {message}\n  Retrying.");
                    reported = true;
                }
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        }
        std::thread::sleep(FIRST_BACKOFF);
    }
}

/// Opens the relay to the reader `spec` names and connects to its card, so that errors
/// show before vpcd asks for the card.
fn make_relay(spec: &str, o: &Options) -> Result<Relay, String> {
    let readers = relay::list_readers()?;
    let name = relay::resolve_reader(spec, &readers)?;
    let mut relay = Relay::open(&name, o.power_off.unwrap_or_default())?;
    if relay.power_up() {
        eprintln!(
            "vpcd-vicc: relaying the card in \"{name}\", ATR {}",
            to_hex(relay.atr())
        );
    } else {
        eprintln!(
            "vpcd-vicc: relaying the reader \"{name}\", which has no usable card yet: \
             vpcd's power on will try again"
        );
    }
    Ok(relay)
}

/// `--list-readers`: the readers on stdout.
fn list_readers() -> ExitCode {
    match relay::list_readers() {
        Ok(readers) => {
            print!("{}", relay::format_readers(&readers));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("vpcd-vicc: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run<C: VirtualCard>(o: &Options, card: &mut C) -> ExitCode {
    let result = if o.reversed {
        run_reversed(o, card)
    } else {
        run_connect(o, card)
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vpcd-vicc: {e}");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    if args.first().is_some_and(|a| a == "ctl") {
        let rest: Vec<String> = args[1..]
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        return control::ctl_main(&rest);
    }
    let o = match parse_args(args) {
        Ok(Parsed::Run(o)) => o,
        Ok(Parsed::ListReaders) => return list_readers(),
        Ok(Parsed::Help) => {
            print!("{}{}", help(), control::HELP);
            return ExitCode::SUCCESS;
        }
        Ok(Parsed::Version) => {
            println!("vpcd-vicc {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("{}", cli::usage_error("vpcd-vicc", e));
            return ExitCode::from(cli::USAGE);
        }
    };
    let _control = match control::start(o.control.clone()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("vpcd-vicc: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(spec) = &o.relay {
        return match make_relay(spec, &o) {
            Ok(relay) => run_card(&o, relay),
            Err(e) => {
                eprintln!("vpcd-vicc: {e}");
                ExitCode::FAILURE
            }
        };
    }
    match make_card(&o) {
        Ok(card) => {
            eprintln!("vpcd-vicc: card ATR {}", to_hex(card.atr()));
            run_card(&o, card)
        }
        Err(e) => {
            eprintln!("{}", cli::usage_error("vpcd-vicc", e));
            ExitCode::from(cli::USAGE)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Parsed, String> {
        parse_args(args.iter().map(|s| s.to_string()))
    }

    fn run(args: &[&str]) -> Options {
        match parse(args) {
            Ok(Parsed::Run(o)) => o,
            other => panic!("{args:?}: {other:?}"),
        }
    }

    #[test]
    fn defaults() {
        let o = run(&[]);
        assert_eq!(o.host, None);
        assert_eq!(o.port, 35963);
        assert!(!o.run_loop && !o.reversed && !o.verbose);
    }

    #[test]
    fn option_forms() {
        let o = run(&[
            "-H",
            "::1",
            "-P35964",
            "-lv",
            "--atr=3B 00",
            "--fs",
            "/tmp/x",
        ]);
        assert_eq!(o.host.as_deref(), Some("::1"));
        assert_eq!(o.port, 35964);
        assert!(o.run_loop && o.verbose);
        assert_eq!(o.atr.as_deref(), Some("3B 00"));
        assert_eq!(o.fs, Some(PathBuf::from("/tmp/x")));
        assert_eq!(o.control, None);
        assert_eq!(run(&["--control", "/x"]).control, Some(PathBuf::from("/x")));
        assert_eq!(run(&["--control=/y"]).control, Some(PathBuf::from("/y")));
        let o = run(&[
            "--hostname=h",
            "--port",
            "1",
            "--reversed",
            "--listen",
            "127.0.0.1",
        ]);
        assert_eq!(o.host.as_deref(), Some("h"));
        assert!(o.reversed);
        assert_eq!(o.listen.as_deref(), Some("127.0.0.1"));
        assert_eq!(run(&["-r", "-P", "0"]).port, 0);
    }

    #[test]
    fn help_version_and_errors() {
        assert_eq!(parse(&["-h"]), Ok(Parsed::Help));
        assert_eq!(parse(&["-vh"]), Ok(Parsed::Help));
        assert_eq!(parse(&["--version"]), Ok(Parsed::Version));
        assert!(parse(&["-x"]).is_err());
        assert!(parse(&["-P"]).is_err());
        assert!(parse(&["-P", "65536"]).is_err());
        assert!(parse(&["-P", "0"]).is_err());
        assert!(parse(&["--loop=1"]).is_err());
        assert!(parse(&["stray"]).is_err());
        assert!(help().contains("80 EE"));
    }

    #[test]
    fn unified_spellings() {
        // The spellings vpcd-config shares: -H/--host (and --hostname), -P/--port, --listen.
        for args in [
            &["-H", "h", "-P", "1", "-r", "--listen", "::1"][..],
            &["--host", "h", "--port", "1", "--reversed", "--listen=::1"],
            &["--hostname=h", "-P1", "-r", "--listen", "::1"],
            &["-Hh", "--port=1", "-r", "--listen", "::1"],
        ] {
            let o = run(args);
            assert_eq!(o.host.as_deref(), Some("h"), "{args:?}");
            assert_eq!((o.port, o.reversed), (1, true), "{args:?}");
            assert_eq!(o.listen.as_deref(), Some("::1"), "{args:?}");
        }
        // A value may start with '-', as with getopt.
        assert_eq!(run(&["--atr", "-1"]).atr.as_deref(), Some("-1"));
    }

    #[test]
    fn errors_name_the_option() {
        for (args, named) in [
            (&["--bogus"][..], "'--bogus'"),
            (&["-x"], "'-x'"),
            (&["-lx"], "'-x'"),
            (&["--port"], "'--port'"),
            (&["-P"], "'-P'"),
            (&["--port", "x"], "--port: bad port \"x\""),
            (&["-P", "65536"], "-P: bad port"),
            (&["--loop=1"], "'--loop'"),
            (
                &["--power-off=eject", "--relay=x"],
                "bad --power-off \"eject\"",
            ),
            (&["stray"], "\"stray\""),
        ] {
            let e = parse(args).unwrap_err();
            assert!(e.contains(named), "{args:?}: {e}");
        }
    }

    #[test]
    fn relay_options() {
        let o = run(&["--relay", "Virtual PCD 00 00", "-P", "35964", "-v"]);
        assert_eq!(o.relay.as_deref(), Some("Virtual PCD 00 00"));
        assert_eq!((o.port, o.verbose, o.power_off), (35964, true, None));
        let o = run(&["--relay=1", "--power-off", "leave", "-r", "-P", "0"]);
        assert_eq!(o.relay.as_deref(), Some("1"));
        assert_eq!(o.power_off, Some(PowerOff::Leave));
        for list in [
            &["--relay", ""][..],
            &["--relay=?"],
            &["--relay"],
            &["-L"],
            &["--list-readers"],
            &["-vL"],
        ] {
            assert_eq!(parse(list), Ok(Parsed::ListReaders), "{list:?}");
        }
        assert!(parse(&["--relay", "x", "--atr", "3B 00"]).is_err());
        assert!(parse(&["--relay", "x", "--fs", "/tmp"]).is_err());
        assert!(parse(&["--power-off", "leave"]).is_err());
        assert!(parse(&["--relay", "x", "--card-pin", "1234"]).is_err());
        assert!(parse(&["--relay", "x", "--power-off", "eject"]).is_err());
        assert!(help().contains("--relay READER"));
    }

    #[test]
    fn pinpad_options() {
        let o = run(&["--pinpad", "--pin-entry", "1234,cancel", "--card-pin=1234"]);
        assert!(o.pinpad);
        assert_eq!(o.pin_entry.as_deref(), Some("1234,cancel"));
        assert!(make_card(&o).is_ok());
        assert!(make_keypad(&o).is_ok());
        assert!(parse(&["--pin-entry", "1234"]).is_err());
        assert!(parse(&["--pinpad", "--pin-entry", "12x"]).is_err());
        let o = run(&["--card-pin", "12x"]);
        assert!(make_card(&o).is_err());
        assert!(help().contains("--pinpad"));
    }

    #[test]
    fn secure_link_options() {
        let fp = "8e02000000000000000000000000000000000000000000000000000000000051";
        let o = run(&["--connect", &format!("vpcds://[fd00::7]:35964?fp={fp}")]);
        assert_eq!((o.host.as_deref(), o.port), (Some("fd00::7"), 35964));
        assert_eq!(o.tls_peer.unwrap().to_string(), fp);
        assert_eq!(o.pair, None);
        let token = "0123456789abcdef0123456789abcdef";
        let o = run(&[
            "--connect",
            &format!("vpcds://h:1?fp={fp}&pair=40000-{token}"),
        ]);
        let pair = o.pair.unwrap();
        assert_eq!(
            (pair.port, pair.token.to_string()),
            (40000, token.to_owned())
        );
        let o = run(&["-r", "-P", "4000", "--tls-peer", fp, "--tls-key", "/k.pem"]);
        assert_eq!(o.tls_peer.unwrap().to_string(), fp);
        assert_eq!(o.tls_key, Some(PathBuf::from("/k.pem")));
        let o = run(&["--relay", "0", "--connect", &format!("vpcds://h?fp={fp}")]);
        assert_eq!((o.port, o.relay.as_deref()), (35963, Some("0")));
        for (args, named) in [
            (&["--connect", "vpcd://h:1"][..], "--connect"),
            (&["--connect", "vpcds://h:1"], "fp="),
            (
                &["--connect", &format!("vpcds://h:1?fp={fp}&pair=1-0123")],
                "32 hex digits",
            ),
            (&["--tls-peer", "abc"], "--tls-peer"),
            (&["--tls-key", "/k.pem"], "--tls-key goes with"),
        ] {
            let e = parse(args).unwrap_err();
            assert!(e.contains(named), "{args:?}: {e}");
        }
        assert!(help().contains("--connect URI"));
    }

    #[test]
    fn card_from_options() {
        let mut o = run(&["--atr", "3b:80:80:01:01"]);
        assert_eq!(make_card(&o).unwrap().atr(), [0x3B, 0x80, 0x80, 0x01, 0x01]);
        o.atr = Some("00 11".into());
        assert!(make_card(&o).is_err());
        o.atr = Some("3B 0".into());
        assert!(make_card(&o).is_err());
        o.atr = None;
        o.fs = Some(PathBuf::from("/nonexistent/vpcd-vicc"));
        assert!(make_card(&o).is_err());
    }
}
