//! A compiled template and its render against one [`Snapshot`]: the pure
//! part of rendering (no I/O but `env()`), table-tested below.
//!
//! Dependencies are found by rendering: every data function records what
//! it read (a key or a prefix). A read of a range the view does not watch
//! yet is recorded as a *want* and answers empty; such a render is
//! incomplete ([`Outcome::NeedData`]) and is thrown away: the renderer asks
//! the view for the wants and renders the whole round again, so no file is
//! ever written from a partial read.
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use cairn_view::{Interest, NotWatched, Snapshot, skydns};
use minijinja::value::{Kwargs, Value};
use minijinja::{AutoEscape, Environment, Error, ErrorKind, UndefinedBehavior};

use crate::config::Template;

/// What one render read, and what it could not read yet.
#[derive(Default)]
struct Scope {
    snapshot: Arc<Snapshot>,
    reads: BTreeSet<Interest>,
    wants: BTreeSet<Interest>,
}

/// The result of one render.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The text, complete, from data at the snapshot's revision.
    Done { text: String, reads: Vec<Interest> },
    /// The render read ranges the view does not watch yet.
    NeedData {
        wants: Vec<Interest>,
        reads: Vec<Interest>,
    },
    /// A template error or a missing key; the message names it.
    Failed { error: String, reads: Vec<Interest> },
}

impl Outcome {
    /// What the render read: the template's dependencies.
    pub fn reads(&self) -> &[Interest] {
        match self {
            Outcome::Done { reads, .. }
            | Outcome::NeedData { reads, .. }
            | Outcome::Failed { reads, .. } => reads,
        }
    }
}

/// One template, compiled in its own environment (its own delimiters and
/// its own read recorder).
pub struct Compiled {
    env: Environment<'static>,
    scope: Arc<Mutex<Scope>>,
}

const NAME: &str = "template";

fn lock(scope: &Arc<Mutex<Scope>>) -> std::sync::MutexGuard<'_, Scope> {
    scope.lock().unwrap_or_else(|e| e.into_inner())
}

fn text(v: &[u8]) -> String {
    String::from_utf8_lossy(v).into_owned()
}

/// The error that stops a render at its first read of an unwatched range.
fn unwatched() -> Error {
    Error::new(ErrorKind::InvalidOperation, "not watched yet")
}

fn missing(k: &str) -> Error {
    Error::new(
        ErrorKind::InvalidOperation,
        format!("key {k:?} does not exist"),
    )
}

/// A `{key, name, value, …}` item of `keys()`/`ls()`.
fn item(prefix: &str, k: &[u8], e: &cairn_view::Entry) -> Value {
    let key = text(k);
    let name = key.strip_prefix(prefix).unwrap_or(&key).to_string();
    Value::from_serialize(serde_json::json!({
        "key": key,
        "name": name,
        "value": text(&e.value),
        "mod_revision": e.mod_revision,
        "create_revision": e.create_revision,
        "version": e.version,
        "lease": e.lease,
    }))
}

impl Scope {
    /// The value of `k`: `Ok(None)` when missing, `Err(())` when not
    /// watched (recorded as a want).
    fn get(&mut self, k: &str) -> Result<Option<Vec<u8>>, ()> {
        if k.is_empty() {
            // etcd has no empty key; a range on it is refused.
            return Ok(None);
        }
        self.reads.insert(Interest::key(k));
        match self.snapshot.get(k.as_bytes()) {
            Ok(e) => Ok(e.map(|e| e.value.clone())),
            Err(NotWatched(i)) => {
                self.wants.insert(i);
                Err(())
            }
        }
    }

    fn range(&mut self, prefix: &str) -> Result<Vec<(String, cairn_view::Entry)>, ()> {
        self.reads.insert(Interest::prefix(prefix));
        match self.snapshot.range(prefix.as_bytes()) {
            Ok(kvs) => Ok(kvs.into_iter().map(|(k, e)| (text(k), e.clone())).collect()),
            Err(NotWatched(i)) => {
                self.wants.insert(i);
                Err(())
            }
        }
    }
}

