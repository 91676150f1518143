//! What depends on the pcscd the suite runs against (`VPCD_PCSCD`, see scripts/test):
//! more readers than pcsc-lite before 2.5 serves, and the hardened service's sandbox.

use std::time::Duration;

use vpcd_testing::*;

const SECOND: Duration = Duration::from_secs(1);

/// pcsc-lite 2.5 serves any number of readers: 40 slots in three readers all work,
/// through a client of the new protocol. Before 2.5, pcscd serves 16 slots in all:
/// the reader that does not fit fails with one clear line of ours, and the first 16
/// slots keep working.
#[test]
fn forty_slots_on_pcsc_lite_2_5_and_a_clear_line_where_older_ones_stop() {
    let version = pcscd_version();
    let port = free_ports(32);
    let high = free_ports(8);
    if version >= (2, 5, 0) {
        let pcscd = Pcscd::start(&[
            Entry::device(
                "Many A",
                &format!("/dev/null:{port}/slots=16/listen=127.0.0.1"),
            ),
            Entry::device(
                "Many B",
                &format!("/dev/null:{}/slots=16/listen=127.0.0.1", port + 16),
            ),
            Entry::device(
                "Many C",
                &format!("/dev/null:{high}/slots=8/listen=127.0.0.1"),
            ),
        ]);
        let ctx = pcscd.context();
        let mut all = pcscd.wait_readers_of(&ctx, "Many A", 16);
        all.extend(pcscd.wait_readers_of(&ctx, "Many B", 16));
        all.extend(pcscd.wait_readers_of(&ctx, "Many C", 8));
        assert_eq!(all.len(), 40, "{all:?}");
        // A card in the first slot, in one past pcscd's old limit, and in the last.
        for (vicc_port, reader) in [
            (port, reader_name("Many A", 0, 0)),
            (port + 16 + 5, reader_name("Many B", 1, 5)),
            (high + 7, reader_name("Many C", 2, 7)),
        ] {
            let _vicc = Vicc::connect(vicc_port, Behaviour::Echo);
            wait_card(&reader, true, 3 * SECOND);
            let card = connect(&ctx, &reader);
            let apdu = [0x00, 0xB0, 0x00, 0x00, 0x02];
            assert_eq!(transmit(&card, &apdu), Ok(echo_reply(&apdu)), "{reader}");
        }
        assert!(!pcscd.log_text().contains("no room for more"));
    } else {
        let pcscd = Pcscd::start(&[
            Entry::device(
                "Many A",
                &format!("/dev/null:{port}/slots=10/listen=127.0.0.1"),
            ),
            Entry::device(
                "Many B",
                &format!("/dev/null:{}/slots=10/listen=127.0.0.1", port + 10),
            ),
        ]);
        let ctx = pcscd.context();
        assert!(
            pcscd.wait_log("no room for more", 5 * SECOND),
            "no line says why Many B is gone:\n{}",
            pcscd.log_text()
        );
        let log = pcscd.log_text();
        assert_eq!(log.matches("no room for more").count(), 1, "{log}");
        let readers = pcscd.wait_readers_of(&ctx, "Many A", 10);
        assert_eq!(readers.len(), 10);
        assert!(list_readers(&ctx).iter().all(|r| r.starts_with("Many A")));
        let reader = reader_name("Many A", 0, 9);
        let _vicc = Vicc::connect(port + 9, Behaviour::Echo);
        wait_card(&reader, true, 3 * SECOND);
        let card = connect(&ctx, &reader);
        let apdu = [0x00, 0xB0, 0x00, 0x00, 0x02];
        assert_eq!(transmit(&card, &apdu), Ok(echo_reply(&apdu)));
    }
}

/// The sandbox of `VPCD_SANDBOX=1` is real: a system call outside pcscd.service's
/// filter kills the process (SIGSYS), W+X memory is refused, no capabilities are left.
#[test]
fn the_hardened_service_sandbox_is_live() {
    if not_root() {
        eprintln!("skipped: the sandbox needs root (it switches to user pcscd)");
        return;
    }
    let (ok, out) = run(&mut std::process::Command::new(
        repo_root().join("tests/sandbox/check"),
    ));
    assert!(ok, "tests/sandbox/check:\n{out}");
    assert!(out.contains("setpriority killed by SIGSYS"), "{out}");
}

fn not_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() != 0 }
}
