"""The Dockerfile builds exactly the binaries the workloads run, into a small non-root image,
from a build context that holds the whole workspace and nothing else of weight."""

import checks


def test_dockerfile_builds_the_binaries_the_manifests_run(model):
    assert checks.dockerfile_problems(model) == []


def test_dockerignore_keeps_the_workspace_and_drops_the_rest(model):
    assert checks.dockerignore_problems(model) == []
