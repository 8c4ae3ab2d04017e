//! Checkpoints of the audit chain on disk: written at start-up and every
//! `audit_checkpoint_minutes` into `{data_dir}/audit-checkpoints/`, and on demand by
//! `quarterdeck audit checkpoint`. Each is a small signed JSON file meant to be shipped off the
//! machine (a later `audit verify --checkpoint FILE` proves the trail still holds its event).

use crate::settings::Settings;
use anyhow::{Context, Result};
use quarterdeck_domain::Core;
use quarterdeck_domain::audit_checkpoint::SignedCheckpoint;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Where the periodic checkpoints go.
pub fn checkpoint_dir(settings: &Settings) -> PathBuf {
    settings.data_dir.join("audit-checkpoints")
}

/// Take a checkpoint (of an intact chain only) and write it to `out`, or to a new file in
/// `dir` named after its seq and time. Returns the file and the checkpoint.
pub async fn write_checkpoint(core: &Core, dir: &Path, out: Option<&Path>) -> Result<(PathBuf, SignedCheckpoint)> {
    let cp = match core.take_audit_checkpoint().await.map_err(|e| anyhow::anyhow!("{e}"))? {
        Ok(cp) => cp,
        Err(b) => anyhow::bail!(
            "audit chain BROKEN at event #{}: {}; no checkpoint taken",
            b.seq,
            b.reason
        ),
    };
    let path = match out {
        Some(p) => p.to_owned(),
        None => {
            crate::data_dir::create_private_dir(dir).with_context(|| format!("creating {}", dir.display()))?;
            let c = cp.get();
            dir.join(format!("checkpoint-{:012}-{}.json", c.seq, c.taken_at.unix_timestamp()))
        }
    };
    // Written beside, then renamed: a reader never sees half a checkpoint.
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, cp.to_json()).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
    Ok((path, cp))
}

/// The periodic writer: one checkpoint at start, then one whenever `every` has passed on the
/// core's clock and the trail has grown. The clock is looked at every second (tests move it).
pub async fn checkpoints(core: Arc<Core>, dir: PathBuf, every: time::Duration) {
    let mut last: Option<(time::OffsetDateTime, i64)> = None;
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let now = core.clock.now();
        if let Some((at, _)) = last
            && now - at < every
        {
            continue;
        }
        if let Some((_, seq)) = last
            && core.audit_head_seq().await.ok() == Some(seq)
        {
            last = Some((now, seq));
            continue;
        }
        match write_checkpoint(&core, &dir, None).await {
            Ok((path, cp)) => {
                tracing::info!(path = %path.display(), seq = cp.get().seq, "wrote an audit checkpoint");
                last = Some((now, cp.get().seq));
            }
            Err(e) => {
                tracing::error!(error = %e, "could not write an audit checkpoint");
                last = Some((now, -1));
            }
        }
    }
}
