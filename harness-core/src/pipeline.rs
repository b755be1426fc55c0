//! A [`Pipeline`]: setup steps, per-cell steps and teardown steps; and the [`StepRegistry`]
//! that builds steps from an experiment's `steps` list.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::config::values::Name;
use crate::config::{ConfigError, Experiment, Stage, StepSpec};
use crate::error::{Error, Result};
use crate::step::Step;

/// A step in a pipeline, with its own timeout if it has one.
#[derive(Debug, Clone)]
pub struct PipelineStep {
    /// The step.
    pub step: Arc<dyn Step>,
    /// Its timeout, instead of the experiment's `policy.step_timeout`.
    pub timeout: Option<Duration>,
}

/// The steps of a run by stage. Build it with [`Pipeline::builder`].
///
/// ```
/// use harness_core::{Pipeline, StepOutput, step_fn};
/// let pipeline = Pipeline::builder()
///     .setup(step_fn("prepare", |_| async { Ok(StepOutput::new()) }))
///     .per_cell(step_fn("measure", |_| async { Ok(StepOutput::new().metric("x", 1.0)) }))
///     .teardown(step_fn("cleanup", |_| async { Ok(StepOutput::new()) }))
///     .build()?;
/// assert_eq!(pipeline.steps(harness_core::Stage::Cell).len(), 1);
/// # Ok::<(), harness_core::Error>(())
/// ```
#[derive(Debug, Clone, Default)]
pub struct Pipeline {
    setup: Vec<PipelineStep>,
    cell: Vec<PipelineStep>,
    teardown: Vec<PipelineStep>,
}

impl Pipeline {
    /// An empty builder.
    pub fn builder() -> PipelineBuilder {
        PipelineBuilder::default()
    }

    /// The steps of `stage`, in order.
    pub fn steps(&self, stage: Stage) -> &[PipelineStep] {
        match stage {
            Stage::Setup => &self.setup,
            Stage::Cell => &self.cell,
            Stage::Teardown => &self.teardown,
        }
    }
}

/// Builds a [`Pipeline`].
#[derive(Debug, Default)]
#[must_use]
pub struct PipelineBuilder {
    steps: Vec<(Stage, PipelineStep)>,
}

impl PipelineBuilder {
    /// Adds a step that runs once before the first cell.
    pub fn setup(self, step: impl Step + 'static) -> Self {
        self.add(Stage::Setup, Arc::new(step), None)
    }

    /// Adds a step that runs for every cell.
    pub fn per_cell(self, step: impl Step + 'static) -> Self {
        self.add(Stage::Cell, Arc::new(step), None)
    }

    /// Adds a step that runs once at the end, always.
    pub fn teardown(self, step: impl Step + 'static) -> Self {
        self.add(Stage::Teardown, Arc::new(step), None)
    }

    /// Adds a deployment's setup step and, when it has one, its teardown step.
    pub fn deployment(self, steps: crate::steps::DeploymentSteps) -> Self {
        let builder = self.add(Stage::Setup, steps.setup, None);
        match steps.teardown {
            Some(t) => builder.add(Stage::Teardown, t, None),
            None => builder,
        }
    }

    /// Adds a shared step to `stage`, with an optional timeout of its own.
    pub fn add(mut self, stage: Stage, step: Arc<dyn Step>, timeout: Option<Duration>) -> Self {
        self.steps.push((stage, PipelineStep { step, timeout }));
        self
    }

    /// Checks the names and builds the pipeline.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] when a step name is not a valid path segment or two steps in
    /// one stage share a name.
    pub fn build(self) -> Result<Pipeline> {
        let mut seen: BTreeSet<(u8, String)> = BTreeSet::new();
        let mut pipeline = Pipeline::default();
        for (stage, ps) in self.steps {
            let name = ps.step.name().to_owned();
            Name::new(&name).map_err(|r| Error::invalid(format!("step name `{name}`"), r))?;
            if !seen.insert((stage as u8, name.clone())) {
                return Err(Error::invalid(
                    format!("step name `{name}`"),
                    format!("two {stage:?} steps share it; names must be unique in a stage"),
                ));
            }
            match stage {
                Stage::Setup => pipeline.setup.push(ps),
                Stage::Cell => pipeline.cell.push(ps),
                Stage::Teardown => pipeline.teardown.push(ps),
            }
        }
        Ok(pipeline)
    }
}

