//! What the benchmarks need: a fresh RabbitMQ vhost on the local broker, a private
//! `redis-server` (the library's harness, as the tests and the local runtime use it), the
//! cluster's keys, and child processes; all gone when [`Services`] is dropped.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::Instant;
use time_sync::cache::RedisStore;
use time_sync::keys::{self, ClusterKeys};
use time_sync::runtime::services::{Process, RabbitNode, RedisServer, Vhost};
use tokio_util::sync::CancellationToken;

/// The number after `name` on the command line (`-- --seconds 5`), or `default`.
pub fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A vhost, a Redis, and processes; processes go first, last started first.
pub struct Services {
    pub procs: Vec<Process>,
    pub redis: RedisServer,
    pub vhost: Vhost,
    /// The cluster's keys: servers get the server set ([`Services::server_keys`]), each client
    /// its own ([`Services::client_keys`]).
    pub keys: ClusterKeys,
    dir: PathBuf,
    /// A RabbitMQ cluster of the benchmark's own ([`Services::start_cluster`]), dropped after
    /// the vhost on it; empty: the vhost is on the machine's broker.
    pub nodes: Vec<RabbitNode>,
}

impl Services {
    pub fn start(prefix: &str) -> Services {
        let dir = Self::new_dir(prefix);
        let vhost = Vhost::create(prefix)
            .expect("a vhost (RabbitMQ must be running locally; scripts/setup.sh starts it)");
        Self::with(dir, vhost, vec![])
    }

    /// As [`Services::start`], on a RabbitMQ cluster of `n` nodes of its own (local nodes,
    /// joined to the first, as `tsc bootstrap --brokers N` makes them; run as root). The vhost
    /// is on the first node, and so is every queue the benchmark declares.
    pub async fn start_cluster(prefix: &str, n: usize) -> Services {
        let dir = Self::new_dir(prefix);
        let mut nodes = Vec::new();
        for i in 0..n {
            let node = RabbitNode::start(&dir.join(format!("node-{i}")))
                .await
                .expect("a RabbitMQ node of the benchmark's own starts (run as root)");
            nodes.push(node);
        }
        for node in &nodes[1..] {
            node.join(&nodes[0]).expect("the node joins the first");
        }
        let vhost = nodes[0].vhost(prefix).expect("a vhost on the cluster");
        Self::with(dir, vhost, nodes)
    }

    fn new_dir(prefix: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("{prefix}-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn with(dir: PathBuf, vhost: Vhost, nodes: Vec<RabbitNode>) -> Services {
        let redis = RedisServer::start(&dir, None).expect("redis-server starts");
        let keys = ClusterKeys::generate("bench-operator-token");
        keys::write_ring(&dir.join("keys").join("server"), &keys.server_ring()).unwrap();
        Services {
            procs: Vec::new(),
            redis,
            vhost,
            keys,
            dir,
            nodes,
        }
    }

    /// The broker's Erlang VMs: the cluster's nodes, or the machine's broker.
    pub fn broker_pids(&self) -> Vec<u32> {
        if self.nodes.is_empty() {
            vec![broker_pid().expect("RabbitMQ's beam.smp runs")]
        } else {
            self.nodes
                .iter()
                .map(|n| n.vm_pid().expect("the node's VM runs"))
                .collect()
        }
    }

    /// The servers' key directory (`--key-dir`).
    pub fn server_keys(&self) -> String {
        self.dir.join("keys").join("server").display().to_string()
    }

    /// Client `id`'s key directory (`--key-dir`), written on first use.
    pub fn client_keys(&self, id: uuid::Uuid) -> String {
        let dir = self.dir.join("keys").join(id.to_string());
        time_sync::runtime::write_node_ring(&self.keys, &id.to_string(), &dir).unwrap();
        dir.display().to_string()
    }

    /// A `ts-server`'s flags for these services, with TTL `ttl_s` and `extra` flags.
    pub fn server_args(&self, ttl_s: u64, extra: &[&str]) -> Vec<String> {
        let mut args: Vec<String> = [
            "--amqp-url",
            &self.amqp_url(),
            "--redis-url",
            &self.redis_url(),
            "--no-log-file",
            "--ttl",
            &ttl_s.to_string(),
            "--key-dir",
            &self.server_keys(),
        ]
        .map(String::from)
        .to_vec();
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    }

    /// Where the processes' output goes (`proc-<n>.out`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Keeps the processes' output after the run (for a failure to point at).
    pub fn keep_logs(&mut self) -> PathBuf {
        let kept =
            std::env::temp_dir().join(format!("ts-bench-logs-{}", uuid::Uuid::new_v4().simple()));
        let _ = std::fs::rename(&self.dir, &kept);
        kept
    }

    pub fn amqp_url(&self) -> String {
        self.vhost.url()
    }

    pub fn redis_url(&self) -> String {
        self.redis.url()
    }

    pub async fn store(&self) -> RedisStore {
        RedisStore::connect(&self.redis_url(), &CancellationToken::new())
            .await
            .unwrap()
            .expect("redis answers")
    }

    /// Starts `bin` quietly (`RUST_LOG=warn`); returns its index.
    pub fn spawn(&mut self, bin: &str, args: &[String]) -> usize {
        let n = self.procs.len();
        let log = self.dir.join(format!("proc-{n}.out"));
        let env = [("RUST_LOG".to_string(), "warn".to_string())];
        let p = Process::spawn(bin, Path::new(bin), args, &env, &log)
            .unwrap_or_else(|e| panic!("{bin}: {e}"));
        self.procs.push(p);
        n
    }

    pub fn kill(&mut self, idx: usize) {
        self.procs[idx].kill();
    }
}

impl Drop for Services {
    fn drop(&mut self) {
        while let Some(mut p) = self.procs.pop() {
            p.kill();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// CPU time (user + system) a process has used so far, in seconds.
pub fn cpu_s(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start at "state" (field 3).
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15: 11 and 12 after "state".
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (ticks(11) + ticks(12)) / hz
}

/// Resident memory of a process (MB).
pub fn rss_mb(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// The machine's RabbitMQ (its Erlang VM).
pub fn broker_pid() -> Option<u32> {
    let out = std::process::Command::new("pgrep")
        .args(["-o", "beam.smp"])
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

/// CPU used by each of `pids` between two readings, in cores.
pub struct Cpu {
    at: Instant,
    used: Vec<f64>,
}

impl Cpu {
    pub fn read(pids: &[u32]) -> Cpu {
        Cpu {
            at: Instant::now(),
            used: pids.iter().map(|p| cpu_s(*p)).collect(),
        }
    }

    pub fn since(&self, earlier: &Cpu) -> Vec<f64> {
        let dt = (self.at - earlier.at).as_secs_f64();
        self.used
            .iter()
            .zip(&earlier.used)
            .map(|(a, b)| (a - b) / dt)
            .collect()
    }
}
