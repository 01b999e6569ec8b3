//! The layered loader: environment overrides, defaults that come from the
//! environment, relative paths, and the entry points besides `load`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use secrecy::ExposeSecret;

use super::{env, parse_err, parse_ok, BOT};
use crate::config::load::{from_str_with, load_admin_view_with, load_with, quick_start_with};
use crate::config::QuickStart;

#[test]
fn overrides_stay_strings_and_numbers_still_parse() {
    let toml =
        format!("state_dir = \"file\"\ncache_mb = 8\n[admin]\nlisten = \"127.0.0.1:9807\"\n{BOT}");
    let s = parse_ok(
        &toml,
        &[
            ("POLLHOOK_STATE_DIR", "007"),
            ("POLLHOOK_CACHE_MB", "32"),
            ("POLLHOOK_ADMIN__TOKEN", "000123"),
            ("POLLHOOK_SHUTDOWN_TIMEOUT", "15s"),
            ("POLLHOOK_ADMIN__ALLOW_INSECURE", "true"),
            ("POLLHOOK_ADMIN__LISTEN", "0.0.0.0:9900"),
        ],
    );
    assert_eq!(s.state_dir, Path::new("/etc/pollhook/007"));
    assert_eq!(s.cache_bytes, 32 * 1024 * 1024);
    assert_eq!(s.admin_token.unwrap().expose_secret(), "000123");
    assert_eq!(s.shutdown_timeout, Duration::from_secs(15));
    assert_eq!(s.admin_listen, Some("0.0.0.0:9900".parse().unwrap()));
    // Only the file, for comparison.
    let s = parse_ok(&toml, &[]);
    assert_eq!(s.state_dir, Path::new("/etc/pollhook/file"));
    assert_eq!(s.cache_bytes, 8 * 1024 * 1024);
    assert!(s.admin_token.is_none());
}

#[test]
fn only_prefixed_variables_with_the_right_separators_apply() {
    let s = parse_ok(
        BOT,
        &[
            ("STATE_DIR", "a"),
            ("POLLHOOKSTATE_DIR", "b"),
            ("XPOLLHOOK_STATE_DIR", "c"),
        ],
    );
    assert_eq!(s.state_dir, Path::new("./pollhook-state"));
    // POLLHOOK_ADMIN_TOKEN is the top-level key "admin_token", which the
    // file's shape does not have.
    let e = parse_err(BOT, &[("POLLHOOK_ADMIN_TOKEN", "d")]);
    assert_eq!(e.key, "admin_token");
    assert!(e.message.contains("unknown field `admin_token`"), "{e}");
    assert!(
        e.message
            .ends_with("(set by the environment variable POLLHOOK_ADMIN_TOKEN)"),
        "{e}"
    );
}

#[test]
fn a_bad_value_names_the_variable_that_set_it() {
    let e = parse_err(BOT, &[("POLLHOOK_CACHE_MB", "lots")]);
    assert_eq!(e.key, "cache_mb");
    assert_eq!(
        e.message,
        "invalid type: string \"lots\", expected an integer (set by the environment variable POLLHOOK_CACHE_MB)"
    );
    // The same mistake in the file: no variable to name, and the `config`
    // crate's own "for key … in …" suffix is trimmed.
    let e = parse_err(&format!("cache_mb = \"lots\"\n{BOT}"), &[]);
    assert_eq!(e.key, "cache_mb");
    assert_eq!(
        e.message,
        "invalid type: string \"lots\", expected an integer"
    );
    let e = parse_err(BOT, &[("POLLHOOK_ADMIN__HEADER_TIMEOUT", "0s")]);
    assert_eq!(
        (e.key.as_str(), e.message.as_str()),
        ("admin.header_timeout", "must be longer than 0s")
    );
}

