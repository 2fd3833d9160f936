//! The Docker runtime: every node is a container on the cluster's own bridge network, with a
//! static address, found again by its labels.
//!
//! Addresses in the cluster's /24: `.2` Redis (and `.4`, `.5` its replicas, `.6`–`.8` its
//! Sentinels: [`super::redis`]), `.3` RabbitMQ (and `.9`, `.254` for a three-node broker cluster:
//! [`super::brokers`]), `.10`–`.19` servers, `.20`–`.253` clients
//! (lowest free first, so a removed client's address is reused). Server and client
//! containers bind-mount the host log directories at the same paths, so their logs land where
//! `tsc ... tail` reads them.

use super::cluster::ClusterConfig;
use super::cluster::State;
use super::node::{
    labels, next_free_ip, server_host, server_node_id, Node, Role, SwarmSpan, CLIENT_HOSTS,
    MAX_CLIENTS,
};
use super::services::BrokerRole;
use super::{
    broker_users, client_env, images, remove_node_keys, server_env, swarm_env, write_node_keys,
    Endpoints, Progress, CONTAINER_KEY_DIR,
};
use crate::error::{Error, Result};
use crate::settings::{ServerSettings, DEFAULT_HTTP_PORT};
use bollard::models::{
    ContainerCreateBody, EndpointIpamConfig, EndpointSettings, HostConfig, Ipam, IpamConfig,
    NetworkCreateRequest, NetworkingConfig,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, ListContainersOptionsBuilder, ListNetworksOptionsBuilder,
    RemoveContainerOptionsBuilder, StopContainerOptionsBuilder,
};
use bollard::Docker;
use futures_util::StreamExt;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use uuid::Uuid;

/// Grace given to a container on stop before it is killed.
pub const STOP_GRACE_SECS: i32 = 10;

/// Docker Engine client plus the cluster's addressing.
pub struct DockerRuntime {
    docker: Docker,
    pub(super) cfg: ClusterConfig,
    base: Ipv4Addr,
}

impl DockerRuntime {
    /// Connects to the local engine (unix socket) and checks it answers.
    pub async fn connect(cfg: &ClusterConfig) -> Result<Self> {
        let docker = Docker::connect_with_defaults()?.negotiate_version().await?;
        docker.ping().await?;
        Ok(DockerRuntime {
            docker,
            cfg: cfg.clone(),
            base: cfg.subnet()?,
        })
    }

    pub fn docker(&self) -> &Docker {
        &self.docker
    }

    pub(super) fn ip(&self, host: u8) -> IpAddr {
        IpAddr::V4((u32::from(self.base) + u32::from(host)).into())
    }

    fn network(&self) -> String {
        format!("ts-{}", self.cfg.cluster_id)
    }

    pub fn endpoints(&self, state: &State) -> Endpoints {
        let redis = self
            .redis_addrs(state)
            .url(&self.cfg.credentials.redis_password);
        let brokers = self.broker_addrs(state);
        let url = |role: BrokerRole| {
            let (user, pass, _) = broker_users(&self.cfg, "")
                .into_iter()
                .find(|(_, _, r)| *r == role)
                .expect("a user per role");
            let nodes: Vec<String> = brokers
                .iter()
                .map(|(at, _)| format!("amqp://{user}:{pass}@{at}/%2f"))
                .collect();
            nodes.join(",")
        };
        Endpoints {
            client_amqp_url: url(BrokerRole::Client),
            server_amqp_url: url(BrokerRole::Server),
            operator_amqp_url: url(BrokerRole::Operator),
            redis_url: redis,
            queue_type: state.queue_type(),
        }
    }

