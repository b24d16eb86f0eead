"""fit / generate / evaluate / calibrate / sweep / run on the command line (tiny models)."""

import json
import subprocess
import sys

import pandas as pd
import pytest
from typer.testing import CliRunner

from steerinterp.cli import app
from steerinterp.steer import load_steerer

runner = CliRunner()
ENV = {"COLUMNS": "200"}


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args], env=ENV)


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    out = tmp_path_factory.mktemp("steerer") / "shift"
    result = invoke("fit", "mean_shift", "--model", "tiny-gpt2", "--source", "builtin:toxic",
                    "--target", "builtin:wiki_target", "--n", 8, "--sites", "all.mlp_out",
                    "--out", out)
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture
def prompts_file(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("the weather today is\nmy neighbour said that\nso I told him\n")
    return path


def test_fit_saves_a_loadable_steerer(fitted):
    from steerinterp.models import load_model

    steerer = load_steerer(fitted, load_model("tiny-gpt2"))
    assert steerer.method == "mean_shift" and [str(s) for s in steerer.sites] == [
        "L0.mlp_out", "L1.mlp_out"]


def test_fit_with_method_options_and_dsas_base(fitted, tmp_path):
    result = invoke("fit", "dsas", "--model", "tiny-gpt2", "--source", "builtin:toxic",
                    "--control", "builtin:wiki_control", "--n", 8, "--base", fitted,
                    "-O", "threshold=0.0", "--out", tmp_path / "d")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "d" / "config.json").read_text())["method"] == "dsas"


def test_generate_writes_scored_samples(fitted, prompts_file, tmp_path):
    out = tmp_path / "gen.jsonl"
    result = invoke("generate", "--model", "tiny-gpt2", "--prompts", prompts_file,
                    "--steerer", fitted, "--new-tokens", 4, "--samples", 2, "--out", out)
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 6 and {r["prompt_id"] for r in rows} == {0, 1, 2}
    assert all(0 <= r["score"] <= 1 for r in rows)


def test_evaluate_writes_the_documented_json(fitted, prompts_file, tmp_path):
    out = tmp_path / "eval.json"
    result = invoke("evaluate", "--model", "tiny-gpt2", "--steerer", fitted, "--strength", 0.5,
                    "--prompts", prompts_file, "--n-prompts", 3, "--ppl-texts",
                    "builtin:wiki_ppl", "--n-ppl", 4, "--new-tokens", 4, "--out", out)
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    for key in ("toxic_share", "toxic_share_se", "mean_score", "mean_score_se", "ppl",
                "n_prompts", "n_samples", "diff_mean_score", "delta_ppl_rel"):
        assert key in data, key
    assert data["n_prompts"] == 3 and data["n_samples"] == 6 and data["strength"] == 0.5
    assert data["unsteered"]["n_prompts"] == 3


def test_file_arguments_default_to_the_whole_file(fitted, prompts_file, tmp_path):
    """A user's 3-line prompt file and 5-line PPL file are used whole, never asked for 100."""
    ppl = tmp_path / "ppl.txt"
    ppl.write_text("\n".join(f"The museum on street {i} opened in the spring of that year."
                             for i in range(5)))
    out = tmp_path / "eval.json"
    result = invoke("evaluate", "--model", "tiny-gpt2", "--steerer", fitted, "--prompts",
                    prompts_file, "--ppl-texts", ppl, "--new-tokens", 2, "--samples", 1,
                    "--no-baseline", "--out", out)
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert data["n_prompts"] == 3 and data["n_texts"] == 5, data


def test_sweep_and_calibrate(fitted, prompts_file, tmp_path):
    result = invoke("sweep", "--model", "tiny-gpt2", "--steerer", fitted, "--strengths",
                    "0.5,1", "--prompts", prompts_file, "--n-prompts", 3, "--n-ppl", 4,
                    "--new-tokens", 4, "--samples", 1, "--out", tmp_path / "sw")
    assert result.exit_code == 0, result.output
    frame = pd.read_csv(tmp_path / "sw" / "sweep.csv")
    assert list(frame["condition"]) == ["unsteered", "shift@0.5", "shift@1"]
    assert (tmp_path / "sw" / "pareto.png").exists()
    result = invoke("calibrate", "--model", "tiny-gpt2", "--steerer", fitted, "--n", 4,
                    "--budget", 0.05)
    assert result.exit_code == 0, result.output
    assert "Calibration(strength=" in result.output


