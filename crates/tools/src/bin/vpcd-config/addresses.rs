//! This machine's addresses and which of them reach a reader: interfaces, link-local
//! and guest-bridge rules, and the `vpcd://HOST:PORT` URLs built from them.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// One address of one of this machine's interfaces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LocalAddr {
    pub(crate) ip: IpAddr,
    pub(crate) interface: String,
    /// The interface is running (IFF_RUNNING): it has a link.
    pub(crate) running: bool,
}

pub(crate) fn local_addresses() -> io::Result<Vec<LocalAddr>> {
    Ok(if_addrs::get_if_addrs()?
        .into_iter()
        .map(|i| LocalAddr {
            ip: i.ip(),
            running: i.is_oper_up(),
            interface: i.name,
        })
        .collect())
}

fn is_link_local(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => v6.segments()[0] & 0xffc0 == 0xfe80,
    }
}

/// Bridges a container or VM host makes for its guests: reachable from the guests
/// only, so listed after the other interfaces.
fn is_guest_bridge(interface: &str) -> bool {
    const PREFIXES: [&str; 12] = [
        "docker", "br-", "veth", "virbr", "lxcbr", "lxdbr", "cni", "flannel", "cali", "podman",
        "vboxnet", "vmnet",
    ];
    PREFIXES.iter().any(|p| interface.starts_with(p))
}

/// How far the addresses of a listening reader reach.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reach {
    /// Addresses of running interfaces.
    Network,
    /// Link-local addresses only: a vicc on the same link.
    LinkLocal,
    /// The interfaces with these addresses are not running.
    Down,
    /// Loopback: a vicc on this machine only.
    Loopback,
    /// The address the entry names (`listen=`).
    Configured,
    /// The `--host` of the command line.
    Given,
}

/// The addresses a vicc can use to reach a reader that listens on `listen`.
///
/// A reader listening on one address is reached there and nowhere else. One listening
/// on `0.0.0.0` is reached on this machine's IPv4 addresses, on `::` on its IPv6
/// addresses and (unless `v6only`) its IPv4 ones. Of those, the best class present is
/// listed: running interfaces; link-local addresses of running interfaces; interfaces
/// without a link; loopback. IPv4 comes before IPv6 and guest bridges come last.
pub(crate) fn reachable_addresses(
    listen: IpAddr,
    v6only: bool,
    local: &[LocalAddr],
) -> (Vec<IpAddr>, Reach) {
    if !listen.is_unspecified() {
        return (vec![listen], Reach::Configured);
    }
    let (v4, v6) = match listen {
        IpAddr::V4(_) => (true, false),
        IpAddr::V6(_) => (!v6only, true),
    };
    let class = |a: &LocalAddr| -> Reach {
        if a.ip.is_loopback() {
            Reach::Loopback
        } else if !a.running {
            Reach::Down
        } else if is_link_local(a.ip) {
            Reach::LinkLocal
        } else {
            Reach::Network
        }
    };
    let candidates: Vec<&LocalAddr> = local
        .iter()
        .filter(|a| if a.ip.is_ipv4() { v4 } else { v6 })
        .filter(|a| !a.ip.is_unspecified() && !a.ip.is_multicast())
        .collect();
    let order = [
        Reach::Network,
        Reach::LinkLocal,
        Reach::Down,
        Reach::Loopback,
    ];
    let Some(best) = order
        .into_iter()
        .find(|r| candidates.iter().any(|a| class(a) == *r))
    else {
        // Nothing enumerated (or the enumeration failed): this machine at least.
        let mut loopback = vec![];
        if v4 {
            loopback.push(IpAddr::V4(Ipv4Addr::LOCALHOST));
        }
        if v6 {
            loopback.push(IpAddr::V6(Ipv6Addr::LOCALHOST));
        }
        return (loopback, Reach::Loopback);
    };
    let mut chosen: Vec<&LocalAddr> = candidates
        .into_iter()
        .filter(|a| class(a) == best)
        .collect();
    chosen.sort_by_key(|a| (is_guest_bridge(&a.interface), a.ip.is_ipv6()));
    let mut ips: Vec<IpAddr> = vec![];
    for a in chosen {
        if !ips.contains(&a.ip) {
            ips.push(a.ip);
        }
    }
    (ips, best)
}

/// `host` as the host part of a URL or a `host:port`: IPv6 literals in brackets.
pub(crate) fn url_host(host: &str) -> String {
    if host.parse::<Ipv6Addr>().is_ok() {
        format!("[{host}]")
    } else {
        host.to_owned()
    }
}

/// The URL the Remote Smart Card Reader app takes: `vpcd://HOST:PORT`.
pub(crate) fn vpcd_url(host: &str, port: u16) -> String {
    format!("vpcd://{}:{port}", url_host(host))
}

