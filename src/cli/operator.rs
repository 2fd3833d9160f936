//! Operator commands: what tsc (and the dashboard) ask the leader to do over its HTTP API.
//!
//! A command goes to the replica that leads now (found in its Redis record), with the operator
//! token from cluster.toml and tsc's Lamport counter, which lives in tsc's home between runs
//! (`lamport`) so that every command tsc sends is stamped after the last one it saw. The
//! leader's answer (or its exact error) comes back as it is.

use super::output::{exit, CliResult, Failure};
use super::snapshot::replicas;
use super::view::current_leader;
use crate::runtime::cluster::{ClusterConfig, State};
use crate::runtime::Runtime;
use serde_json::{json, Value};
use std::path::Path;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// File in tsc's home with its Lamport counter.
pub const LAMPORT_FILE: &str = "lamport";
/// Longest wait for an answer.
pub const HTTP_TIMEOUT: Duration = Duration::from_secs(10);

/// One HTTP/1.1 request to `addr` (`ip:port`); the status and the JSON body (`null` if the
/// body is not JSON). A tiny client: one request per connection, `Connection: close`.
pub async fn http(
    addr: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&Value>,
) -> Result<(u16, Value), String> {
    let exchange = async {
        let mut s = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("cannot reach {addr}: {e}"))?;
        let payload = body.map(|b| b.to_string()).unwrap_or_default();
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
            payload.len()
        );
        if body.is_some() {
            req.push_str("Content-Type: application/json\r\n");
        }
        if let Some(t) = token {
            req.push_str(&format!("Authorization: Bearer {t}\r\n"));
        }
        req.push_str("\r\n");
        req.push_str(&payload);
        s.write_all(req.as_bytes())
            .await
            .map_err(|e| format!("{addr}: {e}"))?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw)
            .await
            .map_err(|e| format!("{addr}: {e}"))?;
        let raw = String::from_utf8_lossy(&raw);
        let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
        let code = head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| format!("{addr}: not an HTTP answer"))?;
        Ok((code, serde_json::from_str(body).unwrap_or(Value::Null)))
    };
    tokio::time::timeout(HTTP_TIMEOUT, exchange)
        .await
        .map_err(|_| format!("{addr} did not answer within {}s", HTTP_TIMEOUT.as_secs()))?
}

/// tsc's Lamport counter after one more send.
fn tick_lamport(home: &Path) -> u64 {
    let path = home.join(LAMPORT_FILE);
    let lt = std::fs::read_to_string(&path)
        .ok()
        .and_then(|t| t.trim().parse::<u64>().ok())
        .unwrap_or(0)
        + 1;
    let _ = crate::keys::write_private(&path, &lt.to_string());
    lt
}

/// tsc's Lamport counter after receiving an answer stamped `remote`.
fn observe_lamport(home: &Path, remote: u64) {
    let path = home.join(LAMPORT_FILE);
    let mine = std::fs::read_to_string(&path)
        .ok()
        .and_then(|t| t.trim().parse::<u64>().ok())
        .unwrap_or(0);
    let _ = crate::keys::write_private(&path, &(mine.max(remote) + 1).to_string());
}

/// The API address of the replica that leads now.
pub async fn leader_api(rt: &Runtime, state: &State) -> CliResult<(u64, String)> {
    let rows = replicas(rt, state).await?;
    let leader = current_leader(&rows).ok_or_else(|| {
        Failure::new(
            exit::FAILURE,
            "no replica leads right now; try again in a few seconds (`tsc servers list`)",
        )
    })?;
    let http = leader
        .http
        .clone()
        .filter(|h| !h.is_empty())
        .ok_or_else(|| {
            Failure::new(
                exit::FAILURE,
                format!(
                    "replica {} leads but has not published its API address",
                    leader.id
                ),
            )
        })?;
    Ok((leader.id, http))
}

/// POSTs `body` (plus tsc's Lamport counter as `lt`) to `path` on the leader; its JSON answer.
pub async fn command(
    cfg: &ClusterConfig,
    rt: &Runtime,
    state: &State,
    path: &str,
    body: Value,
) -> CliResult<Value> {
    let (id, addr) = leader_api(rt, state).await?;
    command_at(cfg, id, &addr, path, body).await
}

/// POSTs `body` (plus tsc's Lamport counter as `lt`) to `path` on replica `id`, whose API is
/// at `addr`; its JSON answer, or its exact refusal.
pub async fn command_at(
    cfg: &ClusterConfig,
    id: u64,
    addr: &str,
    path: &str,
    mut body: Value,
) -> CliResult<Value> {
    body["lt"] = json!(tick_lamport(&cfg.home));
    let token = &cfg.credentials.operator_token;
    let (code, answer) = http(addr, "POST", path, Some(token), Some(&body))
        .await
        .map_err(|e| Failure::new(exit::FAILURE, e))?;
    if let Some(lt) = answer.get("lt").and_then(Value::as_u64) {
        observe_lamport(&cfg.home, lt);
    }
    if (200..300).contains(&code) {
        return Ok(answer);
    }
    let why = answer
        .get("error")
        .and_then(Value::as_str)
        .unwrap_or("no reason given")
        .to_string();
    let code = match code {
        404 => exit::NOT_FOUND,
        _ => exit::FAILURE,
    };
    Err(Failure::new(code, format!("replica {id} refused: {why}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lamport_counter_survives_between_runs() {
        let dir = std::env::temp_dir().join(format!("tsc-lt-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        assert_eq!(tick_lamport(&dir), 1);
        assert_eq!(tick_lamport(&dir), 2);
        observe_lamport(&dir, 40);
        assert_eq!(tick_lamport(&dir), 42);
        observe_lamport(&dir, 3);
        assert_eq!(tick_lamport(&dir), 44);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
