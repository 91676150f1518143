//! # vpcd-tools: the programs around the vpcd driver, and its system tests
//!
//! ## Module map
//! - `src/bin/vpcd-vicc/`: a virtual card for the driver: the built-in ISO 7816-4 card
//!   (`card/`), `--reversed`, `--relay` (a real card through PC/SC).
//! - `src/bin/vpcd-config/`: shows how a phone or vicc reaches the configured readers
//!   (text, JSON, a `vpcd://` QR code for the Android app).
//! - `tests/`: system tests: the built `libifdvpcd.so` in real private pcscd
//!   instances, driven by real PC/SC clients (the `pcsc` crate, pcsc_scan, opensc,
//!   pyscard) and peers (scripted viccs, the Python vicc, libcacard).
//! - `benches/relay.rs`: ours against Debian's C vpcd in one pcscd (`scripts/bench`).
//!
//! The library itself is only what both tools share: [`cli`], their command-line
//! conventions. The harness of the tests and the bench is the dev-only package
//! `vpcd-testing` (`tools/testing/`).

pub mod cli;
