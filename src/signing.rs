//! HMAC-SHA256 as Tether signs and checks: the webhook signature and the
//! step callback's token and record. Pure; comparisons in constant time.

use hmac::{Hmac, Mac};
use sha2::Sha256;

fn mac(key: &[u8], parts: &[&[u8]]) -> Option<Hmac<Sha256>> {
    // HMAC takes keys of any length: this does not fail.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).ok()?;
    for part in parts {
        mac.update(part);
    }
    Some(mac)
}

pub fn mac_hex(key: &[u8], parts: &[&[u8]]) -> String {
    mac(key, parts)
        .map(|m| hex::encode(m.finalize().into_bytes()))
        .unwrap_or_default()
}

/// Whether `hex_digest` is the HMAC of `parts` under `key`, compared in
/// constant time.
pub fn verify_hex(key: &[u8], parts: &[&[u8]], hex_digest: &str) -> bool {
    let Ok(digest) = hex::decode(hex_digest.trim()) else {
        return false;
    };
    mac(key, parts).is_some_and(|m| m.verify_slice(&digest).is_ok())
}
