//! A small seeded mutator: byte-level (bit flips, byte insert / delete, truncation, splicing,
//! integer-boundary substitutions, chunk duplication, LEB128 varints) and, for text formats,
//! token-level (numbers → boundary numbers, dictionary words, token / line delete, duplicate,
//! swap). Every input is a pure function of its seed, so any input can be rebuilt from
//! `(run seed, target, iteration)`.
//!
//! (Over 400 lines: the byte- and token-level mutation operators the fuzz targets share, each small.)

/// SplitMix64: the whole RNG state is one `u64`.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator started at `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (0 when `n == 0`).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next_u64() % n as u64) as usize
        }
    }

    /// True with probability `percent` / 100.
    pub fn percent(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }

    /// A uniformly chosen element (`None` for an empty slice).
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> Option<&'a T> {
        if items.is_empty() {
            None
        } else {
            items.get(self.below(items.len()))
        }
    }

    /// A small count, 1 most of the time, up to `max`: 1 + number of trailing one bits.
    pub fn small_count(&mut self, max: usize) -> usize {
        (1 + self.next_u64().trailing_ones() as usize).min(max.max(1))
    }
}

/// Seed of one input: a hash of the run seed, the target name and the iteration.
pub fn input_seed(run_seed: u64, target: &str, iteration: u64) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ run_seed;
    for &b in target.as_bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x100_0000_01b3);
    }
    let mut r = Rng::new(h ^ iteration.wrapping_mul(0xD6E8_FEB8_6659_FD93));
    r.next_u64()
}

/// Integer values that sit on a boundary of some width or sign.
pub const INTERESTING: [u64; 24] = [
    0,
    1,
    2,
    3,
    4,
    7,
    8,
    16,
    0x7f,
    0x80,
    0xff,
    0x100,
    0x7fff,
    0x8000,
    0xffff,
    0x1_0000,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_ffff,
    0x1_0000_0000,
    0x7fff_ffff_ffff_ffff,
    0x8000_0000_0000_0000,
    u64::MAX - 1,
    u64::MAX,
];

/// The same boundaries as text, plus floats and spellings JSON / YAML readers treat specially.
pub const INTERESTING_TEXT: [&str; 34] = [
    "0",
    "-0",
    "1",
    "-1",
    "2",
    "7",
    "8",
    "127",
    "128",
    "255",
    "256",
    "65504",
    "65535",
    "65536",
    "2147483647",
    "2147483648",
    "-2147483649",
    "4294967295",
    "4294967296",
    "9223372036854775807",
    "9223372036854775808",
    "-9223372036854775809",
    "18446744073709551615",
    "18446744073709551616",
    "99999999999999999999999999",
    "1e308",
    "1e309",
    "-1e309",
    "1e-400",
    "0.5",
    "NaN",
    "Infinity",
    "0x10",
    "1_000",
];

/// Tokens every text format gets in its dictionary (structure characters of JSON and YAML).
pub const COMMON_TEXT: [&str; 24] = [
    "{", "}", "[", "]", ":", ",", "\"", "'", "\n", "  ", "\t", "- ", "#", "null", "true", "false",
    "\\", "\\u0000", "\u{0}", "é", "\u{2581}", "&a", "*a", "|",
];

/// How an input is mutated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Byte-level mutations only.
    Binary,
    /// Byte- and token-level mutations (half each).
    Text,
}

/// Seeds, a dictionary and a size cap: everything a mutation needs.
#[derive(Debug, Clone)]
pub struct Mutator {
    /// Valid inputs the mutations start from (also the splice donors).
    pub seeds: Vec<Vec<u8>>,
    /// Format-specific words (field names, keywords) for token-level substitutions.
    pub dictionary: Vec<String>,
    /// Binary or text.
    pub format: Format,
    /// No input grows beyond this many bytes.
    pub max_len: usize,
}

impl Mutator {
    /// A mutator over `seeds`; `max_len` defaults to twice the largest seed plus 4 KiB.
    pub fn new(seeds: Vec<Vec<u8>>, format: Format, dictionary: &[&str]) -> Self {
        let largest = seeds.iter().map(Vec::len).max().unwrap_or(0);
        let mut dict: Vec<String> = dictionary.iter().map(|s| s.to_string()).collect();
        if format == Format::Text {
            dict.extend(COMMON_TEXT.iter().map(|s| s.to_string()));
        }
        Self {
            seeds,
            dictionary: dict,
            format,
            max_len: largest.saturating_mul(2).saturating_add(4096),
        }
    }

