//! Shared helpers for integration tests against a real RabbitMQ and a real Redis.
//!
//! Each [`TestEnv`] gets its own RabbitMQ virtual host and its own `redis-server` process on a
//! free port (the library's harness, [`time_sync::runtime::services`], which the local runtime
//! and the benchmarks use too), so tests run in parallel without seeing each other's queues or
//! keys, and a test can restart "its" Redis. A test that stops a broker runs a RabbitMQ node of
//! its own ([`TestEnv::on`]). The machine's RabbitMQ must be running on 127.0.0.1:5672 (`.ci/run`
//! starts it); if it is not, tests fail loudly, never skip.
//!
//! Binaries are the ones Cargo built for this test run; a [`Process`] is killed on drop.

#![allow(dead_code)]

pub mod sampler;

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use time_sync::cache::{RedisStore, ReportStore};
use time_sync::core::clock::{Clock, SystemClock};
pub use time_sync::core::keyring::KeyRing;
use time_sync::core::ntp::{ntp_from_unix_us, Packet};
use time_sync::core::protocol::{MasterRecord, StoredReport};
pub use time_sync::keys::{self, ClusterKeys};
use time_sync::runtime::cluster::{ClusterConfig, RuntimeKind};
pub use time_sync::runtime::services::{self, Process, RabbitNode, RedisServer, Vhost};

/// The operator token of every TestEnv.
pub const OPERATOR_TOKEN: &str = "test-operator-token";
use tokio_util::sync::CancellationToken;

pub const SERVER_BIN: &str = env!("CARGO_BIN_EXE_ts-server");
pub const CLIENT_BIN: &str = env!("CARGO_BIN_EXE_ts-client");
pub const TSC_BIN: &str = env!("CARGO_BIN_EXE_tsc");

/// Runs a command to completion and panics with its output if it fails.
pub fn sh(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd}: {e} (is it installed? .ci/run installs it)"));
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    services::free_port().unwrap()
}

/// Polls `f` every 100 ms until it returns `Some`, or panics after `timeout` with `what`.
pub async fn wait_for<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A child process killed when dropped (the library's harness), started with `RUST_LOG=info`.
pub fn spawn(name: &str, bin: &str, args: &[String], log: &Path) -> Process {
    let env = [("RUST_LOG".to_string(), "info".to_string())];
    Process::spawn(name, Path::new(bin), args, &env, log)
        .unwrap_or_else(|e| panic!("cannot start {bin}: {e}"))
}

/// Server-named (per-client) queues among `queues`.
pub fn client_queues(queues: &[(String, u64, u64)]) -> usize {
    queues
        .iter()
        .filter(|(q, _, _)| q.starts_with("amq.gen-"))
        .count()
}

pub fn assert_rabbitmq_up() {
    assert!(
        std::net::TcpStream::connect("127.0.0.1:5672").is_ok(),
        "RabbitMQ is not listening on 127.0.0.1:5672; start it (.ci/run does: rabbitmq-server -detached)"
    );
}

/// Fails loudly unless a Docker daemon answers (CI starts one; a test never skips for it).
pub fn assert_docker_answers() {
    assert!(
        Command::new("docker")
            .arg("info")
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false),
        "no Docker daemon answers; .ci/run starts one (scripts/setup.sh)"
    );
}

/// The queue names of the broker in container `rabbit` (its default vhost).
pub fn docker_queues(rabbit: &str) -> Vec<String> {
    sh(
        "docker",
        &[
            "exec",
            rabbit,
            "rabbitmqctl",
            "-q",
            "list_queues",
            "--no-table-headers",
            "name",
        ],
    )
    .lines()
    .map(|l| l.trim().to_string())
    .filter(|l| !l.is_empty())
    .collect()
}

