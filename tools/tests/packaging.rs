//! Installation and packaging: scripts/install into a DESTDIR, the Debian package,
//! the macOS Info.plist, and what the shared library exports and links.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use vpcd_testing::*;

fn repo() -> PathBuf {
    repo_root()
}

/// Runs a repository script with the test build as what it installs.
fn script(name: &str, envs: &[(&str, &Path)]) -> String {
    let mut cmd = Command::new(repo().join("scripts").join(name));
    cmd.arg("--no-build")
        .env("BUILD", build_dir())
        .env("LIBRARY", driver_path());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let (ok, out) = run(&mut cmd);
    assert!(ok, "scripts/{name} failed:\n{out}");
    out
}

#[test]
fn install_into_destdir_then_a_pcscd_runs_the_installed_files_on_the_default_port() {
    let stage = temp_dir("destdir");
    script(
        "install",
        &[
            ("DESTDIR", stage.path()),
            ("PREFIX", Path::new("/usr")),
            ("DRIVERDIR", Path::new("/usr/lib/pcsc/drivers/serial")),
        ],
    );
    let lib = stage
        .path()
        .join("usr/lib/pcsc/drivers/serial/libifdvpcd.so");
    let conf = std::fs::read_to_string(stage.path().join("etc/reader.conf.d/vpcd")).unwrap();
    assert!(lib.exists());
    assert!(stage.path().join("usr/bin/vpcd-vicc").exists());
    assert!(stage.path().join("usr/bin/vpcd-config").exists());
    assert!(
        conf.contains("LIBPATH      /usr/lib/pcsc/drivers/serial/libifdvpcd.so"),
        "{conf}"
    );
    assert!(conf.contains("DEVICENAME   /dev/null:0x8C7B"), "{conf}");

    // The installed entry, pointed at the staged library, with the staged card.
    let staged = conf.replace(
        "/usr/lib/pcsc",
        &format!("{}/usr/lib/pcsc", stage.path().display()),
    );
    let pcscd = Pcscd::start_with_config(&staged);
    let reader = reader_name("Virtual PCD", 0, 0);
    pcscd.wait_readers(&[reader.clone(), reader_name("Virtual PCD", 0, 1)]);
    let log = stage.path().join("vicc.log");
    let _vicc = Process::spawn(
        Command::new(stage.path().join("usr/bin/vpcd-vicc")).args([
            "-H",
            "127.0.0.1",
            "-P",
            "35963",
        ]),
        log,
    );
    let ctx = pcscd.context();
    wait_card(&ctx, &reader, true, Duration::from_secs(5));
    let card = connect(&ctx, &reader);
    let reply = transmit(&card, &[0x00, 0xA4, 0x00, 0x0C, 0x02, 0x3F, 0x00]).unwrap();
    assert_eq!(reply, [0x90, 0x00]);

    // And uninstall removes it all.
    let mut cmd = Command::new(repo().join("scripts/install"));
    cmd.arg("--uninstall")
        .env("DESTDIR", stage.path())
        .env("PREFIX", "/usr")
        .env("DRIVERDIR", "/usr/lib/pcsc/drivers/serial");
    assert!(run(&mut cmd).0);
    assert!(!lib.exists());
    assert!(!stage.path().join("etc/reader.conf.d/vpcd").exists());
}

#[test]
fn the_debian_package_installs_and_removes_cleanly() {
    let out = temp_dir("deb");
    let built = script("build-deb", &[("OUTDIR", out.path())]);
    let deb = PathBuf::from(built.lines().last().unwrap().trim());
    assert!(deb.exists(), "{built}");

    let (ok, contents) = run(Command::new("dpkg-deb").arg("-c").arg(&deb));
    assert!(ok);
    for path in [
        "./usr/lib/pcsc/drivers/serial/libifdvpcd.so",
        "./etc/reader.conf.d/vpcd",
        "./usr/bin/vpcd-vicc",
        "./usr/bin/vpcd-config",
    ] {
        assert!(contents.contains(path), "{path} missing:\n{contents}");
    }
    let (_, info) = run(Command::new("dpkg-deb").arg("-I").arg(&deb));
    for field in [
        "Package: vpcd-rs",
        "Conflicts: vsmartcard-vpcd",
        "Replaces: vsmartcard-vpcd",
        "Depends: libc6, pcscd",
    ] {
        assert!(info.contains(field), "{field}:\n{info}");
    }

    // Install, remove and purge into an empty root with its own dpkg database.
    let root = temp_dir("dpkgroot");
    for dir in ["var/lib/dpkg/info", "var/lib/dpkg/updates"] {
        std::fs::create_dir_all(root.path().join(dir)).unwrap();
    }
    std::fs::write(root.path().join("var/lib/dpkg/status"), "").unwrap();
    let dpkg = |args: &[&str]| {
        let mut cmd = Command::new("dpkg");
        cmd.arg(format!("--root={}", root.path().display()))
            .args([
                "--force-depends",
                "--force-not-root",
                "--force-script-chrootless",
                "--log=/dev/null",
            ])
            .args(args);
        let (ok, out) = run(&mut cmd);
        assert!(ok, "dpkg {args:?}:\n{out}");
    };
    let installed_lib = root
        .path()
        .join("usr/lib/pcsc/drivers/serial/libifdvpcd.so");
    let conffile = root.path().join("etc/reader.conf.d/vpcd");
    dpkg(&["-i", deb.to_str().unwrap()]);
    assert!(installed_lib.exists() && conffile.exists());
    dpkg(&["-r", "vpcd-rs"]);
    assert!(!installed_lib.exists(), "remove deletes the driver");
    assert!(conffile.exists(), "remove keeps the conffile");
    dpkg(&["-P", "vpcd-rs"]);
    assert!(!conffile.exists(), "purge deletes the conffile");
}

