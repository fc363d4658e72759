"""Self-tests: every check fails on a deployment broken in the way it guards against. Each case
takes a copy of the real deployment, breaks one thing, and expects the named check to report it
(and the unbroken deployment to pass it, which the other test files assert)."""

from __future__ import annotations

import re

import pytest

import checks
from manifests import containers, pod_spec


def _get(model, kind, name, where="k8s"):
    r = model.get(kind, name, where)
    assert r is not None, f"{kind}/{name} is gone: update this self-test"
    return r.doc


def _container(model, workload):
    for kind in ("Deployment", "StatefulSet"):
        r = model.get(kind, workload)
        if r is not None:
            return containers(r.doc)[0]
    raise AssertionError(f"no workload {workload}")


def _booking(model):
    return model.workload_for_bin("roombook-booking"), _container(model, model.workload_for_bin("roombook-booking").name)


def _run_for_bin(model, check, binary):
    for w, c, b, crate in model.service_containers():
        if b == binary:
            return check(model, w, c, crate)
    raise AssertionError(f"nothing runs {binary}")


# Each case: (id, mutation(model), check(model) -> problems, expected substring).
def m_unknown_k8s_field(m):
    _container(m, "booking")["imagePullPolicyy"] = "Always"


def m_unknown_istio_field(m):
    _get(m, "DestinationRule", "booking", "istio")["spec"]["trafficPolicy"]["outlierDetection"]["consecutiveErrorz"] = 5


def m_bad_istio_duration(m):
    _get(m, "VirtualService", "booking", "istio")["spec"]["http"][0]["timeout"] = "8 seconds"


def m_deprecated_outlier_field(m):
    od = _get(m, "DestinationRule", "confirm", "istio")["spec"]["trafficPolicy"]["outlierDetection"]
    od.pop("consecutive5xxErrors")
    od.pop("consecutiveGatewayErrors")
    od["consecutiveErrors"] = 5


def m_drop_destination_rule(m):
    m.istio = [r for r in m.istio if not (r.kind == "DestinationRule" and r.name == "orchestrator")]


def m_retry_a_write(m):
    _get(m, "VirtualService", "confirm", "istio")["spec"]["http"][1]["retries"] = {"attempts": 2, "perTryTimeout": "2s"}


def m_default_retries(m):
    _get(m, "VirtualService", "confirm", "istio")["spec"]["http"][1].pop("retries")


def m_mesh_timeout_too_long(m):
    _get(m, "VirtualService", "booking", "istio")["spec"]["http"][0]["timeout"] = "12s"


def m_edge_timeout_too_short(m):
    for vs in m.of_kind("VirtualService", "istio"):
        if vs.doc["spec"].get("gateways"):
            vs.doc["spec"]["http"][-1]["timeout"] = "5s"


def m_unknown_principal(m):
    rule = _get(m, "AuthorizationPolicy", "booking", "istio")["spec"]["rules"][0]
    rule["from"][0]["source"]["principals"] = ["cluster.local/ns/roombook/sa/gatewy"]


def m_extra_caller(m):
    rule = _get(m, "AuthorizationPolicy", "confirm", "istio")["spec"]["rules"][0]
    rule["from"][0]["source"]["principals"].append("cluster.local/ns/roombook/sa/booking")


def m_no_default_deny(m):
    m.istio = [r for r in m.istio if not (r.kind == "AuthorizationPolicy" and not r.doc.get("spec"))]


def m_permissive_mtls(m):
    _get(m, "PeerAuthentication", "default", "istio")["spec"]["mtls"]["mode"] = "PERMISSIVE"


def m_env_not_read(m):
    _booking(m)[1]["env"].append({"name": "DEADLINE_CHECK_INTERVAL_MS", "value": "1000"})


def m_required_env_missing(m):
    c = _container(m, m.workload_for_bin("roombook-gateway").name)
    c["env"] = [e for e in c["env"] if e["name"] != "JWT_SECRET"]


def m_database_url_missing(m):
    c = _booking(m)[1]
    c["env"] = [e for e in c["env"] if e["name"] != "DATABASE_URL"]


def m_upstream_url_wrong(m):
    _get(m, "ConfigMap", "gateway-config")["data"]["CONFIRM_URL"] = "http://confirm:9999"


def m_stream_replicas_one(m):
    _get(m, "ConfigMap", "roombook-common")["data"]["NATS_STREAM_REPLICAS"] = "1"


def m_wrong_probe_path(m):
    _booking(m)[1]["readinessProbe"]["httpGet"]["path"] = "/ready"


def m_wrong_container_port(m):
    _booking(m)[1]["ports"][0]["containerPort"] = 8080


def m_bin_not_built(m):
    m.dockerfile = m.dockerfile.replace("--bin roombook-confirm", "").replace("target/release/roombook-confirm", "")


