"""The manifests agree with the code: each service container runs a binary the workspace
builds, listens where the code listens, is probed on routes the code serves, and is given
exactly the environment variables its program reads, including every one it needs."""

import pytest

import checks
from model import Model

_model = Model.load()
SERVICE_CONTAINERS = [(w.name, c["name"]) for w, c, b, crate in _model.service_containers()]


def _find(model, workload, container):
    for w, c, b, crate in model.service_containers():
        if w.name == workload and c["name"] == container:
            if not model.workspace.implemented(crate):
                pytest.skip(f"{crate.name} has no `run` yet (being written): checked once it has")
            return w, c, crate
    raise AssertionError(f"{workload}/{container} no longer runs a service binary")


def test_every_service_crate_runs_somewhere(model):
    run = {crate.name for _, _, _, crate in model.service_containers()}
    assert sorted(c.name for c in model.service_crates if c.name not in run) == []


@pytest.mark.parametrize("workload,container", SERVICE_CONTAINERS)
def test_ports_and_probes_exist_in_the_code(model, workload, container):
    w, c, crate = _find(model, workload, container)
    assert checks.port_and_probe_problems(model, w, c, crate) == []


@pytest.mark.parametrize("workload,container", SERVICE_CONTAINERS)
def test_env_vars_are_read_and_required_ones_set(model, workload, container):
    w, c, crate = _find(model, workload, container)
    assert checks.env_problems(model, w, c, crate) == []


def test_each_service_has_its_own_database_and_role(model):
    assert checks.database_isolation_problems(model) == []


def test_database_pools_fit_postgres_max_connections(model):
    assert checks.connection_budget_problems(model) == []
