//! `vpcd-config --check`: what stands between a virtual card and the vpcd readers of
//! this machine, one line per finding, each with what to do about it.
//!
//! It looks, without root where it can, and never waits long (every command it runs
//! has a deadline, and a watchdog ends the whole check):
//!
//! - pcscd: the one serving the PC/SC socket (`--socket`, `PCSCLITE_CSOCK_NAME` or
//!   `/run/pcscd/pcscd.comm`), found by the pid file beside the socket or by the
//!   processes named `pcscd` whose root sees that socket; its version and features
//!   (`pcscd --version`: without `serial` it ignores reader.conf.d), whether it runs
//!   with `--auto-exit`, and what systemd's `pcscd.service` starts it with;
//! - the vpcd readers of its configuration (`--config`, else pcscd's own `--config`,
//!   else its configuration directory), read as pcscd reads them, and whether pcscd
//!   has loaded the driver (`/proc/PID/maps`);
//! - for every listening slot, whether its port listens (`/proc/net/tcp{,6}`) and, if
//!   another program holds it, which (the socket's inode in `/proc/*/fd`); and the
//!   addresses a vicc can reach it on;
//! - whether SELinux denied pcscd a bind (the audit log).
//!
//! Exit status: 0 when a vicc can reach every listening slot, 1 when something is in
//! the way (an `error:` line), 2 on a usage error.

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use vpcd_protocol::config::Endpoint;

use crate::addresses::{local_addresses, reachable_addresses, url_host, Reach};
use crate::readerconf::{parse_reader_conf, strip_quotes, DRIVER_FILE};
use crate::readers::{load_readers, Origin, Reader};

/// pcscd's socket unless `PCSCLITE_CSOCK_NAME` or `--socket` says otherwise.
const DEFAULT_SOCKET: &str = "/run/pcscd/pcscd.comm";
/// Where pcscd reads reader entries when its `--version` does not say.
const DEFAULT_CONFIG_DIR: &str = "/etc/reader.conf.d";
/// The name of the systemd drop-ins that scripts/install and the package install.
pub(crate) const DROP_IN: &str = "vpcd-rs.conf";
/// The longest any command may take, and the whole check.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(3);
const CHECK_TIMEOUT: Duration = Duration::from_secs(20);

const HELP: &str = "\
vpcd-config --check: tell what stands between a virtual card and the vpcd readers

Usage: vpcd-config --check [--config PATH] [--socket PATH]

Checks, one line per finding (ok:, note:, warning:, error:) with what to do:
is a pcscd running, which version, was it built with the serial feature (without it
pcscd ignores reader.conf.d), will it quit by itself (--auto-exit), which vpcd readers
it is configured with and whether it loaded the driver, whether each slot's port
listens or which program holds it, which addresses reach it, whether SELinux denied
pcscd the bind. Run it as root to see what other users' processes hold.

Options:
  -c, --config PATH   reader.conf file or directory to read [default: the --config of
                      the running pcscd, else its configuration directory]
      --socket PATH   pcscd's socket [default: $PCSCLITE_CSOCK_NAME, else
                      /run/pcscd/pcscd.comm]
  -h, --help          print this help

Exit status: 0 when a vicc can reach every listening slot, 1 when something is in
the way (a line starting with error:), 2 on a usage error.
";

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Level {
    Ok,
    Note,
    Warning,
    Error,
}

struct Findings {
    lines: Vec<(Level, String)>,
}

impl Findings {
    fn add(&mut self, level: Level, text: impl Into<String>) {
        self.lines.push((level, text.into()));
    }
    fn ok(&mut self, t: impl Into<String>) {
        self.add(Level::Ok, t)
    }
    fn note(&mut self, t: impl Into<String>) {
        self.add(Level::Note, t)
    }
    fn warn(&mut self, t: impl Into<String>) {
        self.add(Level::Warning, t)
    }
    fn error(&mut self, t: impl Into<String>) {
        self.add(Level::Error, t)
    }
}

/// `vpcd-config --check ARGS` (ARGS without `--check`); returns the exit status.
pub(crate) fn main(args: &[OsString]) -> u8 {
    let mut config: Option<PathBuf> = None;
    let mut socket: Option<PathBuf> = None;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let text = arg.to_string_lossy();
        let (name, inline) = match text.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n.to_owned(), Some(PathBuf::from(v))),
            _ => (text.clone().into_owned(), None),
        };
        let mut value = || inline.clone().or_else(|| it.next().map(PathBuf::from));
        match name.as_str() {
            "-h" | "--help" => {
                print!("{HELP}");
                return 0;
            }
            "-c" | "--config" => config = value(),
            "--socket" => socket = value(),
            _ => {
                eprintln!("vpcd-config: --check: unknown argument \"{text}\"\nTry 'vpcd-config --check --help'.");
                return 2;
            }
        }
        if (name == "-c" || name == "--config") && config.is_none()
            || name == "--socket" && socket.is_none()
        {
            eprintln!("vpcd-config: {name} needs a path");
            return 2;
        }
    }
    let socket = socket
        .or_else(|| std::env::var_os("PCSCLITE_CSOCK_NAME").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET));

    // Nothing below may hang a script: give up as a whole after CHECK_TIMEOUT.
    std::thread::spawn(|| {
        std::thread::sleep(CHECK_TIMEOUT);
        eprintln!(
            "vpcd-config: error: --check gave up after {} s",
            CHECK_TIMEOUT.as_secs()
        );
        std::process::exit(1);
    });

    let findings = check(config.as_deref(), &socket);
    let mut out = io::stdout().lock();
    for (level, text) in &findings.lines {
        let tag = match level {
            Level::Ok => "ok",
            Level::Note => "note",
            Level::Warning => "warning",
            Level::Error => "error",
        };
        let _ = writeln!(out, "{tag}: {text}");
    }
    let _ = out.flush();
    u8::from(findings.lines.iter().any(|(l, _)| *l == Level::Error))
}

