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

use std::ffi::OsString;
use std::io::{self, IsTerminal, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use ifdvpcd::config::{Endpoint, Protocol, ReaderConfig, DEFAULT_PORT, DEFAULT_SLOTS};
use qrcode::render::unicode::Dense1x2;
use qrcode::{EcLevel, QrCode};

/// Where pcscd looks for reader entries (its PCSCLITE_CONFIG_DIR on Debian and most
/// distributions).
const DEFAULT_CONFIG: &str = "/etc/reader.conf.d";
/// The file name of our driver in a LIBPATH.
const DRIVER_FILE: &str = "libifdvpcd.so";
/// The friendly name of the C project's reader.conf entry, for the readers we make up.
const DEFAULT_NAME: &str = "Virtual PCD";

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
  -p, --port PORT     describe a reader listening on PORT (slot n on PORT+n) instead
                      of reading the configuration; decimal or 0x hex
  -s, --slots N       number of slots with --port [default: 2]
  -l, --listen ADDR   the address it listens on with --port [default: 0.0.0.0, every
                      IPv4 address; :: for IPv6 and IPv4]
      --host HOST     put HOST (a DNS name, or the address of a router forwarding
                      the port) in the URLs instead of this machine's addresses
      --no-qr         print no QR codes
      --json          print a JSON list of the slots instead of text
      --color WHEN    draw QR codes with terminal colours: auto, always or never
                      [default: auto, when stdout is a terminal and NO_COLOR unset]
      --invert        without colours, draw QR codes for light text on a dark
                      background
  -h, --help          print this help
  -V, --version       print the version

The addresses are those of this machine's network interfaces (getifaddrs): running
interfaces first, link-local addresses only when there is nothing else, loopback last.
Nothing is sent over the network.

Exit status: 0 on success, 1 when the configuration cannot be read or none of its vpcd
readers is usable, 2 on a usage error.
";

fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
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

fn parse_args(args: &[OsString]) -> Result<Command, String> {
    let mut config: Option<PathBuf> = None;
    let mut port: Option<String> = None;
    let mut slots: Option<String> = None;
    let mut listen: Option<IpAddr> = None;
    let mut host: Option<String> = None;
    let mut qr = true;
    let mut json = false;
    let mut color = ColorWhen::Auto;
    let mut invert = false;

    let mut args = args.iter();
    while let Some(arg) = args.next() {
        let text = arg
            .to_str()
            .ok_or_else(|| format!("unexpected argument {arg:?}"))?;
        // --name=value and --name value are both accepted.
        let (name, inline) = match text.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n, Some(v)),
            _ => (text, None),
        };
        let mut value = |what: &str| -> Result<OsString, String> {
            match inline {
                Some(v) => Ok(OsString::from(v)),
                None => args
                    .next()
                    .cloned()
                    .ok_or_else(|| format!("{name} needs {what}")),
            }
        };
        let utf8 = |v: OsString, what: &str| -> Result<String, String> {
            v.into_string()
                .map_err(|v| format!("{name}: {v:?} is not {what}"))
        };
        match name {
            "-h" | "--help" => return Ok(Command::Help),
            "-V" | "--version" => return Ok(Command::Version),
            "-c" | "--config" => config = Some(PathBuf::from(value("a path")?)),
            "-p" | "--port" => port = Some(utf8(value("a port")?, "a port")?),
            "-s" | "--slots" => slots = Some(utf8(value("a number")?, "a number")?),
            "-l" | "--listen" => {
                let v = utf8(value("an address")?, "an address")?;
                let ip = unbracket(&v)
                    .parse()
                    .map_err(|_| format!("{name}: \"{v}\" is not an IPv4 or IPv6 address"))?;
                listen = Some(ip);
            }
            "--host" => {
                let v = utf8(value("a host name or address")?, "a host name")?;
                let v = unbracket(v.trim()).to_owned();
                if v.is_empty() || v.contains(|c: char| c.is_whitespace() || "/[]@?#".contains(c)) {
                    return Err(format!("{name}: \"{v}\" is not a host name or address"));
                }
                host = Some(v);
            }
            "--color" | "--colour" => {
                color = match utf8(value("auto, always or never")?, "a word")?.as_str() {
                    "auto" => ColorWhen::Auto,
                    "always" | "yes" => ColorWhen::Always,
                    "never" | "no" => ColorWhen::Never,
                    other => {
                        return Err(format!("{name}: \"{other}\" is not auto, always or never"))
                    }
                }
            }
            "--no-qr" if inline.is_none() => qr = false,
            "--json" if inline.is_none() => json = true,
            "--invert" if inline.is_none() => invert = true,
            _ => return Err(format!("unknown argument \"{text}\"")),
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
// reader.conf, read the way pcscd's lexer reads it

/// One complete entry of a reader.conf file.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ConfEntry {
    /// Line of the entry's first key.
    line: usize,
    /// The FRIENDLYNAME, double quotes removed as pcscd does.
    friendly_name: String,
    /// The DEVICENAME token as pcscd hands it to the driver (quotes kept).
    device_name: Option<String>,
    /// The LIBPATH token (pcscd strips no quotes from it).
    lib_path: String,
    /// The CHANNELID token.
    channel_id: Option<String>,
}

/// Something in a reader.conf file that pcscd complains about.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ConfProblem {
    line: usize,
    message: String,
    /// pcscd logs a `tok_error` and refuses to start with this file.
    fatal: bool,
}

impl ConfProblem {
    fn text(&self) -> String {
        if self.fatal {
            format!(
                "line {}: {}: pcscd will not start with this file",
                self.line, self.message
            )
        } else {
            format!("line {}: {}", self.line, self.message)
        }
    }
}

#[derive(Debug, Default)]
struct ConfParse {
    entries: Vec<ConfEntry>,
    problems: Vec<ConfProblem>,
}

/// The characters pcscd accepts in an unquoted value.
fn is_word_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "=\\/-._@:".contains(c)
}

