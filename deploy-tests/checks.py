"""The checks. Each takes the Model (and sometimes one workload) and returns a list of
problems; an empty list means the check passed. test_*.py call them on the real deployment,
test_checkers.py on deliberately broken copies, to show that each of them can fail.
"""

from __future__ import annotations

import json
import re
from urllib.parse import urlsplit

import kubernetes_validate
import yaml

from istio_schema import IstioSchemas, parse_duration
from manifests import (
    ISTIO, K8S, ROOT, SECRETS_EXAMPLE, DockerIgnore, Resource, containers, parse_dockerfile,
    pod_spec, shell_words,
)
from model import Model, short_host

# Kubernetes versions the manifests must be valid for: the oldest we support (lifecycle
# sleep actions and native sidecars are there from 1.30 on) and the newest the validator knows.
OLDEST_KUBERNETES = "1.30"

# Principals from outside this repository: the Istio ingress gateway as installed by istioctl /
# the Helm chart (namespace istio-system, ServiceAccount istio-ingressgateway-service-account).
EXTERNAL_PRINCIPALS = {"cluster.local/ns/istio-system/sa/istio-ingressgateway-service-account"}
INGRESS_PRINCIPAL = "cluster.local/ns/istio-system/sa/istio-ingressgateway-service-account"

# The services with a HorizontalPodAutoscaler (the issue): the public entry and the two that
# take user traffic on every booking.
HPA_PROGRAMS = {"roombook-gateway", "roombook-booking", "roombook-confirm"}

IDEMPOTENT_METHODS = {"GET", "HEAD"}
PLACEHOLDER = "CHANGE_ME"


def kubernetes_versions() -> list[str]:
    return [OLDEST_KUBERNETES, kubernetes_validate.utils.latest_version()]


# == schemas =================================================================================

def k8s_schema_problems(docs: list[tuple[str, dict]], version: str) -> list[str]:
    problems = []
    for where, doc in docs:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            path = ".".join(str(p) for p in e.path)
            problems.append(f"{where}: {path}: {e.message}")
        except kubernetes_validate.SchemaNotFoundError as e:
            problems.append(f"{where}: {e.message}")
    return problems


def k8s_docs(model: Model) -> list[tuple[str, dict]]:
    return [(repr(r), r.doc) for r in model.k8s + model.secrets]


def istio_schema_problems(model: Model, schemas: IstioSchemas) -> list[str]:
    problems = []
    for r in model.istio:
        problems += [f"{r!r}: {p}" for p in schemas.validate(r.doc)]
    return problems


def coverage_problems(model: Model, schemas: IstioSchemas) -> list[str]:
    """Every manifest file is deployed (listed in its kustomization) and every resource is one
    that a schema checks: Kubernetes kinds in k8s/, Istio kinds in istio/."""
    problems = []
    for directory, resources in ((K8S, model.k8s), (ISTIO, model.istio)):
        listed = {r.source for r in resources}
        for f in sorted(directory.glob("*.y*ml")):
            if f.name == "kustomization.yaml" or f == SECRETS_EXAMPLE:
                continue
            if f not in listed:
                problems.append(f"{f.relative_to(ROOT)} is not in {directory.name}/kustomization.yaml")
    istio_kinds = schemas.kinds()
    for r in model.k8s + model.secrets:
        if (r.doc.get("apiVersion"), r.kind) in istio_kinds:
            problems.append(f"{r!r}: an Istio resource belongs in istio/")
    for r in model.istio:
        if (r.doc.get("apiVersion"), r.kind) not in istio_kinds:
            problems.append(f"{r!r}: not an Istio resource known to testdata/istio-crds.gen.yaml")
    return problems


# == Dockerfile ==============================================================================

def dockerfile_problems(model: Model) -> list[str]:
    """The builder compiles (release, locked) exactly the service binaries, the runtime stage
    ships them where the Deployments run them from, as a non-root user."""
    problems = []
    stages = parse_dockerfile(model.dockerfile)
    if len(stages) < 2:
        return ["the Dockerfile must be multi-stage (a build stage and a runtime stage)"]
    builder, runtime = stages[0], stages[-1]
    runs = [args for instr, args in builder.instructions if instr == "RUN" and "cargo build" in args]
    if len(runs) != 1:
        return [f"the build stage must have one RUN with cargo build (found {len(runs)})"]
    words = shell_words(re.sub(r"--mount=\S+", "", runs[0]))
    commands, current = [], []
    for w in words:
        if w in ("&&", ";", "||"):
            commands.append(current)
            current = []
        else:
            current.append(w)
    commands.append(current)
    build = next(c for c in commands if c[:2] == ["cargo", "build"])
    for flag in ("--release", "--locked"):
        if flag not in build:
            problems.append(f"cargo build lacks {flag}")
    built = {build[i + 1] for i, w in enumerate(build) if w == "--bin" and i + 1 < len(build)}
    built |= {w.split("=", 1)[1] for w in build if w.startswith("--bin=")}
    installed = set()
    for c in commands:
        if c and c[0] in ("install", "cp", "mv"):
            installed |= {w.rsplit("/", 1)[-1] for w in c if w.startswith("target/release/")}
    if installed != built:
        problems.append(f"built {sorted(built)} but copied out {sorted(installed)}")

    crate_bins = {b for c in model.service_crates for b in c.bins}
    for b in sorted(built - {b for c in model.workspace.crates.values() for b in c.bins}):
        problems.append(f"cargo build --bin {b}: no crate has that binary")
    for b in sorted(crate_bins - built):
        problems.append(f"service binary {b} is not built by the Dockerfile")
    deployed = {}
    for w, c, binary, crate in model.service_containers():
        deployed[binary] = (w, c)
    for b in sorted(crate_bins - set(deployed)):
        problems.append(f"service binary {b} is built but no workload runs it")
    for w in model.workloads:
        for c in containers(w.doc):
            command = c.get("command") or []
            if c.get("image", "").split("/")[-1].startswith("roombook") and (
                    not command or command[0].rsplit("/", 1)[-1] not in built):
                problems.append(f"{w!r} container {c['name']} runs {command[:1]} from the Roombook image, "
                                "which the Dockerfile does not build")

    # The runtime stage: copies the binaries to a directory, runs as a numeric non-root user.
    copies = [args.split() for instr, args in runtime.instructions if instr == "COPY" and "--from=" in args]
    names = {s.name for s in stages[:-1] if s.name}
    dest_dirs = []
    for words in copies:
        src_stage = next(w.split("=", 1)[1] for w in words if w.startswith("--from="))
        if src_stage in names or src_stage.isdigit():
            dest_dirs.append(words[-1].rstrip("/"))
    if not dest_dirs:
        problems.append("the runtime stage copies nothing from the build stage")
    for binary, (w, c) in sorted(deployed.items()):
        directory = c["command"][0].rsplit("/", 1)[0] if "/" in c["command"][0] else None
        if directory not in dest_dirs:
            problems.append(f"{w!r} runs {c['command'][0]}, but the image has its binaries in {dest_dirs}")
    users = [args for instr, args in runtime.instructions if instr == "USER"]
    if not users:
        problems.append("the runtime stage sets no USER (it would run as root)")
    else:
        user = users[-1].split(":")[0]
        if not user.isdigit() or int(user) == 0:
            problems.append(f"USER {users[-1]}: use a numeric non-root user (Kubernetes' runAsNonRoot checks it)")
    if runtime.base == builder.base:
        problems.append("the runtime stage uses the build image: not a small runtime image")
    return problems


