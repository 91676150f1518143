//! # vpcd-tools: the programs around the vpcd driver, and its system tests
//!
//! ## Module map
//! - `src/bin/vpcd-vicc/`: a virtual card for the driver: the built-in ISO 7816-4 card
//!   (`card/`), `--reversed`, `--relay` (a real card through PC/SC).
//! - `src/bin/vpcd-config/`: shows how a phone or vicc reaches the configured readers
//!   (text, JSON, a `vpcd://` QR code for the Android app).
//! - `src/cli.rs` ([`cli`], this library's only module): the command-line conventions
//!   both tools share (lexopt; same spellings, `--help`, `--version`, exit status 2).
//! - `tests/`: system tests: the built `libifdvpcd.so` in real private pcscd
//!   instances, driven by real PC/SC clients (the `pcsc` crate, pcsc_scan, opensc,
//!   pyscard) and peers (scripted viccs, the Python vicc, libcacard).
//! - `benches/relay/`: ours against Debian's C vpcd in one pcscd (`scripts/bench`);
//!   its `main.rs` has the module map.
//! - `testing/`: the package `vpcd-testing`, the harness the tests and the bench share
//!   (private pcscd, scripted viccs); a dev-dependency only, so it never enters the
//!   tools' build.

#![forbid(unsafe_code)]

pub mod cli;
