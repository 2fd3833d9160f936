//! `tsc` end to end: the same flow on the Docker runtime (real Docker daemon, images built
//! without a registry) and on the local runtime (processes against the local RabbitMQ),
//! swarms of clients included.
//!
//! Docker is required: if no daemon answers, the Docker test fails (CI starts one).

mod common;

use common::*;
use serde_json::Value;

use std::process::Command;
use std::time::{Duration, Instant};
use time_sync::runtime::cluster::ClusterConfig;

fn running(clients: &[Value]) -> Vec<&Value> {
    clients.iter().filter(|c| c["state"] == "running").collect()
}

fn ip_rank(v: &Value) -> (u8, u128) {
    time_sync::core::master_election::ip_rank(&v["ip"].as_str().unwrap().parse().unwrap())
}

/// The whole issue-3 flow; `queues` lists the RabbitMQ queues of the cluster.
async fn flow(t: &Tsc, queues: &dyn Fn(&Tsc) -> Vec<String>) {
    // The master follows a chronyd on this host: through the network's gateway from a
    // container, on loopback from a local process.
    let chrony = Chrony::start(t.home.path(), "chronyd", "0.0.0.0", 3);
    let cfg = ClusterConfig::load(t.home.path()).unwrap();
    let upstream = if t.runtime == "docker" {
        let net: std::net::Ipv4Addr = cfg
            .docker
            .subnet
            .split('/')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        let [a, b, c, d] = net.octets();
        format!("{a}.{b}.{c}.{}:{}", d + 1, chrony.port)
    } else {
        chrony.addr.clone()
    };
    t.edit_config(|c| {
        c.client.ntp_listen = Some("0.0.0.0:123".parse().unwrap());
        c.client.ntp_upstream = vec![upstream.clone()];
    });
    let started = Instant::now();
    let r = t.ok(&["bootstrap", "-c", "4", "-w", "2"]);
    println!("[{}] bootstrap took {:?}", t.runtime, started.elapsed());
    assert!(r.stdout.contains("Started new client at"), "{}", r.stdout);
    assert!(
        r.stdout.contains("waiting for rabbitmq service port on"),
        "{}",
        r.stdout
    );

    // Each kind of node has its own broker user; a client's may not speak for the leader.
    let (ep, _) = t.endpoints().await;
    assert_client_user_is_confined(&ep.client_amqp_url).await;
    no_admins_and_no_secrets_on_command_lines(t);

    // Bootstrapping twice is refused with its own exit code and a hint.
    let again = t.run(&["bootstrap"]);
    assert_eq!(again.code, 5);
    assert!(again.stderr.contains("tsc teardown"), "{}", again.stderr);

    let w = t.ok(&["--json", "wait", "--timeout", "90", "--bound-ms", "10"]);
    println!("[{}] synced: {}", t.runtime, w.stdout.replace('\n', " "));
    // The same on the clients' own error bounds (ε), which needs no shared clock.
    let w = t.ok(&[
        "--json",
        "wait",
        "--timeout",
        "60",
        "--bound-ms",
        "1",
        "--by",
        "eps",
    ]);
    let eps: serde_json::Value = serde_json::from_str(&w.stdout).unwrap();
    assert!(
        eps["max_error_us"]
            .as_i64()
            .is_some_and(|e| e > 0 && e <= 1000),
        "{}",
        w.stdout
    );
    let listed = t.ok(&["clients", "list", "-v"]).stdout;
    assert!(listed.contains("ε ms"), "{listed}");
    // Every client serves NTP on its own address (port 123): ntpdate reads its clock, on
    // chronyd's time through the master (chronyd's stratum 3, the master 4, the others 5).
    ntp_clients_agree(t, &["ntpdate"], 4).await;
    let clients = t.clients();
    assert_eq!(running(&clients).len(), 4);
    let lowest = running(&clients)
        .into_iter()
        .min_by_key(|c| ip_rank(c))
        .unwrap()
        .clone();
    let master = t.master().expect("a master");
    assert_eq!(
        master,
        lowest["id"].as_str().unwrap(),
        "the lowest IP is master"
    );

    // The dashboard shows this cluster on either runtime: every client, the master, a leader.
    let mut dash = Dash::start(t);
    let f = wait_for(Duration::from_secs(20), "the dashboard's view", || async {
        let f = dash.frame().await;
        let cards = f["clients"].as_array()?;
        let reporting = cards.iter().filter(|c| c["time_us"].is_i64()).count();
        (reporting == 4 && f["master"]["id"] == master.as_str() && f["leader"].is_u64())
            .then_some(f)
    })
    .await;
    assert_eq!(f["runtime"], t.runtime);
    assert!(dash.stop().success(), "ctrl-c/SIGTERM stops it cleanly");

    // add -n 3 → 7.
    let r = t.ok(&["clients", "add", "-n", "3"]);
    assert_eq!(r.stdout.matches("Started new client at").count(), 3);
    let clients = t.clients();
    assert_eq!(running(&clients).len(), 7);
    assert_eq!(
        t.ok(&["clients", "list"]).stdout.lines().count(),
        8,
        "header + 7 ids"
    );
    // --limit pages the list and says how many it left out.
    let page = t.ok(&["clients", "list", "--limit", "2"]).stdout;
    assert_eq!(
        page.lines().count(),
        4,
        "header, 2 ids, the rest counted: {page}"
    );
    assert!(page.contains("... and 5 more"), "{page}");
    let page = t.ok(&["--json", "clients", "list", "--limit", "2"]).json();
    assert_eq!(page["clients"].as_array().map(Vec::len), Some(2), "{page}");
    assert_eq!(page["total"], 7, "{page}");
    // More than fit in the cluster's /24: refused before any is started.
    let too_many = t.run(&["clients", "add", "-n", "230"]);
    assert_eq!(too_many.code, 2, "{}", too_many.stderr);
    assert!(
        too_many.stderr.contains("room for 227 more"),
        "{}",
        too_many.stderr
    );
    assert_eq!(running(&t.clients()).len(), 7, "nothing was started");

    // tail shows the client's log lines.
    let tail = t.ok(&["clients", "tail", "-c", &master, "-n", "50"]);
    assert!(
        tail.stdout.contains("ts-client starting"),
        "{}",
        tail.stdout
    );
    let raw = t.ok(&["clients", "tail", "-c", &master, "-v", "-n", "1"]);
    serde_json::from_str::<Value>(raw.stdout.trim()).expect("-v prints raw JSON lines");
    assert!(
        t.log_dir().join(&master).is_file(),
        "client log on the host"
    );

    // Removing an unknown id fails cleanly.
    let bad = t.run(&["clients", "remove", "-c", "does-not-exist"]);
    assert_eq!(bad.code, 3);
    assert_eq!(bad.stderr.trim().lines().count(), 1, "{}", bad.stderr);
    assert!(t.run(&["clients", "get", "-c", "nope"]).code == 3);

    // Remove the master: its report expires at once, so it is gone from every view and a new
    // master (the lowest remaining IP) is elected at the leader's next tick, not after the TTL.
    t.ok(&["clients", "remove", "-c", &master]);
    let removed = Instant::now();
    let rows = t.ok(&["--json", "clients", "list"]).json();
    assert!(
        !rows["clients"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["id"] == master.as_str()),
        "a removed client is not listed, not even as silent: {rows}"
    );
    let new_master = wait_for(Duration::from_secs(TTL_S + 20), "a new master", || async {
        t.master().filter(|m| *m != master)
    })
    .await;
    let failover = removed.elapsed();
    println!(
        "[{}] failover after removing the master: {failover:?} (TTL {TTL_S} s)",
        t.runtime
    );
    assert!(
        failover < Duration::from_secs(TTL_S),
        "replaced within the leader's next ticks, not after the TTL ({TTL_S} s)"
    );
    let clients = t.clients();
    let lowest = running(&clients)
        .into_iter()
        .min_by_key(|c| ip_rank(c))
        .unwrap()
        .clone();
    assert_eq!(new_master, lowest["id"].as_str().unwrap());
    t.ok(&["wait", "--timeout", "60", "--bound-ms", "10"]);

    let st = t.run(&["--json", "status"]);
    assert_eq!(st.code, 0, "healthy: {}", st.stdout);
    assert_eq!(st.json()["healthy"], true);
    // After the master change the cluster is still on chronyd's time (this host's clock), and
    // says so.
    let (_, store) = t.endpoints().await;
    wait_for(
        Duration::from_secs(30),
        "every clock within 1 ms of chronyd",
        || async {
            let r = live(&store).await;
            let worst = r
                .iter()
                .filter_map(|r| r.report.true_offset_us)
                .map(i64::abs)
                .max()?;
            (r.len() == 6 && worst < 1000).then_some(())
        },
    )
    .await;
    wait_for(
        Duration::from_secs(10),
        "status naming the upstream",
        || async {
            let st = t.run(&["--json", "status"]).json();
            (st["time_source"]["master_reference"] == upstream.as_str()
                && st["time_source"]["upstream"] == true)
                .then_some(())
        },
    )
    .await;

    // No orphan queue from the removed client: the reports queue + one per running client.
    let qs = queues(t);
    assert_eq!(
        qs.iter().filter(|q| q.as_str() == "ts.reports").count(),
        1,
        "{qs:?}"
    );
    assert!(qs.iter().any(|q| q.as_str() == "ts.rpc"), "{qs:?}");
    assert!(qs.iter().any(|q| q.as_str() == "ts.replica.1"), "{qs:?}");
    let own = qs.iter().filter(|q| q.starts_with("amq.gen-")).count();
    assert_eq!(
        own, 6,
        "one queue per running client, none for the removed one: {qs:?}"
    );
    assert_eq!(qs.len(), 3 + 6, "{qs:?}");

    swarms(t, &new_master).await;

    let started = Instant::now();
    t.ok(&["teardown"]);
    println!("[{}] teardown took {:?}", t.runtime, started.elapsed());
    assert_eq!(t.run(&["status"]).code, 4, "no cluster after teardown");
    assert_eq!(t.ok(&["teardown"]).stdout.trim(), "Nothing to tear down.");
}

