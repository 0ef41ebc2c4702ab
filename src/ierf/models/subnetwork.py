"""`Subnetwork(model, a, b)`: the isolated sub-network M_ab between two layers (Sec. VI-B1).

ICAT (Eqs. 13–14) and the concept metrics propagate modified PFVs of a source layer ``a``
through "the model copied between these layers", ``X̃^b = M_ab(X̂^a)`` (Sec. VI-B3).
``M_ab`` is extracted with ``torch.fx``: the model is traced once, layer ``a``'s output
becomes the graph's input and only the nodes that ``b`` needs after it are kept, so
nothing before ``a`` runs. A pair is refused when ``b`` still needs the network input
through a path that bypasses ``a`` (the residual connection around ``a``), or when ``b``
does not depend on ``a`` at all. A model fx cannot trace falls back, with a warning, to a
full forward in which a hook replaces ``a``'s output.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any, Literal

import torch
from torch import fx, nn

from ierf.errors import IerfError
from ierf.models.hooks import forward_hooks, forward_until, record_outputs
from ierf.models.model import Model, as_model
from ierf.models.pfv import PFVs, to_pfvs

OUTPUTS = ("output", "logits")


class Subnetwork(nn.Module):
    """The isolated sub-network ``M_ab`` (paper Sec. VI-B1) as a differentiable module.

    ``sub(pfvs_a, prefix)`` maps layer ``a``'s PFVs ``(B, N_a, C_a)`` (plus the ViT's
    prefix tokens ``(B, P, C_a)``, e.g. CLS) to layer ``b``'s PFVs ``(B, N_b, C_b)``, or to
    the logits ``(B, classes)`` when ``b`` is ``"output"`` (alias ``"logits"``).

    Parameters
    ----------
    model : :class:`~ierf.Model` or plain ``nn.Module``.
    a, b : layer names as in ``model.net.named_modules()``; a module called more than once
        is cut at its first call.
    example : an input batch; needed only when the model does not know its input size.

    Attributes
    ----------
    mode : ``"fx"`` (only the layers between ``a`` and ``b`` run) or ``"hooked"`` (the
        model did not trace: a full forward on zeros with ``a``'s output replaced; the cut
        is then not verified).
    net : the extracted ``fx.GraphModule`` (``"fx"``) or the whole network (``"hooked"``);
        it shares the model's parameters. The fx copy inlines the blocks' code: forward
        hooks on leaf modules (convs, norms, …) fire in it, hooks on blocks do not.
    prefix_tokens : prefix tokens that layer ``a``'s output carries before its PFVs.
    """

    def __init__(self, model: Model | nn.Module, a: str, b: str,
                 example: torch.Tensor | None = None) -> None:
        super().__init__()
        self.model = as_model(model)
        self.a, self.b = a, b
        self.to_output = b in OUTPUTS
        self.model.module(a)
        if not self.to_output:
            self.model.module(b)
        self._probe(example)
        try:
            self.net: nn.Module = _extract(self.model.net, a, None if self.to_output else b)
            self.mode: Literal["fx", "hooked"] = "fx"
        except _Untraceable as e:
            warnings.warn(f"Subnetwork({a!r} → {b!r}) of {self.model.name}: {e}; falling back "
                          "to a full forward with a hook that replaces the PFVs of "
                          f"{a!r} (slower, and the cut is not checked)", stacklevel=2)
            self.net, self.mode = self.model.net, "hooked"

    def _probe(self, example: torch.Tensor | None) -> None:
        """One no-grad forward on ``example`` (zeros of the input size by default): layer
        ``a``'s output layout, and ``b`` after ``a``."""
        if example is None:
            if self.model.input_size is None:
                raise IerfError(f"Subnetwork needs the input size of {self.model.name}: pass "
                                "example=<an input batch>, or load it with ierf.load_model")
            example = torch.zeros(1, *self.model.input_size, device=self.model.device)
        self._input_shape = tuple(example.shape[1:])
        names = {self.a: self.model.module(self.a)}
        if not self.to_output:
            names[self.b] = self.model.module(self.b)
        with record_outputs(names) as outputs, torch.no_grad():
            self.model.net(example[:1])
        missing = [n for n in names if n not in outputs]
        if missing:
            raise IerfError(f"layer {missing[0]!r} is not called by the model's forward")
        if next(iter(outputs)) != self.a:        # b's output came first
            raise IerfError(_not_after(self.a, self.b))
        out = outputs[self.a]
        if not isinstance(out, torch.Tensor):
            raise IerfError(f"layer {self.a!r} outputs {type(out).__name__}, not a tensor; "
                            "pick a layer that outputs a feature map or tokens")
        pfvs = to_pfvs(out, self.model.num_prefix_tokens, self.model.patch_grid)
        self._map_grid = pfvs.grid if out.dim() == 4 else None
        self.prefix_tokens = 0 if pfvs.prefix is None else pfvs.prefix.shape[1]

    def pfvs_a(self, x: torch.Tensor) -> PFVs:
        """Layer ``a``'s PFVs (and prefix tokens) on images ``x``: the sub-network's input.
        Runs the model only as far as ``a``."""
        outputs: list[torch.Tensor] = []
        forward_until(self.model.net, self.model.check(x), self.model.module(self.a),
                      outputs.append)
        return to_pfvs(outputs[0], self.model.num_prefix_tokens, self.model.patch_grid)

    def forward(self, pfvs: torch.Tensor | PFVs, prefix: torch.Tensor | None = None
                ) -> torch.Tensor:
        """``M_ab``: layer ``a``'s PFVs ``(B, N_a, C_a)`` (or :class:`PFVs`, whose prefix is
        used) → layer ``b``'s PFVs ``(B, N_b, C_b)``, or the logits if ``b`` is the output.
        ``prefix (B or 1, P, C_a)``: the ViT's prefix tokens at ``a``."""
        if isinstance(pfvs, PFVs):
            pfvs, prefix = pfvs.vectors, pfvs.prefix if prefix is None else prefix
        h = self._to_layer(pfvs, prefix)
        out = self.net(h) if self.mode == "fx" else self._hooked(h)
        if self.to_output:
            return out
        return to_pfvs(out, self.model.num_prefix_tokens, self.model.patch_grid).vectors

    def _to_layer(self, pfvs: torch.Tensor, prefix: torch.Tensor | None) -> torch.Tensor:
        """PFVs (+ prefix) → layer ``a``'s output layout: a (B, C, H, W) map or tokens, in new
        memory (the layers after ``a`` may work in place, e.g. ``ReLU(inplace=True)``)."""
        if pfvs.dim() != 3:
            raise IerfError(f"expected PFVs of shape (B, N, C), got {tuple(pfvs.shape)}")
        bsz, n, c = pfvs.shape
        if self._map_grid is not None:
            h, w = self._map_grid
            if n != h * w:
                raise IerfError(f"layer {self.a!r} has {h}×{w} = {h * w} positions, got N = {n}")
            return pfvs.transpose(1, 2).reshape(bsz, c, h, w).clone()
        if self.prefix_tokens == 0:
            return pfvs.clone()
        if prefix is None:
            raise IerfError(f"layer {self.a!r} carries {self.prefix_tokens} prefix token(s) "
                            "(CLS/registers); pass prefix=sub.pfvs_a(x).prefix")
        return torch.cat([prefix.to(pfvs).expand(bsz, -1, -1), pfvs], 1)

    def _hooked(self, h: torch.Tensor) -> torch.Tensor:
        """Full forward on zeros, with layer ``a``'s output replaced by ``h``."""
        x = h.new_zeros(len(h), *self._input_shape)
        calls: list[None] = []

        def replace(_m: nn.Module, _i: object, _out: object) -> torch.Tensor | None:
            calls.append(None)
            return h if len(calls) == 1 else None    # a reused module: its first call only

        with forward_hooks([(self.model.module(self.a), replace)]):
            if self.to_output:
                return self.net(x)
            outputs: list[torch.Tensor] = []
            forward_until(self.net, x, self.model.module(self.b), outputs.append)
            return outputs[0]


