//! `vpcd-config tls` and the TLS findings of `vpcd-config --check`: the files of the
//! secure link (docs/TLS.md), made, changed and diagnosed by the tools.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

use vpcd_protocol::tls::{TrustList, VpcdsUri};
use vpcd_testing::*;

fn config(dir: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new(build_dir().join("vpcd-config"))
        .arg("tls")
        .args(args)
        .arg("--dir")
        .arg(dir)
        .output()
        .expect("run vpcd-config tls");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    println!("$ vpcd-config tls {}\n{text}", args.join(" "));
    (out.status.success(), text)
}

const FP: &str = "8e02000000000000000000000000000000000000000000000000000000000051";

#[test]
fn init_trust_untrust_and_show() {
    let tmp = temp_dir("tls-config");
    let dir = tmp.path().join("tls");
    let (ok, out) = config(&dir, &["init"]);
    assert!(ok, "{out}");
    let mode = std::fs::metadata(dir.join("key.pem")).unwrap().mode() & 0o777;
    assert!(mode == 0o600 || mode == 0o640, "key mode {mode:o}");
    let (ok, out) = config(&dir, &["init"]);
    assert!(
        !ok && out.contains("--force"),
        "a second init keeps the key: {out}"
    );

    let (ok, out) = config(&dir, &["trust", FP, "--name", "alice phone"]);
    assert!(ok, "{out}");
    let (ok, out) = config(&dir, &["trust", &FP.to_uppercase()]);
    assert!(ok && out.contains("1 key(s)"), "the same key once: {out}");
    let list = TrustList::parse(&std::fs::read_to_string(dir.join("trusted")).unwrap()).unwrap();
    assert_eq!(list.entries.len(), 1);
    let (ok, out) = config(&dir, &["trust", "12345"]);
    assert!(!ok && out.contains("64 hex digits"), "{out}");

    let (ok, out) = config(
        &dir,
        &["show", "-H", "pc.example", "-P", "35964", "--no-qr"],
    );
    assert!(ok, "{out}");
    let uri = out
        .lines()
        .find(|l| l.starts_with("vpcds://"))
        .unwrap_or_else(|| panic!("no URI: {out}"));
    let uri = VpcdsUri::parse(uri).unwrap();
    assert_eq!((uri.host.as_str(), uri.port), ("pc.example", 35964));
    assert!(
        out.contains(&format!("reader key {}", uri.fingerprint)),
        "{out}"
    );
    assert!(out.contains(FP), "the trusted keys are listed: {out}");

    let (ok, out) = config(&dir, &["untrust", FP]);
    assert!(ok, "{out}");
    let (ok, out) = config(&dir, &["untrust", FP]);
    assert!(!ok && out.contains("is not in"), "{out}");

    // --force makes a new key: a new fingerprint.
    let (ok, _) = config(&dir, &["init", "--force"]);
    assert!(ok);
    let (_, again) = config(&dir, &["show", "--no-qr"]);
    assert!(!again.contains(&uri.fingerprint.to_string()), "{again}");
}

#[test]
fn check_reports_missing_and_exposed_tls_files() {
    let tmp = temp_dir("tls-check");
    let dir = tmp.path().join("tls");
    let conf = tmp.path().join("reader.conf");
    std::fs::write(
        &conf,
        format!(
            "FRIENDLYNAME \"Secure\"\nDEVICENAME /dev/null:35963/tls=yes\nLIBPATH {}\n",
            driver_path().display()
        ),
    )
    .unwrap();
    let check = || {
        let out = Command::new(build_dir().join("vpcd-config"))
            .arg("--check")
            .arg("--config")
            .arg(&conf)
            .env("VPCD_TLS_DIR", &dir)
            .env("PCSCLITE_CSOCK_NAME", tmp.path().join("no-pcscd"))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        println!("{text}");
        text
    };
    let out = check();
    assert!(
        out.lines()
            .any(|l| l.starts_with("error:") && l.contains("key.pem is missing")),
        "{out}"
    );
    let (ok, _) = config(&dir, &["init"]);
    assert!(ok);
    let out = check();
    assert!(
        out.lines().any(|l| l.starts_with("ok: the reader key")),
        "{out}"
    );
    assert!(
        out.lines()
            .any(|l| l.starts_with("warning:") && l.contains("trusts no vicc key")),
        "{out}"
    );
    std::fs::set_permissions(dir.join("key.pem"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = check();
    assert!(
        out.lines()
            .any(|l| l.starts_with("error:") && l.contains("accessible to every user")),
        "{out}"
    );
    std::fs::write(dir.join("trusted"), "garbage\n").unwrap();
    let out = check();
    assert!(
        out.lines()
            .any(|l| l.starts_with("error:") && l.contains("trusted is malformed")),
        "{out}"
    );
}