#[test]
fn state_dir_defaults_to_the_first_state_directory() {
    let dir = |pairs: &[(&str, &str)]| parse_ok(BOT, pairs).state_dir;
    assert_eq!(dir(&[]), PathBuf::from("./pollhook-state"));
    assert_eq!(
        dir(&[("STATE_DIRECTORY", "")]),
        PathBuf::from("./pollhook-state")
    );
    assert_eq!(
        dir(&[("STATE_DIRECTORY", "/var/lib/a")]),
        PathBuf::from("/var/lib/a")
    );
    assert_eq!(
        dir(&[("STATE_DIRECTORY", "/var/lib/a:/var/lib/b")]),
        PathBuf::from("/var/lib/a")
    );
    // The file's state_dir wins; an absolute one is kept as written.
    let s = parse_ok(
        &format!("state_dir = \"/srv/q\"\n{BOT}"),
        &[("STATE_DIRECTORY", "/var/lib/a")],
    );
    assert_eq!(s.state_dir, PathBuf::from("/srv/q"));
}

#[test]
fn relative_paths_resolve_against_the_files_folder() {
    let dir = tempfile::tempdir().unwrap();
    let sub = dir.path().join("etc");
    std::fs::create_dir(&sub).unwrap();
    std::fs::write(sub.join("token"), "42:from-file\n").unwrap();
    let path = sub.join("pollhook.toml");
    let toml = BOT.replace("token = \"123456:ABC-def\"", "token_file = \"token\"");
    std::fs::write(&path, format!("state_dir = \"../state\"\n{toml}")).unwrap();
    let s = load_with(&path, &env(&[])).unwrap();
    assert_eq!(s.state_dir, sub.join("../state"));
    assert_eq!(s.bots[0].token.expose_secret(), "42:from-file");
    assert_eq!(s.source_name, path.display().to_string());
    // from_str resolves against the base it is given.
    let s = crate::config::from_str(&toml, &sub, &[]).unwrap();
    assert_eq!(s.bots[0].token.expose_secret(), "42:from-file");
    assert_eq!(s.source_name, "(string)");
}

#[test]
fn a_missing_file_is_named() {
    let path = Path::new("/nonexistent/pollhook.toml");
    let e = load_with(path, &env(&[])).unwrap_err();
    assert_eq!(
        e.to_string(),
        "/nonexistent/pollhook.toml: (file): cannot read the file: not found"
    );
    let e = load_admin_view_with(path, &env(&[])).err().unwrap();
    assert_eq!(e.key, "(file)");
}

#[test]
fn the_admin_view_skips_bots_but_reads_the_admin_section() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pollhook.toml");
    // A bot whose token is not in this shell: `dlq` must not care.
    let text = "state_dir = \"q\"\n[admin]\nlisten = \"127.0.0.1:9807\"\n[[bot]]\nname = \"main\"\ntoken_env = \"ABSENT\"\n";
    std::fs::write(&path, text).unwrap();
    let v = load_admin_view_with(&path, &env(&[("POLLHOOK_ADMIN__TOKEN", "0042")])).unwrap();
    assert_eq!(v.state_dir, dir.path().join("q"));
    assert_eq!(v.listen, Some("127.0.0.1:9807".parse().unwrap()));
    assert_eq!(v.token.unwrap().expose_secret(), "0042");
    // `run` would refuse the same file.
    let e = load_with(&path, &env(&[])).unwrap_err();
    assert_eq!(e.key, "bot[0].token_env");

    std::fs::write(&path, "[admin]\nlisten = \"nowhere\"\n").unwrap();
    let e = load_admin_view_with(&path, &env(&[])).err().unwrap();
    assert_eq!(e.key, "admin.listen");
    assert!(e.message.contains("\"nowhere\" is not an address"), "{e}");
    std::fs::write(&path, "").unwrap();
    let v = load_admin_view_with(&path, &env(&[("STATE_DIRECTORY", "/var/lib/p")])).unwrap();
    assert_eq!(v.state_dir, PathBuf::from("/var/lib/p"));
    assert!(v.listen.is_none() && v.token.is_none());
    // An empty state_dir is refused here too, not read as the file's folder.
    std::fs::write(&path, "state_dir = \"\"\n").unwrap();
    let e = load_admin_view_with(&path, &env(&[])).err().unwrap();
    assert_eq!(
        (e.key.as_str(), e.message.as_str()),
        ("state_dir", "must not be empty")
    );
}