def dockerignore_problems(model: Model) -> list[str]:
    ignore = DockerIgnore(model.dockerignore)
    problems = []
    needed = ["Cargo.toml", "Cargo.lock"]
    for member in model.workspace.members:
        base = ROOT / member
        needed.append(f"{member}/Cargo.toml")
        for f in sorted(base.rglob("*")):
            if f.is_file() and "target" not in f.relative_to(base).parts:
                needed.append(str(f.relative_to(ROOT)))
    for path in needed:
        if ignore.excluded(path):
            problems.append(f".dockerignore leaves out {path}, which the build needs")
    for path in ("target/release/roombook-booking", ".git/HEAD", "data/booking.db", "k8s/booking.yaml"):
        if not ignore.excluded(path):
            problems.append(f".dockerignore sends {path} to the build")
    return problems


# == code cross-checks =======================================================================

def listen_port(model: Model, crate) -> int | None:
    """The port a service listens on by default, from its code: the HTTP_ADDR default if it is
    a literal, else its DEFAULT_PORT constant."""
    default = model.workspace.env_reads(crate).get("HTTP_ADDR")
    if default and re.fullmatch(r"[\d.]+:\d+|\[[:\da-f]*\]:\d+", default):
        return int(default.rsplit(":", 1)[1])
    return crate.const_int("DEFAULT_PORT")


def port_and_probe_problems(model: Model, workload: Resource, container: dict, crate) -> list[str]:
    problems = []
    env, _ = model.env(container)
    code_port = listen_port(model, crate)
    if code_port is None:
        return [f"{crate.name}: cannot find its default port in the code (DEFAULT_PORT or HTTP_ADDR default)"]
    port = code_port
    if "HTTP_ADDR" in env:
        m = re.fullmatch(r".*:(\d+)", env["HTTP_ADDR"] or "")
        if not m:
            problems.append(f"HTTP_ADDR={env['HTTP_ADDR']!r} is not host:port")
        else:
            port = int(m.group(1))
    declared = [p["containerPort"] for p in container.get("ports", [])]
    if port not in declared:
        problems.append(f"{crate.name} listens on {port} but the container declares ports {declared}")
    routes = model.workspace.routes(crate)
    for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
        probe = container.get(kind)
        if not probe:
            problems.append(f"no {kind}")
            continue
        http = probe.get("httpGet")
        if not http:
            problems.append(f"{kind} is not an HTTP probe")
            continue
        path = http.get("path", "/").split("?")[0]
        if path not in routes:
            problems.append(f"{kind} path {path} is not a route of {crate.name} (its routes include "
                            f"{sorted(r for r in routes if r.count('/') == 1)})")
        target = model.container_port(workload, http.get("port"))
        if target != port:
            problems.append(f"{kind} port {http.get('port')!r} is {target}, but the service listens on {port}")
    if (container.get("readinessProbe") or {}).get("httpGet", {}).get("path") != "/readyz":
        problems.append("readinessProbe must be /readyz (database and NATS reachable)")
    if (container.get("livenessProbe") or {}).get("httpGet", {}).get("path") != "/healthz":
        problems.append("livenessProbe must be /healthz (a dependency outage must not restart the pod)")
    return problems


def env_problems(model: Model, workload: Resource, container: dict, crate) -> list[str]:
    """Every variable set is read by the program; every variable it needs is set, and set to
    something that points at the right place in this deployment."""
    ws = model.workspace
    reads = ws.env_reads(crate)
    env, problems = model.env(container)
    for name in sorted(env):
        if name not in reads:
            problems.append(f"sets {name}, which {crate.name} never reads")
    required = set(ws.required_env(crate))
    # What a deployment needs beyond what the code insists on (the defaults suit a laptop):
    if "DATABASE_URL" in reads:
        required |= {"DATABASE_URL"}
    if "NATS_STREAM_REPLICAS" in reads:
        required |= {"NATS_STREAM_REPLICAS"}
    # The gateway checks tokens with a shared key, an identity provider's keys, or both.
    if "JWT_SECRET" in reads and "JWT_SECRET" not in env and "JWT_JWKS_URL" not in env:
        problems.append(f"{crate.name} needs JWT_SECRET or JWT_JWKS_URL, which is not set")
    if "SMTP_URL" in reads and "SMTP_URL" not in env and "SMTP_HOST" not in env:
        problems.append("neither SMTP_URL nor SMTP_HOST is set: mail would go to files in a read-only container")
    # <NAME>_URL where NAME is a Service of this deployment: the program talks to that Service.
    services = {s.name for s in model.of_kind("Service")}
    for var in reads:
        m = re.fullmatch(r"([A-Z0-9_]+)_URL", var)
        if m and m.group(1).lower().replace("_", "-") in services:
            required.add(var)
            value = env.get(var)
            if value:
                svc, port = model.url_target(value)
                want = m.group(1).lower().replace("_", "-")
                if svc is None or svc.name != want:
                    problems.append(f"{var}={value} does not name the Service {want}")
                elif port not in [p["port"] for p in svc.doc["spec"]["ports"]]:
                    problems.append(f"{var}={value}: Service {want} has no port {port}")
    for name in sorted(required - set(env)):
        problems.append(f"{crate.name} needs {name}, which is not set")

    if env.get("DATABASE_URL") is not None:
        url = env["DATABASE_URL"]
        if not url.startswith(("postgres://", "postgresql://")):
            problems.append(f"DATABASE_URL must be a postgres:// URL in the cluster (got {url.split('@')[-1]})")
        else:
            svc, port = model.url_target(url)
            if svc is None or not svc.name.startswith("postgres"):
                problems.append(f"DATABASE_URL host {urlsplit(url).hostname} is not the PostgreSQL Service")
            elif model.service_target(svc, port)[1] is None:
                problems.append(f"DATABASE_URL port {port} is not a port of Service {svc.name}")
    nats_sets = model.of_kind("StatefulSet")
    nats = next((s for s in nats_sets if "nats" in s.name), None)
    if "NATS_STREAM_REPLICAS" in env and nats is not None:
        replicas = nats.doc["spec"].get("replicas", 1)
        if str(env["NATS_STREAM_REPLICAS"]) != str(replicas):
            problems.append(f"NATS_STREAM_REPLICAS={env['NATS_STREAM_REPLICAS']} but the NATS cluster has "
                            f"{replicas} nodes (streams must be replicated on all of them)")
    return problems


