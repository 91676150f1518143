//! The vpcd slot's decisions, apart from its I/O: what the watcher makes of a new
//! peer's bytes (the proof that it is a card), how many unproven peers it keeps and
//! until when, what a stirring idle connection means, how long each read of a reply
//! may block, and which failures cost the vicc its place. Time and I/O results are
//! passed in, so each decision is tested without sockets or waiting.

use std::io;
use std::time::{Duration, Instant};

use vpcd_protocol::pinpad::{read_probe_answer, Hello, ProbeAnswer, PROBE_ANSWER_MAX};

use super::SlotError;

/// What a new peer has sent so far, until it has proven it is a card (it answered
/// GET ATR with a valid ATR, after a HELLO if it sent one) or shown it is not.
#[derive(Debug, Clone)]
pub(crate) struct Proof {
    answer: [u8; PROBE_ANSWER_MAX],
    got: usize,
}

impl Default for Proof {
    fn default() -> Self {
        Proof {
            answer: [0; PROBE_ANSWER_MAX],
            got: 0,
        }
    }
}

impl Proof {
    /// Where the next read goes.
    pub fn space(&mut self) -> &mut [u8] {
        &mut self.answer[self.got..]
    }

    /// The outcome of a read into [`Proof::space`]: `None` while undecided, then the
    /// card's HELLO (if any), or why the peer is no card.
    pub fn received(&mut self, read: io::Result<usize>) -> Option<Result<Option<Hello>, String>> {
        let n = match read {
            Ok(0) => return Some(Err("closed the connection before sending its ATR".into())),
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) =>
            {
                return None
            }
            Err(e) => return Some(Err(e.to_string())),
        };
        self.got = (self.got + n).min(PROBE_ANSWER_MAX);
        match read_probe_answer(&self.answer[..self.got]) {
            ProbeAnswer::Incomplete => None,
            ProbeAnswer::Card { hello, .. } => Some(Ok(hello)),
            ProbeAnswer::Refused(e) => Some(Err(format!("answered GET ATR badly: {e}"))),
        }
    }
}

/// The unproven peers, oldest first, each with its deadline: at most `max` at once,
/// a newer one evicting the oldest, so a flood of silent connections cannot keep an
/// honest vicc out for long.
#[derive(Debug)]
pub(crate) struct Pending<T> {
    max: usize,
    items: Vec<(T, Instant)>,
}

impl<T> Pending<T> {
    pub fn new(max: usize) -> Pending<T> {
        Pending {
            max,
            items: Vec::new(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Adds `item`, due at `deadline`; returns the oldest one if it had to make room.
    pub fn admit(&mut self, item: T, deadline: Instant) -> Option<T> {
        let evicted = (self.items.len() >= self.max && !self.items.is_empty())
            .then(|| self.items.remove(0).0);
        self.items.push((item, deadline));
        evicted
    }

    pub fn get_mut(&mut self, i: usize) -> &mut T {
        &mut self.items[i].0
    }

    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.items.iter().map(|(item, _)| item)
    }

    pub fn remove(&mut self, i: usize) -> T {
        self.items.remove(i).0
    }

    /// Takes out, oldest first, every item whose deadline has come by `now`.
    pub fn expire(&mut self, now: Instant) -> Vec<T> {
        let (expired, live): (Vec<_>, Vec<_>) = std::mem::take(&mut self.items)
            .into_iter()
            .partition(|(_, deadline)| now >= *deadline);
        self.items = live;
        expired.into_iter().map(|(item, _)| item).collect()
    }

    /// The earliest deadline, if any.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.items.iter().map(|(_, deadline)| *deadline).min()
    }

    pub fn clear(&mut self) -> Vec<T> {
        std::mem::take(&mut self.items)
            .into_iter()
            .map(|(item, _)| item)
            .collect()
    }
}

/// What a look (a non-blocking peek) at the card's connection found while no
/// exchange ran: `None` if it is still a usable card, else why it is not.
pub(crate) fn idle_verdict(peek: io::Result<usize>) -> Option<String> {
    match peek {
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => None,
        Ok(0) => Some("vicc closed the connection".into()),
        Ok(_) => Some("protocol violation: vicc sent data nobody asked for".into()),
        Err(e) => Some(e.to_string()),
    }
}

/// Whether a failed exchange costs the vicc its place: only when the stream may be
/// out of step (a timeout or a broken connection). A refused command or a reply too
/// large for the caller leaves the stream in step, and the card stays.
pub(crate) fn drops_peer(e: &SlotError) -> bool {
    matches!(e, SlotError::Timeout | SlotError::Io(_))
}

/// The bound of each read of one reply: the whole reply must arrive before a
/// deadline, however slowly its bytes trickle in. The socket's own receive timeout is
/// the reader's full timeout between exchanges, so the first read of an exchange whose
/// bound is that same timeout needs no system call to set it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ReadBound {
    deadline: Instant,
    first: bool,
}

