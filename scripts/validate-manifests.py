#!/usr/bin/env python3
"""Validates rendered manifests, strictly: Kubernetes objects against the Kubernetes 1.33
schemas (kubernetes-validate, unknown fields refused), Argo Workflows against Argo's own
models (the argo-workflows package: types checked, unknown fields refused).

usage: validate-manifests.py FILE...   (multi-document YAML); exits 1 naming each problem.
Run with the python of the venv scripts/test-deps.sh makes ($deps/k8s-schemas).
"""
import json
import sys

import kubernetes_validate
import yaml
from argo_workflows.api_client import ApiClient
from argo_workflows.model.io_argoproj_workflow_v1alpha1_workflow import (
    IoArgoprojWorkflowV1alpha1Workflow as Workflow,
)

K8S = "1.33.0"


def unknown_fields(model, value, at):
    """Fields of `value` that `model` (an argo-workflows model class) does not have."""
    problems = []
    if not isinstance(value, dict) or not hasattr(model, "attribute_map"):
        return problems
    by_json = {j: p for p, j in model.attribute_map.items()}
    types = model.openapi_types
    for key, v in value.items():
        if key not in by_json:
            problems.append(f"{at}.{key}: unknown field of {model.__name__}")
            continue
        for t in types[by_json[key]]:
            if isinstance(t, list) and isinstance(v, list):
                for i, item in enumerate(v):
                    for inner in t:
                        problems += unknown_fields(inner, item, f"{at}.{key}[{i}]")
            elif isinstance(t, dict) and isinstance(v, dict):
                for k, item in v.items():
                    for inner in t.values():
                        for x in inner if isinstance(inner, tuple) else (inner,):
                            problems += unknown_fields(x, item, f"{at}.{key}.{k}")
            elif isinstance(t, type):
                problems += unknown_fields(t, v, f"{at}.{key}")
    return problems


class Response:
    def __init__(self, doc):
        self.data = json.dumps(doc)


def check_workflow(doc):
    try:
        ApiClient().deserialize(Response(doc), (Workflow,), True)
    except Exception as e:  # the generated client raises several kinds
        return [f"Workflow: {e}"]
    return unknown_fields(Workflow, doc, "")


def main(paths):
    problems = []
    for path in paths:
        with open(path) as f:
            docs = [d for d in yaml.safe_load_all(f) if d]
        for i, doc in enumerate(docs):
            what = f"{path} document {i + 1} ({doc.get('kind')} {doc.get('metadata', {}).get('name') or doc.get('metadata', {}).get('generateName')})"
            if doc.get("apiVersion", "").startswith("argoproj.io/"):
                problems += [f"{what}: {p}" for p in check_workflow(doc)]
                continue
            try:
                kubernetes_validate.validate(doc, K8S, strict=True)
            except kubernetes_validate.ValidationError as e:
                path_ = ".".join(str(p) for p in e.path)
                problems.append(f"{what}: {path_}: {e.message}")
            except kubernetes_validate.SchemaNotFoundError as e:
                problems.append(f"{what}: no schema: {e}")
    for p in problems:
        print(p)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
