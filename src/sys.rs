//! The operating-system boundary: the libc calls std and socket2 do not wrap (`poll`,
//! and pinning the library in memory). Together with `ifd/` this is the only place
//! with `unsafe`.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::time::Duration;

/// Readiness a caller waits for or got.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Ready {
    pub readable: bool,
    pub writable: bool,
    /// The peer closed its side, or the socket failed.
    pub hangup: bool,
}

/// What to watch on one descriptor.
#[derive(Debug, Clone, Copy)]
pub enum Interest {
    /// New data (or a pending connection on a listener).
    Read,
    /// A non-blocking connect finishing.
    Write,
    /// Only the peer going away, not data arriving (Linux: POLLRDHUP); elsewhere any
    /// readability, which the caller then checks with a peek.
    Hangup,
}

impl Interest {
    fn events(self) -> libc::c_short {
        match self {
            Interest::Read => libc::POLLIN,
            Interest::Write => libc::POLLOUT,
            #[cfg(any(target_os = "linux", target_os = "android"))]
            Interest::Hangup => libc::POLLRDHUP,
            #[cfg(not(any(target_os = "linux", target_os = "android")))]
            Interest::Hangup => libc::POLLIN,
        }
    }
}

/// Waits until one of `fds` is ready or `timeout` passes (`None`: forever). Returns
/// the readiness of each descriptor, in order. EINTR counts as a timeout of zero.
pub fn poll(
    fds: &[(BorrowedFd<'_>, Interest)],
    timeout: Option<Duration>,
) -> io::Result<Vec<Ready>> {
    let mut pollfds: Vec<libc::pollfd> = fds
        .iter()
        .map(|(fd, interest)| libc::pollfd {
            fd: fd.as_raw_fd(),
            events: interest.events(),
            revents: 0,
        })
        .collect();
    let timeout_ms = match timeout {
        None => -1,
        // Round up so a short remaining wait does not become a busy loop of zero waits.
        Some(t) => {
            libc::c_int::try_from(t.as_nanos().div_ceil(1_000_000)).unwrap_or(libc::c_int::MAX)
        }
    };
    // SAFETY: `pollfds` is a valid, exclusively borrowed array of `pollfds.len()`
    // pollfd structs for the whole call; the descriptors are borrowed from live owners.
    let rc = unsafe {
        libc::poll(
            pollfds.as_mut_ptr(),
            pollfds.len() as libc::nfds_t,
            timeout_ms,
        )
    };
    if rc < 0 {
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
    Ok(pollfds
        .iter()
        .map(|p| Ready {
            readable: p.revents & libc::POLLIN != 0,
            writable: p.revents & libc::POLLOUT != 0,
            hangup: p.revents & (libc::POLLHUP | libc::POLLERR | libc::POLLNVAL | rdhup()) != 0,
        })
        .collect())
}

/// Keeps this library mapped until the process ends, even once pcscd unloads it.
///
/// A thread that cannot be joined (one inside getaddrinfo, which has no way to be
/// interrupted) must not return into unmapped code after pcscd's dlclose. Marking the
/// library RTLD_NODELETE costs nothing but its pages staying mapped. Returns whether
/// the library is pinned now (or was already).
pub fn pin_library() -> bool {
    static PINNED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *PINNED.get_or_init(|| {
        // SAFETY: an all-zero Dl_info (null pointers) is a valid value to pass for
        // dladdr to fill in.
        let mut info: libc::Dl_info = unsafe { std::mem::zeroed() };
        // SAFETY: the address is one of this library's functions; `info` is valid for
        // writes.
        let found = unsafe { libc::dladdr(pin_library as *const libc::c_void, &mut info) };
        if found == 0 || info.dli_fname.is_null() {
            return false;
        }
        // SAFETY: dli_fname is the NUL-terminated path the dynamic linker holds for
        // this loaded object. RTLD_NOLOAD only looks it up (it is loaded: we run in it)
        // and adds a reference that is never dropped, with RTLD_NODELETE on top.
        let handle = unsafe {
            libc::dlopen(
                info.dli_fname,
                libc::RTLD_NOW | libc::RTLD_NOLOAD | libc::RTLD_NODELETE,
            )
        };
        !handle.is_null()
    })
}

#[cfg(any(target_os = "linux", target_os = "android"))]
fn rdhup() -> libc::c_short {
    libc::POLLRDHUP
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn rdhup() -> libc::c_short {
    0
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixStream;

    #[test]
    fn poll_sees_data_and_hangup() {
        let (mut a, b) = UnixStream::pair().unwrap();
        let idle = poll(
            &[(b.as_fd(), Interest::Read)],
            Some(Duration::from_millis(1)),
        )
        .unwrap();
        assert_eq!(idle[0], Ready::default());
        a.write_all(b"x").unwrap();
        let ready = poll(&[(b.as_fd(), Interest::Read)], None).unwrap();
        assert!(ready[0].readable);
        drop(a);
        let ready = poll(&[(b.as_fd(), Interest::Hangup)], None).unwrap();
        assert!(ready[0].hangup || ready[0].readable);
    }
}
