//! The readers pcscd lists.

use pcsc::Context;

/// The readers pcscd lists now (none if it cannot list them).
pub fn list_readers(ctx: &Context) -> Vec<String> {
    let mut buf = [0u8; 8192];
    match ctx.list_readers(&mut buf) {
        Ok(names) => names.map(|n| n.to_string_lossy().into_owned()).collect(),
        Err(_) => vec![],
    }
}
