//! A group's health checks as the file gives them: pings over the worker
//! channel (`[groups.NAME.ping]`) and liveness and readiness probes
//! (`[groups.NAME.health.liveness]`, `[groups.NAME.health.readiness]`),
//! and their checks, whose errors name the key.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use serde::Deserialize;

use super::{duration, ms, GroupConfig, StopMode};

/// Shortest interval of a ping or a probe: more often is load, not news.
pub const MIN_INTERVAL: Duration = Duration::from_millis(100);
/// Longest interval and initial delay.
pub const MAX_INTERVAL: Duration = Duration::from_secs(3600);
/// Shortest probe timeout.
pub const MIN_TIMEOUT: Duration = Duration::from_millis(10);
/// Most misses or failures in a row a check may wait for.
pub const MAX_THRESHOLD: u32 = 100;
/// Most arguments of an exec probe.
const MAX_EXEC_ARGS: usize = 64;
/// Longest URL or address of a probe.
const MAX_TARGET: usize = 2048;
/// Largest `ca_file`: a bundle of a few hundred certificates fits.
const MAX_CA_FILE: u64 = 1 << 20;

/// `[groups.NAME.ping]`: its presence turns pings on.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PingConfig {
    #[serde(default = "ms::<10_000>", deserialize_with = "duration")]
    pub interval: Duration,
    #[serde(default = "three")]
    pub misses: u32,
}

/// `[groups.NAME.health]`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthConfig {
    pub liveness: Option<ProbeConfig>,
    pub readiness: Option<ProbeConfig>,
}

/// One probe: exactly one of `exec`, `http`, `tcp`, and its timing.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProbeConfig {
    pub exec: Option<Vec<String>>,
    pub http: Option<String>,
    pub tcp: Option<String>,
    /// The CA certificates (PEM) an https probe trusts instead of the
    /// system's.
    pub ca_file: Option<PathBuf>,
    #[serde(default = "ms::<10_000>", deserialize_with = "duration")]
    pub interval: Duration,
    #[serde(default = "ms::<1_000>", deserialize_with = "duration")]
    pub timeout: Duration,
    #[serde(default = "three")]
    pub failure_threshold: u32,
    #[serde(default = "ms::<0>", deserialize_with = "duration")]
    pub initial_delay: Duration,
    /// What `exec`, `http` or `tcp` says, once checked.
    #[serde(skip)]
    pub check: Option<Check>,
}

/// What a probe does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    /// Runs this program (an absolute path) with these arguments; exit 0
    /// passes.
    Exec(Vec<String>),
    /// GET `path` from `host:port` over HTTP/1.1, over TLS when `tls`
    /// says whom to trust; a 2xx or 3xx passes.
    Http { tls: Option<Trust>, host: String, port: u16, path: String },
    /// Connects to `host:port`; a connection passes.
    Tcp { host: String, port: u16 },
}

impl Check {
    /// How the log and listings name it.
    pub fn describe(&self) -> String {
        match self {
            Check::Exec(argv) => format!("exec {}", argv.join(" ")),
            Check::Http { tls, host, port, path } => {
                let scheme = if tls.is_some() { "https" } else { "http" };
                format!("{scheme}://{}{path}", join_host_port(host, *port))
            }
            Check::Tcp { host, port } => format!("tcp {}", join_host_port(host, *port)),
        }
    }
}

/// The CA certificates an https probe checks the server's against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trust {
    /// The host's store (/etc/ssl/certs on Debian).
    System,
    /// Only these, read from `ca_file` when the config was loaded.
    Ca(Vec<CertificateDer<'static>>),
}

/// `host:port`, with an IPv6 address in brackets.
pub fn join_host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

fn three() -> u32 {
    3
}

/// Checks a group's pings and probes, and fills in each probe's `check`;
/// a relative `ca_file` is taken from `base`, the config file's directory.
pub fn check(name: &str, g: &mut GroupConfig, base: &Path) -> Result<(), String> {
    if let Some(ping) = &g.ping {
        let key = |k: &str| format!("groups.{name}.ping.{k}");
        if g.stop_mode != StopMode::Protocol {
            return Err(format!(
                "key `groups.{name}.ping`: pings go over the worker channel, which only stop_mode = \"protocol\" \
                 workers have; a liveness probe ([groups.{name}.health.liveness]) checks any worker"
            ));
        }
        interval(&key("interval"), ping.interval)?;
        threshold(&key("misses"), ping.misses)?;
    }
    if g.health.readiness.is_some() && g.stop_mode == StopMode::Protocol {
        return Err(format!(
            "key `groups.{name}.health.readiness`: stop_mode = \"protocol\" workers say when they are ready over \
             their channel; a readiness probe is for signal-mode workers (instead of ready_after)"
        ));
    }
    for (which, probe) in [("liveness", &mut g.health.liveness), ("readiness", &mut g.health.readiness)] {
        if let Some(probe) = probe {
            check_probe(&format!("groups.{name}.health.{which}"), probe, base)?;
        }
    }
    Ok(())
}

