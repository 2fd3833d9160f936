//! `tsc dashboard` against a real cluster (local runtime): its page and assets, the event
//! stream (one snapshot loop for every page, at least two frames a second, the same frames for
//! everyone), the controls through the tsc commands' own code paths, and the operator token
//! that guards them. The browser's view is `tests/browser.rs`.

mod common;

use common::*;
use serde_json::Value;
use std::time::{Duration, Instant};
use time_sync::core::protocol::EventKind;
use time_sync::runtime::cluster::ClusterConfig;

/// Reads the dashboard's event stream for `dur`: the (event, data) pairs received.
async fn sse(addr: &str, dur: Duration) -> Vec<(String, String)> {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!("GET /api/stream HTTP/1.1\r\nHost: {addr}\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut r = BufReader::new(s);
    let mut out = Vec::new();
    let read = async {
        let mut line = String::new();
        let mut head = String::new();
        while line != "\r\n" {
            line.clear();
            r.read_line(&mut line).await.unwrap();
            head.push_str(&line);
        }
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(head.contains("text/event-stream"), "{head}");
        let mut text = String::new();
        loop {
            // Chunked transfer: a hex size line, the data, CRLF.
            line.clear();
            if r.read_line(&mut line).await.unwrap() == 0 {
                break;
            }
            let n = usize::from_str_radix(line.trim(), 16).unwrap();
            if n == 0 {
                break;
            }
            let mut buf = vec![0; n + 2];
            r.read_exact(&mut buf).await.unwrap();
            text.push_str(&String::from_utf8_lossy(&buf[..n]));
            while let Some(i) = text.find("\n\n") {
                let block: String = text.drain(..i + 2).collect();
                let field = |name: &str| {
                    block
                        .lines()
                        .find_map(|l| l.strip_prefix(name))
                        .map(|v| v.trim_start().to_string())
                };
                if let (Some(e), Some(d)) = (field("event:"), field("data:")) {
                    out.push((e, d));
                }
            }
        }
    };
    let _ = tokio::time::timeout(dur, read).await;
    out
}

/// A raw HTTP/1.1 POST with the given extra header lines; status, head and body.
fn post(addr: &str, path: &str, headers: &[&str], body: &str) -> (u16, String, Value) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let extra: String = headers.iter().map(|h| format!("{h}\r\n")).collect();
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let code = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    let v = serde_json::from_str(body).unwrap_or(Value::Null);
    eprintln!("POST {path} -> {code} {v}");
    (code, head.to_string(), v)
}

/// A raw HTTP/1.1 GET: head and body.
fn get(addr: &str, path: &str) -> (String, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    (head.to_string(), body.to_string())
}

/// Asserts that `v[field]` (a control's `error` or `message`) contains `needle`.
fn says(v: &Value, field: &str, needle: &str) {
    let text = v[field]
        .as_str()
        .unwrap_or_else(|| panic!("no {field} in {v}"));
    assert!(text.contains(needle), "{field} {text:?} lacks {needle:?}");
}

const JSON: &str = "Content-Type: application/json";

fn stat(addr: &str, name: &str) -> u64 {
    let (_, body) = http(addr, "GET", "/api/stats");
    serde_json::from_str::<Value>(&body).unwrap()[name]
        .as_u64()
        .unwrap()
}

