"""LinEAS read-outs: support, loss curve, held-out W2, snapshots (Rodriguez et al., NeurIPS'25)."""

from __future__ import annotations

import pandas as pd
import torch
from transformer_lens import HookedTransformer

from ..collection import collect, validate_texts
from ..train import plateau, w2_matched
from .apply import steered
from .base import Steerer, SteerError

SUPPORT_THRESHOLD = 1e-5  # reference lineas.yaml: sparsity_threshold


class LineasReport(Steerer):
    """Mixin for :class:`~steerinterp.steer.lineas.Lineas`: what a fitted LinEAS reports about
    its maps (``omega``, ``bias`` per site) and its training (``loss_curve``, saved with it).
    :meth:`at_snapshot` copies the steerer with the method's ``_like``."""

    # Steps after which fit() keeps a copy of the maps (``snapshots``, in memory only): the
    # convergence curves of ``analysis.convergence`` read them with :meth:`at_snapshot`.
    snapshot_at: tuple[int, ...] = ()

    def _snapshot(self, step: int) -> None:
        if step in self.snapshot_at:
            self.snapshots[step] = {(site, name): self.tensor(site, name).detach().cpu().clone()
                                    for site in self.sites for name in ("omega", "bias")}

    def at_snapshot(self, step: int) -> LineasReport:
        """A copy of this steerer with the maps it had after training step ``step``."""
        snaps = getattr(self, "snapshots", {})
        if step not in snaps:
            raise SteerError(f"no snapshot at step {step}; this fit kept {sorted(snaps)} "
                             "(set snapshot_at before fit)")
        copy = self._like(self)
        copy.loss_curve = getattr(self, "loss_curve", [])[:step]
        for (site, name), value in snaps[step].items():
            copy.set_tensor(site, name, value)
        return copy.to(self.tensor(self.sites[0], "omega").device)

    # -- read-outs ---------------------------------------------------------------------------
    def support(self, threshold: float = SUPPORT_THRESHOLD) -> pd.DataFrame:
        """Per site: ``support`` (share of units with |ω − 1| or |b| above ``threshold``, the
        reference's 1e-5), ``omega_norm`` (‖ω − 1‖₂), ``bias_norm`` (‖b‖₂) and ``group_norm``
        (their sum)."""
        rows = []
        for site in self.sites:
            dw = self.tensor(site, "omega").detach() - 1.0
            b = self.tensor(site, "bias").detach()
            on = (dw.abs() > threshold) | (b.abs() > threshold)
            rows.append({"site": str(site), "layer": site.layer, "point": site.point,
                         "support": on.float().mean().item(),
                         "omega_norm": dw.norm().item(), "bias_norm": b.norm().item(),
                         "group_norm": (dw.norm() + b.norm()).item()})
        return pd.DataFrame(rows)

    def loss_frame(self) -> pd.DataFrame:
        """The training curve (``step``, ``lr``, ``loss``, ``w2``)."""
        return pd.DataFrame(getattr(self, "loss_curve", []))

    def plateau(self) -> dict:
        """Whether the loss levelled off: :func:`steerinterp.train.plateau` on the curve."""
        return plateau(getattr(self, "loss_curve", []))

    def heldout_w2(self, model: HookedTransformer, source, target) -> pd.DataFrame:
        """The per-site loss on held-out data: per site, the mean over units of the squared W2
        (quantile-matched, as in training) between mean-pooled ``source`` texts and the
        untouched model's ``target`` (texts or a store): ``w2_unsteered``, ``w2_steered``
        (this map at its strength) and ``ratio`` (steered / unsteered; < 1: moved closer)."""
        self.check_model(model)
        sites = self.sites
        tgt = self.as_store(model, target, sites, "target")
        opts = dict(pool="mean", max_tokens=self.config.max_tokens,
                    batch_size=self.config.batch_size, progress=False)
        texts = validate_texts(source)
        before = collect(model, texts, sites, **opts)
        with torch.no_grad(), steered(model, self):
            after = collect(model, texts, sites, **opts)
        rows = []
        for s in sites:
            w0 = w2_matched(before[s].float(), tgt[s].float()).mean().item()
            w1 = w2_matched(after[s].float(), tgt[s].float()).mean().item()
            rows.append({"site": str(s), "layer": s.layer, "point": s.point,
                         "w2_unsteered": w0, "w2_steered": w1,
                         "ratio": w1 / w0 if w0 > 0 else float("nan")})
        return pd.DataFrame(rows)

    def extra_state(self) -> dict:
        return {"loss_curve": getattr(self, "loss_curve", [])}

    def load_extra_state(self, state: dict) -> None:
        self.loss_curve = state.get("loss_curve", [])
