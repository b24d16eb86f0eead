"""The command line on the tiny model (fast) — real output, real files."""

import json

import pytest

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


def test_contrast_prints_a_real_comparison(tmp_path):
    result = runner.invoke(app, ["contrast", "--model", "tiny-gpt2", "--n", "6", "--fit-set",
                                 "wiki", "--out", str(tmp_path)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "L1.ln2" in result.output and "mean_abs_d" in result.output
    assert (tmp_path / "tiny-gpt2" / "wiki-toxic-6" / "meta.json").exists()


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
                                 "--repeats", "1", "--fit-set", "wiki",
                                 "--out", str(tmp_path / "lineas.json")])
    assert result.exit_code == 0, result.output
    bench = json.loads((tmp_path / "lineas.json").read_text())
    assert bench["ratio"] > 0 and bench["converged_min"] > 0 and bench["converged_steps"] == 250


@pytest.mark.parametrize("args, says", [
    (["fit", "--bogus"], "No such option: --bogus"),
    (["fit", "--seed", "abc"], "Invalid value for '--seed'"),
    (["nosuchcmd"], "No such command 'nosuchcmd'"),
    (["calibrate"], "Missing option '--steerer'"),
    (["fitsets", "--compare", "--kind", "prose"], "unknown fit-set kind(s) ['prose']"),
    (["fitsets", "--compare", "-O", "causal_target=both"], "causal_target must be one of"),
    (["run", "--size", "smoke", "--sampling", "nucleus", "--model", "tiny-gpt2"],
     "unknown sampling 'nucleus'"),
    (["generate", "--model", "gpt2", "--prompts", "builtin:toxic_prompts", "--n", "2"],
     "cannot load 'gpt2': the Hugging Face Hub is unreachable"),
])
def test_console_entry_point_answers_a_mistake_in_one_line(args, says):
    """The real console script, as a user runs it: one line naming the problem, exit 2."""
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    exe = shutil.which("steerinterp") or str(Path(sys.executable).parent / "steerinterp")
    import os
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}  # never reach for the Hub, whatever the machine
    done = subprocess.run([exe, *args], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 2, done
    lines = [x for x in (done.stdout + done.stderr).splitlines()
             if x.strip() and not x.startswith(("Loading", "Loaded"))]
    assert "Traceback" not in done.stderr and len(lines) == 1 and says in lines[0], lines