impl ReadBound {
    /// A reply that must be read `within` from `now`, on a socket whose receive timeout
    /// is `full`.
    pub fn new(now: Instant, full: Duration, within: Duration) -> ReadBound {
        ReadBound {
            deadline: now + within,
            first: within == full,
        }
    }

    /// The receive timeout to set before the next read at `now`: `Ok(None)` to leave
    /// the socket's as it is, `Err(TimedOut)` once the deadline has passed.
    pub fn next(&mut self, now: Instant) -> io::Result<Option<Duration>> {
        if std::mem::replace(&mut self.first, false) {
            return Ok(None);
        }
        let remaining = self.deadline.saturating_duration_since(now);
        if remaining.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        Ok(Some(remaining))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const ATR_ANSWER: [u8; 7] = [0, 5, 0x3B, 0x80, 0x80, 0x01, 0x01];

    fn feed(proof: &mut Proof, bytes: &[u8]) -> Option<Result<Option<Hello>, String>> {
        let space = proof.space();
        space[..bytes.len()].copy_from_slice(bytes);
        proof.received(Ok(bytes.len()))
    }

    #[test]
    fn pending_peers_are_counted_until_the_last_leaves() {
        let mut pending = Pending::new(2);
        assert!(pending.is_empty());
        let now = Instant::now();
        assert_eq!(pending.admit('a', now), None);
        assert!(!pending.is_empty());
        assert_eq!(pending.remove(0), 'a');
        assert!(pending.is_empty());
    }

    #[test]
    fn a_valid_atr_proves_a_card_however_it_is_split() {
        for split in 0..ATR_ANSWER.len() {
            let mut proof = Proof::default();
            let (a, b) = ATR_ANSWER.split_at(split);
            if !a.is_empty() {
                assert_eq!(feed(&mut proof, a), None, "split at {split}: undecided");
            }
            assert_eq!(feed(&mut proof, b), Some(Ok(None)), "split at {split}");
        }
    }

    #[test]
    fn a_hello_before_the_atr_is_kept() {
        let mut proof = Proof::default();
        // FF 'V' 'P' version 1, flags 1 (PIN entry).
        let mut bytes = vec![0, 5, 0xFF, b'V', b'P', 1, 1];
        bytes.extend_from_slice(&ATR_ANSWER);
        let hello = feed(&mut proof, &bytes).unwrap().unwrap().unwrap();
        assert_eq!(hello.version, 1);
        assert!(hello.pin_entry());
    }

    #[test]
    fn the_ways_a_peer_is_no_card() {
        let mut proof = Proof::default();
        assert_eq!(
            proof.received(Ok(0)),
            Some(Err("closed the connection before sending its ATR".into()))
        );
        let mut proof = Proof::default();
        let refused = proof.received(Err(io::ErrorKind::ConnectionReset.into()));
        assert!(matches!(refused, Some(Err(_))));
        let mut proof = Proof::default();
        // No ATR starts with 12 (TS is 3B or 3F).
        let bad = feed(&mut proof, &[0, 2, 0x12]).unwrap().unwrap_err();
        assert!(bad.starts_with("answered GET ATR badly: "), "{bad}");
    }

    #[test]
    fn no_data_yet_decides_nothing() {
        let mut proof = Proof::default();
        assert_eq!(proof.received(Err(io::ErrorKind::WouldBlock.into())), None);
        assert_eq!(proof.received(Err(io::ErrorKind::Interrupted.into())), None);
        assert_eq!(proof.space().len(), PROBE_ANSWER_MAX);
        assert_eq!(feed(&mut proof, &ATR_ANSWER[..3]), None);
        assert_eq!(proof.space().len(), PROBE_ANSWER_MAX - 3);
        assert_eq!(feed(&mut proof, &ATR_ANSWER[3..]), Some(Ok(None)));
    }

    #[test]
    fn pending_peers_evict_the_oldest_and_expire_on_time() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut p = Pending::new(2);
        assert!(p.is_empty());
        assert_eq!(p.next_deadline(), None);
        assert_eq!(p.admit('a', t0 + 3 * s), None);
        assert_eq!(p.admit('b', t0 + s), None);
        assert_eq!(p.iter().count(), 2);
        assert_eq!(p.next_deadline(), Some(t0 + s));
        assert_eq!(p.admit('c', t0 + 2 * s), Some('a'), "the oldest goes");
        assert_eq!(p.iter().copied().collect::<String>(), "bc");
        assert_eq!(p.expire(t0), Vec::<char>::new());
        assert_eq!(p.expire(t0 + s), vec!['b'], "due at its deadline");
        assert_eq!(p.next_deadline(), Some(t0 + 2 * s));
        *p.get_mut(0) = 'd';
        assert_eq!(p.remove(0), 'd');
        assert!(p.is_empty());
        p.admit('e', t0);
        assert_eq!(p.clear(), vec!['e']);
        assert!(p.is_empty());
    }

