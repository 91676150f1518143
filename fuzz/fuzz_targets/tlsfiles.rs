//! The secure link's inputs (vpcd_protocol::tls): the `vpcds://` pairing URI (and its
//! `pair=` offer), the one-step pairing exchange's lines, the key
//! file (PEM), the trust list, a fingerprint, and a certificate's SubjectPublicKeyInfo,
//! on any input.
//!
//! Checks that nothing panics, and that whatever is accepted round-trips: written out
//! and parsed again, it is the same value.

use vpcd_protocol::tls::{
    pair_request, parse_pair_request, spki_of, Fingerprint, KeyFile, PairAnswer, Pairing,
    TrustList, VpcdsUri, MAX_PAIR_LINE,
};

fn run(data: &[u8]) {
    let _ = spki_of(data);
    let text = String::from_utf8_lossy(data);
    if let Ok(uri) = VpcdsUri::parse(&text) {
        assert!(uri.port != 0);
        assert_eq!(VpcdsUri::parse(&uri.to_string()), Ok(uri));
    }
    if let Ok(pair) = Pairing::parse(&text) {
        assert!(pair.port != 0);
        assert_eq!(Pairing::parse(&pair.to_string()), Ok(pair));
    }
    if let Ok(token) = parse_pair_request(&text) {
        let line = pair_request(&token);
        assert!(line.len() <= MAX_PAIR_LINE);
        assert!(parse_pair_request(line.trim_end()).unwrap().matches(&token));
    }
    if let Ok(answer) = PairAnswer::parse(&text) {
        let line = answer.to_line();
        assert!(line.len() <= MAX_PAIR_LINE);
        assert!(PairAnswer::parse(line.trim_end()).is_ok());
    }
    // Whatever a peer says, the answer to it is one bounded line.
    let refusal = PairAnswer::Refused(text.to_string()).to_line();
    assert!(refusal.len() <= MAX_PAIR_LINE && refusal.matches('\n').count() == 1);
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
