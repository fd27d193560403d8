"""LEAF's federated datasets (Caldas et al. 2018, github.com/TalwalkarLab/leaf) from the JSON
files its preprocessing writes, with the user who wrote each sample.

Each file is ``{"users": [...], "num_samples": [...], "user_data": {user: {"x": [...],
"y": [...]}}}`` (an optional ``"hierarchies"`` is ignored). Files come from ``root/train``
and ``root/test`` (LEAF's ``data/<name>/data`` folder); without those subfolders every
``*.json`` in ``root`` is training data, split per user by ``test_fraction``.

The kind of data is read from the first sample of the first file:

- numbers (FEMNIST, synthetic): ``x`` float32. A length ``L = s * s`` with ``s >= 8`` is an
  image ``[1, s, s]`` (FEMNIST's 784 -> ``[1, 28, 28]``, so ``model: cnn`` works), any other
  length a vector ``[L]``; param ``shape`` overrides. ``y`` integer classes; there are
  ``max(y) + 1`` unless param ``num_classes`` says more (FEMNIST has 62).
- a string (Shakespeare): ``x`` an 80-character string, ``y`` the next character.
- ``[id, date, query, user, text]`` (Sent140): the text; ``y`` 0/1.

Text becomes a one-hot sequence ``[seq_len, 80]`` over LEAF's 80-character vocabulary
``ALL_LETTERS`` (``models/utils/language_utils.py``), which ``model: rnn`` reads as
``seq_len`` steps of 80 features. A character outside the vocabulary takes the last index,
as LEAF's ``letter_to_vec`` does (``str.find`` gives -1). A text longer than ``seq_len``
(default 80) keeps its last ``seq_len`` characters; a shorter one is left-padded with
all-zero rows, so that the RNN's last step reads the text's end. Shakespeare's ``y`` is the
character's index (80 classes); Sent140's ``y`` its label (2 classes). One-hot text costs
``seq_len * 80 * 4`` bytes per sample (25.6 kB at 80): use LEAF's sampling (``-sf``) or
param ``max_users`` for large sets.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from netfl.data.base import DataError, Dataset

ALL_LETTERS = ("\n !\"&'(),-.0123456789:;>?ABCDEFGHIJKLMNOPQRSTUVWXYZ[]"
               "abcdefghijklmnopqrstuvwxyz}")
"""LEAF's character vocabulary, verbatim from leaf/models/utils/language_utils.py."""
NUM_LETTERS = len(ALL_LETTERS)  # 80
MIN_IMAGE_SIDE = 8

_CODES = {c: i for i, c in enumerate(ALL_LETTERS)}


def load_leaf(
    *,
    seed: int,
    test_fraction: float,
    root: str | os.PathLike[str] | None,
    shape: list[int] | tuple[int, ...] | None = None,
    seq_len: int = 80,
    max_users: int | None = None,
    num_classes: int | None = None,
    **params: Any,
) -> Dataset:
    """A LEAF dataset in ``root`` (see the module docstring); ``max_users`` keeps the first
    users in file order (sorted file names, then each file's ``users`` list)."""
    if params:
        raise DataError(f"leaf: unknown parameter(s) {', '.join(sorted(params))}")
    if root is None:
        raise DataError("leaf: parameter 'root' is required: the folder holding train/ and "
                        "test/ (LEAF's data/<name>/data)")
    base = Path(root).expanduser()
    if not base.is_dir():
        raise DataError(f"{base}: no such directory")
    seq_len = _positive_int("seq_len", seq_len)
    if max_users is not None:
        max_users = _positive_int("max_users", max_users)
    train_dir, test_dir = base / "train", base / "test"
    if train_dir.is_dir() and test_dir.is_dir():
        train = _read_folder(train_dir)
        test = _read_folder(test_dir)
        kind = _kind(train, test, base)
    elif train_dir.is_dir() or test_dir.is_dir():
        have, lack = (train_dir, "test") if train_dir.is_dir() else (test_dir, "train")
        raise DataError(f"{base}: has {have.name}/ but no {lack}/; give both, or put all "
                        "*.json in one folder to split per user")
    else:
        everything = _read_folder(base)
        kind = _kind(everything, {}, base)
        train, test = _split_per_user(everything, test_fraction, seed)
    names = list(train)
    names += [u for u in test if u not in train]
    if max_users is not None:
        names = names[:max_users]
    index = {u: i for i, u in enumerate(names)}
    x_tr, y_tr, u_tr = _gather(train, index, kind, seq_len)
    x_te, y_te, u_te = _gather(test, index, kind, seq_len)
    if len(y_tr) == 0:
        raise DataError(f"{base}: no training samples")
    if len(y_te) == 0:
        hint = ("" if test_dir.is_dir() else f": every user is too small to give "
                f"test_fraction {test_fraction} of its samples; raise test_fraction")
        raise DataError(f"{base}: no test samples{hint}")
    x_tr, x_te = _shape(x_tr, x_te, kind, shape)
    if kind == "numeric":
        seen = int(max(y_tr.max(), y_te.max())) + 1
        if num_classes is None:
            num_classes = seen
        elif (isinstance(num_classes, bool) or not isinstance(num_classes, int)
              or num_classes < seen):
            raise DataError(f"leaf: num_classes must be an integer >= {seen} (the largest "
                            f"label + 1), got {num_classes!r}")
    else:
        if num_classes is not None:
            raise DataError(f"leaf: num_classes is fixed for {kind} data")
        num_classes = NUM_LETTERS if kind == "shakespeare" else 2
    return Dataset(
        "leaf", torch.from_numpy(x_tr), torch.from_numpy(y_tr), torch.from_numpy(x_te),
        torch.from_numpy(y_te), int(num_classes), users_train=u_tr, users_test=u_te,
        user_names=tuple(names),
    )


