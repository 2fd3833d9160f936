//! What both benchmarks need: a fresh RabbitMQ vhost on the local broker and a private
//! `redis-server`, both removed when the [`Services`] value is dropped, plus child processes
//! that are killed with it.

#![allow(dead_code)]

use std::process::{Child, Command, Stdio};
use time_sync::cache::RedisStore;
use tokio_util::sync::CancellationToken;

pub fn sh(cmd: &str, args: &[&str]) {
    let st = Command::new(cmd).args(args).stdout(Stdio::null()).status();
    assert!(
        st.map(|s| s.success()).unwrap_or(false),
        "{cmd} {args:?} failed (RabbitMQ must be running locally; scripts/setup.sh starts it)"
    );
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A vhost, a Redis, and processes; all gone on drop (processes first, last started first).
pub struct Services {
    pub vhost: String,
    pub redis_port: u16,
    pub procs: Vec<Child>,
}

impl Services {
    pub fn start(prefix: &str) -> Services {
        let vhost = format!("{prefix}-{}", uuid::Uuid::new_v4().simple());
        sh("rabbitmqctl", &["-q", "add_vhost", &vhost]);
        sh(
            "rabbitmqctl",
            &[
                "-q",
                "set_permissions",
                "-p",
                &vhost,
                "guest",
                ".*",
                ".*",
                ".*",
            ],
        );
        let redis_port = free_port();
        let redis = Command::new("redis-server")
            .args(["--port", &redis_port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server");
        Services {
            vhost,
            redis_port,
            procs: vec![redis],
        }
    }

    pub fn amqp_url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:5672/{}", self.vhost)
    }

    pub fn redis_url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.redis_port)
    }

    pub async fn store(&self) -> RedisStore {
        loop {
            if let Ok(Some(s)) =
                RedisStore::connect(&self.redis_url(), &CancellationToken::new()).await
            {
                return s;
            }
        }
    }

    pub fn spawn(&mut self, bin: &str, args: &[String]) -> usize {
        let child = Command::new(bin)
            .args(args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{bin}: {e}"));
        self.procs.push(child);
        self.procs.len() - 1
    }

    pub fn kill(&mut self, idx: usize) {
        let _ = self.procs[idx].kill();
        let _ = self.procs[idx].wait();
    }
}

impl Drop for Services {
    fn drop(&mut self) {
        for c in self.procs.iter_mut().rev() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = Command::new("rabbitmqctl")
            .args(["-q", "delete_vhost", &self.vhost])
            .output();
    }
}