/// One test's services, log directory and processes: its own vhost on the machine's RabbitMQ
/// (or on a broker node of its own) and its own `redis-server`.
pub struct TestEnv {
    pub dir: tempdir::Dir,
    pub vhost: Vhost,
    pub redis: RedisServer,
    pub procs: Vec<Process>,
    /// The test cluster's keys: every server gets the server set, every client its own.
    pub keys: ClusterKeys,
}

pub mod tempdir {
    use std::path::{Path, PathBuf};

    /// A directory under the system temp dir, removed on drop unless the test panicked (then it
    /// is kept and its path printed, for the logs).
    pub struct Dir(PathBuf);

    impl Dir {
        pub fn new(prefix: &str) -> Dir {
            let p =
                std::env::temp_dir().join(format!("{prefix}-{}", uuid::Uuid::new_v4().simple()));
            std::fs::create_dir_all(&p).unwrap();
            Dir(p)
        }
        pub fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            if std::thread::panicking() {
                eprintln!("test logs kept in {}", self.0.display());
            } else {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }
}

impl TestEnv {
    /// A vhost on the machine's RabbitMQ and a Redis of its own.
    pub fn new() -> TestEnv {
        assert_rabbitmq_up();
        Self::with_vhost(|| Vhost::create("ts-test"))
    }

    /// A vhost on `node` (a broker of the test's own) and a Redis of its own.
    pub fn on(node: &RabbitNode) -> TestEnv {
        Self::with_vhost(|| node.vhost("ts-test"))
    }

    fn with_vhost(vhost: impl FnOnce() -> time_sync::Result<Vhost>) -> TestEnv {
        let dir = tempdir::Dir::new("ts-test");
        let redis = RedisServer::start(dir.path(), None).expect("redis-server starts");
        let keys = ClusterKeys::generate(OPERATOR_TOKEN);
        keys::write_ring(&dir.path().join("keys").join("server"), &keys.server_ring()).unwrap();
        TestEnv {
            vhost: vhost().expect("a vhost of the test's own"),
            redis,
            dir,
            procs: Vec::new(),
            keys,
        }
    }

    /// The servers' key directory.
    pub fn server_keys(&self) -> PathBuf {
        self.path().join("keys").join("server")
    }

    /// Client `id`'s key directory (written on first use).
    pub fn client_keys(&self, id: uuid::Uuid) -> PathBuf {
        let dir = self.path().join("keys").join(id.to_string());
        time_sync::runtime::write_node_ring(&self.keys, &id.to_string(), &dir).unwrap();
        dir
    }