// ---------------------------------------------------------------------------------
// The check

fn check(config: Option<&Path>, socket: &Path) -> Findings {
    let mut f = Findings { lines: vec![] };
    let procs = processes();
    let pcscds: Vec<&Proc> = procs.iter().filter(|p| p.comm == "pcscd").collect();
    let ours = serving_pcscd(&pcscds, socket);

    // The daemon and its build.
    let exe = ours
        .and_then(|p| std::fs::read_link(format!("/proc/{}/exe", p.pid)).ok())
        .filter(|e| e.exists())
        .or_else(installed_pcscd);
    let version = exe.as_deref().and_then(pcscd_version);
    let version_text = version
        .as_ref()
        .map(|v| format!("pcscd {}", v.version))
        .unwrap_or_else(|| "pcscd".into());
    match ours {
        Some(p) => f.ok(format!(
            "{version_text} is running (pid {}, socket {})",
            p.pid,
            socket.display()
        )),
        None if exe.is_none() => f.error(
            "pcscd is not installed: install it (Debian, Ubuntu: sudo apt-get install pcscd; \
             Fedora: sudo dnf install pcsc-lite)",
        ),
        None => {
            let others = if pcscds.is_empty() {
                String::new()
            } else {
                let pids: Vec<String> = pcscds.iter().map(|p| p.pid.to_string()).collect();
                format!(
                    " (pcscd pid {} runs with another socket, a private one: check it with \
                     --socket or PCSCLITE_CSOCK_NAME)",
                    pids.join(", ")
                )
            };
            if socket.exists() {
                f.error(format!(
                    "pcscd is not running, but its socket {} exists: systemd starts pcscd \
                     (socket activation) for the first PC/SC client, and the vpcd ports open only \
                     then; start it now: sudo systemctl start pcscd (the vpcd-rs drop-in keeps it \
                     running and starts it at boot){}",
                    socket.display(),
                    others
                ));
            } else {
                f.error(format!(
                    "pcscd is not running: no socket {}; start it: sudo systemctl start pcscd, \
                     or sudo pcscd -f{}",
                    socket.display(),
                    others
                ));
            }
        }
    }
    if let Some(v) = &version {
        if !v.features.is_empty() {
            if v.features.iter().any(|x| x == "serial") {
                f.ok(format!(
                    "{version_text} has the serial feature: it reads reader.conf.d"
                ));
            } else {
                f.error(format!(
                    "{version_text} was built without the serial feature: it ignores \
                     reader.conf.d and never loads the vpcd driver (pcsc-lite 2.2.0 and 2.2.1 \
                     packages); install a pcscd built with -Dserial=true"
                ));
            }
        }
    }

    // Will it stay up?
    check_auto_exit(&mut f, ours);

    // The configuration it reads.
    let pcscd_config = ours.and_then(|p| p.pcscd_option_config());
    let (conf_path, conf_why) = match (config, &pcscd_config) {
        (Some(c), _) => (c.to_owned(), "given"),
        (None, Some(c)) => (c.clone(), "pcscd's --config"),
        (None, None) => (
            version
                .as_ref()
                .and_then(|v| v.config_dir.clone())
                .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG_DIR)),
            "pcscd's configuration directory",
        ),
    };
    let readers = load_config(&mut f, &conf_path, conf_why);
    if let (Some(p), Some(given), Some(theirs)) = (ours, config, &pcscd_config) {
        if !same_file(given, theirs) {
            f.warn(format!(
                "pcscd (pid {}) reads {}, not {}: it knows nothing of the readers there",
                p.pid,
                theirs.display(),
                given.display()
            ));
        }
    }
    if let Some(p) = ours {
        check_config_age(&mut f, p, &conf_path);
    }

    // The ports, worked out first: a held port explains a driver pcscd unloaded.
    let mut ports = Findings { lines: vec![] };
    let held = check_ports(&mut ports, &readers, ours, &procs);

    // Loaded?
    let maps = ours.map(|p| mapped_drivers(p.pid));
    let mut libs: Vec<String> = readers.iter().filter_map(|(_, lib)| lib.clone()).collect();
    libs.sort();
    libs.dedup();
    for lib in &libs {
        let kind = match driver_kind(Path::new(lib)) {
            Some(true) => " (this driver, vpcd-rs)",
            Some(false) => " (vsmartcard's C vpcd, not this driver)",
            None => "",
        };
        match (ours, &maps) {
            (Some(p), Some(Ok(mapped))) => {
                if mapped.iter().any(|m| same_file(m, Path::new(lib))) {
                    f.ok(format!("pcscd (pid {}) has loaded {lib}{kind}", p.pid));
                } else {
                    let why = if held {
                        "its reader failed to start: another program holds its port (below)"
                    } else {
                        "it reads its configuration only when it starts (restart it: sudo \
                         systemctl restart pcscd), or the reader failed to start (its log: \
                         journalctl -u pcscd | grep ifdvpcd)"
                    };
                    f.error(format!(
                        "pcscd (pid {}) has not loaded {lib}{kind}: {why}",
                        p.pid
                    ));
                }
            }
            (Some(p), Some(Err(e))) => f.note(format!(
                "cannot tell whether pcscd (pid {}) loaded {lib}{kind}: /proc/{}/maps: {e} \
                 (run as root to see)",
                p.pid, p.pid
            )),
            _ => {
                if !kind.is_empty() {
                    f.note(format!("{lib}{kind}"));
                }
            }
        }
    }

    f.lines.extend(ports.lines);
    // Each key set the secure readers use, once.
    let mut key_sets: Vec<Option<&str>> = readers
        .iter()
        .filter(|(r, _)| r.config.tls)
        .map(|(r, _)| r.config.tls_keys.as_deref())
        .collect();
    key_sets.sort();
    key_sets.dedup();
    for keys in key_sets {
        check_tls(&mut f, &vpcd_tools::keys::reader_dir(keys), keys);
    }
    check_selinux(&mut f);
    f
}

