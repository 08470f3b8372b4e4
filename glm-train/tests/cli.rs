//! `glm-train` command-line errors: an unknown `--device`, a backend this binary was built
//! without, a missing config file — each a clear message and a failing exit status, no panic.

mod common;

use std::process::Command;

use common::tmpdir;

fn glm_train(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_glm-train"))
        .args(args)
        .output()
        .expect("run glm-train");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_devices_and_files_are_clear_errors() {
    let dir = tmpdir("cli");
    let config = glm_core::data_dir::workspace_root().join("examples/configs/tiny-train.json");
    let config = config.to_str().expect("utf-8 path");
    let out = dir.join("out");
    let out = out.to_str().expect("utf-8 path");

    let (ok, err) = glm_train(&["--config", config, "--out", out, "--device", "tpu"]);
    assert!(!ok && err.contains("unknown device `tpu`"), "{err}");
    assert!(!err.contains("panicked"), "{err}");

    #[cfg(not(feature = "cuda"))]
    {
        let (ok, err) = glm_train(&["--config", config, "--out", out, "--device", "cuda"]);
        assert!(
            !ok && err.contains("built without the cuda backend"),
            "{err}"
        );
    }

    let missing = dir.join("nope.json");
    let (ok, err) = glm_train(&["--config", missing.to_str().expect("utf-8"), "--out", out]);
    assert!(!ok && err.contains("nope.json"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    let _ = std::fs::remove_dir_all(dir);
}
