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
            ("SYSTEMDUNITDIR", Path::new("/lib/systemd/system")),
        ],
    );
    let units = stage.path().join("lib/systemd/system");
    let service_drop_in = units.join("pcscd.service.d/vpcd-rs.conf");
    let boot_drop_in = units.join("multi-user.target.d/vpcd-rs.conf");
    check_drop_ins(&units);
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
    wait_bindable(&DEFAULT_PORTS, Duration::from_secs(30));
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
    wait_card(&reader, true, Duration::from_secs(5));
    let card = connect(&ctx, &reader);
    let reply = transmit(&card, &[0x00, 0xA4, 0x00, 0x0C, 0x02, 0x3F, 0x00]).unwrap();
    assert_eq!(reply, [0x90, 0x00]);

    // And uninstall removes it all.
    let mut cmd = Command::new(repo().join("scripts/install"));
    cmd.arg("--uninstall")
        .env("DESTDIR", stage.path())
        .env("PREFIX", "/usr")
        .env("DRIVERDIR", "/usr/lib/pcsc/drivers/serial")
        .env("SYSTEMDUNITDIR", "/lib/systemd/system");
    assert!(run(&mut cmd).0);
    assert!(!lib.exists());
    assert!(!stage.path().join("etc/reader.conf.d/vpcd").exists());
    assert!(!service_drop_in.exists() && !boot_drop_in.exists());
    assert!(
        !units.join("pcscd.service.d").exists(),
        "empty drop-in directories go too"
    );
}

/// `systemd-analyze verify` of pcscd.service and multi-user.target with the units of
/// `dirs` before the system's (SYSTEMD_UNIT_PATH), or its complaint.
fn systemd_verify(dirs: &Path) -> Result<(), String> {
    let mut cmd = Command::new("systemd-analyze");
    cmd.args(["verify", "--man=no", "pcscd.service", "multi-user.target"])
        .env("SYSTEMD_UNIT_PATH", format!("{}:", dirs.display()));
    let (ok, out) = run(&mut cmd);
    // Complaints about the system's other units are not ours.
    let ours: Vec<&str> = out
        .lines()
        .filter(|l| l.contains("pcscd") || l.contains("vpcd"))
        .collect();
    if ok && ours.is_empty() {
        Ok(())
    } else {
        Err(out)
    }
}

/// The drop-ins under `units` (a systemd unit directory): pcscd without --auto-exit
/// and wanted at boot, which systemd-analyze accepts; and the check reports them.
fn check_drop_ins(units: &Path) {
    let service = std::fs::read_to_string(units.join("pcscd.service.d/vpcd-rs.conf")).unwrap();
    let boot = std::fs::read_to_string(units.join("multi-user.target.d/vpcd-rs.conf")).unwrap();
    let exec: Vec<&str> = service
        .lines()
        .filter(|l| l.starts_with("ExecStart="))
        .collect();
    assert_eq!(exec.len(), 2, "{service}");
    assert_eq!(exec[0], "ExecStart=", "the reset first");
    assert!(exec[1].contains("pcscd --foreground"), "{service}");
    assert!(
        !exec[1].contains("--auto-exit") && !exec[1].contains(" -x"),
        "{service}"
    );
    assert!(service.contains("ln -s /dev/null"), "documents the opt-out");
    assert!(boot.contains("[Unit]\nWants=pcscd.service"), "{boot}");
    systemd_verify(units).unwrap_or_else(|e| panic!("systemd-analyze verify:\n{e}"));

    // systemd really reads the drop-in: without the reset it refuses the unit.
    let copy = temp_dir("units");
    std::fs::create_dir_all(copy.path().join("pcscd.service.d")).unwrap();
    std::fs::write(
        copy.path().join("pcscd.service.d/vpcd-rs.conf"),
        service.replace("ExecStart=\n", ""),
    )
    .unwrap();
    let refused = systemd_verify(copy.path()).unwrap_err();
    assert!(refused.contains("more than one ExecStart="), "{refused}");

    // And the diagnosis sees what systemd would run.
    let (_, out) = run(Command::new(build_dir().join("vpcd-config"))
        .args(["--check", "--socket", "/nonexistent/pcscd.comm"])
        .env("SYSTEMD_UNIT_PATH", format!("{}:", units.display())));
    assert!(
        out.contains("ok: pcscd.service starts pcscd without --auto-exit (the vpcd-rs drop-in)"),
        "{out}"
    );
    let (_, out) = run(Command::new(build_dir().join("vpcd-config"))
        .args(["--check", "--socket", "/nonexistent/pcscd.comm"])
        .env("SYSTEMD_UNIT_PATH", format!("{}:", copy.path().display())));
    assert!(
        out.contains("warning: pcscd.service starts pcscd with --auto-exit"),
        "without the drop-in:\n{out}"
    );
}

