//! The example Grafana dashboard in docs/grafana: the shape Grafana 10/11
//! imports (a Prometheus data source chosen at import, the `bot` and
//! `forward` variables), and queries written only against metrics a running
//! pollhook really exports.

use std::collections::BTreeSet;
use std::path::PathBuf;

use serde_json::{json, Value};

use crate::rig::*;

const DS_UID: &str = "${DS_PROMETHEUS}";
/// Grafana's own variables a query may use besides the dashboard's.
const BUILT_IN: [&str; 3] = ["__rate_interval", "__interval", "__range"];

fn dashboard() -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs/grafana/pollhook.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

/// A panel's title, for messages.
fn title(panel: &Value) -> String {
    format!(
        "panel {} {:?}",
        panel["id"],
        panel["title"].as_str().unwrap_or("")
    )
}

/// The dashboard's template variables.
fn variables(dash: &Value) -> &[Value] {
    dash["templating"]["list"]
        .as_array()
        .map_or(&[], Vec::as_slice)
}

/// A query variable's PromQL: a string, or `{"query": …}` as Grafana 10
/// saves it.
fn variable_query(var: &Value) -> &str {
    var["query"]
        .as_str()
        .or_else(|| var["query"]["query"].as_str())
        .unwrap_or("")
}

/// Every PromQL query, with where it is: panels' targets and template
/// variables.
fn queries(dash: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for panel in dash["panels"].as_array().into_iter().flatten() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().unwrap_or("").to_string();
            let target_id = target["refId"].as_str().unwrap_or("?");
            out.push((format!("{} target {target_id}", title(panel)), expr));
        }
    }
    for var in variables(dash) {
        out.push((
            format!("variable {}", var["name"]),
            variable_query(var).to_string(),
        ));
    }
    out
}

/// The names a query refers to as `$name` or `${name}`.
fn referenced_variables(expr: &str) -> BTreeSet<String> {
    expr.split('$')
        .skip(1)
        .map(|rest| {
            let rest = rest.strip_prefix('{').unwrap_or(rest);
            let len = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            rest[..len].to_string()
        })
        .collect()
}

