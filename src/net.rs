//! The networking every slot kind shares, whatever protocol it speaks: its listening
//! socket, the options of a connected peer, bounded writes, the watcher thread that
//! waits on its sockets, and a log budget for peers that misbehave again and again.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use socket2::{Domain, SockRef, Socket, TcpKeepalive, Type};

use crate::sys::{self, Interest, Ready};

/// A non-blocking listener on `at`.
pub fn listen(at: SocketAddr, v6only: bool) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(at), Type::STREAM, None)?;
    // A restarted pcscd must get its port back while old connections sit in TIME_WAIT.
    socket.set_reuse_address(true)?;
    if at.is_ipv6() {
        socket.set_only_v6(v6only)?;
    }
    socket.bind(&at.into())?;
    // The longest accept queue the system allows (SOMAXCONN, capped by
    // net.core.somaxconn). A connection that finds the queue full is not refused:
    // Linux drops its handshake's last step, and the client, connected as far as it
    // knows, waits with nobody at the other end. The watcher empties the queue on
    // every wake-up, refusing or taking each peer.
    socket.listen(libc::SOMAXCONN)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// Readies a connected peer: blocking I/O bounded by `timeout` each way, no Nagle.
pub fn configure_peer(stream: &TcpStream, timeout: Duration) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    // One command, one reply: Nagle and delayed ACKs would cost ~40 ms per exchange.
    stream.set_nodelay(true)?;
    stream.set_write_timeout(Some(timeout))?;
    stream.set_read_timeout(Some(timeout))?;
    // Notice a phone that vanished from the network without closing.
    let keepalive = TcpKeepalive::new()
        .with_time(Duration::from_secs(30))
        .with_interval(Duration::from_secs(10));
    SockRef::from(stream).set_tcp_keepalive(&keepalive)?;
    Ok(())
}

/// First wait after a failed accept, and the cap of its backoff.
const ACCEPT_RETRY_FIRST: Duration = Duration::from_millis(50);
const ACCEPT_RETRY_MAX: Duration = Duration::from_secs(2);

/// Waits that double after each failure in a row, up to a cap; a success starts over.
/// Time is passed in, so the decisions are tested without waiting.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    first: Duration,
    max: Duration,
    next: Duration,
    until: Option<Instant>,
}

impl Backoff {
    pub const fn new(first: Duration, max: Duration) -> Backoff {
        Backoff {
            first,
            max,
            next: first,
            until: None,
        }
    }

    /// A failure at `now`: no new attempt before `now` + the returned wait.
    pub fn fail(&mut self, now: Instant) -> Duration {
        let wait = self.next;
        self.until = Some(now + wait);
        self.next = self.next.saturating_mul(2).min(self.max);
        wait
    }

    /// A success: the next failure waits the first wait again.
    pub fn succeed(&mut self) {
        self.next = self.first;
        self.until = None;
    }

    /// Until when to wait, if a wait is still running at `now`.
    pub fn waiting(&self, now: Instant) -> Option<Instant> {
        self.until.filter(|until| now < *until)
    }
}

/// A non-blocking listener that stops being polled for a while after accept fails
/// (EMFILE and friends persist until a descriptor frees up: retrying at once would spin
/// and fill pcscd's log).
pub(crate) struct Acceptor {
    listener: TcpListener,
    backoff: Backoff,
}

impl Acceptor {
    pub fn new(listener: TcpListener) -> Acceptor {
        Acceptor {
            listener,
            backoff: Backoff::new(ACCEPT_RETRY_FIRST, ACCEPT_RETRY_MAX),
        }
    }

    /// The listener to poll at `now`, or, while backing off, when to look again.
    pub fn armed(&self, now: Instant) -> Result<BorrowedFd<'_>, Instant> {
        match self.backoff.waiting(now) {
            Some(until) => Err(until),
            None => Ok(self.listener.as_fd()),
        }
    }

    /// Accepts every pending connection and hands it on. A failure is logged within
    /// `budget` and backs off.
    pub fn accept_all(
        &mut self,
        label: &str,
        budget: &mut LogBudget,
        mut take: impl FnMut(TcpStream, SocketAddr),
    ) {
        loop {
            match self.listener.accept() {
                Ok((stream, peer)) => {
                    self.backoff.succeed();
                    take(stream, peer);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    let wait = self.backoff.fail(Instant::now());
                    budget.log(
                        log::Level::Error,
                        label,
                        &format!("accept failed: {e}; not accepting for {wait:?}"),
                    );
                    return;
                }
            }
        }
    }
}

