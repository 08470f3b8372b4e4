//! Finding task files and data files as the original does with Python's `glob(..., recursive=True)`:
//! `**` spans any number of folders (also none), `*` never crosses `/`, hidden entries are only
//! matched by a pattern that spells the leading dot; results are sorted (the original sorts data
//! files; task folders are sorted here too so runs are reproducible).

use std::path::{Path, PathBuf};

use glob::{MatchOptions, Pattern};

use super::error::{EvalError, EvalResult};

const OPTIONS: MatchOptions = MatchOptions {
    case_sensitive: true,
    require_literal_separator: true,
    require_literal_leading_dot: true,
};

/// Every file under `base` matching the relative glob `pattern`, sorted by path.
pub fn glob_files(base: &Path, pattern: &str) -> EvalResult<Vec<PathBuf>> {
    let base_str = base.to_str().ok_or_else(|| {
        EvalError::Usage(format!("{}: folder names must be UTF-8", base.display()))
    })?;
    let full = if Path::new(pattern).is_absolute() {
        pattern.to_string()
    } else {
        format!(
            "{}/{}",
            Pattern::escape(base_str.trim_end_matches('/')),
            pattern
        )
    };
    let paths = glob::glob_with(&full, OPTIONS)
        .map_err(|e| EvalError::Usage(format!("invalid file pattern `{pattern}`: {e}")))?;
    let mut out = Vec::new();
    for entry in paths {
        let path =
            entry.map_err(|e| EvalError::io(e.path(), std::io::Error::other(e.to_string())))?;
        if path.is_file() {
            out.push(path);
        }
    }
    out.sort();
    Ok(out)
}

/// `evaluate.py find_all_tasks`: folders are searched recursively for `*.yaml`, files are taken
/// as given; a path that is neither is an error.
pub fn find_all_tasks(inputs: &[PathBuf]) -> EvalResult<Vec<PathBuf>> {
    let mut tasks = Vec::new();
    for input in inputs {
        if input.is_dir() {
            tasks.extend(glob_files(input, "**/*.yaml")?);
        } else if input.is_file() {
            tasks.push(input.clone());
        } else {
            return Err(EvalError::io(
                input,
                std::io::Error::new(std::io::ErrorKind::NotFound, "no such task file or folder"),
            ));
        }
    }
    Ok(tasks)
}

/// `path` relative to `base` with `/` separators (the original prints data files this way).
pub fn relative(path: &Path, base: &Path) -> String {
    let rel = path.strip_prefix(base).unwrap_or(path);
    rel.components()
        .map(|c| c.as_os_str().to_string_lossy())
        .collect::<Vec<_>>()
        .join("/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn double_star_matches_zero_or_more_folders() {
        let dir = std::env::temp_dir().join(format!("glm-eval-glob-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        for f in [
            "test.jsonl",
            "a/test.jsonl",
            "a/b/test.jsonl",
            "a/other.jsonl",
            ".hidden/test.jsonl",
        ] {
            let p = dir.join(f);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, "").unwrap();
        }
        let found: Vec<String> = glob_files(&dir, "**/test.jsonl")
            .unwrap()
            .iter()
            .map(|p| relative(p, &dir))
            .collect();
        assert_eq!(found, vec!["a/b/test.jsonl", "a/test.jsonl", "test.jsonl"]);
        let found: Vec<String> = glob_files(&dir, "*/*.jsonl")
            .unwrap()
            .iter()
            .map(|p| relative(p, &dir))
            .collect();
        assert_eq!(found, vec!["a/other.jsonl", "a/test.jsonl"]);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
