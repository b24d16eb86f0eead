"""Model construction: the only module that builds a ``HookedTransformer``.

``load_model(name)`` returns a model loaded *without* weight processing (no LayerNorm folding,
no centering, no value-bias folding) so that hook values equal the HuggingFace module outputs the
papers' maps are defined on (METHODS.md §2). What was loaded is recorded on the model
(:mod:`.provenance`) and copied into every store and steerer.
"""

from __future__ import annotations

import contextlib
import os
import socket
import tempfile
import warnings
from pathlib import Path
from urllib.parse import urlparse

import torch
from tokenizers import Tokenizer, decoders, pre_tokenizers
from tokenizers import models as tk_models
from transformer_lens import HookedTransformer, HookedTransformerConfig
from transformer_lens import loading_from_pretrained as tl_loading
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast

from .assets import ASSETS, cache_dir, ensure_hf_copy, hf_cache_path
from .errors import ModelUnavailable
from .provenance import NO_PROCESSING, ModelInfo, _attach_info, model_info

__all__ = ["DEFAULT_MODEL", "NO_PROCESSING", "OFFLINE_MODELS", "ModelInfo", "ModelUnavailable",
           "cache_dir", "hf_cache_path", "load_model", "model_info", "prepare_model_cache",
           "resolve_dtype", "tiny_model"]

def _byte_tokenizer() -> PreTrainedTokenizerFast:
    """A 259-token byte-level tokenizer (pad/bos/eos + 256 bytes) built without any download.

    Saved once to the cache and reloaded from there, because TransformerLens re-opens a
    tokenizer by its ``name_or_path`` to make a BOS-adding copy.
    """
    path = cache_dir() / "tiny-byte-tokenizer"
    if not (path / "tokenizer.json").exists():
        vocab = {"<pad>": 0, "<bos>": 1, "<eos>": 2}
        for i, ch in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet())):
            vocab[ch] = 3 + i
        tk = Tokenizer(tk_models.BPE(vocab=vocab, merges=[]))
        tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tk.decoder = decoders.ByteLevel()
        tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<bos>",
                                      eos_token="<eos>", pad_token="<pad>")
        with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
            tok.save_pretrained(tmp)
            try:
                os.replace(tmp, path)  # atomic: concurrent test workers never see half a dir
            except OSError:
                pass  # another process won the race; its copy is identical
            Path(tmp).mkdir(exist_ok=True)  # TemporaryDirectory cleanup expects it
    return PreTrainedTokenizerFast.from_pretrained(str(path))


def tiny_model(arch: str = "gpt2", seed: int = 0, n_layers: int = 2, d_model: int = 32,
               dtype: torch.dtype = torch.float32) -> HookedTransformer:
    """A small random model for fast tests, without any download.

    ``arch="gpt2"``: LayerNorm, GELU, learned positions (GPT-2 shape).
    ``arch="gemma"``: RMSNorm before and after each sub-block, gated MLP, rotary, grouped-query
    attention with q/k norms (Gemma-3 shape). Both use a 259-token byte vocabulary so
    ``steerinterp.data`` helpers can tokenize text with :func:`tokenize`.
    """
    common = dict(n_layers=n_layers, d_model=d_model, n_ctx=128, d_head=8,
                  n_heads=d_model // 8, d_vocab=259, seed=seed, d_mlp=2 * d_model, dtype=dtype)
    if arch == "gpt2":
        cfg = HookedTransformerConfig(
            **common, act_fn="gelu_new", normalization_type="LN",
            positional_embedding_type="standard", original_architecture="GPT2LMHeadModel",
            default_prepend_bos=True, model_name="tiny-gpt2")
    elif arch == "gemma":
        cfg = HookedTransformerConfig(
            **common, act_fn="gelu_pytorch_tanh", normalization_type="RMS",
            positional_embedding_type="rotary", rotary_dim=8, gated_mlp=True, final_rms=True,
            use_normalization_before_and_after=True, n_key_value_heads=max(1, d_model // 16),
            use_qk_norm=True, original_architecture="Gemma3ForCausalLM",
            default_prepend_bos=True, model_name="tiny-gemma")
    else:
        raise ValueError(f"unknown tiny architecture {arch!r}; use 'gpt2' or 'gemma'")
    torch.manual_seed(seed)
    model = HookedTransformer(cfg, tokenizer=_byte_tokenizer())
    return _attach_info(model, cfg.model_name)


# --------------------------------------------------------------------------- real models

DEFAULT_MODEL = "gemma-3-270m"
TINY_MODELS = {"tiny-gpt2": "gpt2", "tiny-gemma": "gemma"}
OFFLINE_MODELS = ("gemma-3-270m", "smollm2-135m", *TINY_MODELS)

_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
           "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
           "float16": torch.float16, "fp16": torch.float16, "half": torch.float16}


def resolve_dtype(dtype: torch.dtype | str | None) -> torch.dtype:
    """``None`` → float32; accepts a floating ``torch.dtype`` or a name such as "bfloat16"."""
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype) and dtype.is_floating_point:
        return dtype
    key = dtype.lower().removeprefix("torch.") if isinstance(dtype, str) else None
    if key not in _DTYPES:
        raise ValueError(f"unsupported dtype {dtype!r}; use a floating torch.dtype or one of "
                         f"{sorted(_DTYPES)}")
    return _DTYPES[key]