def database_isolation_problems(model: Model) -> list[str]:
    """Each service has its own database and role (database per service)."""
    seen: dict[tuple[str, str], str] = {}
    problems = []
    for w, c, binary, crate in model.service_containers():
        url = model.env(c)[0].get("DATABASE_URL")
        if not url or not url.startswith("postgres"):
            continue
        parts = urlsplit(url)
        key = (parts.username or "", parts.path.strip("/"))
        for other_key, other in seen.items():
            if other != binary and (other_key[0] == key[0] or other_key[1] == key[1]):
                problems.append(f"{binary} and {other} share a database role or database ({key} / {other_key})")
        seen[key] = binary
    return problems


# == Istio ====================================================================================

def _dr_for(model: Model, service: Resource) -> list[Resource]:
    out = []
    for dr in model.of_kind("DestinationRule", "istio"):
        if short_host(dr.doc["spec"]["host"], model.namespace) == service.name:
            out.append(dr)
    return out


def _is_http(service: Resource) -> bool:
    ports = service.doc["spec"].get("ports", [])
    return bool(ports) and all(p.get("appProtocol") == "http" or p.get("name", "").split("-")[0] in ("http", "http2", "grpc")
                               for p in ports)


def destination_rule_problems(model: Model) -> list[str]:
    problems = []
    for svc in model.of_kind("Service"):
        drs = _dr_for(model, svc)
        if len(drs) != 1:
            problems.append(f"Service {svc.name} has {len(drs)} DestinationRules (want exactly one)")
            continue
        policy = drs[0].doc["spec"].get("trafficPolicy", {})
        pool = policy.get("connectionPool", {})
        if "maxConnections" not in pool.get("tcp", {}):
            problems.append(f"DestinationRule {drs[0].name}: no connectionPool.tcp.maxConnections")
        if _is_http(svc):
            http = pool.get("http", {})
            for f in ("http1MaxPendingRequests", "http2MaxRequests", "maxRetries"):
                if f not in http:
                    problems.append(f"DestinationRule {drs[0].name}: no connectionPool.http.{f}")
            od = policy.get("outlierDetection")
            if not od:
                problems.append(f"DestinationRule {drs[0].name}: no outlierDetection")
            else:
                if "consecutive5xxErrors" not in od and "consecutiveGatewayErrors" not in od:
                    problems.append(f"DestinationRule {drs[0].name}: outlierDetection sets neither "
                                    "consecutive5xxErrors nor consecutiveGatewayErrors")
                if od.get("maxEjectionPercent", 10) >= 100:
                    problems.append(f"DestinationRule {drs[0].name}: maxEjectionPercent 100 can eject every pod")
    for dr in model.of_kind("DestinationRule", "istio"):
        name = short_host(dr.doc["spec"]["host"], model.namespace)
        if name is None or model.get("Service", name) is None:
            problems.append(f"DestinationRule {dr.name}: host {dr.doc['spec']['host']} is no Service of this deployment")
    text = "\n".join(r.source.read_text() for r in model.istio)
    deprecated = [json.dumps(r.doc) for r in model.istio if "consecutiveErrors" in json.dumps(r.doc)]
    if deprecated or re.search(r"^\s*consecutiveErrors\s*:", text, re.M):
        problems.append("consecutiveErrors is deprecated: use consecutive5xxErrors / consecutiveGatewayErrors")
    return problems


def gateway_ejection_problems(model: Model) -> list[str]:
    """The gateway relays the services' failures as its own 503s: ejecting gateway pods for
    5xx answers would spread one service's outage to every route. Only failures of the pod
    itself (local-origin: refused, reset, timed out) may eject it."""
    w = model.workload_for_bin("roombook-gateway")
    problems = []
    for svc in model.services_of(w) if w else []:
        for dr in _dr_for(model, svc):
            od = dr.doc["spec"].get("trafficPolicy", {}).get("outlierDetection", {})
            if not od.get("splitExternalLocalOriginErrors"):
                problems.append(f"DestinationRule {dr.name}: set splitExternalLocalOriginErrors")
            for f in ("consecutive5xxErrors", "consecutiveGatewayErrors"):
                if od.get(f, 5) != 0:
                    problems.append(f"DestinationRule {dr.name}: {f} must be 0 for the gateway")
            if not od.get("consecutiveLocalOriginFailures"):
                problems.append(f"DestinationRule {dr.name}: no consecutiveLocalOriginFailures")
    return problems


def _route_methods(route: dict) -> set[str] | None:
    """The methods a route is limited to, or None when every match lets any method through."""
    matches = route.get("match") or [{}]
    methods = set()
    for m in matches:
        method = m.get("method")
        if not method:
            return None
        if "exact" in method:
            methods.add(method["exact"])
        elif "regex" in method and re.fullmatch(r"\^?\(?([A-Z|]+)\)?\$?", method["regex"]):
            methods |= set(re.fullmatch(r"\^?\(?([A-Z|]+)\)?\$?", method["regex"]).group(1).split("|"))
        else:
            return None
    return methods


