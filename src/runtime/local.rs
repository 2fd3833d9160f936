//! The local runtime: nodes are processes on this machine, told apart by loopback addresses.
//!
//! For machines without Docker (and for fast tests). Clients advertise `127.0.0.20`,
//! `127.0.0.21`, … (lowest free first); the server and services listen on `127.0.0.1`. Redis is
//! a private `redis-server` on a free port with the cluster's password (with replicas and
//! Sentinels, more of them: [`super::redis`]); RabbitMQ is the local
//! broker (started if it is not running, and then stopped again by teardown) with a vhost and a
//! user of the cluster's own, so several local clusters can share one broker. Processes are
//! recorded in `state.json`; a PID counts as ours only while the process still is the node (its
//! `TS_*` identity, or for Redis its command line), so a reused PID is never signalled.

use super::cluster::{ClusterConfig, LocalNode, State};
use super::node::{next_free_ip, server_host, server_node_id, Node, Role, SwarmSpan, CLIENT_HOSTS};
use super::services::{
    apply_broker_setup, broker_setup, feed_stdin, node_pid, port_open, rabbitmqctl,
    rabbitmqctl_input, stdin_for, wait_port, BrokerRole, RABBITMQ_PORT, RABBIT_START_TIMEOUT,
};
use super::{
    broker_users, client_env, declare_topology, images, remove_node_keys, server_env, swarm_env,
    write_node_keys, Endpoints, Progress,
};
use crate::error::{Error, Result};
use crate::settings::ServerSettings;
use std::net::{IpAddr, Ipv4Addr};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};
use uuid::Uuid;

/// How long a node gets to exit after SIGTERM before SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(10);
const LOOPBACK: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 0);

/// Local processes of one cluster.
pub struct LocalRuntime {
    pub(super) cfg: ClusterConfig,
}

impl LocalRuntime {
    pub fn new(cfg: &ClusterConfig) -> Self {
        LocalRuntime { cfg: cfg.clone() }
    }

    pub(super) fn vhost(&self) -> String {
        format!("tsc-{}", self.cfg.cluster_id)
    }

    /// The cluster's broker users on the shared broker: named after the cluster too, so that
    /// several local clusters can share it.
    pub(super) fn users(&self) -> Vec<(String, String, BrokerRole)> {
        broker_users(&self.cfg, &format!("-{}", self.cfg.cluster_id))
    }

    pub fn endpoints(&self, state: &State) -> Endpoints {
        let redis = self
            .redis_addrs(state)
            .url(&self.cfg.credentials.redis_password);
        let brokers = self.broker_addrs(state);
        let url = |role: BrokerRole| {
            let (user, pass, _) = self
                .users()
                .into_iter()
                .find(|(_, _, r)| *r == role)
                .expect("a user per role");
            let vhost = self.vhost();
            let nodes: Vec<String> = brokers
                .iter()
                .map(|(at, _)| format!("amqp://{user}:{pass}@{at}/{vhost}"))
                .collect();
            nodes.join(",")
        };
        Endpoints {
            client_amqp_url: url(BrokerRole::Client),
            server_amqp_url: url(BrokerRole::Server),
            operator_amqp_url: url(BrokerRole::Operator),
            redis_url: redis,
            queue_type: state.queue_type(),
        }
    }

    pub fn nodes(&self, state: &State) -> Vec<Node> {
        let mut nodes: Vec<Node> = state
            .local
            .nodes
            .iter()
            .map(|n| Node {
                role: n.role,
                id: n.id.clone(),
                ip: n.ip,
                state: match (alive(n), stopped(n)) {
                    (false, _) => "exited",
                    (true, true) => "paused",
                    (true, false) => "running",
                }
                .into(),
                handle: format!("pid {}", n.pid),
                // Its clients' ids are added from its key directory (Runtime::nodes).
                swarm: (n.role == Role::Swarm)
                    .then(|| env_of(n, "TS_SWARM_IP_BASE")?.parse().ok())
                    .flatten()
                    .map(|first| SwarmSpan::new(first, Vec::new())),
            })
            .collect();
        if state.runtime.is_some() && state.local.broker_nodes.is_empty() {
            let up = port_open(IpAddr::V4(Ipv4Addr::LOCALHOST), RABBITMQ_PORT);
            nodes.push(Node {
                role: Role::Rabbitmq,
                id: "rabbitmq".into(),
                ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
                state: if up { "running" } else { "exited" }.into(),
                handle: format!("vhost {}", self.vhost()),
                swarm: None,
            });
        }
        nodes.sort_by_key(|n| (n.role as u8, crate::core::master_election::ip_rank(&n.ip)));
        nodes
    }

