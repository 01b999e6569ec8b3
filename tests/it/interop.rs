//! Real webhook frameworks and signature verifiers behind pollhook: the
//! examples in `examples/` run as child processes (their own venv's Python,
//! Node with their own node_modules), pollhook forwards a `/start` message
//! from the fake Bot API to them, and the fake records what they answered.
//!
//! Every test here needs the examples' packages (`bash examples/install.sh`),
//! so each is `#[ignore]`d: `cargo test -- --include-ignored` runs them, and
//! then a missing install fails the test, naming the command that fixes it.

use std::convert::Infallible;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};

use crate::rig::*;

/// Waits for a framework to start or an update to make its round trip.
const WITHIN: Duration = Duration::from_secs(30);
/// The chat (and user) sending `/start`.
const ADA: i64 = 4242;
/// A second key for rotations, and one that pollhook never uses.
const NEW_SECRET: &str = "whsec_AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
const STRANGER_SECRET: &str = "whsec_c3RyYW5nZXIgc3RyYW5nZXIgc3RyYW5nZXIh";
/// pollhook's log line for the first update answered 2xx on its first try.
const DELIVERED: &str = "update_id=1 status=200 attempt=1";

// ---------------------------------------------------------------------------
// The frameworks, and what each scenario asks of them

/// A webhook framework from `examples/`, and where it differs from the
/// others.
struct Example {
    /// Its folder under `examples/`, and the script run there.
    dir: &'static str,
    runtime: Runtime,
    script: &'static str,
    /// The name in its greeting ("Hello, Ada! This is … behind pollhook.").
    greets_as: &'static str,
    /// Takes `BOT_USERNAME` so it need not call getMe; left out where its
    /// own getMe call is part of what is checked.
    takes_username: bool,
    /// Every Bot API call its own client makes to answer `/start`, in
    /// order; None: a sendMessage among whatever else it calls.
    own_calls: Option<&'static [&'static str]>,
    /// The status its server answers a wrong secret token with.
    wrong_secret_status: u16,
}

const AIOGRAM: Example = Example {
    dir: "aiogram",
    runtime: Runtime::Python,
    script: "bot.py",
    greets_as: "aiogram",
    takes_username: false,
    own_calls: None,
    // SimpleRequestHandler.
    wrong_secret_status: 401,
};

const GRAMMY: Example = Example {
    dir: "grammy",
    runtime: Runtime::Node,
    script: "bot.mjs",
    greets_as: "grammY",
    takes_username: true,
    // Without BOT_USERNAME, grammY calls getMe on the first update.
    own_calls: Some(&["getMe", "sendMessage"]),
    // webhookCallback: "secret token is wrong".
    wrong_secret_status: 401,
};

const PYTHON_TELEGRAM_BOT: Example = Example {
    dir: "python-telegram-bot",
    runtime: Runtime::Python,
    script: "bot.py",
    greets_as: "python-telegram-bot",
    takes_username: false,
    // getMe from Application.initialize(), then the answer; never
    // setWebhook, which would stop pollhook's polling with 409s.
    own_calls: Some(&["getMe", "sendMessage"]),
    wrong_secret_status: 403,
};

