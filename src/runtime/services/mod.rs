//! Private services on this machine: a `redis-server` of one's own, a RabbitMQ virtual host of
//! one's own on the machine's broker, or a whole RabbitMQ node of one's own.
//!
//! The local runtime, the integration tests and the benchmarks all need them, and all bring
//! them up through this one module, so they start them the same way and clean up the same way.
//! Nothing here touches a service it did not start: a [`Vhost`] lives on the shared broker but
//! only its own vhost is created and deleted, and a test that must stop a broker starts its own
//! [`RabbitNode`] (own node name, ports and data directory) instead of stopping the machine's.
//!
//! `redis` holds the redis-server, `rabbit` the RabbitMQ vhosts, nodes and `rabbitmqctl`; this
//! file the pieces both use (ports, child processes, secrets on standard input).

use crate::backoff::Backoff;
use crate::error::{Error, Result};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod rabbit;
mod redis;
mod sentinel;
pub use rabbit::*;
pub use redis::*;
pub use sentinel::*;

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