fn card_ids(f: &Value) -> Vec<String> {
    f["clients"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_pushes_one_snapshot_to_every_page_and_guards_its_controls() {
    let t = Tsc::local_synced("10.245.0.0/24", 1, 2, 1);
    let token = t.token();
    let bearer = format!("Authorization: Bearer {token}");
    let mut dash = Dash::start(&t);
    let addr = dash.addr.clone();

    // The page: embedded, light, and allowed to load nothing from anywhere else.
    let mut total = 0;
    for (path, kind) in [
        ("/", "text/html"),
        ("/app.js", "text/javascript"),
        ("/style.css", "text/css"),
        ("/icon.svg", "image/svg+xml"),
    ] {
        let (head, body) = get(&addr, path);
        total += body.len();
        // The only URL in any asset is the SVG namespace, which is a name, not a fetch.
        let urls = body.matches("://").count();
        let svg_ns = body.matches("http://www.w3.org/2000/svg").count();
        assert_eq!(urls, svg_ns, "{path} names a URL");
        let head = head.to_lowercase();
        let code = &head[9..12];
        assert_eq!(code, "200", "{path}");
        assert!(head.contains(&format!("content-type: {kind}")), "{head}");
        assert!(
            head.contains("content-security-policy: default-src 'none'")
                && head.contains("connect-src 'self'"),
            "{head}"
        );
    }
    assert!(total < 200_000, "the page weighs {total} bytes");
    let (code, body) = http(&addr, "GET", "/api/nothing");
    assert_eq!(code, 404, "{body}");

    // The stream: the chart's history first, then frames, at least two a second; every page
    // gets the same frames, and three pages cost no more reads of the cluster than none.
    let f0 = stat(&addr, "frames");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let alone = stat(&addr, "frames") - f0;
    let f1 = stat(&addr, "frames");
    let streams =
        futures_util::future::join_all((0..3).map(|_| sse(&addr, Duration::from_secs(2)))).await;
    let together = stat(&addr, "frames") - f1;
    println!("frames in 2 s: {alone} with no page, {together} with three");
    assert!(alone >= 4 && together >= 4, "{alone} {together}");
    assert!(
        together <= alone + 2,
        "pages made the loop read more: {alone} → {together}"
    );
    let mut by_seq: std::collections::BTreeMap<u64, Vec<String>> = Default::default();
    for s in &streams {
        assert_eq!(s[0].0, "history", "history first");
        let h: Value = serde_json::from_str(&s[0].1).unwrap();
        assert!(!h["samples"].as_array().unwrap().is_empty(), "{h}");
        let frames: Vec<&(String, String)> = s.iter().filter(|(e, _)| e == "frame").collect();
        assert!(frames.len() >= 4, "{} frames in 2 s", frames.len());
        for (_, d) in frames {
            let v: Value = serde_json::from_str(d).unwrap();
            by_seq
                .entry(v["seq"].as_u64().unwrap())
                .or_default()
                .push(d.clone());
        }
    }
    let shared: Vec<&Vec<String>> = by_seq.values().filter(|v| v.len() == 3).collect();
    assert!(shared.len() >= 3, "pages saw different frames: {by_seq:?}");
    for v in shared {
        assert!(v.iter().all(|d| d == &v[0]), "one frame, three versions");
    }
    let f = dash.frame().await;
    assert_eq!(card_ids(&f).len(), 2);
    assert_eq!(f["master"]["id"].as_str(), t.master().as_deref());
    assert_eq!(f["leader"], 1);
    assert!(f["problems"].as_array().unwrap().is_empty(), "{f}");

    // Controls without the token: refused, counted, nothing happens.
    let (code, _, v) = post(&addr, "/api/clients", &[JSON], r#"{"n":1}"#);
    assert_eq!(code, 401);
    says(&v, "error", "operator token");
    for h in ["Authorization: Bearer wrong", "Cookie: ts_operator=wrong"] {
        assert_eq!(post(&addr, "/api/clients", &[JSON, h], r#"{"n":1}"#).0, 401);
    }
    let (code, _, _) = post(&addr, "/api/servers/1/kill", &[JSON], "{}");
    assert_eq!(code, 401);
    assert_eq!(stat(&addr, "unauthorized"), 4);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(card_ids(&dash.frame().await).len(), 2, "nobody was added");
    assert_eq!(t.servers()["servers"][0]["state"], "running");

    // Logging in sets the token as a strict, script-proof cookie.
    let (code, _, _) = post(&addr, "/api/login", &[JSON], r#"{"token":"nope"}"#);
    assert_eq!(code, 401);
    let login = format!(r#"{{"token":"{token}"}}"#);
    let (code, head, _) = post(&addr, "/api/login", &[JSON], &login);
    assert_eq!(code, 200);
    let set_cookie = head
        .lines()
        .find(|l| l.to_lowercase().starts_with("set-cookie:"))
        .unwrap();
    assert!(
        set_cookie.contains(&format!("ts_operator={token}"))
            && set_cookie.contains("HttpOnly")
            && set_cookie.contains("SameSite=Strict"),
        "{set_cookie}"
    );
    let cookie = format!("Cookie: ts_operator={token}");

    // Add a client with the cookie: JSON only, then a new card within 2 s.
    let (code, _, _) = post(&addr, "/api/clients", &[&cookie], r#"{"n":1}"#);
    assert_eq!(code, 415, "a form post is not a control");
    let (code, _, v) = post(&addr, "/api/clients", &[JSON, &cookie], r#"{"n":1}"#);
    assert_eq!(code, 200);
    says(&v, "message", "Started new client at");
    let added = v["result"]["started"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let t0 = Instant::now();
    wait_for(Duration::from_secs(2), "the new card", || async {
        card_ids(&dash.frame().await).contains(&added).then_some(())
    })
    .await;
    println!("card appeared after {:?}", t0.elapsed());

    // Set a follower's time with the bearer token: the CLI's messages and errors, exactly.
    let master = t.master().unwrap();
    let follower = card_ids(&dash.frame().await)
        .into_iter()
        .find(|id| *id != master && *id != added)
        .unwrap();
    let path = format!("/api/clients/{follower}/time");
    let (code, _, v) = post(&addr, &path, &[JSON, &bearer], r#"{"time":"yesterday"}"#);
    assert_eq!(code, 400);
    says(&v, "error", "is not an RFC 3339 time");
    let (code, _, v) = post(
        &addr,
        "/api/clients/ffffffff/time",
        &[JSON, &bearer],
        r#"{"shift_s":1}"#,
    );
    assert_eq!(code, 404);
    says(&v, "error", "no client with id");
    let (code, _, v) = post(&addr, &path, &[JSON, &bearer], r#"{"shift_s":30}"#);
    assert_eq!(code, 200);
    says(&v, "message", "shifted by +30.000000 s");
    let op = v["result"]["op_id"].as_str().unwrap().to_string();
    // The card tells the step (from the client's own event), and the clock comes back.
    wait_for(Duration::from_secs(10), "the step on the card", || async {
        let card = dash.card(&follower).await?;
        let stepped = card["clock_events"].as_array()?.iter().any(|e| {
            e["kind"] == EventKind::ClockStepped.as_str()
                && e["text"]
                    .as_str()
                    .is_some_and(|t| t.contains("+30.000000 s"))
        });
        stepped.then_some(())
    })
    .await;
    let (_, store) = t.endpoints().await;
    let events = store.events(None, 10_000).await.unwrap();
    assert!(
        events
            .iter()
            .any(|(_, e)| e.data.get("op_id").and_then(|o| o.as_str()) == Some(op.as_str())),
        "the command reached the client"
    );
    wait_for(
        Duration::from_secs(15),
        "the follower back with the master",
        || async {
            let card = dash.card(&follower).await?;
            (card["true_error_us"].as_i64()?.abs() < 1_000).then_some(())
        },
    )
    .await;

    // Remove the added client: its card goes within 2 s (its report lingers in Redis).
    let (code, _, v) = post(
        &addr,
        &format!("/api/clients/{added}/remove"),
        &[JSON, &bearer],
        "{}",
    );
    assert_eq!(code, 200, "{v}");
    says(&v, "message", "removed successfully");
    let t0 = Instant::now();
    wait_for(Duration::from_secs(2), "the card to go", || async {
        (!card_ids(&dash.frame().await).contains(&added)).then_some(())
    })
    .await;
    println!("card went after {:?}", t0.elapsed());

    // An election now: the timeline shows it, and the leader has a new epoch.
    let before = dash.frame().await["epoch"].as_u64().unwrap();
    let (code, _, v) = post(&addr, "/api/election", &[JSON, &bearer], "{}");
    assert_eq!(code, 200, "{v}");
    says(&v, "message", "started an election");
    let f = wait_for(
        Duration::from_secs(15),
        "the new term on the page",
        || async {
            let f = dash.frame().await;
            (f["epoch"].as_u64()? > before).then_some(f)
        },
    )
    .await;
    let steps = f["election"]["steps"].as_array().unwrap();
    let what = |w: &str| steps.iter().any(|s| s["what"] == w);
    assert!(what("ELECTION") && what("COORDINATOR"), "{steps:?}");
    assert!(
        steps
            .iter()
            .any(|s| s["what"] == "COORDINATOR" && s["epoch"].as_u64() > Some(before)),
        "{steps:?}"
    );
    assert!(
        f["elections"][0]["epoch"].as_u64() > Some(before),
        "the last elections list it: {}",
        f["elections"]
    );

    // The exact refusals of the cluster come back as they are.
    let (code, _, v) = post(&addr, "/api/berkeley/round", &[JSON, &bearer], "{}");
    assert_eq!(code, 409);
    says(&v, "error", "berkeley");
    let (code, _, _) = post(&addr, "/api/servers/1/explode", &[JSON, &bearer], "{}");
    assert_eq!(code, 404);
    let (code, _, v) = post(&addr, "/api/servers/1/start", &[JSON, &bearer], "{}");
    assert_eq!(code, 409);
    says(&v, "error", "already running");

    // SIGTERM with a page connected: the stream ends and the dashboard exits cleanly.
    let page = tokio::spawn({
        let addr = addr.clone();
        async move { sse(&addr, Duration::from_secs(30)).await.len() }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let t0 = Instant::now();
    assert!(dash.stop().success());
    assert!(page.await.unwrap() >= 1);
    println!("stopped in {:?} with a page open", t0.elapsed());
    t.ok(&["teardown"]);
}

#[test]
fn a_dashboard_reachable_from_other_hosts_needs_a_real_token() {
    let t = Tsc::new("local", "10.244.0.0/24");
    let mut cfg = ClusterConfig::load(t.home.path()).unwrap();
    cfg.credentials.operator_token = "short".into();
    cfg.save().unwrap();
    let r = t.run(&["dashboard", "--addr", "0.0.0.0:0"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr.contains("reachable from other hosts") && r.stderr.contains("operator token"),
        "{}",
        r.stderr
    );
    // On loopback the address is fine; there is just no cluster yet.
    let r = t.run(&["dashboard"]);
    assert_eq!(r.code, 4, "{}", r.stderr);
}
