//! Reading the data files the way the original datasets do (`evaluation/dataset.py`,
//! `evaluation/utils.py get_tokenized_input`): JSON lines whose fields are either token ids
//! (`inputs`, `choices`, `targets`, `text`) or text to tokenize (`<field>_pretokenized`), and raw
//! text files for language modelling. Every error names the file, the line and the field.

use std::path::Path;

use serde_json::{Map, Value};

use super::error::{EvalError, EvalResult};
use crate::prompt::TextCodec;

/// One JSON object of a JSONL file with its 1-based line.
pub type Record = (usize, Map<String, Value>);

/// Reads a JSONL file: one object per line (blank lines are skipped).
pub fn read_jsonl(path: &Path) -> EvalResult<Vec<Record>> {
    let text = std::fs::read_to_string(path).map_err(|e| EvalError::io(path, e))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let value: Value = serde_json::from_str(line).map_err(|e| EvalError::Data {
            path: path.to_path_buf(),
            line: i + 1,
            field: None,
            message: format!("invalid JSON: {e}"),
        })?;
        match value {
            Value::Object(map) => out.push((i + 1, map)),
            other => {
                return Err(EvalError::Data {
                    path: path.to_path_buf(),
                    line: i + 1,
                    field: None,
                    message: format!("expected a JSON object, found {}", json_kind(&other)),
                })
            }
        }
    }
    Ok(out)
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// Context for reading token fields: the file, the tokenizer and the model's vocabulary size.
pub struct TokenFields<'a> {
    /// The data file (for messages).
    pub path: &'a Path,
    /// Tokenizer for `*_pretokenized` text.
    pub codec: &'a dyn TextCodec,
    /// Ids must be below this.
    pub vocab_size: usize,
}

impl TokenFields<'_> {
    fn ids(&self, v: &Value, line: usize, field: &str) -> EvalResult<Vec<u32>> {
        let Value::Array(items) = v else {
            return Err(EvalError::data(
                self.path,
                line,
                field,
                format!("expected a list of token ids, found {}", json_kind(v)),
            ));
        };
        items
            .iter()
            .map(|x| {
                x.as_u64()
                    .filter(|&t| (t as usize) < self.vocab_size)
                    .map(|t| t as u32)
                    .ok_or_else(|| {
                        EvalError::data(
                            self.path,
                            line,
                            field,
                            format!(
                                "`{x}` is not a token id of this model (0 ≤ id < {})",
                                self.vocab_size
                            ),
                        )
                    })
            })
            .collect()
    }

    fn tokenize(&self, text: &str, line: usize, field: &str) -> EvalResult<Vec<u32>> {
        let ids = self.codec.tokenize(text).map_err(|e| {
            EvalError::data(self.path, line, field, format!("cannot tokenize: {e}"))
        })?;
        if let Some(&bad) = ids.iter().find(|&&t| t as usize >= self.vocab_size) {
            return Err(EvalError::data(
                self.path,
                line,
                field,
                format!(
                    "the tokenizer produced id {bad}, outside the model's vocabulary ({})",
                    self.vocab_size
                ),
            ));
        }
        Ok(ids)
    }

    /// A flat token field: `key` (ids) or `key_pretokenized` (text).
    pub fn flat(&self, item: &Map<String, Value>, line: usize, key: &str) -> EvalResult<Vec<u32>> {
        if let Some(v) = item.get(key) {
            return self.ids(v, line, key);
        }
        let pre = format!("{key}_pretokenized");
        match item.get(&pre) {
            Some(Value::String(s)) => self.tokenize(s, line, &pre),
            Some(other) => Err(EvalError::data(
                self.path,
                line,
                &pre,
                format!("expected a string, found {}", json_kind(other)),
            )),
            None => Err(EvalError::data(
                self.path,
                line,
                key,
                format!("missing (neither `{key}` nor `{pre}` is present)"),
            )),
        }
    }

    /// A list-of-sequences field (`choices`, `targets`): `key` (lists of ids) or
    /// `key_pretokenized` (list of texts). With `single_ok`, a flat id list or a single string is
    /// one sequence.
    pub fn nested(
        &self,
        item: &Map<String, Value>,
        line: usize,
        key: &str,
        single_ok: bool,
    ) -> EvalResult<Vec<Vec<u32>>> {
        if let Some(v) = item.get(key) {
            let Value::Array(items) = v else {
                return Err(EvalError::data(
                    self.path,
                    line,
                    key,
                    format!("expected a list of token-id lists, found {}", json_kind(v)),
                ));
            };
            if single_ok && items.iter().all(|x| x.is_number()) && !items.is_empty() {
                return Ok(vec![self.ids(v, line, key)?]);
            }
            return items.iter().map(|x| self.ids(x, line, key)).collect();
        }
        let pre = format!("{key}_pretokenized");
        match item.get(&pre) {
            Some(Value::Array(items)) => items
                .iter()
                .map(|x| match x {
                    Value::String(s) => self.tokenize(s, line, &pre),
                    other => Err(EvalError::data(
                        self.path,
                        line,
                        &pre,
                        format!("expected strings, found {}", json_kind(other)),
                    )),
                })
                .collect(),
            Some(Value::String(s)) if single_ok => Ok(vec![self.tokenize(s, line, &pre)?]),
            Some(other) => Err(EvalError::data(
                self.path,
                line,
                &pre,
                format!("expected a list of strings, found {}", json_kind(other)),
            )),
            None => Err(EvalError::data(
                self.path,
                line,
                key,
                format!("missing (neither `{key}` nor `{pre}` is present)"),
            )),
        }
    }
}

