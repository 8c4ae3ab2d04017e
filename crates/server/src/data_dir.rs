//! Files at rest: the data directory is the owner's alone (it holds password hashes, session
//! hashes, the audit trail and the secret key), and one `serve` at a time uses a SQLite data
//! directory.

use anyhow::{Context, Result, bail};
use std::fs::{File, TryLockError};
use std::path::Path;

/// Held for the life of the server: `{data_dir}/quarterdeck.lock`, locked (`flock`).
#[derive(Debug)]
pub struct DataDirLock {
    _file: File,
}

/// Create the data directory owner-only (0700, parents too), or warn when an existing one is
/// open to group or others.
pub fn prepare(dir: &Path, create: bool) -> Result<()> {
    match std::fs::metadata(dir) {
        Ok(meta) => {
            warn_if_open(dir, &meta);
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && create => {
            create_private_dir(dir).with_context(|| format!("creating the data directory {}", dir.display()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("reading the data directory {}", dir.display())),
    }
}

/// A directory only its owner may enter (0700), with its missing parents.
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)
}

#[cfg(unix)]
fn warn_if_open(dir: &Path, meta: &std::fs::Metadata) {
    use std::os::unix::fs::PermissionsExt;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        tracing::warn!(
            "the data directory {} is readable by other users (mode {mode:04o}); it holds password hashes, sessions, \
             the audit trail and the secret key: run `chmod 700 {}`",
            dir.display(),
            dir.display()
        );
    }
}

#[cfg(not(unix))]
fn warn_if_open(_dir: &Path, _meta: &std::fs::Metadata) {}

/// Take `{data_dir}/quarterdeck.lock`, or refuse: two servers on one SQLite data directory
/// would deliver the same email twice and race on the same files.
pub fn lock(dir: &Path) -> Result<DataDirLock> {
    let path = dir.join("quarterdeck.lock");
    let mut options = std::fs::OpenOptions::new();
    options.read(true).write(true).create(true).truncate(false);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let file = options
        .open(&path)
        .with_context(|| format!("opening the lock file {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(DataDirLock { _file: file }),
        Err(TryLockError::WouldBlock) => bail!(
            "another Quarterdeck is already serving from the data directory {} (it holds {}). \
             Two servers on one SQLite data directory would send the same email twice: stop the other one, \
             or use PostgreSQL (QUARTERDECK_DATABASE_URL) to run more than one",
            dir.display(),
            path.display()
        ),
        Err(TryLockError::Error(e)) => Err(e).with_context(|| format!("locking {}", path.display())),
    }
}
