//! `cairn service list|register|deregister|pass|fail`: this host's services
//! through the agent's local HTTP API (`cairn_services::http`), as
//! `consul services register` and `consul services deregister` do.
//!
//! The agent is `--agent URL` (`http://127.0.0.1:2379`, or `unix:/path` for
//! the local socket), else `$CAIRN_AGENT`, else `http://127.0.0.1:2379`.
use std::io::{Read, Write};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use cairn_services::{CheckDef, Listed, ServiceDef};

const USAGE: &str = "usage:
  cairn service list [--agent URL] [--json]
  cairn service register [--agent URL] (FILE.json | --name N --address A [--port P]
        [--id ID] [--tag T]... [--weight W] [--priority P] [--domain D] [--ttl 10s]
        [--check-http URL | --check-tcp HOST:PORT | --check-command CMD | --check-ttl 30s]
        [--interval 10s] [--timeout 5s])
  cairn service deregister [--agent URL] ID
  cairn service pass|fail [--agent URL] ID [NOTE]";

pub fn main(args: &[String]) -> ExitCode {
    match run(args) {
        Ok(out) => {
            if !out.is_empty() {
                println!("{out}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("cairn service: {e:#}");
            ExitCode::from(if e.downcast_ref::<Usage>().is_some() {
                2
            } else {
                1
            })
        }
    }
}

/// A command line that cannot be understood (exit status 2).
#[derive(Debug)]
struct Usage(String);

impl std::fmt::Display for Usage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}\n{USAGE}", self.0)
    }
}

impl std::error::Error for Usage {}

fn usage(msg: impl Into<String>) -> anyhow::Error {
    Usage(msg.into()).into()
}

fn run(args: &[String]) -> anyhow::Result<String> {
    let Some(verb) = args.first() else {
        return Err(usage("no command"));
    };
    if matches!(verb.as_str(), "-h" | "--help" | "help") {
        return Ok(USAGE.into());
    }
    let mut agent = std::env::var("CAIRN_AGENT").unwrap_or_else(|_| "http://127.0.0.1:2379".into());
    let mut flags: Vec<(String, String)> = Vec::new();
    let mut json = false;
    let mut positional = Vec::new();
    let mut it = args[1..].iter();
    while let Some(a) = it.next() {
        if a == "--json" {
            json = true;
        } else if let Some(f) = a.strip_prefix("--") {
            let (name, value) = match f.split_once('=') {
                Some((n, v)) => (n.to_string(), v.to_string()),
                None => (
                    f.to_string(),
                    it.next()
                        .ok_or_else(|| usage(format!("--{f} needs a value")))?
                        .clone(),
                ),
            };
            if name == "agent" {
                agent = value;
            } else {
                flags.push((name, value));
            }
        } else {
            positional.push(a.clone());
        }
    }
    let only = |allowed: &[&str]| -> anyhow::Result<()> {
        match flags.iter().find(|(n, _)| !allowed.contains(&n.as_str())) {
            Some((n, _)) => Err(usage(format!("unknown flag --{n} for `service {verb}`"))),
            None => Ok(()),
        }
    };
    match verb.as_str() {
        "list" => {
            only(&[])?;
            let (_, body) = expect_ok(request(&agent, "GET", "/v1/services", b"")?)?;
            if json {
                return Ok(body);
            }
            let list: Vec<Listed> =
                serde_json::from_str(&body).context("the agent's answer is not a service list")?;
            Ok(table(&list))
        }
        "register" => {
            let def = if let Some(file) = positional.first() {
                only(&[])?;
                let text = std::fs::read(file).with_context(|| format!("reading {file}"))?;
                serde_json::from_slice::<ServiceDef>(&text)
                    .with_context(|| format!("{file}: not a service definition"))?
            } else {
                def_from_flags(&flags)?
            };
            // Refuse what the agent would refuse, with the same words, before
            // sending anything.
            let service = def.clone().validate()?;
            let body = serde_json::to_vec(&def)?;
            expect_ok(request(&agent, "PUT", "/v1/service/register", &body)?)?;
            Ok(format!(
                "registered service {:?} (key {})",
                service.id,
                service.key("<node>")
            ))
        }
        "deregister" => {
            only(&[])?;
            let [id] = positional.as_slice() else {
                return Err(usage("deregister takes one service id"));
            };
            expect_ok(request(
                &agent,
                "PUT",
                &format!("/v1/service/deregister/{id}"),
                b"",
            )?)?;
            Ok(format!("deregistered service {id:?}"))
        }
        "pass" | "fail" => {
            only(&[])?;
            let (id, note) = match positional.as_slice() {
                [id] => (id, String::new()),
                [id, note] => (id, note.clone()),
                _ => {
                    return Err(usage(format!(
                        "{verb} takes a service id and an optional note"
                    )));
                }
            };
            expect_ok(request(
                &agent,
                "PUT",
                &format!("/v1/service/{id}/{verb}"),
                note.as_bytes(),
            )?)?;
            Ok(String::new())
        }
        other => Err(usage(format!("unknown command {other:?}"))),
    }
}

