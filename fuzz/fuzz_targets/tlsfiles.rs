//! The secure link's inputs (vpcd_protocol::tls): the `vpcds://` pairing URI, the key
//! file (PEM), the trust list, a fingerprint, and a certificate's SubjectPublicKeyInfo,
//! on any input.
//!
//! Checks that nothing panics, and that whatever is accepted round-trips: written out
//! and parsed again, it is the same value.

use vpcd_protocol::tls::{spki_of, Fingerprint, KeyFile, TrustList, VpcdsUri};

fn run(data: &[u8]) {
    let _ = spki_of(data);
    let text = String::from_utf8_lossy(data);
    if let Ok(uri) = VpcdsUri::parse(&text) {
        assert!(uri.port != 0);
        assert_eq!(VpcdsUri::parse(&uri.to_string()), Ok(uri));
    }
    if let Ok(fp) = Fingerprint::parse(&text) {
        assert_eq!(Fingerprint::parse(&fp.to_string()), Ok(fp));
    }
    if let Ok(list) = TrustList::parse(&text) {
        assert_eq!(TrustList::parse(&list.to_text()), Ok(list));
    }
    if let Ok(key) = KeyFile::parse(&text) {
        assert!(spki_of(&key.cert).is_ok());
        assert_eq!(KeyFile::parse(&key.to_pem()), Ok(key));
    }
}

fn main() {
    afl::fuzz!(|data: &[u8]| run(data));
}