/// A nested map of the keys under `prefix`, split on `/`.
fn tree(prefix: &str, kvs: &[(String, cairn_view::Entry)]) -> serde_json::Value {
    use serde_json::{Map, Value as J};
    let mut root = Map::new();
    for (k, e) in kvs {
        let rest = k.strip_prefix(prefix).unwrap_or(k).trim_start_matches('/');
        let parts: Vec<&str> = rest.split('/').filter(|p| !p.is_empty()).collect();
        let Some((last, dirs)) = parts.split_last() else {
            continue;
        };
        let mut node = &mut root;
        for d in dirs {
            let slot = node
                .entry(d.to_string())
                .or_insert_with(|| J::Object(Map::new()));
            if !slot.is_object() {
                // A key that is also a directory: its value moves to "".
                let v = slot.take();
                let mut m = Map::new();
                m.insert(String::new(), v);
                *slot = J::Object(m);
            }
            node = slot.as_object_mut().expect("made an object above");
        }
        let v = J::String(text(&e.value));
        match node.get_mut(*last) {
            Some(J::Object(m)) => {
                m.insert(String::new(), v);
            }
            _ => {
                node.insert(last.to_string(), v);
            }
        }
    }
    J::Object(root)
}

fn to_serde(v: &Value) -> Result<serde_json::Value, Error> {
    serde_json::to_value(v).map_err(|e| Error::new(ErrorKind::InvalidOperation, e.to_string()))
}

fn add_filters(env: &mut Environment<'static>) {
    env.add_filter("json", |v: Value| -> Result<String, Error> {
        serde_json::to_string(&v)
            .map_err(|e| Error::new(ErrorKind::InvalidOperation, e.to_string()))
    });
    env.add_filter("from_json", |s: String| -> Result<Value, Error> {
        let j: serde_json::Value = serde_json::from_str(&s)
            .map_err(|e| Error::new(ErrorKind::InvalidOperation, format!("not JSON: {e}")))?;
        Ok(Value::from_serialize(j))
    });
    env.add_filter("toyaml", |v: Value| -> Result<String, Error> {
        serde_norway::to_string(&to_serde(&v)?)
            .map_err(|e| Error::new(ErrorKind::InvalidOperation, e.to_string()))
    });
    env.add_filter("totoml", |v: Value| -> Result<String, Error> {
        toml::to_string(&to_serde(&v)?).map_err(|e| {
            Error::new(
                ErrorKind::InvalidOperation,
                format!("cannot be TOML (a TOML document is a map): {e}"),
            )
        })
    });
    env.add_filter("base64_encode", |s: String| -> String {
        base64::engine::general_purpose::STANDARD.encode(s.as_bytes())
    });
    env.add_filter("base64_decode", |s: String| -> Result<String, Error> {
        let b = base64::engine::general_purpose::STANDARD
            .decode(s.trim().as_bytes())
            .map_err(|e| Error::new(ErrorKind::InvalidOperation, format!("not base64: {e}")))?;
        String::from_utf8(b)
            .map_err(|_| Error::new(ErrorKind::InvalidOperation, "base64 of non-UTF-8 bytes"))
    });
    env.add_filter("split", |s: String, sep: Option<String>| -> Vec<String> {
        match sep {
            Some(sep) if !sep.is_empty() => s.split(sep.as_str()).map(str::to_string).collect(),
            _ => s.split_whitespace().map(str::to_string).collect(),
        }
    });
}

