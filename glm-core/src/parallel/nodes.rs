//! Several processes (nodes, usually on several machines) working as one job, on burn-collective's
//! global mode: its orchestrator pairs the nodes up, its data service moves the tensors between
//! them (WebSocket), its ring all-reduce sums them. This module adds what a job needs around it:
//! the node's address, the orchestrator hosted by node 0, a handshake that checks every node
//! joined the same job, and a watchdog on every collective that turns a lost node into
//! [`Error::NodeLost`] naming it instead of a hang.
//!
//! ```no_run
//! use burn::backend::Flex;
//! use burn::tensor::Tensor;
//! use glm_core::parallel::{NodeGroup, NodeSpec};
//!
//! // On every machine, with its own rank: 2 nodes, node 0 hosts the orchestrator on port 29500.
//! let spec = NodeSpec::new(2, 0, "10.0.0.1:29500")?;
//! let device = Default::default();
//! let group = NodeGroup::<Flex>::join(spec, &[device], 0)?;
//! let summed = group.all_reduce_host(&[1.0, 2.0])?; // [2.0, 4.0] on both nodes
//! group.finish()?;
//! # Ok::<(), glm_core::Error>(())
//! ```

use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream, ToSocketAddrs, UdpSocket};
use std::panic::AssertUnwindSafe;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorPrimitive};
use burn_collective::{
    all_reduce, finish_collective, register, reset_collective, CollectiveConfig, PeerId,
    ReduceOperation,
};
use burn_communication::Address;

use crate::{Error, Result};

/// Environment variables read by [`NodeSpec::from_env`] (torchrun's names are the fallback).
pub const ENV_NODES: &str = "GLM_NNODES";
/// This node's rank, `0..nodes`.
pub const ENV_RANK: &str = "GLM_NODE_RANK";
/// `host:port` of the orchestrator (node 0 listens there).
pub const ENV_ORCHESTRATOR: &str = "GLM_ORCHESTRATOR";
/// The address other nodes reach this node at (default: the interface that routes to the
/// orchestrator).
pub const ENV_NODE_HOST: &str = "GLM_NODE_HOST";
/// The port of this node's tensor data service (default: a free one).
pub const ENV_NODE_PORT: &str = "GLM_NODE_PORT";
/// Seconds a collective may wait for the other nodes (default 600).
pub const ENV_TIMEOUT: &str = "GLM_COLLECTIVE_TIMEOUT";

/// Default for [`NodeSpec::timeout`]: a collective waits this long for the slowest node (its
/// step, validation or checkpoint) before the job is declared stuck.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);

/// How often a waiting collective checks that every peer still accepts connections.
const PROBE_EVERY: Duration = Duration::from_millis(250);
/// How long a failing node keeps its data port open, so the other nodes' probes see it alive
/// and name the node that was really lost.
const LINGER: Duration = Duration::from_secs(3);
/// How long a failed collective keeps probing for the node that caused it (less than [`LINGER`]).
const SETTLE: Duration = Duration::from_millis(1500);
/// Handshake slot: present, IPv4 (4), port, local devices, agreement (4 × 16 bits).
const SLOT: usize = 11;

/// Where this process stands in a multi-node job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSpec {
    /// Number of nodes (processes) in the job.
    pub nodes: u32,
    /// This node's rank, `0..nodes`; node 0 hosts the orchestrator.
    pub rank: u32,
    /// `host:port` of the orchestrator.
    pub orchestrator: String,
    /// The host (name or IPv4) the other nodes reach this node at; `None`: the local address of
    /// the interface that routes to the orchestrator.
    pub host: Option<String>,
    /// The port of this node's tensor data service; `None`: a free port.
    pub port: Option<u16>,
    /// How long a collective (and joining) may wait for the other nodes.
    pub timeout: Duration,
}

impl NodeSpec {
    /// A spec with the default host, port and timeout; checks `rank < nodes` and the form of
    /// `orchestrator` (`host:port`).
    pub fn new(nodes: u32, rank: u32, orchestrator: impl Into<String>) -> Result<Self> {
        let spec = Self {
            nodes,
            rank,
            orchestrator: orchestrator.into(),
            host: None,
            port: None,
            timeout: DEFAULT_TIMEOUT,
        };
        spec.validate()?;
        Ok(spec)
    }

