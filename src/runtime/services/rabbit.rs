//! RabbitMQ of one's own: `rabbitmqctl`, the users and permissions of a cluster, a virtual
//! host on the machine's broker, or a whole node (own name, ports and data directory).

use super::*;
use crate::error::{Error, Result};

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
        Self::named_on(node, port, name)
    }

    fn named_on(node: Option<&str>, port: u16, name: String) -> Result<Vhost> {
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

/// The command that runs a RabbitMQ node as the `rabbitmq` user (its settings come from the
/// environment, [`node_env`]).
pub fn node_command() -> Vec<String> {
    [
        "runuser",
        "-u",
        "rabbitmq",
        "--",
        "/usr/lib/rabbitmq/bin/rabbitmq-server",
    ]
    .map(String::from)
    .to_vec()
}

/// The environment of a node of one's own: Erlang node `name`, AMQP on `127.0.0.1:port`,
/// distribution on `dist_port`, everything it writes under `dir` ([`prepare_node_dir`]).
pub fn node_env(name: &str, port: u16, dist_port: u16, dir: &Path) -> Vec<(String, String)> {
    let d = |sub: &str| dir.join(sub).display().to_string();
    vec![
        ("RABBITMQ_NODENAME".into(), name.to_string()),
        ("RABBITMQ_NODE_IP_ADDRESS".into(), "127.0.0.1".into()),
        ("RABBITMQ_NODE_PORT".into(), port.to_string()),
        ("RABBITMQ_DIST_PORT".into(), dist_port.to_string()),
        ("RABBITMQ_MNESIA_BASE".into(), d("mnesia")),
        ("RABBITMQ_LOG_BASE".into(), d("log")),
        ("RABBITMQ_PID_FILE".into(), d("pid")),
        ("RABBITMQ_ENABLED_PLUGINS_FILE".into(), d("enabled_plugins")),
        ("RABBITMQ_CONFIG_FILE".into(), d("rabbitmq")),
    ]
}

/// Creates a node's data directory (no plugins) and gives it to the `rabbitmq` user.
pub fn prepare_node_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    std::fs::write(dir.join("enabled_plugins"), "[].\n").map_err(|e| Error::io(dir, e))?;
    let chown = Command::new("chown")
        .args(["-R", "rabbitmq:rabbitmq"])
        .arg(dir)
        .status()
        .map_err(|e| Error::io("chown", e))?;
    if chown.success() {
        Ok(())
    } else {
        Err(Error::Runtime(format!(
            "cannot give {} to the rabbitmq user (a node of one's own needs root)",
            dir.display()
        )))
    }
}

/// The Erlang VM of node `name` whose data is in `dir`: the pid its pid file names, while that
/// process still has the node's name in its environment (the VM's command line does not name
/// it), so a reused pid is never taken for it.
pub fn node_pid(dir: &Path, name: &str) -> Option<u32> {
    let pid: u32 = std::fs::read_to_string(dir.join("pid"))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let environ = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    let want = format!("RABBITMQ_NODENAME={name}");
    environ
        .split(|b| *b == 0)
        .any(|v| v == want.as_bytes())
        .then_some(pid)
}

/// How long a RabbitMQ node may take to start.
pub const RABBIT_START_TIMEOUT: Duration = Duration::from_secs(90);

impl RabbitNode {
    /// Starts a node with its data under `dir` (created, and given to the `rabbitmq` user) and
    /// waits until it accepts AMQP.
    pub async fn start(dir: &Path) -> Result<RabbitNode> {
        let data = dir.join("rabbitmq");
        prepare_node_dir(&data)?;
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
        Ok(node_env(&self.name, self.port, free_port()?, &self.dir))
    }

    /// Starts (or restarts) the node's process and waits until it accepts AMQP.
    async fn boot(&mut self) -> Result<()> {
        let env = self.boot_env()?;
        let log = self.dir.join("console.log");
        let args = node_command()[1..].to_vec();
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

    /// A vhost named `name` on this node (the same as another node's, for a second broker).
    pub fn vhost_named(&self, name: &str) -> Result<Vhost> {
        Vhost::named_on(Some(&self.name), self.port, name.to_string())
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

    /// Freezes (`true`) or thaws the node's Erlang VM, as a stuck host would: connections stay
    /// open and nothing answers.
    pub fn pause(&self, pause: bool) {
        self.signal(if pause { libc::SIGSTOP } else { libc::SIGCONT });
    }

    /// Joins this node to `first`'s cluster (its data is reset): how a test or a benchmark
    /// makes a RabbitMQ cluster of nodes of its own. The nodes share the `rabbitmq` user's
    /// Erlang cookie.
    pub fn join(&self, first: &RabbitNode) -> Result<()> {
        for args in [
            vec!["-q", "stop_app"],
            vec!["-q", "join_cluster", first.name.as_str()],
            vec!["-q", "start_app"],
        ] {
            rabbitmqctl(Some(&self.name), &args)?;
        }
        Ok(())
    }

    /// The node's Erlang VM, while it runs (for its CPU time).
    pub fn vm_pid(&self) -> Option<u32> {
        node_pid(&self.dir, &self.name)
    }

    /// Sends `signal` to the node's Erlang VM. It runs under runuser's shell; the node's pid
    /// file names it, and a pid counts as ours only while its environment names our node.
    fn signal(&self, signal: libc::c_int) {
        if let Some(pid) = node_pid(&self.dir, &self.name) {
            // SAFETY: kill(2) on the live process of our own node.
            unsafe { libc::kill(pid as libc::pid_t, signal) };
        }
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
        self.signal(libc::SIGKILL);
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
