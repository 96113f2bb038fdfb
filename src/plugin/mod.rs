//! Handler plugins in any language, declared in the config file
//! (`[[plugins]]`) or one file per plugin in the plugin directory.
//!
//! Three kinds (see `docs/plugin-protocol.md` for the wire details):
//! [`exec`] runs one process per job, [`coprocess`] keeps long-lived
//! processes speaking JSON lines, [`http`] POSTs the job to a URL.
//!
//! Every declaration is checked when the configuration is loaded (program
//! found and executable, working directory present, URL valid, ...), so a
//! broken plugin stops start-up with a message naming it, never at the first
//! job.

pub mod coprocess;
pub mod exec;
pub mod http;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::handler::{ClaimError, Handler, JobContext, Registry};
use crate::resque::Job;

/// Default per-job timeout of a plugin.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);
/// Default jobs in flight per co-process.
pub const DEFAULT_IN_FLIGHT: usize = 16;

/// A plugin declaration that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("plugin {name:?} ({source_name}): {problem}")]
pub struct PluginError {
    /// The plugin's name (or its file when it has none).
    pub name: String,
    /// Where it was declared.
    pub source_name: String,
    /// What is wrong.
    pub problem: String,
}

/// What a co-process's in-flight jobs become when it dies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnCrash {
    /// Failure records (`AhWorker::PluginCrashed`).
    Fail,
    /// Back at the head of their queues.
    Requeue,
}

/// How a plugin runs jobs.
#[derive(Debug, Clone, PartialEq)]
pub enum PluginKind {
    /// One process per job.
    Exec(ProcessSpec),
    /// Long-lived processes speaking JSON lines.
    Coprocess {
        /// The program.
        process: ProcessSpec,
        /// How many processes.
        processes: usize,
        /// Jobs in flight per process.
        in_flight: usize,
        /// What a crash does to in-flight jobs.
        on_crash: OnCrash,
    },
    /// POST to a URL.
    Http {
        /// The endpoint.
        url: String,
        /// Extra request headers.
        headers: BTreeMap<String, String>,
    },
}

/// A program to start.
#[derive(Debug, Clone, PartialEq)]
pub struct ProcessSpec {
    /// argv; `argv[0]` resolved to [`ProcessSpec::program`].
    pub command: Vec<String>,
    /// The resolved program path.
    pub program: PathBuf,
    /// Working directory.
    pub cwd: Option<PathBuf>,
    /// Extra environment.
    pub env: BTreeMap<String, String>,
}

/// A validated plugin declaration.
#[derive(Debug, Clone, PartialEq)]
pub struct PluginSpec {
    /// Unique name, used in logs and errors.
    pub name: String,
    /// The file it was declared in.
    pub source_name: String,
    /// Classes it handles: names or glob patterns (`Py::*`).
    pub classes: Vec<String>,
    /// Per-job timeout.
    pub timeout: Duration,
    /// At most this many of its jobs at once in this worker process.
    pub max_in_flight: Option<usize>,
    /// How it runs jobs.
    pub kind: PluginKind,
}

/// A declaration as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPlugin {
    name: Option<String>,
    kind: Option<String>,
    #[serde(default)]
    classes: Vec<String>,
    command: Option<Vec<String>>,
    cwd: Option<PathBuf>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    timeout: Option<toml::Value>,
    max_in_flight: Option<usize>,
    processes: Option<usize>,
    in_flight: Option<usize>,
    on_crash: Option<OnCrash>,
    url: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
}

