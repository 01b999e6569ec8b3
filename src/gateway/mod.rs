//! The way back out: backends call the Bot API through pollhook with a
//! local key instead of the token, and every call of a bot, from any
//! backend and from webhook replies, keeps to the bot's one budget.
//!
//! The URL shape is Telegram's (`/bot{key}/{method}`,
//! `/file/bot{key}/{path}`) whatever the bot's platform, so a framework
//! needs only its API base URL changed.

pub mod answers;
pub mod params;
