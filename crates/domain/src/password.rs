//! Passwords: the policy, and Argon2id hashing bounded to the machine.
//!
//! Hashing uses the OWASP parameters (m = 19 MiB, t = 2, p = 1). At most one hash runs per core;
//! each running hash reuses one of a fixed set of preallocated 19 MiB buffers, so a flood of
//! sign-ins queues instead of eating memory. A request that waits too long for a slot gets
//! [`Error::Busy`] (503).

use crate::error::{Error, Result};
use crate::token::Random;
use argon2::{Algorithm, Argon2, Block, Params, Version};
use base64::Engine;
use base64::engine::general_purpose::STANDARD_NO_PAD as B64;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use subtle::ConstantTimeEq;
use tokio::sync::Semaphore;

pub const M_COST_KIB: u32 = 19 * 1024;
pub const T_COST: u32 = 2;
pub const P_COST: u32 = 1;
const OUTPUT_LEN: usize = 32;
const SALT_LEN: usize = 16;

/// Longest password accepted. Longer input is refused before any hashing, never truncated.
pub const MAX_PASSWORD_BYTES: usize = 1024;

/// A password that meets the policy (length only: composition rules do more harm than good).
pub struct NewPassword(String);

impl NewPassword {
    pub fn parse(input: &str, min_chars: usize, field: &str) -> Result<Self> {
        let n = input.chars().count();
        if n < min_chars {
            return Err(Error::field(
                field,
                "password_too_short",
                format!("Use at least {min_chars} characters."),
            ));
        }
        if input.len() > MAX_PASSWORD_BYTES {
            return Err(Error::field(
                field,
                "password_too_long",
                format!("Use at most {MAX_PASSWORD_BYTES} bytes."),
            ));
        }
        Ok(Self(input.to_owned()))
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for NewPassword {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NewPassword(***)")
    }
}

/// Bounded Argon2id hasher.
#[derive(Debug, Clone)]
pub struct PasswordHasher {
    slots: Arc<Semaphore>,
    buffers: Arc<Mutex<Vec<Vec<Block>>>>,
    max_wait: Duration,
    /// A real hash of a random password, verified against when the user is unknown, so that
    /// an unknown email costs the same time as a wrong password.
    dummy_hash: Arc<String>,
    /// Hashes waiting for a slot (`/metrics`).
    waiting: Arc<std::sync::atomic::AtomicUsize>,
    parallelism: usize,
}

fn argon2() -> Result<Argon2<'static>> {
    let params = Params::new(M_COST_KIB, T_COST, P_COST, Some(OUTPUT_LEN)).map_err(Error::internal)?;
    Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
}

impl PasswordHasher {
    /// `parallelism` hashes may run at once (use the number of cores).
    pub fn new(parallelism: usize, max_wait: Duration, rng: &dyn Random) -> Result<Self> {
        let parallelism = parallelism.max(1);
        // Buffers are made on first use (at most one per slot, then reused), so an idle
        // server holds none of their 19 MiB each.
        let buffers = Vec::with_capacity(parallelism);
        let mut salt = [0u8; SALT_LEN];
        rng.fill(&mut salt);
        let mut pw = [0u8; 24];
        rng.fill(&mut pw);
        let mut buf = vec![Block::new(); M_COST_KIB as usize];
        let dummy = hash_with(&B64.encode(pw), &salt, &mut buf)?;
        Ok(Self {
            slots: Arc::new(Semaphore::new(parallelism)),
            buffers: Arc::new(Mutex::new(buffers)),
            max_wait,
            dummy_hash: Arc::new(dummy),
            waiting: Arc::default(),
            parallelism,
        })
    }

    /// Hashes waiting for a slot, and hashes being computed.
    pub fn load(&self) -> (usize, usize) {
        (
            self.waiting.load(std::sync::atomic::Ordering::Relaxed),
            self.parallelism.saturating_sub(self.slots.available_permits()),
        )
    }

    /// Hash a new password into a PHC string.
    pub async fn hash(&self, password: &NewPassword, rng: &dyn Random) -> Result<String> {
        let mut salt = [0u8; SALT_LEN];
        rng.fill(&mut salt);
        let pw = password.expose().to_owned();
        self.with_buffer(move |buf| hash_with(&pw, &salt, buf)).await
    }

