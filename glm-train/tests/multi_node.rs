//! Multi-node training on loopback: 2 and 3 `glm-train` processes joined through burn-collective's
//! global orchestrator train exactly as one process with as many data-parallel replicas; a node
//! killed with SIGKILL makes the others stop with an error naming it (no hang); every node
//! restarted with `--resume` continues as if nothing had happened.
//!
//! Every process is started with a deadline and killed by the test when it is exceeded.

mod common;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use burn::backend::{Autodiff, Flex};
use common::{tiny_config, tmpdir, write_corpus};
use glm_train::checkpoint;
use glm_train::trainer::read_metrics;
use glm_train::TrainConfig;

type B = Autodiff<Flex>;

/// How long one node process may run before the test kills it and fails.
const DEADLINE: Duration = Duration::from_secs(300);

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

fn write_config(config: &TrainConfig, path: &Path) -> PathBuf {
    std::fs::write(path, serde_json::to_string(config).expect("json")).expect("write config");
    path.to_path_buf()
}

/// The processes of one job; whatever still runs when it is dropped (a failed assertion) is
/// killed, so no test leaves a node behind.
struct Job(Vec<Option<Child>>);

impl Job {
    fn child(&mut self, rank: usize) -> &mut Child {
        self.0[rank].as_mut().expect("running")
    }
}

