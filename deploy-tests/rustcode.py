"""What the deployment needs to know about the Rust code, read from the sources (no build).

For every workspace crate: its binaries, its functions, and per function the environment
variables it reads, the HTTP routes it registers and the functions it calls. A service "reads" a
variable when its own code does, or when it calls (directly or through other platform
functions) a function of a path dependency that does: `ServiceConfig::from_env` reads HTTP_ADDR,
NATS_URL, ...; `telemetry::init` reads LOG_FORMAT and RUST_LOG. So a variable the platform reads
only for services with a database does not count for the gateway, which never calls that code.

This is a reading of the source text, not a compiler: comments and string contents are masked
before looking for structure, code a release build leaves out (`#[cfg(test)]`, non-default
features) is dropped, and a method call `.name(` is taken to mean any dependency method of that
name. That over-approximation can only make a variable count as read because a same-named
method reads it; it never hides a variable the code does not read from a service that does.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

# Variables read by libraries on behalf of code that calls them, with the call that proves it.
# tracing-subscriber's EnvFilter::from_default_env / try_from_default_env read RUST_LOG
# (tracing_subscriber::filter::EnvFilter::DEFAULT_ENV).
LIBRARY_ENV_READS = {
    "RUST_LOG": re.compile(r"EnvFilter::(?:try_)?from_default_env\s*\("),
}

ENV_NAME = re.compile(r"^[A-Z][A-Z0-9_]*$")


def mask(src: str) -> str:
    """The source with comments and the contents of string and char literals replaced by
    spaces (quotes kept, newlines kept), so positions match the original."""
    out = list(src)
    i, n = 0, len(src)

    def blank(a: int, b: int) -> None:
        for k in range(a, b):
            if out[k] != "\n":
                out[k] = " "

    while i < n:
        c = src[i]
        if src.startswith("//", i):
            j = src.find("\n", i)
            j = n if j < 0 else j
            blank(i, j)
            i = j
        elif src.startswith("/*", i):
            depth, j = 1, i + 2
            while j < n and depth:
                if src.startswith("/*", j):
                    depth, j = depth + 1, j + 2
                elif src.startswith("*/", j):
                    depth, j = depth - 1, j + 2
                else:
                    j += 1
            blank(i, j)
            i = j
        elif c == "r" and re.match(r'r#*"', src[i:i + 10]) and (i == 0 or not (src[i - 1].isalnum() or src[i - 1] == "_") or (src[i - 1] == "b" and (i == 1 or not src[i - 2].isalnum()))):
            m = re.match(r'r(#*)"', src[i:])
            hashes = m.group(1)
            start = i + len(m.group(0))
            end = src.find('"' + hashes, start)
            end = n if end < 0 else end
            blank(start, end)
            i = end + 1 + len(hashes)
        elif c == '"':
            j = i + 1
            while j < n and src[j] != '"':
                j += 2 if src[j] == "\\" else 1
            blank(i + 1, j)
            i = j + 1
        elif c == "'":
            # A char literal ('a', '\n', '\u{1F600}') or a lifetime ('a).
            m = re.match(r"'(\\u\{[0-9a-fA-F]+\}|\\.|[^\\'])'", src[i:])
            if m:
                blank(i + 1, i + len(m.group(0)) - 1)
                i += len(m.group(0))
            else:
                i += 1
        else:
            i += 1
    return "".join(out)


def matching_brace(masked: str, open_at: int) -> int:
    """Index of the `}` closing the `{` at open_at."""
    depth = 0
    for k in range(open_at, len(masked)):
        ch = masked[k]
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return k
    raise ValueError("unbalanced braces")


def cfg_enabled(expr: str, features: set[str]) -> bool:
    """Evaluates a cfg predicate for a release build of the program: `test` is off, a feature
    is on when it is a default feature, anything else (target_os, debug_assertions, ...) is
    assumed on."""
    tokens = re.findall(r'\w+\s*=\s*"[^"]*"|\w+|[(),]', expr)
    pos = 0

    def parse() -> bool:
        nonlocal pos
        tok = tokens[pos]
        pos += 1
        if tok in ("any", "all", "not") and pos < len(tokens) and tokens[pos] == "(":
            pos += 1
            args = []
            while tokens[pos] != ")":
                args.append(parse())
                if tokens[pos] == ",":
                    pos += 1
            pos += 1
            return any(args) if tok == "any" else all(args) if tok == "all" else not args[0]
        if tok == "test":
            return False
        m = re.match(r'feature\s*=\s*"([^"]*)"', tok)
        if m:
            return m.group(1) in features
        return True

    return parse()


def _string_literal_at(src: str, pos: int) -> str | None:
    """The string literal starting at pos (after optional whitespace), if any."""
    m = re.compile(r'\s*"((?:[^"\\]|\\.)*)"').match(src, pos)
    return m.group(1) if m else None


@dataclass
class Function:
    crate: str
    module: str
    impl_type: str | None
    name: str
    file: Path
    body: str  # original text of the body
    masked: str  # masked text of the body

    @cached_property
    def env_reads(self) -> dict[str, str | None]:
        """Variables read with a literal name -> literal default ("" = none) or None (no default
        given, e.g. std::env::var)."""
        reads: dict[str, str | None] = {}
        for m in re.finditer(r"\benv_or\s*\(", self.masked):
            name = _string_literal_at(self.body, m.end())
            if name and ENV_NAME.match(name):
                rest = self.body[m.end():]
                dm = re.match(r'\s*"[^"]*"\s*,\s*"((?:[^"\\]|\\.)*)"\s*\)', rest)
                reads[name] = dm.group(1) if dm else "<computed>"
        for m in re.finditer(r"\benv::var(?:_os)?\s*\(", self.masked):
            name = _string_literal_at(self.body, m.end())
            if name and ENV_NAME.match(name):
                reads.setdefault(name, None)
        for var, pattern in LIBRARY_ENV_READS.items():
            if pattern.search(self.masked):
                reads.setdefault(var, "<library default>")
        return reads

    @cached_property
    def indirect_env_keys(self) -> list[str]:
        """Functions whose return value is used as a variable name: env_or(x.url_var(), ...)."""
        return [m.group(1) for m in re.finditer(r"\benv_or\s*\(\s*[\w.]*?(\w+)\s*\(\s*\)", self.masked)]

    @cached_property
    def required_env(self) -> set[str]:
        """Variables the code cannot do without: env_or with an empty default, or
        std::env::var(..) whose error is propagated or unwrapped."""
        req = {name for name, default in self.env_reads.items() if default == ""}
        for m in re.finditer(r"\benv::var\s*\(", self.masked):
            name = _string_literal_at(self.body, m.end())
            if not name:
                continue
            close = self.masked.find(")", m.end())
            tail = self.masked[close + 1:close + 40]
            if re.match(r"\s*(\?|\.context|\.with_context|\.expect|\.unwrap\(\))", tail):
                req.add(name)
        return req

    @cached_property
    def routes(self) -> set[str]:
        out = set()
        for m in re.finditer(r"\.route\s*\(", self.masked):
            lit = _string_literal_at(self.body, m.end())
            if lit is not None:
                out.add(lit)
        return out

    @cached_property
    def path_calls(self) -> set[tuple[str | None, str]]:
        """(qualifier, name) of calls like `Type::name(`, `module::name(` or `name(`."""
        calls = set()
        for m in re.finditer(r"(?<![.\w])((?:\w+::)*)(\w+)\s*(?:::\s*<[^;{}()]*?>\s*)?\(", self.masked):
            quals = [q for q in m.group(1).split("::") if q]
            name = m.group(2)
            if name in {"if", "while", "match", "for", "return", "fn", "Some", "Ok", "Err", "loop"}:
                continue
            calls.add((quals[-1] if quals else None, name))
        return calls

    @cached_property
    def method_calls(self) -> set[str]:
        return {m.group(1) for m in re.finditer(r"\.\s*(\w+)\s*(?:::\s*<[^;{}()]*?>\s*)?\(", self.masked)}

    @cached_property
    def lookup_delegates(self) -> list[str]:
        """Functions handed a closure that reads the environment by a computed name, as in
        `Self::from_lookup(|key| std::env::var(key).ok())`: the names are chosen there."""
        out = []
        for m in re.finditer(r"(\w+)\s*\(\s*(?:move\s*)?\|[^|]*\|[^;]*?\benv::var(?:_os)?\s*\(\s*[a-z_]", self.masked):
            out.append(m.group(1))
        return out

    @cached_property
    def lookup_names(self) -> set[str]:
        """Names this function passes to its own lookup closures (`let get = |key| ...;`
        then `get("SMTP_URL")`), for a function that receives its lookup from a caller."""
        closures = set(re.findall(r"\blet\s+(\w+)\s*=\s*(?:move\s*)?\|", self.masked))
        names = set()
        for m in re.finditer(r"\b(\w+)\s*\(", self.masked):
            if m.group(1) in closures:
                lit = _string_literal_at(self.body, m.end())
                if lit and ENV_NAME.match(lit):
                    names.add(lit)
        return names

    @cached_property
    def upper_literals(self) -> set[str]:
        return {lit for lit in re.findall(r'"([A-Z][A-Z0-9_]*)"', self.body)}


@dataclass
class Crate:
    name: str  # package name, e.g. roombook-booking
    dir: Path
    manifest: dict
    dep_names: list[str]  # package names of path dependencies (normal deps only)
    functions: list[Function] = field(default_factory=list)
    source_text: str = ""  # masked, non-test source of the crate

    @property
    def bins(self) -> list[str]:
        bins = [b["name"] for b in self.manifest.get("bin", [])]
        autobins = self.manifest.get("package", {}).get("autobins", True)
        if not self.manifest.get("bin") and autobins and (self.dir / "src" / "main.rs").exists():
            bins.append(self.name)
        return bins

    @property
    def default_features(self) -> set[str]:
        features = self.manifest.get("features", {})
        out, stack = set(), list(features.get("default", []))
        while stack:
            f = stack.pop()
            if f not in out and not f.startswith("dep:") and "/" not in f:
                out.add(f)
                stack.extend(features.get(f, []))
        return out

    def has_fn(self, name: str) -> bool:
        return any(f.name == name for f in self.functions)

    def const_int(self, const: str) -> int | None:
        m = re.search(rf"\bconst\s+{const}\s*:\s*\w+\s*=\s*(\d+)", self.source_text)
        return int(m.group(1)) if m else None


class Workspace:
    def __init__(self, root: Path):
        self.root = root
        manifest = tomllib.loads((root / "Cargo.toml").read_text())
        self.members = manifest["workspace"]["members"]
        self.workspace_deps = manifest["workspace"].get("dependencies", {})
        self.crates: dict[str, Crate] = {}
        for member in self.members:
            crate_dir = root / member
            cm = tomllib.loads((crate_dir / "Cargo.toml").read_text())
            name = cm["package"]["name"]
            deps = []
            for key, spec in cm.get("dependencies", {}).items():
                pkg = self._path_dep(key, spec, crate_dir)
                if pkg:
                    deps.append(pkg)
            crate = Crate(name=name, dir=crate_dir, manifest=cm, dep_names=deps)
            self._read_sources(crate)
            self.crates[name] = crate

    def _path_dep(self, key: str, spec, crate_dir: Path) -> str | None:
        if isinstance(spec, dict) and spec.get("workspace"):
            ws = self.workspace_deps.get(key)
            if isinstance(ws, dict) and "path" in ws:
                return ws.get("package", key)
            return None
        if isinstance(spec, dict) and "path" in spec:
            return spec.get("package", key)
        return None

    def _read_sources(self, crate: Crate) -> None:
        src = crate.dir / "src"
        if not src.is_dir():
            return
        excluded: set[Path] = set()
        files = sorted(src.rglob("*.rs"))
        texts = {}
        for f in files:
            original = f.read_text()
            masked = mask(original)
            # Drop items a release build leaves out (#[cfg(test)], #[cfg(feature = "testkit")]
            # when testkit is not a default feature): `mod x;` excludes the file x.rs,
            # `mod x { .. }` / `fn x() { .. }` their block.
            keep_orig, keep_mask = list(original), list(masked)
            for m in re.finditer(r"#\[cfg\((.*?)\)\]", original):
                if cfg_enabled(m.group(1), crate.default_features):
                    continue
                after = m.end()
                semi = masked.find(";", after)
                brace = masked.find("{", after)
                mod_decl = re.match(r"\s*(?:pub(?:\([^)]*\))?\s+)?mod\s+(\w+)\s*;", masked[after:])
                if mod_decl:
                    excluded.add(f.parent / f"{mod_decl.group(1)}.rs")
                    excluded.add(f.parent / mod_decl.group(1) / "mod.rs")
                    continue
                if brace < 0 or (0 <= semi < brace):
                    continue
                end = matching_brace(masked, brace)
                for k in range(m.start(), end + 1):
                    if keep_orig[k] != "\n":
                        keep_orig[k] = " "
                        keep_mask[k] = " "
            texts[f] = ("".join(keep_orig), "".join(keep_mask))
        all_masked = []
        for f, (original, masked) in texts.items():
            if f in excluded:
                continue
            all_masked.append(masked)
            module = f.stem if f.name not in ("lib.rs", "main.rs", "mod.rs") else (
                f.parent.name if f.name == "mod.rs" else "crate")
            impls = []
            for m in re.finditer(r"\bimpl\b(?:\s*<[^{]*?>)?\s+(?:[\w:<>, ]+?\s+for\s+)?([\w:]+)(?:<[^{]*?>)?\s*(?:where[^{]*)?\{", masked):
                open_at = m.end() - 1
                impls.append((open_at, matching_brace(masked, open_at), m.group(1).split("::")[-1]))
            for m in re.finditer(r"\bfn\s+(\w+)", masked):
                # The body starts at the first `{` after the parameter list (a `;` first means
                # a declaration without a body).
                paren = masked.find("(", m.end())
                depth, k = 0, paren
                while k < len(masked):
                    if masked[k] == "(":
                        depth += 1
                    elif masked[k] == ")":
                        depth -= 1
                        if depth == 0:
                            break
                    k += 1
                brace = masked.find("{", k)
                semi = masked.find(";", k)
                if brace < 0 or (0 <= semi < brace):
                    continue
                end = matching_brace(masked, brace)
                impl_type = None
                for a, b, t in impls:
                    if a < m.start() < b:
                        impl_type = t
                crate.functions.append(Function(
                    crate=crate.name, module=module, impl_type=impl_type, name=m.group(1), file=f,
                    body=original[brace:end + 1], masked=masked[brace:end + 1]))
        crate.source_text = "\n".join(all_masked)
        # Constants need their literal values: keep the original text for const lines.
        crate.source_text += "\n" + "\n".join(
            line for f, (original, _) in texts.items() if f not in excluded
            for line in original.splitlines() if re.match(r"\s*(pub\s+)?const\s", line))

    # -- reachability -----------------------------------------------------------------------

    def dependency_functions(self, crate: Crate) -> list[Function]:
        seen, stack, out = set(), list(crate.dep_names), []
        while stack:
            name = stack.pop()
            if name in seen or name not in self.crates:
                continue
            seen.add(name)
            dep = self.crates[name]
            out.extend(dep.functions)
            stack.extend(dep.dep_names)
        return out

    def reachable(self, crate: Crate) -> list[Function]:
        """The crate's own functions plus every dependency function they (transitively) call."""
        deps = self.dependency_functions(crate)
        by_name: dict[str, list[Function]] = {}
        for f in deps:
            by_name.setdefault(f.name, []).append(f)

        def resolve(caller: Function) -> list[Function]:
            found = []
            for qual, name in caller.path_calls:
                for f in by_name.get(name, []):
                    if qual is None:
                        # Unqualified: a function of the same module of the same crate, or one
                        # imported by name (`use platform::config::env_or`) into a service.
                        if (f.crate == caller.crate and f.module == caller.module and f.impl_type is None) \
                                or (f.crate != caller.crate and f.impl_type is None):
                            found.append(f)
                    elif qual in (f.module, f.impl_type) or (qual == "Self" and f.impl_type == caller.impl_type and f.crate == caller.crate):
                        found.append(f)
            for name in caller.method_calls:
                found.extend(f for f in by_name.get(name, []) if f.impl_type is not None)
            return found

        reached: list[Function] = list(crate.functions)
        seen = {id(f) for f in reached}
        stack = list(reached)
        while stack:
            for g in resolve(stack.pop()):
                if id(g) not in seen:
                    seen.add(id(g))
                    reached.append(g)
                    stack.append(g)
        return reached

    def env_reads(self, crate: Crate) -> dict[str, str | None]:
        """Every variable the crate's program reads (with its default, if one is visible)."""
        reads: dict[str, str | None] = {}
        fns = self.reachable(crate)
        for f in fns:
            for k, v in f.env_reads.items():
                reads.setdefault(k, v)
        own = {f.name: f for f in crate.functions}
        for f in crate.functions:
            if f not in fns:
                continue
            for key_fn in f.indirect_env_keys:
                if key_fn in own:
                    for lit in own[key_fn].upper_literals:
                        reads.setdefault(lit, "<computed>")
            for delegate in f.lookup_delegates:
                if delegate in own:
                    for lit in own[delegate].lookup_names:
                        reads.setdefault(lit, "<computed>")
        return reads

    def required_env(self, crate: Crate) -> set[str]:
        out = set()
        for f in self.reachable(crate):
            out |= f.required_env
        return out

    def routes(self, crate: Crate) -> set[str]:
        out = set()
        for f in self.reachable(crate):
            out |= f.routes
        return out

    def crate_for_bin(self, bin_name: str) -> Crate | None:
        for c in self.crates.values():
            if bin_name in c.bins:
                return c
        return None

    def implemented(self, crate: Crate) -> bool:
        """A service crate is written once its library has `run` (DESIGN: `pub async fn run`)."""
        return any(f.name == "run" and f.module == "crate" and f.file.name == "lib.rs" for f in crate.functions)

    def fn_source(self, crate_name: str, fn_name: str) -> Function | None:
        for f in self.crates[crate_name].functions:
            if f.name == fn_name:
                return f
        return None
