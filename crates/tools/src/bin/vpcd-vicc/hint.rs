//! What to check when the vicc cannot reach vpcd: most often pcscd is not running (it
//! quit with `--auto-exit`, or systemd has not started it yet) or has no vpcd reader on
//! that port.

use std::io::{self, ErrorKind};

/// The message for a failed connection to vpcd at `host:port`.
pub(crate) fn connect_failed(host: &str, port: u16, e: &io::Error) -> String {
    let first = format!("cannot connect to vpcd at {host}:{port}: {e}");
    let hint = match e.kind() {
        ErrorKind::ConnectionRefused => format!(
            "nothing listens there. Is pcscd running, with a vpcd reader whose slot listens on \
             port {port} (DEVICENAME /dev/null:PORT: slot n listens on PORT+n)? A pcscd started \
             with --auto-exit quits 60 s after its last PC/SC client and closes the port."
        ),
        ErrorKind::TimedOut | ErrorKind::WouldBlock => format!(
            "no answer. Is {host} the right machine, and does a firewall let port {port} through? \
             A reader with listen=127.0.0.1 takes only viccs on its own machine."
        ),
        ErrorKind::NotFound => format!("{host} has no address: check the name."),
        ErrorKind::InvalidData => "the secure link's handshake failed: compare the key \
             fingerprints on both sides (vpcd-config tls show), and pair again if the reader \
             got a new key (docs/TLS.md)."
            .to_owned(),
        _ => "is pcscd running, with a vpcd reader on that port?".to_owned(),
    };
    format!("{first}\n  {hint}\n  On the vpcd machine, `vpcd-config --check` tells what is wrong.")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refused_names_the_port_and_the_diagnosis() {
        let e = io::Error::from(ErrorKind::ConnectionRefused);
        let m = connect_failed("localhost", 35963, &e);
        assert!(
            m.starts_with("cannot connect to vpcd at localhost:35963: "),
            "{m}"
        );
        assert!(
            m.contains("Is pcscd running") && m.contains("port 35963"),
            "{m}"
        );
        assert!(m.contains("vpcd-config --check"), "{m}");
    }
}
