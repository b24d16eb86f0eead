import json

import pytest
import torch

import steerinterp.collection as collect_mod
from steerinterp.collection import collect
from steerinterp.io import CorruptFileError
from steerinterp.models import tiny_model
from steerinterp.sites import Site
from steerinterp.store import ActivationStore, StoreError

SITES = "all.mlp_out,L0.attn_z,L1.ln2,L0.mlp_post"


def _reference(model, text, site, pool, skip_first=True):
    """Pool one unpadded text by hand from a plain run_with_cache."""
    tokens = torch.tensor([model.tokenizer(text, add_special_tokens=False)["input_ids"]])
    if model.cfg.default_prepend_bos:
        tokens = torch.cat([torch.tensor([[model.tokenizer.bos_token_id]]), tokens], 1)
    _, cache = model.run_with_cache(tokens)
    acts = cache[site.hook_name][0].flatten(1) if site.point == "attn_z" else cache[site.hook_name][0]
    acts = acts[1:] if skip_first else acts
    return {"mean": acts.mean(0), "max": acts.max(0).values, "last": acts[-1]}.get(pool, acts)


@pytest.mark.parametrize("pool", ["mean", "max", "last"])
def test_pooling_matches_unpadded_reference(tiny, texts, pool):
    texts = [t for t in texts if len(t) > 1]
    store = collect(tiny, texts, SITES, pool=pool, batch_size=4, progress=False)
    assert store.n == len(texts)
    for site in store.sites:
        x = store[site]
        assert x.dtype == torch.float32 and x.device.type == "cpu"
        for i, text in enumerate(texts):
            torch.testing.assert_close(x[i], _reference(tiny, text, site, pool), atol=1e-5, rtol=1e-4)


def test_keep_first_token_option(tiny_gpt2, texts):
    store = collect(tiny_gpt2, texts, "L1.mlp_out", skip_first=False, progress=False)
    for i, text in enumerate(texts):
        ref = _reference(tiny_gpt2, text, Site(1, "mlp_out"), "mean", skip_first=False)
        torch.testing.assert_close(store["L1.mlp_out"][i], ref, atol=1e-5, rtol=1e-4)
    assert store.lengths.tolist() == [len(tiny_gpt2.tokenizer(t, add_special_tokens=False)["input_ids"]) + 1
                                     for t in texts]


def test_per_token_rows_in_text_order(tiny_gemma, texts):
    texts = [t for t in texts if len(t) > 1]
    store = collect(tiny_gemma, texts, "L1.resid_post", pool="none", batch_size=2, progress=False)
    rows = store["L1.resid_post"].split(store.lengths.tolist())
    for text, r in zip(texts, rows):
        torch.testing.assert_close(r, _reference(tiny_gemma, text, Site(1, "resid_post"), "none"),
                                   atol=1e-5, rtol=1e-4)


def test_forward_stops_after_last_needed_layer(texts):
    model = tiny_model("gpt2", n_layers=3)
    calls = []
    handle = model.blocks[2].register_forward_hook(lambda *a: calls.append(1))
    try:
        collect(model, texts[:2], "L1.mlp_out", progress=False)
    finally:
        handle.remove()
    assert calls == []


def test_bf16_model_gives_float32_store(texts):
    model = tiny_model("gemma", dtype=torch.bfloat16)
    store = collect(model, texts[:2], "L0.mlp_out", progress=False)
    assert store["L0.mlp_out"].dtype == torch.float32


def test_save_load_round_trip(tiny, texts, tmp_path):
    store = collect(tiny, texts[:4], SITES, pool="max", progress=False)
    store.save(tmp_path / "s")
    loaded = ActivationStore.load(tmp_path / "s", tiny)
    assert loaded.sites == store.sites and loaded.texts == texts[:4] and loaded.pool == "max"
    for site in store.sites:
        assert torch.equal(loaded[site], store[site])
    meta = json.loads((tmp_path / "s" / "meta.json").read_text())
    assert meta["model"]["weight_processing"]["fold_ln"] is False
    assert meta["tokenizer"]["padding_side"] == "left" and "versions" in meta


def test_per_token_store_round_trip(tiny_gpt2, texts, tmp_path):
    store = collect(tiny_gpt2, texts[:3], "L0.mlp_out", pool="none", path=tmp_path / "a",
                    batch_size=2, progress=False)
    again = ActivationStore.load(tmp_path / "a")
    assert torch.equal(again["L0.mlp_out"], store["L0.mlp_out"])
    store.save(tmp_path / "b")
    assert torch.equal(ActivationStore.load(tmp_path / "b")["L0.mlp_out"], store["L0.mlp_out"])