    /// What a test holding the server keys can seal and open.
    pub fn ring(&self) -> KeyRing {
        self.keys.server_ring()
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Starts `ts-server` with a TTL of `ttl_s` seconds plus `extra` flags; returns its index.
    /// `--amqp-url` in `extra` replaces the test's vhost, `--redis-url` the test's Redis.
    pub fn server(&mut self, ttl_s: u64, extra: &[&str]) -> usize {
        let mut args = Vec::new();
        if !extra.contains(&"--amqp-url") {
            args.extend(["--amqp-url".to_string(), self.vhost.url()]);
        }
        if !extra.contains(&"--redis-url") {
            args.extend(["--redis-url".to_string(), self.redis.url()]);
        }
        args.extend([
            "--ttl".into(),
            ttl_s.to_string(),
            "--log-dir".into(),
            self.path().join("server").display().to_string(),
            "--key-dir".into(),
            self.server_keys().display().to_string(),
        ]);
        if !extra.contains(&"--http-addr") {
            // Tests run in parallel: each API on a port of its own, published in Redis.
            args.extend(["--http-addr".into(), "127.0.0.1:0".into()]);
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let log = self.path().join(format!("server-{}.out", self.procs.len()));
        self.procs.push(spawn("ts-server", SERVER_BIN, &args, &log));
        self.procs.len() - 1
    }

    /// Starts `ts-client` advertising `ip`; returns `(index, id)`.
    pub fn client(&mut self, ip: &str, extra: &[&str]) -> (usize, uuid::Uuid) {
        let url = self.vhost.url();
        self.client_via(&url, ip, extra)
    }

    /// [`TestEnv::client`] through `amqp_url` (a proxy in front of this test's broker).
    pub fn client_via(&mut self, amqp_url: &str, ip: &str, extra: &[&str]) -> (usize, uuid::Uuid) {
        let id = uuid::Uuid::new_v4();
        let mut args = vec![
            "--amqp-url".to_string(),
            amqp_url.to_string(),
            "--id".into(),
            id.to_string(),
            "--ip".into(),
            ip.into(),
            "--log-dir".into(),
            self.path().join("clients").display().to_string(),
            "--key-dir".into(),
            self.client_keys(id).display().to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let log = self.path().join(format!("client-{ip}.out"));
        self.procs.push(spawn("ts-client", CLIENT_BIN, &args, &log));
        (self.procs.len() - 1, id)
    }

    /// `(queue, messages, consumers)` of every queue of this test's vhost.
    pub fn queues(&self) -> Vec<(String, u64, u64)> {
        self.vhost.queues().expect("rabbitmqctl list_queues")
    }

    /// A Redis store on this test's Redis (connects at once; Redis is up).
    pub async fn store(&self) -> RedisStore {
        RedisStore::connect(&self.redis.url(), &CancellationToken::new())
            .await
            .unwrap()
            .unwrap()
    }
}

/// Live reports, or an empty list while Redis is unreachable.
pub async fn live(store: &RedisStore) -> Vec<StoredReport> {
    store.live_reports().await.unwrap_or_default()
}

pub async fn master(store: &RedisStore) -> Option<MasterRecord> {
    store.master().await.ok().flatten()
}

/// Largest |client offset − master offset| among live clients, from the clocks themselves
/// (their true offsets from the shared host clock), in µs. `None` until every one of `n`
/// clients reports the master as its master.
pub fn spread_us(reports: &[StoredReport], master: &MasterRecord, n: usize) -> Option<i64> {
    if reports.len() != n
        || !reports
            .iter()
            .all(|r| r.report.master_id == Some(master.id))
    {
        return None;
    }
    let m = reports.iter().find(|r| r.report.id == master.id)?;
    let m_off = m.report.true_offset_us?;
    reports
        .iter()
        .map(|r| r.report.true_offset_us.map(|o| (o - m_off).abs()))
        .collect::<Option<Vec<_>>>()
        .map(|v| v.into_iter().max().unwrap_or(0))
}

/// Sum of a counter over every server's stats hash.
pub async fn stat(store: &RedisStore, name: &str) -> u64 {
    store.stat_total(name).await.unwrap_or(0)
}

/// Shortened TTL so that failover after removing the master takes seconds.
pub const TTL_S: u64 = 3;

pub struct Tsc {
    pub home: tempdir::Dir,
    pub runtime: &'static str,
}

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.stdout))
    }
}

impl Tsc {
    pub fn new(runtime: &'static str, subnet: &str) -> Tsc {
        let t = Tsc {
            home: tempdir::Dir::new(&format!("tsc-{runtime}")),
            runtime,
        };
        let r = t.run(&["init"]);
        assert_eq!(r.code, 0, "init: {}", r.stderr);
        // Short TTL, private log directories and subnet for the test.
        let mut cfg = ClusterConfig::load(t.home.path()).unwrap();
        cfg.server.ttl = TTL_S;
        cfg.docker.subnet = subnet.into();
        cfg.client_log_dir = t.home.path().join("client_logs");
        cfg.server_log_dir = t.home.path().join("server_logs");
        cfg.runtime = if runtime == "docker" {
            RuntimeKind::Docker
        } else {
            RuntimeKind::Local
        };
        cfg.save().unwrap();
        t
    }