    /// One input: occasionally random bytes / random text, otherwise a seed with a stack of
    /// mutations.
    pub fn generate(&self, rng: &mut Rng) -> Vec<u8> {
        if rng.percent(2) {
            return self.random_input(rng);
        }
        let mut data = rng.pick(&self.seeds).cloned().unwrap_or_default();
        self.mutate(rng, &mut data);
        data
    }

    /// Applies 1..=8 mutations (usually 1 or 2) to `data`.
    pub fn mutate(&self, rng: &mut Rng, data: &mut Vec<u8>) {
        let n = rng.small_count(8);
        for _ in 0..n {
            if self.format == Format::Text && rng.percent(55) {
                self.text_mutation(rng, data);
            } else {
                self.byte_mutation(rng, data);
            }
            data.truncate(self.max_len);
        }
    }

    fn random_input(&self, rng: &mut Rng) -> Vec<u8> {
        let max = if rng.percent(50) { 64 } else { 2048 };
        let len = rng.below(max);
        if self.format == Format::Text && rng.percent(70) {
            let mut out = Vec::new();
            while out.len() < len {
                if rng.percent(30) {
                    out.extend_from_slice(rng.pick(&INTERESTING_TEXT).unwrap_or(&"0").as_bytes());
                } else if let Some(w) = rng.pick(&self.dictionary) {
                    out.extend_from_slice(w.as_bytes());
                } else {
                    out.push(b'x');
                }
            }
            out
        } else {
            (0..len).map(|_| rng.next_u64() as u8).collect()
        }
    }

    /// One byte-level mutation.
    pub fn byte_mutation(&self, rng: &mut Rng, data: &mut Vec<u8>) {
        let len = data.len();
        match rng.below(13) {
            // Bit flip.
            0 | 1 if len > 0 => {
                let i = rng.below(len);
                data[i] ^= 1 << rng.below(8);
            }
            // Random byte.
            2 if len > 0 => {
                let i = rng.below(len);
                data[i] = rng.next_u64() as u8;
            }
            // Insert random or repeated bytes.
            3 => {
                let at = rng.below(len + 1);
                let n = rng.small_count(6) * rng.small_count(6) * 2;
                let fill = rng.next_u64() as u8;
                let same = rng.percent(50);
                let bytes: Vec<u8> = (0..n)
                    .map(|_| if same { fill } else { rng.next_u64() as u8 })
                    .collect();
                data.splice(at..at, bytes);
            }
            // Delete a range.
            4 if len > 0 => {
                let at = rng.below(len);
                let max = if rng.percent(20) { len - at } else { 16 };
                let n = 1 + rng.below(max.min(len - at));
                data.drain(at..at + n);
            }
            // Truncate.
            5 => data.truncate(rng.below(len + 1)),
            // Splice another seed: overwrite a range with a donor chunk, or cross over.
            6 => {
                let Some(donor) = rng.pick(&self.seeds) else {
                    return;
                };
                if donor.is_empty() {
                    return;
                }
                let from = rng.below(donor.len());
                let n = 1 + rng.below((donor.len() - from).min(4096));
                let chunk = &donor[from..from + n];
                let at = rng.below(len + 1);
                if rng.percent(50) {
                    let end = (at + n).min(len);
                    data.splice(at..end, chunk.iter().copied());
                } else {
                    data.truncate(at);
                    data.extend_from_slice(&donor[from..]);
                }
            }
            // Integer boundary, 1/2/4/8 bytes, either endianness.
            7 | 8 if len > 0 => {
                let width = [1usize, 2, 4, 8][rng.below(4)];
                let v = self.interesting(rng, len);
                let bytes = if rng.percent(75) {
                    v.to_le_bytes()
                } else {
                    v.to_be_bytes()
                };
                let bytes = if rng.percent(75) {
                    &bytes[..width]
                } else {
                    &bytes[8 - width..]
                };
                let at = rng.below(len);
                let end = (at + width).min(len);
                data.splice(at..end, bytes.iter().copied());
            }
            // Add / subtract a small delta to a little-endian integer.
            9 if len > 0 => {
                let width = [1usize, 2, 4, 8][rng.below(4)].min(len);
                let at = rng.below(len - width + 1);
                let mut buf = [0u8; 8];
                buf[..width].copy_from_slice(&data[at..at + width]);
                let delta = 1 + rng.below(35) as u64;
                let v = u64::from_le_bytes(buf);
                let v = if rng.percent(50) {
                    v.wrapping_add(delta)
                } else {
                    v.wrapping_sub(delta)
                };
                data[at..at + width].copy_from_slice(&v.to_le_bytes()[..width]);
            }
            // Duplicate a chunk (possibly many times).
            10 if len > 0 => {
                let from = rng.below(len);
                let cap = if rng.percent(80) { 64 } else { 4096 };
                let n = 1 + rng.below((len - from).min(cap));
                let chunk = data[from..from + n].to_vec();
                let times = rng.small_count(16);
                let at = rng.below(len + 1);
                let mut ins = Vec::with_capacity(n * times);
                for _ in 0..times {
                    ins.extend_from_slice(&chunk);
                }
                data.splice(at..at, ins);
            }
            // Overwrite a range with a copy of another range.
            11 if len > 1 => {
                let from = rng.below(len);
                let to = rng.below(len);
                let n = 1 + rng.below((len - from).min(len - to).min(256));
                let chunk = data[from..from + n].to_vec();
                data[to..to + n].copy_from_slice(&chunk);
            }
            // A LEB128 varint (protobuf lengths and tags) over 1..=10 bytes.
            12 if len > 0 => {
                let mut v = self.interesting(rng, len);
                let mut bytes = Vec::new();
                loop {
                    let b = (v & 0x7f) as u8;
                    v >>= 7;
                    if v == 0 {
                        bytes.push(b);
                        break;
                    }
                    bytes.push(b | 0x80);
                }
                let at = rng.below(len);
                let old = 1 + rng.below(bytes.len().min(len - at));
                data.splice(at..at + old, bytes);
            }
            _ => {
                if len > 0 {
                    let i = rng.below(len);
                    data[i] ^= 0xff;
                } else {
                    data.push(rng.next_u64() as u8);
                }
            }
        }
    }

