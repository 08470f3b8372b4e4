//! A small YAML document tree that remembers the line of every key and value, built on
//! `yaml-rust2`'s event parser, so task-file errors can name the line (serde-style YAML loaders
//! lose positions once a value is parsed).

use std::path::Path;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

use super::error::{EvalError, EvalResult};

/// A YAML node with its 1-based line.
#[derive(Debug, Clone, PartialEq)]
pub enum Node {
    /// A scalar; `plain` = unquoted (only plain scalars can be null, bool or numbers).
    Scalar {
        /// The text.
        value: String,
        /// Unquoted.
        plain: bool,
        /// Line.
        line: usize,
    },
    /// A sequence.
    Seq {
        /// Items.
        items: Vec<Node>,
        /// Line.
        line: usize,
    },
    /// A mapping with its keys in file order.
    Map {
        /// `(key, key line, value)`.
        entries: Vec<(String, usize, Node)>,
        /// Line.
        line: usize,
    },
}

impl Node {
    /// 1-based line where the node starts.
    pub fn line(&self) -> usize {
        match self {
            Node::Scalar { line, .. } | Node::Seq { line, .. } | Node::Map { line, .. } => *line,
        }
    }

    /// Whether this is a YAML null (`~`, `null`, empty).
    pub fn is_null(&self) -> bool {
        matches!(self, Node::Scalar { value, plain: true, .. } if matches!(value.as_str(), "" | "~" | "null" | "Null" | "NULL"))
    }

    /// A short description of the node kind, for error messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Node::Scalar { .. } if self.is_null() => "null",
            Node::Scalar { .. } => "a scalar",
            Node::Seq { .. } => "a list",
            Node::Map { .. } => "a mapping",
        }
    }
}

enum Frame {
    Seq(Vec<Node>, usize),
    Map(Vec<(String, usize, Node)>, Option<(String, usize)>, usize),
}

#[derive(Default)]
struct Builder {
    stack: Vec<Frame>,
    docs: Vec<Node>,
    error: Option<(usize, String)>,
}

impl Builder {
    fn push_node(&mut self, node: Node) {
        match self.stack.last_mut() {
            None => self.docs.push(node),
            Some(Frame::Seq(items, _)) => items.push(node),
            Some(Frame::Map(entries, pending, _)) => match pending.take() {
                Some((key, line)) => entries.push((key, line, node)),
                None => match node {
                    Node::Scalar { value, line, .. } => *pending = Some((value, line)),
                    other => {
                        if self.error.is_none() {
                            self.error =
                                Some((other.line(), "mapping keys must be plain text".into()));
                        }
                        // Keep the structure balanced: a placeholder key.
                        *pending = Some((String::new(), other.line()));
                    }
                },
            },
        }
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        let line = mark.line();
        match ev {
            Event::Scalar(value, style, _, _) => self.push_node(Node::Scalar {
                value,
                plain: style == TScalarStyle::Plain,
                line,
            }),
            Event::SequenceStart(..) => self.stack.push(Frame::Seq(Vec::new(), line)),
            Event::MappingStart(..) => self.stack.push(Frame::Map(Vec::new(), None, line)),
            Event::SequenceEnd | Event::MappingEnd => {
                let node = match self.stack.pop() {
                    Some(Frame::Seq(items, line)) => Node::Seq { items, line },
                    Some(Frame::Map(entries, _, line)) => Node::Map { entries, line },
                    None => return,
                };
                self.push_node(node);
            }
            Event::Alias(_) => {
                if self.error.is_none() {
                    self.error = Some((
                        line,
                        "YAML aliases (*name) are not supported in task files".into(),
                    ));
                }
                self.push_node(Node::Scalar {
                    value: String::new(),
                    plain: true,
                    line,
                });
            }
            Event::Nothing
            | Event::StreamStart
            | Event::StreamEnd
            | Event::DocumentStart
            | Event::DocumentEnd => {}
        }
    }
}

/// Deepest nesting of lists / mappings a task file may have (task files use two or three).
pub const MAX_DEPTH: usize = 64;

/// Parses `text` (read from `path`) into one document; an empty file is an empty mapping.
///
/// The events are pulled one by one rather than through `Parser::load`, which recurses once per
/// nesting level: a file of a few thousand nested `- ` would overflow the stack. Nesting deeper
/// than [`MAX_DEPTH`] is an error.
pub fn parse(text: &str, path: &Path) -> EvalResult<Node> {
    let mut builder = Builder::default();
    let mut parser = Parser::new_from_str(text);
    loop {
        let (event, mark) = parser.next_token().map_err(|e| EvalError::Task {
            path: path.to_path_buf(),
            line: e.marker().line(),
            field: None,
            message: format!("invalid YAML: {}", e.info()),
        })?;
        let opens = matches!(event, Event::SequenceStart(..) | Event::MappingStart(..));
        if opens && builder.stack.len() >= MAX_DEPTH {
            return Err(EvalError::Task {
                path: path.to_path_buf(),
                line: mark.line(),
                field: None,
                message: format!("lists and mappings nested deeper than {MAX_DEPTH} levels"),
            });
        }
        let end = event == Event::StreamEnd;
        builder.on_event(event, mark);
        if end {
            break;
        }
    }
    if let Some((line, message)) = builder.error {
        return Err(EvalError::Task {
            path: path.to_path_buf(),
            line,
            field: None,
            message,
        });
    }
    let mut docs = builder.docs.into_iter();
    let doc = docs.next().unwrap_or(Node::Map {
        entries: Vec::new(),
        line: 1,
    });
    if let Some(extra) = docs.next() {
        return Err(EvalError::Task {
            path: path.to_path_buf(),
            line: extra.line(),
            field: None,
            message: "a task file holds one YAML document, found a second one".into(),
        });
    }
    Ok(doc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_remember_their_lines() {
        let doc = parse(
            "name: x\nfile-pattern:\n  test: \"a/*.jsonl\"\nmetrics: [EM, F1]\n",
            Path::new("t.yaml"),
        )
        .unwrap();
        let Node::Map { entries, .. } = doc else {
            panic!("not a map")
        };
        let lines: Vec<_> = entries.iter().map(|(k, l, _)| (k.as_str(), *l)).collect();
        assert_eq!(
            lines,
            vec![("name", 1), ("file-pattern", 2), ("metrics", 4)]
        );
        let Node::Map { entries: inner, .. } = &entries[1].2 else {
            panic!("not a map")
        };
        assert_eq!((inner[0].0.as_str(), inner[0].1), ("test", 3));
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_stack_overflow() {
        // `Parser::load` recursed once per level: this overflowed any thread's stack.
        let text = "- ".repeat(200_000) + "x\n";
        let err = parse(&text, Path::new("deep.yaml")).unwrap_err();
        assert!(err.to_string().contains("nested deeper"), "{err}");
        let ok = "- ".repeat(MAX_DEPTH) + "x\n";
        assert!(parse(&ok, Path::new("ok.yaml")).is_ok());
    }

    #[test]
    fn syntax_errors_name_the_line() {
        let err = parse("name: x\ntype: [mul\n", Path::new("bad.yaml")).unwrap_err();
        let msg = err.to_string();
        assert!(msg.starts_with("bad.yaml:"), "{msg}");
    }
}
