//! Checked sizes (issue 10, defects 4 and 6): a damaged token cache (`NAME.tokens` /
//! `NAME.offsets`) is an `Error::Cache` naming the file, never an overflow panic or an
//! out-of-range slice; absurd batch / validation sizes are config errors before anything is
//! allocated; a failed cache write leaves no temporary file; a data position that does not fit
//! the corpus is an error, not an index panic.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::{tiny_config, tmpdir, write_corpus};
use glm_train::data::{DataStream, StreamConfig, TokenStore};
use glm_train::objective::ObjectiveConfig;
use glm_train::Error;

fn docs() -> Vec<Vec<u32>> {
    (0..5u32)
        .map(|d| (0..40 + d).map(|i| 10 + (i * 7 + d) % 500).collect())
        .collect()
}

fn offsets_path(prefix: &Path) -> PathBuf {
    PathBuf::from(format!("{}.offsets", prefix.display()))
}

fn tokens_path(prefix: &Path) -> PathBuf {
    PathBuf::from(format!("{}.tokens", prefix.display()))
}

fn u64s(bytes: &[u8]) -> Vec<u64> {
    assert!(bytes.len().is_multiple_of(8));
    bytes
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
        .collect()
}

fn to_bytes(v: &[u64]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Opens the store after `damage` and expects an `Error::Cache` naming `file`.
fn expect_cache_error(prefix: &Path, file: &Path, what: &str) {
    match TokenStore::open(prefix) {
        Err(Error::Cache { path, reason }) => {
            assert_eq!(path, file, "{what}: {reason}");
        }
        Err(e) => panic!("{what}: expected Error::Cache, got {e}"),
        Ok(_) => panic!("{what}: damaged cache accepted"),
    }
}

#[test]
fn damaged_token_caches_are_typed_errors_naming_the_file() {
    let dir = tmpdir("cache-damage");
    let prefix = dir.join("corpus");
    let docs = docs();
    let store = TokenStore::write(&prefix, &docs).expect("store");
    assert_eq!(store.len(), docs.len());
    for (i, d) in docs.iter().enumerate() {
        assert_eq!(store.doc(i), &d[..]);
    }
    drop(store);
    let (off, tok) = (offsets_path(&prefix), tokens_path(&prefix));
    let good_off = std::fs::read(&off).expect("offsets");
    let good_tok = std::fs::read(&tok).expect("tokens");
    let offsets = u64s(&good_off);
    assert_eq!(offsets.len(), docs.len() + 1);

    let n = offsets.len();
    let mut cases: Vec<(&str, Vec<u8>, Vec<u8>, PathBuf)> = Vec::new();
    let mut huge = offsets.clone();
    huge[n - 1] = u64::MAX / 2; // total * 4 overflows u64
    cases.push((
        "overflowing total",
        to_bytes(&huge),
        good_tok.clone(),
        off.clone(),
    ));
    let mut past = offsets.clone();
    past[n - 1] += 1_000;
    cases.push((
        "offset past the tokens",
        to_bytes(&past),
        good_tok.clone(),
        tok.clone(),
    ));
    let mut down = offsets.clone();
    down.swap(1, 2);
    cases.push((
        "decreasing offsets",
        to_bytes(&down),
        good_tok.clone(),
        off.clone(),
    ));
    let mut first = offsets.clone();
    first[0] = 1;
    cases.push((
        "first offset not 0",
        to_bytes(&first),
        good_tok.clone(),
        off.clone(),
    ));
    cases.push((
        "torn offset table",
        good_off[..good_off.len() - 3].to_vec(),
        good_tok.clone(),
        off.clone(),
    ));
    cases.push((
        "empty offset table",
        Vec::new(),
        good_tok.clone(),
        off.clone(),
    ));
    cases.push((
        "truncated tokens",
        good_off.clone(),
        good_tok[..good_tok.len() - 4].to_vec(),
        tok.clone(),
    ));
    let ran = cases.len();
    assert!(ran > 0);
    for (what, o, t, file) in cases {
        std::fs::write(&off, &o).expect("offsets");
        std::fs::write(&tok, &t).expect("tokens");
        expect_cache_error(&prefix, &file, what);
    }
    // Intact files open again.
    std::fs::write(&off, &good_off).expect("offsets");
    std::fs::write(&tok, &good_tok).expect("tokens");
    assert_eq!(TokenStore::open(&prefix).expect("intact").len(), docs.len());
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_failed_cache_write_leaves_no_temporary_file() {
    let dir = tmpdir("cache-tmp");
    let prefix = dir.join("corpus");
    // The offsets file cannot be replaced: a folder holds its name.
    std::fs::create_dir_all(offsets_path(&prefix).join("in-the-way")).expect("folder");
    let e = TokenStore::write(&prefix, &docs()).expect_err("write must fail");
    assert!(e.to_string().contains("corpus.offsets"), "{e}");
    let mut left: Vec<String> = std::fs::read_dir(&dir)
        .expect("read_dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(
        left,
        vec!["corpus.offsets", "corpus.tokens"],
        "temporary left behind"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn absurd_sizes_are_config_errors() {
    let dir = tmpdir("limits");
    let base = tiny_config(&write_corpus(&dir));
    base.validate().expect("the tiny config is valid");
    type Edit = fn(&mut glm_train::TrainConfig);
    let cases: [(&str, Edit); 6] = [
        ("validation_batches", |c| c.validation_batches = usize::MAX),
        ("validation_batches", |c| c.validation_batches = 1 << 40),
        ("batch_size", |c| c.batch_size = usize::MAX),
        ("batch_size", |c| c.batch_size = 1 << 20),
        ("grad_accumulation", |c| c.grad_accumulation = usize::MAX),
        ("data_parallel", |c| c.data_parallel = usize::MAX),
    ];
    for (field, edit) in cases {
        let mut c = base.clone();
        edit(&mut c);
        match c.validate() {
            Err(Error::Config { field: f, reason }) => assert_eq!(f, field, "{reason}"),
            other => panic!("{field}: expected a config error, got {other:?}"),
        }
    }
    // Sizes each under their own limit whose product (the L x L masks of a step) is too large.
    let mut c = base.clone();
    c.batch_size = 1 << 12;
    c.grad_accumulation = 1 << 12;
    match c.validate() {
        Err(Error::Config { field, reason }) => {
            assert_eq!(field, "batch_size");
            assert!(reason.contains("host memory"), "{reason}");
        }
        other => panic!("expected a config error, got {other:?}"),
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_data_position_past_the_corpus_is_an_error() {
    let dir = tmpdir("restore");
    let store = Arc::new(TokenStore::write(&dir.join("corpus"), &docs()).expect("store"));
    let config = tiny_config(&write_corpus(&dir));
    let stream = |docs: Vec<u32>| {
        DataStream::new(
            store.clone(),
            docs,
            Arc::new(Vec::new()),
            StreamConfig {
                seq_len: config.seq_len,
                objective: ObjectiveConfig::default(),
                specials: config.model.special_tokens,
                seed: 3,
                min_segment: 8,
            },
        )
        .expect("stream")
    };
    let mut big = stream((0..store.len() as u32).collect());
    big.next_batch(2);
    let mut far = big.state().clone();
    far.cursor = store.len() + 3;
    let mut small = stream(vec![0, 1]);
    let before = small.state().clone();
    let e = small.restore(far).expect_err("cursor past the documents");
    assert!(e.to_string().contains("cursor"), "{e}");
    assert_eq!(
        small.state(),
        &before,
        "a refused position leaves the stream as it was"
    );
    small.next_batch(2);
    let mut long = before.clone();
    long.offset = 10_000;
    assert!(small.restore(long).is_err());
    let _ = std::fs::remove_dir_all(dir);
}
