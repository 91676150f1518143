//! Finding pcscd and what its build supports: from the strings of its binary where
//! it is an ELF file that has them (no process started: this is on every
//! environment's start), else from `pcscd --version` ("Enabled features: ...") and
//! `pcscd --help`. The tests check both ways agree on the real
//! binaries.
//!
//! The feature words differ between pcsc-lite's two build systems: 1.9.x (autotools)
//! says `libsystemd`, 2.x (meson) says `systemd`; both say `ipcdir=DIR` and `polkit`
//! when built with it. `--disable-polkit` exists from 2.0.0 on.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;

use crate::Error;

/// Where pcscd is looked for after `PATH`.
const SBIN: [&str; 3] = ["/usr/sbin", "/usr/local/sbin", "/sbin"];

/// `pcscd` from `PATH`, else from the sbin directories.
pub fn find() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(SBIN.iter().map(PathBuf::from))
        .map(|d| d.join("pcscd"))
        .find(|p| p.is_file())
}

/// What a pcscd binary supports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Features {
    /// "pcsc-lite version X" as it says.
    pub version: String,
    /// Built with libsystemd: takes a listening socket (LISTEN_FDS).
    pub socket_activation: bool,
    /// Built with polkit: every client is checked over D-Bus unless disabled.
    pub polkit: bool,
    /// Has `--disable-polkit` (2.0.0 and later).
    pub disable_polkit: bool,
    /// Its IPC directory (`/run/pcscd`), which must exist for it to start.
    pub ipc_dir: PathBuf,
}

impl Features {
    /// Parses `pcscd --version` and `--help` output.
    pub fn parse(version_output: &str, help_output: &str) -> Features {
        let version = version_output
            .lines()
            .next()
            .unwrap_or("")
            .trim()
            .trim_end_matches('.')
            .to_string();
        let words: Vec<&str> = version_output
            .lines()
            .find_map(|l| l.strip_prefix("Enabled features:"))
            .unwrap_or("")
            .split_whitespace()
            .collect();
        let ipc_dir = words
            .iter()
            .find_map(|w| w.strip_prefix("ipcdir="))
            .unwrap_or("/run/pcscd");
        Features {
            version,
            socket_activation: words.iter().any(|w| *w == "libsystemd" || *w == "systemd"),
            polkit: words.contains(&"polkit"),
            disable_polkit: help_output.contains("--disable-polkit"),
            ipc_dir: ipc_dir.into(),
        }
    }

    /// Reads the features from pcscd's binary: the log line only a libsystemd build
    /// has ("Started by systemd"), polkit's symbol, the `--disable-polkit` option,
    /// the compiled-in pid file's directory. None if it does not look like pcscd.
    pub fn from_binary(bytes: &[u8]) -> Option<Features> {
        if !bytes.starts_with(b"\x7fELF") {
            return None;
        }
        // One pass over its NUL-separated strings (a byte-wise search per needle
        // costs tens of milliseconds in a debug build).
        let mut f = Features {
            version: String::new(),
            socket_activation: false,
            polkit: false,
            disable_polkit: false,
            ipc_dir: PathBuf::new(),
        };
        let mut comm = false;
        let mut previous: &[u8] = b"";
        for s in bytes.split(|b| *b == 0) {
            if s.ends_with(b"Started by systemd") {
                f.socket_activation = true;
            } else if s == b"polkit_authority_get_sync" {
                f.polkit = true;
            } else if s == b"disable-polkit" || s.windows(16).any(|w| w == b"--disable-polkit") {
                f.disable_polkit = true;
            } else if s.starts_with(b"/") && s.ends_with(b"/pcscd.pid") {
                let dir = &s[..s.len() - b"/pcscd.pid".len()];
                f.ipc_dir = PathBuf::from(std::str::from_utf8(dir).ok()?);
            } else if s.ends_with(b"/pcscd.comm") {
                comm = true;
            } else if s.starts_with(b"pcsc-lite version ") {
                f.version = String::from_utf8_lossy(s)
                    .trim()
                    .trim_end_matches('.')
                    .to_string();
            } else if s == b"pcsc-lite"
                && f.version.is_empty()
                && !previous.is_empty()
                && previous.iter().all(|c| c.is_ascii_digit() || *c == b'.')
            {
                // 1.x: "1.9.9\0pcsc-lite\0%s version %s."
                f.version = format!("pcsc-lite version {}", String::from_utf8_lossy(previous));
            }
            if !s.is_empty() {
                previous = s;
            }
        }
        if !comm || f.ipc_dir.as_os_str().is_empty() {
            return None;
        }
        if f.version.is_empty() {
            f.version = "pcsc-lite".into();
        }
        Some(f)
    }

