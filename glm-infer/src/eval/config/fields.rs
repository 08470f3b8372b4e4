//! Reading the fields of a task file: key spellings (kebab / snake / camel case), types and
//! ranges, every error naming the file, the line and the key as written.

use std::path::Path;

use super::super::error::{EvalError, EvalResult};
use super::super::yaml::Node;

/// Keys that appear in the original task files but that no config class of the original reads
/// (dataclass-wizard drops them silently). Accepted with a warning, never used.
pub(super) const IGNORED_KEYS: &[&str] = &["no_tokenized"];

/// dataclass-wizard's key matching: kebab-case, camelCase and snake_case all map to snake_case.
pub fn normalize_key(key: &str) -> String {
    let mut out = String::with_capacity(key.len() + 4);
    let mut prev_lower = false;
    for c in key.trim().chars() {
        if c == '-' || c == ' ' {
            out.push('_');
            prev_lower = false;
        } else if c.is_uppercase() {
            if prev_lower {
                out.push('_');
            }
            out.extend(c.to_lowercase());
            prev_lower = false;
        } else {
            out.push(c);
            prev_lower = c.is_lowercase() || c.is_ascii_digit();
        }
    }
    out
}

pub(super) struct Fields<'a> {
    pub(super) path: &'a Path,
    pub(super) entries: Vec<(String, String, usize, Node)>,
    /// `(normalized, as written)` of every key, for errors about already-consumed keys.
    spellings: Vec<(String, String)>,
}

impl<'a> Fields<'a> {
    pub(super) fn new(path: &'a Path, doc: Node) -> EvalResult<Self> {
        let Node::Map { entries, .. } = doc else {
            return Err(EvalError::Task {
                path: path.to_path_buf(),
                line: doc.line(),
                field: None,
                message: format!(
                    "a task file must be a mapping of fields, found {}",
                    doc.kind()
                ),
            });
        };
        let mut out: Vec<(String, String, usize, Node)> = Vec::with_capacity(entries.len());
        for (key, line, value) in entries {
            let norm = normalize_key(&key);
            if let Some((first, _, first_line, _)) = out.iter().find(|(_, n, _, _)| *n == norm) {
                return Err(EvalError::task(
                    path,
                    line,
                    key.clone(),
                    format!("duplicate field (already given as `{first}` on line {first_line})"),
                ));
            }
            out.push((key, norm, line, value));
        }
        let spellings = out
            .iter()
            .map(|(k, n, _, _)| (n.clone(), k.clone()))
            .collect();
        Ok(Self {
            path,
            entries: out,
            spellings,
        })
    }

    /// The key `name` as written in the file.
    pub(super) fn spelled(&self, name: &str) -> String {
        self.spellings
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, k)| k.clone())
            .unwrap_or_else(|| name.to_string())
    }

    pub(super) fn take(&mut self, name: &str) -> Option<(String, usize, Node)> {
        let i = self.entries.iter().position(|(_, n, _, _)| n == name)?;
        let (key, _, line, node) = self.entries.remove(i);
        Some((key, line, node))
    }

    pub(super) fn err(&self, line: usize, key: &str, message: impl Into<String>) -> EvalError {
        EvalError::task(self.path, line, key, message)
    }

    pub(super) fn scalar(&self, key: &str, line: usize, node: &Node) -> EvalResult<String> {
        match node {
            Node::Scalar { value, .. } if !node.is_null() => Ok(value.clone()),
            other => Err(self.err(
                line,
                key,
                format!("expected a string, found {}", other.kind()),
            )),
        }
    }

    pub(super) fn required(&mut self, name: &str) -> EvalResult<(String, usize, String)> {
        match self.take(name) {
            None => Err(EvalError::Task {
                path: self.path.to_path_buf(),
                line: 0,
                field: Some(name.to_string()),
                message: "missing required field".into(),
            }),
            Some((key, line, node)) => {
                let v = self.scalar(&key, line, &node)?;
                Ok((key, line, v))
            }
        }
    }

    pub(super) fn boolean(&mut self, name: &str, default: bool) -> EvalResult<(bool, usize)> {
        let Some((key, line, node)) = self.take(name) else {
            return Ok((default, 0));
        };
        let value = match &node {
            Node::Scalar { value, plain, .. } => match (value.as_str(), plain) {
                (
                    "true" | "True" | "TRUE" | "yes" | "Yes" | "YES" | "on" | "On" | "ON" | "y"
                    | "Y",
                    true,
                ) => Some(true),
                (
                    "false" | "False" | "FALSE" | "no" | "No" | "NO" | "off" | "Off" | "OFF" | "n"
                    | "N",
                    true,
                ) => Some(false),
                // dataclass-wizard also converts quoted strings.
                (v, false) if v.eq_ignore_ascii_case("true") => Some(true),
                (v, false) if v.eq_ignore_ascii_case("false") => Some(false),
                _ => None,
            },
            _ => None,
        };
        value.map(|v| (v, line)).ok_or_else(|| {
            self.err(
                line,
                &key,
                format!("expected true or false, found {}", describe(&node)),
            )
        })
    }

    /// An integer field in `min..=max` (default when absent); returns it with its line (0 when
    /// absent). Values outside the range, or not integers, are errors naming line and key.
    pub(super) fn integer(
        &mut self,
        name: &str,
        default: usize,
        min: usize,
        max: usize,
    ) -> EvalResult<(usize, usize)> {
        let Some((key, line, node)) = self.take(name) else {
            return Ok((default, 0));
        };
        let text = match &node {
            Node::Scalar { value, .. } if !node.is_null() => value.trim().replace('_', ""),
            _ => String::new(),
        };
        let parsed = text.parse::<i128>().ok();
        match parsed {
            Some(v) if v < min as i128 => {
                Err(self.err(line, &key, format!("must be at least {min}, found {v}")))
            }
            Some(v) if v > max as i128 => {
                Err(self.err(line, &key, format!("must be at most {max}, found {v}")))
            }
            Some(v) => usize::try_from(v)
                .map(|v| (v, line))
                .map_err(|_| self.err(line, &key, format!("must be at most {max}, found {v}"))),
            None if !text.is_empty()
                && text
                    .trim_start_matches(['-', '+'])
                    .bytes()
                    .all(|b| b.is_ascii_digit()) =>
            {
                Err(self.err(
                    line,
                    &key,
                    format!("must be at most {max}, found {}", describe(&node)),
                ))
            }
            None => Err(self.err(
                line,
                &key,
                format!("expected an integer, found {}", describe(&node)),
            )),
        }
    }

    pub(super) fn float(&mut self, name: &str, default: f64) -> EvalResult<f64> {
        let Some((key, line, node)) = self.take(name) else {
            return Ok(default);
        };
        match &node {
            Node::Scalar { value, .. } if !node.is_null() => value
                .trim()
                .parse::<f64>()
                .ok()
                .filter(|v| v.is_finite())
                .ok_or_else(|| {
                    self.err(
                        line,
                        &key,
                        format!("expected a number, found {}", describe(&node)),
                    )
                }),
            _ => Err(self.err(
                line,
                &key,
                format!("expected a number, found {}", describe(&node)),
            )),
        }
    }
}

pub(super) fn describe(node: &Node) -> String {
    match node {
        Node::Scalar { value, .. } if !node.is_null() => format!("`{value}`"),
        other => other.kind().to_string(),
    }
}
