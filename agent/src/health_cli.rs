//! `cairn health [--agent URL] [--serializable]`: asks the agent's `/health`
//! and exits 0 only when it says `"health":"true"` — a container's
//! `HEALTHCHECK`, a script's probe. The agent is `--agent URL`
//! (`http://127.0.0.1:2379` or `unix:/path`), else `$CAIRN_AGENT`, else the
//! default socket `/run/cairn/cairn.sock` when it exists, else
//! `http://127.0.0.1:2379`.
use std::process::ExitCode;

const USAGE: &str = "usage: cairn health [--agent URL|unix:/path] [--serializable]";

pub fn main(args: &[String]) -> ExitCode {
    let mut agent = std::env::var("CAIRN_AGENT").ok();
    let mut serializable = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--agent" => match it.next() {
                Some(v) => agent = Some(v.clone()),
                None => {
                    eprintln!("cairn health: --agent needs a value\n{USAGE}");
                    return ExitCode::from(2);
                }
            },
            "--serializable" => serializable = true,
            "-h" | "--help" => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            other => match other.strip_prefix("--agent=") {
                Some(v) => agent = Some(v.to_string()),
                None => {
                    eprintln!("cairn health: unknown argument {other:?}\n{USAGE}");
                    return ExitCode::from(2);
                }
            },
        }
    }
    let agent = agent.unwrap_or_else(|| {
        if std::path::Path::new("/run/cairn/cairn.sock").exists() {
            "unix:/run/cairn/cairn.sock".into()
        } else {
            "http://127.0.0.1:2379".into()
        }
    });
    let path = if serializable {
        "/health?serializable=true"
    } else {
        "/health"
    };
    match crate::service_cli::request(&agent, "GET", path, b"") {
        Ok((status, body)) => {
            println!("{}", body.trim());
            let healthy = serde_json::from_str::<serde_json::Value>(&body)
                .is_ok_and(|v| v["health"] == "true");
            if status == 200 && healthy {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("cairn health: {e:#}");
            ExitCode::FAILURE
        }
    }
}