def virtual_service_problems(model: Model) -> list[str]:
    problems = []
    for vs in model.of_kind("VirtualService", "istio"):
        for i, route in enumerate(vs.doc["spec"].get("http", [])):
            where = f"VirtualService {vs.name} route {route.get('name', i)}"
            methods = _route_methods(route)
            retries = route.get("retries")
            attempts = (retries or {}).get("attempts")
            if retries is None or attempts is None:
                problems.append(f"{where}: set retries.attempts explicitly (Istio's default retries twice)")
            elif attempts > 0 and (methods is None or not methods <= IDEMPOTENT_METHODS):
                problems.append(f"{where}: retries {attempts}x a non-idempotent route (methods {methods or 'any'})")
            if "timeout" not in route:
                problems.append(f"{where}: no timeout")
            elif retries and retries.get("perTryTimeout"):
                if parse_duration(retries["perTryTimeout"]) > parse_duration(route["timeout"]):
                    problems.append(f"{where}: perTryTimeout is longer than the route's timeout")
            for dest in route.get("route", []):
                d = dest["destination"]
                name = short_host(d["host"], model.namespace)
                svc = model.get("Service", name) if name else None
                if svc is None:
                    problems.append(f"{where}: destination {d['host']} is no Service of this deployment")
                elif "port" in d and d["port"]["number"] not in [p["port"] for p in svc.doc["spec"]["ports"]]:
                    problems.append(f"{where}: Service {svc.name} has no port {d['port']['number']}")
    # Every service the gateway calls has its timeouts and retries.
    gw = model.workload_for_bin("roombook-gateway")
    if gw:
        container = next(c for c in containers(gw.doc) if model.program(c)[0] == "roombook-gateway")
        env, _ = model.env(container)
        for var, value in env.items():
            if var.endswith("_URL") and value:
                svc, _ = model.url_target(value)
                if svc is not None and not any(
                        short_host(h, model.namespace) == svc.name
                        for vs in model.of_kind("VirtualService", "istio") for h in vs.doc["spec"]["hosts"]
                        if not vs.doc["spec"].get("gateways")):
                    problems.append(f"the gateway calls {svc.name} ({var}) but no mesh VirtualService sets its timeouts")
    return problems


def _common_layer_timeout(model: Model) -> float | None:
    f = model.workspace.fn_source("roombook-platform", "with_common_layers")
    if f is None:
        return None
    m = re.search(r"Duration::from_secs\(\s*(\d+)\s*\)", f.body)
    return float(m.group(1)) if m else None


def timeout_ladder_problems(model: Model) -> list[str]:
    """mesh route timeouts < the gateway's UPSTREAM_TIMEOUT_MS < ingress timeout <= the
    services' own request timeout: each layer gives up after the one below it, so the answer
    comes from the layer that knows most (the gateway's problem+json, not a bare 504)."""
    gw = model.workload_for_bin("roombook-gateway")
    if gw is None:
        return ["no gateway workload"]
    container = next(c for c in containers(gw.doc) if model.program(c)[0] == "roombook-gateway")
    env, _ = model.env(container)
    crate = model.workspace.crates["roombook-gateway"]
    default = model.workspace.env_reads(crate).get("UPSTREAM_TIMEOUT_MS")
    upstream_ms = env.get("UPSTREAM_TIMEOUT_MS") or default
    if not upstream_ms or not str(upstream_ms).isdigit():
        return [f"cannot tell the gateway's upstream timeout (UPSTREAM_TIMEOUT_MS={upstream_ms!r})"]
    upstream = int(upstream_ms) / 1000
    common = _common_layer_timeout(model)
    problems = []
    for vs in model.of_kind("VirtualService", "istio"):
        edge = bool(vs.doc["spec"].get("gateways"))
        for route in vs.doc["spec"].get("http", []):
            if "timeout" not in route:
                continue
            t = parse_duration(route["timeout"])
            if edge and not t > upstream:
                problems.append(f"ingress VirtualService {vs.name}: timeout {route['timeout']} must exceed "
                                f"the gateway's UPSTREAM_TIMEOUT_MS ({upstream:g} s)")
            if edge and common is not None and t > common:
                problems.append(f"ingress VirtualService {vs.name}: timeout {route['timeout']} exceeds the "
                                f"services' request timeout ({common:g} s)")
            if not edge and not t < upstream:
                problems.append(f"VirtualService {vs.name}: timeout {route['timeout']} must be below the "
                                f"gateway's UPSTREAM_TIMEOUT_MS ({upstream:g} s)")
    return problems


def ingress_problems(model: Model) -> list[str]:
    problems = []
    gateways = model.of_kind("Gateway", "istio")
    if not gateways:
        return ["no Istio Gateway: the gateway is not exposed"]
    gw = model.workload_for_bin("roombook-gateway")
    gw_services = {s.name for s in model.services_of(gw)} if gw else set()
    exposed = False
    for vs in model.of_kind("VirtualService", "istio"):
        refs = vs.doc["spec"].get("gateways") or []
        if not refs:
            continue
        for ref in refs:
            ns, _, name = ref.rpartition("/")
            if name not in {g.name for g in gateways} or ns not in ("", model.istio_namespace):
                problems.append(f"VirtualService {vs.name} refers to a Gateway {ref} that is not here")
        hosts = set(vs.doc["spec"]["hosts"])
        for g in gateways:
            for server in g.doc["spec"]["servers"]:
                if not hosts & set(server["hosts"]):
                    problems.append(f"VirtualService {vs.name} hosts {sorted(hosts)} are not served by Gateway {g.name}")
        for route in vs.doc["spec"].get("http", []):
            for dest in route.get("route", []):
                if short_host(dest["destination"]["host"], model.namespace) in gw_services:
                    exposed = True
                else:
                    problems.append(f"ingress VirtualService {vs.name} routes to {dest['destination']['host']}, "
                                    "not to the gateway: only the gateway is public")
    if not exposed:
        problems.append("no ingress route reaches the gateway Service")
    for s in model.of_kind("Service"):
        if s.doc["spec"].get("type", "ClusterIP") != "ClusterIP":
            problems.append(f"Service {s.name} is {s.doc['spec']['type']}: everything public goes through the "
                            "Istio ingress (STRICT mTLS refuses plain traffic from outside the mesh)")
    return problems


