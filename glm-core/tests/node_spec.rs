//! `NodeSpec`: the multi-node flags and their environment variables (torchrun's names as the
//! fallback), every malformed value a typed error naming the flag or variable. One test: the
//! environment is process-wide.

use std::time::Duration;

use glm_core::parallel::nodes::{self, NodeSpec, DEFAULT_TIMEOUT};

const VARS: [&str; 9] = [
    nodes::ENV_NODES,
    nodes::ENV_RANK,
    nodes::ENV_ORCHESTRATOR,
    nodes::ENV_NODE_HOST,
    nodes::ENV_NODE_PORT,
    nodes::ENV_TIMEOUT,
    "NNODES",
    "NODE_RANK",
    "MASTER_ADDR",
];

fn clear() {
    for v in VARS.iter().chain(&["MASTER_PORT"]) {
        std::env::remove_var(v);
    }
}

fn err(r: glm_core::Result<Option<NodeSpec>>) -> String {
    match r {
        Ok(s) => panic!("accepted: {s:?}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn flags_and_environment() {
    clear();
    // Nothing given: a single process.
    assert_eq!(NodeSpec::from_env().unwrap(), None);
    assert_eq!(
        NodeSpec::from_flags(None, None, None, None, None, None).unwrap(),
        None
    );

    // Flags.
    let spec = NodeSpec::from_flags(
        Some(3),
        Some(2),
        Some("10.1.2.3:29500".into()),
        Some("10.1.2.5".into()),
        Some(29601),
        Some(12.5),
    )
    .unwrap()
    .unwrap();
    assert_eq!(
        spec,
        NodeSpec {
            nodes: 3,
            rank: 2,
            orchestrator: "10.1.2.3:29500".into(),
            host: Some("10.1.2.5".into()),
            port: Some(29601),
            timeout: Duration::from_millis(12_500),
        }
    );

    // Bad flags.
    let o = || Some("h:1".to_string());
    assert!(err(NodeSpec::from_flags(
        Some(2),
        Some(2),
        o(),
        None,
        None,
        None
    ))
    .contains("outside 0..2"));
    assert!(err(NodeSpec::from_flags(
        Some(0),
        Some(0),
        o(),
        None,
        None,
        None
    ))
    .contains("at least 1"));
    assert!(
        err(NodeSpec::from_flags(Some(2), None, o(), None, None, None)).contains("--node-rank")
    );
    assert!(err(NodeSpec::from_flags(
        Some(2),
        Some(0),
        None,
        None,
        None,
        None
    ))
    .contains("--orchestrator"));
    for bad in ["nohost", ":29500", "h:0", "h:70000", "h:x"] {
        let e = err(NodeSpec::from_flags(
            Some(2),
            Some(0),
            Some(bad.into()),
            None,
            None,
            None,
        ));
        assert!(e.contains("not HOST:PORT") && e.contains(bad), "{bad}: {e}");
    }
    assert!(err(NodeSpec::from_flags(
        Some(2),
        Some(0),
        o(),
        None,
        None,
        Some(0.0)
    ))
    .contains("--collective-timeout"));
    assert!(err(NodeSpec::from_flags(
        Some(2),
        Some(0),
        o(),
        None,
        None,
        Some(f64::NAN)
    ))
    .contains("--collective-timeout"));
    assert!(
        err(NodeSpec::from_flags(None, Some(1), None, None, None, None))
            .contains("without --nodes")
    );
    assert!(
        err(NodeSpec::from_flags(None, None, None, None, Some(1), None))
            .contains("without --nodes")
    );

    // The environment, GLM_* names.
    std::env::set_var(nodes::ENV_NODES, "2");
    std::env::set_var(nodes::ENV_RANK, "1");
    std::env::set_var(nodes::ENV_ORCHESTRATOR, "127.0.0.1:29400");
    std::env::set_var(nodes::ENV_TIMEOUT, "30");
    let spec = NodeSpec::from_env().unwrap().unwrap();
    assert_eq!((spec.nodes, spec.rank), (2, 1));
    assert_eq!(spec.orchestrator, "127.0.0.1:29400");
    assert_eq!(spec.timeout, Duration::from_secs(30));
    assert_eq!((spec.host, spec.port), (None, None));
    // Flags win over the environment.
    let spec = NodeSpec::from_flags(Some(4), Some(3), None, None, None, None)
        .unwrap()
        .unwrap();
    assert_eq!((spec.nodes, spec.rank), (4, 3));
    assert_eq!(spec.orchestrator, "127.0.0.1:29400");
    std::env::set_var(nodes::ENV_NODE_PORT, "port");
    assert!(err(NodeSpec::from_env()).contains(nodes::ENV_NODE_PORT));
    std::env::remove_var(nodes::ENV_NODE_PORT);
    std::env::set_var(nodes::ENV_TIMEOUT, "-1");
    assert!(err(NodeSpec::from_env()).contains(nodes::ENV_TIMEOUT));
    clear();

    // torchrun's names.
    std::env::set_var("NNODES", "2");
    std::env::set_var("NODE_RANK", "0");
    std::env::set_var("MASTER_ADDR", "10.0.0.1");
    std::env::set_var("MASTER_PORT", "29500");
    let spec = NodeSpec::from_env().unwrap().unwrap();
    assert_eq!((spec.nodes, spec.rank), (2, 0));
    assert_eq!(spec.orchestrator, "10.0.0.1:29500");
    assert_eq!(spec.timeout, DEFAULT_TIMEOUT);
    std::env::set_var("NODE_RANK", "first");
    assert!(err(NodeSpec::from_env()).contains("NODE_RANK"));
    clear();
}
