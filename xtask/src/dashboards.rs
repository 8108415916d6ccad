//! `cargo xtask dashboards`: from the one panel spec (`dashboards/panels.yaml`) generate
//!
//! - the Grafana dashboard (`dashboards/grafana/lsvmi-host.json`, with a datasource
//!   variable) and its provisioning files (`dashboards/grafana/provisioning/`), committed
//!   and checked current by `--check` (the tests run it);
//! - a self-contained static page (`target/dashboards/lsvmi.html`) that queries a
//!   VictoriaMetrics directly (`/api/v1/query_range`; it answers with permissive CORS),
//!   with uPlot fetched from the npm registry at build time, its integrity checked, and
//!   inlined — never committed.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};
use serde::Deserialize;
use serde_json::{Value, json};

/// The repository (this module is also compiled into the tests crate, one level down
/// like xtask).
fn workspace_root() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    here.parent().unwrap_or(here).to_path_buf()
}

/// The chart library of the static page: small, fast on 100 ms series, no dependencies.
const UPLOT_VERSION: &str = "1.6.31";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    pub title: String,
    pub uid: String,
    pub rows: Vec<Row>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Row {
    pub title: String,
    pub panels: Vec<Panel>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Panel {
    pub title: String,
    #[serde(default)]
    pub kind: Kind,
    pub unit: String,
    pub queries: Vec<Query>,
}

#[derive(Debug, Default, Clone, Copy, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    #[default]
    Timeseries,
    Heatmap,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Query {
    pub expr: String,
    pub legend: String,
}

fn spec_path() -> PathBuf {
    workspace_root().join("dashboards/panels.yaml")
}

pub fn load() -> anyhow::Result<Spec> {
    let path = spec_path();
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    serde_yaml::from_str(&text).with_context(|| format!("{}", path.display()))
}

/// The Grafana dashboard: rows of panels two to a row, a datasource variable and the
/// host (`instance`) variable.
pub fn grafana(spec: &Spec) -> Value {
    let mut panels = Vec::new();
    let mut id = 1;
    let mut y = 0;
    for row in &spec.rows {
        panels.push(json!({
            "type": "row", "id": id, "title": row.title, "collapsed": false,
            "gridPos": { "h": 1, "w": 24, "x": 0, "y": y },
        }));
        id += 1;
        y += 1;
        for (i, p) in row.panels.iter().enumerate() {
            let targets: Vec<Value> = p
                .queries
                .iter()
                .enumerate()
                .map(|(n, q)| {
                    json!({
                        "refId": ((b'A' + n as u8) as char).to_string(),
                        "datasource": { "type": "prometheus", "uid": "${datasource}" },
                        "expr": q.expr, "legendFormat": q.legend, "range": true,
                    })
                })
                .collect();
            let mut panel = json!({
                "id": id, "title": p.title,
                "datasource": { "type": "prometheus", "uid": "${datasource}" },
                "gridPos": { "h": 8, "w": 12, "x": (i % 2) * 12, "y": y + (i / 2) as i64 * 8 },
                "targets": targets,
                "fieldConfig": { "defaults": { "unit": p.unit }, "overrides": [] },
            });
            match p.kind {
                Kind::Timeseries => {
                    panel["type"] = json!("timeseries");
                    panel["options"] = json!({ "legend": { "displayMode": "list", "placement": "bottom" } });
                }
                // One row per series (per CPU), colour by value: busy time over time.
                Kind::Heatmap => {
                    panel["type"] = json!("heatmap");
                    panel["options"] = json!({
                        "calculate": false, "rowsFrame": { "layout": "auto" },
                        "color": { "mode": "scheme", "scheme": "Oranges" }, "yAxis": { "axisPlacement": "left" },
                    });
                }
            }
            panels.push(panel);
            id += 1;
        }
        y += row.panels.len().div_ceil(2) as i64 * 8;
    }
    json!({
        "uid": spec.uid, "title": spec.title, "schemaVersion": 39, "version": 1, "editable": true,
        "tags": ["lsvmi"], "time": { "from": "now-15m", "to": "now" }, "refresh": "5s",
        "timepicker": { "refresh_intervals": ["1s", "5s", "10s", "30s", "1m"] },
        "description": "Generated from dashboards/panels.yaml by `cargo xtask dashboards`; edit that file, not this one. \
            Set the datasource's scrape interval (timeInterval) to 100ms: lsvmi's data has 100 ms resolution.",
        "templating": { "list": [
            { "name": "datasource", "type": "datasource", "query": "prometheus", "label": "VictoriaMetrics" },
            {
                "name": "instance", "type": "query", "label": "host", "refresh": 2,
                "datasource": { "type": "prometheus", "uid": "${datasource}" },
                "query": { "query": "label_values(proc_stat_cpu_seconds_total, instance)", "refId": "instance" },
                "definition": "label_values(proc_stat_cpu_seconds_total, instance)",
            },
        ] },
        "panels": panels,
    })
}

const DATASOURCE: &str = "\
# Generated by `cargo xtask dashboards`. A VictoriaMetrics as Grafana's Prometheus
# datasource; lsvmi's data has 100 ms resolution, so the scrape interval Grafana assumes
# (timeInterval) is 100ms.
apiVersion: 1
datasources:
  - name: VictoriaMetrics
    type: prometheus
    access: proxy
    url: http://127.0.0.1:8428
    isDefault: true
    jsonData:
      timeInterval: 100ms
";

const PROVIDER: &str = "\
# Generated by `cargo xtask dashboards`. Copy lsvmi-host.json to the path below.
apiVersion: 1
providers:
  - name: lsvmi
    folder: lsvmi
    type: file
    options:
      path: /var/lib/grafana/dashboards/lsvmi
";

/// The committed files and their contents.
pub fn committed(spec: &Spec) -> anyhow::Result<Vec<(PathBuf, String)>> {
    let dir = workspace_root().join("dashboards/grafana");
    let mut json = serde_json::to_string_pretty(&grafana(spec))?;
    json.push('\n');
    Ok(vec![
        (dir.join("lsvmi-host.json"), json),
        (dir.join("provisioning/datasources/lsvmi.yaml"), DATASOURCE.to_string()),
        (dir.join("provisioning/dashboards/lsvmi.yaml"), PROVIDER.to_string()),
    ])
}

/// Write (or, with `check`, compare) the committed files, then build the static page.
pub fn run(check: bool) -> anyhow::Result<()> {
    let spec = load()?;
    let mut stale = Vec::new();
    for (path, text) in committed(&spec)? {
        if check {
            if std::fs::read_to_string(&path).ok().as_deref() != Some(text.as_str()) {
                stale.push(path.display().to_string());
            }
        } else {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        }
    }
    if !stale.is_empty() {
        bail!("generated dashboards are stale ({}): run `cargo xtask dashboards` and commit", stale.join(", "));
    }
    if check {
        println!("xtask dashboards: the generated files are current");
        return Ok(());
    }
    let page = static_page(&spec)?;
    println!("xtask dashboards: dashboards/grafana/ written; static page {}", page.display());
    Ok(())
}

/// uPlot's script and stylesheet from the npm registry (cached under target/npm/), its
/// tarball checked against the registry's sha512 integrity.
fn uplot() -> anyhow::Result<(String, String)> {
    let dir = workspace_root().join(format!("target/npm/uplot-{UPLOT_VERSION}"));
    let (js, css) = (dir.join("package/dist/uPlot.iife.min.js"), dir.join("package/dist/uPlot.min.css"));
    if !(js.is_file() && css.is_file()) {
        std::fs::create_dir_all(&dir)?;
        let meta = curl(&format!("https://registry.npmjs.org/uplot/{UPLOT_VERSION}"))?;
        let meta: Value = serde_json::from_slice(&meta).context("the npm registry's answer")?;
        let tarball = meta["dist"]["tarball"].as_str().context("no dist.tarball")?;
        let integrity = meta["dist"]["integrity"].as_str().context("no dist.integrity")?;
        let tgz = dir.join("uplot.tgz");
        std::fs::write(&tgz, curl(tarball)?)?;
        let b64 = Command::new("sh")
            .args(["-c", "openssl dgst -sha512 -binary \"$1\" | openssl base64 -A", "sh"])
            .arg(&tgz)
            .output()
            .context("openssl")?;
        let got = format!("sha512-{}", String::from_utf8_lossy(&b64.stdout).trim());
        if got != integrity {
            bail!("uplot {UPLOT_VERSION}: integrity {got} is not the registry's {integrity}");
        }
        let st = Command::new("tar").arg("-xzf").arg(&tgz).arg("-C").arg(&dir).status()?;
        if !st.success() {
            bail!("unpacking {}", tgz.display());
        }
    }
    Ok((std::fs::read_to_string(js)?, std::fs::read_to_string(css)?))
}

fn curl(url: &str) -> anyhow::Result<Vec<u8>> {
    let out = Command::new("curl").args(["-fsSL", "--max-time", "60", url]).output().context("running curl")?;
    if !out.status.success() {
        bail!("fetching {url}: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(out.stdout)
}

/// The static page: the spec as JSON, the page's script, uPlot inlined.
pub fn static_page(spec: &Spec) -> anyhow::Result<PathBuf> {
    let (js, css) = uplot()?;
    let panels: Vec<Value> = spec
        .rows
        .iter()
        .map(|r| {
            json!({ "title": r.title, "panels": r.panels.iter().map(|p| json!({
                "title": p.title, "unit": p.unit, "kind": if p.kind == Kind::Heatmap { "heatmap" } else { "timeseries" },
                "queries": p.queries.iter().map(|q| json!({ "expr": q.expr, "legend": q.legend })).collect::<Vec<_>>(),
            })).collect::<Vec<_>>() })
        })
        .collect();
    let template = std::fs::read_to_string(workspace_root().join("dashboards/page.html"))?;
    let html = template
        .replace("/*UPLOT_CSS*/", &css)
        .replace("/*UPLOT_JS*/", &js.replace("</script", "<\\/script"))
        .replace("/*SPEC*/null", &serde_json::to_string(&json!({ "title": spec.title, "rows": panels }))?);
    let out = workspace_root().join("target/dashboards/lsvmi.html");
    std::fs::create_dir_all(out.parent().unwrap_or(Path::new(".")))?;
    std::fs::write(&out, html)?;
    Ok(out)
}