def m_bin_not_locked(m):
    m.dockerfile = m.dockerfile.replace("--locked", "")


def m_root_image(m):
    m.dockerfile = re.sub(r"^USER .*$", "USER root", m.dockerfile, flags=re.M)


def m_ignore_a_crate(m):
    m.dockerignore += "\norchestrator\n"


def m_root_container(m):
    _booking(m)[1]["securityContext"]["readOnlyRootFilesystem"] = False


def m_no_hpa(m):
    m.k8s = [r for r in m.k8s if not (r.kind == "HorizontalPodAutoscaler" and r.name == "confirm")]


def m_blocking_pdb(m):
    _get(m, "PodDisruptionBudget", "booking")["spec"]["maxUnavailable"] = 0


def m_real_secret(m):
    for s in m.secrets:
        if s.name == "gateway-jwt":
            s.doc["stringData"]["JWT_SECRET"] = "s3cr3t-value"


def m_load_balancer(m):
    _get(m, "Service", "gateway")["spec"]["type"] = "LoadBalancer"


def m_nats_two_nodes(m):
    _get(m, "StatefulSet", "nats")["spec"]["replicas"] = 2


def m_nats_route_typo(m):
    cm = _get(m, "ConfigMap", "nats-config")
    cm["data"]["nats.conf"] = cm["data"]["nats.conf"].replace("nats-2.nats-headless", "nats-3.nats-headless")


def m_too_many_db_pods(m):
    _get(m, "HorizontalPodAutoscaler", "booking")["spec"]["maxReplicas"] = 20


def m_short_grace(m):
    pod_spec(_get(m, "Deployment", "booking"))["terminationGracePeriodSeconds"] = 20


def m_gateway_ejected_on_5xx(m):
    od = _get(m, "DestinationRule", "gateway", "istio")["spec"]["trafficPolicy"]["outlierDetection"]
    od["consecutive5xxErrors"] = 5


def m_nats_port_sniffed(m):
    _get(m, "Service", "nats")["spec"]["ports"][0]["appProtocol"] = "http"


def m_probe_rewrite_off(m):
    _get(m, "Deployment", "confirm")["spec"]["template"]["metadata"]["annotations"][
        "sidecar.istio.io/rewriteAppHTTPProbers"] = "false"


def m_unlisted_manifest(m):
    m.k8s = [r for r in m.k8s if r.source.name != "bookinglist.yaml"]


def m_other_namespace_host(m):
    _get(m, "DestinationRule", "booking", "istio")["spec"]["host"] = "booking.default.svc.cluster.local"


def m_no_liveness(m):
    _get_container = _container(m, "nats")
    _get_container.pop("livenessProbe")


def m_no_memory_limit(m):
    _booking(m)[1]["resources"]["limits"].pop("memory")


def m_statefulset_without_headless_service(m):
    _get(m, "Service", "nats-headless")["spec"].pop("clusterIP")


def m_shared_database(m):
    for s in m.secrets:
        if s.name == "roombook-database":
            s.doc["stringData"]["confirm"] = s.doc["stringData"]["booking"]


