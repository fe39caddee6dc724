//! Health checks, as Consul's agent runs them: `http` (a 2xx answer),
//! `tcp` (a connection), `command` (exit status 0) and `ttl` (the
//! application reports `pass` at least once per TTL).
use std::time::Duration;

use anyhow::bail;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A check as configured: exactly one of `http`, `tcp`, `command`, `ttl`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckDef {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<String>,
    /// How often the check runs (default "10s", as Consul).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
    /// How long one run may take (default "5s").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CheckKind {
    /// `host:port` and the request path of an `http://` URL.
    Http {
        host: String,
        path: String,
    },
    Tcp(String),
    Command(String),
    Ttl(Duration),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Check {
    pub kind: CheckKind,
    pub interval: Duration,
    pub timeout: Duration,
}

fn duration(field: &str, v: &Option<String>, default: Duration) -> anyhow::Result<Duration> {
    match v {
        None => Ok(default),
        Some(s) => cairn_view::parse_duration(s)
            .filter(|d| !d.is_zero())
            .ok_or_else(|| anyhow::anyhow!("{field} {s:?} is not a duration like 10s or 500ms")),
    }
}

impl CheckDef {
    pub fn validate(&self) -> anyhow::Result<Check> {
        let given = [&self.http, &self.tcp, &self.command, &self.ttl]
            .iter()
            .filter(|v| v.is_some())
            .count();
        if given != 1 {
            bail!("give exactly one of http, tcp, command, ttl");
        }
        let kind = if let Some(url) = &self.http {
            let Some(rest) = url.strip_prefix("http://") else {
                bail!("http {url:?}: only http:// URLs are checked");
            };
            let (host, path) = match rest.find('/') {
                Some(i) => (&rest[..i], &rest[i..]),
                None => (rest, "/"),
            };
            if host.is_empty() {
                bail!("http {url:?}: no host");
            }
            let host = if host.contains(':') {
                host.to_string()
            } else {
                format!("{host}:80")
            };
            CheckKind::Http {
                host,
                path: path.to_string(),
            }
        } else if let Some(addr) = &self.tcp {
            if !addr.contains(':') {
                bail!("tcp {addr:?}: expected host:port");
            }
            CheckKind::Tcp(addr.clone())
        } else if let Some(cmd) = &self.command {
            if cmd.trim().is_empty() {
                bail!("command is empty");
            }
            CheckKind::Command(cmd.clone())
        } else {
            CheckKind::Ttl(duration("ttl", &self.ttl, Duration::ZERO)?)
        };
        let interval = match &kind {
            // A TTL check is looked at when a report comes and when the TTL
            // runs out.
            CheckKind::Ttl(ttl) => *ttl,
            _ => duration("interval", &self.interval, Duration::from_secs(10))?,
        };
        Ok(Check {
            kind,
            interval,
            timeout: duration("timeout", &self.timeout, Duration::from_secs(5))?,
        })
    }
}

impl Check {
    /// Runs the check once (not for `ttl`): passing, and what it said.
    pub async fn run(&self) -> (bool, String) {
        let run = async {
            match &self.kind {
                CheckKind::Http { host, path } => http_get(host, path).await,
                CheckKind::Tcp(addr) => tokio::net::TcpStream::connect(addr)
                    .await
                    .map(|_| (true, format!("TCP connect {addr}: success")))
                    .map_err(|e| anyhow::anyhow!("TCP connect {addr}: {e}")),
                CheckKind::Command(cmd) => command(cmd).await,
                CheckKind::Ttl(_) => Ok((false, "a ttl check is not run".into())),
            }
        };
        match tokio::time::timeout(self.timeout, run).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => (false, format!("{e:#}")),
            Err(_) => (false, format!("timed out after {:?}", self.timeout)),
        }
    }
}

async fn http_get(host: &str, path: &str) -> anyhow::Result<(bool, String)> {
    let mut s = tokio::net::TcpStream::connect(host).await?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: cairn-check\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )
    .await?;
    let mut buf = Vec::new();
    s.take(4096).read_to_end(&mut buf).await?;
    let head = String::from_utf8_lossy(&buf);
    let line = head.lines().next().unwrap_or_default().to_string();
    let code: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("GET http://{host}{path}: not an HTTP answer"))?;
    Ok((
        (200..300).contains(&code),
        format!("GET http://{host}{path}: {line}"),
    ))
}

async fn command(cmd: &str) -> anyhow::Result<(bool, String)> {
    let out = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .kill_on_drop(true)
        .output()
        .await?;
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    text.truncate(4096);
    Ok((
        out.status.success(),
        format!("{}: {}", out.status, text.trim()),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn checks_pass_and_fail() {
        let def = |f: fn(&mut CheckDef)| {
            let mut d = CheckDef {
                timeout: Some("2s".into()),
                ..Default::default()
            };
            f(&mut d);
            d.validate().unwrap()
        };
        assert!(def(|d| d.command = Some("true".into())).run().await.0);
        let (ok, out) = def(|d| d.command = Some("echo broken; exit 2".into()))
            .run()
            .await;
        assert!(!ok && out.contains("broken"), "{out}");
        let (ok, out) = def(|d| {
            d.command = Some("sleep 5".into());
            d.timeout = Some("100ms".into());
        })
        .run()
        .await;
        assert!(!ok && out.contains("timed out"), "{out}");

        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let tcp = def(|d| d.tcp = Some("127.0.0.1:1".into()));
        assert!(!tcp.run().await.0);
        let open = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut ok_tcp = tcp.clone();
        ok_tcp.kind = CheckKind::Tcp(open.local_addr().unwrap().to_string());
        assert!(ok_tcp.run().await.0);

        // A tiny HTTP server answering 200 then 503.
        tokio::spawn(async move {
            for status in ["200 OK", "503 Service Unavailable"] {
                let (mut s, _) = l.accept().await.unwrap();
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                let _ = s
                    .write_all(format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n").as_bytes())
                    .await;
            }
        });
        let http = CheckKind::Http {
            host: addr,
            path: "/health".into(),
        };
        let mut c = def(|d| d.command = Some("true".into()));
        c.kind = http;
        let (ok, out) = c.run().await;
        assert!(ok, "{out}");
        let (ok, out) = c.run().await;
        assert!(!ok && out.contains("503"), "{out}");
    }

    #[test]
    fn urls_and_durations() {
        let d = CheckDef {
            http: Some("http://localhost/x/y".into()),
            ..Default::default()
        };
        assert_eq!(
            d.validate().unwrap().kind,
            CheckKind::Http {
                host: "localhost:80".into(),
                path: "/x/y".into()
            }
        );
        let d = CheckDef {
            http: Some("https://x".into()),
            ..Default::default()
        };
        assert!(format!("{:#}", d.validate().unwrap_err()).contains("only http://"));
        let d = CheckDef {
            ttl: Some("15s".into()),
            ..Default::default()
        };
        assert_eq!(d.validate().unwrap().interval, Duration::from_secs(15));
    }
}