    fn log_path(&self, name: &str) -> PathBuf {
        self.cfg.home.join("local").join(format!("{name}.out"))
    }

    /// Starts a detached process (own process group: a ctrl-c at tsc's terminal does not reach
    /// it) with `env` added to its environment and stdout/stderr in `home/local/<name>.out`.
    pub(super) fn spawn(
        &self,
        name: &str,
        program: &std::path::Path,
        args: &[String],
        env: &[(String, String)],
        input: Option<&str>,
    ) -> Result<u32> {
        let log = self.log_path(name);
        if let Some(dir) = log.parent() {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        }
        let out = std::fs::File::create(&log).map_err(|e| Error::io(&log, e))?;
        let err = out.try_clone().map_err(|e| Error::io(&log, e))?;
        let mut cmd = Command::new(program);
        // Only the settings given here: none leaks in from tsc's own environment.
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("TS_") {
                cmd.env_remove(k);
            }
        }
        let mut child = cmd
            .args(args)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(stdin_for(input))
            .stdout(out)
            .stderr(err)
            .process_group(0)
            .spawn()
            .map_err(|e| Error::io(program, e))?;
        feed_stdin(&mut child, input).map_err(|e| Error::io(program, e))?;
        Ok(child.id())
    }

    /// Starts the local RabbitMQ if it does not run, with the cluster's vhost and users.
    pub async fn start_broker(&self, state: &mut State, p: Progress<'_>) -> Result<()> {
        let lo = IpAddr::V4(Ipv4Addr::LOCALHOST);
        if !port_open(lo, RABBITMQ_PORT) {
            p("Starting local RabbitMQ (rabbitmq-server -detached)..");
            let out = Command::new("rabbitmq-server")
                .arg("-detached")
                .output()
                .map_err(|e| Error::Runtime(format!("cannot run rabbitmq-server: {e}")))?;
            if !out.status.success() {
                return Err(Error::Runtime(format!(
                    "rabbitmq-server -detached failed: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                )));
            }
            state.local.started_rabbitmq = true;
        }
        wait_port("rabbitmq", lo, RABBITMQ_PORT, p).await?;
        let _ = rabbitmqctl(None, &["-q", "await_startup"]);
        let vhost = self.vhost();
        let setup = broker_setup(&vhost, &self.users());
        apply_broker_setup(setup, |cmd| async move {
            let args: Vec<&str> = std::iter::once("-q")
                .chain(cmd.args.iter().map(String::as_str))
                .collect();
            rabbitmqctl_input(None, &args, cmd.input.as_deref())
        })
        .await?;
        declare_topology(&self.endpoints(state)).await?;
        p(&format!(
            "RabbitMQ vhost {vhost} ready for its client, server and operator users"
        ));
        Ok(())
    }

    /// Starts replica `replica` on its own loopback address (`127.0.0.10` for 1), where its
    /// HTTP API listens.
    pub fn start_server(
        &self,
        state: &mut State,
        ep: &Endpoints,
        settings: &ServerSettings,
        replica: u64,
    ) -> Result<Node> {
        let host = server_host(replica)?;
        let ip = Ipv4Addr::new(127, 0, 0, host);
        // Any free port: clusters on one host share the loopback addresses of their replicas,
        // so a fixed port would keep a second cluster's replica 1 from starting. The address
        // picked is published in the replica's record, where tsc finds it.
        let http = std::net::SocketAddr::new(ip.into(), 0);
        let node = server_node_id(replica);
        let keys = write_node_keys(&self.cfg, &node)?;
        let env = server_env(&self.cfg, ep, settings, replica, http, &keys);
        self.launch(state, Role::Server, node, ip.into(), "ts-server", env)
    }

    /// A lone client on its own loopback address, not in `taken` (the nodes', and a swarm's
    /// clients').
    pub fn start_client(
        &self,
        state: &mut State,
        ep: &Endpoints,
        id: Uuid,
        taken: &[IpAddr],
    ) -> Result<Node> {
        let ip = next_free_ip(LOOPBACK, CLIENT_HOSTS.0, CLIENT_HOSTS.1, taken)
            .ok_or_else(|| Error::Runtime("no free loopback address for a client".into()))?;
        let keys = write_node_keys(&self.cfg, &id.to_string())?;
        let env = client_env(&self.cfg, ep, id, Some(ip), &keys);
        self.launch(state, Role::Client, id.to_string(), ip, "ts-client", env)
    }

    /// A swarm's process. It needs no address of its own (it serves no NTP): the node's is
    /// its first client's. Its key directory (`swarm.keys`) is already written.
    pub fn start_swarm(
        &self,
        state: &mut State,
        ep: &Endpoints,
        id: &str,
        n: usize,
        first: Ipv4Addr,
    ) -> Result<Node> {
        let keys = self.cfg.node_keys_dir(id);
        let env = swarm_env(&self.cfg, ep, n, first, &keys);
        self.launch(
            state,
            Role::Swarm,
            id.into(),
            first.into(),
            "ts-client",
            env,
        )
    }

    /// Starts one of our binaries with its settings as `TS_*` variables, and records it.
    fn launch(
        &self,
        state: &mut State,
        role: Role,
        id: String,
        ip: IpAddr,
        binary: &str,
        env: Vec<(String, String)>,
    ) -> Result<Node> {
        let program = images::binary(binary)?;
        let pid = self.spawn(&id, &program, &[], &env, None)?;
        state.local.nodes.push(LocalNode {
            role,
            id: id.clone(),
            ip,
            pid,
            command: vec![program.display().to_string()],
            env,
        });
        state.save(&self.cfg.home)?;
        Ok(Node {
            role,
            id,
            ip,
            state: "running".into(),
            handle: format!("pid {pid}"),
            swarm: None,
        })
    }

    /// SIGTERM (then SIGKILL after the grace period); the node stays recorded, as exited.
    pub fn stop(&self, state: &mut State, node: &Node) -> Result<()> {
        let n = find(state, node)?;
        stop(n);
        Ok(())
    }

    /// SIGKILL: no goodbye, as in a crash.
    pub fn kill(&self, state: &State, node: &Node) -> Result<()> {
        let n = find(state, node)?;
        if alive(n) {
            // SAFETY: kill(2) with a PID we verified is our live process.
            unsafe { libc::kill(n.pid as libc::pid_t, libc::SIGKILL) };
        }
        Ok(())
    }

    /// Starts a stopped node again with the command it was first started with.
    pub fn start(&self, state: &mut State, node: &Node) -> Result<()> {
        let n = find(state, node)?.clone();
        if alive(&n) {
            return Err(Error::Runtime(format!("{} is already running", n.id)));
        }
        let (program, args) = n
            .command
            .split_first()
            .ok_or_else(|| Error::Runtime(format!("{} was recorded without its command", n.id)))?;
        let mut pid = self.spawn(&n.id, std::path::Path::new(program), args, &n.env, None)?;
        if n.role == Role::Rabbitmq {
            pid = broker_vm(&n)?;
        }
        if let Some(rec) = state
            .local
            .nodes
            .iter_mut()
            .find(|x| x.id == n.id && x.role == n.role)
        {
            rec.pid = pid;
        }
        state.save(&self.cfg.home)
    }

    /// SIGSTOP / SIGCONT.
    pub fn pause(&self, state: &State, node: &Node, pause: bool) -> Result<()> {
        let n = find(state, node)?;
        if !alive(n) {
            return Err(Error::Runtime(format!("{} is not running", n.id)));
        }
        let sig = if pause { libc::SIGSTOP } else { libc::SIGCONT };
        // SAFETY: kill(2) with a PID we verified is our live process.
        unsafe { libc::kill(n.pid as libc::pid_t, sig) };
        Ok(())
    }

    pub fn remove(&self, state: &mut State, node: &Node) -> Result<()> {
        if let Some(n) = state
            .local
            .nodes
            .iter()
            .find(|n| n.id == node.id && n.role == node.role)
        {
            stop(n);
        }
        state
            .local
            .nodes
            .retain(|n| !(n.id == node.id && n.role == node.role));
        remove_node_keys(&self.cfg, &node.id)?;
        state.save(&self.cfg.home)
    }

    pub fn teardown(&self, state: &mut State, p: Progress<'_>) -> Result<()> {
        let mut nodes = state.local.nodes.clone();
        nodes.sort_by_key(|n| std::cmp::Reverse(n.role as u8));
        for n in &nodes {
            stop(n);
            p(&format!("Stopped {} {} ({})", n.role.as_str(), n.id, n.ip));
        }
        state.local.nodes.clear();
        for n in &nodes {
            remove_node_keys(&self.cfg, &n.id)?;
        }
        if !state.local.broker_nodes.is_empty() {
            let dir = self.broker_data();
            // A node whose start was cut short is not in `nodes`; its pid file still names it.
            for (i, b) in state.local.broker_nodes.iter().enumerate() {
                if let Some(pid) = node_pid(&dir.join(super::broker_node_id(i)), &b.name) {
                    // SAFETY: kill(2) on a pid whose environment names our node.
                    unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
                }
            }
            state.local.broker_nodes.clear();
            if dir.exists() {
                std::fs::remove_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
            }
            p("Removed the cluster's RabbitMQ nodes and their data");
        } else if port_open(IpAddr::V4(Ipv4Addr::LOCALHOST), RABBITMQ_PORT) {
            let _ = rabbitmqctl(None, &["-q", "delete_vhost", &self.vhost()]);
            for (user, _, _) in self.users() {
                let _ = rabbitmqctl(None, &["-q", "delete_user", &user]);
            }
            p(&format!(
                "Removed RabbitMQ vhost {} and its users",
                self.vhost()
            ));
            if state.local.started_rabbitmq {
                let _ = rabbitmqctl(None, &["-q", "stop"]);
                p("Stopped the RabbitMQ that bootstrap started");
            }
        }
        Ok(())
    }
}

fn find<'a>(state: &'a State, node: &Node) -> Result<&'a LocalNode> {
    state
        .local
        .nodes
        .iter()
        .find(|n| n.id == node.id && n.role == node.role)
        .ok_or_else(|| Error::NotFound(format!("{} {}", node.role.as_str(), node.id)))
}