def _default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def load_model(name: str = DEFAULT_MODEL, device: str | torch.device | None = None,
               dtype: torch.dtype | str | None = None, n_devices: int = 1) -> HookedTransformer:
    """A ``HookedTransformer`` loaded without weight processing, in eval mode, left-padding.

    Offline names (``OFFLINE_MODELS``): the embedded "gemma-3-270m" (default) and
    "smollm2-135m", read from an fp32 cache built on first use, and the random "tiny-*" models.
    Any other TransformerLens model name is fetched from the Hugging Face Hub.
    ``n_devices > 1`` splits the blocks evenly over that many CUDA GPUs (TransformerLens's
    placement, from ``device``); steerers then keep each site's tensors on its block's GPU.
    """
    dtype = resolve_dtype(dtype)
    device = str(device) if device is not None else _default_device()
    check_devices(n_devices, device)
    if name in TINY_MODELS:
        model = tiny_model(TINY_MODELS[name], dtype=dtype).to(device, print_details=False)
        if n_devices > 1:
            model.cfg.n_devices = n_devices
            model.move_model_modules_to_device()
    elif name in ASSETS:
        model = _EMBEDDED_BUILDERS[name](prepare_model_cache(name), device, dtype, n_devices)
    else:
        model = _load_from_hub(name, device, dtype, n_devices)
    model.tokenizer.padding_side = "left"
    fast_layout(model)
    return _attach_info(model, name)


def check_devices(n_devices: int, device: str) -> None:
    """Refuse a split the machine cannot hold: more GPUs than are visible, or a CPU split."""
    if not isinstance(n_devices, int) or n_devices < 1:
        raise ValueError(f"n_devices must be a whole number ≥ 1, got {n_devices!r}")
    if n_devices == 1:
        return
    if not device.startswith("cuda"):
        raise ValueError(f"n_devices={n_devices} splits the blocks over CUDA GPUs; device is "
                         f"{device!r}")
    visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if n_devices > visible:
        raise ValueError(f"n_devices={n_devices} but {visible} CUDA GPU(s) are visible")


def fast_layout(model: HookedTransformer) -> HookedTransformer:
    """Lay out the weights TL transposes on every forward so those copies become no-ops.

    TL 3.9 calls ``W.T.contiguous()`` on ``W_U`` and the MLP weights and flattens
    ``W_Q``/``W_K``/``W_V`` head-major before each ``F.linear``; with the memory layout that
    copy expects, ``.contiguous()`` returns the tensor itself. Values, shapes and the matrices
    ``F.linear`` sees are unchanged, so logits are bit-identical (tested); decoding on a 2-core
    CPU spends ~28% less time. Returns ``model``.
    """
    _transposed_unembed(model)
    for block in model.blocks:
        for name in ("W_in", "W_gate", "W_out"):
            p = getattr(block.mlp, name, None)
            if isinstance(p, torch.nn.Parameter) and p.dim() == 2 and not p.T.is_contiguous():
                p.data = p.data.T.contiguous().T
        params = block.attn._parameters
        for name in ("W_Q", "W_K", "W_V", "_W_K", "_W_V"):
            p = params.get(name)
            if p is not None and p.dim() == 3:  # flattened to (head d_head) d_model
                p.data = p.data.permute(0, 2, 1).contiguous().permute(0, 2, 1)
        p = params.get("W_O")
        if p is not None and p.dim() == 3:  # flattened to d_model (head d_head)
            p.data = p.data.permute(2, 0, 1).contiguous().permute(1, 2, 0)
    return model


def _transposed_unembed(model: HookedTransformer) -> None:
    """Store ``W_U`` [d_model, d_vocab] as the transpose of a contiguous [d_vocab, d_model].

    TL's ``Unembed.forward`` calls ``W_U.T.contiguous()`` on every forward pass: with Gemma's
    262k vocabulary that copies 670 MB each time (about 0.6 s of a 0.9 s CPU forward). With this
    layout the copy is a no-op; values, shape and matmul layout (hence numerics) are unchanged.
    """
    w_u = model.unembed.W_U
    if not w_u.T.is_contiguous():
        model.unembed.W_U = torch.nn.Parameter(w_u.detach().T.contiguous().T,
                                               requires_grad=w_u.requires_grad)


def prepare_model_cache(name: str = DEFAULT_MODEL) -> Path:
    """Build (once) and verify the fp32 HF copy of an embedded model; returns its folder.

    For setup steps: converts the GGUF on the first call (~1 min for gemma-3-270m on CPU),
    afterwards only checks the cached copy.
    """
    if name not in ASSETS:
        raise ValueError(f"{name!r} is not an embedded model; embedded: {sorted(ASSETS)}")
    return ensure_hf_copy(name)