/// What keeps Grafana from importing the dashboard as it stands, or leaves
/// a panel showing nothing: none for a good one.
fn shape_problems(dash: &Value) -> Vec<String> {
    let mut problems = Vec::new();
    let mut check = |ok: bool, what: String| {
        if !ok {
            problems.push(what);
        }
    };
    for key in ["title", "uid"] {
        check(
            dash[key].as_str().is_some_and(|s| !s.is_empty()),
            format!("no {key}"),
        );
    }
    check(
        dash["schemaVersion"].as_u64().is_some_and(|v| v >= 36),
        format!(
            "schemaVersion {} is older than Grafana 10's",
            dash["schemaVersion"]
        ),
    );
    let inputs = dash["__inputs"].as_array().map_or(&[][..], Vec::as_slice);
    check(
        inputs.iter().any(|i| {
            i["name"] == "DS_PROMETHEUS"
                && i["type"] == "datasource"
                && i["pluginId"] == "prometheus"
        }),
        "no __inputs entry for the Prometheus data source DS_PROMETHEUS".into(),
    );
    let datasource = json!({"type": "prometheus", "uid": DS_UID});

    let names: BTreeSet<&str> = variables(dash)
        .iter()
        .filter_map(|v| v["name"].as_str())
        .collect();
    for want in ["bot", "forward"] {
        check(names.contains(want), format!("no template variable {want}"));
    }
    for var in variables(dash) {
        let name = var["name"].as_str().unwrap_or("");
        check(
            var["type"] == "query" && var["datasource"] == datasource,
            format!("variable {name} is not a query on the {DS_UID} data source"),
        );
        check(
            variable_query(var).starts_with("label_values("),
            format!("variable {name} does not take label_values(…)"),
        );
    }

    let panels = dash["panels"].as_array().map_or(&[][..], Vec::as_slice);
    check(!panels.is_empty(), "no panels".into());
    let mut ids = BTreeSet::new();
    let mut boxes: Vec<(String, [u64; 4])> = Vec::new();
    for panel in panels {
        let at = title(panel);
        check(
            panel["type"].as_str().is_some_and(|s| !s.is_empty()),
            format!("{at} has no type"),
        );
        check(
            panel["id"].as_u64().is_some_and(|id| ids.insert(id)),
            format!("{at}: its id is missing or not unique"),
        );
        let grid = &panel["gridPos"];
        let [h, w, x, y] = ["h", "w", "x", "y"].map(|k| grid[k].as_u64());
        match (h, w, x, y) {
            (Some(h), Some(w), Some(x), Some(y)) if h > 0 && w > 0 && x + w <= 24 => {
                let r = [x, y, w, h];
                if let Some((other, _)) = boxes.iter().find(|(_, o)| {
                    r[0] < o[0] + o[2]
                        && o[0] < r[0] + r[2]
                        && r[1] < o[1] + o[3]
                        && o[1] < r[1] + r[3]
                }) {
                    check(false, format!("{at} overlaps {other}"));
                }
                boxes.push((at.clone(), r));
            }
            _ => check(
                false,
                format!("{at}: gridPos {grid} is not h, w, x, y within 24 columns"),
            ),
        }
        if panel["type"] == "row" {
            continue;
        }
        check(
            panel["datasource"] == datasource,
            format!("{at}: its datasource is not {datasource}"),
        );
        let targets = panel["targets"].as_array().map_or(&[][..], Vec::as_slice);
        check(!targets.is_empty(), format!("{at} has no targets"));
        let mut refs = BTreeSet::new();
        for target in targets {
            check(
                target["expr"]
                    .as_str()
                    .is_some_and(|e| !e.trim().is_empty()),
                format!("{at}: a target has no expr"),
            );
            // A target's own data source wins over the panel's.
            check(
                target.get("datasource").is_none_or(|d| *d == datasource),
                format!("{at}: a target's datasource is not {datasource}"),
            );
            check(
                target["refId"].as_str().is_some_and(|r| refs.insert(r)),
                format!("{at}: a target's refId is missing or not unique"),
            );
        }
    }

    for (at, expr) in queries(dash) {
        check(
            !metric_names(&expr).is_empty(),
            format!("{at}: no pollhook_ metric in {expr:?}"),
        );
        for var in referenced_variables(&expr) {
            check(
                names.contains(var.as_str()) || BUILT_IN.contains(&var.as_str()),
                format!("{at}: ${var} is no variable of the dashboard in {expr:?}"),
            );
        }
    }
    problems
}

#[test]
fn the_dashboard_has_the_shape_grafana_imports() {
    let dash = dashboard();
    let problems = shape_problems(&dash);
    assert!(
        problems.is_empty(),
        "docs/grafana/pollhook.json:\n{}",
        problems.join("\n")
    );
    let panels = dash["panels"].as_array().unwrap();
    let rows = panels.iter().filter(|p| p["type"] == "row").count();
    println!(
        "dashboard: {} panels and {rows} rows, {} queries, {} variables",
        panels.len() - rows,
        queries(&dash).len(),
        variables(&dash).len()
    );
}

/// `expr` as plain PromQL: the dashboard's variables as Grafana would
/// substitute them for "All" and a 5-minute rate interval.
fn substituted(expr: &str) -> String {
    expr.replace("$__rate_interval", "5m")
        .replace("$bot", ".*")
        .replace("$forward", ".*")
}

