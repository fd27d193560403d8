"""A researcher's own data: arrays, tensors, a ``torch.utils.data.Dataset``, an ``.npz``
file or a Python factory, turned into a netfl ``Dataset``.

One conversion, ``as_dataset``, serves all of them, so the Python API, ``dataset: npz`` and
``dataset: python`` accept the same things and fail with the same messages. Labels decide
the task: integer (or bool) ``y`` is classification, float ``y`` of shape ``[N, targets]``
is regression. Inputs are cast to float32 as given (scale images yourself). Without a test
split the data are split by ``test_fraction`` (stratified by class for classification),
drawn from ``seed``.
"""

from __future__ import annotations

import importlib
import inspect
import os
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from netfl.data.base import DataError, Dataset, random_split, stratified_split

KEYS = ("x", "y", "x_test", "y_test", "users", "users_test", "num_classes")
"""The arrays a dict or an .npz file may hold (``x_train``/``y_train`` alias ``x``/``y``)."""

_ALIASES = {"x_train": "x", "y_train": "y", "users_train": "users"}
_EXPECTED = ("a netfl Dataset, a tuple (x, y) or (x_train, y_train, x_test, y_test), a dict "
             "of arrays (x, y[, x_test, y_test, users, users_test]) or a "
             "torch.utils.data.Dataset of (x, y) items")


def as_dataset(obj: Any, *, test_fraction: float = 0.2, seed: int = 0,
               name: str = "custom") -> Dataset:
    """``obj`` as a netfl ``Dataset``; see the module docstring for the rules.

    ``obj`` is a ``Dataset`` (returned as is), a tuple ``(x, y)`` or
    ``(x_train, y_train, x_test, y_test)`` of numpy arrays or torch tensors, a mapping with
    keys from ``KEYS`` (``users``: one user or group id per training sample, which
    ``partition: natural`` splits by), or a map-style ``torch.utils.data.Dataset`` whose items
    are ``(x, y)`` or ``(x, y, user)``. Raises DataError saying what was wrong.
    """
    if isinstance(obj, Dataset):
        return obj
    if isinstance(obj, Mapping):
        arrays = _from_mapping(obj)
    elif isinstance(obj, (tuple, list)):
        if len(obj) == 2:
            arrays = {"x": obj[0], "y": obj[1]}
        elif len(obj) == 4:
            arrays = dict(zip(("x", "y", "x_test", "y_test"), obj, strict=True))
        else:
            raise DataError(f"expected {_EXPECTED}; got a {type(obj).__name__} of {len(obj)} "
                            "items")
    elif isinstance(obj, torch.utils.data.Dataset):
        arrays = _from_torch(obj)
    else:
        raise DataError(f"expected {_EXPECTED}; got {type(obj).__module__}."
                        f"{type(obj).__qualname__}")
    return from_arrays(name=name, test_fraction=test_fraction, seed=seed, **arrays)


def from_arrays(
    x: Any, y: Any, x_test: Any = None, y_test: Any = None, users: Any = None,
    users_test: Any = None, num_classes: Any = None, *, test_fraction: float = 0.2,
    seed: int = 0, name: str = "custom",
) -> Dataset:
    """A ``Dataset`` from arrays; error messages name the array (``y``, ``x_test``, ...)."""
    x, y = _inputs(x, "x"), _array(y, "y")
    task = _task(y, "y")
    _same_length(x, y, "x", "y")
    if (x_test is None) != (y_test is None):
        raise DataError("x_test, y_test: give both or neither")
    if users_test is not None and x_test is None:
        raise DataError("users_test: only with x_test and y_test (otherwise users are split "
                        "with the samples)")
    users = None if users is None else _users(users, "users", len(x))
    if x_test is None:
        rng = np.random.default_rng(seed)
        train, test = (stratified_split(y, test_fraction, rng) if task == "classification"
                       else random_split(len(y), test_fraction, rng))
        x, x_test, y, y_test = x[train], x[test], y[train], y[test]
        users, users_test = (None, None) if users is None else (users[train], users[test])
    else:
        x_test, y_test = _inputs(x_test, "x_test"), _array(y_test, "y_test")
        _same_length(x_test, y_test, "x_test", "y_test")
        if x_test.shape[1:] != x.shape[1:]:
            raise DataError(f"x_test: samples of shape {list(x_test.shape[1:])} differ from "
                            f"x's {list(x.shape[1:])}")
        if _task(y_test, "y_test") != task or y_test.shape[1:] != y.shape[1:]:
            raise DataError(f"y_test: {y_test.dtype} {list(y_test.shape)} does not match y's "
                            f"{y.dtype} {list(y.shape)}")
        if users_test is not None:
            if users is None:
                raise DataError("users_test: given without users")
            users_test = _users(users_test, "users_test", len(x_test))
    if task == "classification":
        y, y_test = y.astype(np.int64), y_test.astype(np.int64)
        seen = int(max(y.max(initial=0), y_test.max(initial=0))) + 1
        classes = seen if num_classes is None else _num_classes(num_classes, seen)
    else:
        y, y_test = y.astype(np.float32), y_test.astype(np.float32)
        classes = y.shape[1]
    names, users_train, users_eval = _user_index(users, users_test)
    return Dataset(
        name, _tensor(x), torch.from_numpy(np.ascontiguousarray(y)), _tensor(x_test),
        torch.from_numpy(np.ascontiguousarray(y_test)), classes, task=task,
        users_train=users_train, users_test=users_eval, user_names=names,
    )