fn add_functions(env: &mut Environment<'static>, scope: &Arc<Mutex<Scope>>) {
    let s = scope.clone();
    env.add_function("key", move |k: String| -> Result<Value, Error> {
        match lock(&s).get(&k) {
            Ok(Some(v)) => Ok(Value::from(text(&v))),
            Ok(None) => Err(missing(&k)),
            Err(()) => Err(unwatched()),
        }
    });
    let s = scope.clone();
    env.add_function(
        "key_or_default",
        move |k: String, d: Value| -> Result<Value, Error> {
            match lock(&s).get(&k) {
                Ok(Some(v)) => Ok(Value::from(text(&v))),
                Ok(None) => Ok(d),
                Err(()) => Err(unwatched()),
            }
        },
    );
    let s = scope.clone();
    env.add_function("key_exists", move |k: String| -> Result<bool, Error> {
        match lock(&s).get(&k) {
            Ok(v) => Ok(v.is_some()),
            Err(()) => Err(unwatched()),
        }
    });
    let s = scope.clone();
    env.add_function("get_json", move |k: String| -> Result<Value, Error> {
        match lock(&s).get(&k) {
            Ok(Some(v)) => {
                let j: serde_json::Value = serde_json::from_slice(&v).map_err(|e| {
                    Error::new(
                        ErrorKind::InvalidOperation,
                        format!("key {k:?} is not JSON: {e}"),
                    )
                })?;
                Ok(Value::from_serialize(j))
            }
            Ok(None) => Err(missing(&k)),
            Err(()) => Err(unwatched()),
        }
    });
    let s = scope.clone();
    env.add_function("keys", move |prefix: String| -> Result<Vec<Value>, Error> {
        let kvs = lock(&s).range(&prefix).map_err(|()| unwatched())?;
        Ok(kvs
            .iter()
            .map(|(k, e)| item(&prefix, k.as_bytes(), e))
            .collect())
    });
    // consul-template's `ls`: the direct children only.
    let s = scope.clone();
    env.add_function("ls", move |prefix: String| -> Result<Vec<Value>, Error> {
        let kvs = lock(&s).range(&prefix).map_err(|()| unwatched())?;
        Ok(kvs
            .iter()
            .filter(|(k, _)| {
                let rest = k.strip_prefix(prefix.as_str()).unwrap_or(k);
                !rest.trim_start_matches('/').contains('/')
            })
            .map(|(k, e)| item(&prefix, k.as_bytes(), e))
            .collect())
    });
    let s = scope.clone();
    env.add_function("tree", move |prefix: String| -> Result<Value, Error> {
        let kvs = lock(&s).range(&prefix).map_err(|()| unwatched())?;
        Ok(Value::from_serialize(tree(&prefix, &kvs)))
    });
    let s = scope.clone();
    env.add_function(
        "services",
        move |name: String, domain: Option<String>, kwargs: Kwargs| -> Result<Vec<Value>, Error> {
            let path: Option<String> = kwargs.get("path")?;
            kwargs.assert_all_used()?;
            let path = path.unwrap_or_else(|| skydns::DEFAULT_PATH.to_string());
            let domain = domain.unwrap_or_else(|| "skydns.local.".to_string());
            let fqdn = format!(
                "{}.{}",
                name.trim_end_matches('.'),
                domain.trim_start_matches('.')
            );
            // One interest for the name's key and its subtree: one watcher.
            let want = Interest::prefix(skydns::key_of(&path, &fqdn));
            let mut scope = lock(&s);
            scope.reads.insert(want.clone());
            if !scope.snapshot.covers(&want) {
                scope.wants.insert(want);
                return Err(unwatched());
            }
            let found = skydns::lookup(&scope.snapshot, &path, &fqdn).unwrap_or_default();
            Ok(found
                .into_iter()
                .map(|f| {
                    Value::from_serialize(serde_json::json!({
                        "host": f.record.host,
                        "port": f.record.port,
                        "priority": f.record.priority,
                        "weight": f.record.weight,
                        "tags": f.record.tags,
                        "text": f.record.text,
                        "ttl": f.record.ttl,
                        "key": f.key,
                        "lease": f.lease,
                    }))
                })
                .collect())
        },
    );
    env.add_function("env", |name: String, default: Option<String>| -> String {
        std::env::var(&name).unwrap_or_else(|_| default.unwrap_or_default())
    });
}

// === impl Compiled ===

