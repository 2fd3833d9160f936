//! Private services on this machine: a `redis-server` of one's own, a RabbitMQ virtual host of
//! one's own on the machine's broker, or a whole RabbitMQ node of one's own.
//!
//! The local runtime, the integration tests and the benchmarks all need them, and all bring
//! them up through this one module, so they start them the same way and clean up the same way.
//! Nothing here touches a service it did not start: a [`Vhost`] lives on the shared broker but
//! only its own vhost is created and deleted, and a test that must stop a broker starts its own
//! [`RabbitNode`] (own node name, ports and data directory) instead of stopping the machine's.

use crate::backoff::Backoff;
use crate::error::{Error, Result};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Port of the machine's RabbitMQ.
pub const RABBITMQ_PORT: u16 = 5672;
/// How long a service may take to open its port.
pub const SERVICE_PORT_TIMEOUT: Duration = Duration::from_secs(120);

/// A TCP port nobody listens on right now (the OS picks it).
pub fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| Error::io("127.0.0.1:0", e))?;
    Ok(l.local_addr()
        .map_err(|e| Error::io("127.0.0.1:0", e))?
        .port())
}

/// Whether something accepts TCP on `ip:port` now.
pub fn port_open(ip: IpAddr, port: u16) -> bool {
    std::net::TcpStream::connect_timeout(&(ip, port).into(), Duration::from_secs(1)).is_ok()
}

/// Waits until `ip:port` accepts TCP, printing progress lines (the seed's words).
pub async fn wait_port(
    service: &str,
    ip: IpAddr,
    port: u16,
    p: &mut dyn FnMut(&str),
) -> Result<()> {
    p(&format!(
        "waiting for {service} service port on {ip}:{port}"
    ));
    let deadline = Instant::now() + SERVICE_PORT_TIMEOUT;
    let mut backoff = Backoff::default();
    loop {
        let attempt = tokio::time::timeout(
            Duration::from_secs(2),
            tokio::net::TcpStream::connect((ip, port)),
        )
        .await;
        if matches!(attempt, Ok(Ok(_))) {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(Error::Runtime(format!(
                "{service} did not open {ip}:{port} within {}s",
                SERVICE_PORT_TIMEOUT.as_secs()
            )));
        }
        let delay = backoff.next_delay();
        p(&format!(
            "Failed connecting to {ip} on {port}, Retrying in {} seconds...",
            delay.as_secs()
        ));
        tokio::time::sleep(delay).await;
    }
}

/// The arguments of a `redis-server` that keeps nothing on disk: `bind` on `port`. With a
/// `password`, the last argument is `-`: redis-server then reads [`redis_config`] from its
/// standard input, so the password is on no command line.
pub fn redis_args(bind: IpAddr, port: u16, password: bool) -> Vec<String> {
    let mut args: Vec<String> = [
        "--port",
        &port.to_string(),
        "--bind",
        &bind.to_string(),
        "--save",
        "",
        "--appendonly",
        "no",
    ]
    .map(String::from)
    .to_vec();
    if password {
        args.push("-".into());
    } else if !bind.is_loopback() {
        // Reachable from other hosts without a password only if asked for explicitly.
        args.extend(["--protected-mode".into(), "yes".into()]);
    }
    args
}

/// What a redis-server started with [`redis_args`]`(…, true)` reads on its standard input.
pub fn redis_config(password: &str) -> String {
    let quoted = password.replace('\\', "\\\\").replace('"', "\\\"");
    format!("requirepass \"{quoted}\"\n")
}

/// The standard input of a child that is given `input` (a pipe), or none.
pub fn stdin_for(input: Option<&str>) -> Stdio {
    if input.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    }
}

/// Writes `input` to a child started with [`stdin_for`]`(input)` and closes its standard
/// input. Secrets travel this way, never as arguments (which every user can read in `ps`).
pub fn feed_stdin(child: &mut Child, input: Option<&str>) -> std::io::Result<()> {
    use std::io::Write;
    match (input, child.stdin.take()) {
        (Some(text), Some(mut stdin)) => stdin.write_all(text.as_bytes()),
        _ => Ok(()),
    }
}

/// A child process that is killed (SIGKILL) when dropped, with its output in a file.
#[derive(Debug)]
pub struct Process {
    pub name: String,
    child: Child,
}

impl Process {
    /// Starts `program` with `args` and extra environment `env`; stdout and stderr go to `log`.
    pub fn spawn(
        name: &str,
        program: &Path,
        args: &[String],
        env: &[(String, String)],
        log: &Path,
    ) -> Result<Process> {
        Process::spawn_with_input(name, program, args, env, None, log)
    }