    /// Check `password` against a stored PHC string; with `None` (unknown user) the dummy
    /// hash is checked instead and the answer is always false.
    pub async fn verify(&self, password: &str, stored: Option<&str>) -> Result<bool> {
        if password.len() > MAX_PASSWORD_BYTES {
            return Ok(false);
        }
        let known = stored.is_some();
        let phc = stored.unwrap_or(&self.dummy_hash).to_owned();
        let pw = password.to_owned();
        let ok = self
            .with_buffer(move |buf| {
                let (salt, expected) = parse_phc(&phc)?;
                let mut out = [0u8; OUTPUT_LEN];
                argon2()?
                    .hash_password_into_with_memory(pw.as_bytes(), &salt, &mut out, buf.as_mut_slice())
                    .map_err(Error::internal)?;
                Ok(bool::from(out.ct_eq(expected.as_slice())))
            })
            .await?;
        Ok(ok && known)
    }

    async fn with_buffer<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Vec<Block>) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let permit = {
            let _waiting = Waiting::new(&self.waiting);
            tokio::time::timeout(self.max_wait, self.slots.clone().acquire_owned())
                .await
                .map_err(|_| Error::Busy)?
                .map_err(|_| Error::Busy)?
        };
        let buffers = self.buffers.clone();
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let mut buf = buffers
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .pop()
                .unwrap_or_else(|| vec![Block::new(); M_COST_KIB as usize]);
            let r = f(&mut buf);
            buffers.lock().unwrap_or_else(|p| p.into_inner()).push(buf);
            r
        })
        .await
        .map_err(Error::internal)?
    }
}

/// Counts a waiter for as long as it waits (dropped when the wait ends, however it ends).
struct Waiting<'a>(&'a std::sync::atomic::AtomicUsize);

impl<'a> Waiting<'a> {
    fn new(n: &'a std::sync::atomic::AtomicUsize) -> Self {
        n.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Self(n)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

fn hash_with(password: &str, salt: &[u8], buf: &mut [Block]) -> Result<String> {
    let mut out = [0u8; OUTPUT_LEN];
    argon2()?
        .hash_password_into_with_memory(password.as_bytes(), salt, &mut out, buf)
        .map_err(Error::internal)?;
    Ok(format!(
        "$argon2id$v=19$m={M_COST_KIB},t={T_COST},p={P_COST}${}${}",
        B64.encode(salt),
        B64.encode(out)
    ))
}

/// Salt and hash out of our own PHC strings (parameters must be the current ones).
fn parse_phc(phc: &str) -> Result<(Vec<u8>, Vec<u8>)> {
    let expected_prefix = format!("$argon2id$v=19$m={M_COST_KIB},t={T_COST},p={P_COST}$");
    let rest = phc
        .strip_prefix(&expected_prefix)
        .ok_or_else(|| Error::internal("stored password hash has unexpected parameters"))?;
    let (salt, hash) = rest
        .split_once('$')
        .ok_or_else(|| Error::internal("malformed stored password hash"))?;
    Ok((
        B64.decode(salt).map_err(Error::internal)?,
        B64.decode(hash).map_err(Error::internal)?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::OsRandom;

    #[tokio::test]
    async fn a_hash_verifies_its_password_only() {
        let h = PasswordHasher::new(1, Duration::from_secs(5), &OsRandom).unwrap();
        let pw = NewPassword::parse("correct horse battery", 12, "password").unwrap();
        let phc = h.hash(&pw, &OsRandom).await.unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"));
        assert!(h.verify("correct horse battery", Some(&phc)).await.unwrap());
        assert!(!h.verify("wrong horse battery", Some(&phc)).await.unwrap());
        assert!(!h.verify("correct horse battery", None).await.unwrap());
    }

    #[test]
    fn the_policy_refuses_short_and_huge_passwords_without_truncating() {
        assert!(NewPassword::parse("short", 12, "password").is_err());
        assert!(NewPassword::parse(&"x".repeat(2000), 12, "password").is_err());
        assert!(NewPassword::parse(&"é".repeat(12), 12, "password").is_ok());
    }
}

#[cfg(test)]
mod flood {
    use super::*;
    use crate::token::OsRandom;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_flood_of_verifications_queues_on_fixed_buffers_and_sheds_what_waits_too_long() {
        let h = PasswordHasher::new(1, Duration::from_millis(50), &OsRandom).unwrap();
        let mut tasks = Vec::new();
        for _ in 0..32 {
            let h = h.clone();
            tasks.push(tokio::spawn(async move { h.verify("guess", None).await }));
        }
        let mut busy = 0;
        for t in tasks {
            match t.await.unwrap() {
                Ok(ok) => assert!(!ok),
                Err(Error::Busy) => busy += 1,
                Err(e) => panic!("{e}"),
            }
        }
        assert!(busy > 0, "with one slot and a 50 ms wait, most of 32 hashes are shed");
        assert!(
            h.buffers.lock().unwrap().len() <= 1,
            "no buffer beyond the one slot was allocated"
        );
    }
}