#[derive(Clone, Copy, PartialEq, Eq)]
enum Scenario {
    /// pollhook delivers `/start`; the framework answers it through its own
    /// Bot API client (a pass-through front of the fake API).
    OwnClient,
    /// The framework answers inside its webhook reply and pollhook makes
    /// the call; the framework's own Bot API root goes nowhere.
    WebhookReply,
    /// pollhook sends the wrong secret token: the framework refuses the
    /// update, pollhook keeps it and tries again, nothing is answered.
    WrongSecret,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the examples' packages (bash examples/install.sh); run with --include-ignored (see README)"]
async fn aiogram_answers_start_through_its_own_bot_api_client() {
    // handle_in_background=True: aiogram answers pollhook at once and makes
    // the call itself.
    run(&AIOGRAM, Scenario::OwnClient).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the examples' packages (bash examples/install.sh); run with --include-ignored (see README)"]
async fn aiogram_answers_start_in_a_multipart_webhook_reply_that_pollhook_executes() {
    run(&AIOGRAM, Scenario::WebhookReply).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the examples' packages (bash examples/install.sh); run with --include-ignored (see README)"]
async fn aiogram_refuses_a_wrong_secret_token_and_pollhook_keeps_the_update() {
    run(&AIOGRAM, Scenario::WrongSecret).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the examples' packages (bash examples/install.sh); run with --include-ignored (see README)"]
async fn grammy_answers_start_through_its_own_bot_api_client() {
    run(&GRAMMY, Scenario::OwnClient).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the examples' packages (bash examples/install.sh); run with --include-ignored (see README)"]
async fn grammy_answers_start_in_a_json_webhook_reply_that_pollhook_executes() {
    run(&GRAMMY, Scenario::WebhookReply).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the examples' packages (bash examples/install.sh); run with --include-ignored (see README)"]
async fn grammy_refuses_a_wrong_secret_token_and_pollhook_keeps_the_update() {
    run(&GRAMMY, Scenario::WrongSecret).await
}

/// python-telegram-bot has no webhook replies: its example feeds
/// `application.update_queue` from a small server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the examples' packages (bash examples/install.sh); run with --include-ignored (see README)"]
async fn python_telegram_bot_answers_start_through_its_update_queue() {
    run(&PYTHON_TELEGRAM_BOT, Scenario::OwnClient).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the examples' packages (bash examples/install.sh); run with --include-ignored (see README)"]
async fn python_telegram_bot_server_refuses_a_wrong_secret_token() {
    run(&PYTHON_TELEGRAM_BOT, Scenario::WrongSecret).await
}

/// Runs `example` behind pollhook, pushes `/start`, and checks what
/// `scenario` expects.
async fn run(example: &Example, scenario: Scenario) {
    let program = example.runtime.program(example.dir);
    let setup = Setup::new().await;
    let front = ApiFront::start(setup.api.clone()).await;
    let nowhere = format!("http://127.0.0.1:{}", free_port());
    let front_root = front.root();
    let mut env = match scenario {
        Scenario::WebhookReply => vec![("BOT_API", nowhere.as_str()), ("WEBHOOK_REPLY", "1")],
        _ => vec![("BOT_API", front_root.as_str())],
    };
    if example.takes_username && scenario != Scenario::OwnClient {
        env.push(("BOT_USERNAME", "test_bot"));
    }
    let mut bot = Framework::start(&setup, example.dir, &program, example.script, &env).await;
    let secret_token = match scenario {
        Scenario::WrongSecret => "not-the-secret-token",
        _ => SECRET_TOKEN,
    };
    let mut relay = relay_to(&setup, &bot.url(), secret_token);

    push_start(&setup.api, 1);
    if scenario == Scenario::WrongSecret {
        let refused = format!("delivery failed: HTTP {}", example.wrong_secret_status);
        relay.wait_log_count(&refused, 2, WITHIN).await;
        assert_no_send_message(&setup.api, &front);
        return;
    }
    let sent = setup
        .api
        .wait_method_calls(TOKEN, "sendMessage", 1, WITHIN)
        .await;
    assert_greeting(&sent[0].params, example.greets_as);
    if scenario == Scenario::OwnClient {
        relay.wait_log(DELIVERED, WITHIN).await;
        let calls = front.methods();
        match example.own_calls {
            Some(exactly) => assert_eq!(calls, exactly),
            None => assert!(calls.iter().any(|m| m == "sendMessage"), "{calls:?}"),
        }
    } else {
        relay.wait_log("webhook reply executed", WITHIN).await;
    }
    assert_eq!(setup.api.webhook(TOKEN), None, "a framework set a webhook");
    bot.assert_no_errors();
    assert_no_token(&relay.logs());
}

// ---------------------------------------------------------------------------
// Standard Webhooks verifiers

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the examples' packages (bash examples/install.sh); run with --include-ignored (see README)"]
async fn python_standardwebhooks_verifies_pollhook_signatures() {
    let python = Runtime::Python.program("verify");
    verifiers_accept_pollhook_and_reject_forgeries(&python, "verify.py").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the examples' packages (bash examples/install.sh); run with --include-ignored (see README)"]
async fn node_standardwebhooks_verifies_pollhook_signatures() {
    let node = Runtime::Node.program("verify");
    verifiers_accept_pollhook_and_reject_forgeries(&node, "verify.mjs").await;
}

/// Three verifiers, each knowing one secret: pollhook's old one, its new
/// one, and a stranger's. pollhook signs with both of its secrets (a key
/// rotation), so either of the first two accepts and the third refuses. A
/// request captured on the way is then replayed to the new-key verifier as
/// it was, with its body changed, re-signed ten minutes old, and unsigned.
async fn verifiers_accept_pollhook_and_reject_forgeries(program: &Path, script: &str) {
    let setup = Setup::new().await;
    let verifier = |secret| [("SIGNING_SECRET", secret)];
    let mut knows_old =
        Framework::start(&setup, "verify", program, script, &verifier(SECRET)).await;
    let mut knows_new =
        Framework::start(&setup, "verify", program, script, &verifier(NEW_SECRET)).await;
    let mut stranger = Framework::start(
        &setup,
        "verify",
        program,
        script,
        &verifier(STRANGER_SECRET),
    )
    .await;

    let both = format!(r#"signing_secret = ["{SECRET}", "{NEW_SECRET}"]"#);
    let forwards = [
        forward("old-key", &knows_old.url(), &both),
        forward("new-key", &knows_new.url(), &both),
        forward(
            "new-key-only",
            &knows_new.url(),
            &format!(r#"signing_secret = "{NEW_SECRET}""#),
        ),
        forward("stranger", &stranger.url(), &both),
        forward("capture", &setup.backend.url(), &both),
    ];
    let mut relay = Relay::spawn(&relay_config(&setup, &forwards.concat()), &[]);
    push_start(&setup.api, 1);

    // Through pollhook: each verifier's own log says what it decided.
    knows_old.wait_log_count("verified msg_", 1).await;
    knows_new.wait_log_count("verified msg_", 2).await;
    stranger.wait_log_count("rejected msg_", 2).await;
    assert!(
        knows_old.logs().contains(" update 1\n"),
        "{}",
        knows_old.logs()
    );
    assert!(
        stranger.logs().contains("No matching signature found"),
        "{}",
        stranger.logs()
    );
    assert!(!stranger.logs().contains("verified"), "{}", stranger.logs());
    relay
        .wait_log_count("delivery failed: HTTP 401", 2, WITHIN)
        .await;

    // Directly: replays of the request pollhook sent to "capture".
    let captured = setup.backend.wait_accepted(1, WITHIN).await.remove(0);
    let signatures = captured.header("webhook-signature").unwrap_or_default();
    assert_eq!(signatures.split(' ').count(), 2, "{signatures}");
    let url = knows_new.url();
    let post = |body: Vec<u8>, headers: Vec<(&'static str, String)>| {
        let url = url.clone();
        async move {
            let mut req = reqwest::Client::new()
                .post(&url)
                .header("content-type", "application/json")
                .body(body);
            for (name, value) in headers {
                req = req.header(name, value);
            }
            let resp = req.send().await.expect("verifier answers");
            (
                resp.status().as_u16(),
                resp.text().await.unwrap_or_default(),
            )
        }
    };
    let signed = |r: &Received| -> Vec<(&'static str, String)> {
        ["webhook-id", "webhook-timestamp", "webhook-signature"]
            .into_iter()
            .map(|h| (h, r.header(h).expect("pollhook signs").to_string()))
            .collect()
    };

    // As pollhook sent it: accepted (a replay within the 5-minute tolerance
    // passes; deduplicating by webhook-id is the receiver's job).
    let (status, _) = post(captured.body.to_vec(), signed(&captured)).await;
    assert_eq!(status, 204, "the captured request verifies");

    // One byte of the body changed.
    let tampered = captured.body_str().replace("/start", "/stArt").into_bytes();
    assert_ne!(tampered, captured.body.to_vec());
    let (status, text) = post(tampered, signed(&captured)).await;
    assert_eq!(
        (status, text.as_str()),
        (401, "rejected: No matching signature found")
    );

    // Correctly signed with the verifier's own key, but ten minutes old.
    let old = unix_now() - 600;
    let id = captured.header("webhook-id").unwrap().to_string();
    let signature = standardwebhooks::Webhook::new(NEW_SECRET)
        .unwrap()
        .sign(&id, old, &captured.body)
        .unwrap();
    let headers = vec![
        ("webhook-id", id),
        ("webhook-timestamp", old.to_string()),
        ("webhook-signature", signature),
    ];
    let (status, text) = post(captured.body.to_vec(), headers).await;
    assert_eq!(
        (status, text.as_str()),
        (401, "rejected: Message timestamp too old")
    );

    // No signature headers at all.
    let (status, text) = post(captured.body.to_vec(), vec![]).await;
    assert_eq!(
        (status, text.as_str()),
        (401, "rejected: Missing required headers")
    );
}

// ---------------------------------------------------------------------------
// Set-up

/// How an example runs.
#[derive(Clone, Copy)]
enum Runtime {
    /// The venv's Python in `examples/<dir>/.venv`.
    Python,
    /// `node`, with the example's `node_modules`.
    Node,
}

impl Runtime {
    /// The program that runs the example in `examples/<dir>`; fails the
    /// test, naming the fix, where it is not installed.
    fn program(self, dir: &str) -> PathBuf {
        let missing = |why: String| -> ! {
            panic!(
                "examples/{dir} is not installed ({why}): run `bash examples/install.sh` (see README)"
            )
        };
        match self {
            Runtime::Python => {
                let python = example_dir(dir).join(".venv/bin/python");
                if !python.exists() {
                    missing(format!("{} is missing", python.display()));
                }
                python
            }
            Runtime::Node => {
                let node_runs = Command::new("node")
                    .arg("--version")
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success());
                if !node_runs {
                    missing("node is not on PATH".into());
                }
                let modules = example_dir(dir).join("node_modules");
                if !modules.is_dir() {
                    missing(format!("{} is missing", modules.display()));
                }
                PathBuf::from("node")
            }
        }
    }
}

fn example_dir(example: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples")
        .join(example)
}

/// pollhook polling the fake API for TOKEN with the given `[[bot.forward]]`
/// tables.
fn relay_config(setup: &Setup, forwards: &str) -> PathBuf {
    let toml = format!(
        r#"
state_dir = "state"
shutdown_timeout = "2s"

[[bot]]
name = "main"
api_url = "{api}"
token = "{TOKEN}"
poll_timeout = "2s"
{forwards}"#,
        api = setup.api.url_template(),
    );
    write_config(setup.path(), &toml)
}

fn forward(name: &str, url: &str, extra: &str) -> String {
    format!("\n[[bot.forward]]\nname = \"{name}\"\nurl = \"{url}\"\n{extra}\n")
}

/// pollhook forwarding to a framework with `secret_token` set and signing on.
fn relay_to(setup: &Setup, url: &str, secret_token: &str) -> Relay {
    let extra = format!("secret_token = \"{secret_token}\"\nsigning_secret = \"{SECRET}\"");
    Relay::spawn(&relay_config(setup, &forward("bot", url, &extra)), &[])
}

/// Queues `/start` from Ada in her private chat, shaped like a real
/// Telegram update (`from`, `chat`, `date`, a `bot_command` entity).
fn push_start(api: &FakeApi, update_id: i64) {
    let update = json!({
        "update_id": update_id,
        "message": {
            "message_id": update_id,
            "from": {"id": ADA, "is_bot": false, "first_name": "Ada", "last_name": "Lovelace",
                     "username": "ada", "language_code": "en"},
            "chat": {"id": ADA, "first_name": "Ada", "last_name": "Lovelace", "username": "ada",
                     "type": "private"},
            "date": unix_now(),
            "text": "/start",
            "entities": [{"offset": 0, "length": 6, "type": "bot_command"}],
        }
    });
    api.push_raw(TOKEN, update_id, &update.to_string());
}

/// The call's chat is Ada's and its text the framework's greeting.
fn assert_greeting(params: &Value, framework: &str) {
    assert_eq!(int(&params["chat_id"]), Some(ADA), "{params}");
    assert_eq!(
        params["text"],
        format!("Hello, Ada! This is {framework} behind pollhook."),
        "{params}"
    );
}

fn assert_no_send_message(api: &FakeApi, front: &ApiFront) {
    let methods: Vec<String> = api.calls(TOKEN).into_iter().map(|c| c.method).collect();
    assert!(!methods.iter().any(|m| m == "sendMessage"), "{methods:?}");
    assert!(
        !front.methods().iter().any(|m| m == "sendMessage"),
        "{:?}",
        front.methods()
    );
}

fn int(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs() as i64
}

// ---------------------------------------------------------------------------
// A framework's process

/// An example running as a child process on a free port, its stdout and
/// stderr in a log file; killed when dropped.
struct Framework {
    child: Child,
    port: u16,
    log: PathBuf,
}

/// Settings the examples read; cleared first so a developer's own
/// environment cannot change a test.
const EXAMPLE_ENV: &[&str] = &[
    "BOT_TOKEN",
    "BOT_API",
    "BOT_USERNAME",
    "WEBHOOK_SECRET_TOKEN",
    "WEBHOOK_REPLY",
    "WEBHOOK_PATH",
    "SIGNING_SECRET",
    "HOST",
    "PORT",
];

impl Framework {
    /// Runs `program examples/<example>/<script>` with the test token, the
    /// secret token and `env`, and waits until its port accepts connections.
    async fn start(
        setup: &Setup,
        example: &str,
        program: &Path,
        script: &str,
        env: &[(&str, &str)],
    ) -> Framework {
        let port = free_port();
        let log = setup.path().join(format!("{example}-{port}.log"));
        let out = std::fs::File::create(&log).expect("create the example's log");
        let err = out.try_clone().expect("clone the log handle");
        let mut cmd = Command::new(program);
        cmd.arg(example_dir(example).join(script))
            .current_dir(example_dir(example))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        for key in EXAMPLE_ENV {
            cmd.env_remove(key);
        }
        cmd.env("PYTHONUNBUFFERED", "1")
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .env("BOT_TOKEN", TOKEN)
            .env("WEBHOOK_SECRET_TOKEN", SECRET_TOKEN)
            .env("HOST", "127.0.0.1")
            .env("PORT", port.to_string())
            .env("WEBHOOK_PATH", "/webhook");
        for (key, value) in env {
            cmd.env(key, value);
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {} {script}: {e}", program.display()));
        let mut framework = Framework { child, port, log };
        framework.wait_ready().await;
        framework
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/webhook", self.port)
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Panics with the log if the process has exited.
    fn assert_running(&mut self) {
        if let Some(status) = self.child.try_wait().expect("try_wait") {
            panic!("the example exited ({status}):\n{}", self.logs());
        }
    }

    async fn wait_ready(&mut self) {
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        wait_until(&format!("the example to listen on {addr}"), WITHIN, || {
            self.assert_running();
            TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
        })
        .await;
    }

    /// Waits until `needle` occurs at least `n` times in the log.
    async fn wait_log_count(&mut self, needle: &str, n: usize) {
        let what = format!("{needle:?} {n} time(s) in the example's log");
        wait_until(&what, WITHIN, || {
            self.assert_running();
            let logs = self.logs();
            if logs.matches(needle).count() >= n {
                Ok(())
            } else {
                Err(logs)
            }
        })
        .await;
    }

    /// The framework logged no exception (a Python traceback, a Node error).
    fn assert_no_errors(&mut self) {
        self.assert_running();
        let logs = self.logs();
        for marker in ["Traceback", "Error:", "ERROR"] {
            assert!(
                !logs.contains(marker),
                "the example logged {marker:?}:\n{logs}"
            );
        }
    }
}

impl Drop for Framework {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------
// The fake Bot API as a framework's own client sees it

/// Passes every request on to the fake Bot API (which records it) and lists
/// the methods called, so a test can tell a framework's own calls from
/// pollhook's. A `sendMessage` the fake answers with `"result": true` gets a
/// Message object instead, as Telegram answers: typed clients (aiogram's
/// pydantic models, python-telegram-bot's `Message.de_json`) reject `true`.
struct ApiFront {
    addr: SocketAddr,
    methods: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl ApiFront {
    async fn start(api: Arc<FakeApi>) -> ApiFront {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let methods = Arc::new(Mutex::new(Vec::new()));
        let seen = methods.clone();
        let client = reqwest::Client::new();
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                let (api, seen, client) = (api.clone(), seen.clone(), client.clone());
                let service =
                    service_fn(move |req| pass_on(api.clone(), seen.clone(), client.clone(), req));
                conns.spawn(http1::Builder::new().serve_connection(TokioIo::new(stream), service));
            }
        });
        ApiFront {
            addr,
            methods,
            task,
        }
    }

    /// What a framework takes as its Bot API root (`{root}/bot{token}/{method}`).
    fn root(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn methods(&self) -> Vec<String> {
        self.methods.lock().unwrap().clone()
    }
}

impl Drop for ApiFront {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn pass_on(
    api: Arc<FakeApi>,
    seen: Arc<Mutex<Vec<String>>>,
    client: reqwest::Client,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let path = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    let method = parts
        .uri
        .path()
        .rsplit('/')
        .next()
        .unwrap_or("")
        .to_string();
    seen.lock().unwrap().push(method.clone());

    let mut upstream = client
        .request(parts.method.clone(), format!("http://{}{path}", api.addr))
        .body(body);
    if let Some(ct) = parts.headers.get(hyper::header::CONTENT_TYPE) {
        upstream = upstream.header(hyper::header::CONTENT_TYPE, ct.clone());
    }
    let (status, mut answer) = match upstream.send().await {
        Ok(resp) => (resp.status(), resp.bytes().await.unwrap_or_default()),
        Err(e) => (
            reqwest::StatusCode::BAD_GATEWAY,
            Bytes::from(format!("front: {}", e.without_url())),
        ),
    };
    if status.is_success() && method.eq_ignore_ascii_case("sendMessage") {
        answer = Bytes::from(json!({"ok": true, "result": sent_message(&api)}).to_string());
    }
    Ok(Response::builder()
        .status(status.as_u16())
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(Full::new(answer))
        .expect("valid response"))
}

/// The Message Telegram would return for the last sendMessage recorded.
fn sent_message(api: &FakeApi) -> Value {
    let calls = api.calls(TOKEN);
    let call = calls
        .iter()
        .rev()
        .find(|c| c.method.eq_ignore_ascii_case("sendMessage"))
        .expect("the fake recorded the sendMessage it answered");
    let chat_id = int(&call.params["chat_id"]).unwrap_or(0);
    json!({
        "message_id": calls.len(),
        "from": {"id": 123456789, "is_bot": true, "first_name": "test_bot", "username": "test_bot"},
        "chat": {"id": chat_id, "type": "private"},
        "date": unix_now(),
        "text": call.params["text"],
    })
}
