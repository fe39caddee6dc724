//! A small client of etcd's v2 keys API for the black-box tests: form
//! requests over plain HTTP/1.1, answers with their status, headers and
//! JSON body.
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Output;
use std::time::Duration;

use serde_json::Value;

use crate::ETCDCTL_BIN;

/// One v2 answer.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    /// Header names in lower case.
    pub headers: HashMap<String, String>,
    pub body: String,
}

impl Answer {
    /// The body as JSON, panicking with the body when it is not.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {} {}", self.status, self.body))
    }

    /// A header as a number (`X-Etcd-Index`, ...).
    pub fn num(&self, name: &str) -> i64 {
        self.headers
            .get(&name.to_ascii_lowercase())
            .unwrap_or_else(|| panic!("no {name} header: {:?}", self.headers))
            .parse()
            .unwrap_or_else(|_| panic!("{name} is not a number: {:?}", self.headers))
    }

    pub fn etcd_index(&self) -> i64 {
        self.num("X-Etcd-Index")
    }
}

/// Sends `method path` with `form` as an `application/x-www-form-urlencoded`
/// body (none when empty), waiting at most `timeout` for the answer.
pub fn request(port: u16, method: &str, path: &str, form: &str, timeout: Duration) -> Answer {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream.set_read_timeout(Some(timeout)).expect("timeout");
    let body_headers = if form.is_empty() {
        String::new()
    } else {
        format!(
            "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n",
            form.len()
        )
    };
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n{body_headers}\r\n{form}"
    );
    stream.write_all(req.as_bytes()).expect("write");
    let mut raw = Vec::new();
    if let Err(e) = stream.read_to_end(&mut raw) {
        panic!(
            "{method} {path}: no complete answer within {timeout:?} ({e}); got {:?}",
            String::from_utf8_lossy(&raw)
        );
    }
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no header end: {:?}", String::from_utf8_lossy(&raw)));
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line: {head}"));
    let headers: HashMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut payload = raw[split + 4..].to_vec();
    if headers
        .get("transfer-encoding")
        .is_some_and(|v| v.contains("chunked"))
    {
        payload = crate::dechunk(&payload);
    }
    Answer {
        status,
        headers,
        body: String::from_utf8_lossy(&payload).to_string(),
    }
}

/// A v2 client of one endpoint's client port.
#[derive(Debug, Clone, Copy)]
pub struct V2 {
    pub port: u16,
}

impl V2 {
    pub fn new(port: u16) -> V2 {
        V2 { port }
    }

    pub fn get(&self, path: &str) -> Answer {
        request(self.port, "GET", path, "", Duration::from_secs(10))
    }

    pub fn put(&self, path: &str, form: &str) -> Answer {
        request(self.port, "PUT", path, form, Duration::from_secs(10))
    }

    pub fn post(&self, path: &str, form: &str) -> Answer {
        request(self.port, "POST", path, form, Duration::from_secs(10))
    }

    pub fn delete(&self, path: &str) -> Answer {
        request(self.port, "DELETE", path, "", Duration::from_secs(10))
    }

    /// A long poll that must be answered within `timeout`.
    pub fn wait(&self, path: &str, timeout: Duration) -> Answer {
        request(self.port, "GET", path, "", timeout)
    }

    /// `ETCDCTL_API=2 etcdctl --endpoints <this> args...`.
    pub fn etcdctl(&self, args: &[&str]) -> Output {
        std::process::Command::new(ETCDCTL_BIN)
            .env("ETCDCTL_API", "2")
            .arg(format!("--endpoints=http://127.0.0.1:{}", self.port))
            .args(args)
            .output()
            .expect("run etcdctl")
    }
}