impl PluginSpec {
    /// Validate one declaration (a `[[plugins]]` table or a plugin file)
    /// from `source_name`.
    pub fn from_toml(value: toml::Value, source_name: &str) -> Result<PluginSpec, PluginError> {
        let fallback = source_name.to_owned();
        let err = |name: &str, problem: String| PluginError {
            name: name.to_owned(),
            source_name: source_name.to_owned(),
            problem,
        };
        let raw: RawPlugin = value
            .try_into()
            .map_err(|e: toml::de::Error| err(&fallback, e.message().to_owned()))?;
        let name = match raw.name {
            Some(n) if !n.trim().is_empty() => n,
            _ => return Err(err(&fallback, "has no `name`".into())),
        };
        let fail = |problem: String| err(&name, problem);
        if raw.classes.is_empty() || raw.classes.iter().any(|c| c.trim().is_empty()) {
            return Err(fail(
                "`classes` must list at least one class name or pattern".into(),
            ));
        }
        let timeout = match raw.timeout {
            None => DEFAULT_TIMEOUT,
            Some(v) => {
                let text = match &v {
                    toml::Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                crate::config::parse_duration(&text)
                    .filter(|d| !d.is_zero())
                    .ok_or_else(|| {
                        fail(format!(
                            "`timeout` {text:?} is not a positive duration (e.g. 30 or \"30s\")"
                        ))
                    })?
            }
        };
        if raw.max_in_flight == Some(0) {
            return Err(fail("`max_in_flight` must be at least 1".into()));
        }
        let kind_name = raw.kind.as_deref().unwrap_or("");
        let only_for = |key: &str, present: bool, kinds: &str| {
            if present {
                Err(fail(format!("`{key}` only applies to {kinds} plugins")))
            } else {
                Ok(())
            }
        };
        let process = |raw_cmd: Option<Vec<String>>| -> Result<ProcessSpec, PluginError> {
            let command = raw_cmd
                .filter(|c| !c.is_empty() && !c[0].is_empty())
                .ok_or_else(|| {
                    fail(
                        "`command` must be a non-empty list, e.g. [\"python3\", \"handler.py\"]"
                            .into(),
                    )
                })?;
            if let Some(cwd) = &raw.cwd
                && !cwd.is_dir()
            {
                return Err(fail(format!(
                    "working directory {} does not exist",
                    cwd.display()
                )));
            }
            let program = resolve_program(&command[0], raw.cwd.as_deref()).map_err(fail)?;
            Ok(ProcessSpec {
                command,
                program,
                cwd: raw.cwd.clone(),
                env: raw.env.clone(),
            })
        };
        let kind = match kind_name {
            "exec" => {
                only_for("processes", raw.processes.is_some(), "coprocess")?;
                only_for("in_flight", raw.in_flight.is_some(), "coprocess")?;
                only_for("on_crash", raw.on_crash.is_some(), "coprocess")?;
                only_for("url", raw.url.is_some(), "http")?;
                PluginKind::Exec(process(raw.command.clone())?)
            }
            "coprocess" => {
                only_for("url", raw.url.is_some(), "http")?;
                let processes = raw.processes.unwrap_or(1);
                let in_flight = raw.in_flight.unwrap_or(DEFAULT_IN_FLIGHT);
                if processes == 0 || in_flight == 0 {
                    return Err(fail(
                        "`processes` and `in_flight` must be at least 1".into(),
                    ));
                }
                PluginKind::Coprocess {
                    process: process(raw.command.clone())?,
                    processes,
                    in_flight,
                    on_crash: raw.on_crash.unwrap_or(OnCrash::Fail),
                }
            }
            "http" => {
                only_for("command", raw.command.is_some(), "exec and coprocess")?;
                only_for("processes", raw.processes.is_some(), "coprocess")?;
                let url = raw
                    .url
                    .clone()
                    .ok_or_else(|| fail("`url` is missing".into()))?;
                http::check_url(&url).map_err(fail)?;
                for (k, v) in &raw.headers {
                    http::check_header(k, v).map_err(fail)?;
                }
                PluginKind::Http {
                    url,
                    headers: raw.headers.clone(),
                }
            }
            "" => return Err(fail("`kind` is missing: exec, coprocess or http".into())),
            other => {
                return Err(fail(format!(
                    "unknown `kind` {other:?}: expected exec, coprocess or http"
                )));
            }
        };
        Ok(PluginSpec {
            name,
            source_name: source_name.to_owned(),
            classes: raw.classes,
            timeout,
            max_in_flight: raw.max_in_flight,
            kind,
        })
    }
}

/// Find `program` as `execve` would: a path with a `/` is taken as is
/// (relative to `cwd` when given), a bare name is searched in `PATH`. It must
/// be an executable file.
fn resolve_program(program: &str, cwd: Option<&Path>) -> Result<PathBuf, String> {
    use std::os::unix::fs::PermissionsExt as _;
    let executable = |p: &Path| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if program.contains('/') {
        let path = match cwd {
            Some(dir) if Path::new(program).is_relative() => dir.join(program),
            _ => PathBuf::from(program),
        };
        return if executable(&path) {
            Ok(path)
        } else if path.exists() {
            Err(format!("command {program:?} is not an executable file"))
        } else {
            Err(format!("command {program:?} does not exist"))
        };
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| executable(p))
        .ok_or_else(|| format!("command {program:?} is not found in PATH"))
}

/// Check a set of declarations together: unique names. (Class conflicts are
/// found when they are registered.)
pub fn check_all(specs: &[PluginSpec]) -> Result<(), PluginError> {
    for (i, a) in specs.iter().enumerate() {
        if let Some(b) = specs[..i].iter().find(|b| b.name == a.name) {
            return Err(PluginError {
                name: a.name.clone(),
                source_name: a.source_name.clone(),
                problem: format!(
                    "the name is also used by the plugin declared in {}",
                    b.source_name
                ),
            });
        }
    }
    Ok(())
}

/// Check that the plugins' classes are free in `registry` (the built-in and
/// native handlers) and among themselves, without starting anything.
pub fn check_claims(specs: &[PluginSpec], registry: &Registry) -> Result<(), PluginError> {
    struct Unused;
    impl Handler for Unused {
        fn perform(&self, _job: Job, _ctx: JobContext) -> crate::handler::BoxFuture {
            Box::pin(async { Ok(()) })
        }
    }
    let mut dry = registry.clone();
    let unused: Arc<dyn Handler> = Arc::new(Unused);
    for spec in specs {
        dry.claim(
            &spec.name,
            &spec.classes,
            unused.clone(),
            spec.max_in_flight,
        )
        .map_err(|e| PluginError {
            name: spec.name.clone(),
            source_name: spec.source_name.clone(),
            problem: e.to_string(),
        })?;
    }
    Ok(())
}

/// Start every plugin and register it in `registry`. Co-processes are
/// started here, at boot.
pub fn register_all(specs: &[PluginSpec], registry: &mut Registry) -> Result<(), PluginError> {
    for spec in specs {
        let handler: Arc<dyn Handler> = match &spec.kind {
            PluginKind::Exec(process) => Arc::new(exec::ExecPlugin::new(spec, process.clone())),
            PluginKind::Coprocess {
                process,
                processes,
                in_flight,
                on_crash,
            } => Arc::new(coprocess::CoprocessPlugin::start(
                spec,
                process.clone(),
                *processes,
                *in_flight,
                *on_crash,
            )),
            PluginKind::Http { url, headers } => Arc::new(
                http::HttpPlugin::new(spec, url, headers).map_err(|problem| PluginError {
                    name: spec.name.clone(),
                    source_name: spec.source_name.clone(),
                    problem,
                })?,
            ),
        };
        registry
            .claim(&spec.name, &spec.classes, handler, spec.max_in_flight)
            .map_err(|e: ClaimError| PluginError {
                name: spec.name.clone(),
                source_name: spec.source_name.clone(),
                problem: e.to_string(),
            })?;
    }
    Ok(())
}

/// The job object every plugin kind receives (see `docs/plugin-protocol.md`).
#[derive(Debug, Serialize)]
pub struct JobObject<'a> {
    /// Wire type for co-processes (`"job"`); omitted for exec and http.
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<&'static str>,
    /// Unique within the worker process.
    pub id: &'a str,
    /// The job's class.
    pub class: &'a str,
    /// Its queue.
    pub queue: &'a str,
    /// Its arguments.
    pub args: &'a [Value],
    /// For actionHero-style tasks (one object argument): that object.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inputs: Option<&'a Value>,
    /// The slot running it.
    pub worker: &'a str,
    /// When it was taken.
    pub run_at: &'a str,
}

