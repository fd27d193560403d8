"""Sweeps: one base scenario, many settings, one table.

A sweep file holds a `base` scenario (a mapping, or the path of a scenario file
relative to the sweep file) and either a `grid` (every combination of the listed
values, by dotted key path) or a list of `runs` (each a set of overrides), or both
(every run crossed with the grid):

    name: fig2
    base: ../quickstart.yaml
    grid:
      seed: [0, 1]
    runs:
      - {protocol: {name: periodic, b: 1}}
      - {name: adaptive, protocol: {name: dynamic, delta: 0.5}}
      - {protocol: {name: nosync}, ~compression.uplink: null}

Overrides merge into the base mapping by mapping; a section whose kind changes
(a topology's `generator` or `file`, a protocol's or codec's `name`) is replaced
whole, so no parameter of the old kind leaks into the new one; an empty mapping
clears; `~key.path` deletes a key (Hydra's syntax). Each run's directory is named
from its swept values (or its `name`) and a short hash of its resolved scenario,
which is what lets `netfl sweep` resume. Every run is validated and build-checked
before the first one starts, and all the failures are reported together.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from netfl import scenario as scenario_mod
from netfl.scenario import Scenario, ScenarioError, TopologyFile
from netfl.sweep_table import (  # noqa: F401  (re-exported: plots and tools use them here)
    TABLE_COLUMNS,
    columns,
    compact,
    format_table,
    leaves,
    lookup,
    setting,
    table_row,
    write_table,
)

SWEEP_KEYS = ("name", "base", "grid", "runs")
DELETE_PREFIX = "~"
# Sections replaced whole when their kind changes, and the keys that name the kind.
KINDS: dict[tuple[str, ...], tuple[str, ...]] = {
    ("network", "topology"): ("generator", "file"),
    ("protocol",): ("name",),
    ("compression", "uplink"): ("name",),
    ("compression", "downlink"): ("name",),
}
SHORTHAND = {("network", "topology"): "file", ("compression", "uplink"): "name",
             ("compression", "downlink"): "name"}  # a string value means {key: value}
DEFAULT_KIND = {("network", "topology"): {"generator": "star"}, ("protocol",): {"name": "periodic"}}
UNSWEPT = ("name", "output.dir")  # differ between any two runs without being a setting
HASH_LENGTH = 8
LABEL_LENGTH = 120  # a directory name stays well under the file systems' 255 bytes
SAFE = set("-_.=,+")


class _Delete:
    """Marks a key a patch deletes."""

    def __repr__(self) -> str:
        return "~"

    def __deepcopy__(self, memo: dict[int, Any]) -> _Delete:
        return self  # one marker, compared by identity


DELETE = _Delete()


class _MissingKey(KeyError):
    """A deletion of a key that is not there."""


class Sweep(list[Scenario]):
    """The scenarios of a sweep, remembering the sweep's name, the dotted keys it varies,
    and whether every run has passed the build check."""

    def __init__(self, scenarios: Iterable[Scenario] = (), swept: Iterable[str] = (),
                 name: str = "sweep", checked: bool = False):
        super().__init__(scenarios)
        self.swept = list(swept)
        self.name = name
        self.checked = checked


# ----------------------------------------------------------------------- patches


def _shorthand(path: tuple[str, ...], value: Any) -> Any:
    key = SHORTHAND.get(path)
    return {key: value} if key is not None and isinstance(value, str) else value


def _kind_changes(path: tuple[str, ...], current: dict[str, Any], value: dict[str, Any],
                  patch_mode: bool) -> bool:
    keys = KINDS.get(path)
    if not keys:
        return False
    if not any(k in current for k in keys):
        if patch_mode:  # a patch that names no kind yet: the later one completes it
            return False
        current = DEFAULT_KIND.get(path, {})
    return any(k in value and current.get(k) != value[k] for k in keys)


def _without_deletes(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_deletes(v) for k, v in value.items() if v is not DELETE}
    return value


def apply(data: dict[str, Any], patch: dict[str, Any], path: tuple[str, ...] = (),
          patch_mode: bool = False) -> dict[str, Any]:
    """`data` with a nested `patch` merged in (see the module's docstring for the rules).

    With patch_mode, data is itself a patch: deletions are kept as markers and a
    section that names no kind yet is merged, so a run and a grid value combine."""
    out = dict(data)
    for key, value in patch.items():
        here = (*path, key)
        if value is DELETE:
            if patch_mode:
                out[key] = DELETE
            elif key in out:
                del out[key]
            else:
                raise _MissingKey(".".join(here))
            continue
        value = _shorthand(here, value)
        current = _shorthand(here, out.get(key))
        if (isinstance(value, dict) and value and isinstance(current, dict)
                and not _kind_changes(here, current, value, patch_mode)):
            out[key] = apply(current, value, here, patch_mode)
        else:
            out[key] = copy.deepcopy(value if patch_mode else _without_deletes(value))
    return out


def nest(changes: dict[str, Any], where: str) -> dict[str, Any]:
    """Overrides as a nested patch: dotted keys become mappings, `~key` a deletion."""
    patch: dict[str, Any] = {}
    for key, value in changes.items():
        if not isinstance(key, str) or not key.strip(DELETE_PREFIX):
            raise ScenarioError(f"{where}: {key!r}: expected a key path")
        deleting = key.startswith(DELETE_PREFIX)
        parts = key.removeprefix(DELETE_PREFIX).split(".")
        if not all(parts):
            raise ScenarioError(f"{where}: {key}: empty part in the key path")
        if deleting and value is not None:
            raise ScenarioError(f"{where}: {key}: deletes the key and takes no value "
                                f"(write '{key}:' or '{key}: null')")
        leaf = DELETE if deleting else nest(value, where) if isinstance(value, dict) else value
        for part in reversed(parts):
            leaf = {part: leaf}
        patch = apply(patch, leaf, patch_mode=True)
    return patch


def _patch_leaves(patch: Any, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Any]]:
    if not isinstance(patch, dict) or (not patch and path):
        return [(path, patch)]
    return [leaf for key, value in patch.items() for leaf in _patch_leaves(value, (*path, key))]


def _swept_of_patch(patch: dict[str, Any]) -> list[str]:
    """The dotted keys a run sets (a protocol counts as the one key `protocol`)."""
    keys = [".".join(p) if p[0] != "protocol" else "protocol" for p, _ in _patch_leaves(patch)]
    return list(dict.fromkeys(keys))


# ------------------------------------------------------------------------ naming


def digest_data(resolved: dict[str, Any]) -> str:
    """Short hash of a resolved scenario, leaving out what names or places the run."""
    data = copy.deepcopy(resolved)
    data.pop("name", None)
    if isinstance(data.get("output"), dict):
        data["output"].pop("dir", None)
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:HASH_LENGTH]


def digest(s: Scenario) -> str:
    return digest_data(s.resolved())


def _label_value(value: Any) -> str:
    if value is DELETE:
        return "default"  # a deleted key takes its default (and `~` would mean home to a shell)
    if isinstance(value, (list, tuple)):
        return "+".join(_label_value(v) for v in value) or "empty"
    if isinstance(value, dict):  # empty (a leaf), or an entry of a list such as links
        return "+".join(_label_value(v) for v in leaves(value).values()) if value else "empty"
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    return str(value)


def _label_parts(patch: dict[str, Any]) -> list[str]:
    """`topology=ring`, `b=5`, `uplink=default` (deleted): each leaf of a patch by its last
    key, a kind by its section's name (a topology file by its stem); two last keys where one
    would be ambiguous."""
    items = []
    for path, value in _patch_leaves(patch):
        if path in SHORTHAND and isinstance(value, str):  # `topology: x.yaml`, `uplink: topk`
            path = (*path, SHORTHAND[path])
        section, last = path[:-1], path[-1]
        if last in KINDS.get(section, ()):
            short = section[-1]
            value = Path(value).stem if last == "file" and isinstance(value, str) else value
        else:
            short = last
        items.append((path, short, value))
    shorts = [s for _, s, _ in items]
    parts = []
    for path, short, value in items:
        if shorts.count(short) > 1 and len(path) > 1:
            short = ".".join(path[-2:])
        parts.append(f"{short}={_label_value(value)}")
    return parts


def sanitize(text: str) -> str:
    """A safe file name: letters, digits and -_.=,+ (anything else becomes _)."""
    safe = "".join(c if c.isalnum() and c.isascii() or c in SAFE else "_" for c in text)
    return safe.lstrip(".-")[:LABEL_LENGTH] or "run"


def _check_run_name(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value or value in (".", "..") or any(
            c in value for c in "/\\\x00"):
        raise ScenarioError(f"{where}.name: must be a plain name (it names the run directory): "
                            f"no path separators, not '.' or '..', got {value!r}")
    return value


# ------------------------------------------------------------------------- files


def _base(value: Any, source: str, root: Path | None) -> tuple[dict[str, Any], list[Path]]:
    """The base scenario's data and the folders its relative files may sit in."""
    folders = [root] if root is not None else []
    if isinstance(value, str):
        path = Path(value)
        if not path.is_absolute() and root is not None:
            path = root / path
        if not path.is_file():
            raise ScenarioError(f"{source}: base: {path}: no such scenario file")
        data = scenario_mod.read_yaml(path, "scenario file")
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ScenarioError(f"{path}: the top level must be a mapping of sections")
        return data, [path.parent, *folders]
    if isinstance(value, dict):
        return copy.deepcopy(value), folders
    raise ScenarioError(f"{source}: base: expected a scenario mapping or the path of a "
                        f"scenario file, got {type(value).__name__}")


def _find_files(s: Scenario, folders: list[Path]) -> None:
    """A relative topology file that is not where it says resolves beside the base or the
    sweep file, as `netfl run` resolves it beside the scenario file."""
    topo = s.network.topology
    if isinstance(topo, TopologyFile) and not Path(topo.file).exists():
        for folder in folders:
            if (folder / topo.file).exists():
                topo.file = str(folder / topo.file)
                return


def _override(base: dict[str, Any], text: str) -> dict[str, Any]:
    """One `--set key=value` or `--set ~key` on the base scenario."""
    if text.startswith(DELETE_PREFIX) and "=" not in text:
        key, value = text.strip(), None
    else:
        key, value = scenario_mod.parse_override(text)
    try:
        return apply(base, nest({key: value}, f"--set {text}"))
    except _MissingKey:
        raise ScenarioError(f"--set {text}: {key[1:]} is not set, nothing to delete") from None


# ------------------------------------------------------------------------ expand


def _user_errors() -> tuple[type[Exception], ...]:
    from netfl.cli import _user_errors

    return _user_errors()


def _checker():
    """netfl.validation.check (every build-time check of `netfl run`), or the network check
    where that module is absent."""
    try:
        from netfl.validation import check
    except ModuleNotFoundError as exc:
        if exc.name != "netfl.validation":
            raise
        from netfl.build import check_network as check
    return check


def check_all(scenarios: list[Scenario], source: str = "sweep") -> None:
    """Build-check every run; one ScenarioError listing every failing run and its error."""
    check, errors = _checker(), []
    for s in scenarios:
        try:
            check(s)
        except _user_errors() as exc:
            errors.append(f"{s.name}: {exc}")
    _raise(errors, len(scenarios), source)


def _raise(errors: list[str], total: int, source: str) -> None:
    if errors:
        lines = "\n".join("  " + e.removeprefix(f"{source}: ").replace("\n", "\n    ")
                          for e in errors)
        raise ScenarioError(f"{source}: {len(errors)} of {total} runs are invalid; nothing was "
                            f"run:\n{lines}")


def expand(spec: Any, source: str = "sweep", *, root: Path | None = None,
           overrides: Iterable[str] = (), check: bool = True) -> Sweep:
    """All scenarios of a sweep, named, validated and (with check) build-checked.

    root is the sweep file's folder (for a base given as a path); overrides apply to
    the base. Errors of single runs are gathered and raised together."""
    if not isinstance(spec, dict) or "base" not in spec:
        raise ScenarioError(f"{source}: a sweep needs a 'base' scenario")
    unknown = set(spec) - set(SWEEP_KEYS)
    if unknown:
        raise ScenarioError(f"{source}: {sorted(map(str, unknown))[0]}: unknown key")
    grid = spec.get("grid") or {}
    runs = spec.get("runs") or [{}]
    if not isinstance(grid, dict) or not all(isinstance(v, list) and v for v in grid.values()):
        raise ScenarioError(f"{source}: grid: expected key.path: [values, ...]")
    if any(str(k).startswith(DELETE_PREFIX) for k in grid):
        raise ScenarioError(f"{source}: grid: ~key deletes a key; put it in a run")
    if not isinstance(runs, list) or not all(isinstance(r, dict) for r in runs):
        raise ScenarioError(f"{source}: runs: expected a list of override mappings")
    name = spec.get("name") or Path(source).name.split(".")[0] or "sweep"
    if not isinstance(name, str):
        raise ScenarioError(f"{source}: name: expected text, got {name!r}")
    base, folders = _base(spec["base"], source, root)
    for text in overrides:
        base = _override(base, text)

    run_patches, run_names = [], []
    for i, run in enumerate(runs):
        where = f"{source}: runs[{i}]"
        run = dict(run)
        run_names.append(_check_run_name(run.pop("name"), where) if "name" in run else None)
        run_patches.append(nest(run, where))
    combos = [nest(dict(zip(grid, combo)), f"{source}: grid")
              for combo in itertools.product(*grid.values())]
    swept = [k for k in grid] + [k for p in run_patches for k in _swept_of_patch(p)]
    checker = _checker() if check else None
    scenarios = Sweep(swept=dict.fromkeys(swept), name=name, checked=check)
    errors: list[str] = []
    seen: dict[str, str] = {}
    for i, (run_name, run_patch) in enumerate(zip(run_names, run_patches)):
        for combo in combos:
            parts = [*_label_parts(combo),
                     *([run_name] if run_name else _label_parts(run_patch))]
            label = ",".join(parts) or name
            where = f"{source}: runs[{i}] ({label})" if len(runs) > 1 else f"{source}: {label}"
            try:
                data = apply(base, apply(run_patch, combo, patch_mode=True))
                s = scenario_mod.from_dict(data, where)
            except _MissingKey as exc:
                errors.append(f"{where}: ~{exc.args[0]}: is not set, nothing to delete")
                continue
            except ScenarioError as exc:
                errors.append(str(exc))
                continue
            _find_files(s, folders)
            s.name = f"{sanitize(label)}-{digest(s)}"
            if s.name in seen:
                errors.append(f"{where}: the same scenario as {seen[s.name]}")
                continue
            seen[s.name] = where.removeprefix(f"{source}: ")
            if checker is not None:
                try:
                    checker(s)
                except _user_errors() as exc:
                    errors.append(f"{where}: {exc}")
                    continue
            scenarios.append(s)
    _raise(errors, len(runs) * len(combos), source)
    return scenarios


def load(path: str | Path, overrides: Iterable[str] = (), *, check: bool = True) -> Sweep:
    """A sweep file's runs; `overrides` (`key=value`, `~key`) apply to its base scenario."""
    path = Path(path)
    if not path.is_file():
        raise ScenarioError(f"{path}: no such sweep file")
    spec = scenario_mod.read_yaml(path, "sweep file")
    return expand(spec, str(path), root=path.parent, overrides=overrides, check=check)


def from_scenarios(scenarios: list[Scenario]) -> Sweep:
    """Separate scenarios (several scenario files) as a sweep: each keeps its name, with the
    hash of its scenario added where two names coincide; the keys that differ are swept."""
    names = [s.name for s in scenarios]
    out = []
    for s in scenarios:
        if names.count(s.name) > 1:
            s = s.model_copy(deep=True)
            s.name = f"{s.name}-{digest(s)}"
        out.append(s)
    return Sweep(out, swept=differing_keys(out), name="sweep")


# ------------------------------------------------------------------------ keys


def differing_keys(scenarios: list[Scenario]) -> list[str]:
    """Leaf keys whose resolved values differ between scenarios (protocol, name, dir aside)."""
    flat = [leaves(s.resolved()) for s in scenarios]
    keys = list(dict.fromkeys(k for f in flat for k in f))
    return [k for k in keys if not k.startswith(("protocol.", *UNSWEPT))
            and len({repr(f.get(k)) for f in flat}) > 1]


def swept_keys(scenarios: list[Scenario]) -> list[str]:
    """The sweep file's keys for a Sweep; else the keys that differ (several scenario files).

    `protocol` itself is left out: the protocol and setting columns show it."""
    keys = scenarios.swept if isinstance(scenarios, Sweep) else differing_keys(scenarios)
    return [k for k in keys if k != "protocol"]


def run_sweep(scenarios: list[Scenario], out: str | Path, **options: Any):
    """Run a sweep into out/ (see netfl.sweep_exec.run_sweep)."""
    from netfl.sweep_exec import run_sweep as run

    return run(scenarios, out, **options)
