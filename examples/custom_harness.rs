//! A downstream harness: the whole `harness` command line with one step kind of its own,
//! `echo-check`, which posts a prompt to the model and checks that the reply echoes it,
//! reporting the metric `echo.ok` (1 or 0).
//!
//! ```sh
//! cargo run -p examples --bin custom_harness -- run my-experiment.yaml
//! cargo run -p examples --bin custom_harness -- show RUN --json
//! ```
//!
//! An experiment names the kind like any built-in one, and its parameters get located
//! errors:
//!
//! ```yaml
//! steps:
//!   - kind: echo-check
//!     prompt: "echo this back"
//! ```
//!
//! Without arguments it runs a small demo: a sweep against the mock server answering the
//! prompt with itself, stored in a temporary folder.

use std::process::ExitCode;
use std::sync::Arc;

use async_trait::async_trait;
use harness::core::pipeline::{StepFactory, StepSource};
use harness::core::{Endpoint, Error, Result, Step, StepContext, StepOutput};
use serde::Deserialize;

/// Posts `prompt` to the model and checks that the reply is the prompt.
#[derive(Debug)]
struct EchoCheck {
    name: String,
    prompt: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EchoParams {
    prompt: String,
}

impl EchoCheck {
    /// The factory for kind `echo-check`: parameter `prompt` (not empty).
    fn factory() -> StepFactory {
        Arc::new(|spec, source: &StepSource<'_>| {
            let p: EchoParams = source.params(spec)?;
            if p.prompt.trim().is_empty() {
                return Err(source.error("prompt", "is empty; give the text to echo"));
            }
            Ok(Arc::new(EchoCheck {
                name: spec.step_name().to_owned(),
                prompt: p.prompt,
            }) as Arc<dyn Step>)
        })
    }
}

#[async_trait]
impl Step for EchoCheck {
    fn name(&self) -> &str {
        &self.name
    }

    async fn run(&self, cx: &StepContext) -> Result<StepOutput> {
        let endpoint = cx
            .resources()
            .get::<Endpoint>()
            .ok_or_else(|| Error::failed(&self.name, "no endpoint: nothing was deployed"))?;
        let url = endpoint.url(&cx.experiment().endpoint);
        let body = serde_json::json!({
            "model": cx.experiment().model.name,
            "messages": [{"role": "user", "content": self.prompt}],
            "max_tokens": 64,
        });
        let failed = |e: String| Error::failed(format!("POST {url}"), e);
        let reply: serde_json::Value = reqwest::Client::new()
            .post(&url)
            .json(&body)
            .send()
            .await
            .map_err(|e| failed(e.to_string()))?
            .json()
            .await
            .map_err(|e| failed(e.to_string()))?;
        let text = reply["choices"][0]["message"]["content"]
            .as_str()
            .unwrap_or_default()
            .trim();
        let ok = text == self.prompt.trim();
        if !ok {
            return Err(Error::failed(
                &self.name,
                format!("expected the echo {:?}, got {text:?}", self.prompt),
            ));
        }
        Ok(StepOutput::new().metric("echo.ok", 1.0))
    }
}

fn main() -> ExitCode {
    let app = match harness::App::builder()
        .name("custom_harness")
        .step_kind("echo-check", EchoCheck::factory())
        .build()
    {
        Ok(app) => app,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(harness::exit::EXIT_INVALID);
        }
    };
    if std::env::args_os().len() > 1 {
        return app.main();
    }
    match demo_experiment() {
        Ok((dir, exp)) => {
            let store = format!("file://{}", dir.join("runs").display());
            let code = app.main_from([
                "custom_harness",
                "run",
                exp.to_str().unwrap_or_default(),
                "--no-progress",
                "--store",
                &store,
            ]);
            let _ = std::fs::remove_dir_all(&dir);
            code
        }
        Err(e) => {
            eprintln!("error: writing the demo experiment: {e}");
            ExitCode::FAILURE
        }
    }
}

/// A demo experiment in a fresh temporary folder: the mock answers the prompt with itself.
fn demo_experiment() -> std::io::Result<(std::path::PathBuf, std::path::PathBuf)> {
    let dir = std::env::temp_dir().join(format!("custom-harness-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let answers = dir.join("answers.jsonl");
    std::fs::write(
        &answers,
        "{\"prompt\": \"echo this back\", \"answer\": \"echo this back\"}\n",
    )?;
    let exp = dir.join("echo.yaml");
    std::fs::write(
        &exp,
        format!(
            "name: echo\nmodel: {{name: harness-mock}}\nconcurrency: [1, 2]\n\
             benchmark: {{isl_osl: [[16, 8]]}}\n\
             deployment: {{mock: {{ttft_ms: 5, itl_ms: 1, answers: {}}}}}\n\
             steps:\n  - kind: echo-check\n    prompt: \"echo this back\"\n",
            answers.display()
        ),
    )?;
    Ok((dir, exp))
}