/// The key/value state machine of pcscd's `evaluatetoken()`.
#[derive(Default)]
struct ConfState {
    /// The pending key: its text, its line as pcscd counts, its real line.
    key: Option<(String, usize, usize)>,
    first_line: Option<usize>,
    friendly_name: Option<String>,
    device_name: Option<String>,
    lib_path: Option<String>,
    channel_id: Option<String>,
    out: ConfParse,
}

impl ConfState {
    fn problem(&mut self, line: usize, message: String, fatal: bool) {
        self.out.problems.push(ConfProblem {
            line,
            message,
            fatal,
        });
    }

    fn token(&mut self, token: String, lex_line: usize, line: usize) {
        let Some((key, key_lex_line, key_line)) = self.key.take() else {
            self.key = Some((token, lex_line, line));
            return;
        };
        if key_lex_line != lex_line {
            self.problem(key_line, format!("{key} has no value on its line"), true);
            self.key = Some((token, lex_line, line));
            return;
        }
        let field = match key.as_str() {
            "FRIENDLYNAME" => &mut self.friendly_name,
            "DEVICENAME" => &mut self.device_name,
            "LIBPATH" => &mut self.lib_path,
            "CHANNELID" => &mut self.channel_id,
            _ => {
                self.problem(key_line, format!("unknown key \"{key}\""), true);
                return;
            }
        };
        if field.is_some() {
            // pcscd keeps the key pending: the next token on this line is its value again.
            self.problem(key_line, format!("{key} given twice in one entry"), true);
            self.key = Some((key, key_lex_line, key_line));
            return;
        }
        *field = Some(if key == "FRIENDLYNAME" {
            token.replace('"', "").trim_end_matches('\n').to_owned()
        } else {
            token
        });
        self.first_line.get_or_insert(key_line);

        if self.friendly_name.is_some()
            && self.lib_path.is_some()
            && (self.device_name.is_some() || self.channel_id.is_some())
        {
            let entry = ConfEntry {
                line: self.first_line.take().unwrap_or(key_line),
                friendly_name: self.friendly_name.take().unwrap_or_default(),
                device_name: self.device_name.take(),
                lib_path: self.lib_path.take().unwrap_or_default(),
                channel_id: self.channel_id.take(),
            };
            self.out.entries.push(entry);
        }
    }

    fn finish(mut self) -> ConfParse {
        if let Some((key, _, line)) = self.key.take() {
            self.problem(line, format!("{key} has no value"), false);
        }
        // A DEVICENAME or CHANNELID left after a complete entry is normal: the C
        // project's file has a CHANNELID after the LIBPATH that completes its entry.
        if let (Some(line), true) = (
            self.first_line,
            self.friendly_name.is_some() || self.lib_path.is_some(),
        ) {
            self.problem(
                line,
                "incomplete entry: it needs FRIENDLYNAME, LIBPATH and DEVICENAME or \
                 CHANNELID; pcscd ignores it"
                    .into(),
                false,
            );
        }
        self.out
    }
}

/// Reads one reader.conf file as pcscd does: tokens are words of letters, digits and
/// `= \ / - . _ @ :`, or quoted strings (`"..."` or `'...'`, ended by the quote or the
/// end of the line); `#` starts a comment; a key and its value share a line; any
/// other character is an error that makes pcscd refuse to start.
fn parse_reader_conf(text: &str) -> ConfParse {
    let chars: Vec<char> = text.chars().collect();
    let mut st = ConfState::default();
    let mut i = 0;
    // The line as pcscd counts it (a newline inside an unterminated quote is not
    // counted), and the real one, for messages.
    let mut lex_line = 1;
    let mut line = 1;
    while let Some(&c) = chars.get(i) {
        match c {
            '#' => {
                while chars.get(i).is_some_and(|&c| c != '\n') {
                    i += 1;
                }
            }
            '\n' => {
                lex_line += 1;
                line += 1;
                i += 1;
            }
            ' ' | '\t' => i += 1,
            '"' | '\'' => match chars[i + 1..].iter().position(|&d| d == c || d == '\n') {
                Some(offset) => {
                    let end = i + 1 + offset;
                    let token: String = chars[i..=end].iter().collect();
                    st.token(token, lex_line, line);
                    if chars[end] == '\n' {
                        st.problem(
                            line,
                            format!(
                                "unterminated {c}quote{c}: pcscd takes the rest of the line \
                                 and the next line as one"
                            ),
                            false,
                        );
                        line += 1;
                    }
                    i = end + 1;
                }
                None => {
                    st.problem(line, format!("unterminated {c}quote{c}"), true);
                    i += 1;
                }
            },
            c if is_word_char(c) => {
                let start = i;
                while chars.get(i).copied().is_some_and(is_word_char) {
                    i += 1;
                }
                st.token(chars[start..i].iter().collect(), lex_line, line);
            }
            '\r' => {
                st.problem(
                    line,
                    "carriage return (DOS line ends?) is not allowed".into(),
                    true,
                );
                i += 1;
            }
            c => {
                st.problem(
                    line,
                    format!("character {c:?} is not allowed outside quotes"),
                    true,
                );
                i += 1;
            }
        }
    }
    st.finish()
}

fn strip_quotes(s: &str) -> &str {
    for q in ['"', '\''] {
        if let Some(inner) = s.strip_prefix(q).and_then(|s| s.strip_suffix(q)) {
            return inner;
        }
    }
    s
}

/// True when a LIBPATH names our driver, in any directory.
fn is_vpcd_lib(lib_path: &str) -> bool {
    Path::new(strip_quotes(lib_path.trim_end_matches('\n')))
        .file_name()
        .is_some_and(|n| n == DRIVER_FILE)
}

