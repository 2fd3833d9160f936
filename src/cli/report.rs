//! `tsc report`: every client's true error over a while (median, p99, max), and a chart.

use super::output::{CliResult, Out};
use super::snapshot::{redis, snapshot};
use super::view::ms;
use crate::core::clock::{Clock, SystemClock};
use crate::core::protocol::Algorithm;
use crate::error::Error;
use crate::measure::{plot, plot_lines, Stats, TrueOffsets};
use crate::runtime::cluster::{ClusterConfig, State};
use crate::runtime::Runtime;
use comfy_table::{presets::UTF8_FULL_CONDENSED, Table};
use serde_json::json;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// How often Redis is read while sampling.
const SAMPLE_EVERY: Duration = Duration::from_millis(200);

/// Samples for `duration`, then prints (and plots) the errors.
pub async fn report(
    cfg: &ClusterConfig,
    state: &State,
    rt: &Runtime,
    duration: Duration,
    plot: Option<PathBuf>,
    out: &Out,
) -> CliResult<u8> {
    let store = redis(rt, state).await?;
    let alg = cfg.server.algorithm;
    let mut series = TrueOffsets::default();
    let t0 = SystemClock.now_us();
    let until = Instant::now() + duration;
    out.line(&format!(
        "Sampling for {}s ({} algorithm)..",
        duration.as_secs(),
        alg.as_str()
    ));
    while Instant::now() < until {
        series.poll(&store).await;
        tokio::time::sleep(SAMPLE_EVERY).await;
    }
    let errs = series.errors(alg);
    let overall = Stats::of(errs.iter().map(|(_, _, e)| *e));
    // ε, the clients' own bounds (docs/PROTOCOL.md §15.6), and how often they held.
    let eps = Stats::of(series.bounds_of(&errs));
    let coverage = series.coverage(&errs);
    let snap = snapshot(rt, state).await?;
    let reference = if alg == Algorithm::Berkeley {
        "mean of all clients"
    } else {
        "master"
    };
    let mut rows = Vec::new();
    for r in &snap.rows {
        let Ok(id) = r.id.parse::<uuid::Uuid>() else {
            continue;
        };
        let mine: Vec<(uuid::Uuid, i64, i64)> =
            errs.iter().copied().filter(|(c, _, _)| *c == id).collect();
        let st = Stats::of(mine.iter().map(|(_, _, e)| *e));
        let eps = Stats::of(series.bounds_of(&mine));
        rows.push((r, st, eps, series.coverage(&mine)));
    }
    if let Some(path) = &plot {
        let title = format!(
            "{} algorithm, {} clients: true error vs {reference}",
            alg.as_str(),
            series.points.len()
        );
        let svg = plot::svg(&title, "error", &plot_lines(&series, alg, t0, t0));
        std::fs::write(path, svg).map_err(|e| Error::io(path, e))?;
    }
    if out.json {
        out.json(json!({
            "algorithm": alg.as_str(), "reference": reference, "duration_s": duration.as_secs(),
            "overall": overall, "error_bound": eps, "coverage": coverage,
            "clients": rows.iter().map(|(r, st, eps, cov)| json!({"id": r.id, "ip": r.ip, "is_master": r.is_master,
                "estimated_offset_us": r.offset_to_master_us, "true_error": st, "error_bound": eps, "coverage": cov})).collect::<Vec<_>>(),
            "plot": plot,
        }));
        return Ok(0);
    }
    let mut t = Table::new();
    t.load_style(UTF8_FULL_CONDENSED);
    t.set_header([
        "ID",
        "IP",
        "EST OFFSET ms",
        "TRUE ERR median µs",
        "p99 µs",
        "max µs",
        "ε median µs",
        "ε HELD",
        "SAMPLES",
    ]);
    for (r, st, eps, cov) in &rows {
        t.add_row([
            format!("{}{}", r.id, if r.is_master { " (master)" } else { "" }),
            r.ip.to_string(),
            ms(r.offset_to_master_us),
            st.median_us.to_string(),
            st.p99_us.to_string(),
            st.max_us.to_string(),
            if eps.samples == 0 {
                "-".into()
            } else {
                eps.median_us.to_string()
            },
            if cov.bounded == 0 {
                "-".into()
            } else {
                format!("{}/{}", cov.held, cov.bounded)
            },
            st.samples.to_string(),
        ]);
    }
    out.line(&t.to_string());
    out.line(&format!(
        "algorithm={} reference={reference} clients={} median_us={} p99_us={} p999_us={} max_us={} samples={} eps_median_us={} eps_coverage={}",
        alg.as_str(),
        rows.len(),
        overall.median_us,
        overall.p99_us,
        overall.p999_us,
        overall.max_us,
        overall.samples,
        if eps.samples == 0 {
            "none".to_string()
        } else {
            eps.median_us.to_string()
        },
        coverage.ratio(),
    ));
    if let Some(p) = plot {
        out.line(&format!("Plot written to {}", p.display()));
    }
    Ok(0)
}
