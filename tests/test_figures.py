"""``steerinterp figures`` at quick size on the tiny model: PNG + CSV per figure, cached frames."""

import dataclasses

import pandas as pd
import pytest
from typer.testing import CliRunner

import steerinterp.experiments.figures as figures
from steerinterp.experiments import registry
from steerinterp.experiments.analyses_lineas import _sparsest_active
from steerinterp.cli import app
from steerinterp.models import load_model

QUIET = dict(size="quick", log=lambda msg: None)


@pytest.fixture(scope="module")
def model():
    return load_model("tiny-gpt2")


@pytest.fixture(scope="module")
def made(model, tmp_path_factory):
    root = tmp_path_factory.mktemp("figs")
    paths = figures.make_figures(model, root / "figures", cache=root / "cache", **QUIET)
    return root, paths


def test_every_analysis_writes_png_and_csv(made):
    root, paths = made
    names = {p.stem for p in paths}
    assert {"auroc_map", "auroc_distribution", "expert_tokens", "expert_overlap",
            "lineas_support_path", "lineas_surviving_layers", "aura_lineas_overlap",
            "dsas_token_scales",
            "dsas_scale_by_site", "sae_shift_alignment", "sae_feature_changes",
            "sae_feature_overlap", "attribution_sites", "attribution_units",
            "attribution_validation"} <= names
    for p in paths:
        assert p.stat().st_size > 2000 and p.with_suffix(".csv").exists()


def test_aura_lineas_frame_names_gamma_and_k(made):
    root, _ = made
    df = pd.read_csv(root / "figures" / "aura_lineas_overlap.csv")
    assert {"gamma", "k", "n_both", "p_value"} <= set(df.columns) and len(df)
    assert (df["k"] == 3).all()  # max(1, width // 10) on the tiny model (d_model 32)
    assert df["gamma"].nunique() == 1 and df["gamma"].iloc[0] in figures.FIGURE_SIZES["quick"].gammas


class _FakeLineas:
    def __init__(self, norms):
        self.norms = norms

    def support(self):
        return pd.DataFrame({"group_norm": self.norms})


def test_sparsest_active_gamma_keeps_a_site():
    path = [_FakeLineas([1.0, 2.0]), _FakeLineas([0.0, 0.5]), _FakeLineas([0.0, 0.0])]
    assert _sparsest_active([0.0, 0.5, 5.0], path) == (0.5, path[1])
    off = [_FakeLineas([0.0]), _FakeLineas([0.0])]
    assert _sparsest_active([1.0, 0.0], off) == (0.0, off[1])  # nothing on: fall back to γ = 0


def test_figures_are_redrawn_from_cached_frames(model, made, monkeypatch):
    root, _ = made
    compute, draw, reads = figures.ANALYSES["auroc"]
    monkeypatch.setitem(figures.ANALYSES, "auroc",
                        (lambda ctx: pytest.fail("recomputed"), draw, reads))
    # A size field the analysis does not read may change without invalidating its frames.
    quick = figures.FIGURE_SIZES["quick"]
    monkeypatch.setitem(figures.FIGURE_SIZES, "quick", dataclasses.replace(quick, convergence=(5,)))
    paths = figures.make_figures(model, root / "again", cache=root / "cache", only=["auroc"],
                                 **QUIET)
    assert {p.stem for p in paths} == {"auroc_map", "auroc_distribution", "expert_tokens",
                                       "expert_overlap"}
    # One it reads does.
    monkeypatch.setitem(figures.FIGURE_SIZES, "quick", dataclasses.replace(quick, n_texts=11))
    with pytest.raises(pytest.fail.Exception, match="recomputed"):
        figures.make_figures(model, root / "again", cache=root / "cache", only=["auroc"], **QUIET)


def test_analysis_reading_an_unknown_size_field_is_refused():
    with pytest.raises(ValueError, match=r"reads unknown size fields \['n_txts'\]"):
        registry.analysis("typo", reads=("n_txts",))


def test_unknown_analysis_and_size_are_named(model, tmp_path):
    with pytest.raises(ValueError, match=r"unknown analysis \['saliency'\]"):
        figures.make_figures(model, tmp_path, only=["saliency"], **QUIET)
    with pytest.raises(ValueError, match="unknown size 'huge'"):
        figures.make_figures(model, tmp_path, size="huge")


def test_unwritable_figures_folder_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    result = CliRunner().invoke(app, ["figures", "--model", "tiny-gpt2", "--size", "quick",
                                      "--out", str(blocker / "figures")])
    assert result.exit_code != 0 and "cannot create directory" in str(result.exception)


def test_cli_figures_logs_progress_and_redraws_from_cache(made):
    root, _ = made
    args = ["figures", "--model", "tiny-gpt2", "--size", "quick", "--only", "auroc",
            "--cache", str(root / "cache"), "--out", str(root / "cli")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    # Cached frames: nothing recomputed, and the "[figures]" prefix is not eaten as markup.
    assert "computing" not in result.output and "4 figures in" in result.output
    assert (root / "cli" / "auroc_map.png").exists()
    fresh = CliRunner().invoke(app, args[:-4] + ["--cache", str(root / "c2"), "--out",
                                                 str(root / "cli2")])
    assert fresh.exit_code == 0 and "[figures] computing auroc" in fresh.output


def test_figures_help_names_every_registered_analysis():
    from typer.testing import CliRunner

    from steerinterp.cli import app

    text = " ".join(CliRunner().invoke(app, ["figures", "--help"],
                                       env={"COLUMNS": "300"}).output.split())
    missing = [name for name in figures.ANALYSES if name not in text]
    assert not missing, f"`figures --only` help lacks {missing}"
