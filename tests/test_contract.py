"""The contract every registered method keeps (DESIGN.md §6), on both tiny architectures.

Adding a method = one row in ``METHODS`` (a test fails until the row exists).
"""

import os

import pytest
import torch
from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache

from steerinterp.hooks import recording
from steerinterp.models import tiny_model
from steerinterp.steer import available, load_steerer, make, steered
from steerinterp.tokens import pad_left, token_ids

# method -> extra config for a fast fit on a tiny model
METHODS = {
    "aura": {},
    "det0": {"num_experts": 8},
    "damp": {"num_experts": 8},
    "actadd": {},
    "mean_shift": {},
    "iti": {},
    "linear_act": {},
    "lineas": {"steps": 5},
    "dsas": {"target_as_control": True, "threshold": 0.0},
}
SOURCE = ["you are a stupid idiot", "shut up you fool", "what a disgusting pig",
          "I hate you so much", "go away, loser", "this is garbage, moron"]
TARGET = ["the river flows to the sea", "a library holds many books", "the train leaves at noon",
          "plants need light to grow", "the museum opens on monday", "rain fell on the hills"]
PROMPT = ["the weather today is", "you are such an"]


def test_every_registered_method_has_a_row():
    assert set(METHODS) == set(available())


@pytest.fixture(scope="module", params=["gpt2", "gemma"])
def model(request):
    # `make gpu-check` runs this suite with the models on the GPU
    return tiny_model(request.param, seed=1).to(os.environ.get("STEERINTERP_TEST_DEVICE", "cpu"))


@pytest.fixture(scope="module", params=sorted(METHODS))
def fitted(request, model):
    return make(request.param, **METHODS[request.param]).fit(model, source=SOURCE, target=TARGET)


def _tokens(model):
    return model.to_tokens(PROMPT)


def _logits(model, *steerers, **kw):
    with torch.no_grad(), steered(model, *steerers, **kw):
        return model(_tokens(model))


def test_identity_at_strength_zero(model, fitted):
    torch.testing.assert_close(_logits(model, fitted, strength=0.0), _logits(model),
                               atol=1e-6, rtol=0)


def test_changes_logits_at_strength_one(model, fitted):
    diff = (_logits(model, fitted, strength=1.0) - _logits(model)).abs().max()
    assert diff > 1e-4


def test_save_load_gives_identical_logits(model, fitted, tmp_path):
    fitted.save(tmp_path / "s")
    again = load_steerer(tmp_path / "s", model)
    assert again.method == fitted.method and again.sites == fitted.sites
    assert torch.equal(_logits(model, again), _logits(model, fitted))


def test_steer_is_pure(model, fitted):
    site = fitted.sites[0]
    acts = torch.randn(3, site.width(model))
    before = acts.clone()
    out = fitted.steer(acts, site)
    assert torch.equal(acts, before) and out is not acts


def test_no_hook_left_after_exception(model, fitted):
    with pytest.raises(RuntimeError, match="boom"):
        with steered(model, fitted):
            raise RuntimeError("boom")
    assert all(not hp._forward_hooks for hp in model.hook_dict.values())
    torch.testing.assert_close(_logits(model), model(_tokens(model)).detach())


def test_kv_cache_logits_equal_full_forward(model, fitted):
    # Left-padded batch, as in generation; only new positions pass the hooks when cached.
    batch = pad_left(model, token_ids(model, PROMPT, 32), skip_first=False)
    tokens, mask = batch.tokens, batch.attention_mask
    with torch.no_grad(), steered(model, fitted):
        full = model(tokens, attention_mask=mask)
        cache = TransformerLensKeyValueCache.init_cache(model.cfg, model.cfg.device,
                                                        tokens.shape[0])
        parts = [model(tokens[:, :-3], attention_mask=mask[:, :-3], past_kv_cache=cache)]
        for i in range(tokens.shape[1] - 3, tokens.shape[1]):
            parts.append(model(tokens[:, i:i + 1], attention_mask=mask[:, i:i + 1],
                               past_kv_cache=cache))
    cached = torch.cat(parts, dim=1)
    real = mask.bool()
    torch.testing.assert_close(cached[real], full[real], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_bf16_model_keeps_its_dtype(method):
    model = tiny_model("gemma", seed=1, dtype=torch.bfloat16)
    steerer = make(method, **METHODS[method]).fit(model, source=SOURCE, target=TARGET)
    seen = []
    hook = (steerer.sites[0].hook_name, lambda acts, hook: seen.append(acts.dtype))
    with torch.no_grad(), steered(model, steerer), model.hooks(fwd_hooks=[hook]):
        logits = model(_tokens(model))
    assert logits.dtype == torch.bfloat16 and seen == [torch.bfloat16]


def test_two_steerers_compose_in_order(model):
    a = make("mean_shift", sites="all.mlp_out").fit(model, source=SOURCE, target=TARGET)
    b = make("mean_shift", sites="all.mlp_out", strength=0.5).fit(model, source=TARGET,
                                                                 target=SOURCE)
    site = a.sites[0]
    seen = []

    def keep(_site, units):
        seen.append(units.clone())

    with torch.no_grad():
        with steered(model, a, b), recording(model, [site], keep):  # after both maps
            model(_tokens(model))
        with recording(model, [site], keep):
            model(_tokens(model))
    composed, plain = seen
    expected = b.steer(a.steer(plain.float(), site), site)
    torch.testing.assert_close(composed, expected, atol=1e-5, rtol=1e-5)
