//! What makes a configured address or file reachable by others: the checks
//! behind `allow_insecure` and the warnings about secret files.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use url::Url;

/// Whether a URL's host is this machine by its name or address (a name that
/// merely resolves to a loopback address is not known here).
pub fn is_loopback_host(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

/// The permission bits of a file that group or others may read or change;
/// None when only its owner may (or it cannot be looked at).
pub fn shared_mode(path: &Path) -> Option<u32> {
    let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o777;
    (mode & 0o077 != 0).then_some(mode)
}

/// An API URL template fit for printing: the password of `user:pass@` (or
/// a lone `token@`) masked.
pub fn mask_userinfo(template: &str) -> String {
    let Some((scheme, rest)) = template.split_once("://") else {
        return template.to_string();
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let Some((userinfo, host)) = rest[..end].rsplit_once('@') else {
        return template.to_string();
    };
    let masked = match userinfo.split_once(':') {
        Some((user, _)) => format!("{user}:****"),
        None => "****".to_string(),
    };
    format!("{scheme}://{masked}@{host}{}", &rest[end..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts() {
        for (url, local) in [
            ("http://localhost:8080/x", true),
            ("http://LOCALHOST/x", true),
            ("http://127.0.0.1/x", true),
            ("http://127.9.9.9/x", true),
            ("http://[::1]:80/x", true),
            ("http://10.0.0.5/x", false),
            ("http://0.0.0.0/x", false),
            ("http://localhost.example/x", false),
            ("http://backend/x", false),
        ] {
            assert_eq!(is_loopback_host(&Url::parse(url).unwrap()), local, "{url}");
        }
    }

    #[test]
    fn userinfo_is_masked() {
        for (given, shown) in [
            (
                "https://u:p4ss@h.example/bot{token}/{method}",
                "https://u:****@h.example/bot{token}/{method}",
            ),
            (
                "https://k3y@h.example:8443/bot{token}/{method}",
                "https://****@h.example:8443/bot{token}/{method}",
            ),
            (
                "https://h.example/bot{token}/{method}?a=b@c",
                "https://h.example/bot{token}/{method}?a=b@c",
            ),
            (
                "https://h.example/bot{token}/{method}",
                "https://h.example/bot{token}/{method}",
            ),
            ("no scheme", "no scheme"),
        ] {
            assert_eq!(mask_userinfo(given), shown);
        }
    }
}
