//! The stores against a real S3-compatible server (moto, on loopback): the core conformance
//! suite, and the spool through an outage.

use std::sync::Arc;
use std::time::Duration;

use harness_core::testkit::store_conformance;
use harness_core::{ArtifactKey, ArtifactStore, Error};
use harness_storage::testkit::{MotoServer, TcpProxy, s3_options};
use harness_storage::{SpoolingStore, StoreOptions};

fn s3(url: &str, addr: std::net::SocketAddr) -> Arc<dyn ArtifactStore> {
    let opts = StoreOptions::from_map(url, &s3_options(addr)).expect("options");
    harness_storage::open_with(url, &opts).expect("open s3")
}

fn key(k: &str) -> ArtifactKey {
    ArtifactKey::new(k).expect("key")
}

#[tokio::test]
async fn s3_store_passes_conformance_with_and_without_prefix() {
    let moto = MotoServer::start().await;
    moto.create_bucket("conf").await;
    let store = s3("s3://conf", moto.addr());
    assert_eq!(store.describe(), "s3://conf");
    store_conformance(store.as_ref()).await;
    let prefixed = s3("s3://conf/team/runs", moto.addr());
    assert_eq!(prefixed.describe(), "s3://conf/team/runs");
    store_conformance(prefixed.as_ref()).await;
    // The prefix really is a folder of the bucket.
    let k = key("runs/e/r/manifest.json");
    prefixed.put(&k, "m".into()).await.expect("put");
    assert_eq!(
        store
            .get(&key("team/runs/runs/e/r/manifest.json"))
            .await
            .expect("get"),
        "m"
    );
}

#[tokio::test]
async fn a_missing_bucket_fails_within_seconds_with_the_store_named() {
    let moto = MotoServer::start().await;
    let store = s3("s3://nope", moto.addr());
    let started = std::time::Instant::now();
    let err = store
        .put(&key("a"), "x".into())
        .await
        .expect_err("no bucket");
    assert!(err.to_string().contains("s3://nope"), "{err}");
    // Bounded by the short retry settings, not object_store's minutes.
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn spool_keeps_writes_through_an_outage_and_uploads_each_once() {
    let moto = MotoServer::start().await;
    moto.create_bucket("spool").await;
    let proxy = TcpProxy::start(moto.addr()).await;
    let direct = s3("s3://spool", moto.addr());
    let via_proxy = s3("s3://spool", proxy.addr());
    let dir = tempfile::tempdir().expect("tempdir");
    let spool = harness_storage::open(&dir.path().display().to_string()).expect("spool");
    let store = SpoolingStore::new(via_proxy, spool.clone())
        .await
        .expect("spooling store")
        .probe_every(Duration::from_millis(200));

    store
        .put(&key("runs/e/r/journal/a.json"), "pending".into())
        .await
        .expect("up");
    store
        .put_if_absent(&key("runs/e/r/manifest.json"), "m1".into())
        .await
        .expect("create while up");
    assert_eq!(store.spooled(), 0);

    proxy.cut();
    // During the outage every write still succeeds, into the spool.
    store
        .put(&key("runs/e/r/journal/a.json"), "running".into())
        .await
        .expect("spooled");
    store
        .put(&key("runs/e/r/cells/a/records.jsonl"), "r1\nr2\n".into())
        .await
        .expect("spooled");
    store
        .put_if_absent(&key("runs/e/r/other.json"), "created".into())
        .await
        .expect("spooled create");
    assert_eq!(store.spooled(), 3);
    // Reads see the newest copies; the remote still has the old journal entry.
    assert_eq!(
        store
            .get(&key("runs/e/r/journal/a.json"))
            .await
            .expect("get"),
        "running"
    );
    assert_eq!(
        direct
            .get(&key("runs/e/r/journal/a.json"))
            .await
            .expect("get"),
        "pending"
    );
    let listed: Vec<String> = store
        .list(&key("runs/e/r"))
        .await
        .expect("list from the spool")
        .into_iter()
        .map(|m| m.key.to_string())
        .collect();
    assert!(
        listed.contains(&"runs/e/r/cells/a/records.jsonl".to_owned()),
        "{listed:?}"
    );
    // A second create of a spooled key is refused, as the remote would.
    assert!(matches!(
        store
            .put_if_absent(&key("runs/e/r/other.json"), "again".into())
            .await,
        Err(Error::AlreadyExists { .. })
    ));
    // A flush while the remote is still down uploads nothing and loses nothing.
    let early = store.flush().await;
    assert_eq!((early.uploaded, early.remaining), (0, 3), "{early:?}");

    proxy.restore().await;
    // Back up: the background probe finds it and uploads the spool, with no flush called.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while store.spooled() > 0 || store.is_down() {
        assert!(
            std::time::Instant::now() < deadline,
            "the spool was not uploaded: {} objects left",
            store.spooled()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(store.uploaded(), 3);
    // Writes go to the remote again.
    store
        .put(&key("runs/e/r/journal/a.json"), "succeeded".into())
        .await
        .expect("up again");
    assert_eq!(store.spooled(), 0);
    let report = store.flush().await;
    assert_eq!((report.uploaded, report.remaining), (0, 0), "{report:?}");
    assert!(report.errors.is_empty(), "{:?}", report.errors);

    // Every object in the bucket exactly once, each with its newest content.
    let all: Vec<(String, u64)> = direct
        .list(&key("runs"))
        .await
        .expect("list")
        .into_iter()
        .map(|m| (m.key.to_string(), m.size))
        .collect();
    let names: Vec<&str> = all.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        names,
        [
            "runs/e/r/cells/a/records.jsonl",
            "runs/e/r/journal/a.json",
            "runs/e/r/manifest.json",
            "runs/e/r/other.json"
        ]
    );
    assert_eq!(
        direct
            .get(&key("runs/e/r/journal/a.json"))
            .await
            .expect("get"),
        "succeeded"
    );
    assert_eq!(
        direct
            .get(&key("runs/e/r/cells/a/records.jsonl"))
            .await
            .expect("get"),
        "r1\nr2\n"
    );
    assert_eq!(
        direct.get(&key("runs/e/r/other.json")).await.expect("get"),
        "created"
    );
    // The spool is empty: nothing will be uploaded a second time.
    let left = spool.list(&key("runs")).await.expect("spool list");
    assert!(left.is_empty(), "{left:?}");
    let again = store.flush().await;
    assert_eq!(again.uploaded, 0);
}

#[tokio::test]
async fn a_spool_left_by_a_dead_process_is_flushed_by_the_next() {
    let moto = MotoServer::start().await;
    moto.create_bucket("left").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let spool = harness_storage::open(&dir.path().display().to_string()).expect("spool");
    // What an earlier process left: a spooled object and a create-only one.
    spool
        .put(&key("runs/e/r/cells/a/summary.json"), "s".into())
        .await
        .expect("put");
    spool
        .put(&key("runs/e/r/manifest.json"), "m".into())
        .await
        .expect("put");
    spool
        .put(&key("create-only/runs/e/r/manifest.json"), "".into())
        .await
        .expect("put");
    let remote = s3("s3://left", moto.addr());
    let store = SpoolingStore::new(remote.clone(), spool)
        .await
        .expect("store");
    assert_eq!(store.spooled(), 2);
    let report = store.flush().await;
    assert_eq!((report.uploaded, report.remaining), (2, 0), "{report:?}");
    assert_eq!(
        remote
            .get(&key("runs/e/r/manifest.json"))
            .await
            .expect("get"),
        "m"
    );
}