def peer_authentication_problems(model: Model) -> list[str]:
    pas = model.of_kind("PeerAuthentication", "istio")
    wide = [p for p in pas if not p.doc["spec"].get("selector")]
    problems = []
    if not any(p.doc["spec"].get("mtls", {}).get("mode") == "STRICT" for p in wide):
        problems.append("no namespace-wide PeerAuthentication with mtls STRICT")
    for p in pas:
        modes = [p.doc["spec"].get("mtls", {}).get("mode")]
        modes += [v.get("mode") for v in (p.doc["spec"].get("portLevelMtls") or {}).values()]
        if {"PERMISSIVE", "DISABLE"} & set(modes):
            problems.append(f"PeerAuthentication {p.name} allows plain text ({modes})")
    return problems


def probe_rewrite_problems(model: Model) -> list[str]:
    """With STRICT mTLS the kubelet's plain-text HTTP probes only work when Istio rewrites them
    to its agent; a pod that turns that off would never become ready."""
    problems = []
    for w in model.workloads:
        ann = w.doc["spec"]["template"]["metadata"].get("annotations", {})
        http_probes = any((c.get(k) or {}).get("httpGet") for c in containers(w.doc)
                          for k in ("startupProbe", "readinessProbe", "livenessProbe"))
        if http_probes and ann.get("sidecar.istio.io/rewriteAppHTTPProbers") == "false":
            problems.append(f"{w!r}: HTTP probes with probe rewriting turned off fail under STRICT mTLS")
    return problems


def _principal_workload(model: Model, principal: str) -> list[Resource]:
    m = re.fullmatch(r"cluster\.local/ns/([^/]+)/sa/([^/]+)", principal)
    if not m or m.group(1) != model.namespace:
        return []
    return [w for w in model.workloads if model.service_account(w) == m.group(2)]


def expected_callers(model: Model) -> dict[str, set[tuple[str, int]]]:
    """Workload name -> {(caller principal, container port)}, derived from the deployment
    itself: every URL a container is configured with (env, Secrets), the NATS cluster routes,
    and the ingress routes."""
    out: dict[str, set[tuple[str, int]]] = {w.name: set() for w in model.workloads}

    def add_url(caller_principal: str, url: str) -> None:
        svc, port = model.url_target(url)
        if svc is None or port is None:
            return
        workloads, target = model.service_target(svc, port)
        for w in workloads:
            if target is not None:
                out[w.name].add((caller_principal, target))

    for w in model.workloads:
        for c in containers(w.doc):
            env, _ = model.env(c)
            for name, value in env.items():
                # A Secret read only by a database's init script is not a connection.
                if value and "://" in value and not (w.kind == "StatefulSet" and name.endswith("_DATABASE_URL")):
                    add_url(model.principal(w), value)
    for cm in model.of_kind("ConfigMap"):
        for text in (cm.doc.get("data") or {}).values():
            if "routes" in text:
                users = [w for w in model.workloads
                         if any(v.get("configMap", {}).get("name") == cm.name for v in pod_spec(w.doc).get("volumes", []))]
                for url in re.findall(r"nats-route://\S+|nats://\S+", text):
                    for u in users:
                        add_url(model.principal(u), url)
    for vs in model.of_kind("VirtualService", "istio"):
        if vs.doc["spec"].get("gateways"):
            for route in vs.doc["spec"].get("http", []):
                for dest in route.get("route", []):
                    d = dest["destination"]
                    add_url(INGRESS_PRINCIPAL, f"http://{d['host']}:{d.get('port', {}).get('number', 80)}")
    return out


def authorization_problems(model: Model) -> list[str]:
    problems = []
    policies = model.of_kind("AuthorizationPolicy", "istio")
    if not any(not p.doc.get("spec") for p in policies):
        problems.append("no allow-nothing AuthorizationPolicy (empty spec) for the namespace")
    allowed: dict[str, set[tuple[str, int]]] = {w.name: set() for w in model.workloads}
    for p in policies:
        spec = p.doc.get("spec") or {}
        if not spec:
            continue
        if spec.get("action", "ALLOW") != "ALLOW":
            continue
        selector = (spec.get("selector") or {}).get("matchLabels")
        targets = [w for w in model.workloads if model.selects(selector or {}, w)]
        if not targets:
            problems.append(f"AuthorizationPolicy {p.name} selects no workload")
        for rule in spec.get("rules", []):
            principals = [pr for f in rule.get("from", []) for pr in f.get("source", {}).get("principals", [])]
            ports = [int(pt) for t in rule.get("to", []) for pt in t.get("operation", {}).get("ports", [])]
            if not principals:
                problems.append(f"AuthorizationPolicy {p.name}: a rule without principals lets any caller in")
            if not ports:
                problems.append(f"AuthorizationPolicy {p.name}: a rule without ports opens every port")
            for pr in principals:
                if pr in EXTERNAL_PRINCIPALS:
                    continue
                if not _principal_workload(model, pr):
                    sa = pr.rsplit("/", 1)[-1]
                    exists = model.get("ServiceAccount", sa) is not None
                    problems.append(f"AuthorizationPolicy {p.name}: principal {pr} is "
                                    + ("a ServiceAccount no workload uses" if exists else "no ServiceAccount here"))
                for w in targets:
                    for port in ports:
                        if model.container_port(w, port) is None:
                            problems.append(f"AuthorizationPolicy {p.name}: {w.name} has no port {port}")
                        allowed[w.name].add((pr, port))
            for w in targets:
                for pr in principals:
                    if pr in EXTERNAL_PRINCIPALS:
                        for port in ports:
                            allowed[w.name].add((pr, port))
    for sa in model.of_kind("ServiceAccount"):
        if not any(model.service_account(w) == sa.name for w in model.workloads):
            problems.append(f"ServiceAccount {sa.name} is used by no workload")
    expected = expected_callers(model)
    for w in model.workloads:
        want, have = expected[w.name], allowed[w.name]
        for pr, port in sorted(want - have):
            problems.append(f"{w.name}: {pr} calls port {port} (per the configuration) but no policy allows it")
        for pr, port in sorted(have - want):
            problems.append(f"{w.name}: policy allows {pr} on port {port}, but nothing in the configuration calls it")
    return problems


