//! The `[[template]]` blocks and the `[render]` table of the agent's TOML
//! `--config`, parsed strictly: an unknown key or a bad value is refused
//! with the template and the key named.
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use serde::Deserialize;

/// How long `command` and `check` may run when `command_timeout` is not set.
pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// A quiet period: render `min` after the last change, but no later than
/// `max` after the first one (consul-template's `wait`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Wait {
    pub min: Duration,
    pub max: Duration,
}

/// `wait = { min = "2s", max = "10s" }`, or consul-template's string form
/// `wait = "2s"` / `wait = "2s:10s"`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum WaitDef {
    Text(String),
    Table(WaitTable),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WaitTable {
    min: String,
    #[serde(default)]
    max: Option<String>,
}

/// One `[[template]]` block as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TemplateDef {
    #[serde(default)]
    source: Option<String>,
    #[serde(default)]
    contents: Option<String>,
    destination: String,
    #[serde(default)]
    perms: Option<String>,
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    group: Option<String>,
    #[serde(default)]
    check: Option<String>,
    #[serde(default)]
    command: Option<String>,
    #[serde(default)]
    command_timeout: Option<String>,
    #[serde(default)]
    wait: Option<WaitDef>,
    #[serde(default)]
    backup: bool,
    #[serde(default)]
    left_delimiter: Option<String>,
    #[serde(default)]
    right_delimiter: Option<String>,
    #[serde(default)]
    error_on_missing_key: Option<bool>,
}

/// The `[render]` table.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct GlobalDef {
    #[serde(default)]
    wait: Option<WaitDef>,
    #[serde(default)]
    error_on_missing_key: bool,
}

/// Where a template's text comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// A file (absolute, resolved against the config's directory), watched.
    File(PathBuf),
    /// Inline `contents`.
    Inline(String),
}

/// A validated template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Template {
    pub source: Source,
    /// Absolute (resolved against the config's directory).
    pub destination: PathBuf,
    /// `None`: keep the existing file's mode, else 0644.
    pub perms: Option<u32>,
    pub user: Option<String>,
    pub group: Option<String>,
    pub check: Option<String>,
    pub command: Option<String>,
    pub command_timeout: Duration,
    pub wait: Wait,
    pub backup: bool,
    /// Custom `{{ }}` delimiters (`{% %}` and `{# #}` stay).
    pub delimiters: Option<(String, String)>,
    /// An undefined variable or attribute is an error, not an empty value.
    pub strict_undefined: bool,
}

impl Template {
    /// The name the template goes by in logs and status: its destination.
    pub fn name(&self) -> String {
        self.destination.display().to_string()
    }

    /// The template's text: inline, or read from its file now.
    pub fn text(&self) -> anyhow::Result<String> {
        match &self.source {
            Source::Inline(t) => Ok(t.clone()),
            Source::File(p) => std::fs::read_to_string(p)
                .with_context(|| format!("reading the template {}", p.display())),
        }
    }
}

/// Every template of the config, and the globals.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RenderConfig {
    pub templates: Vec<Template>,
    /// The `[render]` wait, the default of every template.
    pub wait: Wait,
    pub error_on_missing_key: bool,
}

fn duration(what: &str, v: &str) -> anyhow::Result<Duration> {
    cairn_view::parse_duration(v).ok_or_else(|| {
        anyhow::anyhow!("{what}: {v:?} is not a duration (\"500ms\", \"2s\", \"1m\")")
    })
}

impl WaitDef {
    fn parse(&self, what: &str) -> anyhow::Result<Wait> {
        let (min, max) = match self {
            WaitDef::Text(t) => match t.split_once(':') {
                Some((a, b)) => (a.to_string(), Some(b.to_string())),
                None => (t.clone(), None),
            },
            WaitDef::Table(t) => (t.min.clone(), t.max.clone()),
        };
        let min = duration(&format!("{what}.min"), &min)?;
        // consul-template's default: four times the minimum.
        let max = match max {
            Some(m) => duration(&format!("{what}.max"), &m)?,
            None => min * 4,
        };
        if max < min {
            bail!("{what}: max ({max:?}) is shorter than min ({min:?})");
        }
        Ok(Wait { min, max })
    }
}

