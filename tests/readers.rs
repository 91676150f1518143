//! Many readers and slots in one pcscd, isolation between them, reversed mode that
//! heals, IPv6 and listen-address control.

use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use vpcd_testing::*;

const SECOND: Duration = Duration::from_secs(1);

#[test]
fn four_readers_of_four_slots_each_work_in_parallel() {
    let base = free_ports(16);
    let entries: Vec<Entry> = (0..4)
        .map(|r| {
            Entry::device(
                &format!("VPCD {r}"),
                &format!("/dev/null:{}/slots=4", base + 4 * r),
            )
        })
        .collect();
    let pcscd = Pcscd::start(&entries);
    let names: Vec<String> = (0..4u8)
        .flat_map(|r| (0..4u8).map(move |s| reader_name(&format!("VPCD {r}"), r, s)))
        .collect();
    pcscd.wait_readers(&names);
    let _viccs: Vec<Vicc> = (0..16)
        .map(|i| Vicc::connect(base + i, Behaviour::Echo))
        .collect();
    std::thread::scope(|scope| {
        for (i, name) in names.iter().enumerate() {
            let pcscd = &pcscd;
            scope.spawn(move || {
                let ctx = pcscd.context();
                wait_card(name, true, 5 * SECOND);
                let card = connect(&ctx, name);
                for n in 0..100u8 {
                    let apdu = [0x00, 0xB0, i as u8, n, 0x04];
                    assert_eq!(transmit(&card, &apdu).unwrap(), echo_reply(&apdu), "{name}");
                }
            });
        }
    });
}

#[test]
fn a_stalled_slot_does_not_delay_other_slots_or_readers() {
    let base = free_ports(4);
    let pcscd = Pcscd::start(&[
        Entry::device("A", &format!("/dev/null:{base}/timeout=30")),
        Entry::device("B", &format!("/dev/null:{}", base + 2)),
    ]);
    let stalled = reader_name("A", 0, 0);
    let sibling = reader_name("A", 0, 1);
    let other = reader_name("B", 1, 0);
    pcscd.wait_readers(&[
        stalled.clone(),
        sibling.clone(),
        other.clone(),
        reader_name("B", 1, 1),
    ]);
    let stuck_vicc = Vicc::connect(base, Behaviour::StallOnApdu);
    let _s = Vicc::connect(base + 1, Behaviour::Echo);
    let _o = Vicc::connect(base + 2, Behaviour::Echo);
    let ctx = pcscd.context();
    for r in [&stalled, &sibling, &other] {
        wait_card(r, true, 2 * SECOND);
    }
    let stuck = stalled.clone();
    let blocked = std::thread::spawn(move || {
        let ctx = pcsc::Context::establish(pcsc::Scope::User).unwrap();
        let card = connect(&ctx, &stuck);
        let _ = transmit(&card, &[0x00, 0xB0, 0x00, 0x00, 0x00]);
    });
    stuck_vicc.wait_apdus(1, 5 * SECOND);
    // Every exchange with the others ends while the stalled one still waits for its
    // 30 s timeout: none queued behind it. How fast they are is the bench's business.
    for reader in [&sibling, &other] {
        let card = connect(&ctx, reader);
        for n in 0..50u8 {
            let apdu = [0x00, 0xB0, 0x00, n, 0x02];
            assert_eq!(
                transmit(&card, &apdu).unwrap(),
                echo_reply(&apdu),
                "{reader}"
            );
        }
    }
    assert!(
        !blocked.is_finished(),
        "the stalled exchange ended before the others were done"
    );
    drop(stuck_vicc);
    blocked.join().unwrap();
}

