//! `tsc ... tail`: the last lines of a node's JSON log, formatted for people, optionally
//! following the file as it grows (like `tail -f`, surviving truncation).

use super::output::{exit, CliResult, Failure};
use super::snapshot::replicas;
use super::view::current_leader;
use crate::error::{Error, Result};
use crate::runtime::cluster::{ClusterConfig, State};
use crate::runtime::Runtime;
use clap::Args;
use std::io::{BufRead, Seek, SeekFrom};
use std::path::Path;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often a followed file is checked for new lines.
pub const FOLLOW_POLL: Duration = Duration::from_millis(200);

/// Formats one JSON log line: `timestamp LEVEL message key=value ...`; non-JSON lines as they are.
pub fn format_line(line: &str, verbose: bool) -> String {
    if verbose {
        return line.to_string();
    }
    let Ok(serde_json::Value::Object(v)) = serde_json::from_str::<serde_json::Value>(line) else {
        return line.to_string();
    };
    let ts = v.get("timestamp").and_then(|t| t.as_str()).unwrap_or("");
    let level = v.get("level").and_then(|t| t.as_str()).unwrap_or("");
    let mut out = format!("{ts} {level:>5}");
    if let Some(serde_json::Value::Object(fields)) = v.get("fields") {
        if let Some(m) = fields.get("message").and_then(|m| m.as_str()) {
            out.push(' ');
            out.push_str(m);
        }
        for (k, val) in fields.iter().filter(|(k, _)| k.as_str() != "message") {
            let val = val.as_str().map_or_else(|| val.to_string(), str::to_string);
            out.push_str(&format!(" {k}={val}"));
        }
    }
    out
}

/// Prints the last `lines` lines of `path`, then (if `follow`) new lines until `stop`.
pub async fn tail(
    path: &Path,
    lines: usize,
    follow: bool,
    verbose: bool,
    stop: CancellationToken,
    out: &mut (dyn FnMut(&str) + Send),
) -> Result<()> {
    let file = std::fs::File::open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            Error::NotFound(format!(
                "no log at {} (has the node started?)",
                path.display()
            ))
        } else {
            Error::io(path, e)
        }
    })?;
    let mut reader = std::io::BufReader::new(file);
    let mut all = Vec::new();
    let mut buf = String::new();
    while reader.read_line(&mut buf).map_err(|e| Error::io(path, e))? > 0 {
        if buf.ends_with('\n') {
            all.push(std::mem::take(&mut buf));
        }
    }
    for l in all.iter().skip(all.len().saturating_sub(lines)) {
        out(&format_line(l.trim_end(), verbose));
    }
    if !follow {
        return Ok(());
    }
    let mut pos = reader.stream_position().map_err(|e| Error::io(path, e))? - buf.len() as u64;
    buf.clear();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            _ = tokio::time::sleep(FOLLOW_POLL) => {}
        }
        let len = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        if len < pos {
            pos = 0; // truncated or replaced: start over
        }
        if len == pos {
            continue;
        }
        let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        f.seek(SeekFrom::Start(pos))
            .map_err(|e| Error::io(path, e))?;
        let mut r = std::io::BufReader::new(f);
        loop {
            let n = r.read_line(&mut buf).map_err(|e| Error::io(path, e))?;
            if n == 0 || !buf.ends_with('\n') {
                break; // keep a partial line for next time
            }
            pos += n as u64;
            out(&format_line(buf.trim_end(), verbose));
            buf.clear();
        }
        buf.clear();
    }
}

/// `tsc clients tail`'s arguments.
#[derive(Args, Debug)]
pub struct TailArgs {
    #[arg(short = 'c', long = "client")]
    pub client: String,
    #[command(flatten)]
    pub opts: TailOpts,
}

/// `tsc server tail`'s arguments.
#[derive(Args, Debug)]
pub struct ServerTailArgs {
    /// Replica id (`2` or `server-2`); default: the current leader.
    #[arg(short = 's', long = "server")]
    pub server: Option<String>,
    #[command(flatten)]
    pub opts: TailOpts,
}

/// How to show a log.
#[derive(Args, Debug)]
pub struct TailOpts {
    /// Keep printing new lines.
    #[arg(short, long)]
    pub follow: bool,
    /// Raw JSON lines with every field.
    #[arg(short, long)]
    pub verbose: bool,
    /// Lines of history to show first.
    #[arg(short = 'n', long, default_value_t = 20)]
    pub lines: usize,
}

/// Prints a log file as `opts` asks, following it until ctrl-c with `-f`.
pub async fn tail_file(path: &Path, o: &TailOpts) -> CliResult {
    let stop = CancellationToken::new();
    if o.follow {
        let s = stop.clone();
        tokio::spawn(async move {
            let _ = tokio::signal::ctrl_c().await;
            s.cancel();
        });
    }
    let mut print = super::output::print_line;
    tail(path, o.lines, o.follow, o.verbose, stop, &mut print).await?;
    Ok(())
}

/// `tsc server tail`: the log of the replica named, else the leader's, else the lowest's.
pub async fn server_tail(
    cfg: &ClusterConfig,
    rt: &Runtime,
    state: &State,
    a: &ServerTailArgs,
) -> CliResult {
    let rows = replicas(rt, state).await?;
    let id = match a.server.as_deref() {
        Some(s) => {
            let want = s.strip_prefix("server-").unwrap_or(s);
            rows.iter().find(|r| r.id.to_string() == want).map(|r| r.id)
        }
        None => current_leader(&rows).or(rows.first()).map(|r| r.id),
    };
    let id = id.ok_or_else(|| {
        Failure::new(
            exit::NOT_FOUND,
            match &a.server {
                Some(s) => {
                    format!("no server replica {s:?} in this cluster (see `tsc servers list`)")
                }
                None => "no server replica in this cluster".into(),
            },
        )
    })?;
    let path = cfg.server_log_dir.join(format!("server-{id}.json"));
    tail_file(&path, &a.opts).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_json_lines_for_people() {
        let l = r#"{"timestamp":"2026-11-22T02:15:23.990716Z","level":"INFO","fields":{"message":"slewing toward master","master_id":"abc","offset_us":5467}}"#;
        assert_eq!(
            format_line(l, false),
            "2026-11-22T02:15:23.990716Z  INFO slewing toward master master_id=abc offset_us=5467"
        );
        assert_eq!(format_line(l, true), l);
        assert_eq!(format_line("plain text", false), "plain text");
    }

    #[tokio::test]
    async fn follows_appended_lines() {
        let p = std::env::temp_dir().join(format!("tsc-tail-{}", uuid::Uuid::new_v4().simple()));
        std::fs::write(&p, "a\nb\nc\n").unwrap();
        let stop = CancellationToken::new();
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
        let (p2, s2, stop2) = (p.clone(), seen.clone(), stop.clone());
        let task = tokio::spawn(async move {
            let mut out = |l: &str| s2.lock().unwrap().push(l.to_string());
            tail(&p2, 2, true, true, stop2, &mut out).await.unwrap();
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().append(true).open(&p).unwrap();
        f.write_all(b"d\ne").unwrap();
        f.flush().unwrap();
        for _ in 0..50 {
            if seen.lock().unwrap().len() >= 3 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        stop.cancel();
        task.await.unwrap();
        assert_eq!(
            *seen.lock().unwrap(),
            ["b", "c", "d"],
            "partial line `e` is held back"
        );
        std::fs::remove_file(&p).unwrap();
    }
}
