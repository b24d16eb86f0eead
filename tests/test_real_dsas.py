"""DSAS on the real default model (slow): gates fire more on toxic text than on Wikipedia."""

import pytest

from steerinterp import length_match, load_model, load_texts
from steerinterp.analysis.token_scales import TOKEN_COLUMNS, token_scales
from steerinterp.steer import make

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def model():
    return load_model()


def test_dsas_scales_higher_on_toxic_than_on_wikipedia(model):
    toxic, wiki = length_match(model, load_texts("toxic", n=32), load_texts("wiki_target", n=32))
    control = load_texts("wiki_control", n=32)
    base = make("mean_shift").fit(model, source=toxic, target=wiki)
    dsas = make("dsas", base=base).fit(model, source=toxic, control=control)
    report = dsas.probe_report()
    assert report["active"].any(), report
    # Held out: toxic texts the probes never saw vs perplexity-set Wikipedia text.
    held_toxic, held_wiki = length_match(model, load_texts("toxic", n=48)[32:],
                                         load_texts("wiki_ppl", n=16))
    tox = token_scales(model, dsas, held_toxic)
    wik = token_scales(model, dsas, held_wiki)
    assert list(tox.columns) == TOKEN_COLUMNS
    assert tox["scale"].between(0, 1).all()
    active = set(report.loc[report["active"], "site"])
    tox_mean = tox[tox["site"].isin(active)]["scale"].mean()
    wik_mean = wik[wik["site"].isin(active)]["scale"].mean()
    assert tox_mean > wik_mean + 0.1, (tox_mean, wik_mean)