/// Makes a step from its spec in the experiment. `source` names the experiment file and
/// `index` the step's position in `steps`, for error messages.
pub type StepFactory =
    Arc<dyn Fn(&StepSpec, &StepSource<'_>) -> Result<Arc<dyn Step>> + Send + Sync>;

/// Where a step spec came from, so factories can report located errors.
#[derive(Debug, Clone, Copy)]
pub struct StepSource<'a> {
    /// The experiment file.
    pub file: &'a str,
    /// The step's position in `steps`.
    pub index: usize,
    /// The step's line and column in the file, when known.
    pub position: Option<(usize, usize)>,
    /// The experiment the step belongs to, for parameters that depend on other sections.
    pub experiment: &'a Experiment,
}

impl StepSource<'_> {
    /// A located error about parameter `param` of this step.
    pub fn error(&self, param: &str, message: impl Into<String>) -> Error {
        let err = ConfigError {
            file: self.file.to_owned(),
            line: self.position.map(|p| p.0),
            column: self.position.map(|p| p.1),
            path: format!("steps[{}].{param}", self.index),
            message: message.into(),
            snippet: None,
        };
        err.into()
    }

    /// Reads the step's parameters into `T` (use `#[serde(deny_unknown_fields)]`).
    ///
    /// # Errors
    /// A located [`Error::Config`] naming the parameter.
    pub fn params<T: serde::de::DeserializeOwned>(&self, spec: &StepSpec) -> Result<T> {
        let value = serde_json::Value::Object(
            spec.params
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        );
        serde_path_to_error::deserialize(value).map_err(|e| {
            let path = e.path().to_string();
            let path = if path == "." { "kind".to_owned() } else { path };
            self.error(&path, e.into_inner().to_string())
        })
    }
}

/// Step kinds by name, for building pipelines from experiment files. The built-in kinds
/// are registered by [`StepRegistry::with_builtins`]; tools add their own.
#[derive(Clone, Default)]
pub struct StepRegistry {
    kinds: BTreeMap<String, StepFactory>,
}

impl fmt::Debug for StepRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StepRegistry")
            .field("kinds", &self.kinds.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl StepRegistry {
    /// A registry with the kinds of this crate: `command`.
    pub fn with_builtins() -> Self {
        let mut r = StepRegistry::default();
        r.register("command", crate::steps::CommandStep::factory());
        r
    }

    /// Adds or replaces a kind.
    pub fn register(&mut self, kind: impl Into<String>, factory: StepFactory) {
        self.kinds.insert(kind.into(), factory);
    }

    /// The registered kinds.
    pub fn kinds(&self) -> impl Iterator<Item = &str> {
        self.kinds.keys().map(String::as_str)
    }

    /// Builds the experiment's `steps` into `builder`. `file` names the experiment in errors.
    ///
    /// # Errors
    /// A located [`Error::Config`] for an unknown kind or bad parameters.
    pub fn build_into(
        &self,
        exp: &Experiment,
        file: &str,
        mut builder: PipelineBuilder,
    ) -> Result<PipelineBuilder> {
        for (index, spec) in exp.steps.iter().enumerate() {
            let source = StepSource {
                file,
                index,
                position: exp.step_positions.get(index).copied(),
                experiment: exp,
            };
            let factory = self.kinds.get(spec.kind.as_str()).ok_or_else(|| {
                source.error(
                    "kind",
                    format!(
                        "unknown step kind `{}`; known kinds: {}",
                        spec.kind,
                        self.kinds().collect::<Vec<_>>().join(", ")
                    ),
                )
            })?;
            let step = factory(spec, &source)?;
            builder = builder.add(spec.stage, step, spec.timeout.map(|t| t.get()));
        }
        Ok(builder)
    }
}
