//! Routes the `log` crate into pcscd's own log.
//!
//! pcscd exports `log_msg(int priority, const char *fmt, ...)`; libpcsclite does not,
//! so the symbol is looked up at run time. Loaded anywhere else (a test, a tool), the
//! driver logs to syslog, or to stderr when `VPCD_LOG_STDERR` is set.
//!
//! Verbosity: `info` unless the environment variable `VPCD_LOG`
//! (error|warn|info|debug|trace) or a reader's `log=` option asks for more.

use std::ffi::{c_char, c_int, CString};
use std::sync::OnceLock;

use log::{Level, LevelFilter, Log, Metadata, Record};

/// pcscd's priorities (debuglog.h).
const PCSC_LOG_DEBUG: c_int = 0;
const PCSC_LOG_INFO: c_int = 1;
const PCSC_LOG_ERROR: c_int = 2;

type LogMsg = unsafe extern "C" fn(c_int, *const c_char, ...);

enum Sink {
    Pcscd(LogMsg),
    Syslog,
    Stderr,
}

struct Bridge {
    sink: Sink,
}

static BRIDGE: OnceLock<Bridge> = OnceLock::new();

/// Installs the bridge once per process; later calls do nothing.
pub fn init() {
    let mut first = false;
    let bridge = BRIDGE.get_or_init(|| {
        first = true;
        Bridge { sink: find_sink() }
    });
    if first && log::set_logger(bridge).is_ok() {
        let level = std::env::var("VPCD_LOG")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(LevelFilter::Info);
        log::set_max_level(level);
    }
}

/// Raises the verbosity to at least `level` (a reader's `log=` option).
pub fn raise_level(level: Option<LevelFilter>) {
    if let Some(level) = level {
        if level > log::max_level() {
            log::set_max_level(level);
        }
    }
}

fn find_sink() -> Sink {
    if std::env::var_os("VPCD_LOG_STDERR").is_some() {
        return Sink::Stderr;
    }
    // SAFETY: dlsym with RTLD_DEFAULT and a NUL-terminated name only reads the loaded
    // objects' symbol tables.
    let symbol = unsafe { libc::dlsym(libc::RTLD_DEFAULT, c"log_msg".as_ptr()) };
    if symbol.is_null() {
        Sink::Syslog
    } else {
        // SAFETY: pcscd defines log_msg as `void log_msg(const int, const char *, ...)`,
        // which is the type LogMsg spells out; a non-null dlsym result is its address.
        Sink::Pcscd(unsafe { std::mem::transmute::<*mut libc::c_void, LogMsg>(symbol) })
    }
}

impl Log for Bridge {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let text = format!("ifdvpcd: {}", record.args());
        if let Sink::Stderr = self.sink {
            eprintln!("{} {text}", record.level());
            return;
        }
        // A message with a NUL inside is cut there rather than lost.
        let text = CString::new(text).unwrap_or_else(|e| {
            let end = e.nul_position();
            CString::new(&e.into_vec()[..end]).unwrap_or_default()
        });
        match self.sink {
            Sink::Pcscd(log_msg) => {
                let priority = match record.level() {
                    Level::Error | Level::Warn => PCSC_LOG_ERROR,
                    Level::Info => PCSC_LOG_INFO,
                    Level::Debug | Level::Trace => PCSC_LOG_DEBUG,
                };
                // SAFETY: "%s" consumes exactly the one C string argument we pass, and
                // both strings outlive the call.
                unsafe { log_msg(priority, c"%s".as_ptr(), text.as_ptr()) };
            }
            Sink::Syslog => {
                let priority = match record.level() {
                    Level::Error => libc::LOG_ERR,
                    Level::Warn => libc::LOG_WARNING,
                    Level::Info => libc::LOG_INFO,
                    Level::Debug | Level::Trace => libc::LOG_DEBUG,
                };
                // SAFETY: as above: a "%s" format with one valid C string argument.
                unsafe { libc::syslog(libc::LOG_DAEMON | priority, c"%s".as_ptr(), text.as_ptr()) };
            }
            Sink::Stderr => {}
        }
    }

    fn flush(&self) {}
}
