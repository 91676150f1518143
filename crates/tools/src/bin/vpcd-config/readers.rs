//! The readers to describe: the vpcd entries of a reader.conf file or directory, as
//! pcscd would load them, the reader of `--port`, or the default one.

use std::io::{self, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use vpcd_protocol::config::{ReaderConfig, DEFAULT_PORT, DEFAULT_SLOTS};

use crate::readerconf::{c_channel_id, is_vpcd_lib, parse_reader_conf, strip_quotes, ConfEntry};

/// The friendly name of the C project's reader.conf entry, for the readers we make up.
const DEFAULT_NAME: &str = "Virtual PCD";

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Origin {
    File { path: PathBuf, line: usize },
    CommandLine,
    Default,
}

#[derive(Debug, Clone)]
pub(crate) struct Reader {
    pub(crate) name: String,
    pub(crate) origin: Origin,
    /// `DEVICENAME value` or `CHANNELID value`, for messages.
    pub(crate) device: String,
    pub(crate) config: ReaderConfig,
}

/// The readers of a reader.conf file or directory, and how many vpcd entries were
/// unusable. Warnings go to `err`.
pub(crate) struct Loaded {
    pub(crate) readers: Vec<Reader>,
    pub(crate) broken: usize,
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

pub(crate) fn load_readers(path: &Path, err: &mut dyn Write) -> io::Result<Loaded> {
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
pub(crate) fn command_line_reader(
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

pub(crate) fn default_reader() -> Reader {
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