impl Compiled {
    /// Compiles `text` with the template's delimiters; a syntax error
    /// names the line.
    pub fn new(t: &Template, text: String) -> Result<Compiled, String> {
        let scope = Arc::new(Mutex::new(Scope::default()));
        let mut env = Environment::new();
        env.set_keep_trailing_newline(true);
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_auto_escape_callback(|_| AutoEscape::None);
        env.set_undefined_behavior(if t.strict_undefined {
            UndefinedBehavior::Strict
        } else {
            UndefinedBehavior::Lenient
        });
        if let Some((l, r)) = &t.delimiters {
            let syntax = minijinja::syntax::SyntaxConfig::builder()
                .variable_delimiters(l.clone(), r.clone())
                .build()
                .map_err(|e| format!("delimiters {l:?} {r:?}: {e}"))?;
            env.set_syntax(syntax);
        }
        add_filters(&mut env);
        add_functions(&mut env, &scope);
        env.add_template_owned(NAME, text)
            .map_err(|e| describe(&e))?;
        Ok(Compiled { env, scope })
    }

    /// Renders against `snapshot`. Never panics on user input; a template
    /// error is an [`Outcome::Failed`].
    pub fn render(&self, snapshot: &Arc<Snapshot>) -> Outcome {
        *lock(&self.scope) = Scope {
            snapshot: snapshot.clone(),
            ..Default::default()
        };
        let result = self
            .env
            .get_template(NAME)
            .and_then(|t| t.render(minijinja::context! {}));
        let scope = std::mem::take(&mut *lock(&self.scope));
        let reads = scope.reads.into_iter().collect();
        if !scope.wants.is_empty() {
            return Outcome::NeedData {
                wants: scope.wants.into_iter().collect(),
                reads,
            };
        }
        match result {
            Ok(text) => Outcome::Done { text, reads },
            Err(e) => Outcome::Failed {
                error: describe(&e),
                reads,
            },
        }
    }
}