fn check_probe(table: &str, p: &mut ProbeConfig, base: &Path) -> Result<(), String> {
    let key = |k: &str| format!("{table}.{k}");
    interval(&key("interval"), p.interval)?;
    if p.timeout < MIN_TIMEOUT || p.timeout > p.interval {
        return Err(format!(
            "key `{}`: {} is out of range (10ms up to the probe's interval, {}): one probe is in flight at a time",
            key("timeout"),
            humantime::format_duration(p.timeout),
            humantime::format_duration(p.interval)
        ));
    }
    threshold(&key("failure_threshold"), p.failure_threshold)?;
    if p.initial_delay > MAX_INTERVAL {
        return Err(format!(
            "key `{}`: {} is out of range (0s to 1h)",
            key("initial_delay"),
            humantime::format_duration(p.initial_delay)
        ));
    }
    let check = match (&p.exec, &p.http, &p.tcp) {
        (Some(argv), None, None) => Check::Exec(exec(&key("exec"), argv)?),
        (None, Some(url), None) => http(&key("http"), url)?,
        (None, None, Some(addr)) => {
            target_text(&key("tcp"), addr)?;
            let (host, port) = host_port(addr).ok_or_else(|| {
                format!("key `{}`: {addr:?} is not HOST:PORT (e.g. \"127.0.0.1:8080\", \"[::1]:8080\")", key("tcp"))
            })?;
            Check::Tcp { host, port }
        }
        (exec, http, tcp) => {
            let given = [exec.is_some(), http.is_some(), tcp.is_some()].iter().filter(|g| **g).count();
            return Err(format!("key `{table}`: a probe takes exactly one of exec, http and tcp ({given} given)"));
        }
    };
    p.ca_file = p.ca_file.take().map(|file| base.join(file));
    let check = match (check, &p.ca_file) {
        (Check::Http { tls: Some(_), host, port, path }, Some(file)) => {
            Check::Http { tls: Some(Trust::Ca(ca_file(&key("ca_file"), file)?)), host, port, path }
        }
        (_, Some(_)) => {
            return Err(format!("key `{}`: only an https probe (http = \"https://...\") checks a CA", key("ca_file")))
        }
        (check, None) => check,
    };
    p.check = Some(check);
    Ok(())
}

/// The certificates of a PEM file: at most 1 MiB, at least one
/// certificate.
fn ca_file(key: &str, file: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let bad = |why: String| format!("key `{key}`: {}: {why}", file.display());
    let mut bytes = Vec::new();
    std::fs::File::open(file)
        .and_then(|f| std::io::Read::read_to_end(&mut std::io::Read::take(f, MAX_CA_FILE + 1), &mut bytes))
        .map_err(|e| bad(format!("cannot read it: {e}")))?;
    if bytes.len() as u64 > MAX_CA_FILE {
        return Err(bad(format!("larger than {MAX_CA_FILE} bytes")));
    }
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(format!("not PEM: {e:?}")))?;
    if certs.is_empty() {
        return Err(bad("no PEM certificate (-----BEGIN CERTIFICATE-----) in it".into()));
    }
    let mut roots = rustls::RootCertStore::empty();
    for cert in &certs {
        roots.add(cert.clone()).map_err(|e| bad(format!("a certificate rustls cannot use as a CA: {e}")))?;
    }
    Ok(certs)
}

fn interval(key: &str, value: Duration) -> Result<(), String> {
    if (MIN_INTERVAL..=MAX_INTERVAL).contains(&value) {
        Ok(())
    } else {
        Err(format!("key `{key}`: {} is out of range (100ms to 1h)", humantime::format_duration(value)))
    }
}

fn threshold(key: &str, value: u32) -> Result<(), String> {
    if (1..=MAX_THRESHOLD).contains(&value) {
        Ok(())
    } else {
        Err(format!("key `{key}`: {value} is out of range (1 to {MAX_THRESHOLD})"))
    }
}

fn exec(key: &str, argv: &[String]) -> Result<Vec<String>, String> {
    let Some(program) = argv.first() else {
        return Err(format!("key `{key}`: must name a program (e.g. [\"/usr/local/bin/check\", \"--quick\"])"));
    };
    if argv.len() > MAX_EXEC_ARGS {
        return Err(format!("key `{key}`: {} arguments, more than {MAX_EXEC_ARGS}", argv.len()));
    }
    for (i, arg) in argv.iter().enumerate() {
        super::check_text(&format!("{key}[{i}]"), arg.as_bytes())?;
    }
    if !Path::new(program).is_absolute() {
        return Err(format!("key `{key}`: {program:?} is not an absolute path"));
    }
    Ok(argv.to_vec())
}

