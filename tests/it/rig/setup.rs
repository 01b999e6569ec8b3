//! One test's world: a fake Bot API, a recording backend, a temporary
//! directory, and the config that joins them.

use std::path::{Path, PathBuf};

use super::{write_config, Backend, FakeApi, Flavor, Relay};

/// A token shaped like a real one; every log is checked for it.
pub const TOKEN: &str = "123456789:AAE-secretTOKENpart_xyz";
pub const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
pub const SECRET_TOKEN: &str = "s3cret-header_token";

pub struct Setup {
    pub flavor: Flavor,
    pub api: std::sync::Arc<FakeApi>,
    pub backend: Backend,
    pub dir: tempfile::TempDir,
}

impl Setup {
    /// The quick start's command line against this setup (no config
    /// file), its state in `state`; the token goes in `BOT_TOKEN`.
    pub fn quick_start_args(&self, state: &Path) -> Vec<String> {
        [
            "run",
            "--forward",
            &self.backend.url(),
            "--api-url",
            &self.api.url_template(),
            "--state-dir",
            state.to_str().unwrap(),
        ]
        .map(String::from)
        .to_vec()
    }

    pub async fn new() -> Setup {
        Setup::with(Flavor::Telegram).await
    }

    pub async fn with(flavor: Flavor) -> Setup {
        let api = std::sync::Arc::new(FakeApi::start(flavor).await);
        api.add_bot(TOKEN, 123456789, "test_bot");
        Setup {
            flavor,
            api,
            backend: Backend::start().await,
            dir: tempfile::tempdir().unwrap(),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// One bot ("main") forwarding to the backend as forward "app";
    /// `bot_extra` and `fwd_extra` are TOML lines added to each table.
    pub fn config(&self, bot_extra: &str, fwd_extra: &str) -> PathBuf {
        self.config_full("", bot_extra, fwd_extra)
    }

    /// Like `config`, with `top_extra` (e.g. an `[admin]` table) first.
    pub fn config_full(&self, top_extra: &str, bot_extra: &str, fwd_extra: &str) -> PathBuf {
        let toml = format!(
            r#"
state_dir = "state"
shutdown_timeout = "5s"
{top_extra}

[[bot]]
name = "main"
flavor = "{flavor}"
api_url = "{api}"
token = "{TOKEN}"
{poll_timeout}
{bot_extra}

[[bot.forward]]
name = "app"
url = "{url}"
signing_secret = "{SECRET}"
secret_token = "{SECRET_TOKEN}"
{fwd_extra}
"#,
            api = self.api.url_template(),
            flavor = flavor_name(self.flavor),
            poll_timeout = if bot_extra.contains("poll_timeout") {
                ""
            } else {
                "poll_timeout = \"2s\""
            },
            url = self.backend.url(),
        );
        write_config(self.path(), &toml)
    }

    /// The usual config with an admin API on `port` (for `/status`,
    /// `/metrics`, `pollhook status`).
    pub fn admin_config(&self, port: u16) -> PathBuf {
        self.config_full(&admin_table(port, ""), "", "")
    }

    /// The `[[bot]]` table of the usual bot "main", for a test that writes
    /// its own config around it (its own forwards, more bots).
    pub fn main_bot(&self) -> String {
        format!(
            "[[bot]]\nname = \"main\"\napi_url = \"{}\"\ntoken = \"{TOKEN}\"\npoll_timeout = \"2s\"\n",
            self.api.url_template()
        )
    }

    pub fn spawn(&self, config: &Path) -> Relay {
        Relay::spawn(config, &[])
    }

    pub fn state_dir(&self) -> PathBuf {
        self.path().join("state")
    }
}

/// An `[admin]` table listening on 127.0.0.1:`port`, with `extra` lines.
pub fn admin_table(port: u16, extra: &str) -> String {
    format!("[admin]\nlisten = \"127.0.0.1:{port}\"\n{extra}")
}

/// Replaces `from` with `to` in the config file at `path`; fails the test if
/// `from` is not there (an edit that silently did nothing tests nothing).
pub fn edit_config(path: &Path, from: &str, to: &str) {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("rig: read {}: {e}", path.display()));
    assert!(
        text.contains(from),
        "rig: {from:?} is not in {}:\n{text}",
        path.display()
    );
    std::fs::write(path, text.replace(from, to))
        .unwrap_or_else(|e| panic!("rig: write {}: {e}", path.display()));
}

pub fn flavor_name(f: Flavor) -> &'static str {
    match f {
        Flavor::Telegram => "telegram",
        Flavor::MpChat => "mpchat",
        Flavor::WwChat => "wwchat",
    }
}
