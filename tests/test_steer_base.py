"""Bad input to the steering core: every path gives an error that names the problem."""

import json

import pytest
import torch

from typecheck import checks_off
from steerinterp.collection import collect
from steerinterp.io import CorruptFileError
from steerinterp.models import tiny_model
from steerinterp.steer import SteerError, load_steerer, make, steered

SRC = ["you are a stupid idiot", "shut up you fool", "I hate you so much"]
TGT = ["the river flows to the sea", "a library holds many books", "the train leaves at noon"]


@pytest.fixture(scope="module")
def model():
    return tiny_model("gpt2", seed=2)


@pytest.fixture(scope="module")
def fitted(model):
    return make("mean_shift").fit(model, source=SRC, target=TGT)


def test_unknown_method_and_option():
    with pytest.raises(SteerError, match="unknown method 'nope'; available: .*mean_shift"):
        make("nope")
    with pytest.raises(SteerError, match=r"unknown option\(s\) \['alpha'\] for mean_shift"):
        make("mean_shift", alpha=3)


def test_empty_or_one_class(model):
    with pytest.raises(ValueError, match="empty text list"):
        make("mean_shift").fit(model, source=[], target=TGT)
    with pytest.raises(SteerError, match="needs both a source and a target"):
        make("mean_shift").fit(model, source=SRC)


def test_stores_from_other_model_or_sites(model):
    other = tiny_model("gemma", seed=2)
    src = collect(other, SRC, "all.mlp_out", progress=False)
    with pytest.raises(ValueError, match="collected on 'tiny-gemma'; it cannot be used with 'tiny-gpt2'"):
        make("mean_shift", sites="all.mlp_out", causal=False).fit(model, source=src,
                                                                  target=TGT)
    src = collect(model, SRC, "L0.mlp_out", progress=False)
    with pytest.raises(SteerError, match=r"source store lacks site\(s\) \['L1.mlp_out'\]"):
        make("mean_shift", sites="all.mlp_out", causal=False).fit(model, source=src,
                                                                  target=TGT)
    src = collect(model, SRC, "all.mlp_out", pool="max", progress=False)
    with pytest.raises(SteerError, match="pooled with 'max' but mean_shift uses 'mean'"):
        make("mean_shift", sites="all.mlp_out", causal=False).fit(model, source=src,
                                                                  target=TGT)


def test_nan_activations_are_refused(model):
    src = collect(model, SRC, "L0.mlp_out", progress=False)
    src["L0.mlp_out"][1, 3] = float("nan")
    with pytest.raises(SteerError, match=r"source activations at L0.mlp_out contain 1 NaN/inf"):
        make("mean_shift", sites="L0.mlp_out", causal=False).fit(model, source=src, target=TGT)


def test_strength_out_of_range(model, fitted):
    with pytest.raises(SteerError, match=r"strength 2 is outside mean_shift's range \[0.0, 1.0\]"):
        make("mean_shift", strength=2)
    with pytest.raises(SteerError, match="outside mean_shift's range"):
        with steered(model, fitted, strength=-0.5):
            pass
    with pytest.raises(SteerError, match="must be a finite number"):
        fitted.fwd_hooks(float("nan"))


def test_unfitted_steerer_is_refused(model):
    with pytest.raises(SteerError, match="not fitted"):
        with steered(model, make("mean_shift")):
            pass
    with pytest.raises(SteerError, match="takes fitted steerers"), checks_off():
        with steered(model, "mean_shift"):
            pass


def test_attach_to_other_model_or_width(fitted):
    with pytest.raises(SteerError, match="fitted on 'tiny-gpt2'; it cannot be used with 'tiny-gemma'"):
        with steered(tiny_model("gemma"), fitted):
            pass
    wider = tiny_model("gpt2", d_model=64)  # same name, other width
    with pytest.raises(SteerError, match="has width 32 at L0.ln1, the model has 64"):
        with steered(wider, fitted):
            pass


def test_load_missing_or_corrupted_files(model, fitted, tmp_path):
    fitted.save(tmp_path / "s")
    (tmp_path / "s" / "state.safetensors").write_bytes(b"\x00garbage")
    with pytest.raises(CorruptFileError, match="truncated or corrupted"):
        load_steerer(tmp_path / "s")
    fitted.save(tmp_path / "t")
    (tmp_path / "t" / "state.safetensors").unlink()
    with pytest.raises(CorruptFileError, match="missing"):
        load_steerer(tmp_path / "t")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_steerer(tmp_path / "nowhere")
    fitted.save(tmp_path / "u")
    (tmp_path / "u" / "config.json").write_text("{not json")
    with pytest.raises(CorruptFileError, match="not valid JSON"):
        load_steerer(tmp_path / "u")


def test_load_checks_model(model, fitted, tmp_path):
    fitted.save(tmp_path / "s")
    with pytest.raises(SteerError, match="cannot be used with 'tiny-gemma'"):
        load_steerer(tmp_path / "s", tiny_model("gemma"))
    assert load_steerer(tmp_path / "s", model).provenance.n_source == 3


