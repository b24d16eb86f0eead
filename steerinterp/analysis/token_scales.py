"""Which tokens trigger steering: DSAS's per-token, per-site gate ``s(z) ∈ [0, 1]``
(DSAS, arXiv 2512.03661; METHODS.md §6: "the per-token scales s also give an
interpretability read-out").

The gates are read as inference sees them: on each site's incoming activation during a run
steered by the DSAS itself.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from transformer_lens import HookedTransformer

from ..collection import validate_texts
from ..hooks import last_layer, recording
from ..sites import Site
from ..steer.dsas import Dsas
from ..steer.apply import steered
from ..tokens import ids_with_next_token, pad_left, token_ids
from ..steer.base import check_sites

TOKEN_COLUMNS = ["text_id", "position", "token", "is_first", "site", "layer", "point", "scale"]
GROUP_COLUMNS = ["group", "site", "layer", "point", "active", "mean_scale", "se", "n_texts",
                 "n_tokens"]


def _check_texts(model: HookedTransformer, texts, max_tokens: int) -> list[str]:
    texts = validate_texts(texts)
    ids_with_next_token(model, texts, max_tokens, "token scales need at least one")
    return texts


@torch.no_grad()
def _gate_rows(model: HookedTransformer, dsas: Dsas, texts: list[str],
               strength: float | None) -> pd.DataFrame:
    """Per-token gates (``example``, ``position``, ``token``, ``site``, ``scale``), read as
    inference sees them: on each site's incoming activation during a run steered by ``dsas``
    at ``strength``."""
    ids = token_ids(model, validate_texts(texts), dsas.config.max_tokens)
    rows, bs = [], dsas.config.batch_size
    for start in range(0, len(ids), bs):
        chunk = ids[start:start + bs]
        batch = pad_left(model, chunk, skip_first=False)
        seen: dict[Site, torch.Tensor] = {}

        def read(site: Site, units: torch.Tensor) -> None:
            seen[site] = dsas.gate(units.float(), site).cpu()

        # Entered before steered(): the gates read each site's incoming activation.
        with recording(model, dsas.sites, read), steered(model, dsas, strength=strength):
            model(batch.tokens, attention_mask=batch.attention_mask,
                  stop_at_layer=last_layer(dsas.sites))
        width = batch.tokens.shape[1]
        for i, x in enumerate(chunk):
            toks = [model.tokenizer.decode([t]) for t in x]
            for site in dsas.sites:
                vals = seen[site][i, width - len(x):].tolist()
                rows += [{"example": start + i, "position": p, "token": toks[p],
                          "site": str(site), "scale": v} for p, v in enumerate(vals)]
    return pd.DataFrame(rows, columns=["example", "position", "token", "site", "scale"])


def token_scales(model: HookedTransformer, dsas: Dsas, texts: Sequence[str],
                 max_tokens: int = 64, batch_size: int = 16, strength: float | None = None,
                 sites=None) -> pd.DataFrame:
    """DSAS gate per text × token × site, one row each (padding never appears):

    * ``text_id`` (index into ``texts``), ``position`` (token index, first token = 0),
      ``token`` (decoded string), ``is_first`` (the first token: BOS on models that prepend
      one; its attention-sink activation makes its gate uninformative, so summaries skip it);
    * ``site``, ``layer``, ``point``; ``scale`` ∈ [0, 1] (0 everywhere at an inactive site).

    Texts are cut to ``min(max_tokens, dsas.config.max_tokens)`` tokens (BOS counted);
    ``batch_size`` texts run per forward pass. ``strength`` is the λ of the steered run the
    gates are read in (default: the configured one; 0 reads them on the untouched model).
    """
    if not isinstance(dsas, Dsas):
        raise TypeError(f"token_scales reads DSAS gates; got a {type(dsas).__name__} steerer "
                        "(wrap it: make('dsas', base=steerer).fit(model, source, control=...))")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    dsas.check_model(model)
    keep = {str(s) for s in check_sites(sites, dsas.sites, "the dsas steerer")}
    texts = _check_texts(model, texts, max_tokens)
    frames = []
    for start in range(0, len(texts), batch_size):
        df = _gate_rows(model, dsas, texts[start:start + batch_size], strength)
        # Positions depend only on earlier tokens (causal model), so cutting after the run
        # equals cutting the texts before it.
        frames.append(df[(df["position"] < max_tokens) & df["site"].isin(keep)]
                      .assign(example=df["example"] + start))
    out = pd.concat(frames, ignore_index=True).rename(columns={"example": "text_id"})
    parsed = {s: Site.parse(s) for s in out["site"].unique()}
    out = out.assign(is_first=out["position"] == 0,
                     layer=out["site"].map(lambda s: parsed[s].layer),
                     point=out["site"].map(lambda s: parsed[s].point))
    return out[TOKEN_COLUMNS].reset_index(drop=True)


def summarise_scales(df: pd.DataFrame, include_first: bool = False,
                     active: Mapping[str, bool] | None = None) -> pd.DataFrame:
    """Mean gate per (``group``, ``site``) of a :func:`token_scales` frame with a ``group``
    column; columns as :func:`mean_scale_by_site`.

    Tokens of one text are correlated, so the text is the unit: ``mean_scale`` is the mean of
    per-text mean scales and ``se`` its standard error over texts (NaN with one text).
    """
    missing = sorted((set(TOKEN_COLUMNS) - {"token"} | {"group"}) - set(df.columns))
    if missing:
        raise ValueError(f"summarise_scales needs columns {missing}")
    if not include_first:
        df = df[~df["is_first"]]
    per_text = (df.groupby(["group", "site", "layer", "point", "text_id"], sort=False)["scale"]
                .agg(["mean", "size"]).reset_index())
    out = (per_text.groupby(["group", "site", "layer", "point"], sort=False)
           .agg(mean_scale=("mean", "mean"), sd=("mean", "std"), n_texts=("mean", "size"),
                n_tokens=("size", "sum")).reset_index())
    out["se"] = out["sd"] / np.sqrt(out["n_texts"])
    out["active"] = out["site"].map(lambda s: bool((active or {}).get(s, True)))
    return out[GROUP_COLUMNS]


def mean_scale_by_site(model: HookedTransformer, dsas: Dsas,
                       texts_by_group: Mapping[str, Sequence[str]], max_tokens: int = 64,
                       batch_size: int = 16, strength: float | None = None, sites=None,
                       include_first: bool = False) -> pd.DataFrame:
    """Mean DSAS gate per text group (e.g. ``{"toxic": ..., "neutral": ...}``) and site.

    Columns: ``group``, ``site``, ``layer``, ``point``, ``active`` (the site's probe passed the
    accuracy threshold), ``mean_scale`` (mean over texts of each text's mean gate), ``se``
    (its standard error over texts), ``n_texts``, ``n_tokens`` (tokens averaged; the first
    token is left out unless ``include_first``). Other arguments as :func:`token_scales`.
    """
    if not isinstance(texts_by_group, Mapping) or not texts_by_group:
        raise ValueError("texts_by_group must be a non-empty dict {group name: texts}")
    frames = [token_scales(model, dsas, texts, max_tokens, batch_size, strength, sites)
              .assign(group=str(name)) for name, texts in texts_by_group.items()]
    active = {k: bool(v.get("active", False)) for k, v in dsas.probe.items()}
    return summarise_scales(pd.concat(frames, ignore_index=True), include_first, active)