impl Drop for Job {
    fn drop(&mut self) {
        for child in self.0.iter_mut().flatten() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Starts one job on loopback: node `r` trains `configs[r]` into `out` with `extra` flags.
fn spawn_nodes(configs: &[&Path], out: &Path, extra: &[&str]) -> Job {
    let orchestrator = format!("127.0.0.1:{}", free_port());
    let nodes = configs.len().to_string();
    Job(configs
        .iter()
        .enumerate()
        .map(|(rank, config)| {
            Command::new(env!("CARGO_BIN_EXE_glm-train"))
                .args(["--config", config.to_str().expect("utf-8")])
                .args(["--out", out.to_str().expect("utf-8")])
                .args(["--nodes", &nodes, "--node-rank", &rank.to_string()])
                .args(["--orchestrator", &orchestrator, "--quiet"])
                .args(extra)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .map(Some)
                .expect("start glm-train")
        })
        .collect())
}

/// Starts `nodes` processes of one job training `config` (60 s collective timeout).
fn start_job(config: &Path, out: &Path, nodes: u32, resume: bool) -> Job {
    let configs = vec![config; nodes as usize];
    let resume: &[&str] = if resume { &["--resume"] } else { &[] };
    spawn_nodes(
        &configs,
        out,
        &[&["--collective-timeout", "60"], resume].concat(),
    )
}

/// Waits until node 0 has written its first checkpoint into `out`.
fn wait_for_checkpoint(out: &Path) {
    let start = Instant::now();
    while checkpoint::scan(&out.join("checkpoints"))
        .checkpoint
        .is_none()
    {
        assert!(start.elapsed() < DEADLINE, "no checkpoint appeared");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Waits for the processes of `ranks` (killing the whole job past the deadline): (success,
/// stderr) each.
fn wait_ranks(job: &mut Job, ranks: &[usize]) -> Vec<(bool, String)> {
    let start = Instant::now();
    let mut results: Vec<Option<(bool, String)>> = ranks.iter().map(|_| None).collect();
    while results.iter().any(Option::is_none) {
        for (&rank, result) in ranks.iter().zip(results.iter_mut()) {
            if result.is_some() {
                continue;
            }
            if job.child(rank).try_wait().expect("try_wait").is_some() {
                let out = job.0[rank]
                    .take()
                    .expect("child")
                    .wait_with_output()
                    .expect("output");
                *result = Some((
                    out.status.success(),
                    String::from_utf8_lossy(&out.stderr).into_owned(),
                ));
            }
        }
        assert!(
            start.elapsed() < DEADLINE,
            "a node process ran past {DEADLINE:?}: {results:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    results.into_iter().flatten().collect()
}

/// Waits for every process of the job.
fn wait_all(mut job: Job) -> Vec<(bool, String)> {
    let ranks: Vec<usize> = (0..job.0.len()).collect();
    wait_ranks(&mut job, &ranks)
}

fn run_job(config: &Path, out: &Path, nodes: u32, resume: bool) {
    for (rank, (ok, err)) in wait_all(start_job(config, out, nodes, resume))
        .into_iter()
        .enumerate()
    {
        assert!(ok, "node {rank} failed: {err}");
        assert!(!err.contains("panicked"), "node {rank}: {err}");
    }
}

fn metric_losses(out: &Path) -> Vec<(u64, f64)> {
    read_metrics(&out.join("metrics.jsonl"))
        .expect("metrics")
        .iter()
        .map(|m| (m.step, m.loss))
        .collect()
}

fn assert_close(what: &str, got: &[(u64, f64)], want: &[(u64, f64)]) {
    assert_eq!(got.len(), want.len(), "{what}: {got:?} vs {want:?}");
    for (g, w) in got.iter().zip(want) {
        assert_eq!(g.0, w.0, "{what}: steps {got:?} vs {want:?}");
        let rel = (g.1 - w.1).abs() / w.1.abs().max(1e-12);
        assert!(
            rel <= 1e-4,
            "{what}: step {} loss {} vs {} ({rel:e})",
            g.0,
            g.1,
            w.1
        );
    }
}

/// The losses of one process with `replicas` data-parallel replicas.
fn single_process(config: &TrainConfig, replicas: usize, out: &Path) -> Vec<(u64, f64)> {
    let mut c = config.clone();
    c.data_parallel = replicas;
    let mut t = glm_train::Trainer::<B>::new(c, out, &Default::default(), false).expect("trainer");
    t.run()
        .expect("run")
        .iter()
        .map(|l| (l.step, l.loss))
        .collect()
}

fn base_config(dir: &Path, steps: u64) -> TrainConfig {
    let mut c = tiny_config(&write_corpus(dir));
    c.steps = steps;
    c.batch_size = 2;
    c.dropout.hidden = 0.1;
    c.dropout.attention = 0.1;
    c.checkpoint_every = 3;
    c.validate_every = 3;
    c
}

/// Each node with its own local replicas: 2 nodes × 2 replicas = one process with 4.
#[test]
fn two_nodes_of_two_replicas_train_as_one_process_with_four() {
    let dir = tmpdir("nodes2");
    let mut config = base_config(&dir, 6);
    config.data_parallel = 2;
    let path = write_config(&config, &dir.join("config.json"));
    let out = dir.join("job");
    run_job(&path, &out, 2, false);
    let want = single_process(&config, 4, &dir.join("single"));
    assert_close("2 nodes x 2 replicas", &metric_losses(&out), &want);
    assert!(out.join("model.safetensors").is_file());
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn three_nodes_survive_nothing_silently_and_resume() {
    let dir = tmpdir("nodes3");
    let config = base_config(&dir, 45);
    let path = write_config(&config, &dir.join("config.json"));

    // An uninterrupted 3-node run equals one process with 3 replicas.
    let whole = dir.join("whole");
    run_job(&path, &whole, 3, false);
    let uninterrupted = metric_losses(&whole);
    let want = single_process(&config, 3, &dir.join("single"));
    assert_close("3 nodes", &uninterrupted, &want);

    // Kill node 1 once the first checkpoint is written: nodes 0 and 2 stop with an error naming
    // it well before the collective timeout (60 s), the checkpoint stays loadable.
    let out = dir.join("killed");
    let mut job = start_job(&path, &out, 3, false);
    wait_for_checkpoint(&out);
    job.child(1).kill().expect("SIGKILL node 1");
    let killed_at = Instant::now();
    let results = wait_all(job);
    let stopped_after = killed_at.elapsed();
    for rank in [0, 2] {
        let (ok, err) = &results[rank];
        eprintln!("node {rank} after the kill: {err}");
        assert!(!ok, "node {rank} went on after node 1 was killed: {err}");
        assert!(
            err.contains("node 1 (") && err.contains("was lost"),
            "node {rank} does not name the lost node: {err}"
        );
    }
    assert!(
        stopped_after < Duration::from_secs(30),
        "the survivors took {stopped_after:?} to stop"
    );
    let kept = checkpoint::scan(&out.join("checkpoints"))
        .checkpoint
        .expect("the last checkpoint is intact");
    assert!(
        kept.meta.step >= 3 && kept.meta.step < 45,
        "{}",
        kept.meta.step
    );

    // All nodes restarted with --resume continue as the uninterrupted run.
    run_job(&path, &out, 3, true);
    assert_close("resumed", &metric_losses(&out), &uninterrupted);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn nodes_that_disagree_or_misconfigure_are_refused() {
    let dir = tmpdir("nodes-bad");
    let config = base_config(&dir, 2);
    let path = write_config(&config, &dir.join("config.json"));
    let mut other = config.clone();
    other.seed += 1;
    let other_path = write_config(&other, &dir.join("other.json"));
    // Two nodes with different configurations: both refuse to train.
    let job = spawn_nodes(&[&path, &other_path], &dir.join("out"), &[]);
    for (rank, (ok, err)) in wait_all(job).into_iter().enumerate() {
        assert!(!ok, "node {rank} trained with a different configuration");
        assert!(err.contains("joined a different job"), "node {rank}: {err}");
    }
    // Bad flags and taken ports (node 0's orchestrator port, a node's data port): a typed
    // message each, at once, no panic.
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("port").port().to_string();
    let on_taken = format!("127.0.0.1:{port}");
    let listen = format!("the orchestrator cannot listen on port {port}");
    let data = format!("data port {port} cannot be used");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec![
                "--nodes",
                "2",
                "--node-rank",
                "2",
                "--orchestrator",
                "127.0.0.1:1",
            ],
            "outside 0..2",
        ),
        (
            vec!["--nodes", "2", "--orchestrator", "127.0.0.1:1"],
            "needs --node-rank",
        ),
        (
            vec!["--nodes", "2", "--node-rank", "0"],
            "needs --orchestrator",
        ),
        (
            vec![
                "--nodes",
                "2",
                "--node-rank",
                "1",
                "--orchestrator",
                "nohost",
            ],
            "not HOST:PORT",
        ),
        (vec!["--node-rank", "1"], "without --nodes"),
        (
            vec![
                "--nodes",
                "2",
                "--node-rank",
                "0",
                "--orchestrator",
                &on_taken,
            ],
            &listen,
        ),
        (
            vec![
                "--nodes",
                "2",
                "--node-rank",
                "1",
                "--orchestrator",
                "127.0.0.1:1",
                "--node-port",
                &port,
            ],
            &data,
        ),
    ];
    for (args, expected) in cases {
        let out = Command::new(env!("CARGO_BIN_EXE_glm-train"))
            .args(["--config", path.to_str().expect("utf-8")])
            .args(["--out", dir.join("flags").to_str().expect("utf-8")])
            .args(["--quiet"])
            .args(&args)
            .env_remove("GLM_NNODES")
            .env_remove("NNODES")
            .output()
            .expect("run");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} was accepted");
        assert!(err.contains(expected), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
    drop(taken);
    let _ = std::fs::remove_dir_all(dir);
}

/// A node that stops answering without dying (SIGSTOP: its ports still accept connections) is
/// not waited for forever: the other node stops once `--collective-timeout` has passed.
#[test]
fn a_frozen_node_ends_the_job_at_the_timeout() {
    let dir = tmpdir("nodes-frozen");
    let config = base_config(&dir, 40);
    let path = write_config(&config, &dir.join("config.json"));
    let out = dir.join("job");
    let mut job = spawn_nodes(&[&path, &path], &out, &["--collective-timeout", "4"]);
    wait_for_checkpoint(&out);
    let frozen = job.child(1).id().to_string();
    let stopped = Command::new("kill")
        .args(["-STOP", &frozen])
        .status()
        .expect("kill -STOP");
    assert!(stopped.success());
    let frozen_at = Instant::now();
    let result = wait_ranks(&mut job, &[0]);
    let waited = frozen_at.elapsed();
    drop(job); // kills the frozen node
    let (ok, err) = &result[0];
    assert!(!ok, "node 0 went on without node 1: {err}");
    assert!(
        err.contains("no answer from the other nodes within 4 s"),
        "{err}"
    );
    assert!(
        waited >= Duration::from_secs(4) && waited < Duration::from_secs(40),
        "node 0 stopped after {waited:?}"
    );
    let _ = std::fs::remove_dir_all(dir);
}
