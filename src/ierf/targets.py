"""What to explain: small callables mapping a model output to one scalar per image.

Like pytorch-grad-cam's ``ClassifierOutputTarget``: the same attributor explains a class
logit now, and a PFV, a concept direction or an SAE latent once those targets land.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ierf.errors import IerfError, unknown_name


@dataclass(frozen=True)
class ClassTarget:
    """The logit of class ``index`` (one index, or one per image)."""

    index: int | Sequence[int] | torch.Tensor

    def indices(self, batch: int, device: torch.device) -> torch.Tensor:
        idx = torch.as_tensor(self.index, device=device, dtype=torch.long).reshape(-1)
        if idx.numel() == 1:
            idx = idx.expand(batch)
        if idx.numel() != batch:
            raise IerfError(f"got {idx.numel()} target classes for a batch of {batch} images")
        return idx

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        """(B, num_classes) logits → (B,) selected logits."""
        idx = self.indices(logits.shape[0], logits.device)
        n = logits.shape[1]
        if (idx < 0).any() or (idx >= n).any():
            bad = idx[(idx < 0) | (idx >= n)][0].item()
            raise IerfError(f"target class {bad} is out of range: this model has {n} classes "
                            f"(0..{n - 1})")
        return logits.gather(1, idx[:, None]).squeeze(1)


def resolve_target(target: object, logits: torch.Tensor, class_names: Sequence[str] = ()
                   ) -> ClassTarget | object:
    """Turn what a user passes as ``target`` into a target object.

    ``None`` or ``"auto"``: each image's top class; an int, a list of ints or a tensor:
    class indices; a string: a class name (exact, case-insensitive) or a digit string;
    a callable target object is returned unchanged.
    """
    if target is None or (isinstance(target, str) and target == "auto"):
        return ClassTarget(logits.argmax(1))
    if isinstance(target, (str, int, Sequence, torch.Tensor)) and not callable(target):
        index = class_index(target, class_names) if isinstance(target, str) else target
        target_obj = ClassTarget(index)
        target_obj(logits)  # validates range and batch size now
        return target_obj
    if callable(target):
        return target
    raise IerfError(f"cannot use {target!r} as a target: give a class index, a class name, "
                    "'auto', or a target object such as ierf.ClassTarget(3)")


def class_index(name: str, class_names: Sequence[str]) -> int:
    """Index of a class given by name (case-insensitive) or as a digit string."""
    if name.isdigit():
        return int(name)
    lowered = [c.lower() for c in class_names]
    if name.lower() in lowered:
        return lowered.index(name.lower())
    raise unknown_name("class", name, class_names)
