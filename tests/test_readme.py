"""The README runs as written: every fenced ``python`` block (in order, one namespace, as a
reader pastes them into a notebook) and every ``steerinterp`` command of its ``bash`` blocks.

They run on the random ``tiny-gpt2`` model with small counts. The switch is a list of textual
substitutions per block, each of which must still match the README: a snippet edited so that a
substitution no longer applies fails here, and so does a snippet that drifts from the code. The
``make`` lines are the harness itself (CI runs ``make test``; ``make demo`` is timed in the
README), so they are the only lines not executed.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
TINY = 'load_model("tiny-gpt2")'

# (old, new) per python block, in README order. The tiny model has 2 layers and no toxic
# continuations (its samples are noise), so fit sets come from the "wiki" kind there.
PYTHON_SUBS: list[list[tuple[str, str]]] = [
    [('load_model("gemma-3-270m")', TINY), ("n=64", "n=8"), ("Site(6,", "Site(1,"),
     ("L6.attn_out", "L1.attn_out"), ("Site(6,", "Site(1,")],
    [("load_model()", TINY), ("toxicity_fit_sets(model, n=32)",
                              'toxicity_fit_sets(model, n=8, kind="wiki", progress=False)')],
    [("steps=1000", "steps=2"), ("steps=300", "steps=2"), ('"wiki_control", n=32', '"wiki_control", n=8')],
    # The tiny tokenizer is byte-level: a prompt's characters are its tokens (gemma: ≤ 38).
    [('load_texts("toxic_prompts", n=100)', '[p[:40] for p in load_texts("toxic_prompts", n=3)]'),
     ("wiki[:64]", "wiki[:4]"),
     ("wiki[:64]", "wiki[:4]"), ("wiki[-64:]", "wiki[-4:]")],
    [('"steps": 250', '"steps": 2'), ('size="real"', 'size="quick"'),
     ("toxicity_fit_sets(model, n=32, held_out=True)",
      'toxicity_fit_sets(model, n=8, kind="wiki", held_out=True, progress=False)')],
]

# Options appended to every README command of that sub-command (small and on the tiny model).
CLI_SMALL = {
    "fit": ["--model", "tiny-gpt2"],
    "generate": ["--model", "tiny-gpt2", "--new-tokens", "3"],
    "evaluate": ["--model", "tiny-gpt2", "--prompts", "prompts.txt", "--n-ppl", "4",
                 "--new-tokens", "3"],
    "calibrate": ["--model", "tiny-gpt2", "--n", "4"],
    "sweep": ["--model", "tiny-gpt2", "--prompts", "prompts.txt", "--n-ppl", "3",
              "--new-tokens", "3"],
    "run": ["--model", "tiny-gpt2", "--size", "smoke", "--methods", "mean_shift", "--fit-set",
            "wiki"],
    "demo": ["--model", "tiny-gpt2", "--size", "smoke", "--fit-set", "wiki"],
    "contrast": ["--model", "tiny-gpt2", "--fit-set", "wiki"],
    "figures": ["--model", "tiny-gpt2", "--size", "quick", "--only", "auroc", "-o", "figs"],
}
# The tiny model's tokenizer is byte-level with a 128-token context: the built-in prompts
# (up to 38 gemma tokens, ~150 characters) do not fit, so prompts come from a short file.
CLI_SUBS = [("--n 64", "--n 8"), ("--n 32", "--n 6"), ("--prompts builtin:toxic_prompts --n 8",
                                  "--prompts prompts.txt")]
PROMPTS = "You are such a\nI can't stand\nWhat a stupid\n"


def blocks(lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```", README.read_text(), flags=re.S | re.M)


def _apply(source: str, subs: list[tuple[str, str]], where: str) -> str:
    for old, new in subs:
        assert old in source, f"README {where}: expected {old!r}; update tests/test_readme.py"
        source = source.replace(old, new, 1)
    return source


def test_every_python_block_has_its_small_settings():
    assert len(blocks("python")) == len(PYTHON_SUBS), \
        "a python block was added to or removed from the README: give it a PYTHON_SUBS entry"


def test_python_blocks_run_in_order(tmp_path, monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    monkeypatch.chdir(tmp_path)  # stores, steerers and figures land in a scratch folder
    namespace: dict = {"__name__": "readme"}
    for i, (source, subs) in enumerate(zip(blocks("python"), PYTHON_SUBS)):
        code = _apply(source, subs, f"python block {i + 1}")
        try:
            exec(compile(code, f"README python block {i + 1}", "exec"), namespace)
        except Exception as err:  # name the block: the traceback points into exec'd text
            raise AssertionError(f"README python block {i + 1} failed: "
                                 f"{type(err).__name__}: {err}\n{code}") from err


def readme_commands() -> list[list[str]]:
    cmds = []
    for block in blocks("bash"):
        for line in block.splitlines():
            line = line.split("#", 1)[0].strip()
            if line.startswith("steerinterp "):
                cmds.append(shlex.split(line))
    return cmds


def test_readme_commands_cover_the_cli():
    subs = {c[1] for c in readme_commands()}
    assert subs == set(CLI_SMALL), f"README commands {sorted(subs)} vs CLI_SMALL {sorted(CLI_SMALL)}"


def test_readme_commands_run(tmp_path):
    exe = shutil.which("steerinterp") or str(Path(sys.executable).parent / "steerinterp")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    (tmp_path / "prompts.txt").write_text(PROMPTS)
    for cmd in readme_commands():
        line = _apply(shlex.join(cmd), [s for s in CLI_SUBS if s[0] in shlex.join(cmd)],
                      "bash block")
        args = shlex.split(line)[1:] + CLI_SMALL[cmd[1]]
        done = subprocess.run([exe, *args], cwd=tmp_path, capture_output=True, text=True,
                              timeout=600, env=env)
        assert done.returncode == 0, f"`{line}` failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}"


if __name__ == "__main__":
    pytest.main([__file__, "-q"])
