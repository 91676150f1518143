//! The socket setup every reader shares, whatever protocol it speaks: its listening
//! socket, the options of a connected peer, and draining a listener's queue.

use std::io::{self, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use socket2::{Domain, SockRef, Socket, TcpKeepalive, Type};

/// A non-blocking listener on `at`.
pub fn listen(at: SocketAddr, v6only: bool) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(at), Type::STREAM, None)?;
    // A restarted pcscd must get its port back while old connections sit in TIME_WAIT.
    socket.set_reuse_address(true)?;
    if at.is_ipv6() {
        socket.set_only_v6(v6only)?;
    }
    socket.bind(&at.into())?;
    // A burst of connections beyond the backlog would leave clients half-open,
    // connected to nothing; each is accepted and refused or taken instead.
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

/// Accepts every pending connection of a non-blocking listener and hands it on.
pub fn accept_all(
    listener: &TcpListener,
    label: &str,
    mut take: impl FnMut(TcpStream, SocketAddr),
) {
    loop {
        match listener.accept() {
            Ok((stream, peer)) => take(stream, peer),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                // EMFILE and friends: do not spin on a listener we cannot serve.
                log::error!("{label}: accept failed: {e}");
                std::thread::sleep(Duration::from_millis(50));
                return;
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
}
