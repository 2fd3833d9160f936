//! Shared helpers for integration tests against a real RabbitMQ and a real Redis.
//!
//! Each [`TestEnv`] gets its own RabbitMQ virtual host (created with `rabbitmqctl`) and its own
//! `redis-server` process on a free port, so tests run in parallel without seeing each other's
//! queues or keys, and a test can restart "its" Redis. RabbitMQ must be running on
//! 127.0.0.1:5672 (`.ci/run` starts it); if it is not, tests fail loudly, never skip.
//!
//! Binaries are the ones Cargo built for this test run; [`Proc`] kills its process on drop.

#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};
use time_sync::cache::{RedisStore, ReportStore};
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
