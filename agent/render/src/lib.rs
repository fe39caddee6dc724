//! Files rendered from keys: consul-template's and confd's job, done from
//! the agent's own consistent view.
//!
//! - **Config** ([`config`]): `[[template]]` blocks and a `[render]` table
//!   of the agent's TOML `--config`, parsed strictly.
//! - **Templates** ([`template`]): minijinja with data functions (`key`,
//!   `key_or_default`, `keys`, `ls`, `tree`, `get_json`, `services`, `env`)
//!   and filters (`json`, `toyaml`, `totoml`, `base64_*`, `split`, …). A
//!   template's dependencies are what its last render read.
//! - **One revision per round** ([`renderer`]): every template of a round
//!   renders from one [`cairn_view::Snapshot`]; a change re-renders only the
//!   templates whose reads changed since their last render.
//! - **Writes** ([`write`]): temp file, fsync, mode and owner, `check`,
//!   rename, directory fsync; in place when the rename is refused (a
//!   bind-mounted file); nothing written and no command run when the
//!   content did not change.
//! - **Errors keep the last good file**, reported by [`status`], never
//!   fatal; a stale view keeps every file (fail static).
#![forbid(unsafe_code)]

pub mod config;
pub mod renderer;
pub mod status;
pub mod template;
pub mod write;

pub use config::{RenderConfig, Template, Wait};
pub use renderer::{Engine, Mode, Options, Renderer, RoundReport, render_once};
