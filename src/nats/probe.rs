//! `check-config --probe` for JetStream forwards: connect, list the
//! streams, and say for each forward whether one captures every subject
//! it may publish to.

use futures_util::TryStreamExt;

use super::connection::{FirstConnect, Nats};
use super::subject::{captures, overlaps};
use crate::config::{Destination, Settings};

/// What the probe found for one forward.
pub struct Finding {
    pub bot: String,
    pub forward: String,
    /// The subjects it may publish to, as a wildcard pattern.
    pub pattern: String,
    /// Ok(stream) when a stream captures the pattern, Err(why) otherwise.
    pub result: Result<String, String>,
}

/// One finding per JetStream forward, in configuration order; Err when
/// NATS cannot be reached or asked at all. Empty without such forwards.
pub async fn probe(settings: &Settings) -> Result<Vec<Finding>, String> {
    let wanted: Vec<(String, String, String)> = settings
        .bots
        .iter()
        .flat_map(|b| {
            b.forwards.iter().filter_map(|f| match &f.to {
                Destination::JetStream(t) => {
                    Some((b.name.clone(), f.name.clone(), t.pattern(&b.name)))
                }
                Destination::Http(_) => None,
            })
        })
        .collect();
    let Some(nats) = settings.nats.as_ref().filter(|_| !wanted.is_empty()) else {
        return Ok(Vec::new());
    };
    // async-nats bounds only the TCP connect: a listener that accepts and
    // never speaks NATS would hold the probe for ever.
    let limit = nats.connect_timeout * 2 + std::time::Duration::from_secs(5);
    let ask = async {
        let conn = Nats::connect(nats, FirstConnect::OrFail)
            .await
            .map_err(|e| e.to_string())?;
        let js = async_nats::jetstream::new(conn.client().clone());
        js.streams()
            .map_ok(|info| (info.config.name, info.config.subjects))
            .try_collect::<Vec<_>>()
            .await
            .map_err(|e| {
                format!("cannot list JetStream streams (is JetStream enabled on the server?): {e}")
            })
    };
    let streams: Vec<(String, Vec<String>)> =
        tokio::time::timeout(limit, ask).await.map_err(|_| {
            format!(
                "no answer within {}s (is it a NATS server?)",
                limit.as_secs()
            )
        })??;
    Ok(wanted
        .into_iter()
        .map(|(bot, forward, pattern)| {
            let result = judge(&pattern, &streams);
            Finding {
                bot,
                forward,
                pattern,
                result,
            }
        })
        .collect())
}

fn judge(pattern: &str, streams: &[(String, Vec<String>)]) -> Result<String, String> {
    if let Some((name, _)) = streams
        .iter()
        .find(|(_, subjects)| subjects.iter().any(|s| captures(s, pattern)))
    {
        return Ok(name.clone());
    }
    let partly: Vec<String> = streams
        .iter()
        .filter(|(_, subjects)| subjects.iter().any(|s| overlaps(s, pattern)))
        .map(|(name, subjects)| format!("{name} ({})", subjects.join(", ")))
        .collect();
    let create = format!("`nats stream add TG --subjects '{pattern}' --storage file`");
    Err(if partly.is_empty() {
        format!("{pattern} is not captured by any stream; create one, e.g. {create}")
    } else {
        format!(
            "{pattern} is only partly captured, by {}: updates to the other subjects would wait in the queue; widen its subjects, or create one, e.g. {create}",
            partly.join("; ")
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn streams(list: &[(&str, &[&str])]) -> Vec<(String, Vec<String>)> {
        list.iter()
            .map(|(n, s)| (n.to_string(), s.iter().map(|x| x.to_string()).collect()))
            .collect()
    }

    #[test]
    fn names_the_stream_that_captures() {
        let s = streams(&[("OTHER", &["x.>"]), ("TG", &["a", "tg.>"])]);
        assert_eq!(judge("tg.b.*.*", &s), Ok("TG".to_string()));
    }

    #[test]
    fn says_when_nothing_or_only_part_is_captured() {
        let s = streams(&[("MSG", &["tg.b.message.*"])]);
        let e = judge("tg.b.*.*", &s).unwrap_err();
        assert!(e.contains("only partly") && e.contains("MSG"), "{e}");
        let e = judge("tg.c.*.*", &s).unwrap_err();
        assert!(
            e.contains("not captured by any stream") && e.contains("tg.c.*.*"),
            "{e}"
        );
    }
}
