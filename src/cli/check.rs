//! `check-config`: print what would run, secrets masked; with `--probe`,
//! also ask the platform who each token belongs to, and NATS whether a
//! stream captures each JetStream forward's subjects, without polling and
//! without sending anything to a backend or a stream.

use std::path::Path;
use std::process::ExitCode;

use tokio::task::JoinSet;

use crate::config::Settings;
use crate::platform::api::BotApi;

/// One entry per bot, in configuration order: `Ok(who)` or `Err(reason)`.
async fn probe(settings: &Settings) -> Vec<(String, Result<String, String>)> {
    // Concurrently, so one slow platform does not delay the rest.
    let mut calls = JoinSet::new();
    let mut clients = crate::http::Clients::new();
    for (i, bot) in settings.bots.iter().enumerate() {
        let (name, flavor) = (bot.name.clone(), bot.flavor);
        let client = match clients.for_bot(bot.proxy.as_ref(), bot.ca_file.as_ref()) {
            Ok(c) => c,
            Err(e) => {
                calls.spawn(async move { (i, name, Err(e)) });
                continue;
            }
        };
        let api = BotApi::new(&bot.api_url, bot.token.clone(), client);
        calls.spawn(async move {
            let result = api
                .get_me()
                .await
                .map(|me| format!("{me} on {flavor}"))
                .map_err(|e| format!("{e}; {}", e.advice()));
            (i, name, result)
        });
    }
    let mut out: Vec<_> = calls.join_all().await;
    out.sort_by_key(|(i, _, _)| *i);
    out.into_iter().map(|(_, name, r)| (name, r)).collect()
}

pub async fn run(config: &Path, with_probe: bool) -> anyhow::Result<ExitCode> {
    let settings = crate::config::load(config)?;
    print!("{settings}");
    if !with_probe {
        return Ok(ExitCode::SUCCESS);
    }
    let mut failed = Vec::new();
    for (bot, result) in probe(&settings).await {
        match result {
            Ok(who) => println!("probe: bot {bot:?}: ok, {who}"),
            Err(why) => {
                eprintln!("error: probe: bot {bot:?}: {why}");
                failed.push(bot);
            }
        }
    }
    match crate::nats::probe::probe(&settings).await {
        Ok(findings) => {
            for f in findings {
                let what = format!("forward {:?} of bot {:?}", f.forward, f.bot);
                match f.result {
                    Ok(stream) => {
                        println!(
                            "probe: {what}: ok, stream {stream:?} captures {}",
                            f.pattern
                        )
                    }
                    Err(why) => {
                        eprintln!("error: probe: {what}: {why}");
                        failed.push(format!("{}/{}", f.bot, f.forward));
                    }
                }
            }
        }
        Err(why) => {
            eprintln!("error: probe: NATS: {why}");
            failed.push("NATS".into());
        }
    }
    if failed.is_empty() {
        return Ok(ExitCode::SUCCESS);
    }
    anyhow::bail!(
        "{} check(s) failed the probe: {}",
        failed.len(),
        failed.join(", ")
    )
}