/// The value of `key` in a flat plist: a <string>, or the first <string> of an <array>.
fn plist_value(plist: &str, key: &str) -> Option<String> {
    let after = plist.split(&format!("<key>{key}</key>")).nth(1)?;
    let start = after.find("<string>")? + "<string>".len();
    let end = after.find("</string>")?;
    let next_key = after.find("<key>").unwrap_or(usize::MAX);
    (start < next_key).then(|| after[start..end].to_owned())
}

#[test]
fn the_macos_info_plist_has_every_key_pcscd_needs() {
    let plist = ifdvpcd::INFO_PLIST;
    assert!(plist.starts_with("<?xml"));
    assert_eq!(
        plist.matches("<dict>").count(),
        plist.matches("</dict>").count()
    );
    let expect = [
        ("CFBundleExecutable", "libifdvpcd.dylib"),
        ("CFBundleName", "ifd-vpcd"),
        ("CFBundlePackageType", "BNDL"),
        ("CFBundleVersion", env!("CARGO_PKG_VERSION")),
        ("ifdVendorID", "0x18d1"),
        ("ifdProductID", "0x4ee1"),
        ("ifdFriendlyName", "/dev/null:0x8C7B"),
        ("ifdProtocolSupport", "0x00000001"),
        ("ifdCapabilities", "0x00000000"),
        ("ifdVersionNumber", "0x00000001"),
    ];
    for (key, value) in expect {
        assert_eq!(plist_value(plist, key).as_deref(), Some(value), "{key}");
    }
    for key in [
        "CFBundleIdentifier",
        "ifdManufacturerString",
        "ifdProductString",
        "CFBundleInfoDictionaryVersion",
    ] {
        assert!(plist_value(plist, key).is_some(), "{key} missing");
    }
    // The friendly name is a DEVICENAME the driver accepts.
    vpcd_protocol::config::ReaderConfig::parse(&plist_value(plist, "ifdFriendlyName").unwrap())
        .unwrap();
}

#[test]
fn the_build_lays_out_the_macos_bundle_and_the_script_completes_it() {
    let bundle = build_dir().join("ifd-vpcd.bundle");
    let plist = std::fs::read_to_string(bundle.join("Contents/Info.plist")).unwrap();
    assert_eq!(plist, ifdvpcd::INFO_PLIST);
    let mut cmd = Command::new(repo().join("scripts/macos-bundle"));
    cmd.arg("--no-build").env("PROFILE_DIR", build_dir());
    let (ok, out) = run(&mut cmd);
    assert!(ok, "{out}");
    let executable = plist_value(&plist, "CFBundleExecutable").unwrap();
    assert!(bundle.join("Contents/MacOS").join(executable).exists());
}

#[test]
fn the_library_exports_the_ifd_api_and_does_not_link_libpcsclite() {
    let lib = driver_path();
    let (ok, dynamic) = run(Command::new("readelf").args(["-d", "-W"]).arg(&lib));
    assert!(ok, "{dynamic}");
    assert!(
        !dynamic.contains("libpcsclite"),
        "the driver must not link libpcsclite:\n{dynamic}"
    );
    let (ok, symbols) = run(Command::new("nm").args(["-D", "--defined-only"]).arg(&lib));
    assert!(ok, "{symbols}");
    for name in [
        "IFDHCreateChannelByName",
        "IFDHCreateChannel",
        "IFDHCloseChannel",
        "IFDHGetCapabilities",
        "IFDHSetCapabilities",
        "IFDHSetProtocolParameters",
        "IFDHPowerICC",
        "IFDHTransmitToICC",
        "IFDHICCPresence",
        "IFDHControl",
    ] {
        assert!(
            symbols.lines().any(|l| l.ends_with(&format!(" T {name}"))),
            "{name} not exported"
        );
    }
}
