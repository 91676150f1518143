//! Card presence events as pcscd reports them to clients, against a real private
//! pcscd: insertion, removal, re-insertion, a quick swap of viccs, a removal in the
//! middle of a transmit, and a removal while pcscd sits in the polling callback.
//!
//! Nothing here sleeps to let something happen: the tests wait for what pcscd reports,
//! for what a vicc received, or for a line in pcscd's log. Deadlines are hang
//! detectors, far from what a working driver needs; scripts/bench measures latency.

use std::ffi::CString;
use std::time::{Duration, Instant};

use pcsc::{Context, ReaderState, State};
use vpcd_testing::*;

const NAME: &str = "Presence PCD";
const SECOND: Duration = Duration::from_secs(1);
const APDU: &[u8] = &[0x00, 0xB0, 0x00, 0x00, 0x04];

/// A private pcscd with one two-slot reader; returns it, the first slot's port and
/// that slot's reader name.
fn one_reader() -> (Pcscd, u16, String) {
    one_reader_of(Pcscd::builder())
}

fn one_reader_of(builder: PcscdBuilder) -> (Pcscd, u16, String) {
    let port = free_ports(2);
    let pcscd = builder
        .entry(&Entry::device(NAME, &format!("/dev/null:{port}")))
        .start();
    let reader = reader_name(NAME, 0, 0);
    pcscd.wait_readers(&[reader.clone(), reader_name(NAME, 0, 1)]);
    (pcscd, port, reader)
}

/// The reader's state as pcscd reports it now, and its event counter (the high 16
/// bits of dwEventState, bumped by pcscd on every insertion and removal).
fn snapshot(ctx: &Context, reader: &str) -> (State, u32) {
    let mut states = [ReaderState::new(
        CString::new(reader).unwrap(),
        State::UNAWARE,
    )];
    // A new pcsc-lite 2.x context may not know a just-added reader yet, and its
    // client library can misread a wake-up while it polls: both pass (see wait_card).
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    loop {
        match ctx.get_status_change(Duration::ZERO, &mut states) {
            Ok(()) | Err(pcsc::Error::Timeout) => break,
            Err(pcsc::Error::UnknownReader | pcsc::Error::UnsupportedFeature)
                if std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(10))
            }
            Err(e) => panic!("get_status_change: {e:?}"),
        }
    }
    (states[0].event_state(), states[0].event_count())
}