/// The process state letter from `/proc/<pid>/stat` (field 3, after the parenthesised name).
fn proc_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .next()?
        .chars()
        .next()
}

/// Whether the process is stopped by a signal (SIGSTOP): `T`.
fn stopped(n: &LocalNode) -> bool {
    proc_state(n.pid) == Some('T')
}

/// Whether the recorded process still runs and is still ours: our binaries carry their
/// identity in their `TS_*` variables, Redis in its command line.
fn alive(n: &LocalNode) -> bool {
    // Z is a zombie, X dead.
    let running = proc_state(n.pid).is_some_and(|s| s != 'Z' && s != 'X');
    let read = |what: &str| {
        let bytes = std::fs::read(format!("/proc/{}/{what}", n.pid)).unwrap_or_default();
        bytes
            .split(|b| *b == 0)
            .map(|s| String::from_utf8_lossy(s).into_owned())
            .collect::<Vec<String>>()
    };
    // A swarm's key directory is its own (under this cluster's home).
    let identity = match n.role {
        Role::Client => Some("TS_CLIENT_ID"),
        Role::Server => Some("TS_REPLICA_ID"),
        Role::Swarm => Some("TS_KEY_DIR"),
        // A broker node of one's own: its Erlang VM inherited the node name.
        Role::Rabbitmq => Some("RABBITMQ_NODENAME"),
        _ => None,
    }
    .and_then(|k| Some((k, env_of(n, k)?)));
    let ours = match (n.role, identity) {
        (Role::Client | Role::Server | Role::Swarm | Role::Rabbitmq, Some((k, v))) => {
            read("environ").contains(&format!("{k}={v}"))
        }
        (Role::Redis | Role::Sentinel, _) => {
            read("cmdline").iter().any(|a| a.contains("redis-server"))
        }
        _ => false,
    };
    running && ours
}

