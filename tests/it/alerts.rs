//! The example Prometheus alert rules in docs/alerts: valid for promtool, and
//! written only against metrics a running pollhook really exports.

use std::path::PathBuf;
use std::process::Command;

use crate::rig::*;

fn rules_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs/alerts/pollhook-rules.yml")
}

#[test]
#[ignore = "needs promtool; run with --include-ignored (see README)"]
fn alert_rules_pass_promtool() {
    tools::require("promtool", "apt-get install prometheus");
    let rules = rules_path();
    let output = Command::new("promtool")
        .arg("check")
        .arg("rules")
        .arg(&rules)
        .output()
        .unwrap_or_else(|e| panic!("cannot run promtool: {e}"));
    assert!(
        output.status.success(),
        "promtool check rules {} failed:\n{}{}",
        rules.display(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alert_rules_only_use_metrics_pollhook_exports() {
    let rules = std::fs::read_to_string(rules_path()).expect("the rules file is readable");
    let used = metric_names(&rules);
    assert!(
        used.len() >= 6,
        "the scan found too few metric names in the rules file: {used:?}"
    );

    let setup = Setup::new().await;
    let port = free_port();
    let mut relay = setup.spawn(&setup.admin_config(port));
    relay.wait_log("admin API on", LONG).await;
    // One delivered update, so every per-bot and per-forward series exists.
    setup.api.push_message(TOKEN, 1, 1, "x");
    setup.backend.wait_accepted(1, LONG).await;

    let (code, scrape) = get(port, "/metrics").await;
    assert_eq!(code, 200);

    let missing: Vec<&String> = used.iter().filter(|n| !exported(&scrape, n)).collect();
    assert!(
        missing.is_empty(),
        "the alert rules use metrics pollhook does not export: {missing:?}\n/metrics:\n{scrape}"
    );
    assert_no_token(&relay.logs());
}

#[test]
fn metric_names_finds_whole_names_only() {
    let text = "expr: rate(pollhook_a_total[5m]) > 0 and xpollhook_b\n# pollhook_c_bucket";
    let names: Vec<String> = metric_names(text).into_iter().collect();
    assert_eq!(names, ["pollhook_a_total", "pollhook_c_bucket"]);
    let scrape = "# TYPE pollhook_c histogram\n# TYPE pollhook_a_total counter\n";
    assert!(exported(scrape, "pollhook_a_total"));
    assert!(exported(scrape, "pollhook_c_bucket"));
    assert!(!exported(scrape, "pollhook_a"));
    assert!(!exported(scrape, "pollhook_a_total_count"));
}
