//! The fake API server refuses what a real one refuses, so tests on it fail for the reasons
//! a cluster would: stale writes, unknown kinds, server-side apply conflicts, finalizers;
//! and its watches deliver changes as they happen.

use futures::{StreamExt, TryStreamExt};
use harness_k8s::testkit::FakeApiServer;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use serde_json::json;

fn cm(name: &str, data: serde_json::Value) -> ConfigMap {
    serde_json::from_value(json!({"metadata": {"name": name}, "data": data})).expect("configmap")
}

fn code(e: kube::Error) -> u16 {
    match e {
        kube::Error::Api(s) => s.code,
        other => panic!("not an API error: {other}"),
    }
}

#[tokio::test]
async fn stale_writes_are_conflicts() {
    let fake = FakeApiServer::new();
    let api: Api<ConfigMap> = Api::namespaced(fake.client(), "bench");
    let first = api
        .create(&PostParams::default(), &cm("c", json!({"k": "1"})))
        .await
        .expect("create");
    let mut second = first.clone();
    second.data = Some([("k".to_owned(), "2".to_owned())].into());
    api.replace("c", &PostParams::default(), &second)
        .await
        .expect("a current copy");
    // `first` is stale now: an update or a patch that carries its version is refused.
    let e = api
        .replace("c", &PostParams::default(), &first)
        .await
        .expect_err("stale");
    assert_eq!(code(e), 409);
    let patch = json!({"metadata": {"resourceVersion": first.metadata.resource_version}, "data": {"k": "3"}});
    let e = api
        .patch("c", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect_err("stale");
    assert_eq!(code(e), 409);
    assert_eq!(
        api.get("c").await.expect("get").data.expect("data")["k"],
        "2"
    );
    // Creating it again is refused too.
    let e = api
        .create(&PostParams::default(), &cm("c", json!({})))
        .await
        .expect_err("exists");
    assert_eq!(code(e), 409);
}

#[tokio::test]
async fn the_status_is_a_subresource_and_the_generation_counts_spec_changes() {
    let fake = FakeApiServer::new();
    let api: Api<harness_k8s::crd::DynamoBenchmark> = Api::namespaced(fake.client(), "bench");
    let r: harness_k8s::crd::DynamoBenchmark = serde_json::from_value(json!({
        "apiVersion": "harness.dev/v1alpha1", "kind": "DynamoBenchmark",
        "metadata": {"name": "b"}, "spec": {"experiment": {"name": "b", "model": {"name": "m"}}},
        "status": {"phase": "Succeeded"},
    }))
    .expect("resource");
    let created = api
        .create(&PostParams::default(), &r)
        .await
        .expect("create");
    assert!(created.status.is_none(), "the status is not set on create");
    assert_eq!(created.metadata.generation, Some(1));
    // A patch of the object does not change its status; one of /status changes only that.
    let p = json!({"status": {"phase": "Running"}, "spec": {"store": "s3://x"}});
    let o = api
        .patch("b", &PatchParams::default(), &Patch::Merge(&p))
        .await
        .expect("patch");
    assert!(o.status.is_none());
    assert_eq!(o.metadata.generation, Some(2));
    let o = api
        .patch_status(
            "b",
            &PatchParams::default(),
            &Patch::Merge(&json!({"status": {"phase": "Running"}, "spec": {"store": "s3://y"}})),
        )
        .await
        .expect("status");
    assert_eq!(o.status.and_then(|s| s.phase).as_deref(), Some("Running"));
    assert_eq!(o.spec.store.as_deref(), Some("s3://x"));
    assert_eq!(o.metadata.generation, Some(2));
}

#[tokio::test]
async fn unknown_kinds_and_wrong_scopes_are_not_found() {
    let fake = FakeApiServer::new();
    let gvk = GroupVersionKind::gvk("gateway.networking.k8s.io", "v1", "Gateway");
    let e = kube::discovery::pinned_kind(&fake.client(), &gvk)
        .await
        .expect_err("no such group");
    assert_eq!(code(e), 404);
    // A served kind is found with its plural and scope.
    let gvk = GroupVersionKind::gvk("nvidia.com", "v1alpha1", "DynamoGraphDeployment");
    let (ar, caps) = kube::discovery::pinned_kind(&fake.client(), &gvk)
        .await
        .expect("served");
    assert_eq!(ar.plural, "dynamographdeployments");
    assert_eq!(caps.scope, kube::discovery::Scope::Namespaced);
    let ar = kube::api::ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("apps", "v1", "Deployment"),
        "deploymentz",
    );
    let api: Api<DynamicObject> = Api::namespaced_with(fake.client(), "bench", &ar);
    assert_eq!(
        code(
            api.list(&Default::default())
                .await
                .expect_err("guessed plural")
        ),
        404
    );
    // A ClusterRole has no namespaced path.
    let ar = kube::api::ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("rbac.authorization.k8s.io", "v1", "ClusterRole"),
        "clusterroles",
    );
    let api: Api<DynamicObject> = Api::namespaced_with(fake.client(), "bench", &ar);
    assert_eq!(
        code(api.list(&Default::default()).await.expect_err("scope")),
        404
    );
}

