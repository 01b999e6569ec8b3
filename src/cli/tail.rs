//! `pollhook tail`: a running relay's live events (`GET /events` on its
//! admin API), one line each as they happen, until Ctrl-C.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use futures_util::StreamExt;

use super::live::Style;
use crate::events::{Control, Event};
use crate::ops::client::AdminClient;

/// Silence after which the relay counts as gone: it sends a keep-alive
/// line at least every 10 s.
const SILENCE: Duration = Duration::from_secs(30);

pub struct Args<'a> {
    pub config: &'a Path,
    pub bot: Option<String>,
    pub forward: Option<String>,
    pub json: bool,
}

pub async fn run(args: Args<'_>) -> anyhow::Result<ExitCode> {
    let view = crate::config::load_admin_view(args.config).map_err(|e| {
        anyhow::anyhow!("{e} (tail finds the admin API through the configuration's admin.listen and admin.token; give --config FILE)")
    })?;
    let Some(addr) = view.listen else {
        anyhow::bail!(
            "the configuration has no admin.listen, so a running pollhook cannot be asked for its events; set admin.listen (e.g. \"127.0.0.1:9807\") and restart pollhook"
        );
    };
    let client = AdminClient::streaming(addr, view.token, SILENCE);
    let mut query = Vec::new();
    if let Some(b) = &args.bot {
        query.push(("bot", b.as_str()));
    }
    if let Some(f) = &args.forward {
        query.push(("forward", f.as_str()));
    }
    let response = client.open("/events", &query).await?;
    eprintln!("tail: the events of pollhook at {addr}, as they happen (Ctrl-C to stop)");
    let style = Style::for_stdout();
    let mut body = response.bytes_stream();
    let mut pending: Vec<u8> = Vec::new();
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        let chunk = tokio::select! {
            _ = &mut ctrl_c => return Ok(ExitCode::SUCCESS),
            chunk = body.next() => chunk,
        };
        match chunk {
            Some(Ok(bytes)) => pending.extend_from_slice(&bytes),
            Some(Err(e)) => return Err(client.broken(e).into()),
            None => anyhow::bail!("the admin API at {addr} ended the stream: pollhook stopped"),
        }
        while let Some(end) = pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            if let Some(text) = show(&line[..end], args.json, style) {
                println!("{text}");
            }
        }
    }
}

/// What to print for one line of the stream, if anything.
fn show(line: &[u8], json: bool, style: Style) -> Option<String> {
    if let Ok(control) = serde_json::from_slice::<Control>(line) {
        return match control {
            Control::Keepalive => None,
            Control::Lagged { missed } if !json => Some(style.lagged(missed)),
            Control::Lagged { .. } => Some(String::from_utf8_lossy(line).into_owned()),
        };
    }
    if json {
        return Some(String::from_utf8_lossy(line).into_owned());
    }
    match serde_json::from_slice::<Event>(line) {
        Ok(e) => Some(style.event(&e)),
        // A newer relay's kind of event: shown as it came.
        Err(_) => Some(String::from_utf8_lossy(line).into_owned()),
    }
}
