//! `quarterdeck backup DIR` on SQLite: a consistent copy of every database file of the data
//! directory — `control.db`, each tenant's `tenants/<id>.db`, each region's usage journal
//! `usage/<region>.db` — and the secret key, with `manifest.json` (version, time, each file's
//! size and SHA-256, the tenant ids).
//!
//! Each file is copied with SQLite's `VACUUM INTO`: it reads the database inside one read
//! transaction, so the copy is that file at one moment even while the server writes (WAL
//! readers never block the writer, nor it them), and it writes a compact, self-contained
//! database (no `-wal` to carry along). The online backup API would do the same, but sqlx
//! reaches it only through the raw handle, which takes `unsafe` — forbidden in this
//! workspace. Files are consistent one by one, not with each other: `control.db` is copied
//! first, so a change made while the tenants are copied is in its tenant's copy with its
//! settled intent (kept an hour), and the restored server's start-up reconcile pass writes the
//! change's event and emails into the older control copy.
//!
//! PostgreSQL is refused: `pg_dump` does it better (docs/deploy.md, Backups).

use anyhow::{Context, Result, bail};
use serde::Serialize;
use sha2::{Digest, Sha256};
use sqlx::ConnectOptions;
use std::path::{Path, PathBuf};

#[derive(Serialize)]
pub struct Manifest {
    pub version: u32,
    pub quarterdeck: &'static str,
    /// RFC 3339.
    pub created_at: String,
    pub files: Vec<ManifestFile>,
    pub tenant_ids: Vec<String>,
}

#[derive(Serialize)]
pub struct ManifestFile {
    /// Relative to the backup directory (and to a data directory restored from it).
    pub path: String,
    pub bytes: u64,
    pub sha256: String,
}

/// Copy the data directory's databases (and `secret.key`, if the key lives there) into `out`,
/// which must not exist or be empty.
pub async fn backup(data_dir: &Path, out: &Path, clock: &dyn quarterdeck_domain::Clock) -> Result<Manifest> {
    if !data_dir.join("control.db").is_file() {
        bail!("no control.db in {} (QUARTERDECK_DATA_DIR)", data_dir.display());
    }
    if out.exists() && std::fs::read_dir(out)?.next().is_some() {
        bail!("{} is not empty: back up into a new directory", out.display());
    }
    for d in [out.to_owned(), out.join("tenants"), out.join("usage")] {
        std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
        private(&d, 0o700)?;
    }
    let mut files: Vec<PathBuf> = vec![PathBuf::from("control.db")];
    let mut tenant_ids = Vec::new();
    for sub in ["tenants", "usage"] {
        let Ok(entries) = std::fs::read_dir(data_dir.join(sub)) else {
            continue;
        };
        let mut names: Vec<String> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| n.ends_with(".db"))
            .collect();
        names.sort();
        for n in names {
            if sub == "tenants"
                && let Some(id) = n.strip_suffix(".db").and_then(|s| uuid::Uuid::parse_str(s).ok())
            {
                tenant_ids.push(id.to_string());
            }
            files.push(Path::new(sub).join(n));
        }
    }
    let mut manifest_files = Vec::new();
    for rel in &files {
        let (from, to) = (data_dir.join(rel), out.join(rel));
        copy_database(&from, &to)
            .await
            .with_context(|| format!("copying {}", from.display()))?;
        manifest_files.push(describe(out, rel)?);
    }
    let key = data_dir.join("secret.key");
    if key.is_file() {
        std::fs::copy(&key, out.join("secret.key")).context("copying secret.key")?;
        private(&out.join("secret.key"), 0o600)?;
        manifest_files.push(describe(out, Path::new("secret.key"))?);
    }
    let manifest = Manifest {
        version: 1,
        quarterdeck: env!("CARGO_PKG_VERSION"),
        created_at: clock
            .now()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default(),
        files: manifest_files,
        tenant_ids,
    };
    std::fs::write(out.join("manifest.json"), serde_json::to_vec_pretty(&manifest)?)?;
    Ok(manifest)
}

/// `VACUUM INTO` from a connection of its own (the server keeps running; nothing is written
/// to the source).
async fn copy_database(from: &Path, to: &Path) -> Result<()> {
    let mut conn = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(from)
        .create_if_missing(false)
        .busy_timeout(std::time::Duration::from_secs(30))
        .connect()
        .await?;
    let target = to.to_str().context("the backup path is not UTF-8")?;
    sqlx::query("VACUUM INTO $1").bind(target).execute(&mut conn).await?;
    private(to, 0o600)?;
    Ok(())
}

fn describe(out: &Path, rel: &Path) -> Result<ManifestFile> {
    let bytes = std::fs::read(out.join(rel))?;
    Ok(ManifestFile {
        path: rel.to_string_lossy().into_owned(),
        bytes: bytes.len() as u64,
        sha256: hex::encode(Sha256::digest(&bytes)),
    })
}

fn private(path: &Path, mode: u32) -> Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    }
    let _ = (path, mode);
    Ok(())
}
