"""Everything the checks look at, loaded once: the rendered manifests, the example Secrets, the
Istio schemas, the Rust workspace and the Dockerfile. Checks take a Model and return a list of
problems, so the self-tests (test_checkers.py) can hand them a broken copy and see them fail.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from functools import cached_property
from urllib.parse import urlsplit

from manifests import (
    ISTIO, K8S, ROOT, SECRETS_EXAMPLE, Resource, containers, kustomization_namespace,
    load_docs, pod_spec, render,
)
from rustcode import Crate, Workspace

PLATFORM_CRATE = "roombook-platform"


@dataclass
class Model:
    k8s: list[Resource]
    istio: list[Resource]
    secrets: list[Resource]
    workspace: Workspace
    dockerfile: str
    dockerignore: str
    namespace: str
    istio_namespace: str | None = None
    notes: list[str] = field(default_factory=list)

    @classmethod
    def load(cls) -> "Model":
        return cls(
            k8s=render(K8S),
            istio=render(ISTIO),
            secrets=[Resource(d, SECRETS_EXAMPLE) for d in load_docs(SECRETS_EXAMPLE)],
            workspace=Workspace(ROOT),
            dockerfile=(ROOT / "Dockerfile").read_text(),
            dockerignore=(ROOT / ".dockerignore").read_text(),
            namespace=kustomization_namespace(K8S),
            istio_namespace=kustomization_namespace(ISTIO),
        )

    def copy(self) -> "Model":
        """A deep copy of the manifests (the code model is shared: it is read-only)."""
        return Model(copy.deepcopy(self.k8s), copy.deepcopy(self.istio), copy.deepcopy(self.secrets),
                     self.workspace, self.dockerfile, self.dockerignore, self.namespace, self.istio_namespace)

    # -- finding things --------------------------------------------------------------------

    def of_kind(self, kind: str, where: str = "k8s") -> list[Resource]:
        return [r for r in getattr(self, where) if r.kind == kind]

    def get(self, kind: str, name: str, where: str = "k8s") -> Resource | None:
        for r in getattr(self, where):
            if r.kind == kind and r.name == name:
                return r
        return None

    @property
    def workloads(self) -> list[Resource]:
        return [r for r in self.k8s if pod_spec(r.doc) is not None]

    def pod_labels(self, workload: Resource) -> dict:
        return workload.doc["spec"]["template"]["metadata"].get("labels", {})

    def selects(self, selector: dict, workload: Resource) -> bool:
        labels = self.pod_labels(workload)
        return bool(selector) and all(labels.get(k) == v for k, v in selector.items())

    def service_workloads(self, service: Resource) -> list[Resource]:
        sel = service.doc["spec"].get("selector", {})
        return [w for w in self.workloads if self.selects(sel, w)]

    def service_account(self, workload: Resource) -> str:
        return pod_spec(workload.doc).get("serviceAccountName", "default")

    def principal(self, workload: Resource) -> str:
        return f"cluster.local/ns/{self.namespace}/sa/{self.service_account(workload)}"

    # -- ports -----------------------------------------------------------------------------

    @staticmethod
    def container_port(workload: Resource, port) -> int | None:
        """A container port by number or name."""
        for c in containers(workload.doc):
            for p in c.get("ports", []):
                if port == p.get("name") or port == p.get("containerPort"):
                    return p["containerPort"]
        return None

    def service_target(self, service: Resource, port: int) -> tuple[list[Resource], int | None]:
        """The workloads behind a Service port and the container port it reaches."""
        for p in service.doc["spec"].get("ports", []):
            if p.get("port") == port:
                target = p.get("targetPort", port)
                workloads = self.service_workloads(service)
                ports = {self.container_port(w, target) for w in workloads}
                return workloads, (ports.pop() if len(ports) == 1 else None)
        return [], None

    # -- configuration ---------------------------------------------------------------------

    def config_value(self, kind: str, name: str, key: str) -> str | None:
        pool = self.k8s if kind == "ConfigMap" else self.secrets
        for r in pool:
            if r.kind == kind and r.name == name:
                data = dict(r.doc.get("data", {}) or {})
                data.update(r.doc.get("stringData", {}) or {})
                if key in data:
                    return str(data[key])
        return None

    def env(self, container: dict) -> tuple[dict[str, str | None], list[str]]:
        """The variables a container gets -> value (Secret values from the example file), and
        problems with references that do not resolve."""
        out: dict[str, str | None] = {}
        problems = []
        for ef in container.get("envFrom", []):
            for kind, key in (("ConfigMap", "configMapRef"), ("Secret", "secretRef")):
                if key in ef:
                    name = ef[key]["name"]
                    pool = self.k8s if kind == "ConfigMap" else self.secrets
                    found = [r for r in pool if r.kind == kind and r.name == name]
                    if not found:
                        problems.append(f"envFrom {kind} {name} does not exist")
                        continue
                    data = dict(found[0].doc.get("data", {}) or {})
                    data.update(found[0].doc.get("stringData", {}) or {})
                    for k, v in data.items():
                        out[ef.get("prefix", "") + k] = str(v)
        for e in container.get("env", []):
            if "value" in e:
                out[e["name"]] = str(e["value"])
            elif "valueFrom" in e:
                vf = e["valueFrom"]
                ref = vf.get("configMapKeyRef") or vf.get("secretKeyRef")
                if ref:
                    kind = "ConfigMap" if "configMapKeyRef" in vf else "Secret"
                    value = self.config_value(kind, ref["name"], ref["key"])
                    if value is None and not ref.get("optional"):
                        problems.append(f"{e['name']}: {kind} {ref['name']} has no key {ref['key']}")
                    out[e["name"]] = value
                else:
                    out[e["name"]] = None  # fieldRef / resourceFieldRef
            else:
                out[e["name"]] = ""
        return out, problems

    # -- the Roombook services -------------------------------------------------------------

    @cached_property
    def service_crates(self) -> list[Crate]:
        """Crates that build a service: DESIGN's shape, a library (src/lib.rs) on the platform
        crate with a thin binary. Tools (a load generator, say) have no such library."""
        return [c for c in self.workspace.crates.values()
                if c.bins and (c.dir / "src" / "lib.rs").exists() and PLATFORM_CRATE in c.dep_names]

    def program(self, container: dict) -> tuple[str | None, Crate | None]:
        """The binary a container runs (command[0]'s file name) and its crate."""
        command = container.get("command") or []
        if not command:
            return None, None
        binary = command[0].rsplit("/", 1)[-1]
        return binary, self.workspace.crate_for_bin(binary)

    def service_containers(self) -> list[tuple[Resource, dict, str, Crate]]:
        out = []
        for w in self.workloads:
            for c in containers(w.doc):
                binary, crate = self.program(c)
                if crate is not None:
                    out.append((w, c, binary, crate))
        return out

    def workload_for_bin(self, binary: str) -> Resource | None:
        for w, c, b, crate in self.service_containers():
            if b == binary:
                return w
        return None

    def services_of(self, workload: Resource) -> list[Resource]:
        return [s for s in self.of_kind("Service") if workload in self.service_workloads(s)]

    # -- URLs between workloads ------------------------------------------------------------

    def resolve_host(self, host: str) -> Resource | None:
        """The Service a host names in this namespace: `svc`, `svc.ns`, `svc.ns.svc[.cluster.local]`,
        or a pod of a headless Service: `pod.svc[.ns...]`."""
        name = short_host(host, self.namespace)
        if name and self.get("Service", name):
            return self.get("Service", name)
        if "." in host:
            name = short_host(host.split(".", 1)[1], self.namespace)
            svc = self.get("Service", name) if name else None
            if svc is not None and svc.doc["spec"].get("clusterIP") == "None":
                return svc
        return None

    def url_target(self, url: str) -> tuple[Resource | None, int | None]:
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError:
            return None, None
        if not parts.hostname:
            return None, None
        svc = self.resolve_host(parts.hostname)
        if port is None:
            port = {"http": 80, "https": 443, "nats": 4222, "postgres": 5432, "postgresql": 5432}.get(parts.scheme)
        return svc, port


def fqdn(name: str, namespace: str) -> str:
    return f"{name}.{namespace}.svc.cluster.local"


def short_host(host: str, namespace: str) -> str | None:
    """The Service name of an in-mesh host, or None when it names another namespace."""
    m = re.fullmatch(r"([a-z0-9-]+)(?:\.([a-z0-9-]+)(?:\.svc(?:\.cluster\.local)?)?)?", host)
    if not m:
        return None
    if m.group(2) and m.group(2) != namespace:
        return None
    return m.group(1)
