"""A model split over devices (``load_model(n_devices=k)``): each site's steering tensors go to
its block's device. No GPU needed: a fake placement moves one block of a tiny model to the
``meta`` device, and the split itself is refused clearly where the GPUs are missing."""

import pytest
import torch

from typecheck import checks_off
from steerinterp.models import load_model, tiny_model
from steerinterp.sites import Site, site_device
from steerinterp.steer import make

SOURCE = ["you are a stupid idiot", "shut up you moron", "what a dumb thing to say",
          "I hate you so much"]
TARGET = ["have a nice day", "the museum opens at nine", "rain is expected tomorrow",
          "the river flows to the sea"]


def split(model):
    """What TL's n_devices=2 does to a 2-block model, with `meta` standing in for cuda:1."""
    model.cfg.n_devices = 2
    model.blocks[1].to("meta")
    return model


@pytest.mark.parametrize("method", ["linear_act", "mean_shift", "dsas"])
def test_each_sites_tensors_go_to_its_blocks_device(method):
    model = tiny_model("gpt2", seed=0)
    opts = ({"base": make("mean_shift", sites="all.mlp_out").fit(model, SOURCE, TARGET)}
            if method == "dsas" else {"sites": "all.mlp_out"})
    steerer = make(method, **opts)
    fit = dict(control=TARGET) if method == "dsas" else {}
    steerer.fit(model, SOURCE, TARGET, **fit)
    split(model)
    assert site_device(model, Site(0, "mlp_out")).type == "cpu"
    assert site_device(model, Site(1, "mlp_out")).type == "meta"
    steerer.place(model)
    seen = set()
    for name, p in steerer.named_parameters():
        site, _ = Site.from_key(name.rpartition(".")[2])
        assert p.device.type == ("meta" if site.layer == 1 else "cpu"), name
        seen.add(site.layer)
    assert seen == {0, 1}


def test_one_device_keeps_everything_on_the_models_device():
    model = tiny_model("gpt2", seed=0)
    steerer = make("mean_shift", sites="all.mlp_out").fit(model, SOURCE, TARGET)
    model.blocks[1].to("meta")  # n_devices stays 1: the model's device is what counts
    steerer.place(model)
    assert {p.device.type for p in steerer.parameters()} == {"cpu"}


def test_a_split_over_cpus_is_refused():
    with pytest.raises(ValueError, match="splits the blocks over CUDA GPUs; device is 'cpu'"):
        load_model("tiny-gpt2", device="cpu", n_devices=2)


@pytest.mark.skipif(torch.cuda.device_count() >= 3, reason="this machine has the GPUs")
def test_more_devices_than_visible_gpus_is_refused():
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    with pytest.raises(ValueError, match=rf"n_devices=3 but {n} CUDA GPU\(s\) are visible"):
        load_model("tiny-gpt2", device="cuda", n_devices=3)


@pytest.mark.parametrize("bad", [0, -1, 1.5])
def test_n_devices_must_be_a_whole_number(bad):
    # checks_off: 1.5 is not an int, which the test checker refuses before load_model's message
    with pytest.raises(ValueError, match="n_devices must be a whole number"), checks_off():
        load_model("tiny-gpt2", n_devices=bad)