/// Waits for broker node `n`'s Erlang VM to write its pid file (its first seconds of boot), and
/// returns its pid: the process the node's kill and stop signal.
pub(super) fn broker_vm(n: &LocalNode) -> Result<u32> {
    let (Some(name), Some(pid_file)) = (
        env_of(n, "RABBITMQ_NODENAME"),
        env_of(n, "RABBITMQ_PID_FILE"),
    ) else {
        return Err(Error::Runtime(format!(
            "{} was recorded without its node name",
            n.id
        )));
    };
    let dir = std::path::Path::new(pid_file)
        .parent()
        .unwrap_or(std::path::Path::new("/"));
    let deadline = Instant::now() + RABBIT_START_TIMEOUT;
    loop {
        if let Some(pid) = node_pid(dir, name) {
            return Ok(pid);
        }
        if Instant::now() > deadline {
            return Err(Error::Runtime(format!(
                "RabbitMQ node {name} did not start (see its log under {})",
                dir.display()
            )));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The value of `TS_*` variable `key` the node was started with.
fn env_of<'a>(n: &'a LocalNode, key: &str) -> Option<&'a str> {
    n.env
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// SIGTERM, wait, then SIGKILL.
fn stop(n: &LocalNode) {
    if !alive(n) {
        return;
    }
    let pid = n.pid as libc::pid_t;
    // SAFETY: kill(2) with a PID we verified is our live process. SIGCONT lets a paused
    // (SIGSTOPped) process act on the SIGTERM.
    unsafe {
        libc::kill(pid, libc::SIGTERM);
        libc::kill(pid, libc::SIGCONT);
    }
    let deadline = Instant::now() + STOP_GRACE;
    while alive(n) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    if alive(n) {
        // SAFETY: as above.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
}