fn quick(forwards: &[&str]) -> QuickStart {
    QuickStart {
        token_env: "BOT_TOKEN".into(),
        flavor: None,
        api_url: None,
        forwards: forwards.iter().map(|f| f.to_string()).collect(),
        signing_secret_env: Some("SIGNING".into()),
        secret_token_env: None,
        state_dir: None,
    }
}

#[test]
fn the_quick_start_is_validated_like_a_file() {
    let key = "whsec_MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3";
    let pairs = [
        ("BOT_TOKEN", "7:abc"),
        ("SIGNING", key),
        ("STATE_DIRECTORY", "/var/lib/q"),
    ];
    let s = quick_start_with(
        quick(&["http://10.1.2.3/hook", "https://b.example/"]),
        &env(&pairs),
    )
    .unwrap();
    assert_eq!(s.source_name, "command line");
    assert_eq!(s.state_dir, PathBuf::from("/var/lib/q"));
    assert_eq!(s.bots[0].name, "bot");
    assert_eq!(s.bots[0].token.expose_secret(), "7:abc");
    assert_eq!(s.bots[0].forwards.len(), 2);
    assert_eq!(s.bots[0].forwards[1].signing_keys.len(), 1);
    // A plain-http remote backend typed on the command line: warned about.
    assert_eq!(s.warnings.len(), 1, "{:?}", s.warnings);
    assert!(s.warnings[0].starts_with("bot[0].forward[0].url: http://10.1.2.3/hook: plain http://"));

    let e = quick_start_with(quick(&["https://b.example/"]), &env(&[("SIGNING", key)]))
        .err()
        .unwrap();
    assert_eq!(
        e.to_string(),
        "command line: bot[0].token_env: environment variable BOT_TOKEN is not set"
    );
    let e = quick_start_with(quick(&["ftp://b.example/"]), &env(&pairs))
        .err()
        .unwrap();
    assert_eq!(e.key, "bot[0].forward[0].url");
}

#[test]
fn the_environment_need_not_be_unicode() {
    use std::ffi::OsString;
    use std::os::unix::ffi::OsStringExt;

    let raw = |k: &[u8], v: &[u8]| {
        (
            OsString::from_vec(k.to_vec()),
            OsString::from_vec(v.to_vec()),
        )
    };
    let dir = tempfile::tempdir().unwrap();
    let creds = dir.path().join(OsString::from_vec(b"cr\xffds".to_vec()));
    std::fs::create_dir(&creds).unwrap();
    std::fs::write(creds.join("bot"), "5:cred").unwrap();
    let toml = BOT.replace("token = \"123456:ABC-def\"", "token_credential = \"bot\"");
    let load = |vars: Vec<(OsString, OsString)>| {
        let env = crate::config::env::Env::from_os(vars);
        from_str_with(&toml, Path::new("/etc/pollhook"), &env)
    };
    // Other variables that are not Unicode, in name or value, are no concern;
    // a credentials directory need not be Unicode either.
    let mut vars = vec![
        raw(b"OTHER", b"\xfe"),
        raw(b"POLLHOOK_\xff", b"x"),
        (
            OsString::from("CREDENTIALS_DIRECTORY"),
            creds.into_os_string(),
        ),
    ];
    let s = load(vars.clone()).unwrap();
    assert_eq!(s.bots[0].token.expose_secret(), "5:cred");
    // An override that is not Unicode is refused, named.
    vars.push(raw(b"POLLHOOK_STATE_DIR", b"\xff"));
    let e = load(vars).unwrap_err();
    assert_eq!(e.key, "(file)");
    assert_eq!(
        e.message,
        "env variable \"state_dir\" contains non-Unicode data: \"\\xFF\""
    );
}
