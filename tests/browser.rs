//! The dashboard in a real browser: headless Chromium driven through WebDriver (`chromedriver`,
//! Debian's `chromium-driver`, installed by `scripts/setup.sh`) by fantoccini, against a real
//! cluster on the local runtime. What a person would check by looking: the clocks tick and tell
//! each client's virtual time; the master is marked; a follower shifted from the page jumps and
//! comes back; a client added or removed from the page gains or loses its card; a stopped
//! leader is replaced on the page; a control pressed before logging in is refused. The page's
//! screenshot is kept as a test artifact (`target/tmp/dashboard.png`) and must not be blank.
//!
//! Without Chromium or chromedriver this test fails, naming what is missing: it is never
//! skipped.

mod common;

use common::*;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;
use std::time::{Duration, Instant};
use time_sync::cache::ReportStore;
use time_sync::core::clock::{Clock, SystemClock};

const DAY_MS: i64 = 86_400_000;

/// `chromedriver` on a free port, stopped on drop.
struct Driver {
    _process: Process,
    url: String,
}

impl Driver {
    fn start(log: &std::path::Path) -> Driver {
        for bin in ["chromium", "chromedriver"] {
            let found = std::process::Command::new("sh")
                .args(["-c", &format!("command -v {bin}")])
                .output()
                .is_ok_and(|o| o.status.success());
            assert!(found, "{bin} is not installed; scripts/setup.sh installs it (apt: chromium, chromium-driver)");
        }
        let port = free_port();
        let process = spawn(
            "chromedriver",
            "chromedriver",
            &[format!("--port={port}")],
            log,
        );
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "chromedriver did not listen on {port}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Driver {
            _process: process,
            url,
        }
    }

    async fn browser(&self) -> Client {
        let caps = json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                // Root has no sandbox; a fixed window makes the screenshot comparable.
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1500,1150"]
            }
        });
        let serde_json::Value::Object(caps) = caps else {
            unreachable!()
        };
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        ClientBuilder::new(connector)
            .capabilities(caps)
            .connect(&self.url)
            .await
            .unwrap_or_else(|e| panic!("cannot start Chromium through chromedriver: {e}"))
    }
}

/// Milliseconds of the day of `hh:mm:ss.mmm`.
fn day_ms(text: &str) -> Option<i64> {
    let (hms, ms) = text.trim().split_once('.')?;
    let mut p = hms.split(':').map(|x| x.parse::<i64>().ok());
    let (h, m, s) = (p.next()??, p.next()??, p.next()??);
    Some(((h * 60 + m) * 60 + s) * 1000 + ms.parse::<i64>().ok()?)
}

/// `a − b` on the clock face, in (−12 h, 12 h].
fn face_diff(a: i64, b: i64) -> i64 {
    let d = (a - b).rem_euclid(DAY_MS);
    if d > DAY_MS / 2 {
        d - DAY_MS
    } else {
        d
    }
}