/// Where scripts/install puts the driver and the entry, given a libpcsclite.pc.
fn install_paths(pkg_config_path: Option<&Path>) -> (String, String) {
    let stage = temp_dir("pcdirs");
    let mut cmd = Command::new(repo().join("scripts/install"));
    cmd.arg("--no-build")
        .env("BUILD", build_dir())
        .env("LIBRARY", driver_path())
        .env("DESTDIR", stage.path())
        .env("PREFIX", "/usr")
        .env("KEEP_PCSCD", "no")
        .env_remove("DRIVERDIR")
        .env_remove("CONFDIR");
    if let Some(dir) = pkg_config_path {
        cmd.env("PKG_CONFIG_PATH", dir)
            .env("PKG_CONFIG_LIBDIR", dir);
    }
    let (ok, out) = run(&mut cmd);
    assert!(ok, "{out}");
    let (_, files) = run(Command::new("find").arg(stage.path()).args(["-type", "f"]));
    let strip = |p: &str| {
        p.trim_start_matches(stage.path().to_str().unwrap())
            .to_owned()
    };
    let lib = files
        .lines()
        .find(|l| l.ends_with("libifdvpcd.so"))
        .map(strip);
    let conf = files.lines().find(|l| l.ends_with("/vpcd")).map(strip);
    let (lib, conf) = (lib.expect(&files), conf.expect(&files));
    let entry = std::fs::read_to_string(stage.path().join(conf.trim_start_matches('/'))).unwrap();
    assert!(entry.contains(&format!("LIBPATH      {lib}")), "{entry}");
    (lib, conf)
}

#[test]
fn install_paths_come_from_pkg_config_for_debian_and_pcsc_lite_2() {
    // Debian 12's libpcsclite.pc (pcsc-lite 1.9.9).
    assert_eq!(
        install_paths(None),
        (
            "/usr/lib/pcsc/drivers/serial/libifdvpcd.so".to_owned(),
            "/etc/reader.conf.d/vpcd".to_owned()
        )
    );
    // pcsc-lite 2.5.1's, generated by its meson build with other directories (as a
    // distribution with lib64 and /etc/pcsc would).
    let tarball = repo().join("../shared/third_party/pcsc-lite/pcsc-lite-2.5.1.tar.gz");
    if !tarball.exists() {
        eprintln!("SKIPPED the pcsc-lite 2.5.1 part: no {}", tarball.display());
        return;
    }
    let work = temp_dir("pcsc251");
    let (ok, out) = run(Command::new("tar")
        .arg("-xzf")
        .arg(&tarball)
        .arg("-C")
        .arg(work.path()));
    assert!(ok, "{out}");
    let (ok, out) = run(Command::new("meson")
        .current_dir(work.path().join("pcsc-lite-2.5.1"))
        .arg("setup")
        .arg(work.path().join("build"))
        .args([
            "-Dlibsystemd=false",
            "-Dpolkit=false",
            "-Dlibudev=false",
            "-Dusb=false",
            "-Dserial=true",
            "-Dusbdropdir=/usr/lib64/pcsc/drivers",
            "-Dserialconfdir=/etc/pcsc/reader.conf.d",
        ]));
    assert!(
        ok,
        "meson setup (apt-get install meson ninja-build flex):\n{out}"
    );
    let pc_dir = work.path().join("build/meson-private");
    let pc = std::fs::read_to_string(pc_dir.join("libpcsclite.pc")).unwrap();
    assert!(pc.contains("Version: 2.5.1"), "{pc}");
    assert_eq!(
        install_paths(Some(&pc_dir)),
        (
            "/usr/lib64/pcsc/drivers/serial/libifdvpcd.so".to_owned(),
            "/etc/pcsc/reader.conf.d/vpcd".to_owned()
        )
    );
    // Without any libpcsclite.pc: the usual places.
    let empty = temp_dir("nopc");
    assert_eq!(
        install_paths(Some(empty.path())),
        (
            "/usr/lib/pcsc/drivers/serial/libifdvpcd.so".to_owned(),
            "/etc/reader.conf.d/vpcd".to_owned()
        )
    );
}

fn build_deb(out: &Path, version: Option<&str>) -> PathBuf {
    let mut envs: Vec<(&str, &Path)> = vec![("OUTDIR", out)];
    if let Some(v) = version {
        envs.push(("DEB_VERSION", Path::new(v)));
    }
    let built = script("build-deb", &envs);
    let deb = PathBuf::from(built.lines().last().unwrap().trim());
    assert!(deb.exists(), "{built}");
    deb
}

