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
    let err = harness_storage::open("ftp://host/x").expect_err("ftp is not a store");
    let msg = err.to_string();
    assert!(
        msg.contains("ftp://host/x") && msg.contains("`ftp`"),
        "{msg}"
    );
    let err = harness_storage::open("file://").expect_err("empty path");
    assert!(err.to_string().contains("no folder"), "{err}");
    let err = harness_storage::open("s3://").expect_err("no bucket");
    assert!(err.to_string().contains("no bucket"), "{err}");
}

#[test]
fn bad_store_options_name_the_option_but_never_its_value() {
    let mut map = std::collections::BTreeMap::new();
    map.insert("no_such_option".to_owned(), "hunter2-value".to_owned());
    let opts = harness_storage::StoreOptions::from_map("s3://b", &map).expect("options");
    let err = harness_storage::open_with("s3://b/p", &opts).expect_err("unknown option");
    let msg = err.to_string();
    assert!(msg.contains("`no_such_option`"), "{msg}");
    assert!(!msg.contains("hunter2-value"), "{msg}");
    map.clear();
    map.insert("retry_timeout".to_owned(), "soon".to_owned());
    let err = harness_storage::StoreOptions::from_map("s3://b", &map).expect_err("bad duration");
    assert!(err.to_string().contains("`retry_timeout`"), "{err}");
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

#[test]
fn gcs_and_azure_urls_open_with_their_options_and_describe_without_secrets() {
    let mut map = std::collections::BTreeMap::new();
    map.insert("service_account_key".to_owned(), "{}".to_owned());
    let opts = harness_storage::StoreOptions::from_map("gs://b", &map).expect("options");
    // An unusable service account key is refused when the store is built, naming the store.
    let err = harness_storage::open_with("gs://bucket/team", &opts).expect_err("bad key");
    assert!(err.to_string().contains("gs://bucket/team"), "{err}");
    let opts =
        harness_storage::StoreOptions::from_map("gs://b", &Default::default()).expect("options");
    let store = harness_storage::open_with("gs://bucket/team", &opts).expect("gcs opens");
    assert_eq!(store.describe(), "gs://bucket/team");
    let mut map = std::collections::BTreeMap::new();
    map.insert("account_name".to_owned(), "devstoreaccount1".to_owned());
    map.insert("access_key".to_owned(), "c2VjcmV0LWtleQ==".to_owned());
    let opts = harness_storage::StoreOptions::from_map("az://c", &map).expect("options");
    let store = harness_storage::open_with("az://container/runs", &opts).expect("azure opens");
    assert_eq!(store.describe(), "az://container/runs");
    assert!(harness_storage::is_remote("gs://b") && harness_storage::is_remote("az://c"));
    assert!(!harness_storage::is_remote("file://./x") && !harness_storage::is_remote("memory://"));
}