    pub fn run(&self, args: &[&str]) -> Run {
        let out = Command::new(TSC_BIN)
            .args(args)
            .env("TSC_HOME", self.home.path())
            .output()
            .unwrap();
        let r = Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        };
        eprintln!(
            "$ tsc {} -> {}\n{}{}",
            args.join(" "),
            r.code,
            r.stdout,
            r.stderr
        );
        r
    }

    pub fn ok(&self, args: &[&str]) -> Run {
        let r = self.run(args);
        assert_eq!(r.code, 0, "tsc {args:?} failed: {}", r.stderr);
        r
    }

    pub fn clients(&self) -> Vec<Value> {
        let v = self.ok(&["--json", "clients", "list"]).json();
        v["clients"].as_array().unwrap().clone()
    }

    pub fn master(&self) -> Option<String> {
        let r = self.run(&["--json", "clients", "get-master"]);
        (r.code == 0).then(|| r.json()["master"]["id"].as_str().unwrap().to_string())
    }

    pub fn log_dir(&self) -> std::path::PathBuf {
        self.home.path().join("client_logs")
    }
}

impl Tsc {
    /// A cluster on the local runtime (subnet `subnet`), bootstrapped with `servers` replicas
    /// of `workers` workers and `clients` clients, waited for until every clock is within 1 ms.
    pub fn local_synced(subnet: &str, servers: u64, clients: usize, workers: usize) -> Tsc {
        Tsc::local_synced_with(subnet, servers, clients, workers, |_| {})
    }

    /// [`Tsc::local_synced`] with cluster.toml changed by `edit` before bootstrap.
    pub fn local_synced_with(
        subnet: &str,
        servers: u64,
        clients: usize,
        workers: usize,
        edit: impl FnOnce(&mut ClusterConfig),
    ) -> Tsc {
        assert_rabbitmq_up();
        let t = Tsc::new("local", subnet);
        t.edit_config(edit);
        let (s, c, w) = (
            servers.to_string(),
            clients.to_string(),
            workers.to_string(),
        );
        t.ok(&["bootstrap", "-s", &s, "-c", &c, "-w", &w]);
        t.ok(&["wait", "--timeout", "60", "--bound-ms", "1"]);
        t
    }
}

impl Drop for Tsc {
    fn drop(&mut self) {
        // Never leave a cluster behind, even when an assertion failed.
        let _ = Command::new(TSC_BIN)
            .arg("teardown")
            .env("TSC_HOME", self.home.path())
            .output();
    }
}

impl Tsc {
    /// Changes cluster.toml.
    pub fn edit_config(&self, edit: impl FnOnce(&mut ClusterConfig)) {
        let mut cfg = ClusterConfig::load(self.home.path()).unwrap();
        edit(&mut cfg);
        cfg.save().unwrap();
    }

    /// `tsc --json servers list`.
    pub fn servers(&self) -> Value {
        self.ok(&["--json", "servers", "list"]).json()
    }

    /// The cluster's keys, as tsc keeps them.
    pub fn keys(&self) -> ClusterKeys {
        ClusterKeys::load(&self.home.path().join("keys")).unwrap()
    }

    /// The operator token from cluster.toml.
    pub fn token(&self) -> String {
        ClusterConfig::load(self.home.path())
            .unwrap()
            .credentials
            .operator_token
    }

    /// The cluster's service endpoints as tsc sees them, and its Redis.
    pub async fn endpoints(&self) -> (time_sync::runtime::Endpoints, RedisStore) {
        let cfg = ClusterConfig::load(self.home.path()).unwrap();
        let state = time_sync::runtime::cluster::State::load(self.home.path()).unwrap();
        let rt = time_sync::runtime::Runtime::open(&cfg, state.runtime.unwrap())
            .await
            .unwrap();
        let ep = rt.endpoints(&state);
        let store = RedisStore::connect(&ep.redis_url, &CancellationToken::new())
            .await
            .unwrap()
            .unwrap();
        (ep, store)
    }
}