#[test]
fn the_debian_package_installs_upgrades_and_purges_cleanly() {
    let out = temp_dir("deb");
    let deb = build_deb(out.path(), None);

    let (ok, contents) = run(Command::new("dpkg-deb").arg("-c").arg(&deb));
    assert!(ok);
    for path in [
        "./usr/lib/pcsc/drivers/serial/libifdvpcd.so",
        "./etc/reader.conf.d/vpcd",
        "./usr/bin/vpcd-vicc",
        "./usr/bin/vpcd-config",
        "./lib/systemd/system/pcscd.service.d/vpcd-rs.conf",
        "./lib/systemd/system/multi-user.target.d/vpcd-rs.conf",
        "./usr/share/doc/vpcd-rs/copyright",
        // The README's links to docs/ work in the installed package too.
        "./usr/share/doc/vpcd-rs/docs/CONFIGURATION.md",
        "./usr/share/doc/vpcd-rs/changelog.gz",
        "./usr/share/man/man1/vpcd-config.1.gz",
    ] {
        assert!(contents.contains(path), "{path} missing:\n{contents}");
    }
    let (_, info) = run(Command::new("dpkg-deb").arg("-I").arg(&deb));
    for field in [
        "Package: vpcd-rs",
        "Conflicts: vsmartcard-vpcd",
        "Replaces: vsmartcard-vpcd",
        // Computed by dpkg-shlibdeps: vpcd-vicc's relay links libpcsclite.
        "Depends: libc6 (>= ",
        "libpcsclite1 (>= ",
        ", pcscd\n",
    ] {
        assert!(info.contains(field), "{field}:\n{info}");
    }

    // lintian: no errors (and, today, no warnings either). Its scratch files (an MLDBM
    // database per run) go to a directory of ours, not /tmp.
    let scratch = temp_dir("lintian");
    let (_, lint) = run(Command::new("lintian")
        .args(["--tag-display-limit", "0"])
        .env("TMPDIR", scratch.path())
        .arg(&deb));
    println!("lintian {}:\n{lint}", deb.display());
    let tags: Vec<&str> = lint
        .lines()
        .filter(|l| l.starts_with("E: ") || l.starts_with("W: "))
        .collect();
    assert!(tags.is_empty(), "lintian:\n{lint}");

    // Install, upgrade, remove and purge into an empty root with its own dpkg database.
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
        out
    };
    let installed_lib = root
        .path()
        .join("usr/lib/pcsc/drivers/serial/libifdvpcd.so");
    let conffile = root.path().join("etc/reader.conf.d/vpcd");
    let units = root.path().join("lib/systemd/system");

    // The previous version, then the admin edits the entry.
    let old = build_deb(out.path(), Some("0.0.9"));
    dpkg(&["-i", old.to_str().unwrap()]);
    assert!(installed_lib.exists() && conffile.exists());
    check_drop_ins(&units);
    let edited = std::fs::read_to_string(&conffile)
        .unwrap()
        .replace("/dev/null:0x8C7B", "/dev/null:0x8C7B/listen=127.0.0.1");
    std::fs::write(&conffile, &edited).unwrap();
    // The upgrade keeps the edit, without asking.
    let upgrade = dpkg(&["-i", deb.to_str().unwrap()]);
    assert!(
        upgrade.contains("(0.1.0) over (0.0.9)") || upgrade.contains("over (0.0.9)"),
        "{upgrade}"
    );
    assert_eq!(std::fs::read_to_string(&conffile).unwrap(), edited);

    dpkg(&["-r", "vpcd-rs"]);
    assert!(!installed_lib.exists(), "remove deletes the driver");
    assert!(conffile.exists(), "remove keeps the conffile");
    assert!(
        !units.join("pcscd.service.d/vpcd-rs.conf").exists()
            && !units.join("multi-user.target.d/vpcd-rs.conf").exists(),
        "remove deletes the drop-ins: pcscd quits when idle again"
    );
    dpkg(&["-P", "vpcd-rs"]);
    assert!(!conffile.exists(), "purge deletes the conffile");
    // Nothing is left outside dpkg's database.
    let (_, left) = run(Command::new("find").arg(root.path()).args([
        "-path",
        &format!("{}/var", root.path().display()),
        "-prune",
        "-o",
        "-print",
    ]));
    let left: Vec<&str> = left
        .lines()
        .filter(|l| *l != root.path().to_str().unwrap())
        .collect();
    assert!(left.is_empty(), "left after purge: {left:?}");
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
