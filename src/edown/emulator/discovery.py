"""The discovery document and algorithm list the ``ee`` client needs at ``ee.Initialize``.

Both come from the *installed* ``earthengine-api`` wheel (``ee/tests``), read at start-up and never
copied into this repository. The shipped discovery document is an old, stripped ``v1alpha`` revision;
three patches make the current client accept it (see the protocol notes): ``v1alpha`` becomes ``v1``,
``listAssets`` gains the ``filter`` and ``view`` query parameters (googleapiclient refuses undeclared
keyword arguments), and ``algorithms.list`` takes ``parent`` rather than ``project``.
"""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources
from typing import Any


class DiscoveryUnavailableError(RuntimeError):
    """The installed ``ee`` package does not ship the files the emulator serves."""


def _ee_test_file(name: str) -> str:
    try:
        return resources.files("ee").joinpath("tests", name).read_text(encoding="utf-8")
    except (FileNotFoundError, ModuleNotFoundError) as exc:
        raise DiscoveryUnavailableError(
            f"the installed earthengine-api package has no ee/tests/{name}; install a wheel that ships it "
            "(earthengine-api >= 0.1.380 does)"
        ) from exc


@lru_cache(maxsize=1)
def discovery_document() -> bytes:
    """The patched discovery document, serialised once."""
    doc: dict[str, Any] = json.loads(
        _ee_test_file("cloud_api_discovery_document.json").replace("v1alpha", "v1")
    )
    projects = doc["resources"]["projects"]
    query_param = {"type": "string", "location": "query"}
    for method in (
        projects["methods"]["listAssets"],
        projects["resources"]["assets"]["methods"]["listAssets"],
    ):
        method["parameters"].setdefault("filter", dict(query_param))
        method["parameters"].setdefault("view", dict(query_param))
    algorithms_list = projects["resources"]["algorithms"]["methods"]["list"]
    params = algorithms_list["parameters"]
    if "project" in params and "parent" not in params:
        params["parent"] = params.pop("project")
        algorithms_list["parameterOrder"] = ["parent"]
        algorithms_list["path"] = algorithms_list["path"].replace("{+project}", "{+parent}")
    return json.dumps(doc).encode()


@lru_cache(maxsize=1)
def algorithms_document() -> bytes:
    """``ListAlgorithms``' response exactly as the wheel ships it."""
    return _ee_test_file("algorithms.json").encode()


@lru_cache(maxsize=1)
def algorithm_names() -> frozenset[str]:
    """Every Earth Engine function name (without the ``algorithms/`` prefix)."""
    doc = json.loads(algorithms_document())
    return frozenset(a["name"].split("/", 1)[1] for a in doc.get("algorithms", []))