/// Reversed mode: pcscd starts first, the vicc later, then it dies and comes back.
/// `device_name` has `PORT` where the port goes.
fn reversed_mode_heals(device_name: &str, bind: SocketAddr) {
    let device_name = device_name.replace("PORT", &bind.port().to_string());
    // The driver's trace logs every failed connection attempt.
    let pcscd = Pcscd::builder()
        .driver_log("trace")
        .entry(&Entry::device("Rev", &device_name))
        .start();
    let reader = reader_name("Rev", 0, 0);
    pcscd.wait_readers(std::slice::from_ref(&reader));

    // Watch pcscd's responsiveness all along.
    let stop = Arc::new(AtomicBool::new(false));
    let watch = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let ctx = pcsc::Context::establish(pcsc::Scope::User).unwrap();
            let mut worst = Duration::ZERO;
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                assert_eq!(list_readers(&ctx).len(), 1);
                worst = worst.max(t.elapsed());
                std::thread::sleep(Duration::from_millis(20));
            }
            worst
        })
    };
    let ctx = pcscd.context();
    wait_card(&reader, false, SECOND);
    for round in 0..3 {
        // The vicc comes (back) after the driver failed to reach it 1, 3, then 5 times,
        // at different points of its backoff (20 ms doubling up to 1 s).
        let failures = 1 + 2 * round as usize;
        assert!(
            pcscd.wait_log_until(10 * SECOND, |log| failed_attempts(log) >= failures),
            "round {round}: fewer than {failures} failed attempts:\n{}",
            pcscd.log_text()
        );
        let vicc = ListeningVicc::start(bind);
        wait_card(&reader, true, 5 * SECOND);
        let card = connect(&ctx, &reader);
        let apdu = [0x00, 0xB0, 0x00, round, 0x00];
        assert_eq!(transmit(&card, &apdu).unwrap(), echo_reply(&apdu));
        drop(card);
        drop(vicc);
        wait_card(&reader, false, 5 * SECOND);
    }
    stop.store(true, Ordering::Relaxed);
    // A hang detector, not a latency bound: a stall of pcscd behind the driver's
    // connecting would last seconds (the connect timeout is 3 s).
    let worst = watch.join().unwrap();
    assert!(worst < 2 * SECOND, "SCardListReaders took up to {worst:?}");
}

/// The driver's failed attempts to reach the vicc since it last left (or since the
/// start): the first one of a series is logged at info, the others in the trace.
fn failed_attempts(log: &str) -> usize {
    let since = log
        .rsplit_once("card removed")
        .map_or(log, |(_, after)| after);
    since
        .lines()
        .filter(|l| l.contains("no vicc yet") || l.contains("connect failed"))
        .count()
}

#[test]
fn reversed_mode_heals_over_ipv4() {
    let port = free_ports(1);
    reversed_mode_heals("127.0.0.1:PORT/slots=1", ([127, 0, 0, 1], port).into());
}

#[test]
fn reversed_mode_heals_over_ipv6_loopback() {
    let port = free_ports(1);
    reversed_mode_heals("::1:PORT/slots=1", format!("[::1]:{port}").parse().unwrap());
}

#[test]
fn reversed_mode_takes_a_quoted_bracketed_ipv6_literal() {
    let port = free_ports(1);
    reversed_mode_heals(
        "\"[::1]:PORT/slots=1\"",
        format!("[::1]:{port}").parse().unwrap(),
    );
}

#[test]
fn reversed_mode_resolves_host_names() {
    let port = free_ports(1);
    reversed_mode_heals("localhost:PORT/slots=1", ([127, 0, 0, 1], port).into());
}

fn can_connect(addr: SocketAddr) -> bool {
    TcpStream::connect_timeout(&addr, SECOND).is_ok()
}

fn listen_case(option: &str, must: &[&str], must_not: &[&str]) {
    let port = free_ports(2);
    let pcscd = Pcscd::start(&[Entry::device(
        "L",
        &format!("/dev/null:{port}/slots=1/{option}"),
    )]);
    let reader = reader_name("L", 0, 0);
    pcscd.wait_readers(std::slice::from_ref(&reader));
    for host in must {
        let addr: SocketAddr = format!("{host}:{port}").parse().unwrap();
        let vicc = Vicc::connect_to(addr, Behaviour::Echo)
            .unwrap_or_else(|e| panic!("{option}: {addr} must accept: {e}"));
        wait_card(&reader, true, 2 * SECOND);
        vicc.disconnect();
        wait_card(&reader, false, 2 * SECOND);
    }
    for host in must_not {
        let addr: SocketAddr = format!("{host}:{port}").parse().unwrap();
        assert!(!can_connect(addr), "{option}: {addr} must not accept");
    }
}