/// The files of secure readers (tls=yes): there, readable by pcscd, well formed, and
/// the private key kept from other users.
fn check_tls(f: &mut Findings, dir: &Path, keys: Option<&str>) {
    let init = match keys {
        Some(name) => format!("sudo vpcd-config tls init --keys {name}"),
        None => "sudo vpcd-config tls init".to_owned(),
    };
    use vpcd_protocol::tls::{KEY_FILE, TRUST_FILE};
    use vpcd_tools::keys;
    let key_path = dir.join(KEY_FILE);
    let trust_path = dir.join(TRUST_FILE);
    match keys::load_key(&key_path) {
        Err(e) if !key_path.exists() => f.error(format!(
            "a reader has tls=yes, but {} is missing: the reader will not start; make it: \
             {init} ({e})",
            key_path.display()
        )),
        Err(e) => f.error(format!("{e}: the tls=yes readers will not start")),
        Ok(key) => {
            match vpcd_protocol::link::Identity::from_key_file(&key) {
                Ok(me) => f.ok(format!(
                    "the reader key {} is {}",
                    key_path.display(),
                    me.fingerprint
                )),
                Err(e) => f.error(format!(
                    "{} is unusable: {e}: the tls=yes readers will not start",
                    key_path.display()
                )),
            }
            if let Ok(Some(problem)) = keys::key_permission_problem(&key_path) {
                f.error(problem);
            }
        }
    }
    if !trust_path.exists() {
        f.error(format!(
            "{} is missing: the tls=yes readers will not start ({init})",
            trust_path.display()
        ));
        return;
    }
    match keys::load_trust(&trust_path) {
        Ok(list) if list.entries.is_empty() => f.warn(format!(
            "{} trusts no vicc key yet: every vicc is refused; pair one: vpcd-config tls show, \
             then sudo vpcd-config tls trust FINGERPRINT",
            trust_path.display()
        )),
        Ok(list) => f.ok(format!(
            "{} trusts {} vicc key(s)",
            trust_path.display(),
            list.entries.len()
        )),
        Err(e) => f.error(format!("{e}: the tls=yes readers will not start")),
    }
}

/// The vpcd readers of `path`, with each one's LIBPATH; problems become findings.
fn load_config(f: &mut Findings, path: &Path, why: &str) -> Vec<(Reader, Option<String>)> {
    let mut messages = vec![];
    let loaded = match load_readers(path, &mut messages) {
        Ok(l) => l,
        Err(e) => {
            f.error(format!(
                "cannot read {} ({why}): {e}: install the vpcd reader entry (scripts/install, or \
                 the vpcd-rs package), or give its file with --config",
                path.display()
            ));
            return vec![];
        }
    };
    for line in String::from_utf8_lossy(&messages).lines() {
        let line = line.strip_prefix("vpcd-config: ").unwrap_or(line);
        match line.split_once(": ") {
            Some(("error", rest)) => f.error(rest.to_owned()),
            Some(("warning", rest)) => f.warn(rest.to_owned()),
            _ => f.warn(line.to_owned()),
        }
    }
    if loaded.readers.is_empty() {
        f.error(format!(
            "no usable vpcd reader (LIBPATH .../{DRIVER_FILE}) in {} ({why}): install one \
             (scripts/install, or the vpcd-rs package) and restart pcscd",
            path.display()
        ));
        return vec![];
    }
    let names: Vec<String> = loaded
        .readers
        .iter()
        .map(|r| format!("\"{}\" ({})", r.name, r.device))
        .collect();
    f.ok(format!(
        "{} vpcd reader{} in {} ({why}): {}",
        loaded.readers.len(),
        if loaded.readers.len() == 1 { "" } else { "s" },
        path.display(),
        names.join(", ")
    ));
    loaded
        .readers
        .into_iter()
        .map(|r| {
            let lib = lib_path_of(&r);
            (r, lib)
        })
        .collect()
}

/// The LIBPATH of a reader read from a file.
fn lib_path_of(reader: &Reader) -> Option<String> {
    let Origin::File { path, line } = &reader.origin else {
        return None;
    };
    let text = std::fs::read(path).ok()?;
    parse_reader_conf(&String::from_utf8_lossy(&text))
        .entries
        .into_iter()
        .find(|e| e.line == *line)
        .map(|e| strip_quotes(e.lib_path.trim_end_matches('\n')).to_owned())
}

