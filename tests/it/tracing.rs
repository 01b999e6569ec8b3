//! Traces over OTLP: the span tree of one update from poll to reply, the
//! `traceparent` its backend gets, what spans may not hold, and the
//! standard OpenTelemetry variables (off without them).

use crate::rig::otlp::tree;
use crate::rig::*;

/// What a message and its reply say: a user's words, kept out of spans.
const USER_TEXT: &str = "private words of a user";
const REPLY_TEXT: &str = "private answer to a user";

fn tracing_table(collector: &Collector) -> String {
    format!("[tracing]\notlp_endpoint = \"{}\"\n", collector.endpoint())
}

/// The one span named `name` among `spans`; fails listing them otherwise.
fn one<'a>(spans: &'a [GotSpan], name: &str) -> &'a GotSpan {
    let found: Vec<&GotSpan> = spans.iter().filter(|s| s.name == name).collect();
    assert_eq!(found.len(), 1, "one {name} span wanted:\n{}", tree(spans));
    found[0]
}

fn traceparent(trace_id: &str, span_id: &str) -> String {
    format!("00-{trace_id}-{span_id}-01")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_update_is_one_trace_from_poll_to_reply() {
    let setup = Setup::new().await;
    let collector = Collector::start().await;
    // The first attempt fails, the second is answered with a Bot API call.
    setup
        .backend
        .set_script(|r, _| match r.header("x-pollhook-attempt") {
            Some("1") => Reply::Status(502),
            _ => Reply::Body(
                200,
                "application/json".into(),
                format!(r#"{{"method":"sendMessage","chat_id":7,"text":"{REPLY_TEXT}"}}"#),
            ),
        });
    let config = setup.config_full(&tracing_table(&collector), "", "");
    // The SDK's default export delay (5 s) is left as it is: the spans
    // arrive by the stop's final export.
    let mut relay = setup.spawn(&config);
    setup.api.push_message(TOKEN, 1, 7, USER_TEXT);
    let got = setup.backend.wait_received(2, LONG).await;
    setup
        .api
        .wait_method_calls(TOKEN, "sendMessage", 1, LONG)
        .await;
    relay.wait_log("webhook reply executed", LONG).await;
    relay.stop().await;

    // Everything was sent by the time the process exited.
    let spans = collector.spans();
    println!("spans of update 1:\n{}", tree(&spans));
    let poll = one(&spans, "poll");
    let append = one(&spans, "store.append");
    let reply = one(&spans, "reply");
    let mut delivers: Vec<&GotSpan> = spans.iter().filter(|s| s.name == "deliver").collect();
    delivers.sort_by_key(|s| s.attr("attempt").map(str::to_string));
    assert_eq!(delivers.len(), 2, "two attempts:\n{}", tree(&spans));

    assert!(poll.is_root(), "poll is the root:\n{}", tree(&spans));
    assert_eq!(poll.attr("bot"), Some("main"));
    assert_eq!(poll.attr("updates"), Some("1"));
    assert_eq!(poll.service, "pollhook");
    assert_eq!(append.parent_id, poll.span_id, "store.append under poll");
    for (n, d) in delivers.iter().enumerate() {
        assert_eq!(d.parent_id, poll.span_id, "deliver under poll");
        assert_eq!(d.attr("attempt"), Some((n + 1).to_string().as_str()));
        assert_eq!(d.attr("bot"), Some("main"));
        assert_eq!(d.attr("forward"), Some("app"));
        assert_eq!(d.attr("update_id"), Some("1"));
    }
    assert_eq!(delivers[0].attr("status"), Some("failed"));
    assert_eq!(delivers[0].attr("http.response.status_code"), Some("502"));
    assert_eq!(delivers[0].status_code, 2, "an error status");
    assert_eq!(delivers[1].attr("status"), Some("delivered"));
    assert_eq!(delivers[1].attr("http.response.status_code"), Some("200"));
    assert_eq!(
        reply.parent_id, delivers[1].span_id,
        "reply under its delivery"
    );
    assert_eq!(reply.attr("method"), Some("sendMessage"));
    assert_eq!(reply.attr("ok"), Some("true"));
    assert!(
        spans.iter().all(|s| s.trace_id == poll.trace_id),
        "one trace:\n{}",
        tree(&spans)
    );

    // Each attempt named its own span to the backend.
    for (request, d) in got.iter().zip(&delivers) {
        assert_eq!(
            request.header("traceparent"),
            Some(traceparent(&d.trace_id, &d.span_id).as_str())
        );
    }
    // The failed attempt's log line names the trace.
    let logs = relay.logs();
    let failed = log_line(&logs, "delivery failed");
    assert!(
        failed.contains(&format!("trace_id={}", poll.trace_id)),
        "{failed}"
    );

    // No secret and no user's words in anything exported.
    let exported = collector.all_values().join("\n");
    let secret_part = TOKEN.split_once(':').unwrap().1;
    for secret in [
        secret_part,
        SECRET,
        SECRET.trim_start_matches("whsec_"),
        SECRET_TOKEN,
        USER_TEXT,
        REPLY_TEXT,
        setup.api.url_template().as_str(),
    ] {
        assert!(
            !exported.contains(secret),
            "{secret:?} was exported in:\n{exported}"
        );
    }
    assert_no_token(&exported);
    assert!(
        collector
            .requests()
            .iter()
            .all(|ct| ct == "application/x-protobuf"),
        "{:?}",
        collector.requests()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_standard_variables_turn_traces_on_and_nothing_is_sent_without_them() {
    let collector = Collector::start().await;
    let endpoint = collector.endpoint();

    // On through the environment alone, logging JSON; the first attempt
    // fails.
    let on = Setup::new().await;
    on.backend.set_script(|_, i| {
        if i == 0 {
            Reply::Status(503)
        } else {
            Reply::Ok
        }
    });
    let config = on.config("", "");
    let mut relay = Relay::spawn_args(
        &[
            "--log-format",
            "json",
            "run",
            "--config",
            config.to_str().unwrap(),
        ],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            ("OTEL_SERVICE_NAME", "relay-under-test"),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ],
        &on.path().join("pollhook.log"),
    );
    on.api.push_message(TOKEN, 1, 1, "hi");
    let got = on.backend.wait_accepted(1, LONG).await;
    let deliver = collector
        .wait_for("the delivered attempt's span", LONG, |spans| {
            spans
                .iter()
                .find(|s| s.name == "deliver" && s.attr("status") == Some("delivered"))
                .cloned()
        })
        .await;
    assert_eq!(deliver.service, "relay-under-test");
    assert_eq!(
        got[0].header("traceparent"),
        Some(traceparent(&deliver.trace_id, &deliver.span_id).as_str())
    );
    relay.stop().await;
    // The JSON log line of the failed attempt holds the trace's id.
    let logs = relay.logs();
    let failed: serde_json::Value = serde_json::from_str(log_line(&logs, "delivery failed"))
        .unwrap_or_else(|e| panic!("not a JSON line ({e}):\n{logs}"));
    assert_eq!(failed["trace_id"], deliver.trace_id.as_str(), "{failed}");
    let sent_when_on = collector.requests().len();
    assert!(sent_when_on > 0);

    // Off: nothing configured, nothing exported, no header.
    let off = Setup::new().await;
    let mut relay = Relay::spawn(&off.config("", ""), &[("OTEL_BSP_SCHEDULE_DELAY", "100")]);
    off.api.push_message(TOKEN, 1, 1, "hi");
    let got = off.backend.wait_accepted(1, LONG).await;
    relay.stop().await;
    assert_eq!(got[0].header("traceparent"), None);
    assert_eq!(got[0].header("tracestate"), None);
    assert_eq!(
        collector.requests().len(),
        sent_when_on,
        "a relay without [tracing] exported spans"
    );
    assert!(!relay.logs().contains("traces:"), "{}", relay.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_call_continues_the_callers_trace() {
    const KEY: &str = "1:trace-gw-k3y-0123456789abcdef";
    const CALLER_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const CALLER_SPAN: &str = "00f067aa0ba902b7";
    let setup = Setup::new().await;
    let collector = Collector::start().await;
    let top = tracing_table(&collector) + &gateway_table("");
    let config = setup.config_full(&top, &client_table("app", KEY, ""), "");
    let mut gw = Gateway::start(&setup, &config).await;
    let http = reqwest::Client::new();
    let answer = send(
        http.post(gw.url(KEY, "sendMessage"))
            .header("traceparent", traceparent(CALLER_TRACE, CALLER_SPAN))
            .json(&serde_json::json!({"chat_id": 7, "text": USER_TEXT})),
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    // A call without a traceparent starts a trace of its own.
    let plain = send(http.post(gw.url(KEY, "getMe"))).await;
    assert_eq!(plain.status, 200, "{}", plain.text());
    gw.relay.stop().await;

    let spans = collector.spans();
    println!("gateway spans:\n{}", tree(&spans));
    let calls: Vec<&GotSpan> = spans.iter().filter(|s| s.name == "gateway").collect();
    assert_eq!(calls.len(), 2, "{}", tree(&spans));
    let send_message = calls
        .iter()
        .find(|s| s.attr("method") == Some("sendMessage"))
        .expect("the sendMessage call's span");
    assert_eq!(send_message.trace_id, CALLER_TRACE);
    assert_eq!(send_message.parent_id, CALLER_SPAN);
    assert_eq!(send_message.attr("bot"), Some("main"));
    assert_eq!(send_message.attr("client"), Some("app"));
    assert_eq!(send_message.attr("http.response.status_code"), Some("200"));
    let get_me = calls
        .iter()
        .find(|s| s.attr("method") == Some("getMe"))
        .expect("the getMe call's span");
    assert!(get_me.is_root() && get_me.trace_id != CALLER_TRACE);
    let exported = collector.all_values().join("\n");
    for secret in [KEY, KEY.split_once(':').unwrap().1, USER_TEXT] {
        assert!(
            !exported.contains(secret),
            "{secret:?} was exported in:\n{exported}"
        );
    }
    assert_no_token(&exported);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs nats-server"]
async fn a_jetstream_message_names_its_deliver_span() {
    let setup = Setup::new().await;
    let collector = Collector::start().await;
    let nats = NatsServer::start().await;
    nats.create_stream("TR", &["tr.>"]).await;
    let toml = format!(
        "state_dir = \"state\"\nshutdown_timeout = \"5s\"\n{}\n[nats]\nservers = [\"{}\"]\n\n{}\n\
         [[bot.forward]]\nname = \"stream\"\nnats_subject = \"tr.{{bot}}.{{update_id}}\"\n",
        tracing_table(&collector),
        nats.url(),
        setup.main_bot(),
    );
    let config = write_config(setup.path(), &toml);
    let mut relay = setup.spawn(&config);
    setup.api.push_message(TOKEN, 1, 7, USER_TEXT);
    let got = nats.read_all("TR", 1, LONG).await;
    relay.stop().await;

    let spans = collector.spans();
    println!("spans of a JetStream delivery:\n{}", tree(&spans));
    let poll = one(&spans, "poll");
    let deliver = one(&spans, "deliver");
    assert_eq!(deliver.parent_id, poll.span_id);
    assert_eq!(deliver.attr("forward"), Some("stream"));
    assert_eq!(deliver.attr("status"), Some("delivered"));
    assert_eq!(
        got[0].header("traceparent"),
        Some(traceparent(&deliver.trace_id, &deliver.span_id).as_str())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_collector_is_reported_once_and_deliveries_go_on() {
    let setup = Setup::new().await;
    // Nothing listens there.
    let endpoint = format!("http://127.0.0.1:{}", free_port());
    let top = format!("[tracing]\notlp_endpoint = \"{endpoint}\"\n");
    let config = setup.config_full(&top, "", "");
    let mut relay = Relay::spawn(&config, &[("OTEL_BSP_SCHEDULE_DELAY", "50")]);
    for id in 1..=3 {
        setup.api.push_message(TOKEN, id, id, "hi");
        // Each in a batch (and an export) of its own.
        setup.backend.wait_accepted(id as usize, LONG).await;
        setup.api.wait_confirmed(TOKEN, id, LONG).await;
    }
    let warning = format!("traces: cannot export spans to {endpoint}/v1/traces");
    relay.wait_log(&warning, LONG).await;
    let started = std::time::Instant::now();
    relay.stop().await;
    let stopping = started.elapsed();
    let logs = relay.logs();
    println!("stop took {stopping:?}; {}", log_line(&logs, &warning));
    assert_eq!(logs.matches(&warning).count(), 1, "{logs}");
    assert!(
        stopping < std::time::Duration::from_secs(10),
        "{stopping:?}"
    );
    assert_no_token(&logs);
}

/// The SDK's sampler variables apply: with `OTEL_TRACES_SAMPLER=always_off`
/// nothing is exported, yet each delivery still names its (unsampled)
/// attempt in `traceparent` (flags `00`), so a backend's own sampler sees
/// the decision.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sampler_variables_decide_what_is_exported() {
    let setup = Setup::new().await;
    let collector = Collector::start().await;
    let config = setup.config_full(&tracing_table(&collector), "", "");
    let mut relay = Relay::spawn(
        &config,
        &[
            ("OTEL_TRACES_SAMPLER", "always_off"),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ],
    );
    for id in 1..=3 {
        setup.api.push_message(TOKEN, id, id, "hi");
    }
    let got = setup.backend.wait_accepted(3, LONG).await;
    relay.stop().await;
    for r in &got {
        let header = r.header("traceparent").expect("traceparent sent");
        let parts: Vec<&str> = header.split('-').collect();
        assert_eq!(parts.len(), 4, "{header}");
        assert_eq!((parts[0], parts[3]), ("00", "00"), "unsampled: {header}");
        assert!(
            parts[1].len() == 32 && parts[1] != "0".repeat(32),
            "{header}"
        );
    }
    assert!(
        collector.spans().is_empty(),
        "always_off exported:\n{}",
        tree(&collector.spans())
    );
}
