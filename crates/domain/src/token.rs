//! Secret tokens (session ids, setup links): random, shown once, stored only as a hash.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Where randomness comes from; injected so tests can be deterministic where they need to.
pub trait Random: Send + Sync + std::fmt::Debug {
    fn fill(&self, buf: &mut [u8]);
}

/// The operating system's CSPRNG.
#[derive(Debug, Default)]
pub struct OsRandom;

impl Random for OsRandom {
    fn fill(&self, buf: &mut [u8]) {
        // getrandom only fails if the OS has no entropy source at all; nothing safe can follow.
        if let Err(e) = getrandom::fill(buf) {
            panic!("the operating system's random source failed: {e}");
        }
    }
}

/// A fresh secret: 256 random bits, URL-safe base64 (43 characters), with a prefix.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    pub fn generate(rng: &dyn Random, prefix: &str) -> Self {
        use base64::Engine;
        let mut bytes = [0u8; 32];
        rng.fill(&mut bytes);
        Self(format!(
            "{prefix}{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
        ))
    }
    /// The secret itself, to hand to the user once.
    pub fn expose(&self) -> &str {
        &self.0
    }
    pub fn hash(&self) -> TokenHash {
        TokenHash::of(&self.0)
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// SHA-256 of a token, hex: what the database keeps.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TokenHash(pub String);

impl TokenHash {
    pub fn of(token: &str) -> Self {
        Self(hex::encode(Sha256::digest(token.as_bytes())))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Constant-time string comparison (for CSRF tokens and the like).
pub fn constant_time_eq(a: &str, b: &str) -> bool {
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}