fn check_config_age(f: &mut Findings, p: &Proc, conf: &Path) {
    let Some(started) = process_start(p.pid) else {
        return;
    };
    let files: Vec<PathBuf> = if conf.is_dir() {
        std::fs::read_dir(conf)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .collect()
    } else {
        vec![conf.to_owned()]
    };
    for file in files {
        let Ok(modified) = std::fs::metadata(&file).and_then(|m| m.modified()) else {
            continue;
        };
        // Clock ticks are 10 ms: allow for them.
        if modified > started + Duration::from_secs(1) {
            f.warn(format!(
                "{} changed after pcscd (pid {}) started: pcscd reads it only at start; restart \
                 it: sudo systemctl restart pcscd",
                file.display(),
                p.pid
            ));
        }
    }
}

fn check_auto_exit(f: &mut Findings, ours: Option<&Proc>) {
    let unit = systemd_unit();
    let under_systemd = ours.is_some_and(|p| p.systemd_unit().as_deref() == Some("pcscd.service"));
    if let Some(p) = ours {
        if p.auto_exit() {
            f.warn(format!(
                "pcscd (pid {}) runs with --auto-exit: it quits 60 s after its last PC/SC client \
                 and the vpcd ports close with it; install the vpcd-rs systemd drop-in \
                 (scripts/install, or the vpcd-rs package) and restart pcscd",
                p.pid
            ));
        } else {
            f.ok(format!(
                "pcscd (pid {}) runs without --auto-exit: it stays up",
                p.pid
            ));
        }
    }
    let Some(unit) = unit else { return };
    if ours.is_some() && !under_systemd {
        return;
    }
    if unit.masked {
        f.note(format!("pcscd.service is masked ({})", unit.path.display()));
        return;
    }
    if unit.auto_exit {
        let why = if unit.drop_in_masked {
            " (the vpcd-rs drop-in is masked: you opted out)"
        } else {
            ""
        };
        f.warn(format!(
            "pcscd.service starts pcscd with --auto-exit{why}: after 60 s without a PC/SC \
             client it quits and a vicc gets 'Connection refused'; install the vpcd-rs drop-in \
             (scripts/install, or the vpcd-rs package)"
        ));
    } else if unit.drop_in {
        f.ok("pcscd.service starts pcscd without --auto-exit (the vpcd-rs drop-in)");
    }
    if ours.is_none() && !unit.at_boot && !unit.auto_exit {
        f.note("pcscd.service is not started at boot: it starts with its first PC/SC client");
    }
}

/// One line per slot; true when another program holds one of the ports.
fn check_ports(
    f: &mut Findings,
    readers: &[(Reader, Option<String>)],
    ours: Option<&Proc>,
    procs: &[Proc],
) -> bool {
    let mut any_held = false;
    let listening = listening_sockets();
    let wanted: HashSet<u64> = listening.iter().map(|l| l.inode).collect();
    let holders = socket_holders(&wanted);
    let by_pid: HashMap<u32, &Proc> = procs.iter().map(|p| (p.pid, p)).collect();
    let mut local = None;
    for (reader, _) in readers {
        let Endpoint::Listen { addr, v6only } = &reader.config.endpoint else {
            if let Endpoint::Connect { host } = &reader.config.endpoint {
                let last = reader.config.port + reader.config.slots - 1;
                f.note(format!(
                    "\"{}\" is reversed: pcscd connects out to {}:{}{} (a vicc listening there: \
                     vpcd-vicc --reversed -P {})",
                    reader.name,
                    url_host(host),
                    reader.config.port,
                    if last > reader.config.port {
                        format!("-{last}")
                    } else {
                        String::new()
                    },
                    reader.config.port
                ));
            }
            continue;
        };
        // A port of this reader that another program holds: the reader did not start.
        let sibling_held = (0..reader.config.slots)
            .filter_map(|slot| reader.config.port_of(slot))
            .find(|port| {
                listening.iter().any(|l| {
                    l.port == *port
                        && !holders
                            .get(&l.inode)
                            .is_some_and(|pids| ours.is_some_and(|p| pids.contains(&p.pid)))
                })
            });
        for slot in 0..reader.config.slots {
            let Some(port) = reader.config.port_of(slot) else {
                break;
            };
            let what = format!("port {port} (\"{}\", slot {slot})", reader.name);
            let here: Vec<&Listening> = listening.iter().filter(|l| l.port == port).collect();
            if here.is_empty() {
                match (ours, sibling_held) {
                    (Some(_), Some(other)) => f.error(format!(
                        "{what}: nothing listens: the reader did not start, because port {other} \
                         is held"
                    )),
                    (Some(p), None) => f.error(format!(
                        "{what}: nothing listens: pcscd (pid {}) has not opened it; its log says \
                         why (journalctl -u pcscd | grep ifdvpcd, or run pcscd -f -d)",
                        p.pid
                    )),
                    (None, _) => f.error(format!("{what}: nothing listens (pcscd is not running)")),
                }
                continue;
            }
            let mut held_by_ours = false;
            let mut other = vec![];
            for l in &here {
                let pids = holders.get(&l.inode).cloned().unwrap_or_default();
                if ours.is_some_and(|p| pids.contains(&p.pid)) {
                    held_by_ours = true;
                } else {
                    other.push((l, pids));
                }
            }
            if held_by_ours {
                let local = local.get_or_insert_with(|| local_addresses().unwrap_or_default());
                let (ips, reach) = reachable_addresses(*addr, *v6only, local);
                let at: Vec<String> = ips
                    .iter()
                    .map(|ip| format!("{}:{port}", url_host(&ip.to_string())))
                    .collect();
                let whom = match reach {
                    _ if addr.is_loopback() => "a vicc on this machine",
                    Reach::Loopback => "a vicc on this machine",
                    Reach::LinkLocal => "a vicc on the same link",
                    Reach::Down => "a vicc (once the interface is up)",
                    _ => "a vicc",
                };
                let listen: Vec<String> = here.iter().map(|l| l.addr.to_string()).collect();
                f.ok(format!(
                    "{what} listens on {} (pcscd pid {}): {whom} reaches it at {}",
                    listen.join(", "),
                    ours.map(|p| p.pid).unwrap_or(0),
                    at.join(", ")
                ));
                continue;
            }
            any_held = true;
            let (l, pids) = &other[0];
            let place = match &reader.origin {
                Origin::File { path, line } => format!(" in {} line {line}", path.display()),
                _ => String::new(),
            };
            let remedy = format!(
                "stop it, or give this reader another port (DEVICENAME /dev/null:PORT{place})"
            );
            if pids.is_empty() {
                f.error(format!(
                    "{what} is held by a process this user cannot see (listening on {}): run \
                     as root to name it; {remedy}",
                    l.addr
                ));
                continue;
            }
            let names: Vec<String> = pids
                .iter()
                .map(|pid| describe_holder(*pid, by_pid.get(pid).copied()))
                .collect();
            f.error(format!("{what} is held by {}: {remedy}", names.join(", ")));
        }
    }
    any_held
}

