//! `cairn top`: a live view of a member's key prefixes by requests/s,
//! stored bytes and keys, read from its `/metrics` (the
//! `cairn_prefix_*` families, see `prefix_stats.rs`).
//!
//! ```text
//! cairn top [--endpoints 127.0.0.1:2379] [--interval 2s] [--sort requests|bytes|keys]
//!           [--limit 20] [--once]
//! ```
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::ExitCode;
use std::time::{Duration, Instant};

#[derive(Debug, Default, Clone, Copy)]
struct Row {
    requests: f64,
    bytes: f64,
    keys: f64,
}

struct Opts {
    endpoint: String,
    interval: Duration,
    sort: String,
    limit: usize,
    once: bool,
}

fn parse(args: &[String]) -> Result<Opts, String> {
    let mut o = Opts {
        endpoint: "127.0.0.1:2379".into(),
        interval: Duration::from_secs(2),
        sort: "requests".into(),
        limit: 20,
        once: false,
    };
    let mut i = 0;
    while i < args.len() {
        let (flag, inline) = match args[i].split_once('=') {
            Some((f, v)) => (f.to_string(), Some(v.to_string())),
            None => (args[i].clone(), None),
        };
        i += 1;
        let mut value = || -> Result<String, String> {
            if let Some(v) = &inline {
                return Ok(v.clone());
            }
            let v = args
                .get(i)
                .cloned()
                .ok_or_else(|| format!("flag needs an argument: {flag}"))?;
            i += 1;
            Ok(v)
        };
        match flag.trim_start_matches('-') {
            "endpoints" => {
                let v = value()?;
                let first = v.split(',').next().unwrap_or_default();
                o.endpoint = first
                    .trim_start_matches("http://")
                    .trim_end_matches('/')
                    .to_string();
            }
            "interval" => {
                let v = value()?;
                o.interval = crate::config::parse_duration(&v)
                    .filter(|d| !d.is_zero())
                    .ok_or_else(|| format!("invalid value {v:?} for --interval: not a duration"))?;
            }
            "sort" => {
                let v = value()?;
                if !["requests", "bytes", "keys"].contains(&v.as_str()) {
                    return Err(format!(
                        "invalid value {v:?} for --sort: requests, bytes or keys"
                    ));
                }
                o.sort = v;
            }
            "limit" => {
                let v = value()?;
                o.limit = v
                    .parse()
                    .map_err(|_| format!("invalid value {v:?} for --limit: not a number"))?;
            }
            "once" => o.once = true,
            _ => return Err(format!("flag provided but not defined: {flag}")),
        }
    }
    Ok(o)
}

