"""DSAS fit steps: base choice and preparation, control checks, probe gates (arXiv 2512.03661)."""

from __future__ import annotations

from collections import Counter

import torch
from transformer_lens import HookedTransformer

from ..collection import validate_lengths, validate_texts
from ..sites import Site
from ..store import ActivationStore
from ..tokens import token_ids
from .base import REGISTRY, Steerer, SteerError, make
from .dsas_e2e import identity_lineas
from .probe import fit_gate


def _count(data) -> int:
    return data.n if isinstance(data, ActivationStore) else len(data)


def base_method(config) -> str:
    """The method DSAS wraps: the given base's, else ``base_method`` (default ``mean_shift``;
    with ``e2e`` ``lineas``, the only one E2E trains)."""
    name = config.base_method or ("lineas" if config.e2e else "mean_shift")
    if config.base is not None:
        if config.base_method not in (None, config.base.method):
            raise SteerError(f"base_method={config.base_method!r} contradicts the given "
                             f"{config.base.method} base")
        name = config.base.method
    if name not in REGISTRY or (config.e2e and name != "lineas"):
        raise SteerError(f"dsas cannot use base method {name!r}"
                         + (" (e2e trains lineas maps)" if config.e2e else ""))
    return name


class DsasFitSteps(Steerer):
    """Mixin for :class:`~steerinterp.steer.dsas.Dsas`: the steps its ``fit`` runs, reading
    its ``config``, ``base`` and ``_fits_base`` and writing ``base``, ``probe`` and the gates."""

    def _control(self, source, target, control):
        if control is None and self.config.target_as_control:
            control = target
        if control is None:
            raise SteerError("dsas needs a control set (neutral text the gate must leave "
                             "alone): pass control=..., or make('dsas', target_as_control=True) "
                             "to use the target set")
        if _count(control) == 0:
            raise SteerError("dsas control set is empty")
        if all(isinstance(d, (list, tuple)) for d in (source, control)) \
                and Counter(source) == Counter(control):
            raise SteerError("dsas control texts are the same as the source texts: the probe "
                             "has nothing to separate")
        return control

    def _prepare_base(self, model: HookedTransformer, source, target) -> None:
        """Check the given base, or fit ``base_method`` (e2e: fresh identity LinEAS maps)."""
        cfg = self.config
        if self._fits_base:
            opts = dict(sites=cfg.sites, max_tokens=cfg.max_tokens, batch_size=cfg.batch_size)
            if not cfg.e2e:
                self.base = make(cfg.base_method, **opts).fit(model, source, target)
                return
            self.base = identity_lineas(model, cfg, opts)
            return
        if cfg.sites is not None:
            raise SteerError("dsas steers its base's sites; do not pass sites= with a base")
        if not self.base.fitted:
            raise SteerError(f"the dsas base ({self.base.method}) is not fitted; fit it first")
        try:
            self.base.check_model(model)
        except SteerError as err:
            raise SteerError(f"dsas base: {err}") from None

    def _fit_gates(self, src: ActivationStore, ctl: ActivationStore, sites: list[Site]) -> None:
        """One probe gate per site, source (1) vs control (0); a site whose held-out accuracy is
        below ``threshold`` is inactive and its gate is zero."""
        if all(torch.equal(src[s], ctl[s]) for s in sites):
            raise SteerError("dsas control activations are identical to the source's: the "
                             "probe has nothing to separate")
        for site in sites:
            u, c, stats = fit_gate(src[site], ctl[site], self.config.n_components,
                                   self.config.C, self.config.val_fraction, self.config.seed)
            active = stats["accuracy"] >= self.config.threshold
            self.probe[str(site)] = dict(stats, active=active)
            self.set_tensor(site, "u", u if active else torch.zeros_like(u))
            self.set_tensor(site, "c", torch.tensor(c if active else 0.0))

    def _ids(self, model: HookedTransformer, texts) -> list[list[int]]:
        texts = validate_texts(texts)
        ids = token_ids(model, texts, self.config.max_tokens)
        validate_lengths(ids, texts, True, self.config.max_tokens)
        return ids
