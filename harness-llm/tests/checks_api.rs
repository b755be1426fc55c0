//! Functional and accuracy checks composed in a test suite, as a downstream `#[tokio::test]`
//! would: against the mock, typed results, and failure messages that say which check,
//! which item, what was expected and what came back.

use std::path::{Path, PathBuf};

use harness_core::config::{EndpointType, MockDeployment};
use harness_llm::checks::{Target, accuracy, functional, load_items};
use harness_llm::mock::MockServer;

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../experiments/data")
        .join(name)
}

/// The mock answering the shipped dataset from its lookup file (16 of 20 right).
async fn mock() -> MockServer {
    let mut cfg = MockDeployment::default();
    cfg.answers = Some(data("accuracy-mock-answers.jsonl"));
    MockServer::start(cfg, "127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("mock starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_test_suite_composes_checks_and_reads_typed_results()
-> Result<(), Box<dyn std::error::Error>> {
    let server = mock().await;
    let target = Target::new(server.url(), "harness-mock");

    // Functional: every check passes, by name.
    let report = functional(&target, 4).await?;
    report.all_passed()?;
    assert!(
        report
            .checks
            .iter()
            .any(|c| c.name == "stop ends the output")
    );

    // Accuracy: typed per item, and the bound the mock meets.
    let items = load_items(&data("accuracy.jsonl"))?;
    let acc = accuracy(&target, &items, 32, 4).await?;
    assert_eq!((acc.correct, acc.items.len(), acc.errors), (16, 20, 0));
    acc.at_least(0.8)?;
    let wrong: Vec<usize> = acc
        .items
        .iter()
        .filter(|i| !i.correct)
        .map(|i| i.index)
        .collect();
    assert_eq!(wrong.len(), 4);

    // A bound it misses: the message lists every wrong item with expected and got.
    let failure = acc.at_least(0.9).expect_err("0.8 < 0.9");
    let text = failure.to_string();
    assert!(
        text.starts_with("accuracy 0.800 (16 of 20) is below 0.9"),
        "{text}"
    );
    for i in acc.items.iter().filter(|i| !i.correct) {
        assert!(
            text.contains(&format!("item {} ", i.index))
                && text.contains(&format!("expected {:?}, got {:?}", i.expected, i.reply)),
            "item {} is not described: {text}",
            i.index
        );
    }
    assert_eq!(format!("{failure:?}"), text, "unwrap prints the same words");
    server.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_checks_name_the_check_and_what_it_saw() -> Result<(), Box<dyn std::error::Error>> {
    let server = mock().await;
    // A model the server does not list: the first check fails, and says why.
    let report = functional(&Target::new(server.url(), "another-model"), 2).await?;
    let failure = report.all_passed().expect_err("the model is not listed");
    let text = failure.to_string();
    assert!(
        text.contains("`models lists the model`") && text.contains("`another-model` not in"),
        "{text}"
    );
    // A completions target is not asked for chat.
    let completions =
        Target::new(server.url(), "harness-mock").endpoint_type(EndpointType::Completions);
    assert!(completions.url().ends_with("/v1/completions"));
    let report = functional(&completions, 2).await?;
    report.all_passed()?;
    assert!(report.checks.iter().all(|c| !c.name.starts_with("chat")));

    // A server that is gone: every item is wrong, with the request's error as what came back.
    let url = server.url();
    server.shutdown().await;
    let items = load_items(&data("accuracy.jsonl"))?;
    let acc = accuracy(&Target::new(url, "harness-mock"), &items[..2], 8, 2).await?;
    assert_eq!((acc.correct, acc.errors), (0, 2));
    let text = acc.all_correct().expect_err("nothing answered").to_string();
    assert!(
        text.contains("item 0") && text.contains("no reply ("),
        "{text}"
    );
    Ok(())
}
