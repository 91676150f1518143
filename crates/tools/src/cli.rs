//! The command-line conventions `vpcd-vicc` and `vpcd-config` share.
//!
//! Both parse their arguments with `lexopt`, so both accept `-P 1`, `-P1`, `--port 1`,
//! `--port=1` and bundled flags (`-lv`); the same option has the same spelling in both
//! (`-H, --host`, `-P, --port`, `--listen`, `-h, --help`, `-V, --version`). A usage
//! error is one line naming the option, a pointer to `--help`, and exit status 2.

use std::ffi::OsString;
use std::fmt::Display;

use lexopt::{Arg, Parser};

/// The exit status of a usage error.
pub const USAGE: u8 = 2;

/// The option as the user spelled it: `-P` or `--port`.
pub fn option_name(arg: &Arg) -> String {
    match arg {
        Arg::Short(c) => format!("-{c}"),
        Arg::Long(name) => format!("--{name}"),
        Arg::Value(v) => v.to_string_lossy().into_owned(),
    }
}

/// The value of the option just seen (attached, `--port=1` / `-P1`, or the next
/// argument, even one starting with `-`).
pub fn os_value(parser: &mut Parser) -> Result<OsString, String> {
    parser.value().map_err(|e| e.to_string())
}

/// The value of the option just seen, as text.
pub fn value(parser: &mut Parser, option: &str) -> Result<String, String> {
    text(option, os_value(parser)?)
}

/// A value as text, or an error naming the option it belongs to.
pub fn text(option: &str, value: OsString) -> Result<String, String> {
    value
        .into_string()
        .map_err(|v| format!("{option}: {v:?} is not valid text"))
}

/// The message of a usage error: `TOOL: MESSAGE` and where to look for help.
pub fn usage_error(tool: &str, message: impl Display) -> String {
    format!("{tool}: {message}\nTry '{tool} --help' for more information.")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_messages() {
        assert_eq!(option_name(&Arg::Short('P')), "-P");
        assert_eq!(option_name(&Arg::Long("port")), "--port");
        assert_eq!(text("-H", "x".into()), Ok("x".into()));
        assert_eq!(
            usage_error("vpcd-vicc", "invalid option '--bogus'"),
            "vpcd-vicc: invalid option '--bogus'\nTry 'vpcd-vicc --help' for more information."
        );
    }
}
