"""Device and dtype, chosen once per run and passed down (cuda > mps > cpu; bf16 where it pays)."""

from __future__ import annotations

import functools

import torch

from protodb.errors import InvalidInput

_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
           "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}


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
    """``auto``: fp16 on CUDA/MPS, bf16 on CPUs with bf16 units, else fp32."""
    pref = (preference or "auto").lower()
    if pref != "auto":
        if pref not in _DTYPES:
            raise InvalidInput(f"unknown dtype {preference!r}; use auto, float32, bfloat16 or float16")
        return _DTYPES[pref]
    if device.type in ("cuda", "mps"):
        return torch.float16
    return torch.bfloat16 if cpu_has_fast_bf16() else torch.float32


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")
