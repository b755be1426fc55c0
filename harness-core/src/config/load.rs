//! Reading, validating and overriding experiment files.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::fmt;
use std::path::Path;

use super::Experiment;
use crate::error::{Error, Result};

/// The largest experiment file accepted, in bytes (1 MiB).
pub const MAX_CONFIG_BYTES: usize = 1024 * 1024;

/// A located problem in an experiment file or a `--set` override.
///
/// Its `Display` is one line: `file:line:column: field.path: message`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConfigError {
    /// The file, or `--set key=value` for an override.
    pub file: String,
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// 1-based column, when known.
    pub column: Option<usize>,
    /// The field path, e.g. `benchmark.isl_osl[2]`; `.` for the whole document.
    pub path: String,
    /// What is wrong and what was expected.
    pub message: String,
    /// The offending lines with a marker, for terminals.
    pub snippet: Option<String>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
            if let Some(col) = self.column {
                write!(f, ":{col}")?;
            }
        }
        write!(f, ": {}: {}", self.path, self.message)
    }
}

impl std::error::Error for ConfigError {}

impl ConfigError {
    fn new(file: &str, path: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            file: file.to_owned(),
            line: None,
            column: None,
            path: path.into(),
            message: message.into(),
            snippet: None,
        }
    }

    fn at(mut self, line: usize, column: usize) -> Self {
        self.line = Some(line);
        self.column = Some(column);
        self
    }
}

fn parse_options() -> serde_saphyr::Options {
    let mut budget = serde_saphyr::Budget::default();
    budget.max_reader_input_bytes = Some(MAX_CONFIG_BYTES);
    budget.max_events = 200_000;
    budget.max_aliases = 1_000;
    budget.max_anchors = 1_000;
    budget.max_depth = 32;
    budget.max_nodes = 100_000;
    budget.max_total_scalar_bytes = MAX_CONFIG_BYTES;
    let mut options = serde_saphyr::Options::default();
    options.budget = Some(budget);
    options
}

/// Strips serde-saphyr's " at line N, column M" suffix: the location is kept separately.
fn bare_message(e: &serde_saphyr::Error) -> String {
    let text = e.without_snippet().to_string();
    match text.find(" at line ") {
        Some(i) => text[..i].to_owned(),
        None => text,
    }
}

/// The parser's message in the experiment's terms: no Rust types, no serde advice, and a
/// hint for a key written without its colon (the proposal's own `isl_osl`). `line` is the
/// text of the line the error points at.
pub(crate) fn plain_message(raw: &str, line: Option<&str>) -> String {
    const WHOLE: &[(&str, &str)] = &[
        (
            "recursive references require weak recursion types",
            "an alias refers to itself (an anchor used inside its own value)",
        ),
        ("expected string scalar", "expected text"),
        (
            "expected mapping start",
            "expected a section of `key: value` lines",
        ),
        ("expected sequence start", "expected a list"),
    ];
    const WORDS: &[(&str, &str)] = &[
        ("a nonzero u32", "a whole number of at least 1"),
        ("a nonzero u64", "a whole number of at least 1"),
        ("invalid u64", "expected a whole number"),
        ("invalid u32", "expected a whole number"),
        ("invalid u16", "expected a whole number"),
        ("invalid f64", "expected a number"),
        ("u128", "a whole number"),
        ("u64", "a whole number"),
        ("u32", "a whole number"),
        ("u16", "a whole number"),
        ("u8", "a whole number"),
        ("usize", "a whole number"),
        ("i64", "a whole number"),
        ("f64", "a number"),
        ("f32", "a number"),
        ("a string", "text"),
        ("a boolean", "true or false"),
        ("sequence", "list"),
        ("unit value", "nothing"),
    ];
    let mut out = if let Some(rest) = raw.strip_prefix("cannot deserialize null into ") {
        let what = if rest.starts_with("string") {
            "text"
        } else {
            "a value"
        };
        format!("expected {what}, found nothing")
    } else {
        WHOLE
            .iter()
            .find(|(from, _)| raw.contains(from))
            .map_or_else(|| raw.to_owned(), |(_, to)| (*to).to_owned())
    };
    for (from, to) in WORDS {
        out = replace_word(&out, from, to);
    }
    // `struct Load`, `map`: a section.
    while let Some(at) = out.find("struct ") {
        let end = out[at + 7..]
            .find(|c: char| !c.is_ascii_alphanumeric() && c != '_')
            .map_or(out.len(), |e| at + 7 + e);
        out.replace_range(at..end, "a section");
    }
    out = replace_word(&out, "map", "a section");
    if let Some(line) = line {
        let word = line.trim();
        if !word.is_empty()
            && !word.starts_with('-')
            && word.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            out.push_str(&format!(" (did you mean \"{word}:\"?)"));
        }
    }
    out
}

