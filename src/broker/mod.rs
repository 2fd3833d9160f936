//! RabbitMQ: connecting with backoff, declaring the topology, publishing typed messages.
//!
//! lapin's own auto-recovery is not used. Each long-running task runs *sessions*: connect (with
//! growing backoff), declare what it needs, work until the connection fails or shutdown is asked,
//! then start over. A new session re-declares everything, which is what a client's server-named
//! queue needs anyway (the old one died with the connection), and it keeps recovery logic in one
//! visible loop instead of inside the library.

use crate::backoff::Backoff;
use crate::core::protocol::{self, REPORTS_QUEUE, UPDATES_EXCHANGE};
use crate::error::Result;
use crate::net::endpoint_of;
use lapin::options::{
    BasicPublishOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// AMQP frame size we ask for. lapin keeps send and receive buffers of 32 frames each, so the
/// broker's default (128 KiB) costs 8 MiB per connection; every time-sync message fits in
/// [`protocol::MAX_MESSAGE_BYTES`], far below this.
pub const FRAME_MAX: u32 = 8192;

/// AMQP heartbeat we ask for (seconds; the broker's default is 60). The connection counts as
/// dead after two silent heartbeat periods, so a peer whose network went away is noticed in
/// about 6 s instead of two minutes, and its sessions reconnect.
pub const HEARTBEAT_SECS: u16 = 3;

/// Parses an AMQP URL and applies [`FRAME_MAX`] and [`HEARTBEAT_SECS`] unless the URL sets its
/// own `frame_max` or `heartbeat`.
pub fn parse_url(url: &str) -> Result<lapin::uri::AMQPUri> {
    let mut uri: lapin::uri::AMQPUri = url
        .parse()
        .map_err(|e| crate::Error::Config(format!("bad AMQP URL: {e}")))?;
    if uri.query.frame_max.is_none() {
        uri.query.frame_max = Some(FRAME_MAX);
    }
    if uri.query.heartbeat.is_none() {
        uri.query.heartbeat = Some(HEARTBEAT_SECS);
    }
    Ok(uri)
}

/// Separates the URLs of a broker's nodes in one `amqp_url` (`--amqp-url`, `TS_AMQP_URL`).
pub const URL_SEPARATOR: char = ',';

/// Longest wait for one connection attempt (TCP and the AMQP handshake). A node whose host is
/// gone (no reset comes back) would otherwise hold the attempt for the system's SYN timeout,
/// minutes, before the next node is tried; a broker busy accepting thousands of connections
/// still answers well within it.
pub const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// The node URLs in `amqp_url`: one, or several separated by [`URL_SEPARATOR`] (the nodes of
/// one broker, a RabbitMQ cluster, tried in turn).
pub fn split_urls(amqp_url: &str) -> Vec<&str> {
    amqp_url
        .split(URL_SEPARATOR)
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .collect()
}

/// `amqp_url` with its nodes rotated to start at node `first` (modulo their number): how the
/// runtimes spread peers over a cluster's nodes, each keeping the rest as its fall-backs.
pub fn rotate_urls(amqp_url: &str, first: usize) -> String {
    let mut nodes = split_urls(amqp_url);
    if !nodes.is_empty() {
        let n = nodes.len();
        nodes.rotate_left(first % n);
    }
    nodes.join(&URL_SEPARATOR.to_string())
}

/// Checks an `amqp_url` setting: one `amqp://` URL, or several separated by commas.
pub fn check_urls(urls: &str) -> Result<()> {
    let nodes = split_urls(urls);
    if nodes.is_empty() {
        return Err(crate::Error::Config("amqp_url is empty".into()));
    }
    for url in nodes {
        if !url.starts_with("amqp://") {
            return Err(crate::Error::Config(format!(
                "amqp_url must start with amqp:// (got {:?})",
                endpoint_of(url)
            )));
        }
        parse_url(url)?;
    }
    Ok(())
}

/// Connects to the first of `url`'s nodes ([`split_urls`]) that answers, trying them in turn
/// from node `first` (modulo their number), each for at most [`CONNECT_TIMEOUT`]; when a whole
/// round failed, waits with growing delays, until it works or `shutdown` fires (then `None`).
/// Returns the connection and the index of its node. The failure that ends a round is logged as
/// `Failed connecting to HOST:PORT, retrying in Ns`, the others as `Failed connecting to
/// HOST:PORT, trying HOST:PORT`.
pub async fn connect(
    url: &str,
    name: &str,
    shutdown: &CancellationToken,
    first: usize,
) -> Option<(Connection, usize)> {
    let nodes: Vec<(String, lapin::uri::AMQPUri)> = match split_urls(url)
        .into_iter()
        .map(|u| Ok((endpoint_of(u), parse_url(u)?)))
        .collect::<Result<Vec<_>>>()
    {
        Ok(nodes) if !nodes.is_empty() => nodes,
        Ok(_) => {
            tracing::error!("no AMQP URL");
            return None;
        }
        Err(e) => {
            tracing::error!("{e}");
            return None;
        }
    };
    let mut backoff = Backoff::default();
    let first = first % nodes.len();
    let mut at = first;
    loop {
        let (endpoint, uri) = &nodes[at];
        let props = ConnectionProperties::default().with_connection_name(name.into());
        let attempt = tokio::select! {
            _ = shutdown.cancelled() => return None,
            r = tokio::time::timeout(CONNECT_TIMEOUT, Connection::connect_uri(uri.clone(), props)) => r,
        };
        let error = match attempt {
            Ok(Ok(conn)) => {
                info!(broker = %endpoint, "connected to RabbitMQ");
                return Some((conn, at));
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no answer within {} s", CONNECT_TIMEOUT.as_secs()),
        };
        at = (at + 1) % nodes.len();
        if at != first {
            warn!(%error, "Failed connecting to {endpoint}, trying {}", nodes[at].0);
            continue;
        }
        let delay = backoff.next_delay();
        warn!(
            %error,
            "Failed connecting to {endpoint}, retrying in {}s",
            delay.as_secs()
        );
        tokio::select! {
            _ = shutdown.cancelled() => return None,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

/// How the shared queues are declared. Every peer that declares them (servers, tsc) must be
/// told the same: RabbitMQ refuses a declaration that differs from the queue's (a quorum
/// queue declared without `x-queue-type` is `PRECONDITION_FAILED`).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, serde::Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum QueueType {
    /// One broker: `ts.reports` and `ts.rpc` are durable classic queues.
    #[default]
    Classic,
    /// A RabbitMQ cluster: `ts.reports` is a quorum queue (replicated on every node, it
    /// outlives the loss of a minority); `ts.rpc` is a transient classic queue, deleted when
    /// its node goes and declared again on a live one by the leader (a quorum queue would add
    /// its replication to the probe's outbound leg only, and that asymmetry is offset error).
    Quorum,
}

impl QueueType {
    pub fn as_str(self) -> &'static str {
        match self {
            QueueType::Classic => "classic",
            QueueType::Quorum => "quorum",
        }
    }
}

impl std::fmt::Display for QueueType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Declares the reports queue: durable, and a quorum queue on a cluster.
pub async fn declare_reports_queue(ch: &Channel, kind: QueueType) -> Result<()> {
    declare_replicated_queue(ch, REPORTS_QUEUE, kind).await
}

/// Declares durable queue `name` as the reports queue is: without arguments ([`QueueType::Classic`]),
/// or a quorum queue (`x-queue-type` = `quorum`).
pub async fn declare_replicated_queue(ch: &Channel, name: &str, kind: QueueType) -> Result<()> {
    let mut args = FieldTable::default();
    if kind == QueueType::Quorum {
        args.insert(
            "x-queue-type".into(),
            AMQPValue::LongString("quorum".into()),
        );
    }
    declare_queue(ch, name, true, args).await
}

/// Declares the queue of requests to the reference clock (probes, Berkeley readings): durable
/// on one broker, transient on a cluster ([`QueueType::Quorum`]).
pub async fn declare_rpc_queue(ch: &Channel, kind: QueueType) -> Result<()> {
    let durable = kind == QueueType::Classic;
    declare_queue(ch, protocol::RPC_QUEUE, durable, FieldTable::default()).await
}

/// Declares queue `name`: `durable` or not, with `args`.
pub async fn declare_queue(
    ch: &Channel,
    name: &str,
    durable: bool,
    args: FieldTable,
) -> Result<()> {
    ch.queue_declare(
        name.into(),
        QueueDeclareOptions {
            durable,
            ..Default::default()
        },
        args,
    )
    .await?;
    Ok(())
}

/// Consumes `queue` without acknowledgements (`no_ack`), as consumer `tag` (empty: the broker
/// names it): for messages whose loss costs a sample, never a state (probes, control messages,
/// updates).
pub async fn consume_no_ack(ch: &Channel, queue: &str, tag: &str) -> Result<lapin::Consumer> {
    Ok(ch
        .basic_consume(
            queue.into(),
            tag.into(),
            lapin::options::BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?)
}

/// Declares the durable fanout exchange that carries master updates.
pub async fn declare_updates_exchange(ch: &Channel) -> Result<()> {
    declare_exchange(ch, UPDATES_EXCHANGE, ExchangeKind::Fanout).await
}

/// Declares the durable direct exchange of the replicas' leader election.
pub async fn declare_control_exchange(ch: &Channel) -> Result<()> {
    declare_exchange(ch, protocol::CONTROL_EXCHANGE, ExchangeKind::Direct).await
}

async fn declare_exchange(ch: &Channel, name: &str, kind: ExchangeKind) -> Result<()> {
    ch.exchange_declare(
        name.into(),
        kind,
        ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await?;
    Ok(())
}

/// Declares a server-named, exclusive, auto-delete queue bound to the updates exchange and
/// returns its name. The broker deletes it when the connection goes, so a removed client leaves
/// nothing behind. The exchange must exist ([`expect_client_topology`]).
pub async fn declare_update_listener(ch: &Channel) -> Result<String> {
    declare_bound_queue(ch, "", UPDATES_EXCHANGE, &[""]).await
}

/// Checks that what a client uses exists: the reports and RPC queues and the updates exchange.
/// A client may not declare (nor so delete) them: servers and tsc do. Checking is a passive
/// declaration, which needs no permission; a missing one closes the channel with NOT_FOUND, and
/// the session is tried again a second later (reports are not published into the void).
pub async fn expect_client_topology(ch: &Channel) -> Result<()> {
    for q in [REPORTS_QUEUE, protocol::RPC_QUEUE] {
        ch.queue_declare(
            q.into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    }
    ch.exchange_declare(
        UPDATES_EXCHANGE.into(),
        ExchangeKind::Fanout,
        ExchangeDeclareOptions {
            passive: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await?;
    Ok(())
}

/// Declares everything of the topology that outlives a connection: the reports and RPC queues,
/// the updates and control exchanges. Servers do it when they connect, and tsc when it starts a
/// cluster, so clients (which may not) find it.
pub async fn declare_topology(ch: &Channel, kind: QueueType) -> Result<()> {
    declare_reports_queue(ch, kind).await?;
    declare_rpc_queue(ch, kind).await?;
    declare_updates_exchange(ch).await?;
    declare_control_exchange(ch).await
}

/// Declares replica `id`'s control queue, `ts.replica.<id>`: exclusive and auto-delete like a
/// client's, bound to the control exchange for broadcasts and for messages addressed to `id`.
/// That the broker deletes it with the connection is what makes a crashed replica's address
/// unroutable at once; that it is exclusive makes a second live replica with the same id fail
/// to declare it (`RESOURCE_LOCKED`) instead of silently sharing its messages.
pub async fn declare_control_listener(ch: &Channel, id: u64) -> Result<String> {
    declare_control_exchange(ch).await?;
    let own = protocol::replica_key(id);
    let name = protocol::replica_queue(id);
    declare_bound_queue(
        ch,
        &name,
        protocol::CONTROL_EXCHANGE,
        &[protocol::CONTROL_ALL, &own],
    )
    .await
}

/// Declares a server-named, exclusive, auto-delete queue bound to the control exchange's
/// broadcasts (`all`) only: how tsc's dashboard hears elections. It binds no replica's own
/// key, on purpose: a message addressed to a replica that is gone must stay unroutable, since
/// its sender learns from the broker's return that the replica is unreachable.
pub async fn declare_control_observer(ch: &Channel) -> Result<String> {
    declare_control_exchange(ch).await?;
    declare_bound_queue(ch, "", protocol::CONTROL_EXCHANGE, &[protocol::CONTROL_ALL]).await
}

/// Declares an exclusive, auto-delete queue (`name`, or server-named if empty) bound to
/// `exchange` with each of `keys`, and returns its name.
async fn declare_bound_queue(
    ch: &Channel,
    name: &str,
    exchange: &str,
    keys: &[&str],
) -> Result<String> {
    let q = ch
        .queue_declare(
            name.into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    let name = q.name().to_string();
    for key in keys {
        ch.queue_bind(
            name.as_str().into(),
            exchange.into(),
            (*key).into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    }
    Ok(name)
}

/// Publishes a sealed control message to `routing_key` of the control exchange on a channel
/// in confirm mode; `mandatory` makes the broker return it when no queue has that key. The
/// returned confirmation resolves to the returned message, if any.
pub async fn publish_control(
    ch: &Channel,
    routing_key: &str,
    sealed: &[u8],
    mandatory: bool,
    expire_after: std::time::Duration,
) -> Result<lapin::PublisherConfirm> {
    let confirm = ch
        .basic_publish(
            protocol::CONTROL_EXCHANGE.into(),
            routing_key.into(),
            BasicPublishOptions {
                mandatory,
                ..Default::default()
            },
            sealed,
            BasicProperties::default()
                .with_content_type("application/json".into())
                .with_delivery_mode(1)
                .with_expiration(expire_after.as_millis().max(1).to_string().into()),
        )
        .await?;
    Ok(confirm)
}

/// Publishes a protocol message as transient JSON. Without publisher confirms the returned future
/// resolves once the frame is handed to the connection; losing a report or an update in a broker
/// outage is acceptable because the next one follows within a tick.
///
/// `expire_after` becomes the message's AMQP `expiration`: the broker drops it if nobody consumed
/// it by then. Reports and updates describe a clock *now*; one that sat in a queue (say, while
/// no server ran) would be read as fresh and shift every clock by the time it waited.
pub async fn publish<T: Serialize>(
    ch: &Channel,
    exchange: &str,
    routing_key: &str,
    msg: &T,
    expire_after: Option<std::time::Duration>,
) -> Result<()> {
    publish_raw(
        ch,
        exchange,
        routing_key,
        &protocol::encode(msg),
        expire_after,
    )
    .await
}

/// Publishes bytes as they are (benchmarks and tests use it to send what a buggy peer would).
pub async fn publish_raw(
    ch: &Channel,
    exchange: &str,
    routing_key: &str,
    body: &[u8],
    expire_after: Option<std::time::Duration>,
) -> Result<()> {
    let mut props = BasicProperties::default()
        .with_content_type("application/json".into())
        .with_delivery_mode(1);
    if let Some(d) = expire_after {
        props = props.with_expiration(d.as_millis().max(1).to_string().into());
    }
    ch.basic_publish(
        exchange.into(),
        routing_key.into(),
        BasicPublishOptions::default(),
        body,
        props,
    )
    .await?;
    Ok(())
}

/// Publishes a request to the reference ([`protocol::RPC_QUEUE`]) with `reply_to` naming the
/// queue the answer should go to.
pub async fn publish_rpc(
    ch: &Channel,
    sealed: &[u8],
    reply_to: &str,
    expire_after: std::time::Duration,
) -> Result<()> {
    ch.basic_publish(
        "".into(),
        protocol::RPC_QUEUE.into(),
        BasicPublishOptions::default(),
        sealed,
        BasicProperties::default()
            .with_content_type("application/json".into())
            .with_delivery_mode(1)
            .with_reply_to(reply_to.into())
            .with_expiration(expire_after.as_millis().max(1).to_string().into()),
    )
    .await?;
    Ok(())
}

/// How long a report or update may wait in a queue: two periods, so a consumer that is briefly
/// slow loses nothing, while nothing older than the next message survives for long.
pub fn expiry_for(period: std::time::Duration) -> std::time::Duration {
    (period * 2).max(std::time::Duration::from_secs(1))
}

/// Closes a connection politely, ignoring errors: used on the way out, when the peer may already
/// be gone. Sessions close their own channels first.
async fn close(conn: &Connection) {
    let _ = conn.close(200, "bye".into()).await;
}

/// Pause between a failed session and the next connection attempt, so a session that fails at
/// once (say, a declaration the broker refuses) cannot spin.
pub const SESSION_RETRY_DELAY: std::time::Duration = std::time::Duration::from_secs(1);
/// Longest wait for a polite close; a dead peer gets no more than this.
const CLOSE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// Runs `session` on a fresh connection until shutdown, reconnecting after every failure.
///
/// When `url` names several nodes, the first connection goes to the first that answers; after
/// a failure the next attempt starts at the node *after* the one whose session ended, so a
/// node that died (its address gone, every attempt to it waits out an ARP or connect timeout)
/// is tried last, not first, and the peer is back on a live node within about a second.
///
/// `session` returns `Ok(())` only when it stopped because of shutdown; any `Err` means "the
/// connection is unusable", is logged, and starts a new session.
pub async fn run_sessions<F, Fut>(
    url: &str,
    name: &str,
    shutdown: &CancellationToken,
    mut session: F,
) where
    F: FnMut(std::sync::Arc<Connection>) -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    let mut first = 0;
    loop {
        let Some((conn, at)) = connect(url, name, shutdown, first).await else {
            return;
        };
        first = at + 1;
        let conn = std::sync::Arc::new(conn);
        let outcome = session(conn.clone()).await;
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, close(&conn)).await;
        match outcome {
            Ok(()) => return,
            Err(e) => {
                if shutdown.is_cancelled() {
                    return;
                }
                warn!(error = %e, "{name}: broker session ended; reconnecting");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(SESSION_RETRY_DELAY) => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_broker_is_one_url_or_its_nodes_by_commas() {
        let two = "amqp://u:p@10.0.0.3:5672/v, amqp://u:p@10.0.0.4:5672/v,";
        assert_eq!(
            split_urls(two),
            ["amqp://u:p@10.0.0.3:5672/v", "amqp://u:p@10.0.0.4:5672/v"]
        );
        assert!(check_urls(two).is_ok());
        assert!(check_urls("amqp://u:p@h:5672/v").is_ok());
        for (bad, why) in [
            (" , ", "empty"),
            ("amqp://u:p@h:5672/v,http://h:80", "must start with amqp://"),
            ("amqp://u:p@h:notaport/v", "bad AMQP URL"),
        ] {
            let e = check_urls(bad).unwrap_err().to_string();
            assert!(e.contains(why), "{bad:?}: {e}");
        }
    }

    #[test]
    fn a_rotation_starts_elsewhere_and_keeps_every_node() {
        let three = "amqp://a/v,amqp://b/v,amqp://c/v";
        assert_eq!(rotate_urls(three, 0), three);
        assert_eq!(rotate_urls(three, 1), "amqp://b/v,amqp://c/v,amqp://a/v");
        assert_eq!(rotate_urls(three, 5), "amqp://c/v,amqp://a/v,amqp://b/v");
        assert_eq!(rotate_urls("amqp://a/v", 7), "amqp://a/v");
    }

    #[test]
    fn urls_get_a_short_heartbeat_and_small_frames_unless_they_set_their_own() {
        let uri = parse_url("amqp://guest:guest@127.0.0.1:5672/%2f").unwrap();
        assert_eq!(uri.query.heartbeat, Some(HEARTBEAT_SECS));
        assert_eq!(uri.query.frame_max, Some(FRAME_MAX));
        let uri = parse_url("amqp://guest:guest@127.0.0.1:5672/%2f?heartbeat=10&frame_max=65536")
            .unwrap();
        assert_eq!(uri.query.heartbeat, Some(10));
        assert_eq!(uri.query.frame_max, Some(65536));
        assert!(parse_url("http://nope").is_err());
    }
}
