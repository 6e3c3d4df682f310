"""Loading a user's public Wav2Lip checkpoint into our module tree, refusing files that do not fit."""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lipsync_models.wav2lip import Wav2Lip
from lipsync_service.errors import InvalidInput

_PREFIXES = ("module.", "_orig_mod.")
# How many names of each kind a mismatch message lists before summarising the rest.
_LIST_LIMIT = 12


class CheckpointMismatch(InvalidInput):
    """A checkpoint's tensors do not fit the module: lists missing, unexpected and wrongly shaped tensors."""

    def __init__(
        self,
        path: str,
        missing: list[str],
        unexpected: list[str],
        wrong_shape: list[tuple[str, tuple[int, ...], tuple[int, ...]]],
    ) -> None:
        self.missing = missing
        self.unexpected = unexpected
        self.wrong_shape = wrong_shape
        lines = [f"{path} does not match the Wav2Lip generator layout:"]
        if missing:
            lines.append(f"  missing tensors ({len(missing)}): {_short(missing)}")
        if unexpected:
            lines.append(f"  unexpected tensors ({len(unexpected)}): {_short(unexpected)}")
        if wrong_shape:
            shown = [f"{name} has {tuple(got)}, expected {tuple(want)}" for name, got, want in wrong_shape]
            lines.append(f"  wrongly shaped tensors ({len(wrong_shape)}): {_short(shown)}")
        lines.append("Is this a Wav2Lip or Wav2Lip-GAN generator checkpoint (not SyncNet or the discriminator)?")
        super().__init__("\n".join(lines))


def _short(items: list[str]) -> str:
    head = ", ".join(items[:_LIST_LIMIT])
    return head + (f", ... and {len(items) - _LIST_LIMIT} more" if len(items) > _LIST_LIMIT else "")


def _first_line(exc: BaseException) -> str:
    """The gist of an error: its first sentence (torch's zip reader adds paragraphs of advice)."""
    text = str(exc).strip()
    return text.splitlines()[0].split(". ")[0] if text else type(exc).__name__


def _looks_like_checkpoint(path: Path) -> bool:
    """Whether the file starts as torch.save writes: a zip archive (PyTorch 1.6+), a pickle (the legacy format, whose
    first record is a pickled magic number) or a tar archive (before PyTorch 0.4)."""
    try:
        with open(path, "rb") as f:
            head = f.read(512)
    except OSError as exc:
        raise InvalidInput(f"cannot read checkpoint {path}: {exc.strerror}") from exc
    if head.startswith(b"PK\x03\x04"):
        return True
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:  # pickle PROTO opcode and a protocol number
        return True
    return head[257:262] == b"ustar"


def read_checkpoint(path: str | Path, trusted: bool = False) -> dict[str, torch.Tensor]:
    """Read the generator state dict out of a checkpoint file.

    Accepts a dict with "state_dict" (optimizer and other entries ignored) or a bare state dict, keys with
    or without a "module." prefix, in the zip or the legacy (pre-1.6) torch format.

    Args:
        path: the checkpoint file.
        trusted: allow arbitrary pickled objects (weights_only=False). Unpickling can run code: only for
            files whose origin you trust.

    Returns:
        Tensor name -> tensor, prefixes stripped.

    Raises:
        InvalidInput: the file is missing, unreadable, not a PyTorch checkpoint at all (a text file, an image),
            or holds no state dict.
    """
    path = Path(path)
    if not path.is_file():
        raise InvalidInput(f"checkpoint {path} not found")
    # torch.load on another kind of file fails in the unpickler with anything from KeyError to a hint to
    # allow more globals: tell it by its first bytes instead (and never unpickle it, even with --trusted).
    not_checkpoint = f"{path} is not a PyTorch checkpoint (a .pth/.pt file written by torch.save)"
    if not _looks_like_checkpoint(path):
        raise InvalidInput(not_checkpoint)
    try:
        payload = torch.load(str(path), map_location="cpu", weights_only=not trusted)
    except pickle.UnpicklingError as exc:
        raise InvalidInput(
            f"{path} contains pickled objects beyond tensors, which are refused by default because "
            f"unpickling can run code ({exc}). If you trust where the file came from, pass --trusted."
        ) from exc
    except OSError as exc:
        raise InvalidInput(f"cannot read checkpoint {path}: {exc}") from exc
    except Exception as exc:  # noqa: BLE001 - what torch.load raises on damaged data is not documented
        raise InvalidInput(f"{not_checkpoint}, or it is damaged ({_first_line(exc)})") from exc
    if isinstance(payload, Mapping) and isinstance(payload.get("state_dict"), Mapping):
        payload = payload["state_dict"]
    if not isinstance(payload, Mapping) or not payload:
        raise InvalidInput(f"{path} holds no state dict (expected a dict with 'state_dict', or a bare state dict)")
    tensors: dict[str, torch.Tensor] = {}
    for key, value in payload.items():
        if not isinstance(value, torch.Tensor):
            continue
        name = str(key)
        for prefix in _PREFIXES:
            if name.startswith(prefix):
                name = name[len(prefix) :]
        tensors[name] = value
    if not tensors:
        raise InvalidInput(f"{path} holds no tensors under 'state_dict'")
    return tensors


def load_matching(module: nn.Module, tensors: Mapping[str, torch.Tensor], source: str) -> nn.Module:
    """Load tensors into a module, requiring every name and shape to match.

    A missing BatchNorm `num_batches_tracked` counter is filled with zero: older checkpoints lack it and
    it has no effect in eval mode.

    Args:
        module: the target module.
        tensors: name -> tensor.
        source: the file name, for the message.

    Returns:
        The module, loaded, in eval mode.

    Raises:
        CheckpointMismatch: names or shapes do not match.
    """
    expected = module.state_dict()
    given: dict[str, Any] = dict(tensors)
    for name, value in expected.items():
        if name.endswith("num_batches_tracked") and name not in given:
            given[name] = torch.zeros_like(value)
    missing = sorted(set(expected) - set(given))
    unexpected = sorted(set(given) - set(expected))
    wrong_shape = [
        (name, tuple(given[name].shape), tuple(expected[name].shape))
        for name in sorted(set(expected) & set(given))
        if tuple(given[name].shape) != tuple(expected[name].shape)
    ]
    if missing or unexpected or wrong_shape:
        raise CheckpointMismatch(source, missing, unexpected, wrong_shape)
    module.load_state_dict({k: v.to(expected[k].dtype) for k, v in given.items()}, strict=True)
    return module.eval()


def import_wav2lip(path: str | Path, trusted: bool = False) -> Wav2Lip:
    """Load a public Wav2Lip or Wav2Lip-GAN generator checkpoint into our Wav2Lip module.

    Args:
        path: the user's checkpoint file (never shipped with this project).
        trusted: allow arbitrary pickled objects; see read_checkpoint.

    Returns:
        The generator in eval mode.

    Raises:
        InvalidInput: unreadable file.
        CheckpointMismatch: the tensors do not fit the layout.
    """
    return load_matching(Wav2Lip(), read_checkpoint(path, trusted=trusted), str(path))
