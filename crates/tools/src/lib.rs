//! # vpcd-tools: the programs around the vpcd driver
//!
//! ## Module map
//! - `src/bin/vpcd-vicc/`: a virtual card for the driver: the built-in ISO 7816-4 card
//!   (`card/`), `--reversed`, `--relay` (a real card through PC/SC).
//! - `src/bin/vpcd-config/`: shows how a phone or vicc reaches the configured readers
//!   (text, JSON, a `vpcd://` QR code for the Android app); `--check` diagnoses a setup.
//! - `src/bin/vpcd-run/`, `src/bin/vpcd-wait/`: a command run in an environment of its
//!   own (private pcscd, the driver, a card), and waiting for a reader or card. Without
//!   namespaces (containers, CI runners) vpcd-run's pcscd comes from `../env/`, the
//!   package `vpcd-env` (socket activation in a private directory, free ports).
//! - `src/cli.rs` ([`cli`]): the command-line conventions the tools share (lexopt;
//!   same spellings, `--help`, `--version`, exit status 2).
//! - `src/keys.rs` ([`keys`]): key pairs and trust files of the secure link
//!   (docs/TLS.md), generated and written by vpcd-config and vpcd-vicc only.
//! - `tests/`: the tools' own tests (vpcd-vicc, vpcd-config and `--check`, vpcd-run and
//!   vpcd-wait; `containers.rs`: vpcd-run without namespaces in the container
//!   simulation `scripts/container-sim`, and the recipes of `packaging/container/`);
//!   the driver's system tests are in the repository's `tests/`.
//! - `benches/environments.rs`: vpcd-run's readiness, with and without namespaces.
//! - `benches/relay/`: ours against Debian's C vpcd in one pcscd (`scripts/bench`);
//!   its `main.rs` has the module map.
//! - `../testing/`: the package `vpcd-testing`, the harness the tests and the bench
//!   share (private pcscd, scripted viccs); a dev-dependency only, so it never enters
//!   the tools' build.

#![forbid(unsafe_code)]

pub mod cli;
pub mod keys;