/// One broadcast seen on the updates exchange.
#[derive(Debug, Clone)]
pub struct Seen {
    pub at: Instant,
    pub epoch: u64,
    pub server_id: uuid::Uuid,
}

/// Listens to the updates exchange like a client that never corrects anything, and records
/// who broadcast what in which epoch.
pub struct Observer {
    pub seen: std::sync::Arc<std::sync::Mutex<Vec<Seen>>>,
    pub channel: lapin::Channel,
    _conn: lapin::Connection,
    task: tokio::task::JoinHandle<()>,
}

impl Observer {
    /// Listens on `amqp_url` and opens what it hears with `ring` (the leader's public key).
    pub async fn start(amqp_url: &str, ring: KeyRing) -> Observer {
        use futures_util::StreamExt;
        let conn = lapin::Connection::connect(amqp_url, Default::default())
            .await
            .unwrap();
        let ch = conn.create_channel().await.unwrap();
        let q = time_sync::broker::declare_update_listener(&ch)
            .await
            .unwrap();
        let mut consumer = time_sync::broker::consume_no_ack(&ch, &q, "observer")
            .await
            .unwrap();
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let s = seen.clone();
        let task = tokio::spawn(async move {
            while let Some(Ok(d)) = consumer.next().await {
                if let Ok(time_sync::core::protocol::ToClient::MasterUpdate(u)) =
                    ring.open_from_leader(&d.data)
                {
                    s.lock().unwrap().push(Seen {
                        at: Instant::now(),
                        epoch: u.epoch,
                        server_id: u.server_id,
                    });
                }
            }
        });
        Observer {
            seen,
            channel: ch,
            _conn: conn,
            task,
        }
    }

    pub fn all(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub fn max_epoch(&self) -> u64 {
        self.all().iter().map(|s| s.epoch).max().unwrap_or(0)
    }

    /// The first broadcast with an epoch above `above` (polling up to `timeout`).
    pub async fn first_above(&self, above: u64, timeout: Duration) -> Seen {
        wait_for(
            timeout,
            &format!("a broadcast above epoch {above}"),
            || async { self.all().into_iter().find(|s| s.epoch > above) },
        )
        .await
    }

    /// Epochs in which more than one server broadcast (must be none).
    pub fn shared_epochs(&self) -> Vec<u64> {
        let mut by_epoch: std::collections::BTreeMap<u64, std::collections::BTreeSet<uuid::Uuid>> =
            Default::default();
        for s in self.all() {
            by_epoch.entry(s.epoch).or_default().insert(s.server_id);
        }
        by_epoch
            .into_iter()
            .filter(|(_, ids)| ids.len() > 1)
            .map(|(e, _)| e)
            .collect()
    }

    /// Broadcasts whose epoch was below one already seen: a deposed leader still talking.
    pub fn stale(&self) -> usize {
        let mut max = 0;
        let mut n = 0;
        for s in self.all() {
            if s.epoch < max {
                n += 1;
            }
            max = max.max(s.epoch);
        }
        n
    }
}

impl Drop for Observer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A minimal HTTP/1.1 request; returns the status code and the body.
pub fn http(addr: &str, method: &str, path: &str) -> (u16, String) {
    http_as(addr, method, path, None, None)
}

/// An HTTP/1.1 request with an operator token and a JSON body, if given.
pub fn http_as(
    addr: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr)
        .unwrap_or_else(|e| panic!("cannot connect to the API at {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let body = body.unwrap_or("");
    let auth = token.map_or_else(String::new, |t| format!("Authorization: Bearer {t}\r\n"));
    let kind = if body.is_empty() {
        ""
    } else {
        "Content-Type: application/json\r\n"
    };
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}{kind}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, body.to_string())
}