/// `strtoul(s, NULL, 0)` stored in a C `int`, as pcscd reads a CHANNELID.
fn c_channel_id(s: &str) -> u32 {
    let s = s.trim_start();
    let (negative, s) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    let (radix, digits) = if let Some(hex) = s
        .strip_prefix("0x")
        .or_else(|| s.strip_prefix("0X"))
        .filter(|h| h.starts_with(|c: char| c.is_ascii_hexdigit()))
    {
        (16, hex)
    } else if s.starts_with('0') {
        (8, s)
    } else {
        (10, s)
    };
    let mut value: u64 = 0;
    for c in digits.chars() {
        let Some(d) = c.to_digit(radix) else { break };
        value = value
            .saturating_mul(u64::from(radix))
            .saturating_add(u64::from(d));
    }
    let value = if negative {
        value.wrapping_neg()
    } else {
        value
    };
    value as u32
}

// ---------------------------------------------------------------------------------
// Readers

#[derive(Debug, Clone, PartialEq, Eq)]
enum Origin {
    File { path: PathBuf, line: usize },
    CommandLine,
    Default,
}

#[derive(Debug, Clone)]
struct Reader {
    name: String,
    origin: Origin,
    /// `DEVICENAME value` or `CHANNELID value`, for messages.
    device: String,
    config: ReaderConfig,
}

/// The readers of a reader.conf file or directory, and how many vpcd entries were
/// unusable. Warnings go to `err`.
struct Loaded {
    readers: Vec<Reader>,
    broken: usize,
}

/// The files pcscd reads for `path`: the file itself, or the regular, not hidden files
/// of a directory (pcscd skips symbolic links there), in name order.
fn config_files(path: &Path, err: &mut dyn Write) -> io::Result<Vec<PathBuf>> {
    if !path.is_dir() {
        // Surface a missing or unreadable file here.
        std::fs::metadata(path)?;
        return Ok(vec![path.to_owned()]);
    }
    let mut files = vec![];
    for entry in std::fs::read_dir(path)? {
        let entry = entry?;
        let name = entry.file_name();
        if name.to_string_lossy().starts_with('.') {
            continue;
        }
        let file = entry.path();
        match std::fs::symlink_metadata(&file) {
            Ok(m) if m.is_file() => files.push(file),
            Ok(m) if m.file_type().is_symlink() => {
                let _ = writeln!(
                    err,
                    "vpcd-config: warning: {}: pcscd skips symbolic links in its configuration directory",
                    file.display()
                );
            }
            _ => {}
        }
    }
    files.sort();
    Ok(files)
}

fn load_readers(path: &Path, err: &mut dyn Write) -> io::Result<Loaded> {
    let mut loaded = Loaded {
        readers: vec![],
        broken: 0,
    };
    for file in config_files(path, err)? {
        let text = match std::fs::read(&file) {
            Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            Err(e) => {
                let _ = writeln!(err, "vpcd-config: warning: {}: {e}", file.display());
                continue;
            }
        };
        let parsed = parse_reader_conf(&text);
        let ours: Vec<&ConfEntry> = parsed
            .entries
            .iter()
            .filter(|e| is_vpcd_lib(&e.lib_path))
            .collect();
        // Other drivers' files are none of our business unless they stop pcscd.
        for p in parsed
            .problems
            .iter()
            .filter(|p| p.fatal || !ours.is_empty())
        {
            let _ = writeln!(
                err,
                "vpcd-config: warning: {}: {}",
                file.display(),
                p.text()
            );
        }
        for entry in ours {
            let warn = |err: &mut dyn Write, what: String| {
                let _ = writeln!(
                    err,
                    "vpcd-config: warning: {}: line {}: {what}",
                    file.display(),
                    entry.line
                );
            };
            if entry.lib_path.starts_with(['"', '\'']) {
                warn(
                    err,
                    format!(
                        "LIBPATH {}: pcscd does not remove the quotes of a LIBPATH",
                        entry.lib_path
                    ),
                );
            } else if !Path::new(&entry.lib_path).exists() {
                warn(
                    err,
                    format!(
                        "LIBPATH {} does not exist: pcscd will not start with this file",
                        entry.lib_path
                    ),
                );
            }
            let device = entry
                .device_name
                .as_deref()
                .filter(|d| !d.is_empty())
                .map(|d| strip_quotes(d.trim_end_matches('\n')).to_owned());
            if let Some(raw) = &entry.device_name {
                if !raw.contains(':') && !Path::new(raw).exists() {
                    warn(
                        err,
                        format!(
                            "DEVICENAME {raw} has no ':' and is no file: pcscd will not start \
                             with this file"
                        ),
                    );
                }
            }
            let parsed = match (&entry.device_name, &entry.channel_id) {
                (Some(raw), _) => ReaderConfig::parse(raw),
                (None, Some(channel)) => ReaderConfig::from_channel_id(c_channel_id(channel)),
                (None, None) => unreachable!("an entry has a DEVICENAME or a CHANNELID"),
            };
            let device = match (device, &entry.channel_id) {
                (Some(d), _) => format!("DEVICENAME {d}"),
                (None, Some(c)) => format!("CHANNELID {c}"),
                (None, None) => String::new(),
            };
            match parsed {
                Ok(config) => loaded.readers.push(Reader {
                    name: entry.friendly_name.clone(),
                    origin: Origin::File {
                        path: file.clone(),
                        line: entry.line,
                    },
                    device,
                    config,
                }),
                Err(e) => {
                    loaded.broken += 1;
                    let _ = writeln!(
                        err,
                        "vpcd-config: error: {}: line {}: reader \"{}\": {e}",
                        file.display(),
                        entry.line,
                        entry.friendly_name
                    );
                }
            }
        }
    }
    Ok(loaded)
}

