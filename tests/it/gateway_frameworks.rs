//! Real Bot API clients through pollhook's gateway (issue 17): aiogram,
//! python-telegram-bot and grammY, with only their API base URL changed and
//! a gateway key as their token, send a message and a photo (a multipart
//! upload) and download a file; the gateway's refusals surface as each
//! framework's usual exception. The fake platform records what arrived.
//!
//! The scripts are in `tests/it/frameworks/`; their pinned packages are
//! installed by `bash tests/it/frameworks/install.sh` (run by .ci/run, which
//! also exports FRAMEWORKS_PYTHON and FRAMEWORKS_NODE_MODULES), so
//! every test here is `#[ignore]`d: `--include-ignored` runs them, and a
//! missing install fails them naming that command.
//!
//! Each framework also runs against the fake platform directly, with the
//! real token: that proves the fake answers the way the frameworks parse, so
//! a failure through the gateway is the gateway's.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};

use bytes::Bytes;
use serde_json::Value;

use crate::rig::*;

/// The private chat the scripts write to.
const CHAT: i64 = 4242;
/// A file the bot already has (someone sent it earlier): the scripts
/// `getFile` it and download it.
const FILE_ID: &str = "BQACAgIAAxkBAAIBfmZ-file-for-frameworks";
const FILE_PATH: &str = "documents/file_7.bin";
/// A key no client has: the gateway answers 401 before anything is sent.
const UNKNOWN_KEY: &str = "9:fw-unknown-0123456789abcdef";
/// The refused `getUpdates` asks for this many updates; pollhook's own
/// polls ask for more, so a call with this limit at the fake would be the
/// framework's, let through.
const REFUSED_LIMIT: u64 = 7;

/// A framework, its script, and what it raises for the gateway's refusals.
struct Framework {
    name: &'static str,
    runtime: Runtime,
    script: &'static str,
    /// Its gateway key; aiogram refuses tokens not shaped `<digits>:<rest>`.
    key: &'static str,
    /// The exception for a refused method (403) and an unknown key (401).
    forbidden: &'static str,
    unauthorized: &'static str,
    /// Bot API calls its client makes besides the scripted ones (PTB's
    /// `initialize()` calls getMe).
    own_calls: &'static [&'static str],
}

const AIOGRAM: Framework = Framework {
    name: "aiogram",
    runtime: Runtime::Python,
    script: "aiogram_gateway.py",
    key: "1:fw-aiogram-0123456789abcdef",
    forbidden: "TelegramForbiddenError",
    unauthorized: "TelegramUnauthorizedError",
    own_calls: &[],
};

const PYTHON_TELEGRAM_BOT: Framework = Framework {
    name: "python-telegram-bot",
    runtime: Runtime::Python,
    script: "ptb_gateway.py",
    key: "2:fw-ptb-0123456789abcdef",
    forbidden: "Forbidden",
    unauthorized: "InvalidToken",
    own_calls: &["getMe"],
};