/// `text` with `from` replaced where it stands as a whole word.
fn replace_word(text: &str, from: &str, to: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find(from) {
        let before = rest[..i].chars().next_back();
        let after = rest[i + from.len()..].chars().next();
        let edge = |c: Option<char>| c.is_none_or(|c| !c.is_ascii_alphanumeric() && c != '_');
        out.push_str(&rest[..i]);
        out.push_str(if edge(before) && edge(after) {
            to
        } else {
            from
        });
        rest = &rest[i + from.len()..];
    }
    out.push_str(rest);
    out
}

impl Experiment {
    /// Reads and validates an experiment file.
    ///
    /// # Errors
    /// [`Error::Config`] naming the file, line, column and field path of the first problem;
    /// [`Error::Io`] when the file cannot be read.
    pub fn from_path(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let shown = path.display().to_string();
        let meta =
            std::fs::metadata(path).map_err(|e| Error::io(format!("reading `{shown}`"), e))?;
        if meta.len() > MAX_CONFIG_BYTES as u64 {
            return Err(ConfigError::new(
                &shown,
                ".",
                format!(
                    "the file has {} bytes; an experiment may have at most {MAX_CONFIG_BYTES}",
                    meta.len()
                ),
            )
            .into());
        }
        let bytes = std::fs::read(path).map_err(|e| Error::io(format!("reading `{shown}`"), e))?;
        Self::from_yaml_bytes(&bytes, &shown)
    }

    /// Validates an experiment from bytes; `file` names the source in errors.
    ///
    /// # Errors
    /// [`Error::Config`] when the bytes are not a valid experiment.
    pub fn from_yaml_bytes(bytes: &[u8], file: &str) -> Result<Self> {
        if bytes.len() > MAX_CONFIG_BYTES {
            return Err(ConfigError::new(
                file,
                ".",
                format!(
                    "the input has {} bytes; an experiment may have at most {MAX_CONFIG_BYTES}",
                    bytes.len()
                ),
            )
            .into());
        }
        let text = std::str::from_utf8(bytes).map_err(|e| {
            let at = e.valid_up_to();
            let line = bytes[..at].iter().filter(|b| **b == b'\n').count() + 1;
            let column = at
                - bytes[..at]
                    .iter()
                    .rposition(|b| *b == b'\n')
                    .map_or(0, |p| p + 1)
                + 1;
            ConfigError::new(file, ".", "the file is not UTF-8 text (is it a YAML file?)")
                .at(line, column)
        })?;
        Self::from_yaml_str(text, file)
    }

    /// Validates an experiment from YAML text; `file` names the source in errors.
    ///
    /// # Errors
    /// [`Error::Config`] when the text is not a valid experiment.
    pub fn from_yaml_str(text: &str, file: &str) -> Result<Self> {
        if text.len() > MAX_CONFIG_BYTES {
            return Self::from_yaml_bytes(text.as_bytes(), file);
        }
        if let Some((i, c)) = text
            .char_indices()
            .find(|(_, c)| c.is_control() && !matches!(c, '\n' | '\r' | '\t'))
        {
            let line = text[..i].matches('\n').count() + 1;
            let column = text[..i]
                .rsplit('\n')
                .next()
                .map_or(0, |l| l.chars().count())
                + 1;
            return Err(ConfigError::new(
                file,
                ".",
                format!("the file holds the control character {c:?}; is it a YAML file?"),
            )
            .at(line, column)
            .into());
        }
        let field = RefCell::new(String::from("."));
        let parsed =
            serde_saphyr::with_deserializer_from_str_with_options(text, parse_options(), |de| {
                serde_path_to_error::deserialize::<_, Experiment>(de).map_err(|e| {
                    *field.borrow_mut() = clean_path(&e.path().to_string());
                    e.into_inner()
                })
            });
        let exp = parsed.map_err(|e| {
            let raw = bare_message(&e);
            let line = e.location().map(|l| l.line() as usize);
            let message = plain_message(&raw, line.and_then(|l| text.lines().nth(l - 1)));
            let mut err = ConfigError::new(file, field.borrow().clone(), message.clone());
            if let Some(loc) = e.location() {
                err = err.at(loc.line() as usize, loc.column() as usize);
            }
            err.snippet = Some(
                e.to_string()
                    .replace("<input>", file)
                    .replace(&raw, &message),
            );
            Error::from(err)
        })?;
        let mut exp = exp;
        exp.check(file, Some(text))?;
        if !exp.steps.is_empty() {
            exp.step_positions = step_positions(text);
        }
        Ok(exp)
    }

