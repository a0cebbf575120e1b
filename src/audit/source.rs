//! Where a request came from, without keeping the address: an IP address is personal data, so
//! the audit trail records a keyed hash of it. The same address gives the same value under
//! the same key (refusals from one source can be counted and correlated), and the address
//! cannot be recovered without the key, which lives in the database's `meta` table.

use std::net::IpAddr;

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// Keyed hashes of source addresses.
#[derive(Clone)]
pub struct SourceHasher {
    key: Vec<u8>,
}

impl std::fmt::Debug for SourceHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SourceHasher(..)")
    }
}

impl SourceHasher {
    /// A hasher with `key` (at least 16 bytes of secret).
    pub fn new(key: &[u8]) -> SourceHasher {
        SourceHasher { key: key.to_vec() }
    }

    /// `src-` and 12 hex digits of HMAC-SHA256(key, address).
    pub fn source(&self, ip: IpAddr) -> String {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.key)
            .expect("HMAC takes any key length");
        mac.update(ip.to_string().as_bytes());
        let digest = mac.finalize().into_bytes();
        format!("src-{}", hex::encode(&digest[..6]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_address_same_source_and_no_address_in_it() {
        let h = SourceHasher::new(b"0123456789abcdef0123456789abcdef");
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "127.0.0.2".parse().unwrap();
        assert_eq!(h.source(a), h.source(a));
        assert_ne!(h.source(a), h.source(b));
        assert!(!h.source(a).contains("127"));
        let other = SourceHasher::new(b"another key, another key, another");
        assert_ne!(h.source(a), other.source(a));
    }
}
