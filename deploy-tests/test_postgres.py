"""PostgreSQL's init script creates one role and database per service from the very URLs the
services connect with, and the booking migration (which needs btree_gist) then runs as the
booking role. The live part needs a server: ROOMBOOK_TEST_POSTGRES_URL (scripts/test exports it)."""

import os
import re
import shutil
import subprocess
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from manifests import ROOT, containers

SCRIPT_KEY = "10-roombook-databases.sh"


def _postgres(model):
    sts = next(s for s in model.of_kind("StatefulSet") if s.name == "postgres")
    return sts, containers(sts.doc)[0]


def _script(model) -> str:
    return model.get("ConfigMap", "postgres-init").doc["data"][SCRIPT_KEY]


def _service_database_keys(model) -> dict[str, str]:
    """Secret key of each service's DATABASE_URL -> service binary."""
    out = {}
    for w, c, binary, crate in model.service_containers():
        for e in c.get("env", []):
            if e["name"] == "DATABASE_URL" and "secretKeyRef" in e.get("valueFrom", {}):
                out[e["valueFrom"]["secretKeyRef"]["key"]] = binary
    return out


def test_init_script_is_mounted_where_the_image_runs_it(model):
    sts, c = _postgres(model)
    mounts = {m["name"]: m["mountPath"] for m in c.get("volumeMounts", [])}
    vol = next(v for v in sts.doc["spec"]["template"]["spec"]["volumes"] if v.get("configMap", {}).get("name") == "postgres-init")
    assert mounts[vol["name"]] == "/docker-entrypoint-initdb.d"


def test_init_script_covers_every_service_database(model):
    """The script's service list, the variables the StatefulSet passes it and the Secret keys
    the services connect with are the same set."""
    sts, c = _postgres(model)
    listed = set(re.search(r"services=\(([^)]*)\)", _script(model)).group(1).split())
    passed = {e["valueFrom"]["secretKeyRef"]["key"]: e["name"] for e in c.get("env", [])
              if e["name"].endswith("_DATABASE_URL")}
    used = _service_database_keys(model)
    assert listed == set(used), f"script creates {sorted(listed)}, services use {sorted(used)}"
    assert set(passed) == set(used)
    assert all(passed[k] == f"{k.upper()}_DATABASE_URL" for k in passed)


def test_init_script_is_valid_bash(model, tmp_path):
    path = tmp_path / SCRIPT_KEY
    path.write_text(_script(model))
    out = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    shellcheck = shutil.which("shellcheck")
    if shellcheck:
        out = subprocess.run([shellcheck, "-s", "bash", str(path)], capture_output=True, text=True)
        assert out.returncode == 0, out.stdout


def _psql() -> str | None:
    pg_bin = os.environ.get("PG_BIN")
    if pg_bin and Path(pg_bin, "psql").exists():
        return str(Path(pg_bin, "psql"))
    return shutil.which("psql")


def test_init_script_against_a_real_server(model, tmp_path):
    admin_url = os.environ.get("ROOMBOOK_TEST_POSTGRES_URL")
    psql = _psql()
    if not admin_url or not psql:
        pytest.skip("needs ROOMBOOK_TEST_POSTGRES_URL (a superuser URL, as scripts/test exports) and psql")
    admin = urlsplit(admin_url)
    run_id = uuid.uuid4().hex[:8]
    services = sorted(_service_database_keys(model))
    names = {s: f"rb_{run_id}_{s}" for s in services}
    env = dict(os.environ, PGHOST=admin.hostname or "127.0.0.1", PGPORT=str(admin.port or 5432),
               POSTGRES_USER=admin.username or "postgres", PATH=f"{Path(psql).parent}:{os.environ['PATH']}")
    if admin.password:
        env["PGPASSWORD"] = admin.password
    for s in services:
        env[f"{s.upper()}_DATABASE_URL"] = f"postgres://{names[s]}:pw{run_id}@postgres:5432/{names[s]}"
    script = tmp_path / SCRIPT_KEY
    script.write_text(_script(model))

    def sql(query: str, user: str, db: str, check=True):
        e = dict(env, PGUSER=user, PGDATABASE=db)
        if user != env["POSTGRES_USER"]:
            e["PGPASSWORD"] = f"pw{run_id}"
        return subprocess.run([psql, "-v", "ON_ERROR_STOP=1", "-X", "-At", "-c", query],
                              capture_output=True, text=True, env=e, timeout=60, check=check)

    try:
        for attempt in (1, 2):  # a second run must be harmless (it also re-sets passwords)
            out = subprocess.run(["bash", str(script)], capture_output=True, text=True, env=env, timeout=120)
            assert out.returncode == 0, f"run {attempt}: {out.stdout}{out.stderr}"
        for s in services:
            db = names[s]
            assert sql("SELECT current_database()", db, db).stdout.strip() == db
            assert sql("SELECT extname FROM pg_extension WHERE extname = 'btree_gist'", db, db).stdout.strip() == "btree_gist"
            other = names[next(o for o in services if o != s)]
            denied = sql("SELECT 1", db, other, check=False)
            assert denied.returncode != 0 and "permission denied" in denied.stderr, denied.stderr
        # The booking migration, as the booking role: it creates btree_gist "if not exists" and
        # an exclusion constraint that needs it.
        booking = names["booking"]
        for migration in sorted((ROOT / "services" / "booking" / "migrations" / "postgres").glob("*.sql")):
            out = sql(migration.read_text(), booking, booking, check=False)
            assert out.returncode == 0, f"{migration.name}: {out.stderr}"
    finally:
        drop = "; ".join(f'DROP DATABASE IF EXISTS "{n}" WITH (FORCE); DROP ROLE IF EXISTS "{n}"' for n in names.values())
        for statement in drop.split("; "):
            sql(statement, env["POSTGRES_USER"], admin.path.strip("/") or "postgres", check=False)