@contextlib.contextmanager
def _hub_offline():
    """Make transformers/huggingface_hub refuse network access instead of waiting on it.

    ``HF_HUB_OFFLINE`` is read once when huggingface_hub is imported, so setting the
    environment variable here would do nothing; the module constant is what is consulted.
    """
    from huggingface_hub import constants

    before = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = before


def _load_cached_hf(path: Path):
    tok = AutoTokenizer.from_pretrained(path)
    hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    return tok, hf


def _build_gemma(path: Path, device: str, dtype: torch.dtype,
                 n_devices: int = 1) -> HookedTransformer:
    """gemma-3-270m: on TL's official list, so TL knows its config without the hub."""
    with _hub_offline(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*HookedTransformer.*")
        tok, hf = _load_cached_hf(path)
        return HookedTransformer.from_pretrained_no_processing(
            "google/gemma-3-270m", hf_model=hf, tokenizer=tok, device=device, dtype=dtype,
            n_devices=n_devices, default_prepend_bos=True, default_padding_side="left")  # HF Gemma prepends BOS


def _build_smollm2(path: Path, device: str, dtype: torch.dtype,
                   n_devices: int = 1) -> HookedTransformer:
    """smollm2-135m: not on TL's list; config from the local HF config, Llama converter."""
    with _hub_offline(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*HookedTransformer.*")
        tok, hf = _load_cached_hf(path)
        # convert_hf_model_config picks the architecture from substrings of the *name*
        # ("llama", "gemma", ...) before reading config.json; pass a bare relative folder name
        # so the absolute cache path (which may contain such words) cannot misroute it.
        with contextlib.chdir(path.parent):
            cfg_dict = tl_loading.convert_hf_model_config(path.name)
        cfg_dict.update(n_ctx=2048, default_prepend_bos=False,  # SmolLM2 has no BOS
                        model_name="smollm2-135m", tokenizer_name=str(path), device=device,
                        dtype=dtype, n_devices=n_devices, init_weights=False)
        cfg = HookedTransformerConfig.from_dict(cfg_dict)
        model = HookedTransformer(cfg, tokenizer=tok, move_to_device=False,
                                  default_padding_side="left")
        state = tl_loading.get_pretrained_state_dict(str(path), cfg, hf_model=hf, dtype=dtype)
        model.load_and_process_state_dict(state, **NO_PROCESSING)
        model.move_model_modules_to_device()
        return model


_EMBEDDED_BUILDERS = {"gemma-3-270m": _build_gemma, "smollm2-135m": _build_smollm2}


def _offline_names() -> str:
    return ", ".join(OFFLINE_MODELS)


def _hub_reachable(timeout: float = 2.0) -> bool:
    """Cheap check before any download, so an offline machine fails in seconds, not minutes."""
    from huggingface_hub import constants

    flag = os.environ.get("HF_HUB_OFFLINE", "").strip().lower()
    if flag in {"1", "true", "yes", "on"} or constants.HF_HUB_OFFLINE:
        return False
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True  # a direct connect says nothing behind a proxy; let the download decide
    url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=timeout).close()
        return True
    except OSError:
        return False


def _hub_cached(official_name: str) -> bool:
    """Whether the HF cache already holds this model's config (then offline loading may work)."""
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(official_name, "config.json"), str)


def _hf_prepends_bos(tokenizer) -> bool:
    """Whether the HF tokenizer itself adds BOS, so TL tokenizes strings as HF does."""
    ids = tokenizer("a")["input_ids"]
    return tokenizer.bos_token_id is not None and bool(ids) and ids[0] == tokenizer.bos_token_id


def _load_from_hub(name: str, device: str, dtype: torch.dtype,
                   n_devices: int = 1) -> HookedTransformer:
    """A TransformerLens official model (or alias) from the Hub or the local HF cache."""
    try:
        official = tl_loading.get_official_model_name(name)
    except ValueError:
        raise ValueError(f"unknown model {name!r}: neither an offline model ({_offline_names()}) "
                         f"nor a TransformerLens model name or alias") from None
    online = _hub_reachable()
    if not online and not _hub_cached(official):
        raise ModelUnavailable(f"cannot load {name!r}: the Hugging Face Hub is unreachable (or "
                           f"HF_HUB_OFFLINE is set) and the model is not in the local HF cache. "
                           f"Models that work offline: {_offline_names()}")
    offline = _hub_offline() if not online else contextlib.nullcontext()
    try:
        with offline, warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*HookedTransformer.*")
            prepend = _hf_prepends_bos(AutoTokenizer.from_pretrained(official))
            return HookedTransformer.from_pretrained_no_processing(
                name, device=device, dtype=dtype, n_devices=n_devices,
                default_prepend_bos=prepend,
                default_padding_side="left")
    except OSError as err:  # transformers reports hub and connection failures as OSError
        raise ModelUnavailable(f"cannot load {name!r} from the Hugging Face Hub ({err}). Models "
                           f"that work offline: {_offline_names()}") from err
