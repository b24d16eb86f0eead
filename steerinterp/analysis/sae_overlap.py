"""Steering seen through a sparse autoencoder: which SAE features a steering map moves along,
which features it suppresses on the source concept (and on target text), and whether
different methods suppress the same features (DESIGN.md §1, "SAE overlap").

Everything is read at one site that the steerer touches, in a run steered by that steerer
(earlier sites steered too): ``unsteered`` is the map's input at the site, ``steered`` its
output, so the shift is the site's own edit. The first token of every text (BOS, or an
attention sink) is left out. SAEs come from :mod:`steerinterp.analysis.sae_train` or SAELens.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import pandas as pd
import torch
from jaxtyping import Float
from transformer_lens import HookedTransformer

from ..collection import collect, validate_texts
from ..hooks import recording
from ..sites import Site
from ..steer.apply import steered
from ..steer.base import Steerer
from ..tokens import ids_with_next_token, pad_left
from ..steer.base import check_sites

ALIGN_COLUMNS = ["site", "feature", "cosine", "abs_cosine", "rank", "shift_norm", "d_in"]
CHANGE_COLUMNS = ["site", "feature", "text_set", "mean_unsteered", "mean_steered", "change",
                  "rank"]
OVERLAP_COLUMNS = ["method_a", "method_b", "text_set", "k", "n_a", "n_b", "n_both", "jaccard"]
TOKEN_COLUMNS = ["feature", "rank", "token", "context", "activation", "text_id", "position"]


@dataclass
class SaeOverlap:
    """Frames of :func:`sae_overlap`, each with a leading ``method`` column where per method."""

    alignment: pd.DataFrame  # method + ALIGN_COLUMNS
    changes: pd.DataFrame  # method + CHANGE_COLUMNS
    overlap: pd.DataFrame  # OVERLAP_COLUMNS
    top_tokens: pd.DataFrame  # TOKEN_COLUMNS


# --------------------------------------------------------------------------- checks


def check_sae(sae, model: HookedTransformer, site: Site) -> None:
    """Refuse an SAE that is not a SAELens ``SAE`` or does not read ``site`` (hook and width);
    an SAE without a recorded hook (hand-built) is checked on width alone."""
    _require_sae(sae)
    width, hook = site.width(model), sae.cfg.metadata.hook_name
    if hook is not None and hook != site.hook_name:
        raise ValueError(f"the SAE was trained at hook {hook!r}, but the site is {site} "
                         f"({site.hook_name!r})")
    if sae.cfg.d_in != width:
        raise ValueError(f"the SAE has d_in {sae.cfg.d_in}, but site {site} has width {width} "
                         f"on {model.cfg.model_name}")


def _require_sae(sae) -> None:
    from sae_lens import SAE

    if not isinstance(sae, SAE):
        raise TypeError(f"expected a sae_lens SAE, got {type(sae).__name__}")


def resolve_site(model: HookedTransformer, sae, site=None,
                 steerer: Steerer | None = None) -> Site:
    """``site`` (default: the SAE's recorded hook), checked against the SAE and, when given,
    against the sites ``steerer`` touches."""
    _require_sae(sae)
    if site is None:
        hook = sae.cfg.metadata.hook_name
        if hook is None:
            raise ValueError("the SAE records no hook; pass site= (e.g. 'L6.mlp_out')")
        site = hook
    site = Site.parse(site).validate(model)
    if steerer is not None:
        if not isinstance(steerer, Steerer):
            raise TypeError(f"expected a fitted Steerer, got {type(steerer).__name__}")
        steerer.check_model(model)
        check_sites([site], steerer.sites, f"the {steerer.method} steerer")
    check_sae(sae, model, site)
    return site


def text_ids(model: HookedTransformer, texts: Sequence[str], max_tokens: int) -> list[list[int]]:
    """Token ids of ``texts``; each needs a token after the first (BOS) one."""
    return ids_with_next_token(model, validate_texts(texts), max_tokens,
                               "the SAE analysis needs at least one")


# --------------------------------------------------------------------------- activations


@torch.inference_mode()
def site_pair(model: HookedTransformer, steerer: Steerer, site: Site, ids: list[list[int]],
              strength: float | None = None, batch_size: int = 16
              ) -> tuple[Float[torch.Tensor, "n d"], Float[torch.Tensor, "n d"]]:
    """Input and output of ``steerer``'s map at ``site`` for every token after the first,
    in a run steered by ``steerer`` (float32, CPU, texts in order)."""
    ins, outs = [], []
    for start in range(0, len(ids), batch_size):
        batch = pad_left(model, ids[start:start + batch_size], skip_first=True)
        got: dict[str, torch.Tensor] = {}

        def read(key: str):
            def keep(_site: Site, units: torch.Tensor) -> None:
                got[key] = units[batch.pool_mask].float().cpu()
            return keep

        # hooks.py's ordering rule: "in" is entered before steered() and reads the map's
        # input, "out" after it and reads its output.
        with (recording(model, [site], read("in")), steered(model, steerer, strength=strength),
              recording(model, [site], read("out"))):
            model(batch.tokens, attention_mask=batch.attention_mask,
                  stop_at_layer=site.layer + 1)
        ins.append(got["in"])
        outs.append(got["out"])
    return torch.cat(ins), torch.cat(outs)


@torch.inference_mode()
def encode(sae, model: HookedTransformer, acts: Float[torch.Tensor, "n d"],
           keep: list[int] | None = None, chunk: int = 2048) -> Float[torch.Tensor, "n f"]:
    """SAE feature activations of ``acts`` (float32, CPU), all features or those in ``keep``;
    ``chunk`` rows at a time so memory stays at ``chunk × d_sae``."""
    out = []
    for start in range(0, acts.shape[0], chunk):
        x = acts[start:start + chunk].to(sae.W_dec.device)
        if sae.cfg.reshape_activations == "hook_z":  # such SAEs take [.., heads, d_head]
            x = x.unflatten(-1, (model.cfg.n_heads, model.cfg.d_head))
        f = sae.encode(x).float()
        out.append((f if keep is None else f[:, keep]).cpu())
    return torch.cat(out)


# --------------------------------------------------------------------------- frames


def alignment_frame(shift: Float[torch.Tensor, " d"], w_dec: Float[torch.Tensor, "d_sae d"],
                    site: Site | str) -> pd.DataFrame:
    """Cosine of ``shift`` with each decoder direction; ``rank`` 1 = largest ``|cosine|``."""
    norm = float(shift.norm())
    if not norm > 0:
        raise ValueError(f"the steering shift at {site} is zero (strength 0, or a map that "
                         "leaves these texts unchanged): no direction to compare")
    cos = torch.nn.functional.cosine_similarity(w_dec.detach().float().cpu(),
                                                shift.float().cpu()[None], dim=-1)
    df = pd.DataFrame({"site": str(site), "feature": range(len(cos)), "cosine": cos.numpy(),
                       "abs_cosine": cos.abs().numpy(), "shift_norm": norm,
                       "d_in": int(shift.shape[-1])})
    df["rank"] = df["abs_cosine"].rank(ascending=False, method="first").astype(int)
    return df[ALIGN_COLUMNS].sort_values("rank", ignore_index=True)


def change_frame(before: Float[torch.Tensor, " d_sae"], after: Float[torch.Tensor, " d_sae"],
                 site: Site | str, text_set: str) -> pd.DataFrame:
    """Mean feature activation before/after steering; ``rank`` 1 = most suppressed."""
    df = pd.DataFrame({"site": str(site), "feature": range(len(before)), "text_set": text_set,
                       "mean_unsteered": before.numpy(), "mean_steered": after.numpy()})
    df["change"] = df["mean_steered"] - df["mean_unsteered"]
    df["rank"] = df["change"].rank(method="first").astype(int)
    return df[CHANGE_COLUMNS].sort_values("rank", ignore_index=True)


def shift_alignment(model: HookedTransformer, steerer: Steerer, sae, texts: Sequence[str],
                    site=None, strength: float | None = None, max_tokens: int = 64,
                    batch_size: int = 16) -> pd.DataFrame:
    """How the steering shift at ``site`` lines up with the SAE's decoder directions.

    The shift is ``steered − unsteered`` at the site averaged over the tokens of ``texts``
    (the source concept). One row per SAE feature, sorted by ``rank``: ``site``, ``feature``,
    ``cosine`` (with the feature's decoder row), ``abs_cosine``, ``rank`` (1 = largest
    ``|cosine|``), ``shift_norm`` (L2 norm of the mean shift), ``d_in`` (a random direction
    has ``|cosine|`` of order ``1/sqrt(d_in)``). ``site`` defaults to the SAE's hook.
    """
    site = resolve_site(model, sae, site, steerer)
    z_in, z_out = site_pair(model, steerer, site, text_ids(model, texts, max_tokens),
                            strength, batch_size)
    return alignment_frame((z_out - z_in).mean(0), sae.W_dec, site)


def _changes(model: HookedTransformer, sae, site: Site, pairs: Mapping[str, tuple]
             ) -> pd.DataFrame:
    frames = [change_frame(encode(sae, model, z_in).mean(0), encode(sae, model, z_out).mean(0),
                           site, name) for name, (z_in, z_out) in pairs.items()]
    return pd.concat(frames, ignore_index=True)


def feature_changes(model: HookedTransformer, steerer: Steerer, sae,
                    source_texts: Sequence[str], target_texts: Sequence[str], site=None,
                    strength: float | None = None, max_tokens: int = 64,
                    batch_size: int = 16) -> pd.DataFrame:
    """Which SAE features steering suppresses or raises, on source and on target text.

    One row per feature × ``text_set`` (``source`` / ``target``), sorted by text set and rank:
    ``site``, ``feature``, ``text_set``, ``mean_unsteered`` / ``mean_steered`` (feature
    activation on the map's input / output, mean over the set's tokens), ``change``
    (steered − unsteered), ``rank`` (within the text set; 1 = most suppressed, the last
    ranks are the most raised).
    """
    site = resolve_site(model, sae, site, steerer)
    pairs = {name: site_pair(model, steerer, site, text_ids(model, texts, max_tokens),
                             strength, batch_size)
             for name, texts in (("source", source_texts), ("target", target_texts))}
    return _changes(model, sae, site, pairs)


def suppressed(changes: pd.DataFrame, k: int, text_set: str = "source") -> list[int]:
    """The (at most) ``k`` features a :func:`feature_changes` frame suppresses most."""
    sub = changes[(changes["text_set"] == text_set) & (changes["change"] < 0)]
    return [int(f) for f in sub.nsmallest(k, "change")["feature"]]


def raised(changes: pd.DataFrame, k: int, text_set: str = "source") -> list[int]:
    """The (at most) ``k`` features a :func:`feature_changes` frame raises most."""
    sub = changes[(changes["text_set"] == text_set) & (changes["change"] > 0)]
    return [int(f) for f in sub.nlargest(k, "change")["feature"]]


def feature_set_overlap(frames: Mapping[str, pd.DataFrame], k: int = 20,
                        text_set: str = "source") -> pd.DataFrame:
    """Jaccard overlap of the top-``k`` suppressed feature sets of methods.

    ``frames``: ``{method: feature_changes frame}`` (all at one site of one SAE). One row per
    ordered pair of methods, diagonal included: ``method_a``, ``method_b``, ``text_set``,
    ``k``, ``n_a`` / ``n_b`` (set sizes: fewer than ``k`` when fewer features go down),
    ``n_both`` (shared features), ``jaccard`` (``n_both / |A ∪ B|``; NaN if both are empty).
    """
    if not isinstance(frames, Mapping) or not frames:
        raise ValueError("frames must be a non-empty dict {method name: feature_changes frame}")
    if int(k) != k or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    for name, df in frames.items():
        missing = sorted(set(CHANGE_COLUMNS) - set(df.columns))
        if missing:
            raise ValueError(f"frame {name!r} lacks column(s) {missing} of a feature_changes "
                             "frame")
    sites = {s for df in frames.values() for s in df["site"].unique()}
    if len(sites) > 1:
        raise ValueError(f"frames come from several sites {sorted(sites)}: feature indices of "
                         "different SAEs cannot be compared")
    sets = {name: set(suppressed(df, int(k), text_set)) for name, df in frames.items()}
    rows = []
    for a, set_a in sets.items():
        for b, set_b in sets.items():
            union = len(set_a | set_b)
            rows.append({"method_a": a, "method_b": b, "text_set": text_set, "k": int(k),
                         "n_a": len(set_a), "n_b": len(set_b), "n_both": len(set_a & set_b),
                         "jaccard": len(set_a & set_b) / union if union else float("nan")})
    return pd.DataFrame(rows, columns=OVERLAP_COLUMNS)


# --------------------------------------------------------------------------- features


def _piece(tokenizer, token_id: int) -> str:
    return tokenizer.decode([int(token_id)], clean_up_tokenization_spaces=False)


def _context(tokenizer, ids: list[int], pos: int, before: int = 6, after: int = 2) -> str:
    """The token at ``pos`` in «», with a few tokens around it (the first token left out)."""
    left = "".join(_piece(tokenizer, t) for t in ids[max(1, pos - before):pos])
    right = "".join(_piece(tokenizer, t) for t in ids[pos + 1:pos + 1 + after])
    return f"{left}«{_piece(tokenizer, ids[pos])}»{right}".replace("\n", " ")


def _check_features(features, d_sae: int) -> list[int]:
    features = [features] if isinstance(features, int) else list(features)
    bad = [f for f in features if isinstance(f, bool) or int(f) != f or not 0 <= f < d_sae]
    if not features or bad:
        raise ValueError(f"features must be indices in [0, {d_sae}); got {bad or 'none'}")
    return [int(f) for f in dict.fromkeys(features)]


def feature_top_tokens(model: HookedTransformer, sae, features, texts: Sequence[str],
                       n: int = 5, site=None, max_tokens: int = 64, batch_size: int = 16,
                       one_per_text: bool = True) -> pd.DataFrame:
    """The tokens of ``texts`` on which each of ``features`` fires most (unsteered model).

    ``one_per_text`` keeps only each text's strongest token, so one long text on a single
    topic cannot fill every rank. Up to ``n`` rows per feature (only tokens where it is
    active), sorted by feature and rank:
    ``feature``, ``rank`` (1 = highest activation), ``token`` (decoded), ``context`` (a few
    tokens around it, the token in «»), ``activation``, ``text_id`` (index into ``texts``),
    ``position`` (token index, BOS = 0; the first token is never read).
    """
    site = resolve_site(model, sae, site)
    features = _check_features(features, sae.cfg.d_sae)
    if int(n) != n or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    ids = text_ids(model, texts, max_tokens)
    store = collect(model, list(texts), [site], pool="none", batch_size=batch_size,
                    max_tokens=max_tokens, progress=False)
    acts = encode(sae, model, store[site], keep=features)
    # collect() keeps every token after the first, text by text, in order.
    where = [(i, p) for i, x in enumerate(ids) for p in range(1, len(x))]
    rows = []
    for j, feature in enumerate(features):
        values, order = acts[:, j].sort(descending=True)
        seen: set[int] = set()
        for v, r in zip(values.tolist(), order.tolist()):
            i, p = where[r]
            if v <= 0 or len(seen) == n:
                break
            key = i if one_per_text else r
            if key in seen:
                continue
            seen.add(key)
            rows.append({"feature": feature, "rank": len(seen), "token": _piece(
                model.tokenizer, ids[i][p]), "context": _context(model.tokenizer, ids[i], p),
                "activation": v, "text_id": i, "position": p})
    return pd.DataFrame(rows, columns=TOKEN_COLUMNS)


def feature_labels(top_tokens: pd.DataFrame, n: int = 3) -> dict[int, str]:
    """``{feature: "f12 · tok | tok | tok"}`` from a :func:`feature_top_tokens` frame, for
    plot labels; features without tokens are left out (plots then show ``f12``)."""
    out = {}
    for feature, sub in top_tokens.sort_values("rank").groupby("feature"):
        toks = [repr(t.strip())[1:-1] or "␣" for t in sub["token"].head(n)]
        out[int(feature)] = f"f{feature} · " + " | ".join(dict.fromkeys(toks))
    return out


# --------------------------------------------------------------------------- entry point


def _named(steerers) -> dict[str, Steerer]:
    if isinstance(steerers, Steerer):
        return {steerers.method: steerers}
    if not isinstance(steerers, Mapping) or not steerers:
        raise ValueError("steerers must be a fitted Steerer or a non-empty dict "
                         "{name: Steerer}")
    return dict(steerers)


def sae_overlap(model: HookedTransformer, steerers: Mapping[str, Steerer] | Steerer, sae,
                source_texts: Sequence[str], target_texts: Sequence[str], k: int = 20,
                site=None, strength: float | None = None, n_tokens: int = 5,
                token_texts: Sequence[str] | None = None, max_tokens: int = 64,
                batch_size: int = 16) -> SaeOverlap:
    """All SAE-overlap frames for one or several steerers (``{name: steerer}``; a single
    steerer is named by its method) at one site (default: the SAE's hook; every steerer must
    touch it).

    * ``alignment``: ``method`` + :func:`shift_alignment` columns (shift over source tokens);
    * ``changes``: ``method`` + :func:`feature_changes` columns;
    * ``overlap``: :func:`feature_set_overlap` of the top-``k`` suppressed source features;
    * ``top_tokens``: :func:`feature_top_tokens` (``n_tokens`` per feature, on the unsteered
      model) for every feature among some method's top-``k`` suppressed, raised or aligned
      ones, read on ``token_texts`` (default ``source_texts + target_texts``; ``text_id``
      indexes that list). More varied texts give more telling tokens.

    ``strength`` overrides each steerer's configured λ.
    """
    named = _named(steerers)
    sites = {name: resolve_site(model, sae, site, s) for name, s in named.items()}
    site = next(iter(sites.values()))
    ids = {"source": text_ids(model, source_texts, max_tokens),
           "target": text_ids(model, target_texts, max_tokens)}
    align, changes = {}, {}
    for name, steerer in named.items():
        pairs = {key: site_pair(model, steerer, site, x, strength, batch_size)
                 for key, x in ids.items()}
        z_in, z_out = pairs["source"]
        align[name] = alignment_frame((z_out - z_in).mean(0), sae.W_dec, site)
        changes[name] = _changes(model, sae, site, pairs)
    features = sorted({f for name in named for f in suppressed(changes[name], k)
                       + raised(changes[name], k) + align[name]["feature"].head(k).tolist()})
    token_texts = [*source_texts, *target_texts] if token_texts is None else token_texts
    tokens = feature_top_tokens(model, sae, features, token_texts, n_tokens, site, max_tokens,
                                batch_size)
    return SaeOverlap(
        alignment=pd.concat([df.assign(method=m) for m, df in align.items()], ignore_index=True)
        [["method", *ALIGN_COLUMNS]],
        changes=pd.concat([df.assign(method=m) for m, df in changes.items()], ignore_index=True)
        [["method", *CHANGE_COLUMNS]],
        overlap=feature_set_overlap(changes, k), top_tokens=tokens)