def encode_text(texts: list[str], seq_len: int = 80) -> np.ndarray:
    """One-hot float32 ``[N, seq_len, 80]`` of ``texts`` (the rule in the module docstring)."""
    codes = np.full((len(texts), seq_len), NUM_LETTERS, dtype=np.int64)  # 80: padding
    for row, text in enumerate(texts):
        tail = text[-seq_len:]
        if tail:
            codes[row, seq_len - len(tail):] = [_CODES.get(c, NUM_LETTERS - 1) for c in tail]
    one_hot = np.zeros((len(texts), seq_len, NUM_LETTERS), dtype=np.float32)
    row, step = np.nonzero(codes < NUM_LETTERS)
    one_hot[row, step, codes[row, step]] = 1.0
    return one_hot


def letter_index(letter: str) -> int:
    """LEAF's index of one character (unknown: the last, like ``letter_to_vec``)."""
    position = ALL_LETTERS.find(letter)
    return position if position >= 0 else NUM_LETTERS - 1


# --------------------------------------------------------------------------- reading

Users = dict[str, dict[str, list[Any]]]


def _read_folder(folder: Path) -> Users:
    files = sorted(folder.glob("*.json"))
    if not files:
        raise DataError(f"{folder}: no LEAF *.json files")
    users: Users = {}
    for file in files:
        for user, data in _read_file(file).items():
            if user in users:
                users[user]["x"].extend(data["x"])
                users[user]["y"].extend(data["y"])
            else:
                users[user] = data
    return users


def _read_file(file: Path) -> Users:
    """One LEAF JSON file's users in its ``users`` order, with its counts checked."""
    try:
        content = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{file}: cannot read ({exc})") from None
    except json.JSONDecodeError as exc:
        raise DataError(f"{file}: not valid JSON (line {exc.lineno}, column {exc.colno})") \
            from None
    if not isinstance(content, dict) or not isinstance(content.get("user_data"), dict):
        raise DataError(f"{file}: not a LEAF file (expected an object with 'users', "
                        "'num_samples' and 'user_data')")
    user_data = content["user_data"]
    order = content.get("users", list(user_data))
    if not isinstance(order, list) or set(map(str, order)) != set(user_data):
        raise DataError(f"{file}: 'users' does not list the users of 'user_data'")
    counts = content.get("num_samples")
    if counts is not None and (not isinstance(counts, list) or len(counts) != len(order)):
        raise DataError(f"{file}: 'num_samples' must give one count per user")
    users: Users = {}
    for i, user in enumerate(order):
        entry = user_data[str(user)]
        if not isinstance(entry, dict) or not isinstance(entry.get("x"), list) \
                or not isinstance(entry.get("y"), list):
            raise DataError(f"{file}: user {user!r}: expected {{'x': [...], 'y': [...]}}")
        if len(entry["x"]) != len(entry["y"]):
            raise DataError(f"{file}: user {user!r}: {len(entry['x'])} x but "
                            f"{len(entry['y'])} y")
        if counts is not None and counts[i] != len(entry["y"]):
            raise DataError(f"{file}: user {user!r}: num_samples says {counts[i]}, user_data "
                            f"holds {len(entry['y'])}")
        users[str(user)] = {"x": list(entry["x"]), "y": list(entry["y"]), "file": [file]}
    return users


def _split_per_user(users: Users, test_fraction: float, seed: int) -> tuple[Users, Users]:
    """Each user's samples shuffled (seeded) and cut: ``min(n - 1, round(test_fraction * n))``
    to test, so every user keeps at least one training sample."""
    rng = np.random.default_rng(seed)
    train: Users = {}
    test: Users = {}
    for user, data in users.items():
        n = len(data["y"])
        order = rng.permutation(n)
        n_test = min(n - 1, round(test_fraction * n))
        keep, held = np.sort(order[n_test:]), np.sort(order[:n_test])
        train[user] = {k: [data[k][j] for j in keep] for k in ("x", "y")} | {"file": data["file"]}
        if len(held):
            test[user] = {k: [data[k][j] for j in held] for k in ("x", "y")} | \
                {"file": data["file"]}
    return train, test