/// One multiple-choice item as read (before truncation).
#[derive(Debug, Clone, PartialEq)]
pub struct ChoiceItem {
    /// Line in the file.
    pub line: usize,
    /// Context ids (may contain `[MASK]`).
    pub text: Vec<u32>,
    /// Choice ids.
    pub choices: Vec<Vec<u32>>,
    /// Index of the correct choice.
    pub label: i64,
}

/// Reads a `mul` data file.
pub fn read_choice_file(fields: &TokenFields<'_>) -> EvalResult<Vec<ChoiceItem>> {
    let mut out = Vec::new();
    for (line, item) in read_jsonl(fields.path)? {
        let text = fields.flat(&item, line, "inputs")?;
        let choices = fields.nested(&item, line, "choices", false)?;
        if choices.is_empty() {
            return Err(EvalError::data(
                fields.path,
                line,
                "choices",
                "needs at least one choice",
            ));
        }
        if let Some(i) = choices.iter().position(|c| c.is_empty()) {
            return Err(EvalError::data(
                fields.path,
                line,
                "choices",
                format!("choice {i} is empty"),
            ));
        }
        let label = match item.get("label") {
            Some(v) => v.as_i64().ok_or_else(|| {
                EvalError::data(
                    fields.path,
                    line,
                    "label",
                    format!("expected an integer, found {v}"),
                )
            })?,
            None => return Err(EvalError::data(fields.path, line, "label", "missing")),
        };
        out.push(ChoiceItem {
            line,
            text,
            choices,
            label,
        });
    }
    Ok(out)
}

/// One generation item as read (before truncation).
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationItem {
    /// Line in the file.
    pub line: usize,
    /// Context ids.
    pub text: Vec<u32>,
    /// Reference answers (ids).
    pub targets: Vec<Vec<u32>>,
}

/// Reads a `gen` data file.
pub fn read_generation_file(fields: &TokenFields<'_>) -> EvalResult<Vec<GenerationItem>> {
    let mut out = Vec::new();
    for (line, item) in read_jsonl(fields.path)? {
        let text = fields.flat(&item, line, "inputs")?;
        let targets = fields.nested(&item, line, "targets", true)?;
        out.push(GenerationItem {
            line,
            text,
            targets,
        });
    }
    Ok(out)
}