/// Writes all of `bytes` to a peer set up by [`configure_peer`] within `timeout` in
/// all, however slowly the peer reads. The socket's send timeout already is `timeout`,
/// so a write that goes through at once (the usual case) costs no extra system call;
/// only a partial write re-arms the timeout for the time left, and restores it after.
pub fn write_all_within(stream: &TcpStream, bytes: &[u8], timeout: Duration) -> io::Result<()> {
    let deadline = std::time::Instant::now() + timeout;
    let mut rearmed = false;
    let mut done = 0;
    let result = loop {
        if done == bytes.len() {
            break Ok(());
        }
        if done > 0 {
            let remaining = deadline.saturating_duration_since(std::time::Instant::now());
            if remaining.is_zero() {
                break Err(io::ErrorKind::TimedOut.into());
            }
            if let Err(e) = stream.set_write_timeout(Some(remaining)) {
                break Err(e);
            }
            rearmed = true;
        }
        match (&mut &*stream).write(&bytes[done..]) {
            Ok(0) => break Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                break Err(io::ErrorKind::TimedOut.into())
            }
            Err(e) => break Err(e),
        }
    };
    if rearmed {
        let _ = stream.set_write_timeout(Some(timeout));
    }
    result
}

/// What a watcher thread does between two waits. The thread is the same for every slot
/// kind (wait on the sockets, wake on request, stop and be joined); what it waits on
/// and does is the slot's.
pub(crate) trait Watch: Send + 'static {
    /// Adds the descriptors to wait on to `fds` and returns how long to wait at most
    /// (`Some(None)`: until one is ready); `None` ends the thread.
    #[allow(clippy::option_option)]
    fn arm<'a>(&'a mut self, fds: &mut Vec<(BorrowedFd<'a>, Interest)>)
        -> Option<Option<Duration>>;
    /// Handles the readiness of the descriptors `arm` added, in the same order (all
    /// clear on a timeout).
    fn on_ready(&mut self, ready: &[Ready]);
    /// Runs once the loop has ended.
    fn finish(&mut self) {}
    /// Receives, before the thread starts, a handle that wakes it from other threads.
    fn attach(&mut self, waker: Waker) {
        let _ = waker;
    }
}

/// Wakes a watcher thread from another thread (one it started, say).
#[derive(Clone)]
pub(crate) struct Waker(Arc<UnixStream>);

impl Waker {
    pub fn wake(&self) {
        let _ = (&*self.0).write(&[1]);
    }
}