/// A client's broker user (its URL) is confined: the broker refuses (ACCESS_REFUSED) its
/// publishes to the updates and control exchanges, and any declaration or deletion of the
/// shared queues.
pub async fn assert_client_user_is_confined(url: &str) {
    use time_sync::core::protocol::{CONTROL_EXCHANGE, REPORTS_QUEUE, UPDATES_EXCHANGE};
    let refused = |what: &str, e: Option<lapin::Error>| {
        let e = e.unwrap_or_else(|| panic!("{what} was allowed to a client"));
        let text = format!("{e}");
        assert!(
            text.contains("ACCESS_REFUSED") || text.contains("403"),
            "{what}: refused, but not for access: {text}"
        );
        println!("{what}: {text}");
    };
    let conn = lapin::Connection::connect(url, Default::default())
        .await
        .expect("the client user logs in");
    for exchange in [UPDATES_EXCHANGE, CONTROL_EXCHANGE] {
        // The broker closes the channel over the publish. In confirm mode the publish's
        // confirmation carries the close's reason, whenever the close arrives (asking the
        // channel something next raced the close: under load it lost five times in a row).
        let mut answer = None;
        for _ in 0..5 {
            let ch = conn.create_channel().await.unwrap();
            ch.confirm_select(Default::default()).await.unwrap();
            let sent = ch
                .basic_publish(
                    exchange.into(),
                    "".into(),
                    Default::default(),
                    b"{}",
                    Default::default(),
                )
                .await;
            let next = match sent {
                Ok(confirm) => tokio::time::timeout(Duration::from_secs(5), confirm)
                    .await
                    .expect("an answer")
                    .map(|_| ()),
                Err(e) => Err(e),
            };
            match next {
                Err(e) if format!("{e}").contains("invalid channel state") => continue,
                other => {
                    answer = Some(other);
                    break;
                }
            }
        }
        let next = answer.expect("a reason within 5 tries");
        refused(&format!("publishing to {exchange}"), next.err());
    }
    let ch = conn.create_channel().await.unwrap();
    let del = ch
        .queue_delete(REPORTS_QUEUE.into(), Default::default())
        .await;
    refused("deleting ts.reports", del.err());
    let ch = conn.create_channel().await.unwrap();
    let decl = ch
        .exchange_declare(
            UPDATES_EXCHANGE.into(),
            lapin::ExchangeKind::Fanout,
            lapin::options::ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            Default::default(),
        )
        .await;
    refused("declaring ts.master_updates", decl.err());
    let _ = conn.close(200, "bye".into()).await;
}

/// A `tsc dashboard` of a test's cluster, on a free loopback port; stopped (SIGTERM) on drop.
pub struct Dash {
    child: std::process::Child,
    /// `127.0.0.1:<port>`.
    pub addr: String,
}

impl Dash {
    /// Starts `tsc dashboard --addr 127.0.0.1:0` and reads the URL it prints.
    pub fn start(t: &Tsc) -> Dash {
        use std::io::BufRead;
        let mut child = Command::new(TSC_BIN)
            .args(["dashboard", "--addr", "127.0.0.1:0"])
            .env("TSC_HOME", t.home.path())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line
            .split("http://")
            .nth(1)
            .and_then(|r| r.split('/').next())
            .unwrap_or_else(|| panic!("no URL in the dashboard's first line: {line:?}"))
            .to_string();
        Dash { child, addr }
    }

    pub fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    /// The newest frame, once there is one.
    pub async fn frame(&self) -> Value {
        wait_for(Duration::from_secs(10), "a dashboard frame", || async {
            let (code, body) = http(&self.addr, "GET", "/api/frame");
            let v: Value = serde_json::from_str(&body).ok()?;
            (code == 200 && !v.is_null()).then_some(v)
        })
        .await
    }

    /// Client `id`'s card in the newest frame, if it has one.
    pub async fn card(&self, id: &str) -> Option<Value> {
        let f = self.frame().await;
        f["clients"]
            .as_array()?
            .iter()
            .find(|c| c["id"] == id)
            .cloned()
    }