def namespace_problems(model: Model) -> list[str]:
    problems = []
    if model.istio_namespace != model.namespace:
        problems.append(f"istio/ deploys to {model.istio_namespace}, k8s/ to {model.namespace}")
    for r in model.istio:
        text = json.dumps(r.doc)
        for ns in re.findall(r"\.([a-z0-9-]+)\.svc\.cluster\.local", text):
            if ns != model.namespace:
                problems.append(f"{r!r} names namespace {ns} in a host (k8s/ uses {model.namespace})")
        for ns in re.findall(r"cluster\.local/ns/([a-z0-9-]+)/", text):
            if ns not in (model.namespace, "istio-system"):
                problems.append(f"{r!r} names namespace {ns} in a principal")
    ns = model.get("Namespace", model.namespace)
    if ns is None:
        problems.append(f"no Namespace {model.namespace} in k8s/")
    elif ns.doc["metadata"].get("labels", {}).get("istio-injection") != "enabled" and \
            "istio.io/rev" not in ns.doc["metadata"].get("labels", {}):
        problems.append(f"Namespace {model.namespace} does not enable sidecar injection")
    return problems


# == Kubernetes policy =======================================================================

def pod_security_problems(model: Model) -> list[str]:
    """The restricted Pod Security Standard, plus a read-only root file system."""
    problems = []
    for w in model.workloads:
        spec = pod_spec(w.doc)
        psc = spec.get("securityContext", {})
        for f in ("hostNetwork", "hostPID", "hostIPC"):
            if spec.get(f):
                problems.append(f"{w!r}: {f}")
        for v in spec.get("volumes", []):
            if "hostPath" in v:
                problems.append(f"{w!r}: hostPath volume {v['name']}")
        if (psc.get("seccompProfile") or {}).get("type") not in ("RuntimeDefault", "Localhost"):
            problems.append(f"{w!r}: pod seccompProfile must be RuntimeDefault")
        for c in containers(w.doc):
            sc = c.get("securityContext", {})
            where = f"{w!r} container {c['name']}"
            if not (sc.get("runAsNonRoot") or psc.get("runAsNonRoot")):
                problems.append(f"{where}: runAsNonRoot is not set")
            if sc.get("runAsUser", psc.get("runAsUser")) in (0, None):
                problems.append(f"{where}: no non-zero runAsUser")
            if sc.get("allowPrivilegeEscalation") is not False:
                problems.append(f"{where}: allowPrivilegeEscalation must be false")
            if sc.get("privileged"):
                problems.append(f"{where}: privileged")
            if (sc.get("capabilities") or {}).get("drop") != ["ALL"]:
                problems.append(f"{where}: capabilities must drop ALL")
            if (sc.get("capabilities") or {}).get("add"):
                problems.append(f"{where}: adds capabilities")
            if sc.get("readOnlyRootFilesystem") is not True:
                problems.append(f"{where}: readOnlyRootFilesystem must be true")
    return problems


def resource_problems(model: Model) -> list[str]:
    problems = []
    for w in model.workloads:
        for c in containers(w.doc):
            res = c.get("resources", {})
            for f in ("requests.cpu", "requests.memory", "limits.memory"):
                a, b = f.split(".")
                if b not in res.get(a, {}):
                    problems.append(f"{w!r} container {c['name']}: no resources.{f}")
    return problems


def probe_presence_problems(model: Model) -> list[str]:
    problems = []
    for w in model.workloads:
        for c in pod_spec(w.doc).get("containers", []):
            for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
                if kind not in c:
                    problems.append(f"{w!r} container {c['name']}: no {kind}")
    return problems


def _max_replicas(model: Model, workload: Resource) -> int:
    for hpa in model.of_kind("HorizontalPodAutoscaler"):
        ref = hpa.doc["spec"]["scaleTargetRef"]
        if ref["kind"] == workload.kind and ref["name"] == workload.name:
            return hpa.doc["spec"]["maxReplicas"]
    return workload.doc["spec"].get("replicas", 1)


def _min_replicas(model: Model, workload: Resource) -> int:
    for hpa in model.of_kind("HorizontalPodAutoscaler"):
        ref = hpa.doc["spec"]["scaleTargetRef"]
        if ref["kind"] == workload.kind and ref["name"] == workload.name:
            return hpa.doc["spec"].get("minReplicas", 1)
    return workload.doc["spec"].get("replicas", 1)


def autoscaling_problems(model: Model) -> list[str]:
    problems = []
    for hpa in model.of_kind("HorizontalPodAutoscaler"):
        ref = hpa.doc["spec"]["scaleTargetRef"]
        target = model.get(ref["kind"], ref["name"])
        if target is None:
            problems.append(f"HPA {hpa.name} scales {ref['kind']}/{ref['name']}, which does not exist")
            continue
        lo = hpa.doc["spec"].get("minReplicas", 1)
        if lo < 2:
            problems.append(f"HPA {hpa.name}: minReplicas {lo} leaves no second pod for a rollout or a drain")
        if "replicas" in target.doc["spec"]:
            problems.append(f"HPA {hpa.name}: {ref['name']} sets replicas, which every apply would reset "
                            "under the autoscaler: leave it out")
        for m in hpa.doc["spec"].get("metrics", []):
            if m["type"] == "Resource":
                res = m["resource"]["name"]
                if not all(res in c.get("resources", {}).get("requests", {}) for c in containers(target.doc)):
                    problems.append(f"HPA {hpa.name} scales on {res} but a container has no {res} request")
    for program in sorted(HPA_PROGRAMS):
        w = model.workload_for_bin(program)
        if w is None:
            problems.append(f"no workload runs {program}")
        elif not any(h.doc["spec"]["scaleTargetRef"]["name"] == w.name for h in model.of_kind("HorizontalPodAutoscaler")):
            problems.append(f"{program} ({w.name}) has no HorizontalPodAutoscaler")
    return problems


