//! `cairn render --once | --dry-run [--config FILE] [--endpoints URL]`:
//! renders the config's `[[template]]` blocks once from a running agent
//! (consul-template's `-once` and `-dry`, confd's `-onetime` and `-noop`).
//!
//! `--once` writes every file (checks and commands as the agent runs them)
//! and exits non-zero if any template failed; `--dry-run` prints each
//! rendered template on stdout (`> destination`, then the text) and writes
//! nothing. The agent is `--endpoints` (`http://127.0.0.1:2379`, or
//! `unix:/path` for the local socket); the config is `--config`, else
//! `$CAIRN_CONFIG`.
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use cairn_render::{Mode, RenderConfig};

const USAGE: &str = "usage: cairn render (--once | --dry-run) [--config FILE] \
[--endpoints http://127.0.0.1:2379 | unix:/path] [--timeout 30s]";

struct Opts {
    mode: Mode,
    config: PathBuf,
    endpoint: String,
    timeout: Duration,
}

fn parse(args: &[String]) -> anyhow::Result<Opts> {
    let mut mode = None;
    let mut config = std::env::var("CAIRN_CONFIG").ok().map(PathBuf::from);
    let mut endpoint = "http://127.0.0.1:2379".to_string();
    let mut timeout = Duration::from_secs(30);
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let (name, inline) = match a.split_once('=') {
            Some((n, v)) => (n, Some(v.to_string())),
            None => (a.as_str(), None),
        };
        let mut value = || -> anyhow::Result<String> {
            match &inline {
                Some(v) => Ok(v.clone()),
                None => it
                    .next()
                    .cloned()
                    .with_context(|| format!("{name} needs a value")),
            }
        };
        match name.trim_start_matches('-') {
            "once" if inline.is_none() => mode = Some(Mode::Write),
            "dry-run" | "dry" if inline.is_none() => mode = Some(Mode::DryRun),
            "config" => config = Some(PathBuf::from(value()?)),
            "endpoints" | "endpoint" => {
                let v = value()?;
                // The first of a list, as etcdctl's flag takes one.
                endpoint = v.split(',').next().unwrap_or_default().trim().to_string();
            }
            "timeout" => {
                let v = value()?;
                timeout = cairn_view::parse_duration(&v)
                    .with_context(|| format!("--timeout {v:?} is not a duration"))?;
            }
            _ => bail!("unknown argument {a:?}"),
        }
    }
    let Some(mode) = mode else {
        bail!("give --once or --dry-run (the agent itself renders continuously)");
    };
    let config = config.context("give --config FILE (or set CAIRN_CONFIG)")?;
    if endpoint.is_empty() {
        bail!("--endpoints is empty");
    }
    Ok(Opts {
        mode,
        config,
        endpoint,
        timeout,
    })
}

pub fn main(args: &[String]) -> ExitCode {
    if args.iter().any(|a| a == "-h" || a == "--help") {
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    let o = match parse(args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("cairn render: {e:#}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CAIRN_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .try_init();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cairn render: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(o)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("cairn render: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(o: Opts) -> anyhow::Result<bool> {
    let cfg = RenderConfig::from_file(&o.config)?
        .with_context(|| format!("{} has no [[template]]", o.config.display()))?;
    let view = cairn_view::View::connect(&o.endpoint)?;
    let r = cairn_render::render_once(view, &cfg, o.mode, o.timeout).await?;
    for (name, e) in &r.failed {
        eprintln!("cairn render: {name}: {e}");
    }
    if o.mode == Mode::Write {
        eprintln!(
            "cairn render: {} templates at revision {}: {} written, {} unchanged, {} failed",
            cfg.templates.len(),
            r.revision,
            r.written,
            r.rendered.saturating_sub(r.written),
            r.failed.len()
        );
    }
    Ok(r.failed.is_empty())
}
