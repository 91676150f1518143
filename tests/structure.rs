//! The workspace's shape: the driver package builds from the crates it really uses,
//! without libpcsclite and without any tool's dependency.

use std::process::Command;

use vpcd_testing::*;

fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(repo_root());
    cmd
}

#[test]
fn the_driver_package_depends_on_no_tool_crate() {
    let (ok, tree) = run(cargo().args([
        "tree",
        "--offline",
        "-p",
        "vpcd-driver",
        "-e",
        "normal,build",
        "--prefix",
        "none",
    ]));
    assert!(ok, "cargo tree:\n{tree}");
    for name in [
        "pcsc",
        "pcsc-sys",
        "qrcode",
        "if-addrs",
        "lexopt",
        "signal-hook",
        "rcgen",
    ] {
        assert!(
            !tree
                .lines()
                .any(|l| l.split_whitespace().next() == Some(name)),
            "vpcd-driver pulls in {name}:\n{tree}"
        );
    }
    assert!(tree.contains("vpcd-protocol"), "{tree}");
}

/// Every crate pcscd ends up loading with the driver is one we chose: the driver's own,
/// std-like helpers, and for the secure link (docs/TLS.md) rustls with its ring
/// provider and what they need. A new one must be justified and added here.
#[test]
fn the_driver_depends_only_on_the_allowed_crates() {
    let (ok, tree) = run(cargo().args([
        "tree",
        "--offline",
        "-p",
        "vpcd-driver",
        "-e",
        "normal,build",
        "--prefix",
        "none",
    ]));
    assert!(ok, "cargo tree:\n{tree}");
    let allowed = [
        // The driver and its protocol crate.
        "vpcd-driver",
        "vpcd-protocol",
        // The system, logging, locks and sockets.
        "libc",
        "log",
        "parking_lot",
        "parking_lot_core",
        "lock_api",
        "scopeguard",
        "smallvec",
        "cfg-if",
        "socket2",
        // The secure link: rustls (TLS 1.3 only) and its ring provider.
        "rustls",
        "rustls-pki-types",
        "rustls-webpki",
        "ring",
        "untrusted",
        "subtle",
        "zeroize",
        "getrandom",
        "once_cell",
        // ring's build script compiles its assembly and C with cc.
        "cc",
        "shlex",
        "find-msvc-tools",
    ];
    // Only the tree's own lines, `name vX.Y.Z`: cargo's notes ("Blocking waiting for
    // file lock ...") come on the same output when another cargo runs.
    let unexpected: Vec<&str> = tree
        .lines()
        .filter(|l| {
            l.split_whitespace()
                .nth(1)
                .is_some_and(|v| v.starts_with('v'))
        })
        .filter_map(|l| l.split_whitespace().next())
        .filter(|name| !allowed.contains(name))
        .collect();
    assert!(
        unexpected.is_empty(),
        "vpcd-driver pulls in {unexpected:?}:\n{tree}"
    );
    for absent in ["aws-lc-rs", "aws-lc-sys", "rcgen"] {
        assert!(!tree.contains(absent), "vpcd-driver pulls in {absent}");
    }
}

/// Where libpcsclite's pkg-config file is missing (no libpcsclite-dev), pcsc-sys cannot
/// build; the driver must not need it. `PKG_CONFIG=false` makes every pkg-config query
/// fail, as on such a machine.
#[test]
fn the_driver_builds_where_pkg_config_finds_no_libpcsclite() {
    let target = temp_dir("driver-alone");
    let (ok, out) = run(cargo()
        .args(["build", "--offline", "-p", "vpcd-driver", "--target-dir"])
        .arg(target.path())
        .env("PKG_CONFIG", "false")
        .env("PKG_CONFIG_PATH", target.path()));
    assert!(ok, "cargo build -p vpcd-driver:\n{out}");
    assert!(
        target.path().join("debug/libifdvpcd.so").exists(),
        "no libifdvpcd.so:\n{out}"
    );
}
