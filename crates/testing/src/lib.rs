//! # vpcd-testing: the harness of vpcd's system tests and of its bench
//!
//! The built `libifdvpcd.so` in a private pcscd (its own mount namespace, never the
//! system's daemon or /etc), scripted vicc peers, and the PC/SC client calls the tests
//! and `benches/relay/` share.
//!
//! Why a package of its own: the driver's system tests (`tests/` at the root), the
//! tools' tests (`crates/tools/tests/`) and the bench (`crates/tools/benches/relay/`)
//! all `use vpcd_testing::...` as an ordinary crate, with no `#[path]` includes, and it
//! is only a dev-dependency: nothing of it (nor `tempfile`) enters the build of the
//! driver or of the installed tools.
//!
//! ## Module map
//! - [`pcscd`]: [`Pcscd`], a private pcscd, and its builder ([`Pcscd::builder`]: debug
//!   log and the driver's level in it, reader.conf entries and extra config, a wrapper
//!   such as valgrind, which pcscd); [`Entry`], one reader.conf entry. Waiting for what
//!   its log shows ([`Pcscd::wait_log_until`]) instead of sleeping. The one workaround
//!   for pcscd 1.9.9's missed SIGINT is in [`Pcscd::stop`].
//! - [`paths`]: where the repository, the build, the built driver and the tools
//!   ([`tool`]) are; temporary
//!   directories; [`free_ports`], ports no concurrent test uses.
//! - [`client`]: the PC/SC client side (the `pcsc` crate): readers, card events,
//!   connect, transmit.
//! - [`vicc`]: scripted viccs in threads of the test process (echo and broken ones,
//!   connecting or listening), waiting until one has received an APDU
//!   ([`Vicc::wait_apdus`], [`wait_count`]), the vpcd framing, sample APDUs.
//! - [`process`]: child processes killed on drop, the reference Python vicc.
//!
//! ## Choosing the pcscd and the client library
//! - `VPCD_PCSCD`: the pcscd binary (default: `pcscd` from `PATH`); honoured by
//!   `scripts/private-pcscd`, so also by the bench and by hand.
//! - The tests and the bench link libpcsclite dynamically: run them with
//!   `LD_LIBRARY_PATH=/some/pcsc-lite/lib` to use another client library (it must speak
//!   the protocol of that pcscd).
//! - `VPCD_VALGRIND=1` (and `VPCD_VALGRIND_DIR`): every test's pcscd under valgrind
//!   (`scripts/valgrind`). `VPCD_LOG`: the driver's level in a debug-log pcscd (default
//!   `debug`). `VPCD_TEST_LOG=1`: print pcscd's log when a test's pcscd stops.
//!
//! libpcsclite reads `PCSCLITE_CSOCK_NAME` once per process, so each test runs in a
//! process of its own: run the suite with `cargo nextest run` (scripts/test does).

#![deny(unsafe_code)]

pub mod client;
pub mod paths;
// Starting pcscd (pre_exec) and signalling it: the only unsafe of the harness.
#[allow(unsafe_code)]
pub mod pcscd;
pub mod process;
pub mod vicc;

pub use client::*;
pub use paths::*;
pub use pcscd::*;
pub use process::*;
pub use vicc::*;
