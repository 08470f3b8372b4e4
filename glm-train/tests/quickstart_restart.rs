//! The quickstart on a folder whose earlier run stopped before its first checkpoint: nothing can be
//! resumed, so it starts over — and keeps the earlier metrics aside instead of refusing the folder
//! or deleting them.

use std::path::PathBuf;

use serde_json::Value;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[test]
fn an_interrupted_quickstart_starts_over_and_keeps_its_old_metrics() {
    let out = std::env::temp_dir().join(format!("glm-quickstart-restart-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out).expect("out");

    // The shipped quickstart config, shortened to two steps without a checkpoint, with absolute
    // data paths (the test's working directory is the crate folder).
    let shipped = repo().join("examples/configs/quickstart.json");
    let mut cfg: Value =
        serde_json::from_str(&std::fs::read_to_string(&shipped).expect("config")).expect("json");
    let tokenizer_dir = glm_core::data_dir::data_dir("GLM_TOKENIZER_DIR", "../shared/tokenizer")
        .expect("tokenizer folder");
    let tokenizer_file =
        std::path::Path::new(cfg["data"]["tokenizer"].as_str().expect("tokenizer"))
            .file_name()
            .expect("tokenizer file name")
            .to_owned();
    cfg["data"]["tokenizer"] = Value::from(tokenizer_dir.join(tokenizer_file).to_string_lossy());
    {
        let key = "train";
        let files: Vec<Value> = cfg["data"][key]
            .as_array()
            .expect("train files")
            .iter()
            .map(|p| Value::from(repo().join(p.as_str().expect("path")).to_string_lossy()))
            .collect();
        cfg["data"][key] = Value::from(files);
    }
    if let Some(mip) = cfg["data"]["mip"].as_str() {
        cfg["data"]["mip"] = Value::from(repo().join(mip).to_string_lossy());
    }
    cfg["steps"] = Value::from(2);
    cfg["checkpoint_every"] = Value::from(1000);
    cfg["validate_every"] = Value::from(1000);
    let cfg_path = out.join("config.json");
    std::fs::write(&cfg_path, cfg.to_string()).expect("write config");

    // An earlier run that was stopped before its first checkpoint.
    let run = out.join("run");
    std::fs::create_dir_all(&run).expect("run");
    let old = "{\"step\":1,\"loss\":11.9}\n";
    std::fs::write(run.join("metrics.jsonl"), old).expect("old metrics");

    let done = glm_train::quickstart::quickstart(&cfg_path, &run, false).expect("quickstart");
    assert_eq!(
        done.metrics.len(),
        2,
        "the run started over and ran its steps"
    );

    let kept: Vec<PathBuf> = std::fs::read_dir(&run)
        .expect("read run")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("metrics.jsonl.interrupted-"))
        })
        .collect();
    assert_eq!(
        kept.len(),
        1,
        "the old metrics are kept aside once: {kept:?}"
    );
    assert_eq!(std::fs::read_to_string(&kept[0]).expect("kept"), old);
    let _ = std::fs::remove_dir_all(&out);
}
