import pytest
import torch

from steerinterp.sites import (POINTS, Site, SiteError, all_layers, architecture_family,
                               default_sites, parse_sites, points_of, to_units, from_units)

# Points every supported architecture must expose; a TransformerLens upgrade that renames a
# hook fails here, in one place.
COMMON = {"resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out", "mlp_pre", "mlp_post",
          "attn_z", "ln1", "ln2"}


def test_every_point_exists_on_each_architecture(tiny):
    have = set(points_of(tiny))
    assert COMMON <= have
    for point in have:
        for layer in range(tiny.cfg.n_layers):
            assert Site(layer, point).hook_name in tiny.hook_dict


def test_gated_point_only_on_gated_mlp(tiny_gpt2, tiny_gemma):
    assert "mlp_pre_linear" in points_of(tiny_gemma)
    assert "mlp_pre_linear" not in points_of(tiny_gpt2)
    with pytest.raises(SiteError, match="L0.mlp_pre_linear does not exist on tiny-gpt2"):
        Site(0, "mlp_pre_linear").validate(tiny_gpt2)


def test_parse_round_trip_and_hook_names():
    site = Site.parse("L3.mlp_post")
    assert site == Site(3, "mlp_post") and str(site) == "L3.mlp_post"
    assert site.hook_name == "blocks.3.mlp.hook_post"
    for point in POINTS:
        s = Site(7, point)
        assert Site.parse(str(s)) == s
        assert Site.parse(s.hook_name) == s


@pytest.mark.parametrize("bad", ["L3", "3.mlp_out", "L3.nope", "blocks.x.hook_mlp_out", ""])
def test_parse_rejects_malformed(bad):
    with pytest.raises(SiteError):
        Site.parse(bad)


def test_negative_layer_rejected():
    with pytest.raises(SiteError, match="non-negative"):
        Site(-1, "mlp_out")


def test_layer_out_of_range_names_model(tiny):
    with pytest.raises(SiteError, match=r"has 2 layers"):
        Site(5, "mlp_out").validate(tiny)


def test_widths(tiny):
    cfg = tiny.cfg
    assert Site(0, "mlp_out").width(tiny) == cfg.d_model
    assert Site(0, "mlp_post").width(tiny) == cfg.d_mlp
    assert Site(1, "attn_z").width(tiny) == cfg.n_heads * cfg.d_head
    _, cache = tiny.run_with_cache("some text")
    for point in points_of(tiny):
        site = Site(1, point)
        assert to_units(site, cache[site.hook_name]).shape[-1] == site.width(tiny)


def test_units_round_trip():
    x = torch.randn(2, 5, 4, 8)
    site = Site(0, "attn_z")
    assert torch.equal(from_units(site, to_units(site, x), x), x)


def test_sites_sort_in_forward_order():
    sites = [Site(1, "mlp_out"), Site(0, "mlp_out"), Site(0, "mlp_pre"), Site(0, "attn_out")]
    assert sorted(sites) == [Site(0, "attn_out"), Site(0, "mlp_pre"), Site(0, "mlp_out"),
                             Site(1, "mlp_out")]


def test_parse_sites_spec(tiny):
    sites = parse_sites("all.mlp_out, L0-1.attn_out, L0.attn_out", tiny)
    assert sites == [Site(0, "mlp_out"), Site(1, "mlp_out"), Site(0, "attn_out"),
                     Site(1, "attn_out")]
    assert all_layers(tiny, "ln2") == [Site(0, "ln2"), Site(1, "ln2")]
    with pytest.raises(SiteError, match="needs a model"):
        parse_sites("all.mlp_out")
    with pytest.raises(SiteError, match="empty"):
        parse_sites([])


def test_default_sites_follow_methods_md(tiny_gpt2, tiny_gemma):
    assert architecture_family(tiny_gpt2) == "gpt2"
    assert architecture_family(tiny_gemma) == "gemma"
    assert {s.point for s in default_sites(tiny_gpt2, "aura")} == {"mlp_pre", "mlp_out"}
    assert {s.point for s in default_sites(tiny_gpt2, "linear_act")} == {"ln1", "ln2"}
    assert {s.point for s in default_sites(tiny_gemma, "linear_act")} == {"attn_out", "mlp_out"}
    assert default_sites(tiny_gemma, "actadd") == [Site(1, "resid_pre")]
    for method in ["aura", "det0", "damp", "mean_shift", "iti", "linear_act", "lineas"]:
        sites = default_sites(tiny_gemma, method)
        assert sites == sorted(sites) and sites
    with pytest.raises(SiteError, match="unknown method 'nope'"):
        default_sites(tiny_gemma, "nope")


@pytest.mark.parametrize("bad", [None, 3, 2.5])
def test_site_parse_of_a_non_string_names_it(bad):
    with pytest.raises(SiteError, match="a site is a string such as 'L3.mlp_post', got"):
        Site.parse(bad)


def test_tensor_key_round_trip():
    for site in (Site(0, "mlp_out"), Site(11, "attn_z"), Site(3, "ln2")):
        for name in ("omega", "base_bias"):
            assert Site.from_key(site.key(name)) == (site, name)
    assert Site(3, "mlp_out").key("omega") == "3_mlp_out__omega"  # the saved format
    for bad in ("omega", "x_mlp_out__omega", "3_mlp_out", "3_mlp_out__", "3_nope__omega"):
        with pytest.raises(SiteError):
            Site.from_key(bad)
