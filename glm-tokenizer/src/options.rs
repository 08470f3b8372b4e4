//! Tokenizer options: vocabulary layout, id shift, special-token handling and the per-call
//! encoding switches, with presets for every reference configuration ([`Mode`]).

/// Where GLM's extra pieces come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VocabLayout {
    /// GLM-130B 2023 code path (SAT `GLM130BTokenizer`): specials, `<|tab|>`, blanks and 256
    /// byte pieces are appended to the file's pieces; byte fallback is on.
    Glm130b,
    /// icetk / the GLM-130B 2022 release path: the text model as it is; the eight specials sit
    /// right after it (CONTROL, decoding to ""). No tab, blank or byte pieces: unknown
    /// characters give `<unk>`, and only `<n>` is rewritten.
    Icetk,
    /// ChatGLM-6B v1.1: the file already contains the extra pieces (`<eod>` is `<unused_0>`).
    ChatGlm6b,
}

/// Per-call encoding switches (the keyword arguments of `GLM130BTokenizer.encode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EncodeFlags {
    /// `\n` → `<n>` (otherwise the normalizer turns it into a space).
    pub linebreak: bool,
    /// `\t` → `<|tab|>`, runs of spaces → `<|blank_N|>` (layouts that have those pieces).
    pub whitespaces: bool,
    /// Keep SentencePiece's leading `▁`. When false, GLM encodes `"<n>" + text` and drops the
    /// first two ids, which keeps leading spaces that the normalizer would otherwise eat.
    pub add_dummy_prefix: bool,
}

/// How to build a [`crate::Tokenizer`] from a SentencePiece file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenizerOptions {
    /// Vocabulary layout.
    pub layout: VocabLayout,
    /// Added to every SentencePiece id (20000 for icetk / GLM-130B, 0 for ChatGLM-6B).
    pub num_image_tokens: u32,
    /// Make the GLM specials USER_DEFINED, so literal `[MASK]`, `<sop>`... in text become their
    /// ids and decode back to their text.
    pub special_tokens: bool,
    /// Longest `<|blank_N|>` token.
    pub max_blank_length: usize,
    /// Default encoding switches used by [`crate::Tokenizer::encode`].
    pub encode: EncodeFlags,
}

impl TokenizerOptions {
    /// GLM-130B 2023 defaults (`GLM130BTokenizer.encode(text)`).
    pub fn glm130b() -> Self {
        Self {
            layout: VocabLayout::Glm130b,
            num_image_tokens: 20000,
            special_tokens: false,
            max_blank_length: 80,
            encode: EncodeFlags {
                linebreak: true,
                whitespaces: true,
                add_dummy_prefix: true,
            },
        }
    }

    /// icetk as the GLM-130B release calls it (`ignore_linebreak=True`).
    pub fn icetk() -> Self {
        Self {
            layout: VocabLayout::Icetk,
            encode: EncodeFlags {
                linebreak: false,
                whitespaces: false,
                add_dummy_prefix: true,
            },
            ..Self::glm130b()
        }
    }

    /// ChatGLM-6B v1.1 (`ice_text.model` with the extra pieces inside, no id shift).
    pub fn chatglm6b() -> Self {
        Self {
            layout: VocabLayout::ChatGlm6b,
            num_image_tokens: 0,
            ..Self::glm130b()
        }
    }

    /// Sets [`Self::special_tokens`].
    pub fn with_special_tokens(mut self, on: bool) -> Self {
        self.special_tokens = on;
        self
    }

    /// Sets [`EncodeFlags::linebreak`].
    pub fn with_linebreak(mut self, on: bool) -> Self {
        self.encode.linebreak = on;
        self
    }

    /// Sets [`EncodeFlags::whitespaces`].
    pub fn with_whitespaces(mut self, on: bool) -> Self {
        self.encode.whitespaces = on;
        self
    }

    /// Sets [`EncodeFlags::add_dummy_prefix`].
    pub fn with_dummy_prefix(mut self, on: bool) -> Self {
        self.encode.add_dummy_prefix = on;
        self
    }
}

impl Default for TokenizerOptions {
    fn default() -> Self {
        Self::glm130b()
    }
}

/// The tokenizer configurations of the reference implementations (the modes of
/// `golden.jsonl`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `GLM130BTokenizer.encode(text)`.
    Glm130b,
    /// `encode(text, add_dummy_prefix=False)`.
    Glm130bNoDummyPrefix,
    /// `encode(text, special_tokens=True)`.
    Glm130bSpecialTokens,
    /// `encode(text, linebreak=False, whitespaces=False)`.
    Glm130bRaw,
    /// [`Mode::Glm130b`] on a model whose `remove_extra_whitespaces` is false (the flag comes
    /// from the file; the options are those of `Glm130b`).
    Glm130bKeepExtraWhitespace,
    /// `IceTokenizer.encode(text=text)` (GLM-130B release path).
    Icetk,
    /// `IceTokenizer.encode(text=text, ignore_linebreak=False)`.
    IcetkKeepLinebreak,
    /// ChatGLM-6B v1.1 `SPTokenizer.encode(text)`.
    ChatGlm6b,
}

impl Mode {
    /// All modes.
    pub const ALL: [Mode; 8] = [
        Self::Glm130b,
        Self::Glm130bNoDummyPrefix,
        Self::Glm130bSpecialTokens,
        Self::Glm130bRaw,
        Self::Glm130bKeepExtraWhitespace,
        Self::Icetk,
        Self::IcetkKeepLinebreak,
        Self::ChatGlm6b,
    ];

    /// Name used in the golden files.
    pub fn name(self) -> &'static str {
        match self {
            Self::Glm130b => "glm130b",
            Self::Glm130bNoDummyPrefix => "glm130b_no_dummy_prefix",
            Self::Glm130bSpecialTokens => "glm130b_special_tokens",
            Self::Glm130bRaw => "glm130b_raw",
            Self::Glm130bKeepExtraWhitespace => "glm130b_keep_extra_whitespace",
            Self::Icetk => "icetk",
            Self::IcetkKeepLinebreak => "icetk_keep_linebreak",
            Self::ChatGlm6b => "chatglm6b",
        }
    }

    /// Mode with this golden-file name.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.name() == name)
    }

    /// Options that reproduce this mode.
    pub fn options(self) -> TokenizerOptions {
        match self {
            Self::Glm130b | Self::Glm130bKeepExtraWhitespace => TokenizerOptions::glm130b(),
            Self::Glm130bNoDummyPrefix => TokenizerOptions::glm130b().with_dummy_prefix(false),
            Self::Glm130bSpecialTokens => TokenizerOptions::glm130b().with_special_tokens(true),
            Self::Glm130bRaw => TokenizerOptions::glm130b()
                .with_linebreak(false)
                .with_whitespaces(false),
            Self::Icetk => TokenizerOptions::icetk(),
            Self::IcetkKeepLinebreak => TokenizerOptions::icetk().with_linebreak(true),
            Self::ChatGlm6b => TokenizerOptions::chatglm6b(),
        }
    }
}
