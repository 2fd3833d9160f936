//! A `redis-server` of one's own: its arguments (nothing on disk, the password on standard
//! input) and a handle that kills it when dropped; a primary or a replica of one.

use super::{free_port, port_open, Process};
use crate::error::{Error, Result};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The arguments of a `redis-server` that keeps nothing on disk: `bind` on `port`. With a
/// `password`, the last argument is `-`: redis-server then reads [`redis_config`] from its
/// standard input, so the password is on no command line.
///
/// Its directory is `dir`, and its file there `dump-<port>.rdb`: a replica that must resync
/// with data in memory writes one (Redis's own default is `dump.rdb` in the working directory,
/// which every other redis-server started there would load at start, another cluster's data).
pub fn redis_args(bind: IpAddr, port: u16, password: bool, dir: &Path) -> Vec<String> {
    let mut args: Vec<String> = [
        "--port",
        &port.to_string(),
        "--bind",
        &bind.to_string(),
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        &dir.display().to_string(),
        "--dbfilename",
        &dump_file(port),
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

/// The file name a redis-server started with [`redis_args`] on `port` writes, if any.
fn dump_file(port: u16) -> String {
    format!("dump-{port}.rdb")
}

/// Removes what an earlier redis-server on `port` left in `dir`, so that one started there now
/// starts empty, as one that keeps nothing on disk must.
pub fn forget_dump(dir: &Path, port: u16) {
    let _ = std::fs::remove_file(dir.join(dump_file(port)));
}

/// `password` quoted for a Redis or Sentinel configuration file.
pub(super) fn quoted(password: &str) -> String {
    format!(
        "\"{}\"",
        password.replace('\\', "\\\\").replace('"', "\\\"")
    )
}

/// What a redis-server started with [`redis_args`]`(…, true)` reads on its standard input: the
/// password clients give and the one it gives a primary (`masterauth`: a primary becomes a
/// replica after a failover), and with `replica_of`, the primary it replicates. A replica
/// loads the primary's data straight from the socket (it starts empty), and a primary sends
/// it the same way (Redis 7's default), at once rather than after waiting 5 s for more
/// replicas, so replication needs no writable directory (the container's working directory is
/// not) and a replica is in sync within milliseconds.
pub fn redis_config(password: &str, replica_of: Option<SocketAddr>) -> String {
    let p = quoted(password);
    let mut config = format!(
        "requirepass {p}\nmasterauth {p}\nrepl-diskless-sync yes\nrepl-diskless-sync-delay 0\n\
         repl-diskless-load on-empty-db\n"
    );
    if let Some(primary) = replica_of {
        config += &format!("replicaof {} {}\n", primary.ip(), primary.port());
    }
    config
}

/// A `redis-server` of one's own on loopback, gone when dropped.
#[derive(Debug)]
pub struct RedisServer {
    pub port: u16,
    password: Option<String>,
    /// The primary it replicates, when started as a replica (which needs a password).
    pub replica_of: Option<SocketAddr>,
    dir: PathBuf,
    proc: Option<Process>,
}

impl RedisServer {
    /// Starts one on a free port (logging into `dir`) and waits until it answers.
    pub fn start(dir: &Path, password: Option<&str>) -> Result<RedisServer> {
        let mut r = RedisServer {
            port: free_port()?,
            password: password.map(str::to_string),
            replica_of: None,
            dir: dir.to_path_buf(),
            proc: None,
        };
        r.restart()?;
        Ok(r)
    }

    /// Starts a replica of `primary` (with `password`, the group's) on a free port.
    pub fn start_replica(dir: &Path, password: &str, primary: SocketAddr) -> Result<RedisServer> {
        let mut r = RedisServer {
            port: free_port()?,
            password: Some(password.to_string()),
            replica_of: Some(primary),
            dir: dir.to_path_buf(),
            proc: None,
        };
        r.restart()?;
        Ok(r)
    }

    /// Its address.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub fn url(&self) -> String {
        match &self.password {
            Some(p) => format!("redis://:{p}@127.0.0.1:{}/0", self.port),
            None => format!("redis://127.0.0.1:{}/0", self.port),
        }
    }

    /// Its process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.proc.as_ref().map(Process::pid)
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
        forget_dump(&self.dir, self.port);
        let args = redis_args(lo, self.port, self.password.is_some(), &self.dir);
        let config = self
            .password
            .as_deref()
            .map(|p| redis_config(p, self.replica_of));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_keeps_its_file_in_its_own_directory() {
        let a = redis_args([127, 0, 0, 1].into(), 6390, true, Path::new("/x"));
        let at = |k: &str| a[a.iter().position(|x| x == k).unwrap() + 1].clone();
        assert_eq!(at("--dir"), "/x");
        assert_eq!(at("--dbfilename"), "dump-6390.rdb");
        assert_eq!(at("--save"), "");
        assert_eq!(
            a.last().map(String::as_str),
            Some("-"),
            "the password on stdin"
        );
        let c = redis_config("p", Some("10.0.0.2:6379".parse().unwrap()));
        assert!(c.contains("replicaof 10.0.0.2 6379\n"), "{c}");
        assert!(c.contains("repl-diskless-load on-empty-db\n"), "{c}");
    }
}
