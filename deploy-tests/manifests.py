"""Loading the deployment: k8s/ and istio/ rendered the way `kubectl apply -k` would (for the
kustomization fields we use), the example Secrets, the Dockerfile and .dockerignore.

The renderer supports exactly `namespace`, `images` and `resources` (files only); any other
kustomization field is an error, so a new field cannot make the tests validate something other
than what gets deployed. test_kustomize_matches_kubectl compares this renderer with
`kubectl kustomize` where kubectl is installed.
"""

from __future__ import annotations

import copy
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "k8s"
ISTIO = ROOT / "istio"
SECRETS_EXAMPLE = K8S / "secrets.example.yaml"
ISTIO_CRDS = ROOT / "testdata" / "istio-crds.gen.yaml"

KUSTOMIZE_FIELDS = {"apiVersion", "kind", "namespace", "images", "resources"}
CLUSTER_SCOPED = {"Namespace", "CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding",
                  "PersistentVolume", "StorageClass", "PriorityClass", "IngressClass"}
WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "Job"}


@dataclass
class Resource:
    doc: dict
    source: Path

    @property
    def kind(self) -> str:
        return self.doc.get("kind", "")

    @property
    def name(self) -> str:
        return self.doc.get("metadata", {}).get("name", "")

    @property
    def namespace(self) -> str | None:
        return self.doc.get("metadata", {}).get("namespace")

    def __repr__(self) -> str:
        return f"{self.kind}/{self.name} ({self.source.relative_to(ROOT)})"


def load_docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def pod_spec(doc: dict) -> dict | None:
    kind = doc.get("kind")
    if kind == "Pod":
        return doc.get("spec")
    if kind in WORKLOAD_KINDS:
        return doc.get("spec", {}).get("template", {}).get("spec")
    if kind == "CronJob":
        return doc.get("spec", {}).get("jobTemplate", {}).get("spec", {}).get("template", {}).get("spec")
    return None


def containers(doc: dict) -> list[dict]:
    spec = pod_spec(doc) or {}
    return list(spec.get("initContainers", [])) + list(spec.get("containers", []))


def _split_image(image: str) -> tuple[str, str | None, str | None]:
    digest = None
    if "@" in image:
        image, digest = image.split("@", 1)
    tag = None
    last = image.rsplit("/", 1)[-1]
    if ":" in last:
        image, tag = image.rsplit(":", 1)
    return image, tag, digest


def render(directory: Path) -> list[Resource]:
    """The resources of directory/kustomization.yaml, transformed as kustomize would."""
    kfile = directory / "kustomization.yaml"
    k = yaml.safe_load(kfile.read_text())
    unknown = set(k) - KUSTOMIZE_FIELDS
    if unknown:
        raise ValueError(f"{kfile}: fields this renderer does not support: {sorted(unknown)}")
    if k.get("kind") != "Kustomization":
        raise ValueError(f"{kfile}: not a Kustomization")
    out = []
    for entry in k.get("resources", []):
        path = directory / entry
        if not path.is_file():
            raise ValueError(f"{kfile}: resource {entry} is not a file in {directory}")
        for doc in load_docs(path):
            doc = copy.deepcopy(doc)
            if k.get("namespace") and doc.get("kind") not in CLUSTER_SCOPED:
                doc.setdefault("metadata", {})["namespace"] = k["namespace"]
            for image in k.get("images", []):
                for c in containers(doc):
                    name, tag, digest = _split_image(c.get("image", ""))
                    if name == image["name"]:
                        name = image.get("newName", name)
                        tag = image.get("newTag", tag)
                        digest = image.get("digest", digest)
                        c["image"] = name + (f":{tag}" if tag else "") + (f"@{digest}" if digest else "")
            out.append(Resource(doc, path))
    return out


def kustomization_namespace(directory: Path) -> str | None:
    return yaml.safe_load((directory / "kustomization.yaml").read_text()).get("namespace")


# -- Dockerfile ------------------------------------------------------------------------------

@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)  # (INSTRUCTION, args)


def parse_dockerfile(text: str) -> list[Stage]:
    """Stages with their instructions (continuation lines joined, comments dropped, ARG
    defaults substituted into FROM)."""
    lines, current = [], ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if current and stripped.startswith("#"):
            continue  # a comment inside a continued instruction
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        current += stripped
        lines.append(current)
        current = ""
    if current:
        lines.append(current)
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in lines:
        instr, _, rest = line.partition(" ")
        instr = instr.upper()
        rest = rest.strip()
        if instr == "ARG" and not stages:
            name, _, default = rest.partition("=")
            args[name.strip()] = default.strip()
            continue
        if instr == "FROM":
            words = rest.split()
            words = [w for w in words if not w.startswith("--platform")]
            base = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args.get(m.group(1) or m.group(2), m.group(0)), words[0])
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            stages.append(Stage(base=base, name=name))
            continue
        if stages:
            stages[-1].instructions.append((instr, rest))
    return stages


def shell_words(command: str) -> list[str]:
    return shlex.split(command, comments=False, posix=True)


# -- .dockerignore ---------------------------------------------------------------------------

def _pattern_regex(pattern: str) -> re.Pattern:
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out += "(?:.*/)?"
            i += 3
        elif pattern.startswith("**", i):
            out += ".*"
            i += 2
        elif pattern[i] == "*":
            out += "[^/]*"
            i += 1
        elif pattern[i] == "?":
            out += "[^/]"
            i += 1
        else:
            out += re.escape(pattern[i])
            i += 1
    return re.compile(out + "$")


class DockerIgnore:
    """Docker's .dockerignore rules: patterns in order, the last match wins, `!` re-includes,
    a pattern matching a directory excludes what is inside it."""

    def __init__(self, text: str):
        self.rules: list[tuple[bool, re.Pattern, str]] = []
        for line in text.splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            negate = line.startswith("!")
            pattern = line[1:] if negate else line
            pattern = pattern.strip().strip("/") or "."
            pattern = re.sub(r"^\./", "", pattern)
            self.rules.append((negate, _pattern_regex(pattern), line))

    def excluded(self, path: str) -> bool:
        parts = path.strip("/").split("/")
        candidates = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
        result = False
        for negate, regex, _ in self.rules:
            if any(regex.match(c) for c in candidates):
                result = not negate
        return result