impl<'a> JobObject<'a> {
    /// The object for `job` run in `ctx`.
    pub fn new(job: &'a Job, ctx: &'a JobContext, kind: Option<&'static str>) -> JobObject<'a> {
        let inputs = match job.args.as_slice() {
            [obj @ Value::Object(_)] => Some(obj),
            _ => None,
        };
        JobObject {
            kind,
            id: &ctx.id,
            class: &job.class,
            queue: &job.queue,
            args: &job.args,
            inputs,
            worker: &ctx.worker,
            run_at: &ctx.run_at,
        }
    }

    /// Compact JSON, `type`, `id` and `class` first.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("JSON values always serialise")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(text: &str) -> Result<PluginSpec, PluginError> {
        PluginSpec::from_toml(toml::from_str(text).unwrap(), "test.toml")
    }

    #[test]
    fn a_valid_exec_plugin() {
        let s = spec("name = \"e\"\nkind = \"exec\"\nclasses = [\"A\"]\ncommand = [\"true\"]\ntimeout = \"2s\"\n").unwrap();
        assert_eq!(s.timeout, Duration::from_secs(2));
        let PluginKind::Exec(p) = s.kind else {
            panic!()
        };
        assert!(p.program.ends_with("true"));
    }

    #[test]
    fn broken_declarations_name_the_plugin_and_problem() {
        let e = |t: &str| spec(t).unwrap_err().to_string();
        assert!(e("kind = \"exec\"\nclasses=[\"A\"]\ncommand=[\"true\"]").contains("no `name`"));
        let m = e("name=\"p\"\nkind=\"exec\"\nclasses=[\"A\"]\ncommand=[\"/no/such/prog\"]");
        assert!(
            m.contains("\"p\"") && m.contains("/no/such/prog") && m.contains("does not exist"),
            "{m}"
        );
        let m = e("name=\"p\"\nkind=\"exec\"\nclasses=[\"A\"]\ncommand=[\"no-such-prog-xyz\"]");
        assert!(m.contains("not found in PATH"), "{m}");
        let plain = std::env::temp_dir().join(format!("ah-worker-not-exec-{}", std::process::id()));
        std::fs::write(&plain, "data").unwrap();
        let m = e(&format!(
            "name=\"p\"\nkind=\"exec\"\nclasses=[\"A\"]\ncommand=[{:?}]",
            plain.display().to_string()
        ));
        assert!(m.contains("not an executable"), "{m}");
        let m = e("name=\"p\"\nkind=\"http\"\nclasses=[\"A\"]\nurl=\"not a url\"");
        assert!(m.contains("url"), "{m}");
        let m = e("name=\"p\"\nkind=\"rpc\"\nclasses=[\"A\"]");
        assert!(m.contains("unknown `kind`"), "{m}");
        let m = e("name=\"p\"\nkind=\"exec\"\nclasses=[]\ncommand=[\"true\"]");
        assert!(m.contains("classes"), "{m}");
        let m =
            e("name=\"p\"\nkind=\"exec\"\nclasses=[\"A\"]\ncommand=[\"true\"]\ntimeout=\"soon\"");
        assert!(m.contains("timeout"), "{m}");
        let m = e("name=\"p\"\nkind=\"exec\"\nclasses=[\"A\"]\ncommand=[\"true\"]\nprocesses=2");
        assert!(m.contains("only applies to coprocess"), "{m}");
        let m = e("name=\"p\"\nkind=\"exec\"\nclasses=[\"A\"]\ncomand=[\"true\"]");
        assert!(m.contains("comand"), "{m}");
    }

    #[test]
    fn job_object_carries_inputs_for_actionhero_tasks() {
        let job = Job::parse("q", br#"{"class":"T","args":{"to":"x"}}"#).unwrap();
        let ctx = JobContext {
            worker: "h:1+1:q".into(),
            run_at: "2026-11-30T03:49:20Z".into(),
            id: "9".into(),
            services: crate::handler::Services::detached(),
        };
        assert_eq!(
            JobObject::new(&job, &ctx, Some("job")).to_json(),
            r#"{"type":"job","id":"9","class":"T","queue":"q","args":[{"to":"x"}],"inputs":{"to":"x"},"worker":"h:1+1:q","run_at":"2026-11-30T03:49:20Z"}"#
        );
    }
}