# --------------------------------------------------------------------------- files, factories


def load_npz(*, seed: int, test_fraction: float, root: str | os.PathLike[str] | None = None,
             path: str | os.PathLike[str] | None = None, **params: Any) -> Dataset:
    """The arrays of an ``.npz`` file (``numpy.savez``): ``x``, ``y`` and optionally
    ``x_test``, ``y_test``, ``users``, ``users_test``, ``num_classes`` (a scalar). Pickled
    object arrays are refused, so a file cannot run code. Errors name the file."""
    if params:
        raise DataError(f"npz: unknown parameter(s) {', '.join(sorted(params))}")
    if path is None:
        raise DataError("npz: parameter 'path' is required: the .npz file")
    file = Path(path).expanduser()
    if not file.is_file():
        raise DataError(f"{file}: no such file")
    try:
        loaded = np.load(file, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise DataError(f"{file}: a single .npy array; save x and y by name with "
                            "numpy.savez")
        with loaded as archive:
            arrays = {key: archive[key] for key in archive.files}
    except ValueError as exc:  # object arrays (and pickles) need pickle
        if isinstance(exc, DataError):
            raise
        raise DataError(f"{file}: holds data numpy can only unpickle ({exc}); save plain "
                        "numeric (or string) arrays") from None
    except (OSError, zipfile.BadZipFile, EOFError) as exc:
        raise DataError(f"{file}: not a readable .npz file ({exc})") from None
    try:
        return from_arrays(name="npz", test_fraction=test_fraction, seed=seed,
                           **_from_mapping(arrays))
    except DataError as exc:
        raise DataError(f"{file}: {exc}") from None


def load_python(*, seed: int, test_fraction: float,
                root: str | os.PathLike[str] | None = None, factory: str | None = None,
                params: Mapping[str, Any] | None = None) -> Dataset:
    """Call ``factory`` (``'package.module:function'``) with ``params`` and convert what it
    returns with ``as_dataset``. Errors name the factory; an exception raised inside the
    function itself is the function's own and keeps its traceback."""
    if factory is None:
        raise DataError("python: parameter 'factory' is required: 'package.module:function'")
    function = resolve_factory(factory)
    params = dict(params or {})
    try:
        inspect.signature(function).bind(**params)
    except TypeError as exc:
        raise DataError(f"{factory}: cannot be called with params {sorted(params)} ({exc})") \
            from None
    except ValueError:  # a builtin without a signature: let the call say
        pass
    result = function(**params)
    try:
        return as_dataset(result, test_fraction=test_fraction, seed=seed, name="python")
    except DataError as exc:
        raise DataError(f"{factory}: returned unusable data: {exc}") from None


def resolve_factory(spec: Any) -> Any:
    """The callable named ``'package.module:attr[.attr]'``; DataError naming ``spec``."""
    if not isinstance(spec, str) or spec.count(":") != 1 or not all(spec.split(":")):
        raise DataError(f"{spec!r}: expected 'package.module:function'")
    module_name, attr = spec.split(":")
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise DataError(f"{spec}: cannot import module {module_name!r} ({exc}); is it on "
                        "PYTHONPATH or installed?") from None
    for part in attr.split("."):
        if not hasattr(target, part):
            raise DataError(f"{spec}: {getattr(target, '__name__', module_name)} has no "
                            f"attribute {part!r}")
        target = getattr(target, part)
    if not callable(target):
        raise DataError(f"{spec}: {type(target).__name__} is not callable")
    return target


# --------------------------------------------------------------------------- checks


def _from_mapping(obj: Mapping[str, Any]) -> dict[str, Any]:
    arrays: dict[str, Any] = {}
    for key, value in obj.items():
        canonical = _ALIASES.get(key, key)
        if canonical not in KEYS:
            raise DataError(f"unknown array {key!r}; expected {', '.join(KEYS)}")
        if canonical in arrays:
            raise DataError(f"{key!r} and {canonical!r} name the same array")
        arrays[canonical] = value
    missing = [k for k in ("x", "y") if k not in arrays]
    if missing:
        raise DataError(f"no array {' or '.join(repr(k) for k in missing)} (found: "
                        f"{', '.join(obj) or 'nothing'})")
    return arrays


def _from_torch(dataset: torch.utils.data.Dataset) -> dict[str, Any]:
    """Stack a map-style dataset's items into arrays (TensorDataset without copying)."""
    if isinstance(dataset, torch.utils.data.TensorDataset) and len(dataset.tensors) in (2, 3):
        return dict(zip(("x", "y", "users"), dataset.tensors, strict=False))
    try:
        n = len(dataset)  # type: ignore[arg-type]
    except TypeError:
        raise DataError("a torch Dataset without len() (an IterableDataset?): give a "
                        "map-style dataset or arrays") from None
    if n == 0:
        raise DataError("the torch Dataset is empty")
    columns: list[list[Any]] = []
    for i in range(n):
        item = dataset[i]
        if not isinstance(item, (tuple, list)) or len(item) not in (2, 3):
            raise DataError(f"torch Dataset item {i}: expected (x, y) or (x, y, user), got "
                            f"{type(item).__name__}")
        if i == 0:
            columns = [[] for _ in item]
        elif len(item) != len(columns):
            raise DataError(f"torch Dataset item {i}: {len(item)} fields, item 0 has "
                            f"{len(columns)}")
        for column, value in zip(columns, item, strict=True):
            column.append(value)
    try:
        stacked = [_stack(column) for column in columns]
    except (RuntimeError, ValueError, TypeError) as exc:
        raise DataError(f"torch Dataset items cannot be stacked ({exc})") from None
    return dict(zip(("x", "y", "users"), stacked, strict=False))


def _stack(values: list[Any]) -> np.ndarray:
    if isinstance(values[0], torch.Tensor):
        return torch.stack(values).detach().cpu().numpy()
    return np.stack([np.asarray(v) for v in values])


def _array(value: Any, key: str) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    try:
        array = np.asarray(value)
    except (ValueError, TypeError) as exc:
        raise DataError(f"{key}: not an array ({exc})") from None
    if array.dtype == object:
        raise DataError(f"{key}: an object array; give numbers")
    return array


def _inputs(value: Any, key: str) -> np.ndarray:
    x = _array(value, key)
    if not (np.issubdtype(x.dtype, np.number) or x.dtype == bool):
        raise DataError(f"{key}: inputs must be numbers, got dtype {x.dtype}")
    if x.ndim < 2:
        raise DataError(f"{key}: must be [N, *input_shape] with at least one feature axis, "
                        f"got shape {list(x.shape)}")
    if np.issubdtype(x.dtype, np.floating) and not np.isfinite(x).all():
        raise DataError(f"{key}: holds NaN or infinite values")
    return x


def _task(y: np.ndarray, key: str) -> str:
    if np.issubdtype(y.dtype, np.integer) or y.dtype == bool:
        if y.ndim != 1:
            raise DataError(f"{key}: integer class labels must be 1-D [N], got shape "
                            f"{list(y.shape)}")
        if y.size and y.min() < 0:
            raise DataError(f"{key}: class labels must be >= 0, got {y.min()}")
        return "classification"
    if np.issubdtype(y.dtype, np.floating):
        if y.ndim != 2:
            raise DataError(f"{key}: float targets mean regression and must be 2-D "
                            f"[N, targets], got shape {list(y.shape)}; class labels must be "
                            "integers")
        if not np.isfinite(y).all():
            raise DataError(f"{key}: holds NaN or infinite values")
        return "regression"
    raise DataError(f"{key}: labels must be integers (classification) or floats "
                    f"(regression), got dtype {y.dtype}")


def _same_length(x: np.ndarray, y: np.ndarray, xkey: str, ykey: str) -> None:
    if len(x) != len(y):
        raise DataError(f"{ykey}: {len(y)} labels for the {len(x)} samples of {xkey}")
    if len(x) == 0:
        raise DataError(f"{xkey}: no samples")


def _users(value: Any, key: str, n: int) -> np.ndarray:
    users = _array(value, key)
    if users.shape != (n,):
        raise DataError(f"{key}: one user id per sample, shape [{n}], got {list(users.shape)}")
    return users


def _num_classes(value: Any, seen: int) -> int:
    value = value.item() if isinstance(value, (np.ndarray, torch.Tensor)) else value
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < seen:
        raise DataError(f"num_classes: must be an integer >= {seen} (the largest label + 1), "
                        f"got {value!r}")
    return int(value)


def _user_index(users: np.ndarray | None, users_test: np.ndarray | None
                ) -> tuple[tuple[str, ...] | None, np.ndarray | None, np.ndarray | None]:
    """User ids of any type as indices into their sorted unique names."""
    if users is None:
        return None, None, None
    both = users if users_test is None else np.concatenate([users, users_test])
    names, inverse = np.unique(both, return_inverse=True)
    inverse = inverse.astype(np.int64).reshape(-1)
    train, test = inverse[: len(users)], inverse[len(users):]
    return tuple(str(n) for n in names.tolist()), train, (None if users_test is None else test)


def _tensor(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
