"""The NATS cluster: three JetStream nodes that find each other, with their store on a volume,
and a configuration file the real nats-server accepts."""

import os
import re
import shutil
import subprocess

import pytest

import checks


def test_nats_cluster_matches_its_statefulset(model):
    assert checks.nats_problems(model) == []


def test_nats_server_accepts_the_configuration(model, tmp_path):
    binary = os.environ.get("NATS_SERVER_BIN") or shutil.which("nats-server")
    if not binary:
        pytest.skip("nats-server is not installed (deploy-tests/run installs nats-server-bin)")
    conf, sts, container = checks.nats_config(model)
    path = tmp_path / "nats.conf"
    path.write_text(conf)
    env = dict(os.environ)
    for e in container.get("env", []):
        env[e["name"]] = e.get("value", f"{sts.name}-0")  # fieldRef metadata.name -> a pod name
    out = subprocess.run([binary, "-t", "-c", str(path)], capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def test_nats_image_is_the_version_the_configuration_was_checked_with(model):
    binary = os.environ.get("NATS_SERVER_BIN") or shutil.which("nats-server")
    if not binary:
        pytest.skip("nats-server is not installed")
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=30)
    tested = re.search(r"v(\d+\.\d+)", out.stdout + out.stderr).group(1)
    _, sts, container = checks.nats_config(model)
    tag = container["image"].rsplit(":", 1)[-1]
    assert tag.split("-")[0].startswith(tested), \
        f"the NATS image is {container['image']} but the configuration was checked with nats-server {tested} " \
        "(deploy-tests/requirements.txt pins nats-server-bin): keep them on one minor version"