def test_disk_collection_equals_memory_and_is_reused(tiny_gpt2, texts, tmp_path, monkeypatch):
    mem = collect(tiny_gpt2, texts, SITES, batch_size=2, progress=False)
    disk = collect(tiny_gpt2, texts, SITES, batch_size=2, path=tmp_path / "s", progress=False)
    for site in mem.sites:
        assert torch.equal(mem[site], disk[site])
    assert sorted(p.name for p in (tmp_path / "s").iterdir()
                  if not p.name.startswith(".")) == ["meta.json", "shard-00000.safetensors"]
    monkeypatch.setattr(collect_mod, "_run_batch", lambda *a: pytest.fail("recomputed"))
    again = collect(tiny_gpt2, texts, SITES, batch_size=2, path=tmp_path / "s", progress=False)
    assert torch.equal(again["L1.mlp_out"], mem["L1.mlp_out"])


def _interrupt_after_two_batches(model, texts, path, monkeypatch):
    """Collect into ``path`` and stop (KeyboardInterrupt) after two finished batches; returns
    the real batch function and a call counter for the resumed run."""
    real = collect_mod._run_batch
    calls = []

    def flaky(*args):
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(1)
        return real(*args)

    monkeypatch.setattr(collect_mod, "_run_batch", flaky)
    with pytest.raises(KeyboardInterrupt):
        collect(model, texts, SITES, batch_size=2, path=path, progress=False)
    return real, calls


def test_interrupted_collection_resumes(tiny_gpt2, texts, tmp_path, monkeypatch):
    real, calls = _interrupt_after_two_batches(tiny_gpt2, texts, tmp_path / "s", monkeypatch)
    assert not (tmp_path / "s" / "meta.json").exists()
    assert len(list((tmp_path / "s").glob("part-*.safetensors"))) == 2
    calls.clear()
    monkeypatch.setattr(collect_mod, "_run_batch", lambda *a: calls.append(1) or real(*a))
    store = collect(tiny_gpt2, texts, SITES, batch_size=2, path=tmp_path / "s", progress=False)
    assert len(calls) == 1  # only the batch that never finished
    ref = collect(tiny_gpt2, texts, SITES, batch_size=2, progress=False)
    for site in ref.sites:
        assert torch.equal(store[site], ref[site])


def test_other_store_at_same_path_is_refused(tiny_gpt2, texts, tmp_path):
    collect(tiny_gpt2, texts[:2], "L0.mlp_out", path=tmp_path / "s", progress=False)
    with pytest.raises(StoreError, match="already holds a different store"):
        collect(tiny_gpt2, texts[:3], "L0.mlp_out", path=tmp_path / "s", progress=False)


def test_truncated_shard_is_detected(tiny_gpt2, texts, tmp_path):
    collect(tiny_gpt2, texts[:2], "L0.mlp_out", path=tmp_path / "s", progress=False)
    shard = tmp_path / "s" / "shard-00000.safetensors"
    shard.write_bytes(shard.read_bytes()[:-20])
    with pytest.raises(CorruptFileError, match="truncated or corrupted"):
        ActivationStore.load(tmp_path / "s")


def test_corrupted_manifest_is_detected(tiny_gpt2, texts, tmp_path):
    collect(tiny_gpt2, texts[:2], "L0.mlp_out", path=tmp_path / "s", progress=False)
    (tmp_path / "s" / "meta.json").write_text('{"format": "steerinterp.st')
    with pytest.raises(CorruptFileError, match="not valid JSON"):
        ActivationStore.load(tmp_path / "s")
    with pytest.raises(FileNotFoundError, match="no activation store"):
        ActivationStore.load(tmp_path / "nothing")


def test_store_refuses_other_model(tiny_gpt2, tiny_gemma, texts, tmp_path):
    store = collect(tiny_gpt2, texts[:2], "L0.mlp_out", progress=False)
    with pytest.raises(StoreError, match="collected on 'tiny-gpt2'; it cannot be used with 'tiny-gemma'"):
        store.check_model(tiny_gemma)
    store.save(tmp_path / "s")
    with pytest.raises(StoreError, match="cannot be used with 'tiny-gemma'"):
        ActivationStore.load(tmp_path / "s", tiny_gemma)