/// Swarms beside six lone clients (master `lone_master`): one of 20 clients above every lone
/// address, then one of 5 below them all, whose first client takes the master role; removed as
/// one, the master role returns to the lowest lone client.
async fn swarms(t: &Tsc, lone_master: &str) {
    let r = t.ok(&["clients", "add", "-n", "20", "--swarm"]);
    assert!(
        r.stdout
            .contains("Started swarm-1 of 20 clients at 198.18.0.1–198.18.0.20"),
        "{}",
        r.stdout
    );
    t.ok(&["wait", "--timeout", "60", "--bound-ms", "10"]);
    assert_eq!(running(&t.clients()).len(), 26, "six lone clients and 20");
    assert_eq!(
        t.master().as_deref(),
        Some(lone_master),
        "a lone client is lowest"
    );
    let st = t.ok(&["--json", "status"]).json();
    let swarm = st["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["role"] == "swarm")
        .cloned()
        .expect("the swarm is a node");
    assert_eq!(swarm["id"], "swarm-1", "{swarm}");
    assert_eq!(swarm["swarm"]["clients"], 20, "{swarm}");
    assert_eq!(swarm["state"], "running", "{swarm}");
    assert_eq!(st["healthy"], true, "{st}");

    // Below every lone client: its first client becomes master (handed over once synced).
    t.ok(&[
        "clients",
        "add",
        "-n",
        "5",
        "--swarm",
        "--first-ip",
        "10.0.0.1",
    ]);
    let overlap = t.run(&[
        "clients",
        "add",
        "-n",
        "2",
        "--swarm",
        "--first-ip",
        "10.0.0.5",
    ]);
    assert_eq!(overlap.code, 2, "{}", overlap.stderr);
    assert!(overlap.stderr.contains("overlap"), "{}", overlap.stderr);
    let low = wait_for(
        Duration::from_secs(40),
        "the swarm's first client as master",
        || async {
            let c = t.clients();
            let low = c.iter().find(|c| c["ip"] == "10.0.0.1")?["id"]
                .as_str()?
                .to_string();
            (t.master()? == low).then_some(low)
        },
    )
    .await;
    t.ok(&["wait", "--timeout", "60", "--bound-ms", "10"]);
    assert_eq!(running(&t.clients()).len(), 31);

    // One log for a swarm's clients; a swarm is removed as one, not client by client.
    let tail = t.ok(&["clients", "tail", "-c", &low, "-n", "200"]).stdout;
    assert!(tail.contains("ts-client swarm starting"), "{tail}");
    let one = t.run(&["clients", "remove", "-c", &low]);
    assert_eq!(one.code, 2, "{}", one.stderr);
    assert!(
        one.stderr.contains("tsc clients remove -c swarm-2"),
        "{}",
        one.stderr
    );
    let r = t.ok(&["clients", "remove", "-c", "swarm-2"]);
    assert!(
        r.stdout.contains("swarm-2 and its 5 clients removed"),
        "{}",
        r.stdout
    );
    wait_for(
        Duration::from_secs(TTL_S + 20),
        "the lowest lone client master again",
        || async { (t.master()? == lone_master).then_some(()) },
    )
    .await;
    assert_eq!(running(&t.clients()).len(), 26);
}

/// No broker user of the cluster is an administrator (on Docker, `guest` is gone), and no
/// password, token or key is on any node's command line.
fn no_admins_and_no_secrets_on_command_lines(t: &Tsc) {
    let cfg = ClusterConfig::load(t.home.path()).unwrap();
    let c = &cfg.credentials;
    let secrets = [
        c.rabbitmq_client_password.clone(),
        c.rabbitmq_server_password.clone(),
        c.rabbitmq_operator_password.clone(),
        c.redis_password.clone(),
        c.operator_token.clone(),
    ];
    let (users, cmdlines): (String, Vec<String>) = if t.runtime == "docker" {
        let label = format!("label=time-sync.cluster={}", cfg.cluster_id);
        let names = docker_ps(&label);
        let rabbit = names.iter().find(|n| n.contains("rabbitmq")).unwrap();
        let users = sh(
            "docker",
            &[
                "exec",
                rabbit,
                "rabbitmqctl",
                "-q",
                "list_users",
                "--no-table-headers",
            ],
        );
        let cmds = names
            .iter()
            .map(|n| {
                sh(
                    "docker",
                    &[
                        "inspect",
                        "--format",
                        "{{json .Config.Cmd}} {{json .Args}}",
                        n,
                    ],
                )
            })
            .collect();
        (users, cmds)
    } else {
        let users = sh("rabbitmqctl", &["-q", "list_users", "--no-table-headers"])
            .lines()
            .filter(|l| l.contains(&cfg.cluster_id))
            .collect::<Vec<_>>()
            .join("\n");
        let state = time_sync::runtime::cluster::State::load(t.home.path()).unwrap();
        let cmds = state
            .local
            .nodes
            .iter()
            .map(|n| {
                let raw = std::fs::read(format!("/proc/{}/cmdline", n.pid)).unwrap_or_default();
                String::from_utf8_lossy(&raw).into_owned()
            })
            .collect();
        (users, cmds)
    };
    assert_eq!(
        users.lines().count(),
        3,
        "client, server, operator: {users}"
    );
    assert!(!users.contains("administrator"), "{users}");
    assert!(!users.contains("guest"), "{users}");
    for cmd in &cmdlines {
        for s in &secrets {
            assert!(
                !cmd.contains(s.as_str()),
                "a secret on a command line: {cmd}"
            );
        }
    }
}

fn docker_ps(filter: &str) -> Vec<String> {
    sh(
        "docker",
        &["ps", "-a", "--filter", filter, "--format", "{{.Names}}"],
    )
    .lines()
    .map(str::to_owned)
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_runtime_flow() {
    assert_docker_answers();
    let t = Tsc::new("docker", "10.252.0.0/24");
    let cfg = ClusterConfig::load(t.home.path()).unwrap();
    let label = format!("label=time-sync.cluster={}", cfg.cluster_id);
    let queues = |_: &Tsc| {
        let rabbit = docker_ps(&label)
            .into_iter()
            .find(|n| n.contains("rabbitmq"))
            .unwrap();
        docker_queues(&rabbit)
    };
    flow(&t, &queues).await;
    assert!(
        docker_ps(&label).is_empty(),
        "teardown left containers: {:?}",
        docker_ps(&label)
    );
    let nets = sh(
        "docker",
        &["network", "ls", "--filter", &label, "--format", "{{.Name}}"],
    );
    assert!(nets.trim().is_empty(), "teardown left networks: {nets}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_runtime_flow() {
    assert_rabbitmq_up();
    let t = Tsc::new("local", "10.253.0.0/24");
    let cfg = ClusterConfig::load(t.home.path()).unwrap();
    let vhost = format!("tsc-{}", cfg.cluster_id);
    let vh = vhost.clone();
    let queues = move |_: &Tsc| {
        sh(
            "rabbitmqctl",
            &["-q", "list_queues", "-p", &vh, "--no-table-headers", "name"],
        )
        .lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect()
    };
    flow(&t, &queues).await;
    let vhosts = sh("rabbitmqctl", &["-q", "list_vhosts"]);
    assert!(
        !vhosts.lines().any(|l| l.trim() == vhost),
        "teardown left the vhost"
    );
    let state = std::fs::read_to_string(t.home.path().join("state.json"));
    assert!(state.is_err(), "teardown removes the state file");
}

/// `runtime = "auto"` uses local processes when no Docker daemon answers, but a `DOCKER_HOST`
/// that does not answer is a mistake to report, not a reason to run the cluster elsewhere.
#[test]
fn a_docker_host_that_does_not_answer_is_an_error_not_a_fallback() {
    let home = tempdir::Dir::new("tsc-docker-host");
    let run = |args: &[&str]| {
        Command::new(TSC_BIN)
            .args(args)
            .env("TSC_HOME", home.path())
            .env("DOCKER_HOST", format!("tcp://127.0.0.1:{}", free_port()))
            .output()
            .unwrap()
    };
    assert_eq!(run(&["init"]).status.code(), Some(0));
    let cfg = ClusterConfig::load(home.path()).unwrap();
    assert_eq!(cfg.runtime.as_str(), "auto");
    let o = run(&["bootstrap", "-c", "1"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_ne!(o.status.code(), Some(0), "{err}");
    assert!(
        err.contains("DOCKER_HOST=tcp://127.0.0.1:") && err.trim().lines().count() == 1,
        "{err}"
    );
    assert!(
        !home.path().join("state.json").exists(),
        "nothing was started"
    );
}

#[test]
fn bad_cli_input_gets_one_line_and_an_exit_code() {
    let home = tempdir::Dir::new("tsc-bad");
    let run = |args: &[&str]| {
        Command::new(TSC_BIN)
            .args(args)
            .env("TSC_HOME", home.path())
            .output()
            .unwrap()
    };
    // Not initialized yet.
    let o = run(&["clients", "list"]);
    assert_eq!(o.status.code(), Some(4));
    assert!(String::from_utf8_lossy(&o.stderr).contains("tsc init"));
    // A path that is a file.
    let file = home.path().join("f");
    std::fs::write(&file, "x").unwrap();
    let o = run(&["init", "-p", file.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("not a directory") && err.trim().lines().count() == 1,
        "{err}"
    );
    assert_eq!(run(&["init"]).status.code(), Some(0));
    // Initialized but no cluster.
    let o = run(&["status"]);
    assert_eq!(o.status.code(), Some(4));
    // Usage errors.
    assert_eq!(
        run(&["clients", "add", "-n", "lots"]).status.code(),
        Some(2)
    );
    let o = run(&["bootstrap", "-w", "0"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("workers must be"));
    // cluster.toml: an unknown key and a bad value are refused, naming them; nothing is dead.
    let path = home.path().join("cluster.toml");
    let good: toml::Table = toml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let cases: &[(&str, &str, toml::Value, &str)] = &[
        ("server", "wrokers", 2.into(), "wrokers"),
        ("client", "skew", (-1.0).into(), "[client] skew must be"),
        (
            "client",
            "interval_ms",
            0.into(),
            "[client] interval_ms must be",
        ),
        (
            "client",
            "drift_ppm",
            1e9.into(),
            "[client] drift_ppm must be",
        ),
        ("server", "workers", 0.into(), "[server] workers must be"),
    ];
    for (section, key, value, needle) in cases {
        let mut bad = good.clone();
        bad[*section]
            .as_table_mut()
            .unwrap()
            .insert(key.to_string(), value.clone());
        std::fs::write(&path, toml::to_string(&bad).unwrap()).unwrap();
        let o = run(&["status"]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{section}.{key}: {err}");
        assert!(err.contains(needle), "{section}.{key}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
    }
    std::fs::write(&path, toml::to_string(&good).unwrap()).unwrap();
    assert_eq!(run(&["status"]).status.code(), Some(4), "valid again");
}

/// ctrl-c in the middle of `tsc bootstrap` removes what it had started, says so, and exits 130:
/// no process, vhost or state is left behind.
#[test]
fn ctrl_c_during_bootstrap_leaves_nothing_behind() {
    use std::io::{BufRead, BufReader};
    assert_rabbitmq_up();
    let t = Tsc::new("local", "10.241.0.0/24");
    let cfg = ClusterConfig::load(t.home.path()).unwrap();
    let mut child = Command::new(TSC_BIN)
        .args(["bootstrap", "-s", "2", "-c", "4"])
        .env("TSC_HOME", t.home.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut seen = String::new();
    while !seen.contains("server replica(s)") {
        let mut line = String::new();
        assert_ne!(
            out.read_line(&mut line).unwrap(),
            0,
            "bootstrap ended early: {seen}"
        );
        seen.push_str(&line);
    }
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut out, &mut rest).unwrap();
    let status = child.wait().unwrap();
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    seen.push_str(&rest);
    eprintln!("{seen}{err}");
    assert_eq!(status.code(), Some(130), "{err}");
    assert!(
        seen.contains("Interrupted: removing what bootstrap started"),
        "{seen}"
    );
    assert!(seen.contains("Cluster removed."), "{seen}");
    assert!(err.contains("bootstrap interrupted"), "{err}");
    let home = t.home.path().display().to_string();
    let left = Command::new("pgrep").args(["-f", &home]).output().unwrap();
    assert!(
        left.stdout.is_empty(),
        "processes left: {}",
        String::from_utf8_lossy(&left.stdout)
    );
    let vhosts = sh("rabbitmqctl", &["-q", "list_vhosts"]);
    let vhost = format!("tsc-{}", cfg.cluster_id);
    assert!(!vhosts.lines().any(|l| l.trim() == vhost), "vhost left");
    assert_eq!(t.run(&["status"]).code, 4, "no cluster");
}