    /// Stops it with SIGTERM; its exit status.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "the dashboard did not stop within 10 s of SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Dash {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// What a Debian NTP client (`ntpdate -q`, `sntp`: both ntpsec's ntpdig) read from a server.
#[derive(Debug, Clone, PartialEq)]
pub struct NtpReading {
    /// Server minus local clock (µs).
    pub offset_us: i64,
    /// The tool's ± on it (µs): half the round trip plus dispersion.
    pub error_us: i64,
    pub stratum: u8,
    /// `no-leap`, `add-leap`, `del-leap`, or the tool's word for an alarm.
    pub leap: String,
}

/// Asks `host` for the time with `tool` (`ntpdate` gets `-q`); `Err(stderr)` when the tool
/// takes no answer (it exits 1 and says why).
pub fn ntp_query(tool: &str, host: &str) -> Result<NtpReading, String> {
    let args: &[&str] = if tool == "ntpdate" {
        &["-q", host]
    } else {
        &["-t", "2", host]
    };
    let out = Command::new(tool)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {tool}: {e} (scripts/setup.sh installs it)"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if !out.status.success() {
        return Err(stderr);
    }
    // `2026-12-02 11:07:26.69088 (+0000) -1800.499840 +/- 0.000376 127.0.0.77 s11 no-leap`
    let line = stdout
        .lines()
        .find(|l| l.contains("+/-"))
        .unwrap_or_else(|| panic!("{tool}: no reading in {stdout:?} {stderr:?}"));
    let f: Vec<&str> = line.split_whitespace().collect();
    let at = f.iter().position(|w| *w == "+/-").unwrap();
    let offset_s: f64 = f[at - 1].parse().unwrap();
    let stratum = f[at + 3].trim_start_matches('s').parse().unwrap();
    let error_s: f64 = f[at + 1].parse().unwrap();
    Ok(NtpReading {
        offset_us: (offset_s * 1e6).round() as i64,
        error_us: (error_s * 1e6).round() as i64,
        stratum,
        leap: f[at + 4].to_string(),
    })
}

/// The newest report of client `id` in `t`'s cluster, once it is newer than `after_seq`.
pub async fn report_after(t: &Tsc, id: uuid::Uuid, after_seq: u64) -> StoredReport {
    let (_, store) = t.endpoints().await;
    wait_for(Duration::from_secs(5), "a newer report", || async {
        live(&store)
            .await
            .into_iter()
            .find(|r| r.report.id == id && r.report.seq > after_seq)
    })
    .await
}

/// Asks every client of `t`'s cluster for the time with each of `tools`, once every client
/// reports the stratum it should (`tsc wait` sees clocks within its bound; a client calls
/// itself synchronized once an update confirms it): each reads the client's true offset
/// within 1 ms, `master_stratum` at the master and one more at the others, no alarm. The
/// clients' reports.
pub async fn ntp_clients_agree(t: &Tsc, tools: &[&str], master_stratum: u8) -> Vec<StoredReport> {
    let (_, store) = t.endpoints().await;
    let n = t.clients().len();
    let m = master(&store).await.expect("a master");
    let want = |id: uuid::Uuid| {
        if id == m.id {
            master_stratum
        } else {
            master_stratum + 1
        }
    };
    let reports = wait_for(
        Duration::from_secs(20),
        "every client's stratum",
        || async {
            let r = live(&store).await;
            (r.len() == n
                && r.iter()
                    .all(|r| r.report.stratum == Some(want(r.report.id))))
            .then_some(r)
        },
    )
    .await;
    for r in &reports {
        let ip = r.report.ip.to_string();
        let is_master = r.report.id == m.id;
        for tool in tools {
            // The true offsets of the reports just before and just after the query bracket
            // the clock it read (a clock still converging moves between two reports).
            let before = report_after(t, r.report.id, 0).await;
            // Like an NTP client's clock filter: of three readings, the one with the smallest
            // round trip (a reading whose request or reply was delayed by a busy machine is off
            // by half the delay).
            let got = (0..3)
                .map(|_| ntp_query(tool, &ip).unwrap_or_else(|e| panic!("{tool} {ip}: {e}")))
                .min_by_key(|g| g.error_us)
                .unwrap();
            let after = report_after(t, r.report.id, before.report.seq).await;
            let (a, b) = (
                before.report.true_offset_us.unwrap(),
                after.report.true_offset_us.unwrap(),
            );
            let (lo, hi) = (a.min(b), a.max(b));
            println!(
                "[{}] {tool} {ip} (master: {is_master}): offset {} ± {} µs, true offset {a}…{b} µs, \
                 stratum {}, {}",
                t.runtime, got.offset_us, got.error_us, got.stratum, got.leap
            );
            assert_eq!(got.stratum, want(r.report.id), "{tool} {ip}");
            assert_eq!(got.leap, "no-leap", "{tool} {ip}");
            assert!(
                got.offset_us > lo - 1000 && got.offset_us < hi + 1000,
                "{tool} {ip}: read {} µs, the client's true offset was {a} µs before and {b} µs after",
                got.offset_us
            );
        }
    }
    reports
}