/// "PROG (pid N: CMDLINE)", and for a pcscd which driver it loaded.
fn describe_holder(pid: u32, p: Option<&Proc>) -> String {
    let Some(p) = p else {
        return format!("pid {pid}");
    };
    let cmd = p.cmdline.join(" ").replace(char::is_control, " ");
    let cmd = if cmd.len() > 80 {
        format!("{}...", &cmd[..char_floor(&cmd, 77)])
    } else {
        cmd
    };
    if p.comm != "pcscd" {
        return format!("{} (pid {pid}: {cmd})", p.comm);
    }
    let drivers = match mapped_drivers(pid) {
        Ok(libs) => libs
            .iter()
            .map(|lib| match driver_kind(lib) {
                Some(false) => format!("the C vpcd {}", lib.display()),
                _ => lib.display().to_string(),
            })
            .collect::<Vec<_>>()
            .join(", "),
        Err(_) => String::new(),
    };
    let with = if drivers.is_empty() {
        String::new()
    } else {
        format!(", with {drivers}")
    };
    format!("a second pcscd (pid {pid}: {cmd}{with})")
}

/// The largest char boundary of `s` at or below `i`.
fn char_floor(s: &str, mut i: usize) -> usize {
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

fn check_selinux(f: &mut Findings) {
    let Ok(enforce) = std::fs::read_to_string("/sys/fs/selinux/enforce") else {
        return;
    };
    if enforce.trim() != "1" {
        f.note("SELinux is not enforcing: it denies pcscd nothing");
        return;
    }
    let log = Path::new("/var/log/audit/audit.log");
    match read_tail(log, 4 << 20) {
        Ok(text) => {
            let denial = text.lines().rev().find(|l| {
                l.contains("avc:")
                    && l.contains("denied")
                    && l.contains("pcscd")
                    && (l.contains("name_bind") || l.contains("name_connect"))
            });
            match denial {
                Some(line) => f.error(format!(
                    "SELinux denied pcscd a port ({}): allow it: sudo ausearch -m avc -c pcscd \
                     --raw | audit2allow -M vpcd-pcscd && sudo semodule -i vpcd-pcscd.pp",
                    line.split("denied").nth(1).unwrap_or("").trim()
                )),
                None => f.ok("SELinux is enforcing and has denied pcscd no port (audit.log)"),
            }
        }
        Err(_) => f.note(
            "SELinux is enforcing: if a port does not listen, look for denials: sudo ausearch \
             -m avc -c pcscd",
        ),
    }
}

fn read_tail(path: &Path, max: u64) -> io::Result<String> {
    use std::io::{Seek, SeekFrom};
    let mut file = std::fs::File::open(path)?;
    let len = file.metadata()?.len();
    file.seek(SeekFrom::Start(len.saturating_sub(max)))?;
    let mut bytes = vec![];
    file.take(max).read_to_end(&mut bytes)?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

// ---------------------------------------------------------------------------------
// Processes

struct Proc {
    pid: u32,
    comm: String,
    cmdline: Vec<String>,
}

impl Proc {
    /// pcscd's `--config FILE` / `-c FILE`.
    fn pcscd_option_config(&self) -> Option<PathBuf> {
        let mut args = self.cmdline.iter().skip(1);
        while let Some(a) = args.next() {
            if a == "--config" {
                return args.next().map(PathBuf::from);
            }
            if let Some(v) = a.strip_prefix("--config=") {
                return Some(PathBuf::from(v));
            }
            if a.starts_with("--") {
                continue;
            }
            if let Some(short) = a.strip_prefix('-') {
                if let Some(i) = short.find('c') {
                    let rest = &short[i + 1..];
                    return if rest.is_empty() {
                        args.next().map(PathBuf::from)
                    } else {
                        Some(PathBuf::from(rest))
                    };
                }
            }
        }
        None
    }

    fn auto_exit(&self) -> bool {
        exec_auto_exit(self.cmdline.iter().skip(1).map(String::as_str))
    }

    /// The systemd unit of the process, from its cgroup.
    fn systemd_unit(&self) -> Option<String> {
        let cg = std::fs::read_to_string(format!("/proc/{}/cgroup", self.pid)).ok()?;
        cg.lines()
            .filter_map(|l| l.rsplit('/').next())
            .find(|u| u.ends_with(".service"))
            .map(str::to_owned)
    }
}

/// Does a pcscd command line ask for --auto-exit?
fn exec_auto_exit<'a>(args: impl Iterator<Item = &'a str>) -> bool {
    for a in args {
        if a == "--auto-exit" {
            return true;
        }
        if a.starts_with("--") {
            continue;
        }
        if let Some(short) = a.strip_prefix('-') {
            // Short options up to one that takes a value (-c FILE, -t N, -s N, -r N).
            for c in short.chars() {
                if c == 'x' {
                    return true;
                }
                if "ctsr".contains(c) {
                    break;
                }
            }
        }
    }
    false
}

/// The pids under /proc (none where it cannot be read).
fn pids() -> impl Iterator<Item = u32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
}

