//! Locating data folders (golden fixtures, tokenizer models) from an environment variable with a
//! default relative to the workspace root, so the same tests run against any fixture set.

use std::path::PathBuf;

use crate::error::{Error, Result};

/// The workspace root this crate was built in (parent of the crate folder).
pub fn workspace_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map(PathBuf::from).unwrap_or(manifest)
}

/// The folder named by environment variable `var`, else `default` (e.g. `../shared/fixtures`).
/// Relative paths are taken from the workspace root. A missing folder is an error — tests that use
/// this FAIL instead of silently skipping.
pub fn data_dir(var: &str, default: &str) -> Result<PathBuf> {
    let raw = std::env::var(var).unwrap_or_else(|_| default.to_string());
    let path = PathBuf::from(&raw);
    let path = if path.is_absolute() {
        path
    } else {
        workspace_root().join(path)
    };
    if path.is_dir() {
        Ok(path)
    } else {
        Err(Error::io(
            &path,
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("data folder not found (set {var} to override the default {default})"),
            ),
        ))
    }
}