const GRAMMY: Framework = Framework {
    name: "grammY",
    runtime: Runtime::Node,
    script: "grammy_gateway.cjs",
    key: "3:fw-grammy-0123456789abcdef",
    // GrammyError for both; its error_code tells them apart.
    forbidden: "GrammyError",
    unauthorized: "GrammyError",
    own_calls: &[],
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs python3 with aiogram (bash tests/it/frameworks/install.sh, see .ci/run)"]
async fn aiogram_sends_uploads_and_downloads_through_the_gateway_with_only_its_api_server_changed()
{
    through_gateway(&AIOGRAM).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs python3 with python-telegram-bot (bash tests/it/frameworks/install.sh, see .ci/run)"]
async fn python_telegram_bot_sends_uploads_and_downloads_through_the_gateway_with_only_its_base_urls_changed(
) {
    through_gateway(&PYTHON_TELEGRAM_BOT).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs node with grammy (bash tests/it/frameworks/install.sh, see .ci/run)"]
async fn grammy_sends_uploads_and_downloads_through_the_gateway_with_only_its_api_root_changed() {
    through_gateway(&GRAMMY).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs python3 with aiogram (bash tests/it/frameworks/install.sh, see .ci/run)"]
async fn aiogram_parses_the_fake_platforms_answers() {
    direct(&AIOGRAM).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs python3 with python-telegram-bot (bash tests/it/frameworks/install.sh, see .ci/run)"]
async fn python_telegram_bot_parses_the_fake_platforms_answers() {
    direct(&PYTHON_TELEGRAM_BOT).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs node with grammy (bash tests/it/frameworks/install.sh, see .ci/run)"]
async fn grammy_parses_the_fake_platforms_answers() {
    direct(&GRAMMY).await
}

/// The framework through pollhook's gateway, with its key.
async fn through_gateway(fw: &Framework) {
    let setup = Setup::new().await;
    let files = Files::make(&setup);
    let gateway_table = "[gateway]\nlisten = \"127.0.0.1:0\"\n";
    // The default methods: the reply allowlist, getFile and getMe.
    let client = format!(
        "[[bot.client]]\nname = \"{}\"\nkey = \"{}\"\n",
        fw.name, fw.key
    );
    let mut relay = setup.spawn(&setup.config_full(gateway_table, &client, ""));
    let gateway = gateway_url(&mut relay).await;
    // pollhook's own calls (its getMe at start) come before its first poll.
    setup.api.wait_calls(TOKEN, 1, LONG).await;
    let own = setup.api.calls(TOKEN).len();

    let out = run(fw, &setup, &gateway, fw.key, &files).await;
    let version = step(&out, "version")["version"].as_str().unwrap_or("?");
    println!("{} {version} through pollhook's gateway:", fw.name);
    for line in &out {
        println!("  {line}");
    }

    assert_arrived(fw, &setup, &files, &out, own);

    // The refusals: the framework's own exception, and nothing at the fake.
    let refused = step(&out, "getUpdates");
    assert_eq!(refused["exception"], fw.forbidden, "{refused}");
    let description = refused["description"].as_str().unwrap_or_default();
    assert!(
        description.contains("getUpdates") || description.contains("getupdates"),
        "the 403 names the method: {refused}"
    );
    let unknown = step(&out, "unknownKey");
    assert_eq!(unknown["exception"], fw.unauthorized, "{unknown}");
    if fw.runtime == Runtime::Node {
        assert_eq!(
            (&refused["error_code"], &unknown["error_code"]),
            (&Value::from(403), &Value::from(401))
        );
    }
    let leaked: Vec<Call> = setup
        .api
        .get_updates_calls(TOKEN)
        .into_iter()
        .filter(|c| c.limit == Some(REFUSED_LIMIT) || c.timeout != Some(2))
        .collect();
    assert!(
        leaked.is_empty(),
        "a getUpdates other than pollhook's own polls reached the platform: {leaked:#?}"
    );
    // The fake saw the real token only: never the key, nor the unknown one.
    assert_eq!(setup.api.tokens_seen(), [TOKEN], "tokens the platform saw");
    assert_no_token(&relay.logs());
    for key in [fw.key, UNKNOWN_KEY] {
        let secret = key.split_once(':').unwrap().1;
        assert!(!relay.logs().contains(secret), "a key in pollhook's log");
    }
}

/// The framework against the fake platform itself, with the real token.
async fn direct(fw: &Framework) {
    let setup = Setup::new().await;
    let files = Files::make(&setup);
    let root = format!("http://{}", setup.api.addr);
    let out = run(fw, &setup, &root, TOKEN, &files).await;
    assert_arrived(fw, &setup, &files, &out, 0);
    let unknown = step(&out, "unknownKey");
    assert_eq!(unknown["exception"], fw.unauthorized, "{unknown}");
}

/// What the script sent arrived at the platform intact, and what it
/// downloaded is the file's bytes; the first `skip` calls are pollhook's.
fn assert_arrived(fw: &Framework, setup: &Setup, files: &Files, out: &[Value], skip: usize) {
    let api = &setup.api;
    let calls: Vec<Call> = api
        .calls(TOKEN)
        .into_iter()
        .skip(skip)
        .filter(|c| !c.is_get_updates())
        .collect();
    let methods: Vec<&str> = calls.iter().map(|c| c.method.as_str()).collect();
    let mut expected = fw.own_calls.to_vec();
    expected.extend(["sendMessage", "sendPhoto", "getFile"]);
    assert_eq!(methods, expected, "the calls that reached the platform");
    assert!(calls.iter().all(|c| c.status == 200), "{calls:#?}");

    let message = &calls[expected.len() - 3].params;
    assert_eq!(message["text"], files.text(fw), "{message}");
    assert_eq!(int(&message["chat_id"]), Some(CHAT), "{message}");
    let sent = step(out, "sendMessage");
    assert_eq!(
        (&sent["text"], &sent["chat_id"]),
        (&Value::from(files.text(fw)), &Value::from(CHAT))
    );

    let photo_call = &calls[expected.len() - 2];
    assert_eq!(int(&photo_call.params["chat_id"]), Some(CHAT));
    let uploaded = api
        .uploaded(TOKEN, photo_call, "photo")
        .unwrap_or_else(|| panic!("sendPhoto uploaded no file: {:#?}", photo_call.params));
    assert!(
        uploaded == files.photo,
        "the photo arrived changed: {} bytes, sent {}",
        uploaded.len(),
        files.photo.len()
    );
    let photo = step(out, "sendPhoto");
    assert_eq!(photo["file_size"], files.photo.len());
    assert_eq!(
        (&photo["width"], &photo["height"]),
        (&64.into(), &64.into())
    );

    assert_eq!(calls[expected.len() - 1].params["file_id"], FILE_ID);
    assert_eq!(api.downloads(TOKEN), [(FILE_PATH.to_string(), 200)]);
    let downloaded = std::fs::read(&files.download_to).expect("the script wrote the download");
    assert!(
        downloaded == files.download,
        "the download differs: {} bytes, the file has {}",
        downloaded.len(),
        files.download.len()
    );
}

// ---------------------------------------------------------------------------
// The files the scripts send and fetch

struct Files {
    photo: Bytes,
    photo_path: PathBuf,
    download: Bytes,
    download_to: PathBuf,
}

impl Files {
    /// Writes the photo to upload and registers the file to download.
    fn make(setup: &Setup) -> Files {
        let photo = Bytes::from(png(64, 64));
        let photo_path = setup.path().join("pixels.png");
        std::fs::write(&photo_path, &photo).expect("write the photo");
        let download = Bytes::from(noise(100_000));
        setup
            .api
            .add_file(TOKEN, FILE_ID, FILE_PATH, download.clone());
        Files {
            photo,
            photo_path,
            download,
            download_to: setup.path().join("downloaded.bin"),
        }
    }

    /// Not only ASCII: the text must pass byte for byte.
    fn text(&self, fw: &Framework) -> String {
        format!("Привет 👋 from {} through pollhook", fw.name)
    }
}

/// `n` bytes that take every value, CR LF and `--` among them (what a
/// multipart parser could trip on).
fn noise(n: usize) -> Vec<u8> {
    let mut x: u32 = 0x9e37_79b9;
    let mut out: Vec<u8> = b"\r\n--\r\n\r\n\0\xff".to_vec();
    while out.len() < n {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        out.push(x as u8);
    }
    out
}

/// A valid `width` x `height` RGB PNG of noise (stored, uncompressed), so
/// the bytes are a real image and binary throughout.
fn png(width: u32, height: u32) -> Vec<u8> {
    let row = 1 + 3 * width as usize;
    let pixels = noise(row * height as usize);
    let mut raw = Vec::with_capacity(pixels.len());
    for line in pixels.chunks(row) {
        raw.push(0); // filter: none
        raw.extend_from_slice(&line[1..]);
    }
    // zlib: one stored deflate block per 65535 bytes, then Adler-32.
    let mut zlib = vec![0x78, 0x01];
    let blocks: Vec<&[u8]> = raw.chunks(65535).collect();
    for (i, block) in blocks.iter().enumerate() {
        zlib.push(u8::from(i + 1 == blocks.len()));
        let len = block.len() as u16;
        zlib.extend_from_slice(&len.to_le_bytes());
        zlib.extend_from_slice(&(!len).to_le_bytes());
        zlib.extend_from_slice(block);
    }
    let (mut a, mut b) = (1u32, 0u32);
    for &byte in &raw {
        a = (a + u32::from(byte)) % 65521;
        b = (b + a) % 65521;
    }
    zlib.extend_from_slice(&((b << 16) | a).to_be_bytes());

    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&width.to_be_bytes());
    ihdr.extend_from_slice(&height.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]); // 8-bit RGB
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    for (kind, data) in [(b"IHDR", ihdr), (b"IDAT", zlib), (b"IEND", Vec::new())] {
        png.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let start = png.len();
        png.extend_from_slice(kind);
        png.extend_from_slice(&data);
        let crc = crc32(&png[start..]);
        png.extend_from_slice(&crc.to_be_bytes());
    }
    png
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in bytes {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

// ---------------------------------------------------------------------------
// Running a script

#[derive(Clone, Copy, PartialEq, Eq)]
enum Runtime {
    Python,
    Node,
}

fn frameworks_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/frameworks")
}

/// How to fix a missing install.
const INSTALL: &str =
    "run `bash tests/it/frameworks/install.sh` (or .ci/run, which runs it and sets FRAMEWORKS_PYTHON and FRAMEWORKS_NODE_MODULES)";

impl Runtime {
    /// The program, and the environment it needs to find its packages.
    fn command(self) -> Command {
        let from_env = |name: &str, fallback: &str| -> PathBuf {
            std::env::var_os(name)
                .map(PathBuf::from)
                .unwrap_or_else(|| frameworks_dir().join(fallback))
        };
        match self {
            Runtime::Python => {
                let python = from_env("FRAMEWORKS_PYTHON", ".venv/bin/python");
                assert!(
                    python.exists(),
                    "the frameworks' Python ({}) is missing: {INSTALL}",
                    python.display()
                );
                let mut cmd = Command::new(python);
                cmd.env("PYTHONUNBUFFERED", "1")
                    .env("PYTHONDONTWRITEBYTECODE", "1");
                cmd
            }
            Runtime::Node => {
                let modules = from_env("FRAMEWORKS_NODE_MODULES", "node_modules");
                assert!(
                    modules.join("grammy").is_dir(),
                    "grammy is not installed in {}: {INSTALL}",
                    modules.display()
                );
                let mut cmd = Command::new("node");
                cmd.env("NODE_PATH", modules);
                cmd
            }
        }
    }
}

/// Runs `fw`'s script against `root` with `key`; returns its JSON lines,
/// or fails the test with its output if it fails or takes over `LONG`.
async fn run(fw: &Framework, setup: &Setup, root: &str, key: &str, files: &Files) -> Vec<Value> {
    let stdout_path = setup.path().join(format!("{}.out", fw.script));
    let stderr_path = setup.path().join(format!("{}.err", fw.script));
    let mut cmd = fw.runtime.command();
    cmd.arg(frameworks_dir().join(fw.script))
        .current_dir(setup.path())
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&stdout_path).expect("create stdout file"))
        .stderr(std::fs::File::create(&stderr_path).expect("create stderr file"))
        .env("GATEWAY", root)
        .env("KEY", key)
        .env("UNKNOWN_KEY", UNKNOWN_KEY)
        .env("CHAT_ID", CHAT.to_string())
        .env("TEXT", files.text(fw))
        .env("PHOTO", &files.photo_path)
        .env("FILE_ID", FILE_ID)
        .env("DOWNLOAD_TO", &files.download_to)
        .env("REFUSED_LIMIT", REFUSED_LIMIT.to_string());
    let child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}: {INSTALL}", fw.script));
    let output = || {
        format!(
            "stdout:\n{}\nstderr:\n{}",
            std::fs::read_to_string(&stdout_path).unwrap_or_default(),
            std::fs::read_to_string(&stderr_path).unwrap_or_default()
        )
    };
    let mut child = Reaped(child);
    let status: ExitStatus = wait_until(&format!("{} to finish", fw.script), LONG, || {
        child.0.try_wait().expect("try_wait").ok_or_else(output)
    })
    .await;
    assert!(
        status.success(),
        "{} failed ({status}):\n{}",
        fw.script,
        output()
    );
    std::fs::read_to_string(&stdout_path)
        .expect("read the script's output")
        .lines()
        .map(|l| {
            serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("not a JSON line ({e}): {l:?}\n{}", output()))
        })
        .collect()
}

/// Kills the script if the test gives up on it.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// The line the script printed for `name`.
#[track_caller]
fn step<'a>(out: &'a [Value], name: &str) -> &'a Value {
    out.iter()
        .find(|l| l["step"] == name)
        .unwrap_or_else(|| panic!("the script printed no {name:?} step: {out:#?}"))
}

/// The gateway's address, from pollhook's `gateway on http://…` line.
async fn gateway_url(relay: &mut Relay) -> String {
    relay.wait_log("gateway on http://", LONG).await;
    let logs = relay.logs();
    let line = log_line(&logs, "gateway on http://");
    let start = line.find("http://").expect("a URL in the line");
    line[start..]
        .split(|c: char| c.is_whitespace() || c == '"' || c == ',')
        .next()
        .expect("the URL")
        .trim_end_matches('/')
        .to_string()
}

fn int(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}
