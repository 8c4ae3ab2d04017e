//! Signed checkpoints of the audit chain's head: (trail, seq, hash, keyed_from, time), signed
//! with the audit key, written to files an operator can ship off the machine. A checkpoint
//! proves later that the trail still holds that event with that hash: deleting the tail, or
//! rewriting the chain and its head together, is caught by any checkpoint taken before.

use crate::audit::{AuditHead, AuditKey};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;
use time::OffsetDateTime;

/// The format tag of a checkpoint file.
pub const CHECKPOINT_FORMAT: &str = "quarterdeck-audit-checkpoint/1";
/// The one trail a server keeps: the control database's.
pub const CONTROL_TRAIL: &str = "control";

/// A checkpoint as written to (and read from) a file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Checkpoint {
    pub format: String,
    /// Which trail: `control`.
    pub trail: String,
    pub seq: i64,
    pub hash: String,
    /// From which seq the chain is keyed (moving it would let plain links pass).
    pub keyed_from: i64,
    #[serde(with = "time::serde::rfc3339")]
    pub taken_at: OffsetDateTime,
    /// HMAC-SHA256 with the audit key over every field above, in hex.
    pub signature: String,
}

/// A checkpoint whose signature was checked with this server's key: the only kind verified
/// against the trail.
#[derive(Clone, Debug)]
pub struct SignedCheckpoint(Checkpoint);

impl SignedCheckpoint {
    pub fn get(&self) -> &Checkpoint {
        &self.0
    }
}

/// Why a checkpoint file is not accepted.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CheckpointRefused {
    #[error("not an audit checkpoint file: {0}")]
    Unreadable(String),
    #[error(
        "the checkpoint's signature does not match: it was not made with this server's secret key, or it was altered since"
    )]
    BadSignature,
    #[error("the checkpoint is of the trail {0:?}, not of this server's control trail")]
    OtherTrail(String),
}

impl Checkpoint {
    /// Sign `head` as of `taken_at` (kept to the second, as the file shows it).
    pub fn sign(key: &AuditKey, head: &AuditHead, taken_at: OffsetDateTime) -> SignedCheckpoint {
        let taken_at = taken_at.replace_nanosecond(0).unwrap_or(taken_at);
        let mut cp = Checkpoint {
            format: CHECKPOINT_FORMAT.to_owned(),
            trail: CONTROL_TRAIL.to_owned(),
            seq: head.seq,
            hash: head.hash.clone(),
            keyed_from: head.keyed_from,
            taken_at,
            signature: String::new(),
        };
        cp.signature = cp.expected_signature(key);
        SignedCheckpoint(cp)
    }

    fn expected_signature(&self, key: &AuditKey) -> String {
        key.mac(&[
            b"checkpoint",
            self.format.as_bytes(),
            self.trail.as_bytes(),
            &self.seq.to_be_bytes(),
            self.hash.as_bytes(),
            &self.keyed_from.to_be_bytes(),
            &(self.taken_at.unix_timestamp_nanos()).to_be_bytes(),
        ])
    }

    /// Read a checkpoint file's text and check its signature with `key`.
    pub fn parse(text: &str, key: &AuditKey) -> Result<SignedCheckpoint, CheckpointRefused> {
        let cp: Checkpoint = serde_json::from_str(text).map_err(|e| CheckpointRefused::Unreadable(e.to_string()))?;
        if cp.format != CHECKPOINT_FORMAT {
            return Err(CheckpointRefused::Unreadable(format!(
                "its format is {:?}, not {CHECKPOINT_FORMAT:?}",
                cp.format
            )));
        }
        let expected = cp.expected_signature(key);
        if !bool::from(expected.as_bytes().ct_eq(cp.signature.as_bytes())) {
            return Err(CheckpointRefused::BadSignature);
        }
        if cp.trail != CONTROL_TRAIL {
            return Err(CheckpointRefused::OtherTrail(cp.trail));
        }
        Ok(SignedCheckpoint(cp))
    }
}

impl SignedCheckpoint {
    /// The file's text (pretty JSON, one trailing newline).
    pub fn to_json(&self) -> String {
        let mut s = serde_json::to_string_pretty(&self.0).unwrap_or_default();
        s.push('\n');
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sso::SecretKey;

    fn head() -> AuditHead {
        AuditHead {
            seq: 7,
            hash: "ab".repeat(32),
            keyed_from: 1,
            mac: None,
        }
    }

    #[test]
    fn a_checkpoint_round_trips_and_any_change_or_other_key_is_refused() {
        let key = AuditKey::from_secret(&SecretKey::from_bytes([1; 32]));
        let other = AuditKey::from_secret(&SecretKey::from_bytes([2; 32]));
        let cp = Checkpoint::sign(&key, &head(), time::macros::datetime!(2026-12-02 00:15:30.25 UTC));
        let text = cp.to_json();
        assert_eq!(Checkpoint::parse(&text, &key).unwrap().get(), cp.get());
        assert_eq!(
            Checkpoint::parse(&text, &other).unwrap_err(),
            CheckpointRefused::BadSignature
        );
        let forged = text.replace("\"seq\": 7", "\"seq\": 6");
        assert_eq!(
            Checkpoint::parse(&forged, &key).unwrap_err(),
            CheckpointRefused::BadSignature
        );
        assert!(matches!(
            Checkpoint::parse("{}", &key).unwrap_err(),
            CheckpointRefused::Unreadable(_)
        ));
    }
}
