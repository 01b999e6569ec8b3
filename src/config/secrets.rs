//! Reading a secret (a bot token, a signing secret, a secret token, the
//! admin token) from wherever the file says it is: inline, a file, an
//! environment variable, or a systemd credential.

use std::path::{Path, PathBuf};

use secrecy::SecretString;

use super::ctx::Ctx;
use super::exposure;

/// Where a secret may come from; at most one is set.
#[derive(Default, Clone, Copy)]
pub(super) struct Sources<'a> {
    pub inline: Option<&'a str>,
    pub file: Option<&'a str>,
    pub env: Option<&'a str>,
    pub credential: Option<&'a str>,
}

/// Reads the secret `field` of `prefix` (e.g. `bot[0]`, `token`) from the
/// one source given; None when none is. Surrounding whitespace is dropped,
/// an empty secret is refused.
pub(super) fn read(
    ctx: &Ctx,
    prefix: &str,
    field: &str,
    src: Sources,
) -> Result<Option<SecretString>, super::ConfigError> {
    let given = [
        src.inline.is_some(),
        src.file.is_some(),
        src.env.is_some(),
        src.credential.is_some(),
    ];
    if given.iter().filter(|g| **g).count() > 1 {
        return Err(ctx.err(
            format!("{prefix}.{field}"),
            format!("set only one of {field}, {field}_file, {field}_env, {field}_credential"),
        ));
    }
    let read_file = |key: &str, path: PathBuf| {
        std::fs::read_to_string(&path).map_err(|e| {
            ctx.err(
                format!("{prefix}.{key}"),
                format!("cannot read {}: {e}", path.display()),
            )
        })
    };
    let (key, value) = if let Some(v) = src.inline {
        (field.to_string(), v.to_string())
    } else if let Some(f) = src.file {
        let key = format!("{field}_file");
        let path = ctx.path(f);
        let text = read_file(&key, path.clone())?;
        warn_if_shared(ctx, &format!("{prefix}.{key}"), &path);
        (key, text)
    } else if let Some(name) = src.env {
        let key = format!("{field}_env");
        let text = ctx.env.var(name).ok_or_else(|| {
            ctx.err(
                format!("{prefix}.{key}"),
                format!("environment variable {name} is not set"),
            )
        })?;
        (key, text.to_string())
    } else if let Some(name) = src.credential {
        // systemd's LoadCredential= puts each secret in a private,
        // per-service directory named by $CREDENTIALS_DIRECTORY.
        let key = format!("{field}_credential");
        let dir = ctx.env.var_os("CREDENTIALS_DIRECTORY").ok_or_else(|| {
            ctx.err(
                format!("{prefix}.{key}"),
                "$CREDENTIALS_DIRECTORY is not set: run under systemd with LoadCredential=, or use _file or _env",
            )
        })?;
        let text = read_file(&key, Path::new(dir).join(name))?;
        (key, text)
    } else {
        return Ok(None);
    };
    let value = value.trim();
    if value.is_empty() {
        return Err(ctx.err(format!("{prefix}.{key}"), "the secret is empty"));
    }
    Ok(Some(SecretString::from(value.to_string())))
}

/// Warns about a secret file other users may read or change: whoever reads
/// a bot token controls the bot. A warning, not a refusal: a private parent
/// directory may protect it, which is not checked here.
fn warn_if_shared(ctx: &Ctx, key: &str, path: &Path) {
    if let Some(mode) = exposure::shared_mode(path) {
        ctx.warn(format!(
            "{key}: {} is open to group or others (mode {mode:04o}); chmod 600 it",
            path.display()
        ));
    }
}