def _kind(train: Users, test: Users, base: Path) -> str:
    for data in (*train.values(), *test.values()):
        if data["x"]:
            first, file = data["x"][0], data["file"][0]
            break
    else:
        raise DataError(f"{base}: no samples in any LEAF file")
    if isinstance(first, str):
        return "shakespeare"
    if isinstance(first, list) and len(first) == 5 and isinstance(first[4], str):
        return "sent140"
    if isinstance(first, list) and first and all(_is_number(v) for v in first):
        return "numeric"
    raise DataError(f"{file}: x holds {type(first).__name__} samples; expected lists of "
                    "numbers (FEMNIST, synthetic), strings (Shakespeare) or [id, date, query, "
                    "user, text] (Sent140)")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _gather(users: Users, index: dict[str, int], kind: str, seq_len: int
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Inputs, labels and user indices of the kept users, concatenated in user order."""
    xs: list[Any] = []
    ys: list[int] = []
    owners: list[int] = []
    for user, data in users.items():
        if user not in index:
            continue
        file = data["file"][0]
        if kind == "numeric":
            xs.append(_numeric(data["x"], file, user))
        else:
            xs.extend(_text(x, kind, file, user, j) for j, x in enumerate(data["x"]))
        ys.extend(_label(y, kind, file, user, j) for j, y in enumerate(data["y"]))
        owners.extend([index[user]] * len(data["y"]))
    if kind == "numeric":
        lengths = sorted({x.shape[1] for x in xs})
        if len(lengths) > 1:
            raise DataError(f"leaf: numeric samples of different lengths {lengths}")
        x_array = np.concatenate(xs) if xs else np.zeros((0, 1), dtype=np.float32)
    else:
        x_array = encode_text(xs, seq_len)
    return x_array, np.asarray(ys, dtype=np.int64), np.asarray(owners, dtype=np.int64)


def _numeric(x: list[Any], file: Path, user: str) -> np.ndarray:
    """One user's feature lists as float32 ``[n, L]`` in one numpy call (no per-number loop:
    FEMNIST holds 784 per sample)."""
    try:
        array = np.asarray(x, dtype=np.float32)
    except (ValueError, TypeError) as exc:
        raise DataError(f"{file}: user {user!r}: x is not like the first sample (numeric "
                        f"data): lists of numbers of one length ({exc})") from None
    if array.ndim != 2 or array.shape[1] == 0:
        raise DataError(f"{file}: user {user!r}: x is not like the first sample (numeric "
                        f"data): lists of numbers of one length, got shape {list(array.shape)}")
    if not np.isfinite(array).all():
        raise DataError(f"{file}: user {user!r}: x holds NaN or infinite values")
    return array


def _text(x: Any, kind: str, file: Path, user: str, j: int) -> str:
    if kind == "shakespeare" and isinstance(x, str):
        return x
    if kind == "sent140" and isinstance(x, list) and len(x) == 5 and isinstance(x[4], str):
        return x[4]
    raise DataError(f"{file}: user {user!r} sample {j}: x is not like the first sample "
                    f"({kind} data)")


def _label(y: Any, kind: str, file: Path, user: str, j: int) -> int:
    if kind == "shakespeare":
        if isinstance(y, str) and len(y) == 1:
            return letter_index(y)
        raise DataError(f"{file}: user {user!r} sample {j}: y must be one character, got {y!r}")
    if isinstance(y, float) and y.is_integer():
        y = int(y)
    if isinstance(y, bool) or not isinstance(y, int) or y < 0 or (kind == "sent140" and y > 1):
        expected = "0 or 1" if kind == "sent140" else "an integer class >= 0"
        raise DataError(f"{file}: user {user!r} sample {j}: y must be {expected}, got {y!r}")
    return y


def _shape(x_tr: np.ndarray, x_te: np.ndarray, kind: str, shape: Any
           ) -> tuple[np.ndarray, np.ndarray]:
    if kind != "numeric":
        if shape is not None:
            raise DataError(f"leaf: shape applies to numeric data, not {kind}")
        return x_tr, x_te
    length = x_tr.shape[1]
    if x_te.shape[1] != length:
        raise DataError(f"leaf: train samples have {length} features, test {x_te.shape[1]}")
    if shape is None:
        side = math.isqrt(length)
        target: tuple[int, ...] = ((1, side, side) if side * side == length
                                   and side >= MIN_IMAGE_SIDE else (length,))
    else:
        ok = isinstance(shape, (list, tuple)) and shape and all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in shape)
        if not ok or math.prod(shape) != length:
            raise DataError(f"leaf: shape must be positive integers whose product is the "
                            f"{length} features, got {shape!r}")
        target = tuple(shape)
    return x_tr.reshape(-1, *target), x_te.reshape(-1, *target)


def _positive_int(key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise DataError(f"leaf: {key} must be an integer >= 1, got {value!r}")
    return value
