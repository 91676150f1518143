//! # vpcd-protocol: what the vpcd driver and its peers say to each other
//!
//! Pure logic, shared by the driver (`libifdvpcd.so`) and the tools: no sockets, no
//! threads, no FFI, and no allocation sized by a peer beyond a frame's bound.
//!
//! ## Module map
//! - [`vpcd`]: the vpcd wire protocol (2-byte length prefix, control codes, APDUs):
//!   frame encoder and decoder, the reply reader, ATR and reply checks.
//! - [`pinpad`]: the PIN pad extension of the vpcd protocol (docs/PINPAD.md): the
//!   vicc's HELLO, the reader's first read of a new peer ([`pinpad::read_probe_answer`]),
//!   PIN requests and answers.
//! - [`part10`]: PC/SC part 10's PIN_VERIFY_STRUCTURE / PIN_MODIFY_STRUCTURE, parsed
//!   strictly, and the VERIFY / CHANGE REFERENCE DATA APDU built from them.
//! - [`vscard`]: QEMU's VSCard protocol (libcacard's `vscclient`, SPICE): messages,
//!   encoder and decoder.
//! - [`config`]: a `reader.conf.d` entry's DEVICENAME / CHANNELID and our options.
//! - [`tls`]: the pure parts of the secure link (docs/TLS.md): key fingerprints, the
//!   key file (PEM), the trust list, the `vpcds://` pairing URI (with its one-time
//!   `pair=` offer), the one-step pairing exchange's lines, a certificate's key.
//! - `link` (feature `rustls`): the secure link's TLS 1.3 configurations with pinned
//!   keys, shared by the driver and vpcd-vicc; the pairing server's (any proven key).
//! - [`hex()`]: bytes as `3B 8A 80 01`, for log lines.

#![forbid(unsafe_code)]

pub mod config;
#[cfg(feature = "rustls")]
pub mod link;
pub mod part10;
pub mod pinpad;
pub mod tls;
pub mod vpcd;
pub mod vscard;

/// Bytes as `3B 8A 80 01`.
pub fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 3);
    for (i, b) in bytes.iter().enumerate() {
        if i > 0 {
            s.push(' ');
        }
        s.push_str(&format!("{b:02X}"));
    }
    s
}

#[cfg(test)]
mod tests {
    #[test]
    fn hex_spaces_bytes() {
        assert_eq!(super::hex(&[0x3B, 0x8A, 0x00]), "3B 8A 00");
        assert_eq!(super::hex(&[]), "");
    }
}
