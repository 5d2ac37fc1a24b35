"""Device and dtype, chosen once per run and passed down (cuda > mps > cpu; bf16 where it pays)."""

from __future__ import annotations

import functools

import torch

from protodb.errors import InvalidInput

#: The int8 mode: torch dynamic quantisation of the linear layers (int8 weights, activations quantised per
#: call, float32 elsewhere), for torch extractors on CPU; other models run float32 in this mode.
INT8 = torch.qint8

_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
           "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16, "int8": INT8}


def choose_device(preference: str | None = "auto") -> torch.device:
    """``auto`` picks cuda, then mps, then cpu; an explicit device must be available."""
    pref = (preference or "auto").lower()
    if pref == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(pref)
    except RuntimeError as err:
        raise InvalidInput(f"unknown device {preference!r}; use auto, cpu, cuda, cuda:N or mps") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InvalidInput("--device cuda asked for, but no CUDA GPU is visible; use --device cpu")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise InvalidInput("--device mps asked for, but MPS is not available; use --device cpu")
    return device


@functools.cache
def cpu_has_fast_bf16() -> bool:
    """True when this CPU has bf16 matrix units (AMX / AVX512-BF16), where bf16 is 2-3x faster."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except Exception:  # noqa: BLE001 - older builds lack the op
        return False


def choose_dtype(device: torch.device, preference: str | None = "auto") -> torch.dtype:
    """``auto``: fp16 on CUDA/MPS, bf16 on CPUs with bf16 units, else fp32. ``int8`` (CPU only):
    :data:`INT8`."""
    pref = (preference or "auto").lower()
    if pref != "auto":
        if pref not in _DTYPES:
            raise InvalidInput(f"unknown dtype {preference!r}; use auto, float32, bfloat16, float16 or int8")
        if _DTYPES[pref] is INT8 and device.type != "cpu":
            raise InvalidInput(f"--dtype int8 runs on the CPU only; on {device.type} use auto or float16")
        return _DTYPES[pref]
    if device.type in ("cuda", "mps"):
        return torch.float16
    return torch.bfloat16 if cpu_has_fast_bf16() else torch.float32


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The floating dtype tensors are in: float32 in the int8 mode, else ``dtype`` itself."""
    return torch.float32 if dtype is INT8 else dtype


def dtype_name(dtype: torch.dtype) -> str:
    """``float32``, ``bfloat16``, ``float16`` or ``int8``."""
    return "int8" if dtype is INT8 else str(dtype).removeprefix("torch.")