fn processes() -> Vec<Proc> {
    let mut out = vec![];
    for pid in pids() {
        let Ok(comm) = std::fs::read_to_string(format!("/proc/{pid}/comm")) else {
            continue;
        };
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))
            .map(|b| {
                b.split(|&c| c == 0)
                    .filter(|s| !s.is_empty())
                    .map(|s| String::from_utf8_lossy(s).into_owned())
                    .collect()
            })
            .unwrap_or_default();
        out.push(Proc {
            pid,
            comm: comm.trim_end().to_owned(),
            cmdline,
        });
    }
    out.sort_by_key(|p| p.pid);
    out
}

/// The pcscd that serves `socket`: the pid file beside it, else a pcscd whose root
/// (its mount namespace, for a private one) has that very socket at pcscd's path.
fn serving_pcscd<'a>(pcscds: &[&'a Proc], socket: &Path) -> Option<&'a Proc> {
    let pid_file = socket.with_file_name("pcscd.pid");
    if let Some(pid) = std::fs::read_to_string(pid_file)
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
    {
        if let Some(p) = pcscds.iter().find(|p| p.pid == pid) {
            return Some(p);
        }
    }
    let want = std::fs::metadata(socket).ok().map(|m| (m.dev(), m.ino()));
    let mut unknown = None;
    for p in pcscds {
        match std::fs::metadata(format!("/proc/{}/root{DEFAULT_SOCKET}", p.pid)) {
            Ok(m) if Some((m.dev(), m.ino())) == want => return Some(p),
            Ok(_) => {}
            // Another user's process: its root cannot be seen; take it for the
            // system's daemon if nothing better turns up.
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => unknown = unknown.or(Some(*p)),
            Err(_) => {}
        }
    }
    if socket == Path::new(DEFAULT_SOCKET) && want.is_some() {
        unknown
    } else {
        None
    }
}

/// When the process started.
fn process_start(pid: u32) -> Option<SystemTime> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Field 22, counted after the command name in parentheses.
    let after = &stat[stat.rfind(')')? + 2..];
    let ticks: u64 = after.split(' ').nth(19)?.parse().ok()?;
    let btime: u64 = std::fs::read_to_string("/proc/stat")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("btime ")?.trim().parse().ok())?;
    // SAFETY: sysconf has no preconditions.
    #[allow(unsafe_code)]
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let hz = u64::try_from(hz).ok().filter(|&h| h > 0)?;
    Some(
        SystemTime::UNIX_EPOCH
            + Duration::from_secs(btime)
            + Duration::from_millis(ticks * 1000 / hz),
    )
}

/// The libifdvpcd.so files mapped into a process.
fn mapped_drivers(pid: u32) -> io::Result<Vec<PathBuf>> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps"))?;
    let mut libs: Vec<PathBuf> = maps
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .filter(|p| {
            Path::new(p)
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("libifdvpcd"))
        })
        .map(PathBuf::from)
        .collect();
    libs.sort();
    libs.dedup();
    Ok(libs)
}

/// Whether a driver file is this project's (Rust) driver or vsmartcard's C one.
fn driver_kind(lib: &Path) -> Option<bool> {
    let bytes = std::fs::read(lib).ok()?;
    let rust = bytes.windows(14).any(|w| w == b"RUST_BACKTRACE");
    Some(rust)
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) => (x.dev(), x.ino()) == (y.dev(), y.ino()),
        _ => a == b,
    }
}

// ---------------------------------------------------------------------------------
// pcscd --version

#[derive(Debug, PartialEq, Eq)]
struct PcscdVersion {
    version: String,
    features: Vec<String>,
    config_dir: Option<PathBuf>,
}

fn installed_pcscd() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join("pcscd"))
        .find(|p| p.is_file())
}

fn pcscd_version(exe: &Path) -> Option<PcscdVersion> {
    let out = run_with_timeout(Command::new(exe).arg("--version"), COMMAND_TIMEOUT)?;
    parse_version(&out)
}

fn parse_version(text: &str) -> Option<PcscdVersion> {
    let version = text
        .lines()
        .find_map(|l| l.strip_prefix("pcsc-lite version "))?
        .trim()
        .trim_end_matches('.')
        .to_owned();
    let features: Vec<String> = text
        .lines()
        .find_map(|l| l.strip_prefix("Enabled features:"))
        .map(|l| l.split_whitespace().map(str::to_owned).collect())
        .unwrap_or_default();
    let config_dir = features.iter().find_map(|f| {
        f.strip_prefix("configdir=")
            .or_else(|| f.strip_prefix("serialconfdir="))
            .map(PathBuf::from)
    });
    Some(PcscdVersion {
        version,
        features,
        config_dir,
    })
}