def test_store_refuses_other_weight_processing(texts):
    model = tiny_model("gpt2")
    store = collect(model, texts[:2], "L0.mlp_out", progress=False)
    other = tiny_model("gpt2")
    other.steerinterp_info = type(other.steerinterp_info).from_dict(
        {**other.steerinterp_info.to_dict(),
         "weight_processing": {**other.steerinterp_info.weight_processing, "fold_ln": True}})
    with pytest.raises(StoreError, match="weight processing"):
        store.check_model(other)


@pytest.mark.parametrize("kwargs, match", [
    (dict(texts=[]), "empty text list"),
    (dict(texts="one string"), "not a single string"),
    (dict(texts=["ok text", "  "]), "empty or whitespace-only"),
    (dict(max_tokens=0), "max_tokens must be at least 1"),
    (dict(max_tokens=1), "at least 2 when the first token is skipped"),
    (dict(pool="median"), "unknown pooling 'median'"),
    (dict(batch_size=0), "batch_size"),
    (dict(sites="L9.mlp_out"), "has 2 layers"),
    (dict(sites="L0.mlp_pre_linear"), "does not exist on tiny-gpt2"),
])
def test_bad_input(tiny_gpt2, kwargs, match):
    args = dict(texts=["some text here", "more text"], sites="L0.mlp_out", progress=False)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        collect(tiny_gpt2, args.pop("texts"), args.pop("sites"), **args)


def test_text_without_poolable_token(tiny_gpt2):
    # One byte + BOS: nothing is left once the first token is excluded... except that byte.
    # With BOS the single byte survives; an empty-after-BOS text cannot be built from a string,
    # so check the model-without-BOS case, where a one-token text has nothing to pool.
    model = tiny_model("gpt2")
    model.cfg.default_prepend_bos = False
    with pytest.raises(StoreError, match="no token left to pool"):
        collect(model, ["a", "abc"], "L0.mlp_out", progress=False)


def test_summary_table(tiny_gpt2, texts):
    df = collect(tiny_gpt2, texts, "all.mlp_out", progress=False).summary()
    assert list(df.columns) == ["site", "layer", "point", "width", "rows", "mean", "std",
                                "mean_abs", "nonfinite"]
    assert df["rows"].tolist() == [len(texts)] * 2 and (df["nonfinite"] == 0).all()


def test_pooled_store_on_disk_keeps_token_counts(tiny_gpt2, texts, tmp_path):
    """A healthy pooled store written by collect(path=…) answers .lengths after a reload."""
    mem = collect(tiny_gpt2, texts, [Site(0, "mlp_out")], pool="mean", progress=False)
    collect(tiny_gpt2, texts, [Site(0, "mlp_out")], pool="mean", path=tmp_path / "s",
            progress=False)
    torch.testing.assert_close(ActivationStore.load(tmp_path / "s").lengths, mem.lengths)


def test_a_damaged_part_is_dropped_and_recomputed_at_resume(tiny_gpt2, texts, tmp_path,
                                                            monkeypatch):
    real, calls = _interrupt_after_two_batches(tiny_gpt2, texts, tmp_path / "s", monkeypatch)
    part = tmp_path / "s" / "part-00000.safetensors"
    part.write_bytes(part.read_bytes()[:-20])  # e.g. a disk that filled up
    calls.clear()
    monkeypatch.setattr(collect_mod, "_run_batch", lambda *a: calls.append(1) or real(*a))
    with pytest.warns(UserWarning, match="dropping part-00000.safetensors and recomputing"):
        store = collect(tiny_gpt2, texts, SITES, batch_size=2, path=tmp_path / "s",
                        progress=False)
    assert len(calls) == 2  # the damaged part and the one never finished
    ref = collect(tiny_gpt2, texts, SITES, batch_size=2, progress=False)
    for site in ref.sites:
        assert torch.equal(store[site], ref[site])


def test_a_store_being_written_by_another_process_is_refused(tiny_gpt2, texts, tmp_path):
    from filelock import FileLock
    folder = tmp_path / "s"
    folder.mkdir()
    (folder / ".writer.pid").write_text("4242")
    with FileLock(str(folder / ".lock")):  # what the other writer holds
        with pytest.raises(StoreError, match=r"being written by another process \(pid 4242\)"):
            collect(tiny_gpt2, texts, SITES, path=folder, progress=False)
    collect(tiny_gpt2, texts, SITES, path=folder, progress=False)  # free again afterwards
