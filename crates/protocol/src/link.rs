//! The secure link's TLS configurations (docs/TLS.md), shared by the driver and
//! vpcd-vicc: TLS 1.3 only, the ring provider, and mutual authentication by pinned
//! keys. A peer is trusted when the SHA-256 of its certificate's public key
//! (SubjectPublicKeyInfo) is pinned; its certificate is only the envelope of that key,
//! so names, dates, extensions and issuers are ignored. The handshake signatures are
//! still checked with the provider's algorithms, so only the key's holder passes.
//!
//! No session resumption and no tickets: each connection is one full handshake, and
//! after it the server sends nothing unasked (the vpcd protocol is strictly the
//! reader's command, the card's reply).

use std::fmt;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls13_signature, CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    AlertDescription, CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName,
    Error, OtherError, ServerConfig, SignatureScheme,
};

use crate::tls::{spki_of, Fingerprint, KeyFile, TrustList};

/// The name a client asks for; nobody checks it (the key is pinned), and SNI is off.
const SERVER_NAME: &str = "vpcd";

/// The crypto provider: ring. rustls marks it deprecated for lacking post-quantum key
/// exchange; the alternative, aws-lc-rs, needs cmake and a C toolchain to build.
#[allow(deprecated)]
fn ring() -> CryptoProvider {
    rustls::crypto::ring::default_provider()
}

pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(ring())
}

/// SHA-256 of a DER SubjectPublicKeyInfo.
pub fn spki_fingerprint(spki: &[u8]) -> Fingerprint {
    let provider = ring();
    let hash = provider
        .cipher_suites
        .iter()
        .filter_map(|s| s.tls13())
        .map(|s| s.common.hash_provider)
        .find(|h| h.output_len() == 32)
        .expect("the ring provider has a SHA-256 TLS 1.3 suite");
    let digest = hash.hash(spki);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    Fingerprint(out)
}

/// The fingerprint of the key a certificate carries.
pub fn cert_fingerprint(cert: &[u8]) -> Result<Fingerprint, String> {
    spki_of(cert).map(spki_fingerprint)
}

/// This side's key pair: the private key and the certificate carrying its public key.
pub struct Identity {
    cert: CertificateDer<'static>,
    key: PrivatePkcs8KeyDer<'static>,
    pub fingerprint: Fingerprint,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Identity({})", self.fingerprint)
    }
}

impl Identity {
    /// Checks that the provider takes the key; the key must match the certificate.
    pub fn from_key_file(file: &KeyFile) -> Result<Identity, String> {
        let fingerprint = cert_fingerprint(&file.cert)?;
        let key = PrivatePkcs8KeyDer::from(file.key_pkcs8.clone());
        let signing = provider()
            .key_provider
            .load_private_key(PrivateKeyDer::Pkcs8(key.clone_key()))
            .map_err(|e| format!("the private key is not usable: {e}"))?;
        if let Some(public) = signing.public_key() {
            if spki_fingerprint(public.as_ref()) != fingerprint {
                return Err("the private key does not belong to the certificate".into());
            }
        }
        Ok(Identity {
            cert: CertificateDer::from(file.cert.clone()),
            key,
            fingerprint,
        })
    }

    fn chain(&self) -> Vec<CertificateDer<'static>> {
        vec![self.cert.clone()]
    }

    fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(self.key.clone_key())
    }
}

/// A peer key that is not pinned; its fingerprint is what to pin, if it is the right
/// peer.
#[derive(Debug)]
pub struct Untrusted(pub Fingerprint);

impl fmt::Display for Untrusted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "key {} is not trusted", self.0)
    }
}

impl std::error::Error for Untrusted {}