pub(crate) fn unbracket(s: &str) -> &str {
    s.strip_prefix('[')
        .and_then(|s| s.strip_suffix(']'))
        .unwrap_or(s)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(vpcd_url("192.168.1.10", 35963), "vpcd://192.168.1.10:35963");
        assert_eq!(vpcd_url("2001:db8::1", 35963), "vpcd://[2001:db8::1]:35963");
        assert_eq!(vpcd_url("::ffff:10.0.0.1", 1), "vpcd://[::ffff:10.0.0.1]:1");
        assert_eq!(
            vpcd_url("pc.example.org", 35964),
            "vpcd://pc.example.org:35964"
        );
        assert_eq!(url_host("::1"), "[::1]");
    }

    fn addr(ip: &str, interface: &str, running: bool) -> LocalAddr {
        LocalAddr {
            ip: ip.parse().unwrap(),
            interface: interface.into(),
            running,
        }
    }

    fn ips(list: &[&str]) -> Vec<IpAddr> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    /// Loopback, a docker bridge, Wi-Fi with IPv4 and IPv6, an Ethernet port without a
    /// link. The tests of the whole tool (main.rs) run on it too.
    pub(crate) fn typical_host() -> Vec<LocalAddr> {
        vec![
            addr("127.0.0.1", "lo", true),
            addr("::1", "lo", true),
            addr("172.17.0.1", "docker0", true),
            addr("192.168.1.10", "wlan0", true),
            addr("2001:db8::10", "wlan0", true),
            addr("fd00::10", "wlan0", true),
            addr("fe80::1234", "wlan0", true),
            addr("10.9.9.9", "eth0", false),
        ]
    }

    #[test]
    fn address_selection() {
        let any4 = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
        let any6 = IpAddr::V6(Ipv6Addr::UNSPECIFIED);
        let host = typical_host();

        // 0.0.0.0: IPv4 only; running interfaces, guest bridges last.
        assert_eq!(
            reachable_addresses(any4, false, &host),
            (ips(&["192.168.1.10", "172.17.0.1"]), Reach::Network)
        );
        // ':: dual stack': IPv4 first, then IPv6, never link-local or loopback here.
        assert_eq!(
            reachable_addresses(any6, false, &host),
            (
                ips(&["192.168.1.10", "2001:db8::10", "fd00::10", "172.17.0.1"]),
                Reach::Network
            )
        );
        assert_eq!(
            reachable_addresses(any6, true, &host),
            (ips(&["2001:db8::10", "fd00::10"]), Reach::Network)
        );
        // A configured address is used as it is, whatever the interfaces.
        let one: IpAddr = "10.1.2.3".parse().unwrap();
        assert_eq!(
            reachable_addresses(one, false, &host),
            (vec![one], Reach::Configured)
        );
        let v6: IpAddr = "2001:db8::99".parse().unwrap();
        assert_eq!(
            reachable_addresses(v6, true, &[]),
            (vec![v6], Reach::Configured)
        );
    }

    #[test]
    fn address_fallbacks() {
        let any6 = IpAddr::V6(Ipv6Addr::UNSPECIFIED);
        let any4 = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
        // Link-local only when nothing better, and before loopback.
        let ll = vec![
            addr("127.0.0.1", "lo", true),
            addr("::1", "lo", true),
            addr("fe80::1", "eth0", true),
            addr("169.254.3.4", "eth0", true),
        ];
        assert_eq!(
            reachable_addresses(any6, false, &ll),
            (ips(&["169.254.3.4", "fe80::1"]), Reach::LinkLocal)
        );
        assert_eq!(
            reachable_addresses(any4, false, &ll),
            (ips(&["169.254.3.4"]), Reach::LinkLocal)
        );
        // Interfaces without a link come after link-local.
        let down = vec![
            addr("127.0.0.1", "lo", true),
            addr("192.168.5.5", "eth0", false),
        ];
        assert_eq!(
            reachable_addresses(any4, false, &down),
            (ips(&["192.168.5.5"]), Reach::Down)
        );
        // Loopback only when nothing else exists, deduplicated.
        let lo = vec![
            addr("127.0.0.1", "lo", true),
            addr("127.0.0.1", "lo", true),
            addr("::1", "lo", true),
        ];
        assert_eq!(
            reachable_addresses(any6, false, &lo),
            (ips(&["127.0.0.1", "::1"]), Reach::Loopback)
        );
        // IPv6 wanted but the machine has IPv4 only: its IPv6 loopback.
        assert_eq!(
            reachable_addresses(any6, true, &[addr("192.168.1.1", "eth0", true)]),
            (ips(&["::1"]), Reach::Loopback)
        );
        assert_eq!(
            reachable_addresses(any4, false, &[]),
            (ips(&["127.0.0.1"]), Reach::Loopback)
        );
    }

    #[test]
    fn the_real_interfaces_can_be_listed() {
        // Whatever this machine has, listing it works and loopback is among it.
        let local = local_addresses().expect("getifaddrs");
        let (list, _) = reachable_addresses(IpAddr::V4(Ipv4Addr::UNSPECIFIED), false, &local);
        assert!(!list.is_empty());
    }
}
