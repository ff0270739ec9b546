//! Which `Host` headers the server answers: a page of another site that has a name of its own
//! resolve to this server's address (DNS rebinding) sends that name as its `Host`, so a server
//! that answers any `Host` lets any web page read its answers.
//!
//! IP literals are safe from rebinding (it needs a name to re-resolve), so they are what the
//! defaults allow: bound to a loopback address, `localhost` and the loopback addresses; bound to
//! any other address, `localhost` and every IP address. Other names must be allowed by
//! `--allowed-hosts` (`*`: any).

use std::net::IpAddr;

/// Which `Host` headers are answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AllowedHosts {
    /// Any `Host` at all (`--allowed-hosts '*'`).
    any: bool,
    /// Any IP address, not only loopback ones.
    any_ip: bool,
    /// Names allowed besides `localhost`, lowercase, without port.
    names: Vec<String>,
    /// Addresses allowed besides loopback ones.
    ips: Vec<IpAddr>,
}

/// A `--allowed-hosts` entry that is not a host name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a host name; give a name such as qa.example.com (no scheme, path or port), or `*` for any")]
pub struct BadHostName(pub String);

impl AllowedHosts {
    /// The defaults for a server bound to `bound`, plus `extra` names (`*` allows any host).
    pub fn new(bound: IpAddr, extra: &[String]) -> Result<Self, BadHostName> {
        let mut hosts = Self {
            any: false,
            any_ip: !bound.is_loopback(),
            names: Vec::new(),
            ips: Vec::new(),
        };
        for name in extra {
            let name = name.trim();
            if name == "*" {
                hosts.any = true;
                continue;
            }
            let literal = name.trim_start_matches('[').trim_end_matches(']');
            if let Ok(ip) = literal.parse::<IpAddr>() {
                hosts.ips.push(ip);
                continue;
            }
            let valid = !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-.".contains(c));
            if !valid {
                return Err(BadHostName(name.to_string()));
            }
            hosts
                .names
                .push(name.trim_end_matches('.').to_ascii_lowercase());
        }
        Ok(hosts)
    }

    /// Only `localhost` and loopback addresses: the defaults of a server on 127.0.0.1.
    pub fn loopback() -> Self {
        Self {
            any: false,
            any_ip: false,
            names: Vec::new(),
            ips: Vec::new(),
        }
    }

    /// Whether a request with this `Host` header value is answered.
    pub fn allows(&self, host: &str) -> bool {
        if self.any {
            return true;
        }
        let Some(name) = strip_port(host.trim()) else {
            return false;
        };
        let literal = name
            .strip_prefix('[')
            .and_then(|n| n.strip_suffix(']'))
            .unwrap_or(name);
        if let Ok(ip) = literal.parse::<IpAddr>() {
            return self.any_ip || ip.is_loopback() || self.ips.contains(&ip);
        }
        if name.starts_with('[') {
            return false;
        }
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        name == "localhost" || self.names.contains(&name)
    }
}

/// `host[:port]` without its port; `None` when the port is not a number.
fn strip_port(host: &str) -> Option<&str> {
    let (name, port) = if let Some(rest) = host.strip_prefix('[') {
        let end = rest.find(']')?;
        (&host[..end + 2], &rest[end + 1..])
    } else {
        match host.rfind(':') {
            Some(i) => (&host[..i], &host[i..]),
            None => (host, ""),
        }
    };
    let port_ok = port.is_empty()
        || port
            .strip_prefix(':')
            .is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    (port_ok && !name.is_empty()).then_some(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts(bound: &str, extra: &[&str]) -> AllowedHosts {
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        AllowedHosts::new(bound.parse().unwrap(), &extra).unwrap()
    }

    #[test]
    fn on_loopback_only_loopback_names_are_answered() {
        let h = hosts("127.0.0.1", &[]);
        for ok in [
            "localhost",
            "localhost:8080",
            "LOCALHOST.:1",
            "127.0.0.1",
            "127.0.0.1:8080",
            "[::1]",
            "[::1]:8080",
        ] {
            assert!(h.allows(ok), "{ok}");
        }
        for refused in [
            "attacker.example",
            "attacker.example:8080",
            "localhost.attacker.example",
            "10.0.0.5:8080",
            "[::2]:80",
            "localhost:http",
            "",
            ":8080",
            "[::1",
        ] {
            assert!(!h.allows(refused), "{refused}");
        }
        assert_eq!(h, AllowedHosts::loopback());
    }

    #[test]
    fn elsewhere_any_ip_and_the_given_names_are_answered() {
        let h = hosts("0.0.0.0", &["qa.example.com"]);
        for ok in [
            "10.0.0.5:8080",
            "[2001:db8::1]:8080",
            "localhost",
            "QA.example.com:443",
        ] {
            assert!(h.allows(ok), "{ok}");
        }
        assert!(!h.allows("attacker.example"));
        assert!(!h.allows("sub.qa.example.com"));
        assert!(hosts("0.0.0.0", &["*"]).allows("attacker.example:1"));
        let h = hosts("127.0.0.1", &["10.0.0.5", "[2001:db8::1]"]);
        assert!(h.allows("10.0.0.5:8080") && h.allows("[2001:db8::1]:1"));
        assert!(!h.allows("10.0.0.6"));
    }

    #[test]
    fn names_with_schemes_or_ports_are_refused() {
        let bound = "127.0.0.1".parse().unwrap();
        for bad in ["http://qa.example.com", "qa.example.com:80", "", "a/b"] {
            let err = AllowedHosts::new(bound, &[bad.to_string()]).unwrap_err();
            assert!(err.to_string().contains("not a host name"), "{err}");
        }
    }
}
