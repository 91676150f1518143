//! `vpcd-wait`: waits until a card is present in a reader (or in all of N readers,
//! or gone), event-driven through SCardGetStatusChange; exits 0 as soon as it is,
//! 1 with a message after the timeout. For test suites, instead of `sleep`.

#![forbid(unsafe_code)]

use std::process::ExitCode;
use std::time::Duration;

mod wait;

use wait::{Spec, Target};

fn help() -> String {
    format!(
        "\
vpcd-wait {version}: wait until a card is in a reader, without sleeping

Usage: vpcd-wait [options] [READER...]

Returns as soon as each READER named holds a card (by default: as soon as any
reader holds one), or fails after the timeout, saying what the readers hold.
It follows pcscd's events (SCardGetStatusChange), readers that appear later
included; it works with any pcscd: the system's, a private one
(PCSCLITE_CSOCK_NAME) or inside vpcd-run.

Options:
  -a, --all N          cards in at least N readers (with --absent: at least N
                       readers, none with a card)
      --absent         wait for the card(s) to be gone instead
  -t, --timeout SECS   give up after SECS seconds (default 10; fractions allowed)
  -v, --verbose        say on stderr what was reached and how long it took
  -h, --help           this help
  -V, --version        version

Examples:
  vpcd-vicc -l & vpcd-wait 'Virtual PCD 00 00' && opensc-tool -a
  vpcd-wait --all 2 -t 5         cards in both slots of the reader
  kill -USR1 $VICC; vpcd-wait --absent 'Virtual PCD 00 00'

Exit status: 0 reached, 1 timeout or error, 2 bad usage.
",
        version = env!("CARGO_PKG_VERSION")
    )
}

enum Parsed {
    Wait(Spec, bool),
    Help,
    Version,
}

fn parse_args<I: IntoIterator<Item = String>>(args: I) -> Result<Parsed, String> {
    use lexopt::prelude::*;
    let mut parser = lexopt::Parser::from_args(args);
    let mut readers = vec![];
    let mut all = None;
    let mut present = true;
    let mut timeout = Duration::from_secs(10);
    let mut verbose = false;
    while let Some(arg) = parser.next().map_err(|e| e.to_string())? {
        match arg {
            Short('a') | Long("all") => {
                let n: usize = parser
                    .value()
                    .map_err(|e| e.to_string())?
                    .parse()
                    .map_err(|e: lexopt::Error| format!("--all: {e}"))?;
                if n == 0 {
                    return Err("--all: expected at least 1".into());
                }
                all = Some(n);
            }
            Long("absent") => present = false,
            Short('t') | Long("timeout") => {
                let v = parser.value().map_err(|e| e.to_string())?;
                let v = v.string().map_err(|e| e.to_string())?;
                timeout = parse_seconds(&v)?;
            }
            Short('v') | Long("verbose") => verbose = true,
            Short('h') | Long("help") => return Ok(Parsed::Help),
            Short('V') | Long("version") => return Ok(Parsed::Version),
            Value(v) => readers.push(v.string().map_err(|e| e.to_string())?),
            _ => return Err(arg.unexpected().to_string()),
        }
    }
    let target = match (all, readers.is_empty()) {
        (Some(_), false) => return Err("give READER names or --all, not both".into()),
        (Some(n), true) => Target::All(n),
        (None, true) => Target::Any,
        (None, false) => Target::Readers(readers),
    };
    Ok(Parsed::Wait(
        Spec {
            target,
            present,
            timeout,
        },
        verbose,
    ))
}

/// Seconds, fractions allowed: `2`, `0.5`.
fn parse_seconds(v: &str) -> Result<Duration, String> {
    v.parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && *s >= 0.0 && *s <= 86400.0)
        .map(Duration::from_secs_f64)
        .ok_or_else(|| format!("bad timeout \"{v}\": expected seconds, e.g. 5 or 0.5"))
}

fn main() -> ExitCode {
    let (spec, verbose) = match parse_args(std::env::args().skip(1)) {
        Ok(Parsed::Wait(spec, verbose)) => (spec, verbose),
        Ok(Parsed::Help) => {
            print!("{}", help());
            return ExitCode::SUCCESS;
        }
        Ok(Parsed::Version) => {
            println!("vpcd-wait {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("vpcd-wait: {e}\nTry 'vpcd-wait --help' for more information.");
            return ExitCode::from(2);
        }
    };
    match wait::wait(&spec) {
        Ok(took) => {
            if verbose {
                eprintln!(
                    "vpcd-wait: reached after {:.1} ms",
                    took.as_secs_f64() * 1e3
                );
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("vpcd-wait: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(a: &[&str]) -> Result<Parsed, String> {
        parse_args(a.iter().map(|s| s.to_string()))
    }

    fn spec(a: &[&str]) -> Spec {
        match parse(a) {
            Ok(Parsed::Wait(s, _)) => s,
            _ => panic!("{a:?}"),
        }
    }

    #[test]
    fn options() {
        assert_eq!(spec(&[]).target, Target::Any);
        let s = spec(&["-t", "0.5", "--absent", "R 00 00", "R 00 01"]);
        assert_eq!(s.timeout, Duration::from_millis(500));
        assert!(!s.present);
        assert_eq!(
            s.target,
            Target::Readers(vec!["R 00 00".into(), "R 00 01".into()])
        );
        assert_eq!(spec(&["--all=2"]).target, Target::All(2));
        assert!(parse(&["--all", "0"]).is_err());
        assert!(parse(&["--all", "2", "R"]).is_err());
        assert!(parse(&["-t", "x"]).is_err());
        assert!(parse(&["-t", "-1"]).is_err());
        assert!(parse(&["--bogus"]).is_err());
        assert!(matches!(parse(&["-h"]), Ok(Parsed::Help)));
        assert!(matches!(parse(&["-V"]), Ok(Parsed::Version)));
        assert!(help().contains("--absent"));
    }
}