/// A command's stdout, or None when it fails to start or takes longer than `limit`.
fn run_with_timeout(cmd: &mut Command, limit: Duration) -> Option<String> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let deadline = Instant::now() + limit;
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
        }
    }
    let mut out = String::new();
    child.stdout.take()?.read_to_string(&mut out).ok()?;
    Some(out)
}

// ---------------------------------------------------------------------------------
// Listening TCP sockets

#[derive(Debug, PartialEq, Eq)]
struct Listening {
    addr: IpAddr,
    port: u16,
    inode: u64,
}

fn listening_sockets() -> Vec<Listening> {
    let mut out = vec![];
    for file in ["/proc/net/tcp", "/proc/net/tcp6"] {
        if let Ok(text) = std::fs::read_to_string(file) {
            out.extend(parse_proc_net_tcp(&text));
        }
    }
    out
}

/// The LISTEN sockets of a /proc/net/tcp or tcp6 table.
fn parse_proc_net_tcp(text: &str) -> Vec<Listening> {
    let mut out = vec![];
    for line in text.lines().skip(1) {
        let cols: Vec<&str> = line.split_whitespace().collect();
        if cols.len() < 10 || cols[3] != "0A" {
            continue;
        }
        let Some((addr, port)) = cols[1].split_once(':') else {
            continue;
        };
        let (Ok(port), Ok(inode)) = (u16::from_str_radix(port, 16), cols[9].parse::<u64>()) else {
            continue;
        };
        // The kernel prints each 32-bit word of the address in host byte order.
        let words: Option<Vec<[u8; 4]>> = (0..addr.len() / 8)
            .map(|i| {
                u32::from_str_radix(addr.get(i * 8..i * 8 + 8)?, 16)
                    .ok()
                    .map(u32::to_ne_bytes)
            })
            .collect();
        let addr = match words.as_deref() {
            Some([w]) => IpAddr::V4(Ipv4Addr::from(*w)),
            Some(ws) if ws.len() == 4 => {
                let mut b = [0u8; 16];
                for (i, w) in ws.iter().enumerate() {
                    b[i * 4..i * 4 + 4].copy_from_slice(w);
                }
                IpAddr::V6(Ipv6Addr::from(b))
            }
            _ => continue,
        };
        out.push(Listening { addr, port, inode });
    }
    out
}