    fn interesting(&self, rng: &mut Rng, len: usize) -> u64 {
        if rng.percent(20) {
            // Near the input's own size: the values length checks compare against.
            (len as u64)
                .wrapping_add(rng.below(17) as u64)
                .wrapping_sub(8)
        } else {
            INTERESTING[rng.below(INTERESTING.len())]
        }
    }

    /// One token-level mutation (the input is split into numbers, words, spaces and single
    /// characters; invalid UTF-8 is fine).
    pub fn text_mutation(&self, rng: &mut Rng, data: &mut Vec<u8>) {
        if rng.percent(15) {
            line_mutation(rng, data);
            return;
        }
        if rng.percent(5) {
            // Deep nesting: many openers in a row (recursive parsers must not overflow the stack).
            let opener = *rng
                .pick(&["[", "{", "- ", "{\"a\":", "a:\n ", "[[", "!!"])
                .unwrap_or(&"[");
            let room = self.max_len.saturating_sub(data.len()) / opener.len();
            let times = 1 + rng.below(room.max(1));
            let at = rng.below(data.len() + 1);
            data.splice(at..at, opener.repeat(times).into_bytes());
            return;
        }
        let tokens = tokenize(data);
        if tokens.is_empty() {
            data.extend_from_slice(rng.pick(&INTERESTING_TEXT).unwrap_or(&"0").as_bytes());
            return;
        }
        let (a, b) = tokens[rng.below(tokens.len())];
        match rng.below(8) {
            // A number (or any token) → a boundary number.
            0 | 1 => {
                let numbers: Vec<(usize, usize)> = tokens
                    .iter()
                    .copied()
                    .filter(|&(s, _)| data[s].is_ascii_digit() || data[s] == b'-')
                    .collect();
                let (s, e) = rng.pick(&numbers).copied().unwrap_or((a, b));
                let v = rng
                    .pick(&INTERESTING_TEXT)
                    .unwrap_or(&"0")
                    .as_bytes()
                    .to_vec();
                data.splice(s..e, v);
            }
            // A token → a dictionary word.
            2 => {
                let w = rng.pick(&self.dictionary).cloned().unwrap_or_default();
                data.splice(a..b, w.into_bytes());
            }
            // Insert a dictionary word before a token.
            3 => {
                let w = rng.pick(&self.dictionary).cloned().unwrap_or_default();
                data.splice(a..a, w.into_bytes());
            }
            // Delete a token.
            4 => {
                data.drain(a..b);
            }
            // Duplicate a token (possibly many times).
            5 => {
                let tok = data[a..b].to_vec();
                let times = rng.small_count(8);
                let mut ins = Vec::new();
                for _ in 0..times {
                    ins.extend_from_slice(&tok);
                }
                data.splice(b..b, ins);
            }
            // Copy a token elsewhere.
            6 => {
                let tok = data[a..b].to_vec();
                let (c, _) = tokens[rng.below(tokens.len())];
                data.splice(c..c, tok);
            }
            // Swap two tokens.
            _ => {
                let (c, d) = tokens[rng.below(tokens.len())];
                if d <= a {
                    let first = data[c..d].to_vec();
                    let second = data[a..b].to_vec();
                    data.splice(a..b, first);
                    data.splice(c..d, second);
                } else if b <= c {
                    let first = data[a..b].to_vec();
                    let second = data[c..d].to_vec();
                    data.splice(c..d, first);
                    data.splice(a..b, second);
                }
            }
        }
    }
}