    /// Checks the fields (a typed error naming the field).
    pub fn validate(&self) -> Result<()> {
        if self.nodes == 0 {
            return Err(Error::MultiNode("--nodes must be at least 1".into()));
        }
        if self.rank >= self.nodes {
            return Err(Error::MultiNode(format!(
                "--node-rank {} is outside 0..{} (--nodes {})",
                self.rank, self.nodes, self.nodes
            )));
        }
        orchestrator_port(&self.orchestrator)?;
        if self.timeout.is_zero() {
            return Err(Error::MultiNode(
                "the collective timeout must be > 0".into(),
            ));
        }
        Ok(())
    }

    /// The job described by the environment: `GLM_NNODES`, `GLM_NODE_RANK`, `GLM_ORCHESTRATOR`
    /// (or torchrun's `NNODES`, `NODE_RANK`, `MASTER_ADDR` + `MASTER_PORT`), and optionally
    /// `GLM_NODE_HOST`, `GLM_NODE_PORT`, `GLM_COLLECTIVE_TIMEOUT`. `None` when no node count is
    /// set; an error naming the variable when one is malformed or the set is incomplete.
    pub fn from_env() -> Result<Option<Self>> {
        Self::resolve(None, None, None)
    }

    /// The spec of command-line flags (each `None` when not given), the environment
    /// ([`NodeSpec::from_env`]) for what they leave out; `None` when neither gives a node count
    /// (then `host`, `port` and `timeout_s` must not be given either). `timeout_s` in seconds.
    pub fn from_flags(
        nodes: Option<u32>,
        rank: Option<u32>,
        orchestrator: Option<String>,
        host: Option<String>,
        port: Option<u16>,
        timeout_s: Option<f64>,
    ) -> Result<Option<Self>> {
        let Some(mut spec) = Self::resolve(nodes, rank, orchestrator)? else {
            if host.is_some() || port.is_some() || timeout_s.is_some() {
                return Err(Error::MultiNode(
                    "--node-host / --node-port / --collective-timeout given without --nodes".into(),
                ));
            }
            return Ok(None);
        };
        if host.is_some() {
            spec.host = host;
        }
        if port.is_some() {
            spec.port = port;
        }
        if let Some(t) = timeout_s {
            spec.timeout = Duration::try_from_secs_f64(t)
                .ok()
                .filter(|d| !d.is_zero())
                .ok_or_else(|| {
                    Error::MultiNode(format!(
                        "--collective-timeout {t} is not a positive number of seconds"
                    ))
                })?;
        }
        spec.validate()?;
        Ok(Some(spec))
    }

    /// Flags first, the environment ([`NodeSpec::from_env`]) for what they leave out. `None`
    /// when neither gives a node count.
    pub fn resolve(
        nodes: Option<u32>,
        rank: Option<u32>,
        orchestrator: Option<String>,
    ) -> Result<Option<Self>> {
        let nodes = match nodes {
            Some(n) => Some(n),
            None => env_parse::<u32>(&[ENV_NODES, "NNODES"])?,
        };
        let Some(nodes) = nodes else {
            if rank.is_some() || orchestrator.is_some() {
                return Err(Error::MultiNode(
                    "--node-rank / --orchestrator given without --nodes".into(),
                ));
            }
            return Ok(None);
        };
        let rank = match rank {
            Some(r) => r,
            None => env_parse::<u32>(&[ENV_RANK, "NODE_RANK"])?.ok_or_else(|| {
                Error::MultiNode(format!("--nodes {nodes} needs --node-rank (or {ENV_RANK})"))
            })?,
        };
        let orchestrator = match orchestrator {
            Some(o) => o,
            None => match env_string(ENV_ORCHESTRATOR) {
                Some(o) => o,
                None => match (env_string("MASTER_ADDR"), env_string("MASTER_PORT")) {
                    (Some(a), Some(p)) => format!("{a}:{p}"),
                    _ => {
                        return Err(Error::MultiNode(format!(
                            "--nodes {nodes} needs --orchestrator HOST:PORT (or \
                             {ENV_ORCHESTRATOR})"
                        )))
                    }
                },
            },
        };
        let mut spec = Self::new(nodes, rank, orchestrator)?;
        spec.host = env_string(ENV_NODE_HOST);
        spec.port = env_parse::<u16>(&[ENV_NODE_PORT])?;
        if let Some(s) = env_parse::<f64>(&[ENV_TIMEOUT])? {
            spec.timeout = Duration::try_from_secs_f64(s)
                .ok()
                .filter(|d| !d.is_zero())
                .ok_or_else(|| {
                    Error::MultiNode(format!("{ENV_TIMEOUT}={s} is not a positive duration"))
                })?;
        }
        Ok(Some(spec))
    }
}

