//! What a test sees when the environment cannot start: one line that says what is
//! wrong and how to fix it. The environment starts once per process, so each case
//! runs `child` (an ignored test of this binary) in a process of its own.

use std::process::Command;

const CASE: &str = "VPCD_TEST_ERROR_CASE";

#[test]
#[ignore = "the child process of the tests below, which run it with --ignored"]
fn child() {
    match std::env::var(CASE)
        .expect("run by the tests below")
        .as_str()
    {
        "context-first" => {
            // A PC/SC call before the first lease: libpcsclite keeps the default
            // socket, where no pcscd (or another one) answers.
            let _ = vpcd_test::pcsc::Context::establish(vpcd_test::pcsc::Scope::User);
        }
        "vicc" => {
            let mut slot = vpcd_test::Slot::lease();
            let e = slot.insert_builtin().unwrap_err();
            println!("ERROR {e}");
            return;
        }
        _ => {}
    }
    match vpcd_test::Slot::try_lease() {
        Ok(_) => println!("LEASED"),
        Err(e) => println!("ERROR {e}"),
    }
}

/// The child's one line for `case`, with `vars` set.
fn error_of(case: &str, vars: &[(&str, &str)]) -> String {
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "child",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CASE, case)
        .env_remove("PCSCLITE_CSOCK_NAME")
        .envs(vars.iter().copied())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.lines()
        .find_map(|l| Some(l.split_once("ERROR ")?.1.to_owned()))
        .unwrap_or_else(|| panic!("no error line:\n{text}"))
}

#[test]
fn a_missing_driver() {
    let e = error_of("lease", &[("VPCD_DRIVER", "/nonexistent/libifdvpcd.so")]);
    assert!(
        e.contains("/nonexistent/libifdvpcd.so does not exist"),
        "{e}"
    );
}

#[test]
fn too_many_slots() {
    let e = error_of("lease", &[("VPCD_TEST_SLOTS", "17")]);
    assert_eq!(e, "VPCD_TEST_SLOTS=17: expected 1 to 16");
}

#[test]
fn a_missing_pcscd() {
    let e = error_of("lease", &[("VPCD_PCSCD", "/nonexistent/pcscd")]);
    assert!(
        e.contains("pcscd not found") || e.contains("/nonexistent/pcscd"),
        "{e}"
    );
}

#[test]
fn a_missing_builtin_card() {
    let e = error_of("vicc", &[("VPCD_VICC", "/nonexistent/vpcd-vicc")]);
    assert!(
        e.contains("cannot start") && e.contains("/nonexistent/vpcd-vicc"),
        "{e}"
    );
}

#[test]
fn a_pcsc_call_before_the_first_lease() {
    let e = error_of("context-first", &[]);
    assert!(e.contains("PCSCLITE_CSOCK_NAME once per process"), "{e}");
}

#[test]
fn the_c_vpcd_of_the_same_name() {
    // Debian's vsmartcard-vpcd installs the C driver as libifdvpcd.so: it never opens
    // the slots' ports (after the environment's 10 s timeout).
    let c_vpcd = "/usr/lib/pcsc/drivers/serial/libifdvpcd.so";
    if !std::path::Path::new(c_vpcd).exists() {
        panic!("{c_vpcd} missing: install vsmartcard-vpcd (scripts/setup-debian --test)");
    }
    let e = error_of("lease", &[("VPCD_DRIVER", c_vpcd)]);
    assert!(
        e.contains("is /usr/lib/pcsc/drivers/serial/libifdvpcd.so the vpcd-rs driver?"),
        "{e}"
    );
}
