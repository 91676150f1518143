//! Free consecutive loopback ports, and who listens on them.
//!
//! A port is taken for an environment in two steps: a claim among environments (an
//! abstract Unix socket `vpcd-env-port-N` per port, bound for as long as the
//! environment lives and freed by the kernel when its process ends, so no file is
//! left behind and two environments never pick the same port), then a check that
//! nothing else holds it on 127.0.0.1. Another program may still take a port between
//! the check and the driver's bind; [`listening`] lets the caller see that and start
//! again on other ports.

use std::collections::HashMap;
use std::net::TcpListener;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr as UnixAddr, UnixListener};

use crate::{sys, Error};

/// Consecutive ports claimed for one environment, held until dropped.
#[derive(Debug)]
pub struct Claim {
    base: u16,
    _locks: Vec<UnixListener>,
}

impl Claim {
    /// The first port (slot 0).
    pub fn base(&self) -> u16 {
        self.base
    }
}

/// How many bases the kernel is asked for before giving up on its ephemeral range.
const EPHEMERAL_TRIES: usize = 256;

/// Claims `count` consecutive ports free on 127.0.0.1: from `range` (inclusive), or,
/// with `None`, starting at ports the kernel hands out.
pub fn claim(count: u8, range: Option<(u16, u16)>) -> Result<Claim, Error> {
    let n = u16::from(count.max(1));
    let exhausted = || Error::PortsExhausted { count, range };
    match range {
        Some((lo, hi)) => {
            if hi < lo || hi - lo + 1 < n {
                return Err(exhausted());
            }
            let bases = u32::from(hi - n + 1 - lo) + 1;
            let start = (sys::random_u64() % u64::from(bases)) as u32;
            (0..bases)
                .map(|i| lo + ((start + i) % bases) as u16)
                .find_map(|base| try_claim(base, n))
                .ok_or_else(exhausted)
        }
        None => (0..EPHEMERAL_TRIES)
            .find_map(|_| {
                let probe = TcpListener::bind(("127.0.0.1", 0)).ok()?;
                let base = probe.local_addr().ok()?.port();
                drop(probe);
                try_claim(base, n)
            })
            .ok_or_else(exhausted),
    }
}

fn try_claim(base: u16, n: u16) -> Option<Claim> {
    if u32::from(base) + u32::from(n) - 1 > 65535 || base == 0 {
        return None;
    }
    let mut locks = vec![];
    for port in base..base + n {
        let name = format!("vpcd-env-port-{port}");
        let addr = UnixAddr::from_abstract_name(name.as_bytes()).ok()?;
        locks.push(UnixListener::bind_addr(&addr).ok()?);
    }
    // Free now: bindable on loopback (as the driver binds: SO_REUSEADDR, which std
    // sets too, so TIME_WAIT leftovers do not count).
    let free = (base..base + n).all(|p| TcpListener::bind(("127.0.0.1", p)).is_ok());
    free.then_some(Claim {
        base,
        _locks: locks,
    })
}

/// Whether any environment of this machine (network namespace) other than the one
/// holding `own` is alive: their port claims, from /proc/net/unix.
pub fn other_environments(own: &[u16]) -> bool {
    let Ok(text) = std::fs::read_to_string("/proc/net/unix") else {
        return true; // unknown: assume there are
    };
    text.lines()
        .filter_map(|l| l.split_whitespace().last()?.strip_prefix("@vpcd-env-port-"))
        .filter_map(|p| p.parse::<u16>().ok())
        .any(|p| !own.contains(&p))
}

/// A listening socket: its inode and its owner's uid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listener {
    pub inode: u64,
    pub uid: u32,
}

/// For each of `ports` that something listens on (TCP, IPv4 or IPv6, any address):
/// the listening sockets, from /proc/net/tcp and tcp6. Entries without an inode
/// (closing) do not count.
pub fn listening(ports: &[u16]) -> HashMap<u16, Vec<Listener>> {
    let mut found: HashMap<u16, Vec<Listener>> = HashMap::new();
    let diag = [libc::AF_INET as u8, libc::AF_INET6 as u8]
        .iter()
        .map(|f| sys::diag_listeners(*f).map(|m| parse_diag(&m)))
        .collect::<Result<Vec<_>, _>>();
    let all: Vec<(u16, Listener)> = match diag {
        Ok(lists) => lists.into_iter().flatten().collect(),
        // No sock_diag (an old kernel, a filter): the /proc tables.
        Err(_) => ["/proc/net/tcp", "/proc/net/tcp6"]
            .iter()
            .filter_map(|t| std::fs::read_to_string(t).ok())
            .flat_map(|text| parse_table(&text))
            .collect(),
    };
    for (port, l) in all {
        if ports.contains(&port) {
            found.entry(port).or_default().push(l);
        }
    }
    found
}