fn parse_perms(what: &str, p: &str) -> anyhow::Result<u32> {
    let digits = p.strip_prefix("0o").unwrap_or(p);
    match u32::from_str_radix(digits, 8) {
        Ok(m) if m <= 0o7777 && !digits.is_empty() => Ok(m),
        _ => bail!("{what}: perms {p:?} is not an octal mode such as \"0644\""),
    }
}

fn nonempty(what: &str, key: &str, v: &Option<String>) -> anyhow::Result<()> {
    if let Some(v) = v
        && v.trim().is_empty()
    {
        bail!("{what}: {key} is empty");
    }
    Ok(())
}

impl TemplateDef {
    fn validate(
        self,
        what: &str,
        base: &Path,
        global: &GlobalDef,
        gwait: Wait,
    ) -> anyhow::Result<Template> {
        let source = match (self.source, self.contents) {
            (Some(_), Some(_)) => bail!("{what}: give either source or contents, not both"),
            (None, None) => bail!("{what}: needs source (a template file) or contents"),
            (Some(s), None) if s.trim().is_empty() => bail!("{what}: source is empty"),
            (Some(s), None) => Source::File(base.join(s)),
            (None, Some(c)) => Source::Inline(c),
        };
        if self.destination.trim().is_empty() {
            bail!("{what}: destination is empty");
        }
        let destination = base.join(&self.destination);
        if destination.file_name().is_none() {
            bail!(
                "{what}: destination {:?} is not a file name",
                self.destination
            );
        }
        let perms = self
            .perms
            .as_deref()
            .map(|p| parse_perms(what, p))
            .transpose()?;
        for (key, v) in [
            ("user", &self.user),
            ("group", &self.group),
            ("check", &self.check),
            ("command", &self.command),
        ] {
            nonempty(what, key, v)?;
        }
        let command_timeout = match &self.command_timeout {
            Some(t) => duration(&format!("{what}: command_timeout"), t)?,
            None => DEFAULT_COMMAND_TIMEOUT,
        };
        if command_timeout.is_zero() {
            bail!("{what}: command_timeout must be longer than 0");
        }
        let wait = match &self.wait {
            Some(w) => w.parse(&format!("{what}: wait"))?,
            None => gwait,
        };
        let delimiters = match (self.left_delimiter, self.right_delimiter) {
            (None, None) => None,
            (Some(l), Some(r)) => {
                if l.is_empty() || r.is_empty() || l == r {
                    bail!(
                        "{what}: left_delimiter and right_delimiter must be non-empty and differ"
                    );
                }
                Some((l, r))
            }
            _ => bail!("{what}: left_delimiter and right_delimiter go together"),
        };
        Ok(Template {
            source,
            destination,
            perms,
            user: self.user,
            group: self.group,
            check: self.check,
            command: self.command,
            command_timeout,
            wait,
            backup: self.backup,
            delimiters,
            strict_undefined: self
                .error_on_missing_key
                .unwrap_or(global.error_on_missing_key),
        })
    }
}

impl RenderConfig {
    /// The `[[template]]` blocks and `[render]` table of the agent's TOML
    /// document; relative paths are taken from `base_dir` (the config
    /// file's directory). `None` when the document has neither.
    pub fn from_doc(doc: &toml::Table, base_dir: &Path) -> anyhow::Result<Option<RenderConfig>> {
        let globals = doc.get("render");
        let templates = doc.get("template");
        if globals.is_none() && templates.is_none() {
            return Ok(None);
        }
        let base = std::path::absolute(base_dir).unwrap_or_else(|_| base_dir.to_path_buf());
        let global: GlobalDef = match globals {
            None => GlobalDef::default(),
            Some(v) => GlobalDef::deserialize(v.clone())
                .map_err(|e| anyhow::anyhow!("[render]: {}", e.message()))?,
        };
        let wait = match &global.wait {
            Some(w) => w.parse("[render]: wait")?,
            None => Wait::default(),
        };
        let list = match templates {
            None => Vec::new(),
            Some(toml::Value::Array(a)) => a.clone(),
            Some(_) => bail!("template must be an array of tables ([[template]])"),
        };
        let mut out = Vec::with_capacity(list.len());
        for (i, v) in list.into_iter().enumerate() {
            let dest = v
                .get("destination")
                .and_then(|d| d.as_str())
                .map(|d| format!(" ({d})"))
                .unwrap_or_default();
            let what = format!("[[template]] #{}{dest}", i + 1);
            let def = TemplateDef::deserialize(v)
                .map_err(|e| anyhow::anyhow!("{what}: {}", e.message()))?;
            let t = def.validate(&what, &base, &global, wait)?;
            if out
                .iter()
                .any(|o: &Template| o.destination == t.destination)
            {
                bail!(
                    "{what}: another template already writes {}",
                    t.destination.display()
                );
            }
            out.push(t);
        }
        Ok(Some(RenderConfig {
            templates: out,
            wait,
            error_on_missing_key: global.error_on_missing_key,
        }))
    }

