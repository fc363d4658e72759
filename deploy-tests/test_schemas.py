"""Every manifest is valid against the real published schemas: Kubernetes' (strict: unknown
fields are errors) from kubernetes-validate, Istio's CRDs from testdata/istio-crds.gen.yaml."""

import json
import shutil
import subprocess

import pytest
import yaml

import checks
from manifests import ISTIO, ISTIO_CRDS, K8S, ROOT


@pytest.mark.parametrize("version", checks.kubernetes_versions())
def test_kubernetes_manifests_are_valid_for(model, version):
    assert checks.k8s_schema_problems(checks.k8s_docs(model), version) == []


def test_istio_resources_are_valid_against_the_crds(model, istio_schemas):
    assert checks.istio_schema_problems(model, istio_schemas) == []


def test_every_manifest_is_deployed_and_validated(model, istio_schemas):
    assert checks.coverage_problems(model, istio_schemas) == []


def test_no_manifest_sets_status(model):
    # The CRDs keep unknown fields under `status` (x-kubernetes-preserve-unknown-fields), so
    # nothing there would be checked: a manifest has no business writing it anyway.
    assert [repr(r) for r in model.k8s + model.istio + model.secrets if "status" in r.doc] == []


def test_istio_test_data_is_the_shared_schema_copy():
    shared = ROOT.parent / "shared" / "schemas" / "istio-crds.gen.yaml"
    if not shared.exists():
        pytest.skip("no ../shared/schemas beside the repository")
    assert ISTIO_CRDS.read_bytes() == shared.read_bytes(), \
        "testdata/istio-crds.gen.yaml differs from ../shared/schemas/istio-crds.gen.yaml: copy it again"


@pytest.mark.parametrize("directory", [K8S, ISTIO], ids=["k8s", "istio"])
def test_renderer_matches_kubectl_kustomize(model, directory):
    """Our renderer (manifests.render) produces what `kubectl kustomize` does."""
    kubectl = shutil.which("kubectl")
    if not kubectl:
        pytest.skip("kubectl is not installed (the renderer is then trusted as is)")
    out = subprocess.run([kubectl, "kustomize", str(directory)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    theirs = sorted(json.dumps(d, sort_keys=True) for d in yaml.safe_load_all(out.stdout) if d)
    ours = sorted(json.dumps(r.doc, sort_keys=True) for r in (model.k8s if directory == K8S else model.istio))
    assert ours == theirs
