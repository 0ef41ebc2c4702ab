"""FaCT: a B-cos network with bias-free TopK-SAE bottlenecks at named layers (Sec. 3.1).

``FaCT(backbone, {layer: TopKBottleneck})`` replaces the output ``h`` of each named layer by its
reconstruction ``ĥ = D u`` (Eqs. 6–7), so the logits depend on the input only through the
concept codes ``u``. The backbone must be dynamic-linear (bias-free B-cos layers, uncentred
bias-free norms, pooling): :func:`check_bcos` lists what is not.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial

import torch
from torch import Tensor, nn

from ierf.errors import IerfError, UnknownNameError, unknown_name
from ierf.fact.bottleneck import TopKBottleneck
from ierf.fact.layers import encode_input

#: parameter-free modules that are linear or piecewise linear (dynamic-linear, App. H.1)
_LINEAR_OPS: tuple[type[nn.Module], ...] = (
    nn.Identity, nn.Flatten, nn.Unflatten, nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d, nn.MaxPool1d, nn.MaxPool2d, nn.AdaptiveMaxPool2d, nn.ReLU,
    nn.Dropout, nn.Dropout2d,
)
_CONTAINERS: tuple[type[nn.Module], ...] = (nn.Sequential, nn.ModuleList, nn.ModuleDict)


def _problem(name: str, m: nn.Module) -> str | None:
    """Why module ``m`` breaks dynamic linearity, or ``None`` if it does not."""
    kind = type(m).__name__
    if hasattr(m, "set_explanation_mode"):  # a B-cos module (ours or the bcos package's)
        bias = getattr(m, "bias", None)
        if isinstance(bias, Tensor) or bias is True:
            return f"{name} ({kind}): has a bias"
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and "Uncentered" not in kind:
            return f"{name} ({kind}): subtracts a running mean (a bias in eval mode)"
        return None
    if isinstance(m, _LINEAR_OPS) or kind == "StochasticDepth" or \
            (kind == "LogitLayer" and hasattr(m, "logit_bias")):
        return None
    own = [p for p, _ in m.named_parameters(recurse=False)]
    if own:
        return f"{name} ({kind}): parameters {', '.join(own)} outside a B-cos layer"
    if isinstance(m, _CONTAINERS) or any(True for _ in m.children()):
        return None
    return f"{name} ({kind}): not a known linear or piecewise-linear operation"


def check_bcos(net: nn.Module) -> list[str]:
    """The modules of ``net`` that would make FaCT contributions inexact (empty if none).

    B-cos modules are recognised by their ``set_explanation_mode`` method and are not entered;
    other leaves must be parameter-free linear or piecewise-linear operations. What a custom
    ``forward`` does between modules cannot be seen: :class:`ConceptContributions.residual`
    measures the exactness at run time.
    """
    problems: list[str] = []
    skip: list[str] = []
    for name, m in net.named_modules():
        if any(name.startswith(s + ".") for s in skip):
            continue
        if hasattr(m, "set_explanation_mode"):
            skip.append(name)
        if (p := _problem(name or type(net).__name__, m)) is not None:
            problems.append(p)
    return problems


def _first_conv_channels(net: nn.Module) -> tuple[str, int] | None:
    for name, m in net.named_modules():
        if hasattr(m, "set_explanation_mode"):
            c = getattr(m, "in_channels", getattr(m, "in_features", None))
            if c is not None:
                return name, int(c)
    return None


@dataclass
class Recording:
    """What the bottlenecks saw during a forward pass, keyed by layer (tensors in the graph):
    ``codes`` – concept codes ``u`` (Eq. 6); ``features`` – the layer output ``h`` they encode."""

    codes: dict[str, Tensor] = field(default_factory=dict)
    features: dict[str, Tensor] = field(default_factory=dict)


def _require_bcos(backbone: nn.Module) -> None:
    """Raise a clear :class:`IerfError` unless ``backbone`` is a 6-channel B-cos network."""
    problems = check_bcos(backbone)
    if problems:
        shown = "; ".join(problems[:8]) + (f"; … ({len(problems) - 8} more)"
                                           if len(problems) > 8 else "")
        raise IerfError(
            f"{type(backbone).__name__} is not a B-cos network, so FaCT's concept "
            f"contributions would not be exact. Offending modules: {shown}. Use a B-cos "
            "backbone (ierf.fact.bcos_toy_resnet / bcos_resnet50, or the bcos package).")
    first = _first_conv_channels(backbone)
    if first is None or first[1] != 6:
        got = "no B-cos layer" if first is None else \
            f"its first B-cos layer {first[0]!r} takes {first[1]} channels"
        raise IerfError(f"a FaCT backbone must take the 6-channel [x, 1 − x] encoding of RGB "
                        f"images; {got}")


def _require_bias_free(layer: str, sae: nn.Module) -> None:
    """Raise a clear :class:`IerfError` unless ``sae`` is a bias-free :class:`TopKBottleneck`."""
    if not isinstance(sae, TopKBottleneck):
        raise IerfError(f"the bottleneck at {layer!r} is a {type(sae).__name__}, not a "
                        "TopKBottleneck (the bias-free TopK SAE of Eqs. 6–7); wrap a fitted "
                        "BiasFreeTopKSAE with TopKBottleneck.from_sae(sae)")
    extra = sorted({n for n, _ in sae.named_parameters()} - {"encoder", "decoder"})
    if extra:
        raise IerfError(f"the bottleneck at {layer!r} has parameters {extra} besides its encoder "
                        "and decoder: an encoder bias breaks the exact pixel traces (Eqs. "
                        "10–12), a decoder bias the exact contributions (Eq. 9). Use a plain, "
                        "bias-free TopKBottleneck")


def _channel_hint(x: Tensor) -> str:
    """What to do about an input batch that is not (B, 3, H, W)."""
    if x.dim() == 3 and x.shape[0] == 3:
        return ": one image needs a batch axis, x.unsqueeze(0)"
    if x.dim() != 4:
        return ""
    hints = {6: ": 6 channels look like an already encoded [x, 1 − x] input; pass the RGB "
                "images x[:, :3] (or call forward_encoded with encoded inputs)",
             1: ": a grayscale image; repeat it to RGB, x.expand(-1, 3, -1, -1)",
             4: ": RGBA; drop the alpha channel, x[:, :3]"}
    if x.shape[1] in hints:
        return hints[x.shape[1]]
    return ": channels last? use x.permute(0, 3, 1, 2)" if x.shape[-1] == 3 else ""


def _channels(out: Tensor) -> int:
    """Channels of a (B, C, H, W) map or of (B, N, C) tokens."""
    return out.shape[-1] if out.dim() == 3 else out.shape[1]


def _key(layer: str) -> str:
    return layer.replace(".", "__")


class FaCT(nn.Module):
    """A B-cos backbone whose named layers pass through bias-free TopK-SAE bottlenecks.

    Parameters
    ----------
    backbone : a B-cos network taking the 6-channel ``[x, 1 − x]`` encoding.
    bottlenecks : layer name (as in ``backbone.named_modules()``) → :class:`TopKBottleneck`.

    ``forward`` takes RGB images (B, 3, H, W) in [0, 1] and encodes them itself. The
    bottlenecks are forward hooks on the named layers, so layer names stay the backbone's.
    A ``bcos``-package ``LogitLayer`` bias (a constant added to every logit) is stored as
    ``logit_offset`` and removed from the logits, as the FaCT code does.
    """

    def __init__(self, backbone: nn.Module, bottlenecks: Mapping[str, TopKBottleneck]) -> None:
        super().__init__()
        _require_bcos(backbone)
        if not bottlenecks:
            raise IerfError("FaCT needs at least one bottleneck layer")
        modules = dict(backbone.named_modules())
        for layer, sae in bottlenecks.items():
            if layer not in modules or layer == "":
                raise unknown_name("layer", layer, [n for n in modules if n])
            _require_bias_free(layer, sae)
        self.backbone = backbone
        self.layers: list[str] = list(bottlenecks)
        self.bottlenecks = nn.ModuleDict({_key(n): b for n, b in bottlenecks.items()})
        self.logit_offset = float(sum(getattr(m, "logit_bias", None) or 0.0
                                      for m in backbone.modules()
                                      if type(m).__name__ == "LogitLayer"))
        self._record: Recording | None = None
        for layer in self.layers:  # a partial of a bound method: deepcopy re-binds it
            modules[layer].register_forward_hook(partial(self._insert, layer))

    @classmethod
    def build(cls, backbone: nn.Module, layers: str | Sequence[str], n_concepts: int, k: int,
              input_size: tuple[int, int] = (64, 64), seed: int = 0) -> FaCT:
        """Insert fresh bottlenecks (``n_concepts`` latents, TopK ``k``) at ``layers``; the
        channel counts are read from one forward pass on a zero image of ``input_size``."""
        _require_bcos(backbone)
        layers = [layers] if isinstance(layers, str) else list(layers)
        modules = dict(backbone.named_modules())
        channels: dict[str, int] = {}
        handles = []
        for layer in layers:
            if layer not in modules or layer == "":
                raise unknown_name("layer", layer, [n for n in modules if n])
            handles.append(modules[layer].register_forward_hook(
                lambda m, i, o, n=layer: channels.__setitem__(n, _channels(o))))
        was_training = backbone.training
        try:
            with torch.no_grad():
                backbone.eval()(torch.zeros(1, 6, *input_size))
        finally:
            backbone.train(was_training)
            for h in handles:
                h.remove()
        return cls(backbone, {n: TopKBottleneck(channels[n], n_concepts, k, seed=seed + i)
                              for i, n in enumerate(layers)})

    def bottleneck(self, layer: str) -> TopKBottleneck:
        """The bottleneck at ``layer`` (a leading ``"backbone."`` is accepted)."""
        layer = self.resolve(layer)
        if layer not in self.layers and layer and layer in dict(self.backbone.named_modules()):
            raise UnknownNameError(
                f"layer {layer!r} has no bottleneck; this model's bottleneck layers: "
                f"{', '.join(self.layers)}. To explain concepts at {layer!r}, build (and train) "
                f"a FaCT model with a bottleneck there: FaCT.build(backbone, {layer!r}, "
                "n_concepts, k)")
        if layer not in self.layers:
            raise unknown_name("bottleneck layer", layer, self.layers)
        return self.bottlenecks[_key(layer)]

    def resolve(self, layer: str) -> str:
        """A backbone layer name from a name of this module or of the backbone."""
        return layer.removeprefix("backbone.")

    def _insert(self, layer: str, module: nn.Module, inputs: object, output: Tensor) -> Tensor:
        """Forward hook: the layer's output ``h`` becomes ``ĥ = D u`` (Eqs. 6–7)."""
        sae = self.bottlenecks[_key(layer)]
        u = sae.encode(output)
        if self._record is not None:
            self._record.codes[layer] = u
            self._record.features[layer] = output
        return sae.decode(u)

    @contextmanager
    def recording(self) -> Iterator[Recording]:
        """Within the block, forward passes store each bottleneck's codes and input features
        in the yielded :class:`Recording`."""
        self._record = Recording()
        try:
            yield self._record
        finally:
            self._record = None

    @staticmethod
    def check_images(x: Tensor) -> Tensor:
        """Raise a clear error unless ``x`` is a (B, 3, H, W) batch of RGB images."""
        if not isinstance(x, Tensor) or x.dim() != 4 or x.shape[1] != 3:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            hint = _channel_hint(x) if isinstance(x, Tensor) else ""
            raise IerfError(f"FaCT takes RGB images shaped (B, 3, H, W) with values in [0, 1] "
                            f"and adds the inverse channels [x, 1 − x] itself; got {shape}{hint}")
        return x

    def forward_encoded(self, x6: Tensor) -> Tensor:
        """Logits from an already encoded (B, 6, H, W) input."""
        if x6.dim() != 4 or x6.shape[1] != 6:
            raise IerfError(f"forward_encoded takes the 6-channel [x, 1 − x] encoding shaped "
                            f"(B, 6, H, W), got {tuple(x6.shape)}; pass RGB images to the "
                            "model itself")
        return self.backbone(x6) - self.logit_offset if self.logit_offset else self.backbone(x6)

    def forward(self, x: Tensor) -> Tensor:
        """Logits (B, classes) of RGB images in [0, 1] (any class-independent ``LogitLayer``
        bias of a ``bcos`` backbone is removed; it does not change the softmax)."""
        return self.forward_encoded(encode_input(self.check_images(x)))
