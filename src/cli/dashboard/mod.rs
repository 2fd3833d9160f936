//! `tsc dashboard`: a live web page of the cluster, with controls.
//!
//! ```text
//!   runtime (nodes) ─┐
//!   Redis (reports,  ├─▶ feed: one snapshot loop ──frame every 250 ms──▶ watch ──SSE──▶ pages
//!    replicas, log) ─┤        (chart history, event log, cards)
//!   replica APIs ────┘                                  ▲
//!   ts.control (broadcasts) ──▶ listen ──▶ elections ───┘
//!   pages ──POST /api/… (operator token)──▶ api ──▶ the tsc command's own function
//! ```
//!
//! [`feed`] reads the cluster once per frame and every open page gets the same serialized
//! frame ([`feed::Feed`]), so N browsers do not cost N reads. [`listen`] hears the replicas'
//! election broadcasts for [`elections`]' timeline. [`api`] serves the page (embedded: no CDN,
//! no network beyond this server), the stream, and the controls, each through the function
//! of the matching tsc command. The dashboard binds to loopback unless told otherwise, and a
//! non-loopback address needs an operator token worth the name.

pub mod api;
pub mod elections;
pub mod feed;
mod listen;

use super::output::{exit, CliResult, Failure, Out};
use crate::runtime::cluster::{ClusterConfig, State};
use crate::runtime::Runtime;
use clap::Args;
use serde_json::json;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use tokio::net::TcpListener;

/// Where the dashboard listens unless told otherwise.
pub const DEFAULT_ADDR: &str = "127.0.0.1:8480";
/// Shortest operator token accepted for a dashboard reachable from other hosts.
pub const MIN_REMOTE_TOKEN_LEN: usize = 16;

#[derive(Args, Debug)]
pub struct DashboardArgs {
    /// Address to serve on. Loopback by default; any other address needs the cluster's
    /// operator token (cluster.toml) to be set, and then anyone who reaches it can watch.
    #[arg(long, default_value = DEFAULT_ADDR)]
    pub addr: SocketAddr,
}

/// Refuses an address other hosts can reach unless controls are guarded by a real token.
pub fn check_addr(addr: &SocketAddr, token: &str) -> CliResult<()> {
    if addr.ip().is_loopback() || token.len() >= MIN_REMOTE_TOKEN_LEN {
        return Ok(());
    }
    Err(Failure::usage(format!(
        "--addr {addr} is reachable from other hosts, and cluster.toml has no operator token \
         (of at least {MIN_REMOTE_TOKEN_LEN} characters) to guard the controls; set one with \
         `tsc keys rotate --operator-token`, or serve on loopback (the default, {DEFAULT_ADDR})"
    )))
}

/// `tsc dashboard`: serves until ctrl-c or SIGTERM (the caller has checked the address with
/// [`check_addr`] before opening the runtime).
pub async fn dashboard(
    cfg: &ClusterConfig,
    rt: Runtime,
    state: &State,
    args: DashboardArgs,
    out: &Out,
) -> CliResult<u8> {
    let listener = TcpListener::bind(args.addr).await.map_err(|e| {
        Failure::new(
            exit::FAILURE,
            format!("cannot listen on {}: {e}", args.addr),
        )
    })?;
    let addr = listener
        .local_addr()
        .map_err(|e| Failure::new(exit::FAILURE, e.to_string()))?;
    let shutdown = crate::shutdown::on_signals();
    let rt = Arc::new(rt);
    let feed = feed::Feed::new();
    let timeline = Arc::new(Mutex::new(elections::Timeline::default()));
    let amqp = rt.endpoints(state).operator_amqp_url;
    let tasks = [
        tokio::spawn(feed::run(
            cfg.clone(),
            rt.clone(),
            feed.clone(),
            timeline.clone(),
            shutdown.clone(),
        )),
        tokio::spawn(listen::run(
            amqp,
            cfg.keys_dir(),
            timeline,
            shutdown.clone(),
        )),
    ];
    let url = format!("http://{addr}/");
    if out.json {
        out.json(json!({ "url": url, "addr": addr.to_string() }));
    } else {
        out.line(&format!(
            "Dashboard of cluster {} ({} runtime) at {url}  (ctrl-c stops it)",
            cfg.cluster_id,
            rt.kind().as_str()
        ));
        if !addr.ip().is_loopback() {
            out.line(
                "Note: plain HTTP: the operator token crosses the network in clear when you log in",
            );
        }
    }
    let d = Arc::new(api::Dashboard {
        home: cfg.home.clone(),
        rt,
        feed,
        control: tokio::sync::Mutex::new(()),
        shutdown: shutdown.clone(),
        unauthorized: AtomicU64::new(0),
        controls: AtomicU64::new(0),
    });
    api::serve(listener, d).await;
    shutdown.cancel();
    for t in tasks {
        let _ = t.await;
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_goes_without_a_real_token() {
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        let long = "x".repeat(MIN_REMOTE_TOKEN_LEN);
        assert!(check_addr(&a("127.0.0.1:8480"), "").is_ok());
        assert!(check_addr(&a("[::1]:8480"), "").is_ok());
        assert!(check_addr(&a("0.0.0.0:8480"), &long).is_ok());
        for (addr, token) in [("0.0.0.0:8480", ""), ("10.1.2.3:80", "short")] {
            let e = check_addr(&a(addr), token).unwrap_err();
            assert_eq!(e.code, exit::USAGE);
            assert!(e.message.contains("operator token"), "{}", e.message);
        }
    }
}