/// The reader of `--port PORT [--slots N] [--listen ADDR]`, through the DEVICENAME
/// parser so that it accepts what a reader.conf entry accepts.
fn command_line_reader(
    port: &str,
    slots: Option<&str>,
    listen: Option<IpAddr>,
) -> Result<Reader, String> {
    if port.is_empty() || !port.chars().all(|c| c.is_ascii_alphanumeric()) {
        return Err(format!("--port: \"{port}\" is not a port number"));
    }
    let mut device = format!("/dev/null:{port}");
    if let Some(slots) = slots {
        if slots.is_empty() || !slots.chars().all(|c| c.is_ascii_digit()) {
            return Err(format!("--slots: \"{slots}\" is not a number"));
        }
        device = format!("{device}/slots={slots}");
    }
    if let Some(listen) = listen {
        device = format!("{device}/listen={listen}");
    }
    let config = ReaderConfig::parse(&device).map_err(|e| e.reason)?;
    Ok(Reader {
        name: DEFAULT_NAME.into(),
        origin: Origin::CommandLine,
        device: format!("DEVICENAME {device}"),
        config,
    })
}

fn default_reader() -> Reader {
    let device = format!("/dev/null:{DEFAULT_PORT}");
    let config = ReaderConfig::parse(&device).expect("the default DEVICENAME parses");
    debug_assert_eq!(config.slots, DEFAULT_SLOTS);
    Reader {
        name: DEFAULT_NAME.into(),
        origin: Origin::Default,
        device: format!("DEVICENAME {device}"),
        config,
    }
}

// ---------------------------------------------------------------------------------
// This machine's addresses

/// One address of one of this machine's interfaces.
#[derive(Debug, Clone, PartialEq, Eq)]
struct LocalAddr {
    ip: IpAddr,
    interface: String,
    /// The interface is running (IFF_RUNNING): it has a link.
    running: bool,
}

fn local_addresses() -> io::Result<Vec<LocalAddr>> {
    Ok(if_addrs::get_if_addrs()?
        .into_iter()
        .map(|i| LocalAddr {
            ip: i.ip(),
            running: i.is_oper_up(),
            interface: i.name,
        })
        .collect())
}

fn is_link_local(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => v6.segments()[0] & 0xffc0 == 0xfe80,
    }
}

/// Bridges a container or VM host makes for its guests: reachable from the guests
/// only, so listed after the other interfaces.
fn is_guest_bridge(interface: &str) -> bool {
    const PREFIXES: [&str; 12] = [
        "docker", "br-", "veth", "virbr", "lxcbr", "lxdbr", "cni", "flannel", "cali", "podman",
        "vboxnet", "vmnet",
    ];
    PREFIXES.iter().any(|p| interface.starts_with(p))
}

/// How far the addresses of a listening reader reach.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reach {
    /// Addresses of running interfaces.
    Network,
    /// Link-local addresses only: a vicc on the same link.
    LinkLocal,
    /// The interfaces with these addresses are not running.
    Down,
    /// Loopback: a vicc on this machine only.
    Loopback,
    /// The address the entry names (`listen=`).
    Configured,
    /// The `--host` of the command line.
    Given,
}

/// The addresses a vicc can use to reach a reader that listens on `listen`.
///
/// A reader listening on one address is reached there and nowhere else. One listening
/// on `0.0.0.0` is reached on this machine's IPv4 addresses, on `::` on its IPv6
/// addresses and (unless `v6only`) its IPv4 ones. Of those, the best class present is
/// listed: running interfaces; link-local addresses of running interfaces; interfaces
/// without a link; loopback. IPv4 comes before IPv6 and guest bridges come last.
fn reachable_addresses(listen: IpAddr, v6only: bool, local: &[LocalAddr]) -> (Vec<IpAddr>, Reach) {
    if !listen.is_unspecified() {
        return (vec![listen], Reach::Configured);
    }
    let (v4, v6) = match listen {
        IpAddr::V4(_) => (true, false),
        IpAddr::V6(_) => (!v6only, true),
    };
    let class = |a: &LocalAddr| -> Reach {
        if a.ip.is_loopback() {
            Reach::Loopback
        } else if !a.running {
            Reach::Down
        } else if is_link_local(a.ip) {
            Reach::LinkLocal
        } else {
            Reach::Network
        }
    };
    let candidates: Vec<&LocalAddr> = local
        .iter()
        .filter(|a| if a.ip.is_ipv4() { v4 } else { v6 })
        .filter(|a| !a.ip.is_unspecified() && !a.ip.is_multicast())
        .collect();
    let order = [
        Reach::Network,
        Reach::LinkLocal,
        Reach::Down,
        Reach::Loopback,
    ];
    let Some(best) = order
        .into_iter()
        .find(|r| candidates.iter().any(|a| class(a) == *r))
    else {
        // Nothing enumerated (or the enumeration failed): this machine at least.
        let mut loopback = vec![];
        if v4 {
            loopback.push(IpAddr::V4(Ipv4Addr::LOCALHOST));
        }
        if v6 {
            loopback.push(IpAddr::V6(Ipv6Addr::LOCALHOST));
        }
        return (loopback, Reach::Loopback);
    };
    let mut chosen: Vec<&LocalAddr> = candidates
        .into_iter()
        .filter(|a| class(a) == best)
        .collect();
    chosen.sort_by_key(|a| (is_guest_bridge(&a.interface), a.ip.is_ipv6()));
    let mut ips: Vec<IpAddr> = vec![];
    for a in chosen {
        if !ips.contains(&a.ip) {
            ips.push(a.ip);
        }
    }
    (ips, best)
}

/// `host` as the host part of a URL or a `host:port`: IPv6 literals in brackets.
fn url_host(host: &str) -> String {
    if host.parse::<Ipv6Addr>().is_ok() {
        format!("[{host}]")
    } else {
        host.to_owned()
    }
}

/// The URL the Remote Smart Card Reader app takes: `vpcd://HOST:PORT`.
fn vpcd_url(host: &str, port: u16) -> String {
    format!("vpcd://{}:{port}", url_host(host))
}

fn unbracket(s: &str) -> &str {
    s.strip_prefix('[')
        .and_then(|s| s.strip_suffix(']'))
        .unwrap_or(s)
}