/// (local port, socket) of each inet_diag_msg in a sock_diag reply.
pub fn parse_diag(reply: &[u8]) -> Vec<(u16, Listener)> {
    const SOCK_DIAG_BY_FAMILY: u16 = 20;
    let mut out = vec![];
    let mut at = 0;
    while at + 16 <= reply.len() {
        let len = u32::from_ne_bytes(reply[at..at + 4].try_into().unwrap()) as usize;
        let kind = u16::from_ne_bytes(reply[at + 4..at + 6].try_into().unwrap());
        if len < 16 || at + len > reply.len() {
            break;
        }
        // inet_diag_msg: family, state, timer, retrans, sockid (sport big-endian
        // first, 48 bytes), expires, rqueue, wqueue, uid, inode.
        let m = &reply[at + 16..at + len];
        if kind == SOCK_DIAG_BY_FAMILY && m.len() >= 72 {
            let port = u16::from_be_bytes([m[4], m[5]]);
            let uid = u32::from_ne_bytes(m[64..68].try_into().unwrap());
            let inode = u64::from(u32::from_ne_bytes(m[68..72].try_into().unwrap()));
            if inode != 0 {
                out.push((port, Listener { inode, uid }));
            }
        }
        at += (len + 3) & !3;
    }
    out
}

/// (local port, socket) of every socket in LISTEN state (`st` 0A) in a
/// /proc/net/tcp-style table.
pub fn parse_table(text: &str) -> Vec<(u16, Listener)> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            // sl local rem st tx:rx tr:when retrnsmt uid timeout inode ...
            if f.len() < 10 || f[3] != "0A" {
                return None;
            }
            let port = u16::from_str_radix(f[1].rsplit(':').next()?, 16).ok()?;
            let uid: u32 = f[7].parse().ok()?;
            let inode: u64 = f[9].parse().ok()?;
            (inode != 0).then_some((port, Listener { inode, uid }))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_listening_sockets_only() {
        let t = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
           0: 0100007F:8C7B 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4242 1 0000000000000000 100 0 0 10 0\n\
           1: 0100007F:8C7B 0100007F:D431 01 00000000:00000000 00:00000000 00000000     0        0 4243 1 0000000000000000 20 4 30 10 -1\n\
           2: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 0 1\n";
        assert_eq!(
            parse_table(t),
            vec![(
                35963,
                Listener {
                    inode: 4242,
                    uid: 0
                }
            )]
        );
        assert_eq!(parse_table(""), vec![]);
        assert_eq!(parse_table("header\ngarbage line\n"), vec![]);
    }

    #[test]
    fn claims_exclude_each_other_and_held_ports() {
        let a = claim(3, None).unwrap();
        let listener = TcpListener::bind(("127.0.0.1", 0)).unwrap();
        let held = listener.local_addr().unwrap().port();
        // A range that only holds a's ports and a held one: nothing left.
        let range = Some((a.base(), a.base() + 2));
        assert!(matches!(
            claim(1, range),
            Err(Error::PortsExhausted { count: 1, .. })
        ));
        assert!(claim(1, Some((held, held))).is_err());
        let b = claim(3, None).unwrap();
        assert!(b.base() + 2 < a.base() || a.base() + 2 < b.base());
        assert_eq!(listening(&[held])[&held].len(), 1);
        // The same as the /proc table says.
        let text = std::fs::read_to_string("/proc/net/tcp").unwrap();
        let from_proc: Vec<Listener> = parse_table(&text)
            .into_iter()
            .filter(|(p, _)| *p == held)
            .map(|(_, l)| l)
            .collect();
        assert_eq!(listening(&[held])[&held], from_proc);
        drop(a);
        assert!(claim(3, range).is_ok());
        // The claims show in /proc/net/unix: seen by one that owns none of them.
        assert!(other_environments(&[]));
        let msg = claim(2, Some((held, held))).unwrap_err().to_string();
        assert!(
            msg.starts_with("no 2 consecutive free TCP ports on 127.0.0.1 in "),
            "{msg}"
        );
        assert!(!msg.contains('\n'));
    }
}