    pub async fn nodes(&self) -> Result<Vec<Node>> {
        let mut filters = HashMap::new();
        filters.insert(
            "label",
            vec![format!("{}={}", labels::CLUSTER, self.cfg.cluster_id)],
        );
        let list = self
            .docker
            .list_containers(Some(
                ListContainersOptionsBuilder::default()
                    .all(true)
                    .filters(&filters)
                    .build(),
            ))
            .await?;
        let mut nodes: Vec<Node> = list
            .into_iter()
            .filter_map(|c| {
                let l = c.labels?;
                Some(Node {
                    role: Role::parse(l.get(labels::ROLE)?)?,
                    id: l.get(labels::ID)?.clone(),
                    ip: l.get(labels::IP)?.parse().ok()?,
                    state: c.state.map(|s| s.to_string()).unwrap_or_default(),
                    handle: c.id?.chars().take(12).collect(),
                    // Its clients' ids are added from its key directory (Runtime::nodes).
                    swarm: l
                        .get(labels::SWARM_FIRST_IP)
                        .and_then(|ip| ip.parse().ok())
                        .map(|first| SwarmSpan::new(first, Vec::new())),
                })
            })
            .collect();
        nodes.sort_by_key(|n| (n.role as u8, crate::core::master_election::ip_rank(&n.ip)));
        Ok(nodes)
    }

    async fn ensure_network(&self, p: Progress<'_>) -> Result<()> {
        let name = self.network();
        let mut filters = HashMap::new();
        filters.insert("name", vec![name.clone()]);
        let existing = self
            .docker
            .list_networks(Some(
                ListNetworksOptionsBuilder::default()
                    .filters(&filters)
                    .build(),
            ))
            .await?;
        if existing
            .iter()
            .any(|n| n.name.as_deref() == Some(name.as_str()))
        {
            return Ok(());
        }
        p(&format!(
            "Creating network {name} ({})",
            self.cfg.docker.subnet
        ));
        self.docker
            .create_network(NetworkCreateRequest {
                name,
                driver: Some("bridge".into()),
                ipam: Some(Ipam {
                    config: Some(vec![IpamConfig {
                        subnet: Some(self.cfg.docker.subnet.clone()),
                        gateway: Some(self.ip(1).to_string()),
                        ..Default::default()
                    }]),
                    ..Default::default()
                }),
                labels: Some(HashMap::from([(
                    labels::CLUSTER.to_string(),
                    self.cfg.cluster_id.clone(),
                )])),
                ..Default::default()
            })
            .await?;
        Ok(())
    }