class _Untraceable(Exception):
    """fx cannot trace the model, or does not see a layer's output."""


class _Tracer(fx.Tracer):
    """fx tracer with timm's leaf modules and functions that records each module's first
    output node."""

    def __init__(self) -> None:
        from timm.layers import get_notrace_functions, get_notrace_modules

        super().__init__(autowrap_functions=tuple(f for f in get_notrace_functions()
                                                  if callable(f)))
        self.leaves = tuple(get_notrace_modules())
        self.outputs: dict[str, fx.Node] = {}

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, self.leaves) or super().is_leaf_module(m, qualname)

    def call_module(self, m: nn.Module, forward: Callable[..., Any], args: tuple[Any, ...],
                    kwargs: dict[str, Any]) -> Any:
        out = super().call_module(m, forward, args, kwargs)
        if isinstance(out, fx.Proxy):
            self.outputs.setdefault(self.path_of_module(m), out.node)
        return out


def _extract(net: nn.Module, a: str, b: str | None) -> fx.GraphModule:
    """The fx graph of ``net`` from module ``a``'s output (the new input) to module ``b``'s
    output (``None``: the network's output); raises :class:`IerfError` if it is no cut."""
    tracer = _Tracer()
    try:
        graph = tracer.trace(net)
    except Exception as e:  # fx raises many kinds (TraceError, TypeError, ...)
        raise _Untraceable(f"torch.fx cannot trace it ({type(e).__name__}: {e})") from e
    for name in (a, b):
        if name is not None and name not in tracer.outputs:
            raise _Untraceable(f"torch.fx does not see the output of {name!r} (inside a module "
                               "it does not trace into)")
    start = tracer.outputs[a]
    end = tracer.outputs[b] if b is not None else graph.output_node().args[0]
    if not isinstance(end, fx.Node):
        raise _Untraceable("the network's output is not a single tensor")
    needed, reached, stack = set(), False, [end]
    while stack:                                 # what `end` needs, stopping at `start`
        node = stack.pop()
        if node is start:
            reached = True
        elif node not in needed:
            needed.add(node)
            stack.extend(node.all_input_nodes)
    if not reached:
        raise IerfError(_not_after(a, b or "output"))
    image = next(n for n in graph.nodes if n.op == "placeholder")
    if image in needed:              # other placeholders: optional forward args, kept as is
        raise IerfError(_bypass(a, b or "output", needed, start, image, tracer.outputs))
    sub = fx.Graph()
    env = {start: sub.placeholder("pfvs_a")}
    for node in graph.nodes:
        if node in needed:
            env[node] = sub.node_copy(node, env.__getitem__)
    sub.output(env[end])
    return fx.GraphModule(net, sub, class_name="Subnetwork")


