"""Atomic writes: permissions as for a plain open(), no debris or half-written file on error."""

import os
import stat

import matplotlib
import pandas as pd
import pytest

from typecheck import unchecked
from steerinterp.io import atomic_write, default_mode, write_csv
from steerinterp.plots import figure, save_figure

matplotlib.use("Agg")


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_atomic_files_get_the_umask_mode_not_mkstemps_0600(tmp_path, umask_022):
    assert default_mode() == 0o644 and default_mode(directory=True) == 0o755
    write_csv(tmp_path / "a.csv", pd.DataFrame({"x": [1]}))
    fig, ax = figure()
    ax.plot([0, 1])
    png = save_figure(fig, pd.DataFrame({"x": [1 / 3]}), "f", tmp_path)
    for path in (tmp_path / "a.csv", png, png.with_suffix(".csv")):
        assert _mode(path) == 0o644, path


def test_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "t.txt"
    target.write_text("old")

    def boom(tmp):
        with open(tmp, "w") as f:
            f.write("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(target, boom)
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["t.txt"]


def test_figure_csv_is_rounded_to_six_significant_digits(tmp_path):
    fig, _ = figure()
    save_figure(fig, pd.DataFrame({"x": [1 / 3, 123456789.0]}), "r", tmp_path)
    assert (tmp_path / "r.csv").read_text().split() == ["x", "0.333333", "1.23457e+08"]


def test_plot_input_checks_name_the_problem():
    from steerinterp.plots.base import need_columns, ordered_points

    with pytest.raises(ValueError, match="plot_x needs a DataFrame, got list"):
        unchecked(need_columns)([1], ["a"], "plot_x")  # a user can; the test checker would refuse
    with pytest.raises(ValueError, match=r"non-empty frame with columns \['a'\]; missing: rows"):
        need_columns(pd.DataFrame({"a": []}), ["a"], "plot_x")
    with pytest.raises(ValueError, match=r"non-empty sweep frame .*missing: \['b'\]"):
        need_columns(pd.DataFrame({"a": [1]}), ["a", "b"], "plot_x", "sweep")
    frame = pd.DataFrame({"point": ["mlp_out", "odd", "attn_out", "mlp_out"]})
    assert ordered_points(frame) == ["attn_out", "mlp_out", "odd"]


def test_a_file_in_the_way_of_a_folder_is_named(tmp_path):
    from steerinterp.io import ensure_writable_dir

    (tmp_path / "afile").write_text("x")
    with pytest.raises(PermissionError, match=r"afile is a file, not a directory"):
        ensure_writable_dir(tmp_path / "afile" / "x")


def test_safetensors_get_the_same_mode_as_json(tmp_path):
    import torch

    from steerinterp.io import save_tensors, write_json

    save_tensors(tmp_path / "a.safetensors", {"w": torch.zeros(2)})
    write_json(tmp_path / "a.json", {})
    mode = lambda p: p.stat().st_mode & 0o777  # noqa: E731
    assert mode(tmp_path / "a.safetensors") == mode(tmp_path / "a.json")