/// minijinja's message with the line, without its debug dump.
fn describe(e: &Error) -> String {
    let mut msg = match e.detail() {
        Some(d) => format!("{}: {d}", e.kind()),
        None => e.kind().to_string(),
    };
    if let Some(line) = e.line() {
        msg.push_str(&format!(" (line {line})"));
    }
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        msg.push_str(&format!(": {s}"));
        src = s.source();
    }
    msg
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Source, Wait};
    use std::path::PathBuf;

    fn template(text: &str) -> (Template, String) {
        (
            Template {
                source: Source::Inline(text.into()),
                destination: PathBuf::from("/tmp/x"),
                perms: None,
                user: None,
                group: None,
                check: None,
                command: None,
                command_timeout: crate::config::DEFAULT_COMMAND_TIMEOUT,
                wait: Wait::default(),
                backup: false,
                delimiters: None,
                strict_undefined: false,
            },
            text.to_string(),
        )
    }

    fn compile(text: &str) -> Compiled {
        let (t, text) = template(text);
        Compiled::new(&t, text).unwrap()
    }

    fn snap(ranges: &[(&str, &[(&str, &str)])]) -> Arc<Snapshot> {
        Arc::new(Snapshot::from_ranges(
            42,
            ranges
                .iter()
                .map(|(p, kvs)| {
                    (
                        Interest::prefix(*p),
                        kvs.iter()
                            .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
                            .collect(),
                    )
                })
                .collect(),
        ))
    }

    fn done(c: &Compiled, s: &Arc<Snapshot>) -> String {
        match c.render(s) {
            Outcome::Done { text, .. } => text,
            other => panic!("expected a complete render, got {other:?}"),
        }
    }

    fn failed(c: &Compiled, s: &Arc<Snapshot>) -> String {
        match c.render(s) {
            Outcome::Failed { error, .. } => error,
            other => panic!("expected a failure, got {other:?}"),
        }
    }

    #[test]
    fn key_functions() {
        let s = snap(&[("/app/", &[("/app/a", "1"), ("/app/j", r#"{"x":[1,2]}"#)])]);
        assert_eq!(
            done(&compile("{{ key('/app/a') }}\n"), &s),
            "1\n",
            "trailing newline kept"
        );
        assert_eq!(
            done(&compile("{{ key_or_default('/app/b', 'd') }}"), &s),
            "d"
        );
        assert_eq!(
            done(
                &compile("{% if not key_exists('/app/b') %}absent{% endif %}"),
                &s
            ),
            "absent"
        );
        assert_eq!(done(&compile("{{ get_json('/app/j').x[1] }}"), &s), "2");
        let e = failed(&compile("{{ key('/app/b') }}"), &s);
        assert!(e.contains("\"/app/b\" does not exist"), "{e}");
        let e = failed(
            &compile("{{ get_json('/app/a') + 1 }} {{ get_json('/app/zz') }}"),
            &s,
        );
        assert!(e.contains("/app/zz"), "{e}");
    }

    #[test]
    fn range_functions() {
        let s = snap(&[(
            "/cfg/",
            &[
                ("/cfg/a", "1"),
                ("/cfg/b/c", "2"),
                ("/cfg/b/d", "3"),
                ("/cfg/b", "4"),
            ],
        )]);
        let keys = done(
            &compile("{% for i in keys('/cfg/') %}{{ i.key }}={{ i.value }};{% endfor %}"),
            &s,
        );
        assert_eq!(keys, "/cfg/a=1;/cfg/b=4;/cfg/b/c=2;/cfg/b/d=3;");
        let ls = done(
            &compile("{% for i in ls('/cfg/') %}{{ i.name }} {% endfor %}"),
            &s,
        );
        assert_eq!(ls, "a b ");
        let tree = done(&compile("{{ tree('/cfg/') | json }}"), &s);
        assert_eq!(tree, r#"{"a":"1","b":{"":"4","c":"2","d":"3"}}"#);
        let sorted = done(
            &compile(
                "{{ keys('/cfg/') | sort(attribute='value', reverse=true) | map(attribute='value') | join(',') }}",
            ),
            &s,
        );
        assert_eq!(sorted, "4,3,2,1");
    }

    #[test]
    fn services_read_the_skydns_layout() {
        let s = snap(&[(
            "/skydns/local/skydns/web",
            &[
                (
                    "/skydns/local/skydns/web/b",
                    r#"{"host":"10.0.0.2","port":81,"tags":["canary"]}"#,
                ),
                (
                    "/skydns/local/skydns/web/a",
                    r#"{"host":"10.0.0.1","port":80,"priority":5,"weight":3}"#,
                ),
                ("/skydns/local/skydns/web/junk", "not json"),
                ("/skydns/local/skydns/webx/z", r#"{"host":"10.9.9.9"}"#),
            ],
        )]);
        let t = "{% for s in services('web') %}{{ s.host }}:{{ s.port }} p{{ s.priority }} w{{ s.weight }} {{ s.tags | join('+') }} {{ s.key }}\n{% endfor %}";
        assert_eq!(
            done(&compile(t), &s),
            "10.0.0.1:80 p5 w3  /skydns/local/skydns/web/a\n10.0.0.2:81 p0 w0 canary /skydns/local/skydns/web/b\n"
        );
        // Another domain and path are other keys, not yet watched.
        match compile("{{ services('db', 'prod.example.') | length }}").render(&s) {
            Outcome::NeedData { wants, .. } => {
                assert_eq!(wants, vec![Interest::prefix("/skydns/example/prod/db")])
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn filters() {
        let s = snap(&[]);
        let c = compile(
            "{{ {'a': [1, 2]} | tojson }}|{{ {'a': 1} | json }}|{{ {'a': {'b': 'c'}} | toyaml }}|{{ {'a': 1, 't': {'x': 'y'}} | totoml }}|{{ 'hi' | base64_encode }}|{{ 'aGk=' | base64_decode }}|{{ 'a,b,,c' | split(',') | join('/') }}|{{ 'a  b' | split | length }}|{{ '{\"n\": 3}' | from_json | attr('n') }}|{{ [3, 1, 2] | sort | join }}",
        );
        assert_eq!(
            done(&c, &s),
            "{\"a\":[1,2]}|{\"a\":1}|a:\n  b: c\n|a = 1\n\n[t]\nx = \"y\"\n|aGk=|hi|a/b//c|2|3|123"
        );
        let e = failed(&compile("{{ [1] | totoml }}"), &s);
        assert!(e.contains("TOML"), "{e}");
        let e = failed(&compile("{{ '!!' | base64_decode }}"), &s);
        assert!(e.contains("base64"), "{e}");
    }

    #[test]
    fn env_function() {
        // PATH is set in every test environment; an unset name gives the default.
        let path = std::env::var("PATH").unwrap();
        assert_eq!(done(&compile("{{ env('PATH') }}"), &snap(&[])), path);
        assert_eq!(
            done(
                &compile("{{ env('CAIRN_RENDER_SURELY_UNSET', 'dflt') }}"),
                &snap(&[])
            ),
            "dflt"
        );
    }

    #[test]
    fn custom_delimiters_leave_the_default_ones_alone() {
        let s = snap(&[("/k/", &[("/k/a", "v")])]);
        let (mut t, _) = template("");
        t.delimiters = Some(("[[".into(), "]]".into()));
        let c = Compiled::new(
            &t,
            "{{ .Go }} [[ key('/k/a') ]] {% if true %}x{% endif %}".into(),
        )
        .unwrap();
        assert_eq!(done(&c, &s), "{{ .Go }} v x");
        t.delimiters = Some(("{%".into(), "%}".into()));
        assert!(
            Compiled::new(&t, "x".into()).is_err(),
            "delimiters clash with blocks"
        );
    }

    #[test]
    fn syntax_errors_name_the_line_and_undefined_is_strict_on_demand() {
        let (t, _) = template("");
        let e = Compiled::new(&t, "a\n{% for x in %}".into()).err().unwrap();
        assert!(e.contains("line 2"), "{e}");
        let s = snap(&[]);
        assert_eq!(done(&compile("[{{ nothing }}]"), &s), "[]");
        let (mut t, _) = template("");
        t.strict_undefined = true;
        let c = Compiled::new(&t, "[{{ nothing }}]".into()).unwrap();
        assert!(failed(&c, &s).contains("undefined"));
    }

    #[test]
    fn dependencies_are_found_by_rendering() {
        // A render against a view that watches nothing wants what it read,
        // and a key read through a pointer is found on the next pass.
        let c = compile("{{ keys('/list/') | length }} {{ key('/ptr') }}={{ key(key('/ptr')) }}");
        let empty = Arc::new(Snapshot::from_ranges(1, vec![]));
        let Outcome::NeedData { wants, .. } = c.render(&empty) else {
            panic!("expected wants")
        };
        // The render stops at the first unwatched read: nothing derived
        // from a value it did not have is ever watched.
        assert_eq!(wants, vec![Interest::prefix("/list/")]);
        let s = snap(&[("/list/", &[("/list/1", "x")])]);
        let Outcome::NeedData { wants, .. } = c.render(&s) else {
            panic!("expected wants")
        };
        assert_eq!(wants, vec![Interest::key("/ptr")]);
        let s = snap(&[
            ("/ptr", &[("/ptr", "/target")]),
            ("/list/", &[("/list/1", "x")]),
        ]);
        let Outcome::NeedData { wants, .. } = c.render(&s) else {
            panic!("expected the pointed-to key")
        };
        assert_eq!(wants, vec![Interest::key("/target")]);
        let s = snap(&[
            ("/ptr", &[("/ptr", "/target")]),
            ("/list/", &[("/list/1", "x")]),
            ("/target", &[("/target", "T")]),
        ]);
        let Outcome::Done { text, reads } = c.render(&s) else {
            panic!("expected a complete render")
        };
        assert_eq!(text, "1 /target=T");
        assert_eq!(
            reads,
            vec![
                Interest::key("/ptr"),
                Interest::key("/target"),
                Interest::prefix("/list/")
            ]
        );
    }
}