    /// Checks what one field alone cannot: cross-field rules. `text` locates the fields.
    fn check(&self, file: &str, text: Option<&str>) -> Result<()> {
        // At the field the error names when the file has it (`backend.clients`), else at
        // its section's key; a missing section is reported at the start of the document.
        let locate = |path: &str, err: ConfigError| -> Error {
            let key = path.split(['.', '[']).next().unwrap_or(path);
            match text {
                Some(t) => {
                    let (line, col) = find_field(t, &err.path)
                        .or_else(|| find_top_level_key(t, key))
                        .unwrap_or((1, 1));
                    err.at(line, col).into()
                }
                None => err.into(),
            }
        };
        if let Some(search) = &self.search {
            if let Err((path, message)) = search.check() {
                return Err(locate("search", ConfigError::new(file, path, message)));
            }
            let fixed = if self.concurrency.is_some() {
                Some("concurrency")
            } else if self.request_rate.is_some() {
                Some("request_rate")
            } else {
                None
            };
            if let Some(list) = fixed {
                return Err(locate(
                    list,
                    ConfigError::new(
                        file,
                        list,
                        format!(
                            "`search` varies `{}` and the loop is its own: leave the `{list}` list out",
                            search.axis.param()
                        ),
                    ),
                ));
            }
        } else if self.concurrency.is_none() && self.request_rate.is_none() {
            return Err(locate(
                "concurrency",
                ConfigError::new(
                    file,
                    "concurrency",
                    "the experiment needs `concurrency` (a list of levels) or `request_rate` (a list of requests/s) to sweep",
                ),
            ));
        }
        if !self.endpoint.starts_with('/') {
            return Err(locate(
                "endpoint",
                ConfigError::new(
                    file,
                    "endpoint",
                    format!(
                        "expected an API path starting with `/`, e.g. `/v1/chat/completions`, got `{}`",
                        self.endpoint
                    ),
                ),
            ));
        }
        for reserved in ["concurrency", "request_rate", "isl", "osl"] {
            if self.sweep.keys().any(|k| k.as_str() == reserved) {
                return Err(locate(
                    "sweep",
                    ConfigError::new(
                        file,
                        format!("sweep.{reserved}"),
                        format!("`{reserved}` is a built-in axis; set it at the top level"),
                    ),
                ));
            }
        }
        if let Err((path, message)) = self.workload.check() {
            return Err(locate("workload", ConfigError::new(file, path, message)));
        }
        if self.workload.kind != super::WorkloadKind::Synthetic && self.load.dataset.is_some() {
            return Err(locate(
                "load",
                ConfigError::new(
                    file,
                    "load.dataset",
                    format!(
                        "a dataset's prompts are the synthetic workload's; `workload: {{kind: {}}}` makes its own",
                        self.workload.kind.as_str()
                    ),
                ),
            ));
        }
        if self.workload.kind == super::WorkloadKind::Trace && self.request_rate.is_some() {
            return Err(locate(
                "request_rate",
                ConfigError::new(
                    file,
                    "request_rate",
                    "a trace sets its own send times: sweep `concurrency` (a cap on requests in flight) and scale the times with `workload.time_scale`",
                ),
            ));
        }
        if let Err((path, message)) = self.backend.check() {
            return Err(locate("backend", ConfigError::new(file, path, message)));
        }
        if matches!(self.deployment, super::Deployment::Manifests { .. })
            && self.backend.kind != super::BackendKind::Kubernetes
        {
            return Err(locate(
                "deployment",
                ConfigError::new(
                    file,
                    "deployment.manifests",
                    "Kubernetes manifests need `backend: {kind: kubernetes}`",
                ),
            ));
        }
        if self.vars.keys().any(|k| k.as_str() == "port") {
            return Err(locate(
                "vars",
                ConfigError::new(
                    file,
                    "vars.port",
                    "`{port}` is the backend's (the port it picks); name the variable otherwise",
                ),
            ));
        }
        for t in self.treatments.iter() {
            if let Err(e) = self.treatment(t.name.as_str()) {
                let (path, message) = match &e {
                    Error::Config(c) => (
                        format!("treatments.{}.{}", t.name, c.path.trim_start_matches('.')),
                        c.message.clone(),
                    ),
                    other => (format!("treatments.{}", t.name), other.to_string()),
                };
                let mut err = ConfigError::new(file, path.trim_end_matches('.'), message);
                if let Some(t_text) = text
                    && let Some(line) = find_treatment(t_text, t.name.as_str())
                {
                    err = err.at(line, 3);
                    return Err(err.into());
                }
                return Err(locate("treatments", err));
            }
        }
        let mut names = BTreeSet::new();
        for (i, step) in self.steps.iter().enumerate() {
            if !names.insert(step.step_name().to_owned()) {
                return Err(locate(
                    "steps",
                    ConfigError::new(
                        file,
                        format!("steps[{i}].name"),
                        format!(
                            "two steps are named `{}`; give each a unique `name`",
                            step.step_name()
                        ),
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Applies `key.path=value` overrides, as given to `--set`. The value is read as YAML, so
    /// `--set concurrency=[1,2]` and `--set policy.fail_fast=true` work.
    ///
    /// # Errors
    /// [`Error::Config`] naming the override when it is malformed or makes the experiment
    /// invalid.
    pub fn with_overrides<S: AsRef<str>>(self, sets: &[S]) -> Result<Self> {
        if sets.is_empty() {
            return Ok(self);
        }
        let mut tree = serde_json::to_value(&self)
            .map_err(|e| Error::failed_from("serializing the experiment", e))?;
        for set in sets {
            let set = set.as_ref();
            let file = format!("--set {set}");
            let (key, raw) = set.split_once('=').ok_or_else(|| {
                ConfigError::new(
                    &file,
                    ".",
                    "expected `key.path=value`, e.g. `--set policy.retries=0`",
                )
            })?;
            let segments: Vec<&str> = key.trim().split('.').collect();
            if segments.iter().any(|s| s.is_empty()) {
                return Err(
                    ConfigError::new(&file, key, "the key path has an empty segment").into(),
                );
            }
            let value: serde_json::Value = if raw.trim().is_empty() {
                serde_json::Value::String(String::new())
            } else {
                serde_saphyr::from_str_with_options(raw, parse_options())
                    .unwrap_or_else(|_| serde_json::Value::String(raw.to_owned()))
            };
            set_path(&mut tree, &segments, value)
                .map_err(|m| Error::from(ConfigError::new(&file, key, m)))?;
            // Validate after each override so the error names the one that broke it.
            let exp: Experiment = serde_path_to_error::deserialize(&tree).map_err(|e| {
                let path = e.path().to_string();
                Error::from(ConfigError::new(&file, path, e.into_inner().to_string()))
            })?;
            exp.check(&file, None)?;
        }
        let exp: Experiment = serde_json::from_value(tree)
            .map_err(|e| Error::failed_from("applying overrides", e))?;
        Ok(exp)
    }

    /// The experiment as YAML, with every default filled in.
    pub fn to_yaml(&self) -> String {
        serde_saphyr::to_string(self).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
    }

    /// The experiment as JSON, with every default filled in.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }

    /// The names of the treatments, in order (empty without treatments).
    pub fn treatment_names(&self) -> Vec<&str> {
        self.treatments.iter().map(|t| t.name.as_str()).collect()
    }

    /// The experiment as treatment `name` runs it: its sections merged over the
    /// experiment's (sections key by key; a deployment of another kind replaces the whole
    /// section), its `vars` over the experiment's, `{treatment}` set, and no treatments of
    /// its own.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for an unknown name; [`Error::Config`] when the merged
    /// experiment is invalid (the path is within the merged experiment).
    pub fn treatment(&self, name: &str) -> Result<Experiment> {
        let t = self
            .treatments
            .get(name)
            .ok_or_else(|| Error::invalid(format!("treatment `{name}`"), "no such treatment"))?;
        let mut tree = self.to_json();
        if let Some(obj) = tree.as_object_mut() {
            obj.remove("treatments");
        }
        super::variants::merge(
            &mut tree,
            &serde_json::Value::Object(t.overlay.clone()),
            true,
        );
        if let Some(vars) = tree
            .as_object_mut()
            .map(|o| o.entry("vars").or_insert_with(|| serde_json::json!({})))
            .and_then(|v| v.as_object_mut())
        {
            vars.insert(
                "treatment".into(),
                serde_json::Value::String(name.to_owned()),
            );
        }
        let mut exp = Experiment::from_json(&tree, &format!("treatment `{name}`"))?;
        exp.step_positions = self.step_positions.clone();
        Ok(exp)
    }

    /// `text` with `{name}` replaced by the value of each variable (`vars`, `{model}` and
    /// `{model_name}`); other braces, such as the backend's `{port}`, are left alone.
    pub fn substitute(&self, text: &str) -> String {
        if !text.contains('{') {
            return text.to_owned();
        }
        let mut out = text.to_owned();
        let model = self.model.path.as_deref().unwrap_or(&self.model.name);
        for (k, v) in [("model", model), ("model_name", self.model.name.as_str())] {
            if !self.vars.keys().any(|n| n.as_str() == k) {
                out = out.replace(&format!("{{{k}}}"), v);
            }
        }
        for (k, v) in &self.vars {
            out = out.replace(&format!("{{{k}}}"), v.as_str());
        }
        out
    }

    /// The `deployment` section as it is deployed: every text with its placeholders filled
    /// ([`Experiment::substitute`]; `{port}` stays the backend's).
    pub fn resolved_deployment(&self) -> serde_json::Value {
        fn walk(exp: &Experiment, v: &mut serde_json::Value) {
            match v {
                serde_json::Value::String(s) => *s = exp.substitute(s),
                serde_json::Value::Array(a) => a.iter_mut().for_each(|x| walk(exp, x)),
                serde_json::Value::Object(o) => o.values_mut().for_each(|x| walk(exp, x)),
                _ => {}
            }
        }
        let mut v = serde_json::to_value(&self.deployment).unwrap_or_default();
        walk(self, &mut v);
        v
    }

    /// Reads an experiment back from [`Experiment::to_json`].
    ///
    /// # Errors
    /// [`Error::Config`] when the JSON is not a valid experiment; `source` names it.
    pub fn from_json(value: &serde_json::Value, source: &str) -> Result<Self> {
        let exp: Experiment = serde_path_to_error::deserialize(value).map_err(|e| {
            let path = e.path().to_string();
            Error::from(ConfigError::new(source, path, e.into_inner().to_string()))
        })?;
        exp.check(source, None)?;
        Ok(exp)
    }
}

fn set_path(
    tree: &mut serde_json::Value,
    segments: &[&str],
    value: serde_json::Value,
) -> std::result::Result<(), String> {
    let Some((last, parents)) = segments.split_last() else {
        return Err("empty key".into());
    };
    let mut node = tree;
    for (depth, seg) in parents.iter().enumerate() {
        let obj = node.as_object_mut().ok_or_else(|| {
            format!(
                "`{}` is not a section, it cannot hold `{seg}`",
                segments[..depth].join(".")
            )
        })?;
        node = obj
            .entry((*seg).to_owned())
            .or_insert_with(|| serde_json::Value::Object(Default::default()));
    }
    let obj = node.as_object_mut().ok_or_else(|| {
        format!(
            "`{}` is not a section, it cannot hold `{last}`",
            parents.join(".")
        )
    })?;
    obj.insert((*last).to_owned(), value);
    Ok(())
}

/// The 1-based line of treatment `name` under the top-level `treatments:` mapping.
fn find_treatment(text: &str, name: &str) -> Option<usize> {
    let (start, _) = find_top_level_key(text, "treatments")?;
    text.lines()
        .enumerate()
        .skip(start)
        .take_while(|(_, l)| l.trim().is_empty() || l.starts_with([' ', '\t', '#']))
        .find(|(_, l)| {
            let t = l.trim_start();
            t.strip_prefix(name)
                .or_else(|| t.strip_prefix(&format!("\"{name}\"")))
                .is_some_and(|r| r.trim_start().starts_with(':'))
        })
        .map(|(i, _)| i + 1)
}

/// Finds `key:` at the start of a line (a top-level key) and returns its 1-based position.
fn find_top_level_key(text: &str, key: &str) -> Option<(usize, usize)> {
    text.lines().enumerate().find_map(|(i, line)| {
        let rest = line.strip_prefix(key)?;
        rest.trim_start().starts_with(':').then_some((i + 1, 1))
    })
}

/// The line and column of the value of `section.field` (a path of two keys, the first a
/// top-level mapping), when the file has it.
fn find_field(text: &str, path: &str) -> Option<(usize, usize)> {
    let (section, rest) = path.split_once('.')?;
    let field = rest.split(['.', '[']).next()?;
    let top: std::collections::BTreeMap<String, FieldPositions> =
        serde_saphyr::from_str_with_options(text, parse_options()).ok()?;
    top.get(section)?
        .0
        .iter()
        .find_map(|(k, at)| (k == field).then_some(*at))
}

/// The keys of a mapping with where each value starts; nothing for any other value.
#[derive(Default)]
struct FieldPositions(Vec<(String, (usize, usize))>);

impl<'de> serde::Deserialize<'de> for FieldPositions {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        use serde::de::{IgnoredAny, MapAccess, Visitor};
        struct Keys;
        impl<'de> Visitor<'de> for Keys {
            type Value = FieldPositions;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any value")
            }
            fn visit_map<A: MapAccess<'de>>(
                self,
                mut map: A,
            ) -> std::result::Result<FieldPositions, A::Error> {
                let mut out = Vec::new();
                while let Some(key) = map.next_key::<String>()? {
                    let value: serde_saphyr::Spanned<IgnoredAny> = map.next_value()?;
                    let at = &value.referenced;
                    out.push((key, (at.line() as usize, at.column() as usize)));
                }
                Ok(FieldPositions(out))
            }
            // Anything but a mapping has no fields.
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> std::result::Result<FieldPositions, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(FieldPositions::default())
            }
            fn visit_bool<E>(self, _: bool) -> std::result::Result<FieldPositions, E> {
                Ok(FieldPositions::default())
            }
            fn visit_i64<E>(self, _: i64) -> std::result::Result<FieldPositions, E> {
                Ok(FieldPositions::default())
            }
            fn visit_u64<E>(self, _: u64) -> std::result::Result<FieldPositions, E> {
                Ok(FieldPositions::default())
            }
            fn visit_f64<E>(self, _: f64) -> std::result::Result<FieldPositions, E> {
                Ok(FieldPositions::default())
            }
            fn visit_str<E>(self, _: &str) -> std::result::Result<FieldPositions, E> {
                Ok(FieldPositions::default())
            }
            fn visit_unit<E>(self) -> std::result::Result<FieldPositions, E> {
                Ok(FieldPositions::default())
            }
            fn visit_none<E>(self) -> std::result::Result<FieldPositions, E> {
                Ok(FieldPositions::default())
            }
        }
        d.deserialize_any(Keys)
    }
}

/// The line and column of each item of the top-level `steps` list.
fn step_positions(text: &str) -> super::Positions {
    #[derive(serde::Deserialize)]
    struct Steps {
        #[serde(default)]
        steps: Vec<serde_saphyr::Spanned<serde::de::IgnoredAny>>,
    }
    let found: Option<Steps> = serde_saphyr::from_str_with_options(text, parse_options()).ok();
    super::Positions(
        found
            .map(|s| {
                s.steps
                    .iter()
                    .map(|sp| {
                        (
                            sp.referenced.line() as usize,
                            sp.referenced.column() as usize,
                        )
                    })
                    .collect()
            })
            .unwrap_or_default(),
    )
}

/// serde_path_to_error writes `?` for a position it cannot name (inside a key, or a
/// syntax error); drop it, keeping the part that is known.
fn clean_path(path: &str) -> String {
    let known = path.trim_end_matches('?').trim_end_matches('.');
    if known.is_empty() {
        ".".to_owned()
    } else {
        known.to_owned()
    }
}