/// One language-modelling document.
#[derive(Debug, Clone, PartialEq)]
pub struct Document {
    /// Line in the file (JSONL documents; 0 for a text file).
    pub line: usize,
    /// All token ids of the document.
    pub tokens: Vec<u32>,
    /// `len(raw_text.strip().split(" "))`: the word count perplexity is normalised by.
    pub num_original_tokens: usize,
    /// UTF-8 bytes of the raw text (bits per byte).
    pub utf8_length: usize,
    /// Pile subset (`meta.pile_set_name`), if any.
    pub set_name: Option<String>,
}

/// Word count as the original: strip, then split on the single space character only.
pub fn num_original_tokens(raw: &str) -> usize {
    raw.trim().split(' ').count()
}

/// Reads a raw text file as one document (`LanguageModelTaskDataset.process_single_file`).
pub fn read_text_document(fields: &TokenFields<'_>) -> EvalResult<Document> {
    let bytes = std::fs::read(fields.path).map_err(|e| EvalError::io(fields.path, e))?;
    let raw = String::from_utf8(bytes).map_err(|e| EvalError::Data {
        path: fields.path.to_path_buf(),
        line: 0,
        field: None,
        message: format!("not UTF-8 text: {e}"),
    })?;
    let tokens = fields.tokenize(&raw, 0, "text")?;
    Ok(Document {
        line: 0,
        tokens,
        num_original_tokens: num_original_tokens(&raw),
        utf8_length: raw.len(),
        set_name: None,
    })
}

/// Reads a Pile JSONL file (`PileDataset.process_single_file`): `text` ids (or
/// `text_pretokenized`), `text_pretokenized` for the byte count, `meta.pile_set_name`; documents
/// with no tokens are skipped.
pub fn read_pile_file(fields: &TokenFields<'_>) -> EvalResult<Vec<Document>> {
    let mut out = Vec::new();
    for (line, item) in read_jsonl(fields.path)? {
        let tokens = fields.flat(&item, line, "text")?;
        if tokens.is_empty() {
            continue;
        }
        let raw = match item.get("text_pretokenized") {
            Some(Value::String(s)) => s.as_str(),
            Some(other) => {
                return Err(EvalError::data(
                    fields.path,
                    line,
                    "text_pretokenized",
                    format!("expected a string, found {}", json_kind(other)),
                ))
            }
            None => {
                return Err(EvalError::data(
                    fields.path,
                    line,
                    "text_pretokenized",
                    "missing (needed for bits per byte)",
                ))
            }
        };
        let set_name = match item.get("meta").and_then(|m| m.get("pile_set_name")) {
            Some(Value::String(s)) => s.clone(),
            _ => {
                return Err(EvalError::data(
                    fields.path,
                    line,
                    "meta.pile_set_name",
                    "missing or not a string",
                ))
            }
        };
        out.push(Document {
            line,
            tokens,
            num_original_tokens: num_original_tokens(raw),
            utf8_length: raw.len(),
            set_name: Some(set_name),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prompt::IdCodec;

    #[test]
    fn word_count_splits_on_single_spaces_only() {
        assert_eq!(num_original_tokens(" 1 2\n3 4 \n"), 3);
        assert_eq!(num_original_tokens("a  b"), 3);
    }

    #[test]
    fn token_fields_accept_ids_or_text() {
        let fields = TokenFields {
            path: Path::new("d.jsonl"),
            codec: &IdCodec,
            vocab_size: 100,
        };
        let item: Map<String, Value> =
            serde_json::from_str(r#"{"inputs_pretokenized": "1 2 3", "choices": [[4], [5, 6]]}"#)
                .unwrap();
        assert_eq!(fields.flat(&item, 1, "inputs").unwrap(), vec![1, 2, 3]);
        assert_eq!(
            fields.nested(&item, 1, "choices", false).unwrap(),
            vec![vec![4], vec![5, 6]]
        );
        let bad: Map<String, Value> = serde_json::from_str(r#"{"inputs": [1, 200]}"#).unwrap();
        let err = fields.flat(&bad, 7, "inputs").unwrap_err().to_string();
        assert!(err.starts_with("d.jsonl:7: field `inputs`"), "{err}");
    }
}