    /// What `pcscd` supports (once per binary and process): from its binary, else
    /// by asking it.
    pub fn of(pcscd: &Path) -> Result<Features, Error> {
        if let Some(f) = CACHE
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_or_insert_with(HashMap::new)
            .get(pcscd)
        {
            return Ok(f.clone());
        }
        if let Some(f) = std::fs::read(pcscd)
            .ok()
            .and_then(|b| Features::from_binary(&b))
        {
            return Ok(remember(pcscd, f));
        }
        Self::ask(pcscd).map(|f| remember(pcscd, f))
    }

    /// Runs `pcscd --version` and `pcscd --help`.
    pub fn ask(pcscd: &Path) -> Result<Features, Error> {
        let run = |arg: &str| {
            Command::new(pcscd)
                .arg(arg)
                .stdin(Stdio::null())
                .stderr(Stdio::null())
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .map_err(|e| match e.kind() {
                    std::io::ErrorKind::NotFound => Error::NoPcscd,
                    _ => Error::Io(format!("cannot run {}", pcscd.display()), e),
                })
        };
        let version = run("--version")?;
        if !version.contains("pcsc-lite") {
            return Err(Error::Config(format!(
                "{} does not say it is pcscd (its --version: {:?})",
                pcscd.display(),
                version.lines().next().unwrap_or("")
            )));
        }
        let help = run("--help")?;
        Ok(Features::parse(&version, &help))
    }
}

static CACHE: Mutex<Option<HashMap<PathBuf, Features>>> = Mutex::new(None);

fn remember(pcscd: &Path, f: Features) -> Features {
    CACHE
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get_or_insert_with(HashMap::new)
        .insert(pcscd.into(), f.clone());
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reading the binary says what asking pcscd says, for every pcscd at hand:
    /// Debian's and scripts/pcsc-lite's builds (with and without libsystemd).
    #[test]
    fn the_binary_agrees_with_pcscd_itself() {
        let mut seen = 0;
        for p in [
            "/usr/sbin/pcscd",
            "/var/cache/vpcd-pcsc-lite/2.3.3/build/pcscd",
            "/var/cache/vpcd-pcsc-lite/2.5.1/build/pcscd",
            "/var/cache/vpcd-pcsc-lite/2.3.3-systemd/build/pcscd",
            "/var/cache/vpcd-pcsc-lite/2.5.1-systemd/build/pcscd",
        ] {
            let Ok(bytes) = std::fs::read(p) else {
                continue;
            };
            let from_binary = Features::from_binary(&bytes).expect(p);
            let asked = Features::ask(Path::new(p)).unwrap();
            assert_eq!(from_binary, asked, "{p}");
            seen += 1;
        }
        assert!(seen > 0, "no pcscd here");
        assert_eq!(Features::from_binary(b"#!/bin/sh\necho pcsc-lite\n"), None);
    }

    #[test]
    fn debian_1_9_9() {
        let v = "pcsc-lite version 1.9.9.\nCopyright (C) 1999-2002 by David Corcoran.\n\
                 Enabled features: Linux x86_64-pc-linux-gnu libsystemd serial usb libudev \
                 usbdropdir=/usr/lib/pcsc/drivers ipcdir=/run/pcscd filter \
                 configdir=/etc/reader.conf.d\n";
        let f = Features::parse(v, "");
        assert_eq!(f.version, "pcsc-lite version 1.9.9");
        assert!(f.socket_activation && !f.polkit && !f.disable_polkit);
        assert_eq!(f.ipc_dir, Path::new("/run/pcscd"));
    }

    #[test]
    fn meson_builds() {
        let with = "pcsc-lite version 2.5.1.\nEnabled features: USB serial filter_names \
                    libudev polkit systemd Linux x86_64 ipcdir=/var/run/pcscd \
                    usbdropdir=/usr/lib/pcsc/drivers serialconfdir=/etc/reader.conf.d\n";
        let f = Features::parse(with, "  --disable-polkit\tdisable polkit support\n");
        assert!(f.socket_activation && f.polkit && f.disable_polkit);
        assert_eq!(f.ipc_dir, Path::new("/var/run/pcscd"));
        let without = "pcsc-lite version 2.3.3.\nEnabled features: serial Linux x86_64 \
                       ipcdir=/run/pcscd\n";
        let f = Features::parse(without, "");
        assert!(!f.socket_activation && !f.polkit);
        // "systemd" must be a word of its own, not part of another.
        let f = Features::parse("x\nEnabled features: nosystemd-thing\n", "");
        assert!(!f.socket_activation);
    }
}
