"""The command line on the tiny model (fast) — real output, real files."""

import json

from typer.testing import CliRunner

from steerinterp.cli import app
from steerinterp.store import ActivationStore

runner = CliRunner()


def test_collect_writes_a_loadable_store(tmp_path):
    out = tmp_path / "store"
    result = runner.invoke(app, ["collect", "builtin:toxic", "--model", "tiny-gpt2", "--n", "6",
                                 "--sites", "all.mlp_out", "--out", str(out), "--pool", "max"],
                           env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    store = ActivationStore.load(out)
    assert store.n == 6 and store.pool == "max" and [str(s) for s in store.sites] == [
        "L0.mlp_out", "L1.mlp_out"]
    assert "L1.mlp_out" in result.output


def test_collect_from_a_user_file(tmp_path):
    src = tmp_path / "mine.txt"
    src.write_text("first example text\n\nsecond example text\n")
    result = runner.invoke(app, ["collect", str(src), "--model", "tiny-gemma",
                                 "--sites", "L1.resid_post", "--out", str(tmp_path / "s")])
    assert result.exit_code == 0, result.output
    assert ActivationStore.load(tmp_path / "s").n == 2


def test_collect_bad_site_is_a_clear_error(tmp_path):
    result = runner.invoke(app, ["collect", "builtin:toxic", "--model", "tiny-gpt2", "--n", "2",
                                 "--sites", "L7.mlp_out", "--out", str(tmp_path / "s")])
    assert result.exit_code != 0
    assert "has 2 layers" in str(result.exception)


def test_bench_collect_reports_a_ratio(tmp_path):
    out = tmp_path / "bench.json"
    result = runner.invoke(app, ["bench", "collect", "--model", "tiny-gpt2", "--n", "8",
                                 "--repeats", "1", "--batch-size", "4", "--out", str(out)])
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert data["ratio"] > 0 and data["ratio_vs_full"] > 0 and data["n_texts"] == 8 and data["n_sites"] == 4


def test_sets_lists_builtin_sets():
    result = runner.invoke(app, ["sets"])
    assert result.exit_code == 0 and "toxic_prompts" in result.output


def test_demo_prints_a_real_comparison(tmp_path):
    result = runner.invoke(app, ["demo", "--model", "tiny-gpt2", "--n", "6", "--out",
                                 str(tmp_path)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "L1.ln2" in result.output and "mean_abs_d" in result.output
    assert (tmp_path / "tiny-gpt2" / "toxic-6" / "meta.json").exists()


def test_bench_steer_auroc_lineas_on_tiny_model(tmp_path):
    out = tmp_path / "steer.json"
    result = runner.invoke(app, ["bench", "steer", "--model", "tiny-gemma", "--n-fit", "4",
                                 "--prompts", "2", "--new-tokens", "3", "--repeats", "1",
                                 "--methods", "aura,mean_shift", "--out", str(out)])
    assert result.exit_code == 0, result.output
    rows = json.loads(out.read_text())
    rows = rows["rows"] if isinstance(rows, dict) else rows
    assert {r["method"] for r in rows} == {"aura", "mean_shift"}
    result = runner.invoke(app, ["bench", "auroc", "--model", "tiny-gemma", "--n", "8",
                                 "--out", str(tmp_path / "auroc.json")])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "auroc.json").read_text())["max_abs_diff"] < 1e-6
    result = runner.invoke(app, ["bench", "lineas", "--model", "tiny-gemma", "--n", "4",
                                 "--repeats", "1", "--out", str(tmp_path / "lineas.json")])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "lineas.json").read_text())["ratio"] > 0