CASES = [
    ("unknown k8s field", m_unknown_k8s_field, lambda m, s: checks.k8s_schema_problems(checks.k8s_docs(m), checks.OLDEST_KUBERNETES), "imagePullPolicyy"),
    ("unknown istio field", m_unknown_istio_field, lambda m, s: checks.istio_schema_problems(m, s), "consecutiveErrorz"),
    ("invalid istio duration (CEL)", m_bad_istio_duration, lambda m, s: checks.istio_schema_problems(m, s), "valid duration"),
    ("deprecated consecutiveErrors", m_deprecated_outlier_field, lambda m, s: checks.destination_rule_problems(m), "consecutiveErrors is deprecated"),
    ("service without DestinationRule", m_drop_destination_rule, lambda m, s: checks.destination_rule_problems(m), "orchestrator has 0 DestinationRules"),
    ("retried write", m_retry_a_write, lambda m, s: checks.virtual_service_problems(m), "non-idempotent"),
    ("implicit default retries", m_default_retries, lambda m, s: checks.virtual_service_problems(m), "retries.attempts explicitly"),
    ("mesh timeout above the gateway's", m_mesh_timeout_too_long, lambda m, s: checks.timeout_ladder_problems(m), "must be below"),
    ("edge timeout below the gateway's", m_edge_timeout_too_short, lambda m, s: checks.timeout_ladder_problems(m), "must exceed"),
    ("principal of no ServiceAccount", m_unknown_principal, lambda m, s: checks.authorization_problems(m), "no ServiceAccount here"),
    ("caller the configuration never makes", m_extra_caller, lambda m, s: checks.authorization_problems(m), "nothing in the configuration calls it"),
    ("no default deny", m_no_default_deny, lambda m, s: checks.authorization_problems(m), "allow-nothing"),
    ("permissive mTLS", m_permissive_mtls, lambda m, s: checks.peer_authentication_problems(m), "STRICT"),
    ("env var the code does not read", m_env_not_read, lambda m, s: _run_for_bin(m, checks.env_problems, "roombook-booking"), "never reads"),
    ("required env var missing", m_required_env_missing, lambda m, s: _run_for_bin(m, checks.env_problems, "roombook-gateway"), "needs JWT_SECRET"),
    ("no DATABASE_URL", m_database_url_missing, lambda m, s: _run_for_bin(m, checks.env_problems, "roombook-booking"), "needs DATABASE_URL"),
    ("upstream URL to a wrong port", m_upstream_url_wrong, lambda m, s: _run_for_bin(m, checks.env_problems, "roombook-gateway"), "has no port 9999"),
    ("streams not replicated", m_stream_replicas_one, lambda m, s: _run_for_bin(m, checks.env_problems, "roombook-booking"), "NATS_STREAM_REPLICAS=1"),
    ("probe path the code does not serve", m_wrong_probe_path, lambda m, s: _run_for_bin(m, checks.port_and_probe_problems, "roombook-booking"), "not a route"),
    ("container port the code does not use", m_wrong_container_port, lambda m, s: _run_for_bin(m, checks.port_and_probe_problems, "roombook-booking"), "listens on 8081"),
    ("binary not built", m_bin_not_built, lambda m, s: checks.dockerfile_problems(m), "roombook-confirm"),
    ("unlocked build", m_bin_not_locked, lambda m, s: checks.dockerfile_problems(m), "--locked"),
    ("root image", m_root_image, lambda m, s: checks.dockerfile_problems(m), "non-root"),
    ("crate left out of the build context", m_ignore_a_crate, lambda m, s: checks.dockerignore_problems(m), "orchestrator/Cargo.toml"),
    ("writable root file system", m_root_container, lambda m, s: checks.pod_security_problems(m), "readOnlyRootFilesystem"),
    ("missing HPA", m_no_hpa, lambda m, s: checks.autoscaling_problems(m), "roombook-confirm (confirm) has no HorizontalPodAutoscaler"),
    ("PDB blocking drains", m_blocking_pdb, lambda m, s: checks.disruption_problems(m), "blocks every node drain"),
    ("committed secret", m_real_secret, lambda m, s: checks.reference_problems(m), "not a placeholder"),
    ("gateway as LoadBalancer", m_load_balancer, lambda m, s: checks.ingress_problems(m), "LoadBalancer"),
    ("two NATS nodes", m_nats_two_nodes, lambda m, s: checks.nats_problems(m), "has 2 nodes"),
    ("NATS route to no pod", m_nats_route_typo, lambda m, s: checks.nats_problems(m), "cluster routes"),
    ("pools beyond max_connections", m_too_many_db_pods, lambda m, s: checks.connection_budget_problems(m), "exceed max_connections"),
    ("no time to drain", m_short_grace, lambda m, s: checks.shutdown_problems(m), "terminationGracePeriodSeconds 20"),
    ("gateway ejected for relayed 5xx", m_gateway_ejected_on_5xx, lambda m, s: checks.gateway_ejection_problems(m), "must be 0"),
    ("NATS port sniffed as HTTP", m_nats_port_sniffed, lambda m, s: checks.service_problems(m), "plain tcp"),
    ("probe rewrite off", m_probe_rewrite_off, lambda m, s: checks.probe_rewrite_problems(m), "probe rewriting turned off"),
    ("manifest not in the kustomization", m_unlisted_manifest, lambda m, s: checks.coverage_problems(m, s), "bookinglist.yaml is not in"),
    ("host in another namespace", m_other_namespace_host, lambda m, s: checks.namespace_problems(m), "namespace default"),
    ("container without liveness probe", m_no_liveness, lambda m, s: checks.probe_presence_problems(m), "no livenessProbe"),
    ("no memory limit", m_no_memory_limit, lambda m, s: checks.resource_problems(m), "limits.memory"),
    ("StatefulSet without a headless Service", m_statefulset_without_headless_service, lambda m, s: checks.statefulset_service_problems(m), "headless"),
    ("two services, one database", m_shared_database, lambda m, s: checks.database_isolation_problems(m), "share a database"),
]


@pytest.mark.parametrize("mutate,check,expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_check_catches(model, istio_schemas, mutate, check, expected):
    broken = model.copy()
    mutate(broken)
    problems = check(broken, istio_schemas)
    assert any(expected in p for p in problems), f"expected a problem mentioning {expected!r}, got {problems}"


def test_every_check_has_a_self_test():
    import inspect

    source = inspect.getsource(inspect.getmodule(test_check_catches))
    untested = [f.__name__ for f in checks.ALL_MODEL_CHECKS if f"checks.{f.__name__}(" not in source]
    assert untested == []
