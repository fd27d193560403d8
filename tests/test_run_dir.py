"""Nothing lost: run directories claimed atomically, write errors that end runs cleanly."""

from __future__ import annotations

import errno
import json
import threading
from pathlib import Path

import pytest
import yaml

from netfl import results
from netfl.cli import main
from netfl.results import LOCK, OutputError, claim_run_dir

from .conftest import BASE, merge

SMALL = merge(BASE, {"learners": {"count": 2}, "horizon": {"rounds": 4}, "eval": {"every": 2}})


def scenario_file(tmp_path: Path, data=SMALL) -> Path:
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    return lines[0]


# -------------------------------------------------------------------------- claiming


def test_only_one_of_many_simultaneous_claims_wins(tmp_path):
    out = tmp_path / "run"
    start = threading.Barrier(8)
    won, lost = [], []

    def claim() -> None:
        start.wait()
        try:
            won.append(claim_run_dir(out, "x"))
        except OutputError as exc:
            lost.append(str(exc))

    threads = [threading.Thread(target=claim) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 1 and len(lost) == 7
    assert all("in use by another run" in m or "not empty" in m for m in lost)
    assert [p.name for p in out.iterdir()] == [LOCK]
    won[0].release()
    assert list(out.iterdir()) == []


def test_a_second_run_on_a_claimed_out_fails_before_writing(tmp_path, capsys):
    out = tmp_path / "run"
    held = claim_run_dir(out, "x")  # another run is building into it right now
    assert main(["run", str(scenario_file(tmp_path)), "--out", str(out), "--quiet"]) == 2
    assert "in use by another run" in one_error_line(capsys)
    assert [p.name for p in out.iterdir()] == [LOCK]
    held.release()


def test_a_second_run_on_a_finished_out_fails_and_changes_nothing(tmp_path, capsys):
    out = tmp_path / "run"
    path = scenario_file(tmp_path)
    assert main(["run", str(path), "--out", str(out), "--quiet"]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert LOCK not in before and "summary.json" in before  # let go once the run ended
    capsys.readouterr()
    assert main(["run", str(path), "--out", str(out), "--quiet"]) == 2
    assert "already exists and is not empty" in one_error_line(capsys)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_an_empty_out_directory_is_used_and_a_file_is_refused(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["run", str(scenario_file(tmp_path)), "--out", str(empty), "--quiet"]) == 0
    assert json.loads((empty / "summary.json").read_text())["status"] == "completed"
    capsys.readouterr()
    afile = tmp_path / "file"
    afile.write_text("x")
    assert main(["run", str(scenario_file(tmp_path)), "--out", str(afile), "--quiet"]) == 2
    assert "not a directory" in one_error_line(capsys)


def test_default_run_directories_never_collide(tmp_path):
    a = claim_run_dir(None, "same", base=str(tmp_path))
    b = claim_run_dir(None, "same", base=str(tmp_path))
    assert a.path != b.path and a.path.parent == b.path.parent == tmp_path / "same"


def test_a_directory_that_cannot_be_created_is_a_user_error(tmp_path, capsys):
    out = "/sys/netfl-cannot-create"  # read-only even for root
    assert main(["run", str(scenario_file(tmp_path)), "--out", out, "--quiet"]) == 2
    line = one_error_line(capsys)
    assert line.startswith(f"error: {out}: cannot create run directory")


def test_a_failed_build_leaves_no_directory(tmp_path, capsys):
    out = tmp_path / "run"
    bad = merge(SMALL, {"network": {"placement": [0, 0, 0]}})
    assert main(["run", str(scenario_file(tmp_path, bad)), "--out", str(out), "--quiet"]) == 2
    capsys.readouterr()
    assert not out.exists()


# ------------------------------------------------------------------------ write errors


class FillsUp:
    """A file on a disk that is full after ``room`` writes (ENOSPC, as /dev/full gives)."""

    def __init__(self, handle, room: int) -> None:
        self.handle, self.room = handle, room

    def write(self, text: str) -> int:
        if self.room <= 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.room -= 1
        return self.handle.write(text)

    def __getattr__(self, name):
        return getattr(self.handle, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.close()


def full_disk(monkeypatch, room: dict[str, int]) -> None:
    """Files named in ``room`` fill up after that many writes."""
    real = results._open

    def opening(path: Path):
        handle = real(path)
        return FillsUp(handle, room[path.name]) if path.name in room else handle

    monkeypatch.setattr(results, "_open", opening)


def test_disk_full_mid_run_ends_with_a_summary_and_one_error(tmp_path, monkeypatch, capsys):
    full_disk(monkeypatch, {"metrics.csv": 3})  # the header and two rows fit
    out = tmp_path / "run"
    assert main(["run", str(scenario_file(tmp_path)), "--out", str(out), "--quiet"]) == 2
    line = one_error_line(capsys)
    assert f"{out / 'metrics.csv'}: cannot write (No space left on device)" in line
    assert f"summary in {out / 'summary.json'}" in line
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "failed" and "No space left" in summary["error"]
    assert summary["rounds"] == len(results.read_metrics(out)) == 2  # the third failed
    assert not (out / LOCK).exists()


def test_disk_full_everywhere_gives_one_clear_error_and_no_summary(tmp_path, monkeypatch,
                                                                   capsys):
    full_disk(monkeypatch, {"metrics.csv": 2, "summary.json.tmp": 0})
    out = tmp_path / "run"
    assert main(["run", str(scenario_file(tmp_path)), "--out", str(out), "--quiet"]) == 2
    line = one_error_line(capsys)
    assert "metrics.csv: cannot write (No space left on device)" in line
    assert "summary.json: cannot write (No space left on device)" in line
    assert "summary was not written" in line
    assert not (out / "summary.json").exists() and not (out / "summary.json.tmp").exists()


def test_a_directory_turned_read_only_mid_run(tmp_path, monkeypatch, capsys):
    real = results._open

    def read_only(path: Path):
        if path.name == "events.csv":  # created on first use, after the run started
            raise PermissionError(errno.EROFS, "Read-only file system")
        return real(path)

    monkeypatch.setattr(results, "_open", read_only)
    failing = merge(SMALL, {"network": {"failures": [{"link": [0, 1], "at": "0.015 s"}]}})
    out = tmp_path / "run"
    assert main(["run", str(scenario_file(tmp_path, failing)), "--out", str(out),
                 "--quiet"]) == 2
    assert "events.csv: cannot write (Read-only file system)" in one_error_line(capsys)
    assert json.loads((out / "summary.json").read_text())["status"] == "failed"


def test_summary_is_strict_json_and_replaced_atomically(tmp_path):
    results.write_summary(tmp_path, {"status": "completed", "loss": float("nan")})
    text = (tmp_path / "summary.json").read_text()
    assert json.loads(text) == {"status": "completed", "loss": None, "non_finite": ["loss"]}
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]


def test_claim_errors_are_output_errors(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.csv").write_text("round\n")
    with pytest.raises(OutputError, match="not empty"):
        claim_run_dir(tmp_path / "run", "x")
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["metrics.csv"]