def _not_after(a: str, b: str) -> str:
    return (f"layer {b!r} does not depend on layer {a!r}: it runs before {a!r} or on a branch "
            f"that bypasses it. Pass a source layer a that comes before b (swap them?)")


def _bypass(a: str, b: str, needed: set[fx.Node], start: fx.Node, image: fx.Node,
            outputs: dict[str, fx.Node]) -> str:
    """Why ``a → b`` is no cut: where a path from the input that skips ``a`` joins."""
    after, upstream = {start}, {image}
    for node in start.graph.nodes:               # topological order
        for reached in (after, upstream):
            if node in needed and any(i in reached for i in node.all_input_nodes):
                reached.add(node)
    entry = next((n for n in start.graph.nodes if n in upstream and n not in after
                  and any(u in after for u in n.users)), None)
    via = ""
    if entry is not None:                        # the outermost module that outputs it
        names = sorted((q for q, n in outputs.items() if n is entry), key=lambda q: q.count("."))
        via = f" (the output of {names[0]!r} joins after {a!r})" if names else ""
    parents = [p for p in (a.rsplit(".", i)[0] for i in range(1, a.count(".") + 1))
               if not f"{b}.".startswith(f"{p}.")]   # enclosing a but not b
    hint = f", such as an enclosing block: {', '.join(map(repr, parents))}" if parents else ""
    return (f"{a!r} → {b!r} is not a cut: {b!r} also depends on the network input through a "
            f"path that bypasses {a!r}{via}, e.g. a residual connection around it. Pass a "
            f"source layer whose output is all that {b!r} needs{hint}")