    /// [`Process::spawn`], writing `input` to its standard input first.
    pub fn spawn_with_input(
        name: &str,
        program: &Path,
        args: &[String],
        env: &[(String, String)],
        input: Option<&str>,
        log: &Path,
    ) -> Result<Process> {
        let out = std::fs::File::create(log).map_err(|e| Error::io(log, e))?;
        let err = out.try_clone().map_err(|e| Error::io(log, e))?;
        let mut child = Command::new(program)
            .args(args)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(stdin_for(input))
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| Error::io(program, e))?;
        feed_stdin(&mut child, input).map_err(|e| Error::io(program, e))?;
        Ok(Process {
            name: name.to_string(),
            child,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` (a libc signal number).
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own child, which has not been reaped (we hold it).
        unsafe { libc::kill(self.child.id() as libc::pid_t, signal) };
    }

    /// Whether it still runs.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGTERM, then waits up to `timeout` for its exit status (`None`: still running).
    pub fn terminate(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        self.signal(libc::SIGTERM);
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Some(st);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A `redis-server` of one's own on loopback, gone when dropped.
#[derive(Debug)]
pub struct RedisServer {
    pub port: u16,
    password: Option<String>,
    dir: PathBuf,
    proc: Option<Process>,
}

impl RedisServer {
    /// Starts one on a free port (logging into `dir`) and waits until it answers.
    pub fn start(dir: &Path, password: Option<&str>) -> Result<RedisServer> {
        let mut r = RedisServer {
            port: free_port()?,
            password: password.map(str::to_string),
            dir: dir.to_path_buf(),
            proc: None,
        };
        r.restart()?;
        Ok(r)
    }

    pub fn url(&self) -> String {
        match &self.password {
            Some(p) => format!("redis://:{p}@127.0.0.1:{}/0", self.port),
            None => format!("redis://127.0.0.1:{}/0", self.port),
        }
    }

    /// Kills it (its data is gone: it keeps nothing on disk).
    pub fn stop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill();
        }
    }

    /// (Re)starts it on the same port, empty, and waits until it answers.
    pub fn restart(&mut self) -> Result<()> {
        self.stop();
        let lo = IpAddr::from([127, 0, 0, 1]);
        let args = redis_args(lo, self.port, self.password.is_some());
        let config = self.password.as_deref().map(redis_config);
        let log = self.dir.join(format!("redis-{}.log", self.port));
        self.proc = Some(Process::spawn_with_input(
            "redis-server",
            Path::new("redis-server"),
            &args,
            &[],
            config.as_deref(),
            &log,
        )?);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !port_open(lo, self.port) {
            if Instant::now() > deadline {
                return Err(Error::Runtime(format!(
                    "redis-server did not open port {} (see {})",
                    self.port,
                    log.display()
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }
}

/// Runs `rabbitmqctl` with `args` (against `node`, or the machine's broker); its output.
pub fn rabbitmqctl(node: Option<&str>, args: &[&str]) -> Result<String> {
    rabbitmqctl_input(node, args, None)
}

/// [`rabbitmqctl`] with `input` on its standard input (where `add_user` and
/// `change_password` read the password when it is not an argument).
pub fn rabbitmqctl_input(node: Option<&str>, args: &[&str], input: Option<&str>) -> Result<String> {
    let mut cmd = Command::new("rabbitmqctl");
    if let Some(n) = node {
        cmd.args(["-n", n]);
    }
    let cannot = |e: std::io::Error| {
        Error::Runtime(format!(
            "cannot run rabbitmqctl: {e} (install rabbitmq-server)"
        ))
    };
    let mut child = cmd
        .args(args)
        .stdin(stdin_for(input))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(cannot)?;
    feed_stdin(&mut child, input).map_err(cannot)?;
    let out = child.wait_with_output().map_err(cannot)?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(Error::Runtime(format!(
            "rabbitmqctl {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// What a RabbitMQ user of a cluster is for, and so what it may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrokerRole {
    /// A ts-client: publish reports and requests, keep one queue of its own bound to the
    /// updates exchange. It may not publish to `ts.master_updates` or `ts.control`, nor
    /// declare (and so delete) the shared queues and exchanges.
    Client,
    /// A ts-server replica: the shared topology, its control queue, the updates and control
    /// exchanges, and answers to client queues.
    Server,
    /// tsc: everything in the cluster's vhost, and nothing beyond it (not an administrator).
    Operator,
}

impl BrokerRole {
    pub const ALL: [BrokerRole; 3] = [BrokerRole::Client, BrokerRole::Server, BrokerRole::Operator];

    /// Its user name's suffix.
    pub fn as_str(self) -> &'static str {
        match self {
            BrokerRole::Client => "client",
            BrokerRole::Server => "server",
            BrokerRole::Operator => "operator",
        }
    }

    /// `[configure, write, read]` permission patterns (RabbitMQ's regular expressions over
    /// exchange and queue names; the default exchange is `amq.default`).
    pub fn permissions(self) -> [&'static str; 3] {
        match self {
            // Configure: its own server-named queue. Write: publish through the default
            // exchange, and bind its queue. Read: consume its queue, bind to the updates
            // exchange. Passive declarations of the shared topology need no permission.
            BrokerRole::Client => [
                r"^amq\.gen-.*$",
                r"^(amq\.default|amq\.gen-.*)$",
                r"^(amq\.gen-.*|ts\.master_updates)$",
            ],
            BrokerRole::Server => [
                r"^(ts\.reports|ts\.rpc|ts\.master_updates|ts\.control|ts\.replica\..*)$",
                r"^(amq\.default|ts\.master_updates|ts\.control|ts\.replica\..*)$",
                r"^(ts\.reports|ts\.rpc|ts\.control|ts\.replica\..*)$",
            ],
            BrokerRole::Operator => [".*", ".*", ".*"],
        }
    }
}

/// One `rabbitmqctl` invocation: its arguments, and what it reads on standard input (a
/// password: `add_user` and `change_password` read it there, so it is on no command line).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CtlCommand {
    pub args: Vec<String>,
    pub input: Option<String>,
}

impl CtlCommand {
    fn new(args: &[&str]) -> CtlCommand {
        CtlCommand {
            args: args.iter().map(|a| a.to_string()).collect(),
            input: None,
        }
    }
}

/// The `rabbitmqctl` invocations that give a cluster its vhost and one user per role with
/// exactly that role's permissions, no tags (so no administrator). `users`: (name, password,
/// role). Creating a user that exists changes its password instead (see [`apply_broker_setup`]).
pub fn broker_setup(vhost: &str, users: &[(String, String, BrokerRole)]) -> Vec<CtlCommand> {
    let mut cmds = vec![CtlCommand::new(&["add_vhost", vhost])];
    for (name, pass, role) in users {
        let [c, w, r] = role.permissions();
        cmds.push(CtlCommand {
            input: Some(pass.clone()),
            ..CtlCommand::new(&["add_user", name])
        });
        cmds.push(CtlCommand::new(&["set_user_tags", name]));
        cmds.push(CtlCommand::new(&[
            "set_permissions",
            "-p",
            vhost,
            name,
            c,
            w,
            r,
        ]));
    }
    cmds
}

/// Runs [`broker_setup`]'s commands with `run` (rabbitmqctl here, or inside a container): an
/// `add_user` or `add_vhost` that fails because the thing exists is not an error.
pub async fn apply_broker_setup<F, Fut>(cmds: Vec<CtlCommand>, mut run: F) -> Result<()>
where
    F: FnMut(CtlCommand) -> Fut,
    Fut: std::future::Future<Output = Result<String>>,
{
    for cmd in cmds {
        match (cmd.args[0].as_str(), run(cmd.clone()).await) {
            (_, Ok(_)) | ("add_vhost", Err(_)) => {}
            ("add_user", Err(_)) => {
                let change = CtlCommand {
                    input: cmd.input.clone(),
                    ..CtlCommand::new(&["change_password", &cmd.args[1]])
                };
                run(change).await?;
            }
            (_, Err(e)) => return Err(e),
        }
    }
    Ok(())
}

/// Creates `vhost` and gives `user` (created with `password` if one is given; else it must
/// exist, like `guest`) every permission in it.
pub fn add_vhost(
    node: Option<&str>,
    vhost: &str,
    user: &str,
    password: Option<&str>,
) -> Result<()> {
    rabbitmqctl(node, &["-q", "add_vhost", vhost])?;
    if let Some(pass) = password {
        if rabbitmqctl_input(node, &["-q", "add_user", user], Some(pass)).is_err() {
            rabbitmqctl_input(node, &["-q", "change_password", user], Some(pass))?;
        }
    }
    rabbitmqctl(
        node,
        &["-q", "set_permissions", "-p", vhost, user, ".*", ".*", ".*"],
    )?;
    Ok(())
}

/// `(queue, messages, consumers)` of every queue in `vhost`.
pub fn list_queues(node: Option<&str>, vhost: &str) -> Result<Vec<(String, u64, u64)>> {
    let out = rabbitmqctl(
        node,
        &[
            "-q",
            "list_queues",
            "-p",
            vhost,
            "--no-table-headers",
            "name",
            "messages",
            "consumers",
        ],
    )?;
    Ok(out
        .lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            Some((
                it.next()?.to_string(),
                it.next()?.parse().ok()?,
                it.next()?.parse().ok()?,
            ))
        })
        .collect())
}

/// A RabbitMQ virtual host of one's own on a broker (the machine's, or a [`RabbitNode`]),
/// used as `guest`; deleted when dropped.
#[derive(Debug)]
pub struct Vhost {
    pub name: String,
    node: Option<String>,
    port: u16,
    /// Users made by [`Vhost::role_url`], deleted with the vhost.
    users: std::sync::Mutex<Vec<String>>,
}

impl Vhost {
    /// A fresh vhost named `<prefix>-<random>` on the machine's broker.
    pub fn create(prefix: &str) -> Result<Vhost> {
        if !port_open(IpAddr::from([127, 0, 0, 1]), RABBITMQ_PORT) {
            return Err(Error::Runtime(format!(
                "RabbitMQ is not listening on 127.0.0.1:{RABBITMQ_PORT}; start it (scripts/setup.sh does)"
            )));
        }
        Self::create_on(None, RABBITMQ_PORT, prefix)
    }

    fn create_on(node: Option<&str>, port: u16, prefix: &str) -> Result<Vhost> {
        let name = format!("{prefix}-{}", uuid::Uuid::new_v4().simple());
        add_vhost(node, &name, "guest", None)?;
        Ok(Vhost {
            name,
            node: node.map(str::to_string),
            port,
            users: Default::default(),
        })
    }

    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/{}", self.port, self.name)
    }

    /// The URL of a new user of this vhost with exactly `role`'s permissions (a random
    /// password; the user is deleted with the vhost).
    pub fn role_url(&self, role: BrokerRole) -> Result<String> {
        let user = format!("{}-{}-{}", self.name, role.as_str(), self.users_len());
        let pass = uuid::Uuid::new_v4().simple().to_string();
        let [c, w, r] = role.permissions();
        let node = self.node.as_deref();
        rabbitmqctl_input(node, &["-q", "add_user", &user], Some(&pass))?;
        self.users.lock().expect("not poisoned").push(user.clone());
        rabbitmqctl(
            node,
            &["-q", "set_permissions", "-p", &self.name, &user, c, w, r],
        )?;
        Ok(format!(
            "amqp://{user}:{pass}@127.0.0.1:{}/{}",
            self.port, self.name
        ))
    }

    fn users_len(&self) -> usize {
        self.users.lock().expect("not poisoned").len()
    }

    /// `(queue, messages, consumers)` of every queue in it.
    pub fn queues(&self) -> Result<Vec<(String, u64, u64)>> {
        list_queues(self.node.as_deref(), &self.name)
    }
}

impl Drop for Vhost {
    fn drop(&mut self) {
        for user in self.users.get_mut().expect("not poisoned").drain(..) {
            let _ = rabbitmqctl(self.node.as_deref(), &["-q", "delete_user", &user]);
        }
        let _ = rabbitmqctl(self.node.as_deref(), &["-q", "delete_vhost", &self.name]);
    }
}

/// A RabbitMQ node of one's own: its own node name, AMQP and distribution ports and data
/// directory, run as the `rabbitmq` user like the machine's. It can be stopped and started
/// without disturbing anyone else; it is stopped when dropped.
#[derive(Debug)]
pub struct RabbitNode {
    pub name: String,
    pub port: u16,
    dir: PathBuf,
    proc: Option<Process>,
}

/// How long a RabbitMQ node may take to start.
pub const RABBIT_START_TIMEOUT: Duration = Duration::from_secs(90);

impl RabbitNode {
    /// Starts a node with its data under `dir` (created, and given to the `rabbitmq` user) and
    /// waits until it accepts AMQP.
    pub async fn start(dir: &Path) -> Result<RabbitNode> {
        let data = dir.join("rabbitmq");
        std::fs::create_dir_all(&data).map_err(|e| Error::io(&data, e))?;
        std::fs::write(data.join("enabled_plugins"), "[].\n").map_err(|e| Error::io(&data, e))?;
        let chown = Command::new("chown")
            .args(["-R", "rabbitmq:rabbitmq"])
            .arg(&data)
            .status()
            .map_err(|e| Error::io("chown", e))?;
        if !chown.success() {
            return Err(Error::Runtime(format!(
                "cannot give {} to the rabbitmq user",
                data.display()
            )));
        }
        let mut node = RabbitNode {
            name: format!("ts-{}@localhost", uuid::Uuid::new_v4().simple()),
            port: free_port()?,
            dir: data,
            proc: None,
        };
        node.boot().await?;
        Ok(node)
    }

    fn boot_env(&self) -> Result<Vec<(String, String)>> {
        let d = |sub: &str| self.dir.join(sub).display().to_string();
        Ok(vec![
            ("RABBITMQ_NODENAME".into(), self.name.clone()),
            ("RABBITMQ_NODE_IP_ADDRESS".into(), "127.0.0.1".into()),
            ("RABBITMQ_NODE_PORT".into(), self.port.to_string()),
            ("RABBITMQ_DIST_PORT".into(), free_port()?.to_string()),
            ("RABBITMQ_MNESIA_BASE".into(), d("mnesia")),
            ("RABBITMQ_LOG_BASE".into(), d("log")),
            ("RABBITMQ_PID_FILE".into(), d("pid")),
            ("RABBITMQ_ENABLED_PLUGINS_FILE".into(), d("enabled_plugins")),
            ("RABBITMQ_CONFIG_FILE".into(), d("rabbitmq")),
        ])
    }

    /// Starts (or restarts) the node's process and waits until it accepts AMQP.
    async fn boot(&mut self) -> Result<()> {
        let env = self.boot_env()?;
        let log = self.dir.join("console.log");
        let args: Vec<String> = [
            "-u",
            "rabbitmq",
            "--",
            "/usr/lib/rabbitmq/bin/rabbitmq-server",
        ]
        .map(String::from)
        .to_vec();
        self.proc = Some(Process::spawn(
            "rabbitmq-server",
            Path::new("runuser"),
            &args,
            &env,
            &log,
        )?);
        let lo = IpAddr::from([127, 0, 0, 1]);
        let deadline = Instant::now() + RABBIT_START_TIMEOUT;
        while !port_open(lo, self.port) {
            if Instant::now() > deadline || !self.proc.as_mut().is_some_and(|p| p.is_running()) {
                return Err(Error::Runtime(format!(
                    "RabbitMQ node {} did not open port {} (see {})",
                    self.name,
                    self.port,
                    log.display()
                )));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        rabbitmqctl(Some(&self.name), &["-q", "await_startup"])?;
        Ok(())
    }

    /// The node's default vhost as `guest`.
    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    /// A fresh vhost of one's own on this node.
    pub fn vhost(&self, prefix: &str) -> Result<Vhost> {
        Vhost::create_on(Some(&self.name), self.port, prefix)
    }

    /// Stops the broker application: every connection is dropped and the port closes.
    pub fn stop_app(&self) -> Result<()> {
        rabbitmqctl(Some(&self.name), &["-q", "stop_app"]).map(|_| ())
    }

    /// Starts the broker application again.
    pub fn start_app(&self) -> Result<()> {
        rabbitmqctl(Some(&self.name), &["-q", "start_app"]).map(|_| ())
    }

    /// Kills the node's whole process group at once, as a crash would.
    pub fn kill(&mut self) {
        self.shutdown(false);
    }

    /// Starts a killed node again, on the same ports and data.
    pub async fn restart(&mut self) -> Result<()> {
        self.shutdown(false);
        self.boot().await
    }

    fn shutdown(&mut self, polite: bool) {
        if polite {
            let _ = rabbitmqctl(Some(&self.name), &["-q", "stop"]);
        }
        // The Erlang VM runs under runuser's shell; the node's pid file names it. A pid counts
        // as ours only while its command line still names our node.
        let pid = std::fs::read_to_string(self.dir.join("pid"))
            .ok()
            .and_then(|p| p.trim().parse::<libc::pid_t>().ok());
        if let Some(pid) = pid {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            if String::from_utf8_lossy(&cmdline).contains(&self.name) {
                // SAFETY: kill(2) on the live process of our own node.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        if let Some(mut p) = self.proc.take() {
            p.kill();
        }
    }
}

impl Drop for RabbitNode {
    fn drop(&mut self) {
        self.shutdown(true);
    }
}
