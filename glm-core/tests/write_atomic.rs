//! The workspace's one atomic writer (`glm_core::weights::write_atomic` / `write_atomic_with`):
//! concurrent writers of one path never collide on a temporary name, and no failure (an error of
//! the writer, a panic, a rename onto a folder) leaves a temporary file behind or touches the
//! old contents.

use std::path::{Path, PathBuf};

use glm_core::weights::{write_atomic, write_atomic_with};

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("glm-core-atomic-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("tmp");
    d
}

/// Every name in `dir` (sorted).
fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .expect("read_dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn concurrent_writers_of_one_path_all_succeed_and_leave_one_whole_file() {
    let dir = tmpdir("concurrent");
    let path = dir.join("out.bin");
    const THREADS: u8 = 8;
    const LEN: usize = 256 << 10;
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let path = path.clone();
                s.spawn(move || {
                    let body = vec![t + 1; LEN];
                    for _ in 0..10 {
                        write_atomic(&path, &body).expect("concurrent write");
                    }
                })
            })
            .collect();
        assert_eq!(handles.len(), THREADS as usize);
        for h in handles {
            h.join().expect("writer thread");
        }
    });
    let got = std::fs::read(&path).expect("result");
    assert_eq!(got.len(), LEN, "one whole file");
    let first = got[0];
    assert!((1..=THREADS).contains(&first));
    assert!(
        got.iter().all(|&b| b == first),
        "bytes of two writers mixed"
    );
    assert_eq!(
        names(&dir),
        vec!["out.bin".to_string()],
        "no temporary left"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn failures_leave_no_temporary_and_keep_the_old_contents() {
    let dir = tmpdir("failures");
    let path = dir.join("config.json");
    write_atomic(&path, b"old").expect("first write");

    // The writer fails half-way.
    let r: Result<(), glm_core::Error> = write_atomic_with(&path, |w| {
        w.write_all(b"partial new contents")
            .map_err(|e| glm_core::Error::Io {
                path: path.clone(),
                source: e,
            })?;
        Err(glm_core::Error::InvalidInput("stop".into()))
    });
    assert!(r.is_err());
    assert_eq!(std::fs::read(&path).expect("read"), b"old");
    assert_eq!(names(&dir), vec!["config.json".to_string()]);

    // The writer panics.
    let caught = std::panic::catch_unwind(|| {
        let _: Result<(), glm_core::Error> = write_atomic_with(&path, |w| {
            let _ = w.write_all(b"x");
            panic!("writer panicked");
        });
    });
    assert!(caught.is_err());
    assert_eq!(std::fs::read(&path).expect("read"), b"old");
    assert_eq!(names(&dir), vec!["config.json".to_string()]);

    // The rename fails: the target is a folder.
    let folder = dir.join("a-folder");
    std::fs::create_dir_all(folder.join("inside")).expect("folder");
    let e = write_atomic(&folder, b"new").expect_err("cannot replace a folder");
    assert!(e.to_string().contains("a-folder"), "{e}");
    assert_eq!(
        names(&dir),
        vec!["a-folder".to_string(), "config.json".to_string()]
    );

    // The folder does not exist: an error naming the file, nothing created.
    let e = write_atomic(&dir.join("missing/x.json"), b"new").expect_err("no folder");
    assert!(e.to_string().contains("missing"), "{e}");

    // The streaming form returns the writer's value and writes everything.
    let n = write_atomic_with(&path, |w| -> Result<usize, glm_core::Error> {
        for i in 0..1000u32 {
            w.write_all(&i.to_le_bytes())
                .map_err(|e| glm_core::Error::Io {
                    path: path.clone(),
                    source: e,
                })?;
        }
        Ok(1000)
    })
    .expect("streamed write");
    assert_eq!(n, 1000);
    let bytes = std::fs::read(&path).expect("read");
    assert_eq!(bytes.len(), 4000);
    assert_eq!(&bytes[3996..], &999u32.to_le_bytes());
    assert_eq!(
        names(&dir),
        vec!["a-folder".to_string(), "config.json".to_string()]
    );
    let _ = std::fs::remove_dir_all(dir);
}