#[test]
fn listen_on_ipv6_loopback_only() {
    listen_case("listen=::1", &["[::1]"], &["127.0.0.1"]);
}

#[test]
fn listen_on_ipv4_loopback_only() {
    listen_case("listen=127.0.0.1", &["127.0.0.1"], &["[::1]"]);
}

#[test]
fn listen_dual_stack() {
    listen_case("listen=::", &["127.0.0.1", "[::1]"], &[]);
}

#[test]
fn listen_ipv6_only() {
    listen_case("listen=::/v6only=yes", &["[::1]"], &["127.0.0.1"]);
}

#[test]
fn the_default_listens_on_ipv4_only() {
    listen_case("slots=1", &["127.0.0.1"], &["[::1]"]);
}

/// At shutdown pcscd closes a slot only once no client thread holds it: with an
/// exchange in flight on slot 0, slot 1 closes first (which ends that exchange), then
/// the client's thread closes slot 0, unless pcscd exits first (it mostly does, on
/// 1.9.9 and 2.5.1: then this shows the order and the line only when the client's
/// thread wins). Every slot had been opened, so the driver must not blame pcscd's
/// reader limit (it used to count the slots still open when lun 0 closed). The
/// decision itself: `readers::tests`.
#[test]
fn shutting_down_a_reader_whose_slot_0_closes_last_blames_no_reader_limit() {
    let port = free_ports(2);
    let mut pcscd = Pcscd::builder()
        .entry(&Entry::device("Two", &format!("/dev/null:{port}/slots=2")))
        .driver_log("debug")
        .start();
    let readers = [reader_name("Two", 0, 0), reader_name("Two", 0, 1)];
    pcscd.wait_readers(&readers);
    let stalled = Vicc::connect(port, Behaviour::StallOnApdu);
    wait_card(&readers[0], true, 2 * SECOND);
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let reader = readers[0].clone();
    let client = std::thread::spawn(move || {
        let ctx = pcsc::Context::establish(pcsc::Scope::User).unwrap();
        let card = connect(&ctx, &reader);
        let failed = transmit(&card, &[0x00, 0xB0, 0x00, 0x00, 0x00]).is_err();
        // Hold the handles until pcscd is gone (pcscd 1.9.9 can crash when a client
        // disconnects while it removes that reader: tests/driver.rs).
        let _ = done_rx.recv();
        std::mem::forget(card);
        std::mem::forget(ctx);
        failed
    });
    stalled.wait_apdus(1, 5 * SECOND);
    // pcscd 2.x may crash in its own cleanup here (tests/driver.rs): only the log counts.
    let _ = pcscd.stop_with_status();
    done_tx.send(()).unwrap();
    assert!(client.join().unwrap(), "the stalled transmit must fail");
    let log = pcscd.log_text();
    let closed = format!("lun 0x1 listen 0.0.0.0:{}: slot closed", port + 1);
    assert!(log.contains(&closed), "slot 1 closed:\n{log}");
    assert!(!log.contains("no room for more"), "{log}");
}

/// The plain shutdown: pcscd closes slot 0, then slot 1.
#[test]
fn shutting_down_a_reader_of_two_slots_blames_no_reader_limit() {
    let port = free_ports(2);
    let mut pcscd = Pcscd::builder()
        .entry(&Entry::device("Two", &format!("/dev/null:{port}/slots=2")))
        .driver_log("debug")
        .start();
    pcscd.wait_readers(&[reader_name("Two", 0, 0), reader_name("Two", 0, 1)]);
    pcscd.stop();
    let log = pcscd.log_text();
    assert_eq!(
        log.matches("slot closed").count(),
        2,
        "both slots closed:\n{log}"
    );
    assert!(!log.contains("no room for more"), "{log}");
}
