//! Shared helpers for integration tests against a real RabbitMQ and a real Redis.
//!
//! Each [`TestEnv`] gets its own RabbitMQ virtual host (created with `rabbitmqctl`) and its own
//! `redis-server` process on a free port, so tests run in parallel without seeing each other's
//! queues or keys, and a test can restart "its" Redis. RabbitMQ must be running on
//! 127.0.0.1:5672 (`.ci/run` starts it); if it is not, tests fail loudly, never skip.
//!
//! Binaries are the ones Cargo built for this test run; [`Proc`] kills its process on drop.

#![allow(dead_code)]

use serde_json::Value;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};
use time_sync::cache::{RedisStore, ReportStore};
use time_sync::cli::cluster::{ClusterConfig, RuntimeKind};
use time_sync::protocol::{MasterRecord, StoredReport};
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
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
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

/// A child process that is killed (SIGKILL) when dropped, unless it already exited.
pub struct Proc {
    pub name: String,
    child: Child,
}

impl Proc {
    pub fn spawn(name: &str, bin: &str, args: &[String], log: &Path) -> Proc {
        let out = std::fs::File::create(log).unwrap();
        let child = Command::new(bin)
            .args(args)
            .env("RUST_LOG", "info")
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {bin}: {e}"));
        Proc {
            name: name.to_string(),
            child,
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn signal(&self, sig: &str) {
        sh("kill", &[&format!("-{sig}"), &self.pid().to_string()]);
    }

    /// SIGTERM, then wait up to `timeout` for the exit status.
    pub fn terminate(&mut self, timeout: Duration) -> ExitStatus {
        self.signal("TERM");
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            assert!(
                Instant::now() < deadline,
                "{} ignored SIGTERM for {timeout:?}",
                self.name
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A private Redis server.
pub struct Redis {
    pub port: u16,
    proc: Option<Proc>,
    dir: PathBuf,
}

impl Redis {
    pub fn start(dir: &Path) -> Redis {
        let mut r = Redis {
            port: free_port(),
            proc: None,
            dir: dir.to_path_buf(),
        };
        r.restart();
        r
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    pub fn stop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill();
        }
    }

    /// (Re)starts on the same port, empty, and waits until it answers.
    pub fn restart(&mut self) {
        self.stop();
        let args: Vec<String> = [
            "--port",
            &self.port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        self.proc = Some(Proc::spawn(
            "redis-server",
            "redis-server",
            &args,
            &self.dir.join(format!("redis-{}.log", self.port)),
        ));
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// The RabbitMQ virtual host of one test; deleted on drop.
pub struct Vhost {
    pub name: String,
}

impl Vhost {
    pub fn create() -> Vhost {
        assert_rabbitmq_up();
        let name = format!("ts-test-{}", uuid::Uuid::new_v4().simple());
        sh("rabbitmqctl", &["-q", "add_vhost", &name]);
        sh(
            "rabbitmqctl",
            &[
                "-q",
                "set_permissions",
                "-p",
                &name,
                "guest",
                ".*",
                ".*",
                ".*",
            ],
        );
        Vhost { name }
    }

    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:5672/{}", self.name)
    }

    /// `(queue name, messages, consumers)` of every queue in the vhost.
    pub fn queues(&self) -> Vec<(String, u64, u64)> {
        sh(
            "rabbitmqctl",
            &[
                "-q",
                "list_queues",
                "-p",
                &self.name,
                "--no-table-headers",
                "name",
                "messages",
                "consumers",
            ],
        )
        .lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            Some((
                it.next()?.to_string(),
                it.next()?.parse().ok()?,
                it.next()?.parse().ok()?,
            ))
        })
        .collect()
    }
}

impl Drop for Vhost {
    fn drop(&mut self) {
        let _ = Command::new("rabbitmqctl")
            .args(["-q", "delete_vhost", &self.name])
            .output();
    }
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

/// One test's services, log directory and processes.
pub struct TestEnv {
    pub dir: tempdir::Dir,
    pub vhost: Vhost,
    pub redis: Redis,
    pub procs: Vec<Proc>,
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
    pub fn new() -> TestEnv {
        let dir = tempdir::Dir::new("ts-test");
        let redis = Redis::start(dir.path());
        TestEnv {
            vhost: Vhost::create(),
            redis,
            dir,
            procs: Vec::new(),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Starts `ts-server` with a TTL of `ttl_s` seconds plus `extra` flags; returns its index.
    pub fn server(&mut self, ttl_s: u64, extra: &[&str]) -> usize {
        let mut args = vec![
            "--amqp-url".to_string(),
            self.vhost.url(),
            "--redis-url".into(),
            self.redis.url(),
            "--ttl".into(),
            ttl_s.to_string(),
            "--log-dir".into(),
            self.path().join("server").display().to_string(),
        ];
        if !extra.contains(&"--http-addr") {
            // Tests run in parallel: each API on a port of its own, published in Redis.
            args.extend(["--http-addr".into(), "127.0.0.1:0".into()]);
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let log = self.path().join(format!("server-{}.out", self.procs.len()));
        self.procs
            .push(Proc::spawn("ts-server", SERVER_BIN, &args, &log));
        self.procs.len() - 1
    }

    /// Starts `ts-client` advertising `ip`; returns `(index, id)`.
    pub fn client(&mut self, ip: &str, extra: &[&str]) -> (usize, uuid::Uuid) {
        let id = uuid::Uuid::new_v4();
        let mut args = vec![
            "--amqp-url".to_string(),
            self.vhost.url(),
            "--id".into(),
            id.to_string(),
            "--ip".into(),
            ip.into(),
            "--log-dir".into(),
            self.path().join("clients").display().to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let log = self.path().join(format!("client-{ip}.out"));
        self.procs
            .push(Proc::spawn("ts-client", CLIENT_BIN, &args, &log));
        (self.procs.len() - 1, id)
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
    /// `tsc --json servers list`.
    pub fn servers(&self) -> Value {
        self.ok(&["--json", "servers", "list"]).json()
    }

    /// The cluster's service endpoints as tsc sees them, and its Redis.
    pub async fn endpoints(&self) -> (time_sync::runtime::Endpoints, RedisStore) {
        let cfg = ClusterConfig::load(self.home.path()).unwrap();
        let state = time_sync::cli::cluster::State::load(self.home.path()).unwrap();
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
    pub async fn start(amqp_url: &str) -> Observer {
        use futures_util::StreamExt;
        let conn = lapin::Connection::connect(amqp_url, Default::default())
            .await
            .unwrap();
        let ch = conn.create_channel().await.unwrap();
        let q = time_sync::broker::declare_update_listener(&ch)
            .await
            .unwrap();
        let mut consumer = ch
            .basic_consume(
                q.as_str().into(),
                "observer".into(),
                lapin::options::BasicConsumeOptions {
                    no_ack: true,
                    ..Default::default()
                },
                Default::default(),
            )
            .await
            .unwrap();
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let s = seen.clone();
        let task = tokio::spawn(async move {
            while let Some(Ok(d)) = consumer.next().await {
                if let Ok(time_sync::protocol::ToClient::MasterUpdate(u)) =
                    time_sync::protocol::decode(&d.data)
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
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr)
        .unwrap_or_else(|e| panic!("cannot connect to the API at {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
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