/// Polls `snapshot` until `done` holds; panics with the last state after `timeout`.
fn wait_until(
    ctx: &Context,
    reader: &str,
    timeout: Duration,
    what: &str,
    done: impl Fn(State, u32) -> bool,
) {
    let start = Instant::now();
    loop {
        let (state, count) = snapshot(ctx, reader);
        if done(state, count) {
            return;
        }
        assert!(
            start.elapsed() < timeout,
            "{what}: not seen within {timeout:?} (state {state:?}, event count {count})"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn present(state: State) -> bool {
    state.contains(State::PRESENT) && !state.intersects(State::UNKNOWN | State::UNAVAILABLE)
}

#[test]
fn insertion_is_reported_with_the_atr_and_counted() {
    let (pcscd, port, reader) = one_reader();
    let ctx = pcscd.context();
    wait_card(&reader, false, 2 * SECOND);
    let (state, before) = snapshot(&ctx, &reader);
    assert!(state.contains(State::EMPTY), "{state:?}");
    let _vicc = Vicc::connect(port, Behaviour::Echo);
    wait_card(&reader, true, 2 * SECOND);
    let mut states = [ReaderState::new(
        CString::new(reader.as_str()).unwrap(),
        State::UNAWARE,
    )];
    ctx.get_status_change(Duration::ZERO, &mut states).unwrap();
    assert_eq!(states[0].atr(), TEST_ATR);
    assert_eq!(
        states[0].event_count(),
        before + 1,
        "one event: the insertion"
    );
}

#[test]
fn removal_is_reported_and_counted() {
    let (pcscd, port, reader) = one_reader();
    let ctx = pcscd.context();
    let vicc = Vicc::connect(port, Behaviour::Echo);
    wait_card(&reader, true, 2 * SECOND);
    let (_, before) = snapshot(&ctx, &reader);
    vicc.disconnect();
    wait_card(&reader, false, 2 * SECOND);
    let (state, after) = snapshot(&ctx, &reader);
    assert!(state.contains(State::EMPTY), "{state:?}");
    assert_eq!(after, before + 1, "one event: the removal");
}

#[test]
fn reinsertion_after_removal_is_reported_and_talks_to_the_new_vicc() {
    let (pcscd, port, reader) = one_reader();
    let ctx = pcscd.context();
    let (_, start) = snapshot(&ctx, &reader);
    for round in 1..=3u32 {
        let vicc = Vicc::connect(port, Behaviour::Echo);
        wait_card(&reader, true, 2 * SECOND);
        let card = connect(&ctx, &reader);
        assert_eq!(transmit(&card, APDU).unwrap(), echo_reply(APDU));
        assert_eq!(
            vicc.apdus.load(std::sync::atomic::Ordering::Relaxed),
            1,
            "round {round}"
        );
        drop(card);
        vicc.disconnect();
        wait_card(&reader, false, 2 * SECOND);
        let (_, count) = snapshot(&ctx, &reader);
        assert_eq!(
            count,
            start + 2 * round,
            "round {round}: one insertion and one removal each"
        );
    }
}

#[test]
fn quick_swap_is_seen_as_a_removal_then_an_insertion() {
    let (pcscd, port, reader) = one_reader();
    let ctx = pcscd.context();
    // Several rounds: the new vicc connects while the driver may still be noticing
    // that the old one left.
    for round in 0..10 {
        let a_stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let a_close = a_stream.try_clone().unwrap();
        let a = Vicc::serve(a_stream, Behaviour::Echo);
        wait_card(&reader, true, 2 * SECOND);
        let card = connect(&ctx, &reader);
        assert_eq!(transmit(&card, APDU).unwrap(), echo_reply(APDU));
        let (_, before) = snapshot(&ctx, &reader);

        // A closes and B connects in the very next system call.
        a_close.shutdown(std::net::Shutdown::Both).unwrap();
        let b_stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let b = Vicc::serve(b_stream, Behaviour::Echo);
        drop(a);

        wait_until(
            &ctx,
            &reader,
            3 * SECOND,
            &format!("round {round}: removal and insertion (event count from {before})"),
            |state, count| present(state) && count >= before + 2,
        );
        // The card under the old handle is gone, even though a card is present again.
        let err = transmit(&card, APDU).expect_err("the old card's handle must fail");
        assert!(
            matches!(
                err,
                pcsc::Error::RemovedCard | pcsc::Error::ResetCard | pcsc::Error::NoSmartcard
            ),
            "round {round}: {err:?}"
        );
        drop(card);
        // The new card is vicc B.
        let card = connect(&ctx, &reader);
        assert_eq!(transmit(&card, APDU).unwrap(), echo_reply(APDU));
        assert_eq!(
            b.apdus.load(std::sync::atomic::Ordering::Relaxed),
            1,
            "round {round}: B answered"
        );
        drop(card);
        b.disconnect();
        wait_card(&reader, false, 2 * SECOND);
    }
}

#[test]
fn removal_during_a_transmit_fails_it_and_reports_the_card_absent() {
    let (mut pcscd, port, reader) = one_reader();
    let ctx = pcscd.context();
    let vicc = Vicc::connect(port, Behaviour::StallOnApdu);
    wait_card(&reader, true, 2 * SECOND);
    let (result, elapsed) = std::thread::scope(|s| {
        let client = s.spawn(|| {
            let ctx = pcscd.context();
            let card = connect(&ctx, &reader);
            let start = Instant::now();
            let result = transmit(&card, APDU);
            (result, start.elapsed())
        });
        // The vicc has the APDU and holds it: the client is mid-transmit.
        vicc.wait_apdus(1, 5 * SECOND);
        vicc.disconnect();
        client.join().unwrap()
    });
    assert!(result.is_err(), "the transmit must fail, got {result:?}");
    // Well before the reader's 30 s response timeout: the removal ended it.
    assert!(elapsed < 10 * SECOND, "transmit took {elapsed:?}");
    wait_card(&reader, false, 2 * SECOND);
    assert!(pcscd.is_running(), "pcscd died");
    // The slot takes a new card afterwards.
    let _next = Vicc::connect(port, Behaviour::Echo);
    wait_card(&reader, true, 2 * SECOND);
    let card = connect(&ctx, &reader);
    assert_eq!(transmit(&card, APDU).unwrap(), echo_reply(APDU));
}

/// A card powered and held by a client: pcscd's polling thread waits in the driver's
/// callback for up to 10 minutes (5 s while the card is powered but unused), and only
/// the driver waking it makes pcscd see the removal sooner.
#[test]
fn removal_wakes_pcscd_waiting_in_the_polling_callback() {
    // The driver's trace has a line for every call of the callback.
    let (pcscd, port, reader) = one_reader_of(Pcscd::builder().driver_log("trace"));
    let ctx = pcscd.context();
    let vicc = Vicc::connect(port, Behaviour::Echo);
    wait_card(&reader, true, 2 * SECOND);
    let card = connect(&ctx, &reader);
    assert_eq!(transmit(&card, APDU).unwrap(), echo_reply(APDU));
    let (state, before) = snapshot(&ctx, &reader);
    assert!(
        state.contains(State::INUSE) && !state.contains(State::UNPOWERED),
        "{state:?}"
    );
    // pcscd's polling thread has handled the insertion and called the callback again.
    let inserted = format!("Card inserted into {reader}");
    assert!(
        pcscd.wait_log_until(5 * SECOND, |log| log
            .rsplit_once(&inserted)
            .is_some_and(|(_, after)| after.contains("poll_for_event (lun 0x0)"))),
        "the polling thread never waited in the callback:\n{}",
        pcscd.log_text()
    );
    vicc.disconnect();
    // Left waiting, pcscd would look again 5 s after the callback began at the
    // earliest; it is at most a few milliseconds into it now.
    wait_card(&reader, false, 4 * SECOND);
    let (_, after) = snapshot(&ctx, &reader);
    assert_eq!(after, before + 1);
    let err = transmit(&card, APDU).expect_err("the removed card's handle must fail");
    assert!(
        matches!(err, pcsc::Error::RemovedCard | pcsc::Error::NoSmartcard),
        "{err:?}"
    );
}
