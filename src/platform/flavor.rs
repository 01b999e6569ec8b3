//! The platforms pollhook speaks to, and what differs between them.
//!
//! Every Telegram-style platform shares the Bot API's shape; they differ in
//! where the methods live, how long a long poll may last, which header a real
//! webhook would carry the secret token in, and what a successful
//! `getUpdates` means. Everything platform-specific lives here so the rest of
//! the code asks a `Flavor` instead of matching on names.

use std::fmt;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    Telegram,
    MpChat,
    WwChat,
}

impl Flavor {
    pub const NAMES: &'static [&'static str] = &["telegram", "mpchat", "wwchat"];

    pub fn parse(name: &str) -> Option<Flavor> {
        match name.to_ascii_lowercase().as_str() {
            "telegram" => Some(Flavor::Telegram),
            "mpchat" => Some(Flavor::MpChat),
            "wwchat" => Some(Flavor::WwChat),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Flavor::Telegram => "telegram",
            Flavor::MpChat => "mpchat",
            Flavor::WwChat => "wwchat",
        }
    }

    /// The public API's method URL, as a template holding `{token}` and `{method}`.
    pub fn default_api_url(self) -> &'static str {
        match self {
            Flavor::Telegram => "https://api.telegram.org/bot{token}/{method}",
            Flavor::MpChat => "https://call.mp.net/bot/bot{token}/{method}",
            Flavor::WwChat => "https://api.wwchat.org/bot/v1/{token}/{method}",
        }
    }

    /// The longest long poll the platform accepts; longer ones are clamped.
    pub fn max_poll_timeout(self) -> Duration {
        match self {
            Flavor::Telegram | Flavor::MpChat => Duration::from_secs(50),
            Flavor::WwChat => Duration::from_secs(60),
        }
    }

    /// Whether a successful getUpdates response itself confirms the batch
    /// (MPChat's documented behaviour), rather than the next call's offset.
    pub fn confirms_on_response(self) -> bool {
        matches!(self, Flavor::MpChat)
    }

    /// The header a real webhook from this platform carries its secret token in,
    /// so a handler written for real webhooks checks it unchanged.
    pub fn secret_token_header(self) -> &'static str {
        match self {
            Flavor::Telegram => "X-Telegram-Bot-Api-Secret-Token",
            Flavor::MpChat => "X-MpChat-Bot-Api-Secret-Token",
            Flavor::WwChat => "X-WWChat-Bot-Api-Secret-Token",
        }
    }
}

impl fmt::Display for Flavor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