    /// Reads and parses a whole config file (as the agent does) for its
    /// render tables.
    pub fn from_file(path: &Path) -> anyhow::Result<Option<RenderConfig>> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the config {}", path.display()))?;
        let doc: toml::Table = toml::from_str(&text)
            .with_context(|| format!("parsing the config {}", path.display()))?;
        let base = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        RenderConfig::from_doc(&doc, &base)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> anyhow::Result<Option<RenderConfig>> {
        let doc: toml::Table = toml::from_str(text).unwrap();
        RenderConfig::from_doc(&doc, Path::new("/etc/cairn"))
    }

    fn err(text: &str) -> String {
        format!("{:#}", parse(text).unwrap_err())
    }

    #[test]
    fn a_full_template_block_parses() {
        let c = parse(
            r#"
            [render]
            wait = { min = "1s" }
            [[template]]
            source = "t/nginx.conf.j2"
            destination = "/etc/nginx/upstreams.conf"
            perms = "0640"
            user = "root"
            group = "www-data"
            check = "nginx -t -c {{path}}"
            command = "systemctl reload nginx"
            command_timeout = "10s"
            backup = true
            left_delimiter = "[["
            right_delimiter = "]]"
            [[template]]
            contents = "x"
            destination = "out/x"
            wait = "2s:3s"
            "#,
        )
        .unwrap()
        .unwrap();
        let t = &c.templates[0];
        assert_eq!(t.source, Source::File("/etc/cairn/t/nginx.conf.j2".into()));
        assert_eq!(t.perms, Some(0o640));
        assert_eq!(t.command_timeout, Duration::from_secs(10));
        assert_eq!(t.wait.min, Duration::from_secs(1));
        assert_eq!(
            t.wait.max,
            Duration::from_secs(4),
            "max defaults to 4 x min"
        );
        assert_eq!(t.delimiters, Some(("[[".into(), "]]".into())));
        let u = &c.templates[1];
        assert_eq!(u.destination, PathBuf::from("/etc/cairn/out/x"));
        assert_eq!(u.wait.max, Duration::from_secs(3));
        assert_eq!(u.command_timeout, DEFAULT_COMMAND_TIMEOUT);
    }

    #[test]
    fn nothing_to_render_is_none() {
        assert_eq!(parse("name = \"n1\"").unwrap(), None);
    }

    #[test]
    fn errors_name_the_template_and_the_key() {
        let e = err("[[template]]\ncontents = \"x\"\ndestination = \"/a\"\nbogus = 1\n");
        assert!(e.contains("#1 (/a)") && e.contains("bogus"), "{e}");
        let e = err(
            "[[template]]\ncontents = \"x\"\ndestination = \"/a\"\n[[template]]\ncontents = \"x\"\ndestination = \"/b\"\nperms = \"999\"\n",
        );
        assert!(e.contains("#2 (/b)") && e.contains("perms"), "{e}");
        let e = err("[[template]]\ndestination = \"/a\"\n");
        assert!(e.contains("source") && e.contains("contents"), "{e}");
        let e = err(
            "[[template]]\ncontents = \"x\"\ndestination = \"/a\"\nwait = { min = \"soon\" }\n",
        );
        assert!(e.contains("wait.min"), "{e}");
        let e =
            err("[[template]]\ncontents = \"x\"\ndestination = \"/a\"\nleft_delimiter = \"[[\"\n");
        assert!(e.contains("right_delimiter"), "{e}");
        let e = err("[render]\nwaiting = \"1s\"\n");
        assert!(e.contains("[render]") && e.contains("waiting"), "{e}");
        let e = err(
            "[[template]]\ncontents = \"x\"\ndestination = \"/a\"\n[[template]]\ncontents = \"y\"\ndestination = \"/a\"\n",
        );
        assert!(e.contains("already writes"), "{e}");
    }
}