/// The processes that hold each of `inodes` (sockets), from /proc/*/fd.
fn socket_holders(inodes: &HashSet<u64>) -> HashMap<u64, Vec<u32>> {
    let mut out: HashMap<u64, Vec<u32>> = HashMap::new();
    if inodes.is_empty() {
        return out;
    }
    for pid in pids() {
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            let Ok(target) = std::fs::read_link(fd.path()) else {
                continue;
            };
            let target = target.to_string_lossy();
            let Some(inode) = target
                .strip_prefix("socket:[")
                .and_then(|s| s.strip_suffix(']'))
                .and_then(|s| s.parse::<u64>().ok())
            else {
                continue;
            };
            if inodes.contains(&inode) {
                let pids = out.entry(inode).or_default();
                if !pids.contains(&pid) {
                    pids.push(pid);
                }
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------------
// systemd's pcscd.service, read without systemd

#[derive(Debug, Default)]
struct Unit {
    path: PathBuf,
    masked: bool,
    auto_exit: bool,
    drop_in: bool,
    drop_in_masked: bool,
    at_boot: bool,
}

/// systemd's unit search path, highest priority first (`SYSTEMD_UNIT_PATH` as systemd
/// takes it: a trailing `:` appends the default).
fn unit_path() -> Vec<PathBuf> {
    const DEFAULT: [&str; 5] = [
        "/etc/systemd/system",
        "/run/systemd/system",
        "/usr/local/lib/systemd/system",
        "/usr/lib/systemd/system",
        "/lib/systemd/system",
    ];
    let defaults = DEFAULT.iter().map(PathBuf::from);
    match std::env::var("SYSTEMD_UNIT_PATH") {
        Ok(v) => {
            let mut dirs: Vec<PathBuf> = v
                .split(':')
                .filter(|s| !s.is_empty())
                .map(PathBuf::from)
                .collect();
            if v.ends_with(':') {
                dirs.extend(defaults);
            }
            dirs
        }
        Err(_) => defaults.collect(),
    }
}

fn is_masked(p: &Path) -> bool {
    std::fs::read_link(p).is_ok_and(|t| t == Path::new("/dev/null"))
        || std::fs::metadata(p).is_ok_and(|m| m.len() == 0 && !m.is_dir())
}

/// The drop-ins of `unit` in effect, in the order systemd applies them.
fn drop_ins(dirs: &[PathBuf], unit: &str) -> Vec<(String, PathBuf)> {
    let mut chosen: HashMap<String, PathBuf> = HashMap::new();
    for dir in dirs.iter().rev() {
        let Ok(entries) = std::fs::read_dir(dir.join(format!("{unit}.d"))) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.ends_with(".conf") {
                chosen.insert(name, e.path());
            }
        }
    }
    let mut list: Vec<(String, PathBuf)> = chosen.into_iter().collect();
    list.sort();
    list
}

fn systemd_unit() -> Option<Unit> {
    let dirs = unit_path();
    let main = dirs
        .iter()
        .map(|d| d.join("pcscd.service"))
        .find(|p| p.exists() || p.is_symlink())?;
    let mut unit = Unit {
        masked: is_masked(&main),
        path: main.clone(),
        ..Unit::default()
    };
    if unit.masked {
        return Some(unit);
    }
    let mut exec: Vec<String> = vec![];
    let mut files = vec![main];
    for (name, path) in drop_ins(&dirs, "pcscd.service") {
        if name == DROP_IN {
            if is_masked(&path) {
                unit.drop_in_masked = true;
            } else {
                unit.drop_in = true;
            }
        }
        files.push(path);
    }
    for file in files {
        let Ok(text) = std::fs::read_to_string(&file) else {
            continue;
        };
        exec_starts(&text, &mut exec);
    }
    unit.auto_exit = exec
        .iter()
        .any(|e| exec_auto_exit(e.split_whitespace().skip(1)));
    let boot_drop_in = drop_ins(&dirs, "multi-user.target")
        .into_iter()
        .any(|(name, path)| name == DROP_IN && !is_masked(&path));
    let wanted = dirs.iter().any(|d| {
        std::fs::read_dir(d)
            .into_iter()
            .flatten()
            .flatten()
            .any(|e| {
                e.file_name().to_string_lossy().ends_with(".wants")
                    && e.path().join("pcscd.service").exists()
            })
    });
    unit.at_boot = boot_drop_in || wanted;
    Some(unit)
}

/// Applies the `ExecStart=` lines of a unit file's [Service] section to `exec`.
fn exec_starts(text: &str, exec: &mut Vec<String>) {
    let mut service = false;
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            service = line == "[Service]";
            continue;
        }
        if !service {
            continue;
        }
        if let Some(v) = line.strip_prefix("ExecStart=") {
            let v = v.trim();
            if v.is_empty() {
                exec.clear();
            } else {
                exec.push(v.trim_start_matches(['-', '@', ':', '+', '!']).to_owned());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_net_tcp_listeners() {
        let v4 = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
           0: 0100007F:8C7B 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 12345 1 0000000000000000 100 0 0 10 0\n\
           1: 0100007F:8C7C 0100007F:D431 01 00000000:00000000 00:00000000 00000000     0        0 999 1 0000000000000000 20 4 30 10 -1\n";
        assert_eq!(
            parse_proc_net_tcp(v4),
            vec![Listening {
                addr: "127.0.0.1".parse().unwrap(),
                port: 35963,
                inode: 12345
            }]
        );
        let v6 = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
           0: 00000000000000000000000001000000:2710 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 77 1 0000000000000000 100 0 0 10 0\n\
           1: 00000000000000000000000000000000:2711 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 78 1 0000000000000000 100 0 0 10 0\n";
        let got = parse_proc_net_tcp(v6);
        assert_eq!(got[0].addr, "::1".parse::<IpAddr>().unwrap());
        assert_eq!((got[0].port, got[0].inode), (10000, 77));
        assert_eq!(got[1].addr, "::".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn pcscd_versions() {
        let v = parse_version(
            "pcsc-lite version 1.9.9.\nCopyright (C) ...\nEnabled features: Linux x86_64-pc-linux-gnu libsystemd serial usb libudev usbdropdir=/usr/lib/pcsc/drivers ipcdir=/run/pcscd filter configdir=/etc/reader.conf.d\n",
        )
        .unwrap();
        assert_eq!(v.version, "1.9.9");
        assert!(v.features.contains(&"serial".to_owned()));
        assert_eq!(v.config_dir, Some(PathBuf::from("/etc/reader.conf.d")));
        let v = parse_version(
            "pcsc-lite version 2.2.1.\nEnabled features: Linux x86_64 libsystemd usb libudev ipcdir=/run/pcscd serialconfdir=/etc/pcsc\n",
        )
        .unwrap();
        assert!(!v.features.contains(&"serial".to_owned()));
        assert_eq!(v.config_dir, Some(PathBuf::from("/etc/pcsc")));
        assert_eq!(parse_version("something else"), None);
    }

    #[test]
    fn auto_exit_and_config_options() {
        let p = |args: &[&str]| Proc {
            pid: 1,
            comm: "pcscd".into(),
            cmdline: args.iter().map(|s| s.to_string()).collect(),
        };
        assert!(p(&["/usr/sbin/pcscd", "--foreground", "--auto-exit"]).auto_exit());
        assert!(p(&["pcscd", "-fx"]).auto_exit());
        assert!(!p(&["pcscd", "-f", "-c", "/x"]).auto_exit());
        assert!(!p(&["pcscd", "-c", "x"]).auto_exit());
        assert_eq!(
            p(&["pcscd", "-f", "--config", "/a/b", "-d"]).pcscd_option_config(),
            Some(PathBuf::from("/a/b"))
        );
        assert_eq!(
            p(&["pcscd", "-fc/a/c"]).pcscd_option_config(),
            Some(PathBuf::from("/a/c"))
        );
        assert_eq!(p(&["pcscd", "-f"]).pcscd_option_config(), None);
    }

    #[test]
    fn exec_start_resets_and_overrides() {
        let mut exec = vec![];
        exec_starts(
            "[Unit]\nExecStart=/nope\n[Service]\nExecStart=/usr/sbin/pcscd --foreground --auto-exit $PCSCD_ARGS\n",
            &mut exec,
        );
        assert_eq!(exec.len(), 1);
        assert!(exec_auto_exit(exec[0].split_whitespace().skip(1)));
        exec_starts(
            "[Service]\nExecStart=\nExecStart=/usr/sbin/pcscd --foreground $PCSCD_ARGS\n",
            &mut exec,
        );
        assert_eq!(exec, ["/usr/sbin/pcscd --foreground $PCSCD_ARGS"]);
        assert!(!exec_auto_exit(exec[0].split_whitespace().skip(1)));
    }
}