fn env_string(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

fn env_parse<T: FromStr>(names: &[&str]) -> Result<Option<T>> {
    for name in names {
        if let Some(v) = env_string(name) {
            return v.trim().parse().map(Some).map_err(|_| {
                Error::MultiNode(format!("environment variable {name}={v:?} is not valid"))
            });
        }
    }
    Ok(None)
}

fn orchestrator_port(orchestrator: &str) -> Result<u16> {
    let bad = || {
        Error::MultiNode(format!(
            "--orchestrator {orchestrator:?} is not HOST:PORT (e.g. 10.0.0.1:29500)"
        ))
    };
    let (host, port) = orchestrator.rsplit_once(':').ok_or_else(bad)?;
    if host.is_empty() {
        return Err(bad());
    }
    port.parse::<u16>().ok().filter(|&p| p != 0).ok_or_else(bad)
}

fn ipv4_of(host: &str, port: u16) -> Result<Ipv4Addr> {
    let addrs = (host, port)
        .to_socket_addrs()
        .map_err(|e| Error::MultiNode(format!("cannot resolve node host {host:?}: {e}")))?;
    addrs
        .filter_map(|a| match a.ip() {
            IpAddr::V4(v4) => Some(v4),
            IpAddr::V6(_) => None,
        })
        .next()
        .ok_or_else(|| Error::MultiNode(format!("node host {host:?} has no IPv4 address")))
}

/// The local address of the interface that routes to `target` (no packet is sent).
fn route_to(target: SocketAddr) -> Result<Ipv4Addr> {
    let probe = UdpSocket::bind("0.0.0.0:0")
        .and_then(|s| s.connect(target).map(|()| s))
        .and_then(|s| s.local_addr())
        .map_err(|e| Error::MultiNode(format!("no route to the orchestrator {target}: {e}")))?;
    match probe.ip() {
        IpAddr::V4(v4) if !v4.is_unspecified() => Ok(v4),
        other => Err(Error::MultiNode(format!(
            "the route to the orchestrator {target} leaves from {other}: pass --node-host"
        ))),
    }
}

fn free_port() -> Result<u16> {
    TcpListener::bind("0.0.0.0:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| Error::MultiNode(format!("no free port for the data service: {e}")))
}

/// The orchestrator hosted by node 0: a thread running burn-collective's orchestrator until the
/// group is dropped.
struct Orchestrator {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Orchestrator {
    fn start(port: u16) -> Result<Self> {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (failed_tx, failed_rx) = mpsc::channel::<String>();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .map_err(|e| Error::MultiNode(format!("orchestrator runtime: {e}")))?;
        std::thread::Builder::new()
            .name("glm-orchestrator".into())
            .spawn(move || {
                let shutdown = async move {
                    let _ = stopped.await;
                };
                let served =
                    runtime.block_on(burn_collective::run_global_orchestrator(port, shutdown));
                if let Err(e) = served {
                    let _ = failed_tx.send(e);
                }
            })
            .map_err(|e| Error::MultiNode(format!("orchestrator thread: {e}")))?;
        // A taken port fails at once; a listening server says nothing.
        match failed_rx.recv_timeout(Duration::from_millis(300)) {
            Ok(reason) => Err(Error::MultiNode(format!(
                "the orchestrator cannot listen on port {port}: {reason}"
            ))),
            Err(_) => Ok(Self { stop: Some(stop) }),
        }
    }
}

impl Drop for Orchestrator {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// This process's membership in a multi-node job: one burn-collective peer per local device,
/// registered once with the job's orchestrator.
///
/// Every collective runs under a watchdog: while it waits, the other nodes' data ports are
/// probed; a node that no longer accepts connections (killed, crashed, its machine gone) ends the
/// collective with [`Error::NodeLost`] naming it, and a collective that gets no answer within
/// [`NodeSpec::timeout`] ends with [`Error::MultiNode`]. After a failure the group is unusable
/// (burn-collective's server cannot recover): the process should stop.
///
/// burn-collective keeps one server per backend type and process: while a group is joined, no
/// in-process data- or tensor-parallel run of the same backend may run in this process.
pub struct NodeGroup<B: Backend> {
    spec: NodeSpec,
    devices: Vec<B::Device>,
    peers: Vec<PeerId>,
    /// The data-service address of every node, by rank.
    addresses: Vec<SocketAddr>,
    failed: AtomicBool,
    _orchestrator: Option<Orchestrator>,
}

impl<B: Backend> std::fmt::Debug for NodeGroup<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeGroup")
            .field("spec", &self.spec)
            .field("local_devices", &self.devices.len())
            .field("addresses", &self.addresses)
            .finish()
    }
}

/// What one detached collective call sends back.
type Answer<T> = (usize, std::result::Result<T, String>);

impl<B: Backend> NodeGroup<B> {
    /// Joins the job: node 0 starts the orchestrator on the port of `spec.orchestrator`; every
    /// node registers one peer per entry of `devices` (every node must pass the same number) and
    /// waits (up to `spec.timeout`) for all `spec.nodes`; then a handshake exchanges the nodes'
    /// addresses and checks that every rank joined exactly once with the same `agreement` (a
    /// fingerprint of what must be equal on every node: configuration, resumed step, …).
    pub fn join(spec: NodeSpec, devices: &[B::Device], agreement: u64) -> Result<Self> {
        spec.validate()?;
        if devices.is_empty() {
            return Err(Error::MultiNode("no local device given".into()));
        }
        let orchestrator_port = orchestrator_port(&spec.orchestrator)?;
        let orchestrator_addr = (spec.orchestrator.as_str())
            .to_socket_addrs()
            .ok()
            .and_then(|mut a| a.find(SocketAddr::is_ipv4))
            .ok_or_else(|| {
                Error::MultiNode(format!(
                    "cannot resolve the orchestrator {:?} to an IPv4 address",
                    spec.orchestrator
                ))
            })?;
        let port = match spec.port {
            Some(p) => p,
            None => free_port()?,
        };
        // burn-collective's data server binds it in the background and cannot report a failure:
        // a taken port would only show later, as this node "lost" by the others.
        if let Err(e) = TcpListener::bind(("0.0.0.0", port)) {
            return Err(Error::MultiNode(format!(
                "this node's data port {port} cannot be used (--node-port): {e}"
            )));
        }
        let host = match &spec.host {
            Some(h) => ipv4_of(h, port)?,
            None => route_to(orchestrator_addr)?,
        };
        let orchestrator = if spec.rank == 0 {
            Some(Orchestrator::start(orchestrator_port)?)
        } else {
            None
        };
        let address = |s: String| {
            Address::from_str(&s).map_err(|e| Error::MultiNode(format!("address {s}: {e}")))
        };
        let config = CollectiveConfig::default()
            .with_num_devices(devices.len())
            .with_num_nodes(spec.nodes)
            .with_global_address(address(format!("ws://{orchestrator_addr}"))?)
            .with_node_address(address(format!("ws://{host}:{port}"))?)
            .with_data_service_port(port);
        let peers: Vec<PeerId> = (0..devices.len()).map(|i| PeerId::from(i as u32)).collect();
        reset_collective::<B>();
        let mut group = Self {
            spec,
            devices: devices.to_vec(),
            peers,
            addresses: Vec::new(),
            failed: AtomicBool::new(false),
            _orchestrator: orchestrator,
        };
        let registering: Vec<(PeerId, B::Device)> = group
            .peers
            .iter()
            .copied()
            .zip(group.devices.iter().cloned())
            .collect();
        group.detached("joining the job", registering, move |(peer, device)| {
            register::<B>(peer, device, config.clone()).map_err(|e| format!("{e:?}"))
        })?;
        group.handshake(host, port, agreement)?;
        Ok(group)
    }

    /// The spec this node joined with.
    pub fn spec(&self) -> &NodeSpec {
        &self.spec
    }

    /// This node's rank.
    pub fn rank(&self) -> u32 {
        self.spec.rank
    }

    /// Number of nodes.
    pub fn nodes(&self) -> u32 {
        self.spec.nodes
    }

    /// The data-service address of every node, by rank.
    pub fn addresses(&self) -> &[SocketAddr] {
        &self.addresses
    }

    fn handshake(&mut self, host: Ipv4Addr, port: u16, agreement: u64) -> Result<()> {
        let nodes = self.spec.nodes as usize;
        let rank = self.spec.rank as usize;
        let mut slots = vec![0f32; nodes * SLOT];
        let mine = &mut slots[rank * SLOT..(rank + 1) * SLOT];
        mine[0] = 1.0;
        for (d, o) in mine[1..5].iter_mut().zip(host.octets()) {
            *d = o as f32;
        }
        mine[5] = port as f32;
        mine[6] = self.devices.len() as f32;
        for (i, d) in mine[7..11].iter_mut().enumerate() {
            *d = ((agreement >> (16 * i)) & 0xFFFF) as f32;
        }
        let all = self.all_reduce_host(&slots)?;
        let mut addresses = Vec::with_capacity(nodes);
        for (r, slot) in all.chunks_exact(SLOT).enumerate() {
            if slot[0] != 1.0 {
                return Err(Error::MultiNode(format!(
                    "{} nodes joined with --node-rank {r} (each rank must join once)",
                    slot[0]
                )));
            }
            let o: Vec<u8> = slot[1..5].iter().map(|&v| v as u8).collect();
            let ip = Ipv4Addr::new(o[0], o[1], o[2], o[3]);
            addresses.push(SocketAddr::new(IpAddr::V4(ip), slot[5] as u16));
            if slot[6] as usize != self.devices.len() {
                return Err(Error::MultiNode(format!(
                    "node {r} has {} local devices, node {rank} has {}: every node must run \
                     the same number of replicas",
                    slot[6],
                    self.devices.len()
                )));
            }
            let theirs = slot[7..11]
                .iter()
                .enumerate()
                .fold(0u64, |a, (i, &v)| a | ((v as u64) << (16 * i)));
            if theirs != agreement {
                return Err(Error::MultiNode(format!(
                    "node {r} joined a different job than node {rank} (configuration, data or \
                     resumed checkpoint differ: fingerprint {theirs:016x} vs {agreement:016x})"
                )));
            }
        }
        self.addresses = addresses;
        Ok(())
    }

    /// Sums one tensor per local device (in `devices` order) over every device of every node;
    /// returns the sum on each local device.
    ///
    /// # Shapes
    /// Every tensor, on every node, has the same shape; the results have it too.
    pub fn all_reduce(
        &self,
        tensors: Vec<B::FloatTensorPrimitive>,
    ) -> Result<Vec<B::FloatTensorPrimitive>> {
        if tensors.len() != self.peers.len() {
            return Err(Error::MultiNode(format!(
                "{} tensors given for {} local devices",
                tensors.len(),
                self.peers.len()
            )));
        }
        let work: Vec<(PeerId, B::FloatTensorPrimitive)> =
            self.peers.iter().copied().zip(tensors).collect();
        self.detached("all-reduce", work, |(peer, t)| {
            all_reduce::<B>(peer, t, ReduceOperation::Sum).map_err(|e| format!("{e:?}"))
        })
    }

    /// Sums `values` over the nodes (each node contributes its `values` once, whatever its number
    /// of local devices); every node gets the sum. Doubles as a barrier.
    ///
    /// # Shapes
    /// `values` has the same length on every node (at least [`NodeGroup::nodes`]: burn-collective's
    /// ring splits it into one slice per node; shorter inputs are padded here).
    pub fn all_reduce_host(&self, values: &[f32]) -> Result<Vec<f32>> {
        let len = values.len().max(self.spec.nodes as usize);
        let mut padded = values.to_vec();
        padded.resize(len, 0.0);
        let tensors = self
            .devices
            .iter()
            .enumerate()
            .map(|(i, d)| {
                let t = if i == 0 {
                    Tensor::<B, 1>::from_floats(padded.as_slice(), d)
                } else {
                    Tensor::<B, 1>::zeros([len], d)
                };
                t.into_primitive().tensor()
            })
            .collect();
        let summed = self.all_reduce(tensors)?;
        let first = summed
            .into_iter()
            .next()
            .ok_or_else(|| Error::MultiNode("no all-reduce result".into()))?;
        let data = Tensor::<B, 1>::from_primitive(TensorPrimitive::Float(first)).into_data();
        let mut out: Vec<f32> = data
            .convert::<f32>()
            .to_vec()
            .map_err(|e| Error::MultiNode(format!("all-reduce result: {e:?}")))?;
        out.truncate(values.len());
        Ok(out)
    }

    /// Leaves the job: a barrier (every node reached its end), then unregisters. Errors of the
    /// unregistering (a node that already left took the orchestrator with it) are ignored.
    pub fn finish(self) -> Result<()> {
        self.all_reduce_host(&[0.0])?;
        let (tx, rx) = mpsc::channel();
        for &peer in &self.peers {
            let tx = tx.clone();
            std::thread::spawn(move || {
                let _ = tx.send(finish_collective::<B>(peer).is_ok());
            });
        }
        drop(tx);
        let deadline = Instant::now() + Duration::from_secs(5);
        for _ in &self.peers {
            let left = deadline.saturating_duration_since(Instant::now());
            if rx.recv_timeout(left).is_err() {
                break;
            }
        }
        if self.spec.rank == 0 {
            // Node 0 hosts the orchestrator: keep it until the other nodes have unregistered and
            // gone (their data ports close when they exit), or they would lose it mid-finish.
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline && self.unreachable().len() + 1 < self.addresses.len() {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Ok(())
    }

    /// The nodes (rank, address) that refuse connections now.
    fn unreachable(&self) -> Vec<(u32, SocketAddr)> {
        let me = self.spec.rank as usize;
        self.addresses
            .iter()
            .enumerate()
            .filter(|&(r, _)| r != me)
            .filter(|(_, a)| TcpStream::connect_timeout(a, Duration::from_secs(1)).is_err())
            .map(|(r, a)| (r as u32, *a))
            .collect()
    }

    /// Runs `call` on every item, each on its own detached thread (a call stuck on a lost peer
    /// must not hold this thread), and waits for all answers under the watchdog.
    fn detached<I, T, F>(&self, what: &str, items: Vec<I>, call: F) -> Result<Vec<T>>
    where
        I: Send + 'static,
        T: Send + 'static,
        F: Fn(I) -> std::result::Result<T, String> + Send + Sync + Clone + 'static,
    {
        if self.failed.load(Ordering::SeqCst) {
            return Err(Error::MultiNode(
                "an earlier collective of this node group failed".into(),
            ));
        }
        let n = items.len();
        let (tx, rx) = mpsc::channel::<Answer<T>>();
        for (i, item) in items.into_iter().enumerate() {
            let tx = tx.clone();
            let call = call.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("glm-collective-{i}"))
                .spawn(move || {
                    let answer = std::panic::catch_unwind(AssertUnwindSafe(|| call(item)))
                        .unwrap_or_else(|p| Err(crate::parallel::panic_message(p.as_ref())));
                    let _ = tx.send((i, answer));
                });
            if let Err(e) = spawned {
                return Err(self.fail(format!("{what}: cannot start a thread: {e}")));
            }
        }
        drop(tx);
        let start = Instant::now();
        let mut answers: Vec<Option<T>> = (0..n).map(|_| None).collect();
        let mut got = 0;
        while got < n {
            match rx.recv_timeout(PROBE_EVERY) {
                Ok((i, Ok(t))) => {
                    if let Some(slot) = answers.get_mut(i) {
                        *slot = Some(t);
                    }
                    got += 1;
                }
                Ok((i, Err(reason))) => {
                    return Err(self.fail(format!("{what} (local device {i}): {reason}")));
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(self.fail(format!("{what}: a collective thread vanished")));
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    let waited = start.elapsed();
                    if let Some(lost) = self.unreachable().first() {
                        return Err(
                            self.lost(*lost, format!("{what}: it stopped accepting connections"))
                        );
                    }
                    if waited >= self.spec.timeout {
                        return Err(self.fail(format!(
                            "{what}: no answer from the other nodes within {:.0} s \
                             (--collective-timeout)",
                            self.spec.timeout.as_secs_f64()
                        )));
                    }
                }
            }
        }
        Ok(answers.into_iter().flatten().collect())
    }

    fn lost(&self, (node, address): (u32, SocketAddr), reason: String) -> Error {
        self.failed.store(true, Ordering::SeqCst);
        std::thread::sleep(LINGER);
        Error::NodeLost {
            node,
            address: address.to_string(),
            reason,
        }
    }

    /// Marks the group failed and names the lost node when a peer is unreachable.
    ///
    /// A dying process may break its connections a moment before its listening port closes:
    /// the peers are probed for [`SETTLE`] before the failure is left unattributed.
    fn fail(&self, reason: String) -> Error {
        self.failed.store(true, Ordering::SeqCst);
        let start = Instant::now();
        loop {
            if let Some(&lost) = self.unreachable().first() {
                return self.lost(lost, reason);
            }
            if start.elapsed() >= SETTLE {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        std::thread::sleep(LINGER.saturating_sub(SETTLE));
        Error::MultiNode(reason)
    }
}

/// The flags that make a process one node of a multi-node job (docs/distributed.md); each falls
/// back to its environment variable (`GLM_NNODES`, `GLM_NODE_RANK`, `GLM_ORCHESTRATOR`, … or
/// torchrun's `NNODES`, `NODE_RANK`, `MASTER_ADDR`/`MASTER_PORT`).
#[cfg(feature = "cli")]
#[derive(clap::Args, Debug, Clone, Default)]
pub struct NodeFlags {
    /// Number of nodes (processes) of the job.
    #[arg(long)]
    pub nodes: Option<u32>,
    /// This node's rank, 0..NODES; node 0 hosts the orchestrator and writes the output.
    #[arg(long)]
    pub node_rank: Option<u32>,
    /// HOST:PORT of the orchestrator (node 0).
    #[arg(long)]
    pub orchestrator: Option<String>,
    /// The address the other nodes reach this node at (default: the interface that routes to
    /// the orchestrator).
    #[arg(long)]
    pub node_host: Option<String>,
    /// Port of this node's tensor data service (default: a free port).
    #[arg(long)]
    pub node_port: Option<u16>,
    /// Seconds a collective waits for the other nodes (default 600); a dead node is reported at
    /// once.
    #[arg(long)]
    pub collective_timeout: Option<f64>,
}

#[cfg(feature = "cli")]
impl NodeFlags {
    /// The job these flags (and the environment) describe; `None`: a single process.
    pub fn spec(&self) -> Result<Option<NodeSpec>> {
        NodeSpec::from_flags(
            self.nodes,
            self.node_rank,
            self.orchestrator.clone(),
            self.node_host.clone(),
            self.node_port,
            self.collective_timeout,
        )
    }
}

/// A fingerprint for [`NodeGroup::join`]'s `agreement` (64-bit FNV-1a of `bytes`): hash what
/// must be equal on every node (configuration, data, resumed step…).
pub fn agreement(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Makes a panic on one of burn-collective's runtime threads (`tokio-rt-worker`: its server and
/// transfers panic when a peer vanishes) print one line instead of a message with a backtrace;
/// other threads keep the previous hook. For binaries: the collective's failure reaches the
/// caller as a typed error ([`Error::NodeLost`]) anyway.
pub fn quiet_collective_panics() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let thread = std::thread::current();
        if thread.name() == Some("tokio-rt-worker") {
            let at = info
                .location()
                .map(|l| format!(" at {}:{}", l.file(), l.line()))
                .unwrap_or_default();
            eprintln!(
                "(collective worker{at}: {})",
                crate::parallel::panic_message(info.payload())
            );
        } else {
            previous(info);
        }
    }));
}