def test_run_smoke_through_the_cli(tmp_path):
    result = invoke("run", "--model", "tiny-gpt2", "--size", "smoke", "--methods",
                    "mean_shift,aura", "--budget", 0, "--fit-set", "wiki", "--out", tmp_path)
    assert result.exit_code == 0, result.output
    assert "| mean_shift |" in (tmp_path / "report.md").read_text()


# -- bad input -----------------------------------------------------------------------------

def test_prompts_file_with_blank_lines_is_refused(tmp_path):
    path = tmp_path / "p.txt"
    path.write_text("first prompt\n   \nthird prompt\n")
    result = invoke("generate", "--model", "tiny-gpt2", "--prompts", path, "--no-score")
    assert result.exit_code != 0
    assert "whitespace-only lines (2)" in str(result.exception)
    path.write_text("  \n\n")
    result = invoke("generate", "--model", "tiny-gpt2", "--prompts", path, "--no-score")
    assert "no prompts" in str(result.exception)


def test_prompt_longer_than_the_limit_is_refused(tmp_path):
    path = tmp_path / "p.txt"
    path.write_text("short prompt\n" + "word " * 200 + "\n")
    result = invoke("generate", "--model", "tiny-gpt2", "--prompts", path, "--no-score")
    assert result.exit_code != 0
    assert "prompt 1" in str(result.exception) and "tokens" in str(result.exception)


@pytest.mark.parametrize("strength, message", [("-0.5", "outside mean_shift's range"),
                                               ("3", "outside mean_shift's range"),
                                               ("nan", "must be a finite number")])
def test_bad_strength_is_refused(fitted, prompts_file, strength, message):
    result = invoke("generate", "--model", "tiny-gpt2", "--prompts", prompts_file,
                    "--steerer", fitted, "--strength", strength, "--no-score")
    assert result.exit_code != 0 and message in str(result.exception)


def test_steerer_for_another_model_is_refused(fitted, prompts_file):
    result = invoke("generate", "--model", "tiny-gemma", "--prompts", prompts_file,
                    "--steerer", fitted, "--no-score")
    assert result.exit_code != 0
    assert "tiny-gpt2" in str(result.exception) and "tiny-gemma" in str(result.exception)


def test_unwritable_output_is_refused_before_any_work(fitted, prompts_file, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    result = invoke("evaluate", "--model", "tiny-gpt2", "--prompts", prompts_file,
                    "--out", blocker / "sub" / "eval.json")
    assert result.exit_code != 0 and "cannot create directory" in str(result.exception)


def test_console_entry_prints_one_line_errors():
    proc = subprocess.run([sys.executable, "-c", "from steerinterp.cli import main; main()",
                           "run", "--model", "tiny-gpt2", "--size", "huge"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "error:" in proc.stdout and "unknown size 'huge'" in proc.stdout
    assert "Traceback" not in proc.stdout + proc.stderr


def test_fit_without_texts_uses_the_toxicity_fit_sets(tmp_path):
    out = tmp_path / "shift"
    result = invoke("fit", "mean_shift", "--model", "tiny-gpt2", "--fit-set", "wiki", "--n", 6,
                    "--out", out)
    assert result.exit_code == 0, result.output
    from steerinterp.steer import load_steerer
    assert load_steerer(out).provenance.n_source == 6


def test_fit_target_without_source_is_refused(tmp_path):
    result = invoke("fit", "mean_shift", "--model", "tiny-gpt2", "--target",
                    "builtin:wiki_target", "--out", tmp_path / "x")
    assert result.exit_code != 0
    assert "--target needs --source" in result.output