async fn text(c: &Client, css: &str) -> String {
    match c.find(Locator::Css(css)).await {
        Ok(e) => e.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

/// The clock shown on client `id`'s card (ms of the day).
async fn shown(c: &Client, id: &str) -> Option<i64> {
    day_ms(&text(c, &format!(".card[data-id='{id}'] .digital")).await)
}

/// The ids of the cards shown, read in one script: the page re-renders cards as frames arrive,
/// so elements found one call earlier can be gone by the next (a stale element reference).
async fn cards(c: &Client) -> Vec<String> {
    let ids = c
        .execute(
            "return Array.from(document.querySelectorAll('.card')).map(e => e.dataset.id || '');",
            vec![],
        )
        .await
        .unwrap();
    serde_json::from_value(ids).unwrap()
}

async fn click(c: &Client, css: &str) {
    c.find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("no {css} on the page: {e}"))
        .click()
        .await
        .unwrap();
}

async fn type_into(c: &Client, css: &str, what: &str) {
    let e = c.find(Locator::Css(css)).await.unwrap();
    e.clear().await.unwrap();
    e.send_keys(what).await.unwrap();
}

/// Waits until the control's result line contains `needle`; the line.
async fn result(c: &Client, needle: &str) -> String {
    wait_for(Duration::from_secs(20), needle, || async {
        let r = text(c, "#result").await;
        r.contains(needle).then_some(r)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_in_chromium_shows_the_cluster_and_drives_it() {
    let t = Tsc::local_synced("10.243.0.0/24", 2, 3, 1);
    let driver = Driver::start(&t.home.path().join("chromedriver.log"));
    let dash = Dash::start(&t);
    let (_, store) = t.endpoints().await;
    let c = driver.browser().await;
    c.goto(&dash.url()).await.unwrap();

    // One ticking clock per client, each telling its client's virtual time.
    let ids = wait_for(Duration::from_secs(15), "three ticking cards", || async {
        let ids = cards(&c).await;
        let mut ticking = 0;
        for id in &ids {
            ticking += usize::from(shown(&c, id).await.is_some());
        }
        (ids.len() == 3 && ticking == 3).then_some(ids)
    })
    .await;
    for id in &ids {
        let a = shown(&c, id).await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let b = shown(&c, id).await.unwrap();
        assert!(face_diff(b, a) > 0, "{id}'s clock stands still at {a}");
        let r = store.report(&id.parse().unwrap()).await.unwrap().unwrap();
        let now = SystemClock.now_us();
        let virtual_ms = (r.report.time_us + now - r.received_at_us) / 1000;
        let shown_ms = shown(&c, id).await.unwrap();
        let off = face_diff(shown_ms, virtual_ms.rem_euclid(DAY_MS));
        println!("{id}: shown − virtual = {off} ms");
        assert!(off.abs() < 1000, "{id} shows a time {off} ms off its clock");
    }

    // The master is marked, and it is the cluster's master.
    let master = t.master().unwrap();
    let marked = c.find(Locator::Css(".card.master")).await.unwrap();
    assert_eq!(
        marked.attr("data-id").await.unwrap().as_deref(),
        Some(master.as_str())
    );
    assert!(text(&c, "#master").await.starts_with(&master[..8]));
    let follower = ids.iter().find(|i| **i != master).unwrap().clone();
    let card = format!(".card[data-id='{follower}']");

    // A control pressed before logging in is refused, and changes nothing.
    type_into(&c, &format!("{card} input.shift"), "+30").await;
    click(&c, &format!("{card} button.set")).await;
    let refused = result(&c, "401").await;
    assert!(refused.contains("operator token"), "{refused}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let steps = text(&c, &format!("{card} .steps")).await;
    assert!(!steps.contains("set by the operator"), "{steps}");

    // Log in from the page, then shift the follower by +30 s: it jumps, and comes back.
    type_into(&c, "#login-token", &t.token()).await;
    click(&c, "#login-btn").await;
    result(&c, "logged in").await;
    type_into(&c, &format!("{card} input.shift"), "+30").await;
    click(&c, &format!("{card} button.set")).await;
    result(&c, "shifted by +30.000000 s").await;
    let jump = wait_for(
        Duration::from_secs(5),
        "the follower's clock to jump",
        || async {
            let (f, m) = (shown(&c, &follower).await?, shown(&c, &master).await?);
            let d = face_diff(f, m);
            (d > 25_000).then_some(d)
        },
    )
    .await;
    println!("the follower showed {jump} ms ahead of the master");
    assert!(jump < 35_000, "{jump}");
    wait_for(
        Duration::from_secs(15),
        "the follower back with the master",
        || async {
            let (f, m) = (shown(&c, &follower).await?, shown(&c, &master).await?);
            (face_diff(f, m).abs() < 1000).then_some(())
        },
    )
    .await;
    let steps = text(&c, &format!("{card} .steps")).await;
    assert!(
        steps.contains("set by the operator: stepped +30.000000 s"),
        "{steps}"
    );

    // Add a client from the page: a fourth card; remove it: three again.
    type_into(&c, "#add-n", "1").await;
    click(&c, "#add-btn").await;
    result(&c, "Started new client at").await;
    let t0 = Instant::now();
    let added = wait_for(Duration::from_secs(2), "a fourth card", || async {
        let now = cards(&c).await;
        now.into_iter().find(|id| !ids.contains(id))
    })
    .await;
    println!("card added after {:?}", t0.elapsed());
    let rm = format!(".card[data-id='{added}'] button.rm");
    click(&c, &rm).await;
    click(&c, &rm).await;
    result(&c, "removed successfully").await;
    let t0 = Instant::now();
    wait_for(Duration::from_secs(2), "the card removed", || async {
        (!cards(&c).await.contains(&added)).then_some(())
    })
    .await;
    println!("card removed after {:?}", t0.elapsed());

    // Stop the leader from the page: the page shows the other replica leading.
    let leader = wait_for(Duration::from_secs(10), "a leader on the page", || async {
        let l = text(&c, "#leader").await;
        l.starts_with("replica ").then_some(l)
    })
    .await;
    let id = leader.split_whitespace().nth(1).unwrap().to_string();
    click(
        &c,
        &format!("#servers tr[data-id='{id}'] button[data-act='stop']"),
    )
    .await;
    result(&c, "stopped").await;
    let new = wait_for(
        Duration::from_secs(20),
        "a new leader on the page",
        || async {
            let l = text(&c, "#leader").await;
            (l.starts_with("replica ") && l.split_whitespace().nth(1) != Some(&id)).then_some(l)
        },
    )
    .await;
    println!("leader: {leader} → {new}");
    let row = c
        .find(Locator::Css("#servers tr.leader"))
        .await
        .unwrap()
        .attr("data-id")
        .await
        .unwrap();
    assert_ne!(row.as_deref(), Some(id.as_str()), "the star moved");
    wait_for(
        Duration::from_secs(10),
        "the election on the timeline",
        || async {
            let tl = text(&c, "#timeline").await;
            tl.contains("COORDINATOR").then_some(())
        },
    )
    .await;

    // The screenshot: a real picture, not a blank page.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let png = c.screenshot().await.unwrap();
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
    std::fs::write(&path, &png).unwrap();
    let decoder = png::Decoder::new(std::io::Cursor::new(&png));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    let px = info.color_type.samples();
    let mut colours = std::collections::HashMap::new();
    for p in buf[..info.buffer_size()].chunks(px) {
        *colours.entry((p[0], p[1], p[2])).or_insert(0usize) += 1;
    }
    let pixels = (info.width * info.height) as usize;
    let commonest = colours.values().max().copied().unwrap_or(0);
    println!(
        "screenshot {}x{} at {}: {} colours, the commonest on {:.0}% of the pixels",
        info.width,
        info.height,
        path.display(),
        colours.len(),
        100.0 * commonest as f64 / pixels as f64
    );
    assert!(info.width >= 1000 && info.height >= 700);
    assert!(
        colours.len() > 200,
        "a page of {} colours is blank",
        colours.len()
    );
    assert!(commonest < pixels * 9 / 10, "one colour covers the page");
    c.close().await.unwrap();
    t.ok(&["teardown"]);
}
