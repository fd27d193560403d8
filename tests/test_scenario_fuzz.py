"""Mutants of the quick start: `netfl validate` accepts or refuses with one message (exit 2,
no traceback), and every mutant it accepts runs two rounds or is refused the same way."""

from __future__ import annotations

import contextlib
import copy
import io
import math
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from netfl.cli import main

QUICKSTART = yaml.safe_load((Path(__file__).parents[1] / "scenarios" / "quickstart.yaml")
                            .read_text())
TINY = ["--set", "horizon.rounds=2", "--set", "eval.every=1", "--set", "learners.count=2"]
VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 3), st.sampled_from([0, -1, 2**31, 10**12]),
    st.sampled_from([0.0, -0.5, 1e-300, 1e300, math.inf, -math.inf, math.nan, 0.5]),
    st.text(max_size=8), st.sampled_from(["10 Mbit/s", "20 ms", "auto", "", "../x"]),
    st.lists(st.integers(-2, 70), max_size=3), st.dictionaries(st.text(max_size=4),
                                                                st.integers(), max_size=2),
)


def _paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    """Every key path of a nested mapping (lists by index)."""
    out = [prefix] if prefix else []
    if isinstance(node, dict):
        for key, value in node.items():
            out += _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            out += _paths(value, (*prefix, i))
    return out


PATHS = _paths(QUICKSTART)


@st.composite
def mutants(draw) -> dict[str, Any]:
    """The quick start with one to three mutations at random key paths."""
    data = copy.deepcopy(QUICKSTART)
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(PATHS))
        parent = data
        for key in path[:-1]:
            parent = parent.get(key) if isinstance(parent, dict) else (
                parent[key] if isinstance(parent, list) and key < len(parent) else None)
            if not isinstance(parent, (dict, list)):
                break
        else:
            last = path[-1]
            if isinstance(parent, list) and not (isinstance(last, int) and last < len(parent)):
                continue
            if isinstance(parent, dict) and last not in parent:
                continue
            action = draw(st.sampled_from(["value", "delete", "unknown"]))
            if action == "value":
                parent[last] = draw(VALUES)
            elif action == "delete" and isinstance(parent, dict):
                del parent[last]
            elif isinstance(parent, dict):
                parent[draw(st.sampled_from(["typo", "bandwith", "counts"]))] = draw(VALUES)
    return data


def _cli(argv: list[str]) -> tuple[int, str]:
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        code = main(argv)  # a traceback here is a bug: the test fails with it
    return code, err.getvalue()


@settings(max_examples=40, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=mutants())
def test_a_mutant_is_accepted_or_refused_with_one_message(tmp_path_factory, data):
    tmp = tmp_path_factory.mktemp("mutant")
    path = tmp / "s.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True))
    code, err = _cli(["validate", str(path), *TINY])
    assert code in (0, 2), err
    if code == 2:
        assert err.startswith("error: ") and "Traceback" not in err
        return
    code, err = _cli(["run", str(path), *TINY, "--quiet", "--out", str(tmp / "run")])
    assert code in (0, 2, 3), err  # 3: a mutant that diverges (e.g. a huge learning rate)
    if code == 2:
        assert err.startswith("error: ") and "Traceback" not in err
