//! Key pairs and trust files of the secure link (docs/TLS.md), for the tools that
//! manage them: `vpcd-config tls` (the reader's) and `vpcd-vicc` (the card's). The
//! driver only reads these files; it never generates a key or writes a file.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use vpcd_protocol::link::cert_fingerprint;
use vpcd_protocol::tls::{Fingerprint, KeyFile, TrustList, MAX_FILE_LEN};

/// The driver's TLS directory: `VPCD_TLS_DIR`, else /etc/vpcd/tls (as the driver).
pub fn driver_dir() -> PathBuf {
    std::env::var_os("VPCD_TLS_DIR")
        .filter(|d| !d.is_empty())
        .map_or_else(|| PathBuf::from("/etc/vpcd/tls"), PathBuf::from)
}

/// The key directory of a reader: its key set's (`keys=NAME`), or the driver's own.
pub fn reader_dir(keys: Option<&str>) -> PathBuf {
    match keys {
        Some(name) => driver_dir().join(name),
        None => driver_dir(),
    }
}

/// A new ECDSA P-256 key pair in a self-signed certificate: P-256 because every TLS
/// 1.3 stack has it (Android's included); the certificate only carries the key.
pub fn generate() -> Result<KeyFile, String> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|e| format!("cannot generate a key: {e}"))?;
    let params = rcgen::CertificateParams::new(vec!["vpcd".to_owned()])
        .map_err(|e| format!("cannot make a certificate: {e}"))?;
    let cert = params
        .self_signed(&key)
        .map_err(|e| format!("cannot make a certificate: {e}"))?;
    Ok(KeyFile {
        key_pkcs8: key.serialize_der(),
        cert: cert.der().to_vec(),
    })
}

/// The fingerprint of a key file's public key.
pub fn fingerprint(key: &KeyFile) -> Result<Fingerprint, String> {
    cert_fingerprint(&key.cert)
}

/// Reads a small text file (key or trust list), bounded.
pub fn read_text(path: &Path) -> io::Result<String> {
    let text = fs::read(path)?;
    if text.len() > MAX_FILE_LEN {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("longer than {MAX_FILE_LEN} bytes"),
        ));
    }
    String::from_utf8(text).map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "not UTF-8"))
}

/// Reads and parses a key file.
pub fn load_key(path: &Path) -> Result<KeyFile, String> {
    let text = read_text(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    KeyFile::parse(&text).map_err(|e| format!("{} is malformed: {e}", path.display()))
}

/// Reads a trust list; a missing file is an empty list.
pub fn load_trust(path: &Path) -> Result<TrustList, String> {
    match read_text(path) {
        Ok(text) => {
            TrustList::parse(&text).map_err(|e| format!("{} is malformed: {e}", path.display()))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(TrustList::default()),
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

/// Writes `text` to `path` atomically (a temporary file renamed over it) with `mode`,
/// and group `gid` if given: a reader never sees half a file, and a private key is
/// never readable by others, not even for a moment.
pub fn write_file(path: &Path, text: &str, mode: u32, gid: Option<u32>) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no file name"))?;
    let tmp = dir.join(format!(
        ".{}.tmp{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let _ = fs::remove_file(&tmp);
    let result = (|| {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode & 0o600)
            .open(&tmp)?;
        if let Some(gid) = gid {
            std::os::unix::fs::fchown(&file, None, Some(gid))?;
        }
        file.set_permissions(fs::Permissions::from_mode(mode))?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// The key pair at `path`, generated (and written with mode 0600) if there is none;
/// true if it is new.
pub fn load_or_create(path: &Path) -> Result<(KeyFile, bool), String> {
    if path.exists() {
        return load_key(path).map(|k| (k, false));
    }
    let key = generate()?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    write_file(path, &key.to_pem(), 0o600, None)
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    Ok((key, true))
}

/// What is wrong with a private key file's permissions, if anything: readable or
/// writable by others.
pub fn key_permission_problem(path: &Path) -> io::Result<Option<String>> {
    let meta = fs::metadata(path)?;
    let mode = meta.mode() & 0o777;
    Ok((mode & 0o007 != 0).then(|| {
        format!(
            "{} is accessible to every user (mode {mode:03o}): the private key must be \
             readable by pcscd's user only (chmod 640, group pcscd; or 600)",
            path.display()
        )
    }))
}

/// The group id of `name` in /etc/group, if it exists.
pub fn group_id(name: &str) -> Option<u32> {
    let text = fs::read_to_string("/etc/group").ok()?;
    text.lines().find_map(|line| {
        let mut fields = line.split(':');
        (fields.next()? == name)
            .then(|| fields.nth(1)?.parse().ok())
            .flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_parse_and_differ() {
        let a = generate().unwrap();
        let b = generate().unwrap();
        assert_eq!(KeyFile::parse(&a.to_pem()).unwrap(), a);
        assert_ne!(fingerprint(&a).unwrap(), fingerprint(&b).unwrap());
        vpcd_protocol::link::Identity::from_key_file(&a).unwrap();
    }

    #[test]
    fn private_files_are_private_from_the_start() {
        let dir = std::env::temp_dir().join(format!("vpcd-keys-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("sub/key.pem");
        let (key, new) = load_or_create(&path).unwrap();
        assert!(new);
        assert_eq!(fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        assert_eq!(key_permission_problem(&path).unwrap(), None);
        let (again, new) = load_or_create(&path).unwrap();
        assert!(!new);
        assert_eq!(again, key);
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(key_permission_problem(&path)
            .unwrap()
            .unwrap()
            .contains("644"));
        fs::remove_dir_all(&dir).unwrap();
    }
}