/// A thread running a [`Watch`], woken by [`Watcher::wake`], joined by
/// [`Watcher::stop`].
pub(crate) struct Watcher {
    label: String,
    wake: Waker,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Watcher {
    pub fn spawn(name: String, label: String, mut watch: impl Watch) -> io::Result<Watcher> {
        let (wake, wake_rx) = UnixStream::pair()?;
        wake.set_nonblocking(true)?;
        wake_rx.set_nonblocking(true)?;
        let wake = Waker(Arc::new(wake));
        watch.attach(wake.clone());
        let thread_label = label.clone();
        let thread = std::thread::Builder::new()
            .name(name)
            .spawn(move || run_watch(&mut watch, &wake_rx, &thread_label))?;
        Ok(Watcher {
            label,
            wake,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Makes the thread look at its state again now.
    pub fn wake(&self) {
        self.wake.wake();
    }

    /// Wakes the thread and joins it; its [`Watch::arm`] must end the loop from now on.
    /// Returns whether this call joined it (false if it was joined already).
    pub fn stop(&self) -> bool {
        self.wake();
        let Some(thread) = self.thread.lock().take() else {
            return false;
        };
        if thread.join().is_err() {
            log::error!("{}: watcher thread panicked", self.label);
        }
        true
    }
}

fn run_watch(watch: &mut impl Watch, wake_rx: &UnixStream, label: &str) {
    loop {
        let mut fds = vec![(wake_rx.as_fd(), Interest::Read)];
        let Some(timeout) = watch.arm(&mut fds) else {
            break;
        };
        let ready = match sys::poll(&fds, timeout) {
            Ok(ready) => ready,
            Err(e) => {
                log::error!("{label}: poll failed: {e}");
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        drop(fds);
        if ready[0].readable {
            let mut sink = [0u8; 64];
            while matches!((&*wake_rx).read(&mut sink), Ok(n) if n > 0) {}
        }
        watch.on_ready(&ready[1..]);
    }
    watch.finish();
}

/// Lines about misbehaving peers a slot may log per [`PEER_LOG_WINDOW`].
pub(crate) const PEER_LOG_LINES: u32 = 10;
pub(crate) const PEER_LOG_WINDOW: Duration = Duration::from_secs(60);

/// How many lines about misbehaving peers one slot may log per window; the rest are
/// counted and the count is logged when the next window opens. A peer that fails in a
/// loop (or a flood of them) must not fill pcscd's log.
#[derive(Debug)]
pub(crate) struct LogBudget {
    lines: u32,
    window: Duration,
    opened: Option<Instant>,
    used: u32,
    suppressed: u64,
}

/// What [`LogBudget::spend`] allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Budget {
    /// Log the line; `suppressed` lines were left out since the last one logged.
    Log { suppressed: u64 },
    /// Leave it out (it is counted).
    Suppress,
}

impl LogBudget {
    pub const fn new(lines: u32, window: Duration) -> LogBudget {
        LogBudget {
            lines,
            window,
            opened: None,
            used: 0,
            suppressed: 0,
        }
    }

    /// Logs `line` for `label` if the budget allows it, with the count of the lines
    /// left out before it.
    pub fn log(&mut self, level: log::Level, label: &str, line: &str) {
        match self.spend(Instant::now()) {
            Budget::Log { suppressed: 0 } => log::log!(level, "{label}: {line}"),
            Budget::Log { suppressed } => log::log!(
                level,
                "{label}: {line} ({suppressed} line(s) about peers suppressed before this one)"
            ),
            Budget::Suppress => {}
        }
    }

    pub fn spend(&mut self, now: Instant) -> Budget {
        let expired = self.opened.map_or(true, |opened| {
            now.saturating_duration_since(opened) >= self.window
        });
        if expired {
            self.opened = Some(now);
            self.used = 0;
        }
        if self.used < self.lines {
            self.used += 1;
            Budget::Log {
                suppressed: std::mem::take(&mut self.suppressed),
            }
        } else {
            self.suppressed += 1;
            Budget::Suppress
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::net::Ipv4Addr;

    fn pair(timeout: Duration) -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let ours = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (theirs, _) = listener.accept().unwrap();
        configure_peer(&ours, timeout).unwrap();
        (ours, theirs)
    }

    #[test]
    fn a_write_the_peer_reads_goes_through() {
        let (ours, mut theirs) = pair(Duration::from_secs(5));
        let reader = std::thread::spawn(move || {
            let mut all = vec![];
            theirs.read_to_end(&mut all).unwrap();
            all.len()
        });
        write_all_within(&ours, &vec![7u8; 4 << 20], Duration::from_secs(5)).unwrap();
        drop(ours);
        assert_eq!(reader.join().unwrap(), 4 << 20);
    }

    /// A write that cannot start (the peer's window is already full) is a timeout too.
    #[test]
    fn a_write_that_cannot_start_times_out() {
        let timeout = Duration::from_millis(200);
        let (ours, _theirs) = pair(timeout);
        let full = write_all_within(&ours, &vec![7u8; 64 << 20], timeout).unwrap_err();
        assert_eq!(full.kind(), io::ErrorKind::TimedOut);
        // Byte by byte until not even one fits.
        let e = (0..1_000_000)
            .find_map(|_| write_all_within(&ours, &[1], timeout).err())
            .expect("the window fills");
        assert_eq!(e.kind(), io::ErrorKind::TimedOut, "{e}");
    }

    /// A broken connection is reported as such, not as a timeout.
    #[test]
    fn a_write_to_a_peer_that_left_fails_as_a_broken_connection() {
        let timeout = Duration::from_secs(5);
        let (ours, theirs) = pair(timeout);
        // An RST: the peer closes with a zero linger time.
        SockRef::from(&theirs)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        drop(theirs);
        let deadline = Instant::now() + timeout;
        let e = loop {
            match write_all_within(&ours, &[1, 2, 3], timeout) {
                Err(e) => break e,
                Ok(()) => assert!(Instant::now() < deadline, "the write never failed"),
            }
        };
        assert_ne!(e.kind(), io::ErrorKind::TimedOut, "{e}");
    }

    /// A peer that resets while a large write is under way: the kernel hands back the
    /// part it took, and the write goes on against the time left (not against a
    /// deadline already gone) and fails as a broken connection, long before the
    /// timeout.
    #[test]
    fn a_peer_that_resets_mid_write_fails_it_as_a_broken_connection() {
        let timeout = Duration::from_secs(20);
        let (ours, mut theirs) = pair(timeout);
        let started = Instant::now();
        // More than the two socket buffers hold: the write is still running (or
        // blocked with part of it taken) when the peer has read its first byte.
        let writer =
            std::thread::spawn(move || write_all_within(&ours, &vec![7u8; 64 << 20], timeout));
        theirs.set_read_timeout(Some(timeout)).unwrap();
        theirs.read_exact(&mut [0u8; 1]).unwrap();
        SockRef::from(&theirs)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        drop(theirs);
        let e = writer.join().unwrap().unwrap_err();
        assert!(
            matches!(
                e.kind(),
                io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
            ),
            "{e}"
        );
        assert!(started.elapsed() < timeout, "took {:?}", started.elapsed());
    }

    #[test]
    fn an_idle_listener_is_served_without_backing_off() {
        let listener = listen((Ipv4Addr::LOCALHOST, 0).into(), false).unwrap();
        let at = listener.local_addr().unwrap();
        let mut acceptor = Acceptor::new(listener);
        let mut budget = LogBudget::new(10, Duration::from_secs(60));
        let mut taken = vec![];
        acceptor.accept_all("t", &mut budget, |_, peer| taken.push(peer));
        assert!(taken.is_empty());
        assert!(
            acceptor.armed(Instant::now()).is_ok(),
            "no backoff when idle"
        );
        let a = TcpStream::connect(at).unwrap();
        let b = TcpStream::connect(at).unwrap();
        // Both are in the accept queue once connect returns (loopback).
        acceptor.accept_all("t", &mut budget, |_, peer| taken.push(peer));
        assert_eq!(
            taken,
            [a.local_addr().unwrap(), b.local_addr().unwrap()],
            "every pending peer, in order"
        );
        assert!(acceptor.armed(Instant::now()).is_ok());
        assert_eq!(budget.spend(Instant::now()), Budget::Log { suppressed: 0 });
    }

    #[test]
    fn a_failing_listener_backs_off_and_resumes() {
        let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        socket
            .bind(&SocketAddr::from((Ipv4Addr::LOCALHOST, 0)).into())
            .unwrap();
        socket.set_nonblocking(true).unwrap();
        let mut acceptor = Acceptor::new(socket.into());
        let mut budget = LogBudget::new(1, Duration::from_secs(60));
        let before = Instant::now();
        acceptor.accept_all("t", &mut budget, |_, _| panic!("nothing to accept"));
        let until = acceptor.armed(Instant::now()).unwrap_err();
        assert!(until >= before + ACCEPT_RETRY_FIRST);
        assert!(until <= Instant::now() + ACCEPT_RETRY_FIRST);
        assert!(
            acceptor.armed(until).is_ok(),
            "polled again once it is over"
        );
        assert_eq!(
            budget.spend(Instant::now()),
            Budget::Suppress,
            "logged once"
        );
    }

    #[test]
    fn a_peer_that_never_reads_cannot_stretch_the_write_past_the_timeout() {
        let timeout = Duration::from_millis(300);
        let (ours, _theirs) = pair(timeout);
        let started = std::time::Instant::now();
        let e = write_all_within(&ours, &vec![7u8; 64 << 20], timeout).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert!(
            started.elapsed() < timeout * 3,
            "took {:?}",
            started.elapsed()
        );
        assert_eq!(
            ours.write_timeout().unwrap(),
            Some(timeout),
            "timeout restored"
        );
    }

    #[test]
    fn a_backoff_doubles_up_to_its_cap_and_a_success_starts_over() {
        let first = Duration::from_millis(50);
        let max = Duration::from_millis(300);
        let mut b = Backoff::new(first, max);
        let t0 = Instant::now();
        assert_eq!(b.waiting(t0), None, "no wait before a failure");
        let waits: Vec<_> = (0..5).map(|_| b.fail(t0).as_millis()).collect();
        assert_eq!(waits, [50, 100, 200, 300, 300]);
        let until = t0 + max;
        assert_eq!(b.waiting(t0), Some(until));
        assert_eq!(b.waiting(until - Duration::from_nanos(1)), Some(until));
        assert_eq!(b.waiting(until), None, "over at its end");
        b.succeed();
        assert_eq!(b.waiting(t0), None);
        assert_eq!(b.fail(t0), first);
    }

    proptest::proptest! {
        /// Whatever the failures and successes, a wait is never longer than the cap
        /// nor shorter than the first, and it grows while failures go on.
        #[test]
        fn a_backoff_stays_within_its_bounds(
            steps in proptest::collection::vec(proptest::bool::ANY, 1..64),
            first_ms in 1u64..1000,
            factor in 1u64..100,
        ) {
            let first = Duration::from_millis(first_ms);
            let max = first * factor as u32;
            let mut b = Backoff::new(first, max);
            let now = Instant::now();
            let mut last: Option<Duration> = None;
            for fail in steps {
                if fail {
                    let wait = b.fail(now);
                    proptest::prop_assert!(wait >= first && wait <= max);
                    if let Some(last) = last {
                        proptest::prop_assert!(wait >= last);
                        proptest::prop_assert!(wait == max || wait == last * 2);
                    }
                    proptest::prop_assert_eq!(b.waiting(now), Some(now + wait));
                    last = Some(wait);
                } else {
                    b.succeed();
                    proptest::prop_assert_eq!(b.waiting(now), None);
                    last = None;
                }
            }
        }
    }

    #[test]
    fn the_log_budget_counts_what_it_leaves_out() {
        let mut budget = LogBudget::new(3, Duration::from_secs(10));
        let t0 = Instant::now();
        for _ in 0..3 {
            assert_eq!(budget.spend(t0), Budget::Log { suppressed: 0 });
        }
        for _ in 0..1000 {
            assert_eq!(budget.spend(t0 + Duration::from_secs(9)), Budget::Suppress);
        }
        assert_eq!(
            budget.spend(t0 + Duration::from_secs(10)),
            Budget::Log { suppressed: 1000 }
        );
        assert_eq!(
            budget.spend(t0 + Duration::from_secs(10)),
            Budget::Log { suppressed: 0 }
        );
    }

    struct Ticks {
        closing: std::sync::Arc<std::sync::atomic::AtomicBool>,
        wakes: std::sync::Arc<std::sync::atomic::AtomicU32>,
    }

    impl Watch for Ticks {
        fn arm<'a>(
            &'a mut self,
            _fds: &mut Vec<(BorrowedFd<'a>, Interest)>,
        ) -> Option<Option<Duration>> {
            if self.closing.load(std::sync::atomic::Ordering::SeqCst) {
                return None;
            }
            Some(None)
        }

        fn on_ready(&mut self, ready: &[Ready]) {
            assert!(ready.is_empty());
            self.wakes.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    #[test]
    fn a_watcher_wakes_on_request_and_is_joined_once() {
        use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
        let closing = std::sync::Arc::new(AtomicBool::new(false));
        let wakes = std::sync::Arc::new(AtomicU32::new(0));
        let watcher = Watcher::spawn(
            "test-watch".into(),
            "test".into(),
            Ticks {
                closing: closing.clone(),
                wakes: wakes.clone(),
            },
        )
        .unwrap();
        watcher.wake();
        let deadline = Instant::now() + Duration::from_secs(5);
        while wakes.load(Ordering::SeqCst) == 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(wakes.load(Ordering::SeqCst) >= 1, "woken");
        // One wake-up is one round: the wake byte is drained, the thread does not
        // spin. (Watching for nothing to happen takes a while.)
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(wakes.load(Ordering::SeqCst), 1, "woken once per wake()");
        closing.store(true, Ordering::SeqCst);
        assert!(watcher.stop());
        assert!(!watcher.stop(), "joined once");
    }

    #[test]
    fn the_log_budget_logs_what_it_allows_and_counts_the_rest() {
        let thread = "budget-test";
        crate::test_log::on_thread(thread, || {
            let mut budget = LogBudget::new(2, Duration::from_secs(60));
            for i in 0..5 {
                budget.log(log::Level::Warn, "slot", &format!("peer {i} misbehaved"));
            }
        });
        assert_eq!(crate::test_log::count(thread, "slot: peer "), 2);
        assert_eq!(crate::test_log::count(thread, "slot: peer 1 misbehaved"), 1);
        assert_eq!(crate::test_log::count(thread, "suppressed"), 0);
    }
}
