//! The socket setup every reader shares, whatever protocol it speaks: its listening
//! socket, the options of a connected peer, and draining a listener's queue.

use std::io;
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