/// Accepts exactly the pinned keys, on either side of the handshake; or, for one-step
/// pairing (`vpcd-config tls pair`, [`Pinned::any_key`]), any client key. Either way
/// the handshake signature is checked, so the peer holds the key it shows: a pairing
/// peer is then judged by the token it sends inside the session, and the key it gets
/// trusted for is the one it proved.
#[derive(Debug)]
pub struct Pinned {
    /// None: any key (pairing).
    trusted: Option<TrustList>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl Pinned {
    pub fn new(trusted: TrustList) -> Arc<Pinned> {
        Pinned::with(Some(trusted))
    }

    /// Any key its holder proves: the pairing side's verifier.
    pub fn any_key() -> Arc<Pinned> {
        Pinned::with(None)
    }

    fn with(trusted: Option<TrustList>) -> Arc<Pinned> {
        Arc::new(Pinned {
            trusted,
            algorithms: provider().signature_verification_algorithms,
        })
    }

    fn check(&self, end_entity: &CertificateDer<'_>) -> Result<(), Error> {
        // Even for any key, the certificate must hold one: that key is what gets pinned.
        let fp = cert_fingerprint(end_entity.as_ref()).map_err(|e| {
            Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(
                std::io::Error::new(std::io::ErrorKind::InvalidData, e),
            ))))
        })?;
        let trusted = match &self.trusted {
            None => true,
            Some(list) => list.contains(&fp),
        };
        if trusted {
            Ok(())
        } else {
            Err(Error::InvalidCertificate(CertificateError::Other(
                OtherError(Arc::new(Untrusted(fp))),
            )))
        }
    }

    fn tls13(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        self.check(end_entity)
            .map(|()| ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        Err(Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls12NotOffered,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

impl ClientCertVerifier for Pinned {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        self.check(end_entity)
            .map(|()| ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        Err(Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls12NotOffered,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// The pairing side (`vpcd-config tls pair`): the reader's key, TLS 1.3, a client key
/// required but any key taken ([`Pinned::any_key`]), no tickets.
pub fn pairing_server_config(me: &Identity) -> Result<Arc<ServerConfig>, String> {
    accepting(me, Pinned::any_key())
}

/// Fills `buf` from the operating system's random generator (ring's, via getrandom).
pub fn random(buf: &mut [u8]) -> Result<(), String> {
    provider()
        .secure_random
        .fill(buf)
        .map_err(|_| "the system's random generator failed".to_owned())
}

/// The accepting side (a listening reader, a reversed vicc): TLS 1.3, client key
/// required and pinned, no tickets.
pub fn server_config(me: &Identity, trusted: TrustList) -> Result<Arc<ServerConfig>, String> {
    accepting(me, Pinned::new(trusted))
}

fn accepting(me: &Identity, verifier: Arc<Pinned>) -> Result<Arc<ServerConfig>, String> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .with_client_cert_verifier(verifier)
        .with_single_cert(me.chain(), me.key())
        .map_err(|e| format!("the key pair is not usable: {e}"))?;
    config.send_tls13_tickets = 0;
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    Ok(Arc::new(config))
}

/// The connecting side (a vicc, a reversed reader): TLS 1.3, server key pinned, our
/// key offered, no resumption and no SNI.
pub fn client_config(me: &Identity, trusted: TrustList) -> Result<Arc<ClientConfig>, String> {
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Pinned::new(trusted))
        .with_client_auth_cert(me.chain(), me.key())
        .map_err(|e| format!("the key pair is not usable: {e}"))?;
    config.resumption = rustls::client::Resumption::disabled();
    config.enable_sni = false;
    Ok(Arc::new(config))
}

/// The server name a client connection is made with.
pub fn server_name() -> ServerName<'static> {
    ServerName::try_from(SERVER_NAME).expect("a valid DNS name")
}

/// A handshake failure in words for a log line: who refused what, and what to do.
pub fn describe(e: &Error) -> String {
    match e {
        Error::InvalidCertificate(CertificateError::Other(OtherError(inner))) => {
            match inner.downcast_ref::<Untrusted>() {
                Some(Untrusted(fp)) => format!(
                    "its key {fp} is not trusted (if it is the right peer: vpcd-config tls trust {fp})"
                ),
                None => format!("its certificate is unusable: {inner}"),
            }
        }
        Error::AlertReceived(
            alert @ (AlertDescription::BadCertificate
            | AlertDescription::UnknownCA
            | AlertDescription::CertificateUnknown
            | AlertDescription::AccessDenied
            | AlertDescription::DecryptError),
        ) => format!(
            "it refused our key ({alert:?} alert): it pinned another key (a different \
             reader, or someone in between), or it does not trust ours yet"
        ),
        Error::AlertReceived(AlertDescription::CertificateRequired) => {
            "it wants a key we did not send".into()
        }
        Error::AlertReceived(AlertDescription::ProtocolVersion) => {
            "it speaks no TLS 1.3 (ProtocolVersion alert)".into()
        }
        Error::InvalidMessage(_) | Error::InappropriateMessage { .. } => {
            format!("it does not speak TLS ({e}): a plain vicc on a tls=yes reader, or garbage")
        }
        Error::NoCertificatesPresented => "it sent no key (TLS client authentication)".into(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::tests_support::{CERT_B64, READER_KEY, VICC_KEY};
    use crate::tls::{base64_decode, TrustEntry};
    use rustls::{ClientConnection, Connection, ServerConnection};

    fn identity(pem: &str) -> Identity {
        Identity::from_key_file(&KeyFile::parse(pem).unwrap()).unwrap()
    }

    fn trusting(ids: &[&Identity]) -> TrustList {
        TrustList {
            entries: ids
                .iter()
                .map(|i| TrustEntry {
                    fingerprint: i.fingerprint,
                    name: String::new(),
                })
                .collect(),
        }
    }

    /// Runs a handshake in memory; the first error and the side that saw it.
    fn handshake(
        reader: &Identity,
        reader_trusts: TrustList,
        vicc: &Identity,
        vicc_trusts: TrustList,
    ) -> Result<(), (&'static str, Error)> {
        let server = server_config(reader, reader_trusts).unwrap();
        let client = client_config(vicc, vicc_trusts).unwrap();
        shake(server, client).map(|_| ())
    }

    /// A handshake in memory between two configurations; the server's view of the
    /// client's certificate.
    fn shake(
        server: Arc<ServerConfig>,
        client: Arc<ClientConfig>,
    ) -> Result<Vec<u8>, (&'static str, Error)> {
        let mut s = Connection::from(ServerConnection::new(server).unwrap());
        let mut c = Connection::from(ClientConnection::new(client, server_name()).unwrap());
        for _ in 0..10 {
            let mut buf = vec![];
            while c.wants_write() {
                c.write_tls(&mut buf).unwrap();
            }
            s.read_tls(&mut &buf[..]).unwrap();
            s.process_new_packets().map_err(|e| ("reader", e))?;
            let mut buf = vec![];
            while s.wants_write() {
                s.write_tls(&mut buf).unwrap();
            }
            c.read_tls(&mut &buf[..]).unwrap();
            c.process_new_packets().map_err(|e| ("vicc", e))?;
            if !s.is_handshaking() && !c.is_handshaking() {
                let certs = s.peer_certificates().unwrap_or_default();
                return Ok(certs.first().map(|c| c.to_vec()).unwrap_or_default());
            }
        }
        panic!("no end to the handshake");
    }

    #[test]
    fn pinned_keys_on_both_sides_shake_hands() {
        let (r, v) = (identity(READER_KEY), identity(VICC_KEY));
        handshake(&r, trusting(&[&v]), &v, trusting(&[&r])).unwrap();
        assert_eq!(
            v.fingerprint.to_string(),
            "dc6bcd30202930a08b6030aac7dedace020fcb2f9dcb1458d64472c9f84d75a9"
        );
    }

    #[test]
    fn pairing_takes_any_key_its_holder_proves() {
        let (r, v) = (identity(READER_KEY), identity(VICC_KEY));
        let server = pairing_server_config(&r).unwrap();
        let client = client_config(&v, trusting(&[&r])).unwrap();
        let cert = shake(server.clone(), client).unwrap();
        assert_eq!(cert_fingerprint(&cert).unwrap(), v.fingerprint);
        // The vicc still pins the reader: a pairing server with another key is refused.
        let impostor = pairing_server_config(&v).unwrap();
        let client = client_config(&v, trusting(&[&r])).unwrap();
        let (side, e) = shake(impostor, client).unwrap_err();
        assert_eq!(side, "vicc");
        assert!(describe(&e).contains(&v.fingerprint.to_string()), "{e}");
        // A client without a key is refused: the key is what gets paired.
        let anonymous = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Pinned::new(trusting(&[&r])))
            .with_no_client_auth();
        let (side, e) = shake(server, Arc::new(anonymous)).unwrap_err();
        assert_eq!((side, e), ("reader", Error::NoCertificatesPresented));
    }

    #[test]
    fn a_pairing_client_must_hold_the_key_it_shows() {
        // The vicc's certificate with the reader's private key: the signature over the
        // handshake does not match the key shown.
        // rustls refuses such a pair in a configuration, so a resolver hands it over.
        #[derive(Debug)]
        struct Thief(Arc<rustls::sign::CertifiedKey>);
        impl rustls::client::ResolvesClientCert for Thief {
            fn resolve(
                &self,
                _hints: &[&[u8]],
                _schemes: &[SignatureScheme],
            ) -> Option<Arc<rustls::sign::CertifiedKey>> {
                Some(Arc::clone(&self.0))
            }
            fn has_certs(&self) -> bool {
                true
            }
        }
        let (r, v) = (identity(READER_KEY), identity(VICC_KEY));
        let signing = provider().key_provider.load_private_key(r.key()).unwrap();
        let stolen = rustls::sign::CertifiedKey::new(v.chain(), signing);
        let client = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Pinned::new(trusting(&[&r])))
            .with_client_cert_resolver(Arc::new(Thief(Arc::new(stolen))));
        let server = pairing_server_config(&r).unwrap();
        let (side, e) = shake(server, Arc::new(client)).unwrap_err();
        assert_eq!(side, "reader", "{e}");
        assert_eq!(e, Error::InvalidCertificate(CertificateError::BadSignature));
    }

    #[test]
    fn random_bytes_differ() {
        let (mut a, mut b) = ([0u8; 16], [0u8; 16]);
        random(&mut a).unwrap();
        random(&mut b).unwrap();
        assert_ne!(a, b);
        assert_ne!(a, [0; 16]);
    }

    #[test]
    fn an_unknown_vicc_is_refused_by_the_reader() {
        let (r, v) = (identity(READER_KEY), identity(VICC_KEY));
        let (side, e) = handshake(&r, trusting(&[]), &v, trusting(&[&r])).unwrap_err();
        assert_eq!(side, "reader");
        assert!(describe(&e).contains(&v.fingerprint.to_string()), "{e}");
    }

    #[test]
    fn a_vicc_refuses_a_reader_it_did_not_pin() {
        // The vicc pinned its own key as the "reader": the real reader is a stranger.
        let (r, v) = (identity(READER_KEY), identity(VICC_KEY));
        let (side, e) = handshake(&r, trusting(&[&v]), &v, trusting(&[&v])).unwrap_err();
        assert_eq!(side, "vicc");
        assert!(describe(&e).contains(&r.fingerprint.to_string()), "{e}");
    }

    #[test]
    fn a_key_that_does_not_match_its_certificate_is_refused() {
        let mut mixed = KeyFile::parse(READER_KEY).unwrap();
        mixed.key_pkcs8 = KeyFile::parse(VICC_KEY).unwrap().key_pkcs8;
        let e = Identity::from_key_file(&mixed).unwrap_err();
        assert!(e.contains("does not belong"), "{e}");
        mixed.key_pkcs8 = vec![0x30, 0x00];
        assert!(Identity::from_key_file(&mixed).is_err());
    }

    #[test]
    fn the_fingerprint_of_the_test_certificate() {
        // `openssl x509 -pubkey | openssl pkey -pubin -outform DER | sha256sum`
        let cert = base64_decode(CERT_B64).unwrap();
        assert_eq!(
            cert_fingerprint(&cert).unwrap().to_string(),
            "69d393742bc39ff071c4968e4afcdb807bd06bd9157f57e554781a7ec07534de"
        );
    }

    #[test]
    fn debug_and_display_show_fingerprints_only() {
        let file = KeyFile::parse(READER_KEY).unwrap();
        let r = Identity::from_key_file(&file).unwrap();
        let text = format!("{r:?}");
        assert_eq!(text, format!("Identity({})", r.fingerprint));
        // Not one byte of the private key, in any common rendering.
        let key_hex: String = file.key_pkcs8.iter().map(|b| format!("{b:02x}")).collect();
        let key_b64 = crate::tls::base64_encode(&file.key_pkcs8);
        for secret in [&key_hex[40..72], &key_b64[40..72]] {
            assert!(!text.contains(secret), "{text}");
        }
        let fp = Fingerprint([0xAB; 32]);
        assert_eq!(
            Untrusted(fp).to_string(),
            format!("key {} is not trusted", "ab".repeat(32))
        );
    }

    #[test]
    fn untrusted_keys_are_described_with_their_fingerprint() {
        let fp = Fingerprint([7; 32]);
        let e =
            Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(Untrusted(fp)))));
        let text = describe(&e);
        assert!(
            text.contains(&format!("vpcd-config tls trust {fp}")),
            "{text}"
        );
        let text = describe(&Error::AlertReceived(AlertDescription::BadCertificate));
        assert!(text.contains("pinned another key"), "{text}");
    }
}