    proptest! {
        /// Whatever arrives and whenever time is looked at: never more than `max`,
        /// evictions oldest first, nothing expires early and nothing due survives.
        #[test]
        fn pending_peers_keep_their_bounds(
            max in 1usize..6,
            ops in proptest::collection::vec((any::<bool>(), 0u64..50), 1..80),
        ) {
            let t0 = Instant::now();
            let mut p = Pending::new(max);
            let mut admitted = 0u32;
            let mut gone = vec![];
            for (admit, at) in ops {
                let at = t0 + Duration::from_millis(at);
                if admit {
                    if let Some(old) = p.admit(admitted, at) {
                        gone.push(old);
                    }
                    admitted += 1;
                    prop_assert!(p.iter().count() <= max);
                } else {
                    for item in p.expire(at) {
                        gone.push(item);
                    }
                    prop_assert!(p.next_deadline().is_none_or(|d| d > at));
                }
                let order: Vec<u32> = p.iter().copied().collect();
                prop_assert!(order.windows(2).all(|w| w[0] < w[1]), "oldest first");
            }
            let mut all: Vec<u32> = gone.into_iter().chain(p.clear()).collect();
            all.sort_unstable();
            prop_assert_eq!(all, (0..admitted).collect::<Vec<_>>(), "none lost");
        }
    }

    #[test]
    fn an_idle_connection_that_stirs_is_no_card_any_more() {
        assert_eq!(idle_verdict(Err(io::ErrorKind::WouldBlock.into())), None);
        assert_eq!(
            idle_verdict(Ok(0)).as_deref(),
            Some("vicc closed the connection")
        );
        assert!(idle_verdict(Ok(1)).unwrap().contains("nobody asked for"));
        assert!(idle_verdict(Err(io::ErrorKind::ConnectionReset.into())).is_some());
    }

    #[test]
    fn only_an_out_of_step_stream_drops_the_vicc() {
        assert!(drops_peer(&SlotError::Timeout));
        assert!(drops_peer(&SlotError::Io(io::ErrorKind::BrokenPipe.into())));
        assert!(!drops_peer(&SlotError::NoCard));
        assert!(!drops_peer(&SlotError::Unsupported));
        assert!(!drops_peer(&SlotError::Protocol("x".into())));
        assert!(!drops_peer(&SlotError::ReplyTooLarge {
            len: 3,
            capacity: 2
        }));
    }

    #[test]
    fn a_read_bound_costs_no_call_first_then_counts_down() {
        let t0 = Instant::now();
        let full = Duration::from_secs(5);
        let mut b = ReadBound::new(t0, full, full);
        assert_eq!(b.next(t0).unwrap(), None, "the socket's own timeout fits");
        let later = t0 + Duration::from_secs(2);
        assert_eq!(b.next(later).unwrap(), Some(Duration::from_secs(3)));
        assert_eq!(
            b.next(t0 + full).unwrap_err().kind(),
            io::ErrorKind::TimedOut
        );
        // Another bound (a shorter ATR wait, a PIN entry's longer one) is set at once.
        let mut b = ReadBound::new(t0, full, Duration::from_secs(1));
        assert_eq!(b.next(t0).unwrap(), Some(Duration::from_secs(1)));
        let mut b = ReadBound::new(t0, full, Duration::from_secs(120));
        assert_eq!(b.next(t0).unwrap(), Some(Duration::from_secs(120)));
        assert_eq!(
            b.next(t0 + Duration::from_secs(120)).unwrap_err().kind(),
            io::ErrorKind::TimedOut
        );
    }
}