/// promtool parses PromQL only in rule files: each panel query becomes a
/// recording rule.
#[test]
#[ignore = "needs promtool; run with --include-ignored (see README)"]
fn the_dashboard_queries_parse_with_promtool() {
    tools::require("promtool", "apt-get install prometheus");
    let dash = dashboard();
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    let mut n = 0;
    for (at, expr) in queries(&dash) {
        if at.starts_with("variable ") {
            continue; // label_values(…) is Grafana's, not PromQL
        }
        n += 1;
        let expr = serde_json::to_string(&substituted(&expr)).unwrap();
        rules +=
            &format!("      # {at}\n      - record: dashboard:query_{n}\n        expr: {expr}\n");
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("dashboard-queries.yml");
    std::fs::write(&file, &rules).unwrap();
    let output = std::process::Command::new("promtool")
        .arg("check")
        .arg("rules")
        .arg(&file)
        .output()
        .unwrap_or_else(|e| panic!("cannot run promtool: {e}"));
    assert!(
        output.status.success(),
        "promtool cannot parse the dashboard's queries:\n{}{}\n{rules}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    println!("dashboard: promtool parsed {n} panel queries");
}

#[test]
fn shape_problems_are_found() {
    let mut dash = dashboard();
    assert_eq!(shape_problems(&dash), Vec::<String>::new());
    let panels = dash["panels"].as_array_mut().unwrap();
    let mut graphs = panels.iter_mut().filter(|p| p["type"] != "row");
    let [a, b, c, d] = [(); 4].map(|_| graphs.next().expect("4 panels that are no rows"));
    a["id"] = b["id"].clone();
    b["targets"][0]["expr"] = json!("sum(rate(polhook_polls_total[5m]))");
    c["targets"][0]["expr"] = json!("pollhook_polls_total{bot=~\"$bots\"}");
    d["datasource"] = json!({"type": "prometheus", "uid": "prometheus"});
    dash["templating"]["list"].as_array_mut().unwrap().pop();
    let problems = shape_problems(&dash).join("\n");
    for want in [
        "its id is missing or not unique",
        "no pollhook_ metric in \"sum(rate(polhook_polls_total[5m]))\"",
        "$bots is no variable of the dashboard",
        "its datasource is not",
        "no template variable forward",
        // The panels that use $forward now name no variable either.
        "$forward is no variable of the dashboard",
    ] {
        assert!(problems.contains(want), "{want:?} not in:\n{problems}");
    }
}

#[test]
fn referenced_variables_reads_both_spellings() {
    let vars = referenced_variables(r#"rate(x{bot=~"$bot",f=~"${forward}"}[$__rate_interval])"#);
    let vars: Vec<&str> = vars.iter().map(String::as_str).collect();
    assert_eq!(vars, ["__rate_interval", "bot", "forward"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_only_uses_metrics_pollhook_exports() {
    let dash = dashboard();
    let queries = queries(&dash);
    let used: BTreeSet<String> = queries.iter().flat_map(|(_, e)| metric_names(e)).collect();
    assert!(
        used.len() >= 15,
        "the scan found too few metric names in the dashboard: {used:?}"
    );

    // With a gateway, so its series are declared too.
    let setup = Setup::new().await;
    let admin = free_port();
    let top = gateway_table("") + &admin_table(admin, "");
    let config = setup.config_full(
        &top,
        &client_table("app", "1:grafana-dashboard-key", ""),
        "",
    );
    let gw = Gateway::start(&setup, &config).await;
    // One delivered update, so every per-bot and per-forward series exists.
    setup.api.push_message(TOKEN, 1, 1, "x");
    setup.backend.wait_accepted(1, LONG).await;

    let (code, scrape) = get(admin, "/metrics").await;
    assert_eq!(code, 200);
    let missing: Vec<&String> = used.iter().filter(|n| !exported(&scrape, n)).collect();
    assert!(
        missing.is_empty(),
        "the dashboard uses metrics pollhook does not export: {missing:?}\n/metrics:\n{scrape}"
    );
    println!(
        "dashboard: {} metric names in {} queries, all in /metrics",
        used.len(),
        queries.len()
    );
    assert_no_token(&gw.relay.logs());
}
