"""Where and how a run computes: the device, mixed precision, channels_last, and the list of
devices this machine offers (the Device setting's choices in the window)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from freezer_app.core.errors import ProjectError


def available_devices() -> list[str]:
    """auto, cpu, then every CUDA device (and cuda:all with more than one) and Apple MPS
    when present."""
    devices = ["auto", "cpu"]
    if torch.cuda.is_available():
        count = torch.cuda.device_count()
        devices += ["cuda"] + [f"cuda:{i}" for i in range(count)]
        if count > 1:
            devices.append("cuda:all")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        devices.append("mps")
    return devices


def device_label(name: str) -> str:
    """How a device setting reads in the window: cuda:all as "all N GPUs"."""
    if name == "cuda:all":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        return f"all {count} GPUs (cuda:all)" if count else "all GPUs (cuda:all)"
    return name


def select_device(name: str) -> torch.device:
    """`auto` picks CUDA, then Apple MPS, then the CPU; explicit names are checked."""
    name = (name or "auto").strip().lower()
    if name == "cuda:all":
        # Every GPU needs a process of its own: the CLI and the window start them (torchrun);
        # one process given this trains on the first.
        name = "cuda"
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ProjectError(
            f"Unknown device {name!r}.", "Use auto, cpu, cuda, cuda:N, cuda:all or mps."
        ) from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ProjectError(
                "CUDA was requested but no CUDA GPU is available.", "Use --device auto or cpu."
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ProjectError(
                f"There is no {name}: this machine has {torch.cuda.device_count()} CUDA device(s).",
                "Use cuda:0 or auto.",
            )
    if device.type == "mps" and not (
        getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()
    ):
        raise ProjectError(
            "Apple MPS was requested but is not available.", "Use --device auto or cpu."
        )
    return device


@dataclass
class Precision:
    name: str  # fp32 | bf16 | fp16
    autocast_dtype: torch.dtype | None
    use_scaler: bool


def select_precision(device: torch.device, amp: str) -> Precision:
    if amp == "off":
        return Precision("fp32", None, False)
    if amp == "auto":
        if device.type != "cuda":
            return Precision("fp32", None, False)
        amp = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if amp == "bf16":
        return Precision("bf16", torch.bfloat16, False)
    if amp == "fp16":
        if device.type not in ("cuda", "mps"):
            raise ProjectError(
                "fp16 mixed precision needs a GPU.", "Use --amp bf16 or off on the CPU."
            )
        return Precision("fp16", torch.float16, device.type == "cuda")
    raise ProjectError(f"Unknown mixed precision mode {amp!r}.", "Use auto, bf16, fp16 or off.")


def wants_channels_last(model: nn.Module, device: torch.device, setting: str) -> bool:
    """channels_last speeds up convolutions on CUDA (tensor cores); it does nothing for ViTs."""
    if setting == "on":
        return True
    if setting == "off" or device.type != "cuda":
        return False
    conv = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Conv2d))
    total = sum(p.numel() for p in model.parameters())
    return conv > 0.5 * total