// ---------------------------------------------------------------------------------
// QR codes

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum QrStyle {
    /// Black modules on a white background drawn with terminal colours: right on any
    /// terminal theme.
    Ansi,
    /// Block characters for the dark modules: dark text on a light background.
    Plain,
    /// Block characters for the light modules: light text on a dark background.
    Inverted,
}

const ANSI_BLACK_ON_WHITE: &str = "\x1b[30;47m";
const ANSI_RESET: &str = "\x1b[0m";

/// `text` as a QR code drawn with half blocks (two modules a character cell), with its
/// four-module quiet zone.
fn render_qr(text: &str, style: QrStyle) -> Result<String, qrcode::types::QrError> {
    // Level L, as the C tool: the smallest code, easiest to scan off a screen.
    let code = QrCode::with_error_correction_level(text.as_bytes(), EcLevel::L)?;
    let mut renderer = code.render::<Dense1x2>();
    renderer.quiet_zone(true);
    if style == QrStyle::Inverted {
        renderer
            .dark_color(Dense1x2::Light)
            .light_color(Dense1x2::Dark);
    }
    let image = renderer.build();
    Ok(match style {
        QrStyle::Ansi => image
            .lines()
            .map(|l| format!("{ANSI_BLACK_ON_WHITE}{l}{ANSI_RESET}"))
            .collect::<Vec<_>>()
            .join("\n"),
        QrStyle::Plain | QrStyle::Inverted => image,
    })
}

// ---------------------------------------------------------------------------------
// Output

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

struct SlotInfo<'a> {
    reader: &'a Reader,
    slot: u16,
    port: u16,
    kind: SlotKind,
}

impl SlotInfo<'_> {
    fn urls(&self) -> Vec<String> {
        match &self.kind {
            SlotKind::Listen { hosts, .. } => {
                hosts.iter().map(|h| vpcd_url(h, self.port)).collect()
            }
            SlotKind::Reversed { .. } => vec![],
        }
    }
}

fn slots<'a>(readers: &'a [Reader], host: Option<&str>, local: &[LocalAddr]) -> Vec<SlotInfo<'a>> {
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