def disruption_problems(model: Model) -> list[str]:
    problems = []
    pdbs = model.of_kind("PodDisruptionBudget")
    for w in model.workloads:
        if w.kind not in ("Deployment", "StatefulSet") or _min_replicas(model, w) < 2:
            continue
        mine = [p for p in pdbs if model.selects(p.doc["spec"]["selector"].get("matchLabels", {}), w)]
        if len(mine) != 1:
            problems.append(f"{w!r} has {len(mine)} PodDisruptionBudgets (want one)")
            continue
        spec = mine[0].doc["spec"]
        replicas = _min_replicas(model, w)
        if "maxUnavailable" in spec:
            if int(str(spec["maxUnavailable"]).rstrip("%")) < 1:
                problems.append(f"PDB {mine[0].name}: maxUnavailable 0 blocks every node drain")
        elif "minAvailable" in spec and int(str(spec["minAvailable"]).rstrip("%")) >= replicas:
            problems.append(f"PDB {mine[0].name}: minAvailable {spec['minAvailable']} of {replicas} blocks drains")
    for p in pdbs:
        if not any(model.selects(p.doc["spec"]["selector"].get("matchLabels", {}), w) for w in model.workloads):
            problems.append(f"PDB {p.name} selects no workload")
    return problems


def service_problems(model: Model) -> list[str]:
    problems = []
    for s in model.of_kind("Service"):
        workloads = model.service_workloads(s)
        if not workloads:
            problems.append(f"Service {s.name} selects no workload")
        for p in s.doc["spec"].get("ports", []):
            name = p.get("name", "")
            proto = p.get("appProtocol") or name.split("-")[0]
            if proto not in ("http", "http2", "grpc", "tcp", "tls", "https"):
                problems.append(f"Service {s.name} port {p['port']}: declare its protocol for Istio "
                                "(name http-*/tcp-* or appProtocol)")
            for w in workloads:
                if model.container_port(w, p.get("targetPort", p["port"])) is None:
                    problems.append(f"Service {s.name} port {p['port']}: targetPort {p.get('targetPort')} "
                                    f"is no port of {w.name}")
            # Server-first protocols (the server talks first) must never be sniffed by Istio.
            if any(x in s.name for x in ("nats", "postgres")) and proto != "tcp":
                problems.append(f"Service {s.name} port {p['port']}: NATS and PostgreSQL must be plain tcp for Istio")
    return problems


def statefulset_service_problems(model: Model) -> list[str]:
    problems = []
    for sts in model.of_kind("StatefulSet"):
        svc = model.get("Service", sts.doc["spec"].get("serviceName", ""))
        if svc is None or svc.doc["spec"].get("clusterIP") != "None":
            problems.append(f"StatefulSet {sts.name}: serviceName must be a headless Service")
        elif sts not in model.service_workloads(svc):
            problems.append(f"StatefulSet {sts.name}: its Service {svc.name} does not select it")
    return problems


def reference_problems(model: Model) -> list[str]:
    """Every ConfigMap, Secret and ServiceAccount a workload refers to exists (Secrets in the
    example file, with the key), and the example holds placeholders only."""
    problems = []
    for w in model.workloads:
        spec = pod_spec(w.doc)
        if model.get("ServiceAccount", model.service_account(w)) is None:
            problems.append(f"{w!r}: ServiceAccount {model.service_account(w)} does not exist")
        for v in spec.get("volumes", []):
            if "configMap" in v and model.get("ConfigMap", v["configMap"]["name"]) is None:
                problems.append(f"{w!r}: volume {v['name']}: ConfigMap {v['configMap']['name']} does not exist")
            if "secret" in v and not any(s.name == v["secret"]["secretName"] for s in model.secrets):
                problems.append(f"{w!r}: volume {v['name']}: Secret {v['secret']['secretName']} is not in "
                                "secrets.example.yaml")
        for c in containers(w.doc):
            problems += [f"{w!r} container {c['name']}: {p}" for p in model.env(c)[1]]
    for s in model.secrets:
        if s.kind != "Secret":
            problems.append(f"{s!r}: secrets.example.yaml holds Secrets only")
            continue
        values = dict(s.doc.get("stringData") or {})
        if s.doc.get("data"):
            problems.append(f"{s!r}: use stringData with placeholders, not data")
        for k, v in values.items():
            if PLACEHOLDER not in str(v):
                problems.append(f"Secret {s.name} key {k}: not a placeholder ({PLACEHOLDER}): never commit a secret")
    for r in model.k8s:
        if r.kind == "Secret":
            problems.append(f"{r!r}: Secrets stay out of the kustomization (they would overwrite the real ones)")
    return problems


def connection_budget_problems(model: Model) -> list[str]:
    """At most every database pod's pool, at the HPA's maximum, fits PostgreSQL's
    max_connections (minus the superuser reserve)."""
    pool = None
    db_rs = model.workspace.root / "services/platform/src/db.rs"
    if db_rs.exists():
        m = re.search(r"pub const POSTGRES_POOL_SIZE: u32 = (\d+);", db_rs.read_text())
        pool = int(m.group(1)) if m else None
    if pool is None:
        return ["cannot find the PostgreSQL pool size in services/platform/src/db.rs"]
    pg = next((s for s in model.of_kind("StatefulSet") if "postgres" in s.name), None)
    if pg is None:
        return ["no PostgreSQL StatefulSet"]
    args = " ".join(str(a) for c in containers(pg.doc) for a in (c.get("args") or []))
    m = re.search(r"max_connections=(\d+)", args)
    max_conn = int(m.group(1)) if m else 100
    reserved = 3  # superuser_reserved_connections' default
    users = [(w, binary) for w, c, binary, crate in model.service_containers()
             if (model.env(c)[0].get("DATABASE_URL") or "").startswith("postgres")]
    need = sum(_max_replicas(model, w) * pool for w, _ in users)
    problems = []
    if need > max_conn - reserved:
        problems.append(f"{need} connections at full scale ({', '.join(f'{b} {_max_replicas(model, w)}x{pool}' for w, b in users)}) "
                        f"exceed max_connections {max_conn} - {reserved} reserved")
    dr = next((d for d in model.of_kind("DestinationRule", "istio") if short_host(d.doc["spec"]["host"], model.namespace) == pg.doc["spec"]["serviceName"]), None)
    if dr is not None:
        cap = dr.doc["spec"].get("trafficPolicy", {}).get("connectionPool", {}).get("tcp", {}).get("maxConnections")
        if cap is not None and cap < pool:
            problems.append(f"DestinationRule {dr.name}: maxConnections {cap} per caller is below the pool size {pool}")
    return problems


