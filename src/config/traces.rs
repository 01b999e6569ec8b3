//! `[tracing]`: where spans are exported (OTLP over HTTP, protobuf) and
//! under which service name. The standard variables fill in what the file
//! leaves out (`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, used as is, else
//! `OTEL_EXPORTER_OTLP_ENDPOINT` + `/v1/traces`; `OTEL_SERVICE_NAME`), so a
//! deployment set up the OpenTelemetry way needs no file change.

use url::Url;

use super::ctx::Ctx;
use super::schema::RawTracing;
use super::{ConfigError, TracingSettings};

pub const DEFAULT_SERVICE_NAME: &str = "pollhook";
/// The OTLP/HTTP path for traces, appended to the base endpoint as the
/// specification says for `OTEL_EXPORTER_OTLP_ENDPOINT`.
const TRACES_PATH: &str = "/v1/traces";
const ENDPOINT_ENV: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
const TRACES_ENDPOINT_ENV: &str = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT";
const SERVICE_ENV: &str = "OTEL_SERVICE_NAME";

pub(super) fn validate_tracing(
    ctx: &Ctx,
    raw: Option<RawTracing>,
) -> Result<Option<TracingSettings>, ConfigError> {
    let raw = raw.unwrap_or_default();
    // The specification treats an empty variable as unset.
    let from_env = |name: &str| ctx.env.var(name).filter(|v| !v.trim().is_empty());
    let traces_url = match (
        &raw.otlp_endpoint,
        from_env(TRACES_ENDPOINT_ENV),
        from_env(ENDPOINT_ENV),
    ) {
        (Some(e), _, _) => traces_url(e).map_err(|m| ctx.err("tracing.otlp_endpoint", m))?,
        // The signal's own variable is the whole URL, used as it is.
        (None, Some(e), _) => full_url(e).map_err(|m| ctx.err(TRACES_ENDPOINT_ENV, m))?,
        (None, None, Some(e)) => traces_url(e).map_err(|m| ctx.err(ENDPOINT_ENV, m))?,
        (None, None, None) => {
            if raw.service_name.is_some() {
                ctx.warn(
                    "tracing.service_name is set but no otlp_endpoint (nor OTEL_EXPORTER_OTLP_ENDPOINT): no spans are exported".into(),
                );
            }
            return Ok(None);
        }
    };
    let (name, key) = match (&raw.service_name, from_env(SERVICE_ENV)) {
        (Some(n), _) => (n.as_str(), "tracing.service_name"),
        (None, Some(n)) => (n, SERVICE_ENV),
        (None, None) => (DEFAULT_SERVICE_NAME, "tracing.service_name"),
    };
    let name = name.trim();
    if name.is_empty() || name.len() > 255 || name.chars().any(char::is_control) {
        return Err(ctx.err(
            key,
            format!("{name:?}: give 1-255 printable characters, e.g. \"pollhook\""),
        ));
    }
    Ok(Some(TracingSettings {
        traces_url,
        service_name: name.to_string(),
    }))
}

/// The base endpoint's URL with `/v1/traces` appended to its path.
fn traces_url(endpoint: &str) -> Result<Url, String> {
    let mut url = full_url(endpoint)?;
    let path = format!("{}{TRACES_PATH}", url.path().trim_end_matches('/'));
    url.set_path(&path);
    Ok(url)
}

/// An endpoint URL, checked.
fn full_url(endpoint: &str) -> Result<Url, String> {
    let example = "e.g. \"http://127.0.0.1:4318\" (the collector's OTLP/HTTP port)";
    let text = endpoint.trim();
    if text.is_empty() {
        return Err(format!(
            "must not be empty; {example}, or remove it to export no spans"
        ));
    }
    let url = Url::parse(text).map_err(|e| format!("{text:?} is not a URL ({e}); {example}"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none_or(str::is_empty) {
        return Err(format!(
            "{text:?}: OTLP is sent over http:// or https:// to a host; {example}"
        ));
    }
    if !url.username().is_empty() || url.password().is_some() {
        // It would sit in logs and `check-config`; collectors take
        // credentials as headers.
        return Err(
            "holds a user name or password: put credentials in OTEL_EXPORTER_OTLP_HEADERS (e.g. \"authorization=Bearer …\") instead".into(),
        );
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!(
            "{text:?}: give the base URL without ?query or #fragment; {example}"
        ));
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::traces_url;

    #[test]
    fn the_traces_path_is_appended_to_the_base() {
        for (base, want) in [
            ("http://127.0.0.1:4318", "http://127.0.0.1:4318/v1/traces"),
            ("http://127.0.0.1:4318/", "http://127.0.0.1:4318/v1/traces"),
            (
                "https://collector.example/otel/",
                "https://collector.example/otel/v1/traces",
            ),
        ] {
            assert_eq!(traces_url(base).unwrap().as_str(), want, "{base}");
        }
    }
}