fn write_text(out: &mut dyn Write, slots: &[SlotInfo], qr: Option<QrStyle>) -> io::Result<()> {
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

fn write_json(out: &mut dyn Write, slots: &[SlotInfo]) -> io::Result<()> {
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
            let _ = writeln!(err, "vpcd-config: {e}\nTry 'vpcd-config --help'.");
            return 2;
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
                let _ = writeln!(err, "vpcd-config: {e}\nTry 'vpcd-config --help'.");
                return 2;
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
    use std::sync::atomic::{AtomicUsize, Ordering};

    // ----- reader.conf parser

    const C_PROJECT_CONF: &str = r#"# vpcd entry as the C project installs it
FRIENDLYNAME "Virtual PCD"
DEVICENAME   /dev/null:0x8C7B
LIBPATH      /usr/lib/pcsc/drivers/serial/libifdvpcd.so
CHANNELID    0x8C7B
"#;

    #[test]
    fn conf_c_project_entry() {
        let p = parse_reader_conf(C_PROJECT_CONF);
        assert_eq!(
            p.entries,
            vec![ConfEntry {
                line: 2,
                friendly_name: "Virtual PCD".into(),
                device_name: Some("/dev/null:0x8C7B".into()),
                lib_path: "/usr/lib/pcsc/drivers/serial/libifdvpcd.so".into(),
                channel_id: None,
            }]
        );
        // pcscd completes the entry at LIBPATH; the CHANNELID starts an entry that
        // never completes, which pcscd drops without a word, and so do we.
        assert_eq!(p.problems, vec![]);
    }

    #[test]
    fn conf_incomplete_entry() {
        let p = parse_reader_conf("FRIENDLYNAME x\nDEVICENAME /dev/null:1\n# no LIBPATH\n");
        assert!(p.entries.is_empty());
        assert_eq!(p.problems.len(), 1);
        assert!(!p.problems[0].fatal && p.problems[0].message.contains("incomplete"));
        assert_eq!(p.problems[0].line, 1);
    }

    #[test]
    fn conf_several_entries_quotes_and_comments() {
        let text = "\
FRIENDLYNAME \"Phone reader\"   # trailing comment
LIBPATH /usr/lib/pcsc/drivers/serial/libifdvpcd.so
DEVICENAME \"/dev/null:35963/slots=4/listen=::\"

  # an indented comment, then a blank line

FRIENDLYNAME 'single'
DEVICENAME /dev/ttyS0
LIBPATH /usr/lib/pcsc/drivers/libother.so
FRIENDLYNAME Channel
CHANNELID 0x8C7B
LIBPATH /opt/vpcd/libifdvpcd.so
DEVICENAME localhost:35963#comment right after the value
";
        let p = parse_reader_conf(text);
        assert_eq!(p.entries.len(), 3, "{:?}", p.entries);
        assert_eq!(p.problems, vec![]);
        let e = &p.entries[0];
        assert_eq!(e.friendly_name, "Phone reader");
        assert_eq!(
            e.device_name.as_deref(),
            Some("\"/dev/null:35963/slots=4/listen=::\"")
        );
        assert_eq!(e.line, 1);
        // pcscd strips double quotes from a FRIENDLYNAME only.
        assert_eq!(p.entries[1].friendly_name, "'single'");
        assert!(!is_vpcd_lib(&p.entries[1].lib_path));
        // The entry completes at its LIBPATH with the CHANNELID; the DEVICENAME after
        // it is left dangling, as in pcscd.
        let r = &p.entries[2];
        assert_eq!(
            (
                r.friendly_name.as_str(),
                r.channel_id.as_deref(),
                r.device_name.as_deref()
            ),
            ("Channel", Some("0x8C7B"), None)
        );
        assert_eq!(r.line, 10);
        assert!(is_vpcd_lib(&r.lib_path));
    }

    #[test]
    fn conf_errors_pcscd_refuses() {
        let fatal = |text: &str, needle: &str| {
            let p = parse_reader_conf(text);
            assert!(
                p.problems
                    .iter()
                    .any(|e| e.fatal && e.message.contains(needle)),
                "{text:?}: {:?}",
                p.problems
            );
        };
        fatal("FRIENDLYNAME a,b\n", "','");
        fatal("FRIENDLYNAME x\r\nLIBPATH y\r\n", "carriage return");
        fatal("FRIENDLYNAME\n\"Virtual PCD\"\n", "no value on its line");
        fatal("COLOUR red\n", "unknown key");
        fatal("FRIENDLYNAME a\nFRIENDLYNAME b\n", "twice");
        fatal("DEVICENAME [::1]:35963\n", "'['");
        fatal("FRIENDLYNAME \"open", "unterminated");

        // Unquoted, the second word is a key of its own whose value must follow on the
        // same line.
        let p = parse_reader_conf("FRIENDLYNAME Virtual PCD\nLIBPATH x\n");
        assert!(p
            .problems
            .iter()
            .any(|e| e.fatal && e.message.contains("PCD")));
    }

    #[test]
    fn conf_unterminated_quote_runs_into_the_next_line_as_in_pcscd() {
        let p = parse_reader_conf(
            "FRIENDLYNAME \"Virtual PCD\nLIBPATH /x/libifdvpcd.so\nCHANNELID 1\n",
        );
        // The value ends at the newline, which pcscd does not count: LIBPATH is on
        // "the same line" and complete; the real line numbers still advance.
        assert_eq!(p.entries.len(), 1, "{:?}", p.problems);
        assert_eq!(p.entries[0].friendly_name, "Virtual PCD");
        assert!(p.problems.iter().all(|e| !e.fatal));
    }

    #[test]
    fn channel_ids_as_strtoul_reads_them() {
        assert_eq!(c_channel_id("0x8C7B"), 35963);
        assert_eq!(c_channel_id("35963"), 35963);
        assert_eq!(c_channel_id("0106173"), 35963);
        assert_eq!(c_channel_id("12abc"), 12);
        assert_eq!(c_channel_id("0x"), 0);
        assert_eq!(c_channel_id("junk"), 0);
        assert_eq!(c_channel_id("-1"), u32::MAX);
        assert_eq!(c_channel_id("99999999999999999999999"), u32::MAX);
    }

    #[test]
    fn lib_path_matching() {
        assert!(is_vpcd_lib("/usr/lib/pcsc/drivers/serial/libifdvpcd.so"));
        assert!(is_vpcd_lib("libifdvpcd.so"));
        assert!(is_vpcd_lib("\"/opt/x/libifdvpcd.so\""));
        assert!(!is_vpcd_lib("/usr/lib/libifdvpcd.so.0"));
        assert!(!is_vpcd_lib("/usr/lib/libifdvpcd.so/other.so"));
        assert!(!is_vpcd_lib("/usr/lib/pcsc/drivers/libccid.so"));
    }

    // ----- URLs and addresses

    #[test]
    fn urls() {
        assert_eq!(vpcd_url("192.168.1.10", 35963), "vpcd://192.168.1.10:35963");
        assert_eq!(vpcd_url("2001:db8::1", 35963), "vpcd://[2001:db8::1]:35963");
        assert_eq!(vpcd_url("::ffff:10.0.0.1", 1), "vpcd://[::ffff:10.0.0.1]:1");
        assert_eq!(
            vpcd_url("pc.example.org", 35964),
            "vpcd://pc.example.org:35964"
        );
        assert_eq!(url_host("::1"), "[::1]");
    }

    fn addr(ip: &str, interface: &str, running: bool) -> LocalAddr {
        LocalAddr {
            ip: ip.parse().unwrap(),
            interface: interface.into(),
            running,
        }
    }

    fn ips(list: &[&str]) -> Vec<IpAddr> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    fn typical_host() -> Vec<LocalAddr> {
        vec![
            addr("127.0.0.1", "lo", true),
            addr("::1", "lo", true),
            addr("172.17.0.1", "docker0", true),
            addr("192.168.1.10", "wlan0", true),
            addr("2001:db8::10", "wlan0", true),
            addr("fd00::10", "wlan0", true),
            addr("fe80::1234", "wlan0", true),
            addr("10.9.9.9", "eth0", false),
        ]
    }

    #[test]
    fn address_selection() {
        let any4 = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
        let any6 = IpAddr::V6(Ipv6Addr::UNSPECIFIED);
        let host = typical_host();

        // 0.0.0.0: IPv4 only; running interfaces, guest bridges last.
        assert_eq!(
            reachable_addresses(any4, false, &host),
            (ips(&["192.168.1.10", "172.17.0.1"]), Reach::Network)
        );
        // ':: dual stack': IPv4 first, then IPv6, never link-local or loopback here.
        assert_eq!(
            reachable_addresses(any6, false, &host),
            (
                ips(&["192.168.1.10", "2001:db8::10", "fd00::10", "172.17.0.1"]),
                Reach::Network
            )
        );
        assert_eq!(
            reachable_addresses(any6, true, &host),
            (ips(&["2001:db8::10", "fd00::10"]), Reach::Network)
        );
        // A configured address is used as it is, whatever the interfaces.
        let one: IpAddr = "10.1.2.3".parse().unwrap();
        assert_eq!(
            reachable_addresses(one, false, &host),
            (vec![one], Reach::Configured)
        );
        let v6: IpAddr = "2001:db8::99".parse().unwrap();
        assert_eq!(
            reachable_addresses(v6, true, &[]),
            (vec![v6], Reach::Configured)
        );
    }

    #[test]
    fn address_fallbacks() {
        let any6 = IpAddr::V6(Ipv6Addr::UNSPECIFIED);
        let any4 = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
        // Link-local only when nothing better, and before loopback.
        let ll = vec![
            addr("127.0.0.1", "lo", true),
            addr("::1", "lo", true),
            addr("fe80::1", "eth0", true),
            addr("169.254.3.4", "eth0", true),
        ];
        assert_eq!(
            reachable_addresses(any6, false, &ll),
            (ips(&["169.254.3.4", "fe80::1"]), Reach::LinkLocal)
        );
        assert_eq!(
            reachable_addresses(any4, false, &ll),
            (ips(&["169.254.3.4"]), Reach::LinkLocal)
        );
        // Interfaces without a link come after link-local.
        let down = vec![
            addr("127.0.0.1", "lo", true),
            addr("192.168.5.5", "eth0", false),
        ];
        assert_eq!(
            reachable_addresses(any4, false, &down),
            (ips(&["192.168.5.5"]), Reach::Down)
        );
        // Loopback only when nothing else exists, deduplicated.
        let lo = vec![
            addr("127.0.0.1", "lo", true),
            addr("127.0.0.1", "lo", true),
            addr("::1", "lo", true),
        ];
        assert_eq!(
            reachable_addresses(any6, false, &lo),
            (ips(&["127.0.0.1", "::1"]), Reach::Loopback)
        );
        // IPv6 wanted but the machine has IPv4 only: its IPv6 loopback.
        assert_eq!(
            reachable_addresses(any6, true, &[addr("192.168.1.1", "eth0", true)]),
            (ips(&["::1"]), Reach::Loopback)
        );
        assert_eq!(
            reachable_addresses(any4, false, &[]),
            (ips(&["127.0.0.1"]), Reach::Loopback)
        );
    }

    #[test]
    fn the_real_interfaces_can_be_listed() {
        // Whatever this machine has, listing it works and loopback is among it.
        let local = local_addresses().expect("getifaddrs");
        let (list, _) = reachable_addresses(IpAddr::V4(Ipv4Addr::UNSPECIFIED), false, &local);
        assert!(!list.is_empty());
    }

    // ----- QR codes

    /// The module matrix of a rendered code: true for dark. Each character cell holds
    /// two modules, top and bottom.
    fn modules_of(rendered: &str, style: QrStyle) -> Vec<Vec<bool>> {
        let mut rows = vec![];
        for line in rendered.lines() {
            let line = line
                .strip_prefix(ANSI_BLACK_ON_WHITE)
                .and_then(|l| l.strip_suffix(ANSI_RESET))
                .unwrap_or(line);
            let (mut top, mut bottom) = (vec![], vec![]);
            for c in line.chars() {
                let (t, b) = match c {
                    ' ' => (false, false),
                    '\u{2580}' => (true, false),
                    '\u{2584}' => (false, true),
                    '\u{2588}' => (true, true),
                    other => panic!("unexpected {other:?} in the QR code"),
                };
                // Block characters are dark modules, except in the inverted style.
                let inv = style == QrStyle::Inverted;
                top.push(t != inv);
                bottom.push(b != inv);
            }
            rows.push(top);
            rows.push(bottom);
        }
        rows
    }

    /// Decodes a module matrix with rqrr, from a picture of it at 4 pixels a module.
    fn decode(modules: &[Vec<bool>]) -> String {
        const SCALE: usize = 4;
        let h = modules.len();
        let w = modules[0].len();
        let mut img = rqrr::PreparedImage::prepare_from_greyscale(w * SCALE, h * SCALE, |x, y| {
            if modules[y / SCALE][x / SCALE] {
                0
            } else {
                255
            }
        });
        let grids = img.detect_grids();
        assert_eq!(grids.len(), 1, "one QR code in the picture");
        grids[0].decode().expect("the QR code decodes").1
    }

    #[test]
    fn qr_round_trip() {
        for url in [
            vpcd_url("192.168.1.10", 35963),
            vpcd_url("2001:db8:85a3::8a2e:370:7334", 35964),
            vpcd_url("a-rather-long-host-name.some-subdomain.example.org", 65535),
        ] {
            for style in [QrStyle::Plain, QrStyle::Inverted, QrStyle::Ansi] {
                let rendered = render_qr(&url, style).unwrap();
                let modules = modules_of(&rendered, style);
                // Half blocks hold two rows: an odd-sized code gets a padding row.
                let n = modules[0].len();
                assert_eq!(modules.len(), n + 1, "{style:?}");
                let modules = &modules[..n];
                // The quiet zone: four light modules all around.
                for (y, row) in modules.iter().enumerate() {
                    assert_eq!(row.len(), n);
                    let border = if y < 4 || y >= n - 4 {
                        &row[..]
                    } else {
                        &row[..4]
                    };
                    assert!(
                        border.iter().chain(&row[n - 4..]).all(|m| !m),
                        "{style:?}: row {y}"
                    );
                }
                assert_eq!(decode(modules), url, "{style:?}");
            }
        }
    }

    // ----- the tool as a whole

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

    /// A fresh directory under the system's temporary one.
    fn temp_dir() -> PathBuf {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "vpcd-config-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    const MIXED_CONF: &str = "\
# one file, four entries, one of another driver
FRIENDLYNAME \"Virtual PCD\"
DEVICENAME /dev/null:0x8C7B
LIBPATH /usr/lib/pcsc/drivers/serial/libifdvpcd.so

FRIENDLYNAME \"Loopback \\ reader\"
DEVICENAME /dev/null:40000/slots=1/listen=127.0.0.1
LIBPATH /usr/local/lib/libifdvpcd.so

FRIENDLYNAME \"Serial\"
DEVICENAME /dev/null:1
LIBPATH /usr/lib/pcsc/drivers/serial/libccidtwin.so

FRIENDLYNAME \"Phone\"
DEVICENAME \"phone.local:35970/slots=1\"
LIBPATH /usr/lib/pcsc/drivers/serial/libifdvpcd.so

FRIENDLYNAME IPv6
DEVICENAME \"/dev/null:41000/slots=1/listen=::1\"
LIBPATH libifdvpcd.so
";

    #[test]
    fn text_output_from_a_config() {
        let dir = temp_dir();
        std::fs::write(dir.join("vpcd"), MIXED_CONF).unwrap();
        std::fs::write(
            dir.join(".hidden"),
            "FRIENDLYNAME x\nLIBPATH libifdvpcd.so\nCHANNELID 1\n",
        )
        .unwrap();
        let ctx = test_ctx(dir.clone());
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

        let (code, out, _) = run_with(&["--no-qr", "--config", dir.to_str().unwrap()], &ctx);
        assert_eq!(code, 0);
        assert!(!out.contains("scan this code") && !out.contains('\u{2580}'));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn fallback_to_the_default() {
        let dir = temp_dir();
        let ctx = test_ctx(dir.join("missing"));
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
            dir.join("other"),
            "FRIENDLYNAME a\nLIBPATH /x/libccid.so\nCHANNELID 1\n",
        )
        .unwrap();
        let (code, _, err) = run_with(&["-c", dir.join("other").to_str().unwrap()], &ctx);
        assert_eq!(code, 0);
        assert!(err.contains("showing the default"));

        // A file named on the command line must exist.
        let (code, out, err) = run_with(&["--config", dir.join("nope").to_str().unwrap()], &ctx);
        assert_eq!((code, out.as_str()), (1, ""));
        assert!(err.contains("nope"), "{err}");

        // Broken vpcd entries only: an error, not the default.
        std::fs::write(
            dir.join("bad"),
            "FRIENDLYNAME a\nLIBPATH libifdvpcd.so\nDEVICENAME /dev/null:0\n",
        )
        .unwrap();
        let (code, _, err) = run_with(&["-c", dir.join("bad").to_str().unwrap()], &ctx);
        assert_eq!(code, 1);
        assert!(
            err.contains("no usable vpcd reader") && err.contains("port"),
            "{err}"
        );
        std::fs::remove_dir_all(dir).unwrap();
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

    #[test]
    fn json_strings_are_escaped() {
        let nasty = "a\"b\\c\nd\te\u{1}f\u{2028}é";
        let json = json_string(nasty);
        let back: String = serde_json::from_str(&json).unwrap();
        assert_eq!(back, nasty);
    }

    /// The built binary, rebuilt first so that it is this source's: a unit test of a
    /// binary gets no CARGO_BIN_EXE_ variable, so cargo is asked for it.
    fn built_binary() -> PathBuf {
        if let Some(exe) = option_env!("CARGO_BIN_EXE_vpcd-config") {
            return PathBuf::from(exe);
        }
        let test_exe = std::env::current_exe().unwrap();
        // target/<profile dir>/deps/<this test>
        let profile_dir = test_exe
            .parent()
            .and_then(Path::parent)
            .and_then(Path::file_name);
        let profile = match profile_dir.and_then(|p| p.to_str()) {
            Some("debug") | None => "dev".to_owned(),
            Some(other) => other.to_owned(),
        };
        let output = std::process::Command::new(env!("CARGO"))
            .args(["build", "--quiet", "--offline", "--message-format=json"])
            .args(["--bin", "vpcd-config", "--profile", &profile])
            .arg("--manifest-path")
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"))
            .output()
            .expect("cargo runs");
        assert!(
            output.status.success(),
            "cargo build: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|m| m["reason"] == "compiler-artifact")
            .find_map(|m| m["executable"].as_str().map(PathBuf::from))
            .expect("cargo names the vpcd-config executable")
    }

    #[test]
    fn the_binary_prints_json_for_a_config_file() {
        let dir = temp_dir();
        let conf = dir.join("vpcd.conf");
        std::fs::write(&conf, MIXED_CONF).unwrap();
        let output = std::process::Command::new(built_binary())
            .arg("--config")
            .arg(&conf)
            .arg("--json")
            .output()
            .unwrap();
        let stdout = String::from_utf8(output.stdout).unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "{stderr}");
        let v: serde_json::Value = serde_json::from_str(&stdout).expect("JSON on stdout");
        let slots = v.as_array().unwrap();
        assert_eq!(slots.len(), 5, "{stdout}");

        for (i, s) in slots[..2].iter().enumerate() {
            assert_eq!(s["reader"], "Virtual PCD");
            assert_eq!(s["slot"], i);
            assert_eq!(s["port"], 35963 + i);
            assert_eq!(s["mode"], "listen");
            assert_eq!(s["listen"], "0.0.0.0");
            assert_eq!(s["config"], conf.to_str().unwrap());
            assert_eq!(s["line"], 2);
            // The addresses of whatever machine this runs on: IPv4, and a URL each.
            let addresses = s["addresses"].as_array().unwrap();
            let urls = s["urls"].as_array().unwrap();
            assert!(!addresses.is_empty());
            assert_eq!(addresses.len(), urls.len());
            for (a, u) in addresses.iter().zip(urls) {
                let a: IpAddr = a.as_str().unwrap().parse().unwrap();
                assert!(a.is_ipv4());
                assert_eq!(
                    u.as_str().unwrap(),
                    vpcd_url(&a.to_string(), 35963 + i as u16)
                );
            }
        }
        assert_eq!(slots[2]["reader"], "Loopback \\ reader");
        assert_eq!(slots[2]["addresses"], serde_json::json!(["127.0.0.1"]));
        assert_eq!(
            slots[2]["urls"],
            serde_json::json!(["vpcd://127.0.0.1:40000"])
        );
        assert_eq!(slots[3]["mode"], "reversed");
        assert_eq!(slots[3]["host"], "phone.local");
        assert_eq!(slots[3]["port"], 35970);
        assert_eq!(slots[3]["urls"], serde_json::json!([]));
        assert_eq!(slots[4]["reader"], "IPv6");
        assert_eq!(slots[4]["urls"], serde_json::json!(["vpcd://[::1]:41000"]));
        assert!(slots.iter().all(|s| s["reader"] != "Serial"));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
