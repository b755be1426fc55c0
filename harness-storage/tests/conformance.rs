//! The core store conformance suite against every store URL this crate opens.

use harness_core::testkit::store_conformance;

#[tokio::test]
async fn file_store_passes_conformance() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = harness_storage::open(&format!("file://{}", dir.path().display())).expect("open");
    store_conformance(store.as_ref()).await;
}

#[tokio::test]
async fn plain_path_opens_a_file_store() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = harness_storage::open(&dir.path().display().to_string()).expect("open");
    assert!(store.describe().starts_with("file://"));
    store_conformance(store.as_ref()).await;
}

#[tokio::test]
async fn memory_store_passes_conformance() {
    let store = harness_storage::open("memory://").expect("open");
    store_conformance(store.as_ref()).await;
}

#[tokio::test]
async fn core_memory_store_passes_conformance() {
    store_conformance(&harness_core::MemoryStore::new()).await;
}

#[test]
fn unsupported_and_invalid_urls_are_rejected_with_the_url() {
    let err = harness_storage::open("s3://bucket/prefix").expect_err("s3 is not there yet");
    let msg = err.to_string();
    assert!(
        msg.contains("s3://bucket/prefix") && msg.contains("`s3`"),
        "{msg}"
    );
    let err = harness_storage::open("file://").expect_err("empty path");
    assert!(err.to_string().contains("no folder"), "{err}");
}

#[tokio::test]
async fn file_store_writes_are_atomic_and_leave_no_temp_files() {
    use harness_core::ArtifactKey;
    let dir = tempfile::tempdir().expect("tempdir");
    let store = harness_storage::open(&format!("file://{}", dir.path().display())).expect("open");
    let key =
        ArtifactKey::new("runs/e/r/cells/concurrency=1,isl=2,osl=3/summary.json").expect("key");
    store
        .put(&key, "x".repeat(1 << 20).into())
        .await
        .expect("put");
    let on_disk = dir
        .path()
        .join("runs/e/r/cells/concurrency=1,isl=2,osl=3/summary.json");
    assert_eq!(std::fs::metadata(&on_disk).expect("file").len(), 1 << 20);
    let entries: Vec<_> = std::fs::read_dir(on_disk.parent().expect("parent"))
        .expect("dir")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(
        entries.len(),
        1,
        "only the object itself, no temp files: {entries:?}"
    );
}