fn def_from_flags(flags: &[(String, String)]) -> anyhow::Result<ServiceDef> {
    let mut def = ServiceDef {
        name: String::new(),
        id: None,
        address: String::new(),
        port: 0,
        tags: Vec::new(),
        weight: 0,
        priority: 0,
        domain: "skydns.local.".into(),
        path: cairn_view::skydns::DEFAULT_PATH.into(),
        ttl: None,
        check: None,
    };
    let mut check = CheckDef::default();
    let number = |n: &str, v: &str| -> anyhow::Result<i64> {
        v.parse()
            .map_err(|_| usage(format!("--{n} {v:?}: not a number")))
    };
    for (n, v) in flags {
        match n.as_str() {
            "name" => def.name = v.clone(),
            "id" => def.id = Some(v.clone()),
            "address" => def.address = v.clone(),
            "port" => {
                def.port = u16::try_from(number(n, v)?)
                    .map_err(|_| usage(format!("--port {v}: not a port (0-65535)")))?
            }
            "tag" => def.tags.push(v.clone()),
            "weight" => def.weight = number(n, v)? as i32,
            "priority" => def.priority = number(n, v)? as i32,
            "domain" => def.domain = v.clone(),
            "path" => def.path = v.clone(),
            "ttl" => def.ttl = Some(v.clone()),
            "check-http" => check.http = Some(v.clone()),
            "check-tcp" => check.tcp = Some(v.clone()),
            "check-command" => check.command = Some(v.clone()),
            "check-ttl" => check.ttl = Some(v.clone()),
            "interval" => check.interval = Some(v.clone()),
            "timeout" => check.timeout = Some(v.clone()),
            other => {
                return Err(usage(format!(
                    "unknown flag --{other} for `service register`"
                )));
            }
        }
    }
    if def.name.is_empty() {
        return Err(usage("register needs --name (or a JSON file)"));
    }
    if def.address.is_empty() {
        return Err(usage("register needs --address"));
    }
    if check != CheckDef::default() {
        def.check = Some(check);
    }
    Ok(def)
}

fn table(list: &[Listed]) -> String {
    let mut rows = vec![[
        "ID".to_string(),
        "NAME".into(),
        "ADDRESS".into(),
        "PORT".into(),
        "CHECK".into(),
        "REGISTERED".into(),
        "KEY".into(),
    ]];
    for l in list {
        rows.push([
            l.id.clone(),
            l.service.name.clone(),
            l.service.address.clone(),
            l.service.port.to_string(),
            if l.passing { "passing" } else { "failing" }.into(),
            l.registered.to_string(),
            l.key.clone(),
        ]);
    }
    let widths: Vec<usize> = (0..7)
        .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
        .collect();
    rows.iter()
        .map(|r| {
            r.iter()
                .zip(&widths)
                .map(|(c, w)| format!("{c:w$}"))
                .collect::<Vec<_>>()
                .join("  ")
                .trim_end()
                .to_string()
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn expect_ok((status, body): (u16, String)) -> anyhow::Result<(u16, String)> {
    if (200..300).contains(&status) {
        return Ok((status, body));
    }
    let msg = serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(String::from))
        .unwrap_or(body);
    bail!("the agent answered {status}: {msg}")
}

/// One HTTP/1.1 request to the agent over TCP or its Unix socket.
pub(crate) fn request(
    agent: &str,
    method: &str,
    path: &str,
    body: &[u8],
) -> anyhow::Result<(u16, String)> {
    let head = |host: &str| {
        format!(
            "{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )
    };
    let timeout = Some(Duration::from_secs(10));
    let mut raw = Vec::new();
    if let Some(sock) = agent.strip_prefix("unix:") {
        let sock = sock.trim_start_matches("//");
        let mut s = std::os::unix::net::UnixStream::connect(sock)
            .with_context(|| format!("connecting to the agent at {agent}"))?;
        s.set_read_timeout(timeout)?;
        s.write_all(head("localhost").as_bytes())?;
        s.write_all(body)?;
        s.read_to_end(&mut raw)
            .with_context(|| format!("reading the agent's answer ({agent})"))?;
    } else {
        let Some(hostport) = agent
            .strip_prefix("http://")
            .map(|r| r.trim_end_matches('/'))
        else {
            return Err(usage(format!(
                "--agent {agent:?}: expected http://host:port or unix:/path"
            )));
        };
        let mut s = std::net::TcpStream::connect(hostport)
            .with_context(|| format!("connecting to the agent at {agent}"))?;
        s.set_read_timeout(timeout)?;
        s.write_all(head(hostport).as_bytes())?;
        s.write_all(body)?;
        s.read_to_end(&mut raw)
            .with_context(|| format!("reading the agent's answer ({agent})"))?;
    }
    let text = String::from_utf8_lossy(&raw);
    let (headers, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow::anyhow!("the agent's answer is not HTTP"))?;
    let status: u16 = headers
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("the agent's answer has no status"))?;
    let chunked = headers
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_string()
    };
    Ok((status, body))
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn register_flags_make_a_definition() {
        let d = def_from_flags(&flags(&[
            ("name", "web"),
            ("address", "10.0.0.1"),
            ("port", "80"),
            ("tag", "a"),
            ("tag", "b"),
            ("check-ttl", "30s"),
        ]))
        .unwrap();
        assert_eq!(d.name, "web");
        assert_eq!(d.port, 80);
        assert_eq!(d.tags, vec!["a", "b"]);
        assert_eq!(d.check.unwrap().ttl.as_deref(), Some("30s"));
        let e = def_from_flags(&flags(&[
            ("name", "web"),
            ("address", "x"),
            ("port", "99999"),
        ]))
        .unwrap_err();
        assert!(e.to_string().contains("--port 99999"), "{e}");
        let e = def_from_flags(&flags(&[("name", "web"), ("adress", "x")])).unwrap_err();
        assert!(e.to_string().contains("--adress"), "{e}");
        let e = def_from_flags(&flags(&[("name", "web")])).unwrap_err();
        assert!(e.to_string().contains("--address"), "{e}");
    }

    #[test]
    fn chunked_bodies_are_joined() {
        assert_eq!(dechunk("3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"), "abcde");
    }
}