def test_mean_shift_is_the_mean_difference(model):
    # Simultaneous fit: every site from one unsteered pass (causal: tests/test_mean_shift.py).
    fitted = make("mean_shift", causal=False).fit(model, source=SRC, target=TGT)
    src = collect(model, SRC, fitted.sites, progress=False)
    tgt = collect(model, TGT, fitted.sites, progress=False)
    for site in fitted.sites:
        torch.testing.assert_close(fitted.tensor(site, "bias"),
                                   tgt[site].mean(0) - src[site].mean(0), atol=1e-5, rtol=1e-5)
        acts = src[site]
        torch.testing.assert_close(fitted.steer(acts, site, 1.0).mean(0), tgt[site].mean(0),
                                   atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("method", ["actadd", "iti"])
@pytest.mark.parametrize("bad", [float("inf"), float("-inf")])
def test_infinite_strength_is_refused_for_unbounded_methods(model, method, bad, two_sets):
    """Vector additions have no upper bound, but ±inf gives NaN logits, never a result."""
    steerer = make(method).fit(model, *two_sets)
    with pytest.raises(SteerError, match="must be a finite number, got -?inf"):
        with steered(model, steerer, strength=bad):
            pass


def _edited(fitted, tmp_path, edit):
    """A saved copy of ``fitted`` whose config.json is replaced by ``edit(meta)``."""
    import json
    path = fitted.save(tmp_path / "s")
    meta = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps(edit(meta)))
    return path


@pytest.mark.parametrize("edit, match", [
    (lambda m: [m], r"config.json is not a steerinterp steerer \(a JSON list"),
    (lambda m: {k: v for k, v in m.items() if k != "provenance"},
     r"config.json: field 'provenance' is missing"),
    (lambda m: {**m, "config": {**m["config"], "bogus": 1}},
     r"config.json: unknown field\(s\) \['bogus'\] in the mean_shift config"),
    (lambda m: {**m, "provenance": {k: v for k, v in m["provenance"].items() if k != "sites"}},
     "config.json: provenance lacks 'sites'"),
])
def test_hand_edited_config_is_named(model, fitted, tmp_path, edit, match):
    with pytest.raises(SteerError, match=match):
        load_steerer(_edited(fitted, tmp_path, edit), model)


def test_state_with_a_site_removed_is_refused(model, fitted, tmp_path):
    """Removing one site's tensor and fixing the checksum still does not load."""
    from steerinterp.io import save_tensors
    path = fitted.save(tmp_path / "s")
    tensors = {k: v.detach() for k, v in fitted.tensors.items()}
    dropped = sorted(tensors)[0]
    del tensors[dropped]
    sha = save_tensors(path / "state.safetensors", tensors, {"format": "steerinterp.steerer/1"})
    import json
    meta = json.loads((path / "config.json").read_text())
    meta["state_sha256"] = sha
    (path / "config.json").write_text(json.dumps(meta))
    with pytest.raises(SteerError, match=rf"does not match config.json \(missing \['{dropped}'\]"):
        load_steerer(path, model)


def test_other_weights_or_depth_are_refused(fitted):
    with pytest.raises(SteerError, match="fitted on other weights of 'tiny-gpt2'"):
        fitted.check_model(tiny_model("gpt2", seed=3))
    with pytest.raises(SteerError, match="fitted on a 2-layer tiny-gpt2; this one has 3"):
        fitted.check_model(tiny_model("gpt2", seed=2, n_layers=3))


def test_bf16_copy_of_the_same_weights_is_accepted(fitted):
    fitted.check_model(tiny_model("gpt2", seed=2).to(torch.bfloat16))


def test_nested_steered_with_the_same_steerer_is_refused(model, fitted):
    other = make("mean_shift").fit(model, source=TGT, target=SRC)
    with steered(model, fitted):
        with pytest.raises(SteerError, match="already active on the model"):
            with steered(model, fitted):
                pass
        with steered(model, other):  # different steerers compose
            pass
    with pytest.raises(SteerError, match="passed twice"):
        with steered(model, fitted, fitted):
            pass
    with steered(model, fitted):  # released after the block, also after the refusals
        pass


def test_older_file_without_a_tensor_list_still_needs_every_site(model, fitted, tmp_path):
    import json

    from steerinterp.io import save_tensors
    path = fitted.save(tmp_path / "s")
    tensors = {k: v.detach() for k, v in fitted.tensors.items()}
    del tensors[sorted(tensors)[0]]  # mean_shift: one tensor per site, so that site is bare
    sha = save_tensors(path / "state.safetensors", tensors, {"format": "steerinterp.steerer/1"})
    meta = json.loads((path / "config.json").read_text())
    meta["state_sha256"] = sha
    del meta["tensors"]  # as written before the list existed
    (path / "config.json").write_text(json.dumps(meta))
    with pytest.raises(SteerError, match="has no tensor for site"):
        load_steerer(path, model)


def test_fit_record_is_typed_and_round_trips(model, tmp_path):
    from steerinterp.sites import Site
    from steerinterp.steer.record import FitRecord

    s = make("mean_shift", sites="all.mlp_out").fit(model, source=SRC, target=TGT)
    rec = s.provenance
    assert isinstance(rec, FitRecord) and all(isinstance(x, Site) for x in rec.sites)
    assert rec.widths == {x: x.width(model) for x in rec.sites} and rec.n_source == len(SRC)
    assert FitRecord.from_dict(rec.to_dict()) == rec
    assert rec.replace(n_control=3).extra == {"n_control": 3}  # a method's own field
    saved = json.loads((s.save(tmp_path / "s") / "config.json").read_text())["provenance"]
    assert saved["sites"] == [str(x) for x in rec.sites]  # the file format is unchanged
    assert load_steerer(tmp_path / "s", model).provenance == rec