/// An `http://` or `https://` URL: host (a name, an IPv4 address or an
/// IPv6 one in brackets), an optional port, and a path. An https one
/// trusts the system's CAs until `ca_file` says otherwise.
fn http(key: &str, url: &str) -> Result<Check, String> {
    target_text(key, url)?;
    let bad =
        |why: &str| format!("key `{key}`: {url:?} is not an http URL: {why} (e.g. \"http://127.0.0.1:8080/healthz\")");
    let scheme = |s: &str| url.get(..s.len()).filter(|head| head.eq_ignore_ascii_case(s)).map(|_| &url[s.len()..]);
    let (tls, rest, default_port) = match (scheme("http://"), scheme("https://")) {
        (Some(rest), _) => (None, rest, 80),
        (None, Some(rest)) => (Some(Trust::System), rest, 443),
        (None, None) => return Err(bad("it must start with http:// or https://")),
    };
    let (authority, path) = match rest.find(['/', '?']) {
        Some(i) if rest.as_bytes()[i] == b'/' => (&rest[..i], rest[i..].to_string()),
        Some(i) => (&rest[..i], format!("/{}", &rest[i..])),
        None => (rest, "/".to_string()),
    };
    let path = path.split('#').next().unwrap_or("/").to_string();
    if authority.contains('@') {
        return Err(bad("credentials in the URL are not supported"));
    }
    let (host, port) = if authority.ends_with(']') || !authority.contains(':') {
        (authority.trim_start_matches('[').trim_end_matches(']').to_string(), default_port)
    } else {
        host_port(authority).ok_or_else(|| bad("bad port"))?
    };
    if host.is_empty() || !host.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '_')) {
        return Err(bad("bad host"));
    }
    if !path.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(bad("the path has spaces or non-ASCII bytes (percent-encode them)"));
    }
    Ok(Check::Http { tls, host, port, path })
}

fn target_text(key: &str, text: &str) -> Result<(), String> {
    if text.len() > MAX_TARGET || text.bytes().any(|b| b.is_ascii_control()) {
        return Err(format!("key `{key}`: longer than {MAX_TARGET} bytes or has control characters"));
    }
    Ok(())
}