#[tokio::test]
async fn server_side_apply_needs_a_manager_and_refuses_other_managers_fields_unless_forced() {
    let fake = FakeApiServer::new();
    let api: Api<ConfigMap> = Api::namespaced(fake.client(), "bench");
    let mine = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"a": "1", "b": "1"}});
    api.patch("c", &PatchParams::apply("me"), &Patch::Apply(&mine))
        .await
        .expect("apply creates");
    let theirs = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"a": "2"}});
    let e = api
        .patch("c", &PatchParams::apply("them"), &Patch::Apply(&theirs))
        .await
        .expect_err("conflict");
    assert_eq!(code(e), 409);
    api.patch(
        "c",
        &PatchParams::apply("them").force(),
        &Patch::Apply(&theirs),
    )
    .await
    .expect("forced");
    // `me` stops applying `b`: it is removed; `a` is theirs now.
    let less =
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {}});
    let o = api
        .patch("c", &PatchParams::apply("me"), &Patch::Apply(&less))
        .await
        .expect("apply");
    assert_eq!(
        o.data.expect("data"),
        [("a".to_owned(), "2".to_owned())].into()
    );
    // No field manager: refused.
    let mut pp = PatchParams::apply("x");
    pp.field_manager = None;
    let e = api
        .patch("c", &pp, &Patch::Apply(&less))
        .await
        .expect_err("no manager");
    assert_eq!(code(e), 400);
}

#[tokio::test]
async fn finalizers_keep_a_deleted_object_terminating_until_they_are_removed() {
    let fake = FakeApiServer::new();
    let api: Api<ConfigMap> = Api::namespaced(fake.client(), "bench");
    let mut c = cm("c", json!({}));
    c.metadata.finalizers = Some(vec!["example.com/keep".into()]);
    api.create(&PostParams::default(), &c)
        .await
        .expect("create");
    api.delete("c", &Default::default()).await.expect("delete");
    let o = api.get("c").await.expect("still there");
    assert!(o.metadata.deletion_timestamp.is_some(), "Terminating");
    let add = json!({"metadata": {"finalizers": ["example.com/keep", "example.com/more"]}});
    let e = api
        .patch("c", &PatchParams::default(), &Patch::Merge(&add))
        .await
        .expect_err("no new finalizers");
    assert_eq!(code(e), 422);
    let none = json!({"metadata": {"finalizers": null}});
    api.patch("c", &PatchParams::default(), &Patch::Merge(&none))
        .await
        .expect("patch");
    assert!(
        api.get_opt("c").await.expect("get").is_none(),
        "gone with its last finalizer"
    );
}

#[tokio::test]
async fn watches_stay_open_and_deliver_changes() {
    let fake = FakeApiServer::new();
    let api: Api<ConfigMap> = Api::namespaced(fake.client(), "bench");
    api.create(&PostParams::default(), &cm("before", json!({})))
        .await
        .expect("create");
    let mut events = watcher(api.clone(), watcher::Config::default()).boxed();
    let mut seen = Vec::new();
    // The initial list, then changes made after the watch opened.
    let writer = {
        let api = api.clone();
        tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            api.create(&PostParams::default(), &cm("after", json!({})))
                .await
                .expect("create");
            api.delete("before", &Default::default())
                .await
                .expect("delete");
        })
    };
    while seen.len() < 3 {
        let e = tokio::time::timeout(std::time::Duration::from_secs(10), events.try_next())
            .await
            .expect("an event in time")
            .expect("watch")
            .expect("open");
        match e {
            watcher::Event::InitApply(o) | watcher::Event::Apply(o) => {
                seen.push(format!("apply {}", o.metadata.name.unwrap_or_default()))
            }
            watcher::Event::Delete(o) => {
                seen.push(format!("delete {}", o.metadata.name.unwrap_or_default()))
            }
            _ => {}
        }
    }
    writer.await.expect("writer");
    assert_eq!(seen, ["apply before", "apply after", "delete before"]);
}

#[tokio::test]
async fn injected_errors_answer_matching_requests_then_stop() {
    let fake = FakeApiServer::new();
    let api: Api<ConfigMap> = Api::namespaced(fake.client(), "bench");
    fake.fail("GET", "/configmaps", 503, 2);
    for _ in 0..2 {
        assert_eq!(
            code(api.list(&Default::default()).await.expect_err("injected")),
            503
        );
    }
    api.list(&Default::default()).await.expect("then served");
}

/// A Job's pod template cannot change once it exists (422, as the API server's validation
/// says), even applied with force; its other fields can.
#[tokio::test]
async fn a_jobs_pod_template_is_immutable() {
    use k8s_openapi::api::batch::v1::Job;
    let fake = FakeApiServer::new();
    let api: Api<Job> = Api::namespaced(fake.client(), "bench");
    let job = |image: &str, deadline: u64| {
        json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "j"},
               "spec": {"activeDeadlineSeconds": deadline, "template": {"spec": {
                   "restartPolicy": "Never",
                   "containers": [{"name": "c", "image": image}]}}}})
    };
    let pp = PatchParams::apply("harness").force();
    api.patch("j", &pp, &Patch::Apply(&job("a:1", 60)))
        .await
        .expect("created");
    api.patch("j", &pp, &Patch::Apply(&job("a:1", 120)))
        .await
        .expect("the deadline may change");
    let e = api
        .patch("j", &pp, &Patch::Apply(&job("a:2", 120)))
        .await
        .expect_err("a new template");
    assert_eq!(code(e), 422);
    let stored = api.get("j").await.expect("job");
    let image = stored
        .spec
        .and_then(|s| s.template.spec)
        .map(|p| p.containers[0].image.clone());
    assert_eq!(image, Some(Some("a:1".to_owned())), "unchanged");
}