    /// Creates and starts one container.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn run(
        &self,
        role: Role,
        id: &str,
        ip: IpAddr,
        image: &str,
        cmd: Vec<String>,
        env: Vec<String>,
        user: Option<&str>,
        binds: Vec<String>,
        extra_labels: Vec<(&str, String)>,
    ) -> Result<Node> {
        // A client's UUID is cut to its first 8 digits; node names (`server-10`,
        // `sentinel-1`) are kept whole, so they stay apart.
        let short = if id.len() > 12 { &id[..8] } else { id };
        let name = format!("ts-{}-{}-{short}", self.cfg.cluster_id, role.as_str());
        let body = ContainerCreateBody {
            image: Some(image.to_string()),
            cmd: Some(cmd),
            env: Some(env),
            user: user.map(str::to_string),
            hostname: Some(format!("ts-{}-{short}", role.as_str())),
            labels: Some(
                [
                    (labels::CLUSTER, self.cfg.cluster_id.clone()),
                    (labels::ROLE, role.as_str().to_string()),
                    (labels::ID, id.to_string()),
                    (labels::IP, ip.to_string()),
                ]
                .into_iter()
                .chain(extra_labels)
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
            ),
            host_config: Some(HostConfig {
                binds: Some(binds),
                network_mode: Some(self.network()),
                ..Default::default()
            }),
            networking_config: Some(NetworkingConfig {
                endpoints_config: Some(HashMap::from([(
                    self.network(),
                    EndpointSettings {
                        ipam_config: Some(EndpointIpamConfig {
                            ipv4_address: Some(ip.to_string()),
                            ..Default::default()
                        }),
                        ..Default::default()
                    },
                )])),
            }),
            ..Default::default()
        };
        let created = self
            .docker
            .create_container(
                Some(CreateContainerOptionsBuilder::default().name(&name).build()),
                body,
            )
            .await?;
        self.docker.start_container(&created.id, None).await?;
        Ok(Node {
            role,
            id: id.to_string(),
            ip,
            state: "running".into(),
            handle: created.id.chars().take(12).collect(),
            swarm: None,
        })
    }

    /// The images and the cluster's network, before any container.
    pub async fn prepare(&self, p: Progress<'_>) -> Result<()> {
        images::ensure_images(&self.docker, &self.cfg, p).await?;
        self.ensure_network(p).await
    }

    /// Runs `cmd` in container `name` and returns its output; an error if it exits non-zero.
    pub(super) async fn exec(&self, name: &str, cmd: &[&str]) -> Result<String> {
        self.exec_input(name, cmd, None).await
    }

    /// [`Self::exec`] with `input` on the command's standard input. It travels in the exec's
    /// environment and a shell builtin (`printf`) pipes it in, so it is in no process's
    /// arguments.
    pub(super) async fn exec_input(
        &self,
        name: &str,
        cmd: &[&str],
        input: Option<&str>,
    ) -> Result<String> {
        use bollard::exec::{CreateExecOptions, StartExecResults};
        let (argv, env): (Vec<&str>, _) = match input {
            None => (cmd.to_vec(), None),
            Some(text) => (
                ["sh", "-c", "printf %s \"$TS_INPUT\" | \"$@\"", "sh"]
                    .into_iter()
                    .chain(cmd.iter().copied())
                    .collect(),
                Some(vec![format!("TS_INPUT={text}")]),
            ),
        };
        let exec = self
            .docker
            .create_exec(
                name,
                CreateExecOptions {
                    cmd: Some(argv.iter().map(|s| s.to_string()).collect::<Vec<String>>()),
                    env,
                    attach_stdout: Some(true),
                    attach_stderr: Some(true),
                    ..Default::default()
                },
            )
            .await?;
        let mut out = String::new();
        if let StartExecResults::Attached { mut output, .. } =
            self.docker.start_exec(&exec.id, None).await?
        {
            while let Some(chunk) = output.next().await {
                out.push_str(&chunk?.to_string());
            }
        }
        let code = self.docker.inspect_exec(&exec.id).await?.exit_code;
        if code != Some(0) {
            return Err(Error::Runtime(format!(
                "{} in {name} failed ({code:?}): {}",
                cmd.join(" "),
                out.trim()
            )));
        }
        Ok(out)
    }

    pub async fn start_server(
        &self,
        ep: &Endpoints,
        settings: &ServerSettings,
        replica: u64,
    ) -> Result<Node> {
        let host = server_host(replica)?;
        let ip = self.ip(host);
        let dir = self.cfg.server_log_dir.display().to_string();
        let http = std::net::SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), DEFAULT_HTTP_PORT);
        let node = server_node_id(replica);
        let keys = write_node_keys(&self.cfg, &node)?;
        let env = server_env(
            &self.cfg,
            ep,
            settings,
            replica,
            http,
            CONTAINER_KEY_DIR.as_ref(),
        );
        self.run_app(Role::Server, &node, keys, ip, env, dir, vec![])
            .await
    }

    /// Runs one of our binaries from the app image with its settings as `TS_*` variables, its
    /// log directory bind-mounted, and its key directory (`keys`) mounted read-only.
    #[allow(clippy::too_many_arguments)]
    async fn run_app(
        &self,
        role: Role,
        id: &str,
        keys: std::path::PathBuf,
        ip: IpAddr,
        env: Vec<(String, String)>,
        log_dir: String,
        extra_labels: Vec<(&str, String)>,
    ) -> Result<Node> {
        let program = match role {
            Role::Server => "ts-server",
            _ => "ts-client",
        };
        let image = self.cfg.docker.image.clone();
        let binds = vec![
            format!("{log_dir}:{log_dir}"),
            format!("{}:{CONTAINER_KEY_DIR}:ro", keys.display()),
        ];
        let env = env.into_iter().map(|(k, v)| format!("{k}={v}")).collect();
        let cmd = vec![program.to_string()];
        self.run(role, id, ip, &image, cmd, env, None, binds, extra_labels)
            .await
    }

    /// The lowest client address in the subnet (a client's or a swarm's container) not in
    /// `taken`.
    fn client_ip(&self, taken: &[IpAddr]) -> Result<IpAddr> {
        next_free_ip(self.base, CLIENT_HOSTS.0, CLIENT_HOSTS.1, taken).ok_or_else(|| {
            Error::Runtime(format!(
                "no free client address in the subnet (max {MAX_CLIENTS})"
            ))
        })
    }

    /// A lone client, at an address not in `taken` (the nodes', and a swarm's clients').
    pub async fn start_client(&self, ep: &Endpoints, id: Uuid, taken: &[IpAddr]) -> Result<Node> {
        let ip = self.client_ip(taken)?;
        let dir = self.cfg.client_log_dir.display().to_string();
        let keys = write_node_keys(&self.cfg, &id.to_string())?;
        let env = client_env(&self.cfg, ep, id, None, CONTAINER_KEY_DIR.as_ref());
        self.run_app(Role::Client, &id.to_string(), keys, ip, env, dir, vec![])
            .await
    }

    /// A swarm's container: one address of the subnet, for the process; its clients advertise
    /// `first` onwards. Its key directory (`swarm.keys`) is already written.
    pub async fn start_swarm(
        &self,
        ep: &Endpoints,
        id: &str,
        n: usize,
        first: Ipv4Addr,
        taken: &[IpAddr],
    ) -> Result<Node> {
        // The process's own address (not in `taken`, the nodes'): its clients advertise others.
        let ip = self.client_ip(taken)?;
        let dir = self.cfg.client_log_dir.display().to_string();
        let keys = self.cfg.node_keys_dir(id);
        let env = swarm_env(&self.cfg, ep, n, first, CONTAINER_KEY_DIR.as_ref());
        let label = vec![(labels::SWARM_FIRST_IP, first.to_string())];
        self.run_app(Role::Swarm, id, keys, ip, env, dir, label)
            .await
    }

    /// `docker stop` (SIGTERM, then SIGKILL after the grace period); the container stays.
    pub async fn stop(&self, node: &Node) -> Result<()> {
        self.docker
            .stop_container(
                &node.handle,
                Some(
                    StopContainerOptionsBuilder::default()
                        .t(STOP_GRACE_SECS)
                        .build(),
                ),
            )
            .await?;
        Ok(())
    }

    /// `docker kill` (SIGKILL); the container stays.
    pub async fn kill(&self, node: &Node) -> Result<()> {
        self.docker
            .kill_container(
                &node.handle,
                None::<bollard::query_parameters::KillContainerOptions>,
            )
            .await?;
        Ok(())
    }

    /// `docker start` of a stopped container.
    pub async fn start(&self, node: &Node) -> Result<()> {
        self.docker.start_container(&node.handle, None).await?;
        Ok(())
    }

    /// `docker pause` / `docker unpause` (the freezer cgroup: the processes stop at once).
    pub async fn pause(&self, node: &Node, pause: bool) -> Result<()> {
        if pause {
            self.docker.pause_container(&node.handle).await?;
        } else {
            self.docker.unpause_container(&node.handle).await?;
        }
        Ok(())
    }

    pub async fn remove(&self, node: &Node) -> Result<()> {
        // Stop first so the process gets SIGTERM and closes its AMQP connection cleanly.
        let _ = self.stop(node).await;
        remove_node_keys(&self.cfg, &node.id)?;
        self.docker
            .remove_container(
                &node.handle,
                Some(
                    RemoveContainerOptionsBuilder::default()
                        .force(true)
                        .v(true)
                        .build(),
                ),
            )
            .await?;
        Ok(())
    }

    pub async fn teardown(&self, p: Progress<'_>) -> Result<()> {
        let nodes = self.nodes().await?;
        // Clients and servers first, services last, so nothing logs a vanished broker.
        let mut order = nodes.clone();
        order.sort_by_key(|n| std::cmp::Reverse(n.role as u8));
        let tasks = order.iter().map(|n| async move {
            let r = self.remove(n).await;
            (n, r)
        });
        for (n, r) in futures_util::future::join_all(tasks).await {
            r?;
            p(&format!("Removed {} {} ({})", n.role.as_str(), n.id, n.ip));
        }
        let name = self.network();
        match self.docker.remove_network(&name).await {
            Ok(()) => p(&format!("Removed network {name}")),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => {}
            Err(e) => return Err(e.into()),
        }
        Ok(())
    }
}