/// `GET /metrics` over plain HTTP/1.1.
fn scrape(endpoint: &str) -> Result<String, String> {
    let mut s = TcpStream::connect(endpoint).map_err(|e| format!("{endpoint}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: {endpoint}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| format!("{endpoint}: {e}"))?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)
        .map_err(|e| format!("{endpoint}: {e}"))?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("{endpoint}: not an HTTP answer"))?;
    if !head.starts_with("HTTP/1.1 200") {
        return Err(format!("{endpoint}: {}", head.lines().next().unwrap_or("")));
    }
    Ok(body.to_string())
}

fn rows(metrics: &str) -> HashMap<String, Row> {
    let mut out: HashMap<String, Row> = HashMap::new();
    for line in metrics.lines() {
        let Some(rest) = line.strip_prefix("cairn_prefix_") else {
            continue;
        };
        let Some((name, rest)) = rest.split_once("{prefix=\"") else {
            continue;
        };
        let Some((prefix, value)) = rest.rsplit_once("\"} ") else {
            continue;
        };
        let Ok(v) = value.trim().parse::<f64>() else {
            continue;
        };
        let prefix = prefix.replace("\\\"", "\"").replace("\\\\", "\\");
        let r = out.entry(prefix).or_default();
        match name {
            "requests_total" => r.requests = v,
            "bytes" => r.bytes = v,
            "keys" => r.keys = v,
            _ => {}
        }
    }
    out
}

fn human(bytes: f64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < units.len() {
        v /= 1024.0;
        u += 1;
    }
    format!("{v:.1} {}", units[u])
}

/// The table for two scrapes `dt` apart.
fn table(before: &HashMap<String, Row>, after: &HashMap<String, Row>, dt: f64, o: &Opts) -> String {
    let mut lines: Vec<(String, f64, f64, f64)> = after
        .iter()
        .map(|(p, r)| {
            let was = before.get(p).map(|b| b.requests).unwrap_or(r.requests);
            (p.clone(), (r.requests - was).max(0.0) / dt, r.bytes, r.keys)
        })
        .collect();
    let key = |l: &(String, f64, f64, f64)| match o.sort.as_str() {
        "bytes" => l.2,
        "keys" => l.3,
        _ => l.1,
    };
    lines.sort_by(|a, b| key(b).total_cmp(&key(a)).then(a.0.cmp(&b.0)));
    let mut out = format!(
        "cairn top: {}  (every {:?}, by {})\n{:<40} {:>12} {:>12} {:>10}\n",
        o.endpoint, o.interval, o.sort, "PREFIX", "REQ/S", "BYTES", "KEYS"
    );
    for (p, rps, bytes, keys) in lines.into_iter().take(o.limit) {
        out.push_str(&format!(
            "{:<40} {:>12.1} {:>12} {:>10}\n",
            p,
            rps,
            human(bytes),
            keys as i64
        ));
    }
    out
}

pub fn main(args: &[String]) -> ExitCode {
    let o = match parse(args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("cairn top: {e}");
            return ExitCode::from(2);
        }
    };
    let mut before = match scrape(&o.endpoint) {
        Ok(m) => rows(&m),
        Err(e) => {
            eprintln!("cairn top: {e}");
            return ExitCode::FAILURE;
        }
    };
    if before.is_empty() {
        eprintln!(
            "cairn top: {} reports no prefixes (started with --metrics-prefix-depth 0?)",
            o.endpoint
        );
        return ExitCode::FAILURE;
    }
    let mut at = Instant::now();
    loop {
        std::thread::sleep(o.interval);
        let after = match scrape(&o.endpoint) {
            Ok(m) => rows(&m),
            Err(e) => {
                eprintln!("cairn top: {e}");
                return ExitCode::FAILURE;
            }
        };
        let dt = at.elapsed().as_secs_f64();
        at = Instant::now();
        let t = table(&before, &after, dt, &o);
        if o.once {
            print!("{t}");
            return ExitCode::SUCCESS;
        }
        // Clear the screen and draw again.
        print!("\x1b[2J\x1b[H{t}");
        let _ = std::io::stdout().flush();
        before = after;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_sorts_by_rate_and_reads_the_metrics_text() {
        let m1 = "cairn_prefix_requests_total{prefix=\"a/\"} 10\ncairn_prefix_requests_total{prefix=\"b/\"} 0\n";
        let m2 = "# HELP x\ncairn_prefix_requests_total{prefix=\"a/\"} 12\ncairn_prefix_requests_total{prefix=\"b/\"} 20\ncairn_prefix_bytes{prefix=\"b/\"} 2048\ncairn_prefix_keys{prefix=\"b/\"} 3\n";
        let o = parse(&["--once".into()]).unwrap();
        let t = table(&rows(m1), &rows(m2), 2.0, &o);
        let lines: Vec<&str> = t.lines().collect();
        assert!(
            lines[2].starts_with("b/") && lines[2].contains("10.0"),
            "{t}"
        );
        assert!(
            lines[2].contains("2.0 KiB") && lines[2].ends_with(" 3"),
            "{t}"
        );
        assert!(
            lines[3].starts_with("a/") && lines[3].contains("1.0"),
            "{t}"
        );
        assert!(parse(&["--sort".into(), "colour".into()]).is_err());
        assert!(parse(&["--bogus".into()]).is_err());
    }
}