/// A `chronyd` of the test's own serving this host's clock on loopback at a free port, with a
/// local stratum (it never touches the system clock: `-x`). Killed on drop.
pub struct Chrony {
    _proc: Process,
    /// `127.0.0.1:<port>`.
    pub addr: String,
    pub port: u16,
}

impl Chrony {
    /// Starts one listening on `bind` (`127.0.0.1`, or `0.0.0.0` for containers to reach it
    /// through their network's gateway), answering loopback and private addresses.
    pub fn start(dir: &Path, name: &str, bind: &str, stratum: u8) -> Chrony {
        let port = free_port();
        let conf = dir.join(format!("{name}.conf"));
        std::fs::write(
            &conf,
            format!(
                "port {port}\nbindaddress {bind}\nallow 127.0.0.0/8\nallow 10.0.0.0/8\n\
                 local stratum {stratum}\ncmdport 0\npidfile {}\n",
                dir.join(format!("{name}.pid")).display()
            ),
        )
        .unwrap();
        let args = ["-x", "-d", "-u", "root", "-f", conf.to_str().unwrap()].map(String::from);
        let proc = Process::spawn(
            name,
            Path::new("/usr/sbin/chronyd"),
            &args,
            &[],
            &dir.join(format!("{name}.log")),
        )
        .expect("chronyd (scripts/setup.sh installs chrony)");
        let addr = format!("127.0.0.1:{port}");
        // Up when it answers.
        let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        s.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let req = Packet {
                version: 4,
                mode: 3,
                transmit_ts: ntp_from_unix_us(SystemClock.now_us()),
                ..Packet::default()
            }
            .encode();
            s.send_to(&req, &addr).unwrap();
            let mut buf = [0u8; 64];
            if let Ok((48, _)) = s.recv_from(&mut buf) {
                let p = Packet::decode(&buf).unwrap();
                assert_eq!(p.stratum, stratum, "chronyd's local stratum");
                break;
            }
            assert!(
                Instant::now() < deadline,
                "chronyd on {addr} does not answer (see {name}.log in {})",
                dir.display()
            );
        }
        Chrony {
            _proc: proc,
            addr,
            port,
        }
    }
}

/// Writes results file `name` under `TS_FAULTS_OUT` (default `target/`), one `key=value`
/// line per fault (the README's figures quote them).
pub fn write_results(name: &str, lines: &[String]) {
    let dir = std::env::var("TS_FAULTS_OUT")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/target").to_string());
    std::fs::create_dir_all(&dir).unwrap();
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    std::fs::write(std::path::Path::new(&dir).join(name), text).unwrap();
}