/// Line-level: duplicate (possibly many times), delete, swap, or re-indent a line.
fn line_mutation(rng: &mut Rng, data: &mut Vec<u8>) {
    let mut lines: Vec<Vec<u8>> = data.split(|&b| b == b'\n').map(<[u8]>::to_vec).collect();
    let n = lines.len();
    let i = rng.below(n);
    match rng.below(4) {
        0 => {
            let line = lines[i].clone();
            for _ in 0..rng.small_count(32) {
                lines.insert(i, line.clone());
            }
        }
        1 => {
            lines.remove(i);
        }
        2 => {
            let j = rng.below(n);
            lines.swap(i, j);
        }
        _ => {
            if rng.percent(50) {
                lines[i].splice(0..0, *b"  ");
            } else {
                let spaces = lines[i].iter().take_while(|&&c| c == b' ').count();
                lines[i].drain(..spaces.min(2));
            }
        }
    }
    *data = lines.join(&b'\n');
}

/// Splits text into `(start, end)` byte ranges: numbers (`-`? digits, `.`, exponent), words
/// (letters, digits, `_`, `-`, non-ASCII bytes), whitespace runs and single other bytes.
pub fn tokenize(data: &[u8]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut i = 0;
    let is_word = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c == b'-' || c >= 0x80;
    let is_num = |c: u8| c.is_ascii_digit() || matches!(c, b'.' | b'e' | b'E' | b'+' | b'-');
    while i < data.len() {
        let c = data[i];
        let start = i;
        if c.is_ascii_digit() || (c == b'-' && data.get(i + 1).is_some_and(u8::is_ascii_digit)) {
            i += 1;
            while i < data.len() && is_num(data[i]) {
                i += 1;
            }
        } else if is_word(c) {
            while i < data.len() && is_word(data[i]) {
                i += 1;
            }
        } else if c == b' ' || c == b'\t' {
            while i < data.len() && (data[i] == b' ' || data[i] == b'\t') {
                i += 1;
            }
        } else {
            i += 1;
        }
        out.push((start, i));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokenize_covers_every_byte_in_order() {
        let text = b"a: -12.5e3, \"k\"\n  - x\xff";
        let tokens = tokenize(text);
        assert!(!tokens.is_empty());
        let mut pos = 0;
        for &(s, e) in &tokens {
            assert_eq!(s, pos);
            assert!(e > s);
            pos = e;
        }
        assert_eq!(pos, text.len());
        assert!(tokens.contains(&(3, 10)), "{tokens:?}");
    }

    #[test]
    fn mutations_are_deterministic_and_capped() {
        let m = Mutator::new(
            vec![b"{\"a\": 1}".to_vec(), vec![0u8; 40]],
            Format::Text,
            &["b"],
        );
        let run = |seed| {
            let mut rng = Rng::new(seed);
            (0..200).map(|_| m.generate(&mut rng)).collect::<Vec<_>>()
        };
        let a = run(7);
        assert_eq!(a, run(7));
        assert_ne!(a, run(8));
        assert!(a.iter().all(|x| x.len() <= m.max_len));
        assert!(a.iter().any(|x| !m.seeds.contains(x)));
    }
}