def shutdown_problems(model: Model) -> list[str]:
    """A pod gets time to finish: preStop, then the HTTP drain (the services' request timeout),
    within terminationGracePeriodSeconds; the sidecar keeps serving the app's outbound calls
    (NATS acks, commits) until then."""
    common = _common_layer_timeout(model) or 30
    problems = []
    for w, c, binary, crate in model.service_containers():
        spec = pod_spec(w.doc)
        grace = spec.get("terminationGracePeriodSeconds", 30)
        pre = ((c.get("lifecycle") or {}).get("preStop") or {}).get("sleep", {}).get("seconds", 0)
        if grace <= pre + common:
            problems.append(f"{w!r}: terminationGracePeriodSeconds {grace} <= preStop {pre} s + request timeout {common:g} s")
        ann = w.doc["spec"]["template"]["metadata"].get("annotations", {})
        cfg = ann.get("proxy.istio.io/config")
        if cfg:
            drain = yaml.safe_load(cfg).get("terminationDrainDuration")
            if drain and not (pre + common <= parse_duration(drain) < grace):
                problems.append(f"{w!r}: the sidecar's terminationDrainDuration {drain} should cover preStop + "
                                f"{common:g} s and end before the grace period ({grace} s)")
    return problems


# == NATS =====================================================================================

def nats_statefulset(model: Model) -> Resource | None:
    return next((s for s in model.of_kind("StatefulSet")
                 if any("nats-server" in " ".join(c.get("command", []) + c.get("args", [])) for c in containers(s.doc))), None)


def nats_config(model: Model) -> tuple[str, Resource, dict] | None:
    sts = nats_statefulset(model)
    if sts is None:
        return None
    c = next(c for c in containers(sts.doc) if "nats-server" in " ".join(c.get("command", [])))
    args = c.get("command", [])[1:] + c.get("args", [])
    conf_path = next((args[i + 1] for i, a in enumerate(args) if a in ("--config", "-c")), None)
    for m in c.get("volumeMounts", []):
        if conf_path and conf_path.startswith(m["mountPath"].rstrip("/") + "/"):
            vol = next(v for v in pod_spec(sts.doc)["volumes"] if v["name"] == m["name"])
            cm = model.get("ConfigMap", vol["configMap"]["name"])
            key = conf_path[len(m["mountPath"].rstrip("/")) + 1:]
            if cm and key in cm.doc.get("data", {}):
                return cm.doc["data"][key], sts, c
    return None


def nats_problems(model: Model) -> list[str]:
    found = nats_config(model)
    if found is None:
        return ["no NATS StatefulSet with a --config file from a ConfigMap"]
    conf, sts, c = found
    problems = []
    replicas = sts.doc["spec"].get("replicas", 1)
    if replicas != 3:
        problems.append(f"the NATS cluster has {replicas} nodes (want 3: a quorum survives one loss)")
    service = sts.doc["spec"]["serviceName"]
    ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}

    def conf_port(pattern: str) -> int | None:
        m = re.search(pattern, conf, re.M)
        return int(m.group(1)) if m else None

    client = conf_port(r"^\s*(?:listen|port)\s*:\s*(?:[\d.]+:)?(\d+)")
    cluster_block = re.search(r"cluster\s*\{(.*?)\n\}", conf, re.S)
    cluster = int(re.search(r"listen\s*:\s*(?:[\d.]+:)?(\d+)", cluster_block.group(1)).group(1)) if cluster_block else None
    monitor = conf_port(r"^\s*http(?:_port)?\s*:\s*(?:[\d.]+:)?(\d+)")
    for name, value in (("client", client), ("cluster", cluster), ("monitor", monitor)):
        if value is None or ports.get(name) != value:
            problems.append(f"nats.conf {name} port {value} is not the container port '{name}' ({ports.get(name)})")
    routes = sorted(re.findall(r"nats(?:-route)?://([^\s,\]]+)", cluster_block.group(1) if cluster_block else ""))
    want = sorted(f"{sts.name}-{i}.{service}:{cluster}" for i in range(replicas))
    if routes != want:
        problems.append(f"cluster routes {routes} are not the StatefulSet's pods {want}")
    if "jetstream" not in conf:
        problems.append("JetStream is not enabled")
    store = re.search(r"store_dir\s*:\s*\"?([^\s\"]+)", conf)
    mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
    claims = {t["metadata"]["name"]: t for t in sts.doc["spec"].get("volumeClaimTemplates", [])}
    mount = next((p for p in mounts if store and (store.group(1) + "/").startswith(p.rstrip("/") + "/")), None)
    if not store or mount is None or mounts[mount] not in claims:
        problems.append("the JetStream store_dir is not on a PersistentVolumeClaim")
    else:
        size = _bytes(claims[mounts[mount]]["spec"]["resources"]["requests"]["storage"])
        cap = re.search(r"max_file_store\s*:\s*(\S+)", conf)
        if not cap or _bytes(cap.group(1)) >= size:
            problems.append("max_file_store must be below the volume size, so NATS refuses writes before the disk is full")
    name_var = re.search(r"server_name\s*:\s*\$(\w+)", conf)
    env = {e["name"]: e for e in c.get("env", [])}
    if not name_var or (env.get(name_var.group(1), {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") != "metadata.name"):
        problems.append("server_name must be the pod name (a stable, unique name per JetStream node)")
    return problems


def _bytes(quantity: str) -> float:
    m = re.fullmatch(r"([\d.]+)\s*([KMGT]?)(i?)B?", str(quantity), re.I)
    if not m:
        raise ValueError(f"not a size: {quantity}")
    base = 1024 if m.group(3) or not m.group(2) else 1000
    power = " KMGT".index(m.group(2).upper() or " ")
    # NATS reads "8GB" and "8G" as powers of 1024 too.
    if m.group(2) and not m.group(3):
        base = 1024
    return float(m.group(1)) * base ** power


ALL_MODEL_CHECKS = [
    dockerfile_problems, dockerignore_problems, database_isolation_problems, destination_rule_problems,
    gateway_ejection_problems, virtual_service_problems, timeout_ladder_problems, ingress_problems,
    peer_authentication_problems, probe_rewrite_problems, authorization_problems, namespace_problems,
    pod_security_problems, resource_problems, probe_presence_problems, autoscaling_problems,
    disruption_problems, service_problems, statefulset_service_problems, reference_problems,
    connection_budget_problems, shutdown_problems, nats_problems,
]
