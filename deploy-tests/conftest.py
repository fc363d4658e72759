"""Shared fixtures: the deployment model and the Istio schemas, loaded once per run."""

import pytest

from istio_schema import IstioSchemas
from manifests import ISTIO_CRDS
from model import Model


@pytest.fixture(scope="session")
def model() -> Model:
    return Model.load()


@pytest.fixture(scope="session")
def istio_schemas() -> IstioSchemas:
    return IstioSchemas(ISTIO_CRDS)


def pytest_report_header(config):
    from kubernetes_validate.version import __version__

    import checks

    return (f"kubernetes-validate {__version__}: Kubernetes {', '.join(checks.kubernetes_versions())}; "
            f"Istio CRDs from {ISTIO_CRDS.name}")