/// `HOST:PORT` or `[V6]:PORT`, port 1 to 65535.
fn host_port(text: &str) -> Option<(String, u16)> {
    let (host, port) = text.rsplit_once(':')?;
    let port: u16 = port.parse().ok().filter(|p| *p != 0)?;
    let host = match host.strip_prefix('[') {
        Some(v6) => v6.strip_suffix(']')?,
        None if host.contains(':') => return None,
        None => host,
    };
    (!host.is_empty()).then(|| (host.to_string(), port))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn parse(group: &str) -> Result<Config, String> {
        let text = format!("[groups.web]\ncommand = \"/bin/true\"\n{group}");
        Config::parse(&text, Path::new("/etc/corral/corral.toml")).map_err(|e| e.to_string())
    }

    fn liveness(body: &str) -> Result<Check, String> {
        let config = parse(&format!("[groups.web.health.liveness]\n{body}"))?;
        Ok(config.groups["web"].health.liveness.as_ref().and_then(|p| p.check.clone()).expect("a checked probe"))
    }

    #[test]
    fn http_urls_are_taken_apart_or_refused_naming_key_and_file() {
        assert_eq!(
            liveness("http = \"http://127.0.0.1:8080/healthz?deep=1\""),
            Ok(Check::Http { tls: None, host: "127.0.0.1".into(), port: 8080, path: "/healthz?deep=1".into() })
        );
        assert_eq!(
            liveness("http = \"HTTP://[::1]\""),
            Ok(Check::Http { tls: None, host: "::1".into(), port: 80, path: "/".into() })
        );
        for (url, why) in [
            ("ftp://x/", "must start with http:// or https://"),
            ("https://u@h/", "credentials"),
            ("http://h:0/", "bad port"),
            ("http://h:99999/", "bad port"),
            ("http:///x", "bad host"),
            ("http://u:p@h/", "credentials"),
            ("http://h/a b", "spaces"),
        ] {
            let err = liveness(&format!("http = {url:?}")).expect_err(url);
            assert!(err.contains("/etc/corral/corral.toml"), "{err}");
            assert!(err.contains("key `groups.web.health.liveness.http`"), "{err}");
            assert!(err.contains(why), "{url}: {err}");
        }
    }

    #[test]
    fn https_urls_trust_the_system_store_or_their_ca_file() {
        let check = liveness("http = \"https://localhost/ready\"").expect("https");
        assert_eq!(
            check,
            Check::Http { tls: Some(Trust::System), host: "localhost".into(), port: 443, path: "/ready".into() }
        );
        assert_eq!(check.describe(), "https://localhost:443/ready");

        let dir = tempfile::tempdir().unwrap();
        let ca = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap().cert;
        let pem = dir.path().join("ca.pem");
        std::fs::write(&pem, ca.pem()).unwrap();
        let with_ca = liveness(&format!("http = \"https://h:8443/\"\nca_file = {pem:?}")).expect("a CA file");
        assert_eq!(
            with_ca,
            Check::Http {
                tls: Some(Trust::Ca(vec![ca.der().clone()])),
                host: "h".into(),
                port: 8443,
                path: "/".into()
            }
        );
    }

    #[test]
    fn a_ca_file_that_is_missing_or_not_pem_or_for_plain_http_is_refused_naming_key_and_file() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let garbage = dir.path().join("garbage.pem");
        std::fs::write(&garbage, "not a certificate\n").unwrap();
        let big = dir.path().join("big.pem");
        std::fs::write(&big, vec![b'x'; (MAX_CA_FILE + 1) as usize]).unwrap();
        for (file, why) in
            [(&missing, "cannot read it"), (&garbage, "no PEM certificate"), (&big, "larger than 1048576 bytes")]
        {
            let err = liveness(&format!("http = \"https://h/\"\nca_file = {file:?}")).expect_err(why);
            assert!(err.contains("/etc/corral/corral.toml"), "{err}");
            assert!(err.contains("key `groups.web.health.liveness.ca_file`"), "{err}");
            assert!(err.contains(&file.display().to_string()) && err.contains(why), "{err}");
        }
        let relative = liveness("http = \"https://h/\"\nca_file = \"ca.pem\"").expect_err("relative");
        assert!(relative.contains("/etc/corral/ca.pem: cannot read it"), "from the config's directory: {relative}");
        let plain = liveness(&format!("http = \"http://h/\"\nca_file = {garbage:?}")).expect_err("plain http");
        assert!(plain.contains("key `groups.web.health.liveness.ca_file`: only an https probe"), "{plain}");
    }

    #[test]
    fn tcp_addresses_need_a_host_and_a_port() {
        assert_eq!(liveness("tcp = \"localhost:80\""), Ok(Check::Tcp { host: "localhost".into(), port: 80 }));
        assert_eq!(liveness("tcp = \"[::1]:9\""), Ok(Check::Tcp { host: "::1".into(), port: 9 }));
        for addr in ["localhost", ":80", "::1:80", "h:0"] {
            let err = liveness(&format!("tcp = {addr:?}")).expect_err(addr);
            assert!(err.contains("key `groups.web.health.liveness.tcp`"), "{err}");
        }
    }

    #[test]
    fn a_probe_has_one_check_and_a_timeout_within_its_interval() {
        let both = liveness("tcp = \"h:1\"\nhttp = \"http://h/\"").expect_err("two checks");
        assert!(both.contains("exactly one of exec, http and tcp (2 given)"), "{both}");
        let none = liveness("interval = \"1s\"").expect_err("no check");
        assert!(none.contains("(0 given)"), "{none}");
        let over = liveness("tcp = \"h:1\"\ninterval = \"1s\"\ntimeout = \"2s\"").expect_err("timeout over interval");
        assert!(
            over.contains("key `groups.web.health.liveness.timeout`") && over.contains("up to the probe's interval")
        );
        let zero = liveness("tcp = \"h:1\"\ninterval = \"0s\"").expect_err("zero interval");
        assert!(zero.contains("key `groups.web.health.liveness.interval`"), "{zero}");
        let relative = liveness("exec = [\"check\"]").expect_err("relative program");
        assert!(relative.contains("not an absolute path"), "{relative}");
        let empty = liveness("exec = []").expect_err("no program");
        assert!(empty.contains("must name a program"), "{empty}");
    }

    #[test]
    fn pings_are_for_protocol_workers_and_readiness_probes_for_signal_workers() {
        let err = parse("[groups.web.ping]\n").expect_err("signal mode");
        assert!(err.contains("key `groups.web.ping`"), "{err}");
        let config = parse("stop_mode = \"protocol\"\n[groups.web.ping]\n").expect("pings with defaults");
        assert_eq!(config.groups["web"].ping, Some(PingConfig { interval: Duration::from_secs(10), misses: 3 }));
        assert_eq!(parse("").expect("no table").groups["web"].ping, None, "pings are off unless configured");
        let err =
            parse("stop_mode = \"protocol\"\n[groups.web.health.readiness]\ntcp = \"h:1\"\n").expect_err("protocol");
        assert!(err.contains("key `groups.web.health.readiness`"), "{err}");
    }
}
