//! `cairn discovery new --size 3 --endpoints http://host:2379[,...]
//! [--token T] [--v3]`: creates a discovery token on a running cairn (or
//! etcd) cluster and prints what the new cluster's members are started
//! with: the `--discovery` URL, or with `--v3` the `--discovery-token`.
use std::process::ExitCode;

const USAGE: &str =
    "usage: cairn discovery new --size N --endpoints http://host:2379[,...] [--token NAME] [--v3]";

pub fn main(args: Vec<String>) -> ExitCode {
    match parse(&args) {
        Ok(Some(new)) => {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("cairn discovery: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match rt.block_on(new.run()) {
                Ok(out) => {
                    println!("{out}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("cairn discovery: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Ok(None) => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("cairn discovery: {e}\n{USAGE}");
            ExitCode::from(2)
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
struct New {
    size: usize,
    endpoints: Vec<String>,
    token: String,
    v3: bool,
}

fn parse(args: &[String]) -> Result<Option<New>, String> {
    match args.first().map(String::as_str) {
        Some("new") => {}
        None | Some("-h" | "--help" | "help") => return Ok(None),
        Some(other) => return Err(format!("unknown command {other:?}")),
    }
    let mut size = 3;
    let mut endpoints = Vec::new();
    let mut token = None;
    let mut v3 = false;
    let mut it = args[1..].iter();
    while let Some(a) = it.next() {
        let (flag, inline) = match a.split_once('=') {
            Some((f, v)) => (f, Some(v.to_string())),
            None => (a.as_str(), None),
        };
        let mut value = |name: &str| {
            inline
                .clone()
                .or_else(|| it.next().cloned())
                .ok_or(format!("{name} needs a value"))
        };
        match flag.trim_start_matches('-') {
            "size" => {
                let v = value("--size")?;
                size = v
                    .parse()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or(format!("--size {v:?}: not a positive number"))?;
            }
            "endpoints" => {
                endpoints = value("--endpoints")?
                    .split(',')
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
                    .collect()
            }
            "token" => token = Some(value("--token")?),
            "v3" => v3 = inline.as_deref() != Some("false"),
            "h" | "help" => return Ok(None),
            f => return Err(format!("unknown flag --{f}")),
        }
    }
    if endpoints.is_empty() {
        return Err("--endpoints is required".into());
    }
    let token = token.unwrap_or_else(|| {
        let bytes: [u8; 16] = rand::random();
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    });
    Ok(Some(New {
        size,
        endpoints,
        token,
        v3,
    }))
}

impl New {
    async fn run(&self) -> Result<String, cairn_discovery::DiscoveryError> {
        if self.v3 {
            cairn_discovery::v3::V3Registry::new(
                &self.token,
                &self.endpoints,
                cairn_discovery::tls::ClientTls::default(),
            )?
            .create(self.size)
            .await?;
            return Ok(self.token.clone());
        }
        let mut last = None;
        for ep in &self.endpoints {
            match cairn_discovery::url::new_token(ep, &self.token, self.size).await {
                Ok(url) => return Ok(url),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or(cairn_discovery::DiscoveryError::InvalidUrl))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_string).collect()
    }

    #[test]
    fn flags() {
        let n = parse(&args(
            "new --size 5 --endpoints http://a:1,http://b:2 --token t",
        ))
        .unwrap()
        .unwrap();
        assert_eq!(
            n,
            New {
                size: 5,
                endpoints: vec!["http://a:1".into(), "http://b:2".into()],
                token: "t".into(),
                v3: false
            }
        );
        let n = parse(&args("new --endpoints=http://a:1 --v3"))
            .unwrap()
            .unwrap();
        assert!(n.v3 && n.size == 3 && n.token.len() == 32);
        assert!(parse(&args("new --size 0 --endpoints http://a:1")).is_err());
        assert!(parse(&args("new")).is_err());
        assert!(parse(&args("old")).is_err());
        assert_eq!(parse(&args("")), Ok(None));
    }
}
