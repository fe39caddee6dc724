//! The config parser: command-line flags and the `--config` (TOML) or
//! `--config-file` (etcd's YAML) file, as `main` reads them, then the
//! checks made before anything is bound or opened.
//!
//! Input: the arguments separated by NUL bytes, then two NUL bytes, then
//! the file's text; an argument `@FILE` stands for the file's path (so
//! `--config\0@FILE\0\0name = "x"` reads a TOML file).
use std::collections::HashMap;

use cairn_agent::config::{Command, Config};

pub fn config(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let (args, file) = text.split_once("\0\0").unwrap_or((&text, ""));
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("cairn.conf");
    std::fs::write(&path, file).expect("write the config file");
    let path = path.to_string_lossy();
    let args = std::iter::once("cairn".to_string()).chain(
        args.split('\0')
            .filter(|a| !a.is_empty())
            .map(|a| a.replace("@FILE", &path)),
    );
    let Ok(Command::Run(cfg)) = Config::from_args_env(args, &HashMap::new()) else {
        return;
    };
    let _ = cfg.validate();
    let _ = cairn_agent::apps::check(&cfg);
}
