"""The fast path that `runtime.Runtime` switches on: compiled modules, CUDA graphs of the UNet call.

What to switch on is decided once, in runtime.py; this module only does it. A `FastPath` lives
as long as its pipeline (a ComfyUI re-run with a new seed reuses the loader's model, so its
compiled graphs and captured CUDA graphs too).
"""

from __future__ import annotations

import logging

import torch

from .decoding import vae_decoder
from .runtime import Runtime, describe

log = logging.getLogger("sfv")

# torch.compile mode per user choice. max-autotune's own CUDA graphs are left off: the UNet
# call's graph is captured by `GraphedCall`, one mechanism whether compiled or eager.
TORCH_COMPILE_MODES = {"default": "default", "max-autotune": "max-autotune-no-cudagraphs"}


class CompiledCall:
    """`function` compiled with static shapes (one graph per input shape, reused for new values),
    falling back to `function` itself, with a warning, if compiling fails (e.g. no Triton)."""

    def __init__(self, function, mode: str, name: str, backend="inductor"):
        self.eager, self.name = function, name
        # Modes are inductor's; another backend (tests count compilations with one) takes none.
        torch_mode = TORCH_COMPILE_MODES[mode] if backend == "inductor" else None
        self.compiled = torch.compile(function, mode=torch_mode, dynamic=False, backend=backend)

    def __call__(self, *args, **kwargs):
        if self.compiled is not None:
            try:
                return self.compiled(*args, **kwargs)
            except Exception as error:  # noqa: BLE001  compiler failures come as many types
                log.warning("torch.compile of the %s failed (%s: %s); running it uncompiled", self.name, type(error).__name__, error)
                self.compiled = None
        return self.eager(*args, **kwargs)


def _signature(value):
    if isinstance(value, torch.Tensor):
        return ("tensor", tuple(value.shape), value.dtype, value.device)
    return ("value", value)


def _clone(output):
    if isinstance(output, torch.Tensor):
        return output.clone()
    return type(output)(_clone(item) for item in output)


class _Captured:
    def __init__(self, graph: torch.cuda.CUDAGraph, args: list, kwargs: dict, output):
        self.graph, self.args, self.kwargs, self.output = graph, args, kwargs, output

    def replay(self, args, kwargs):
        for static, new in zip([*self.args, *self.kwargs.values()], [*args, *(kwargs[k] for k in self.kwargs)]):
            if isinstance(static, torch.Tensor):
                static.copy_(new)
        self.graph.replay()
        return _clone(self.output)  # the static output is overwritten by the next replay


class GraphedCall:
    """Replays `function` as a CUDA graph for a call signature (shapes, dtypes, plain values)
    it has seen before.

    The first call with a signature runs as it is (warm-up: lazy init, kernel choice, and the
    compile when `function` is compiled); the second captures the graph and replays it; later
    ones copy their inputs into the graph's and replay. A graph reads the weights at the
    addresses they had when it was captured, so moving `module` (ComfyUI unloads models to
    free memory and loads them back) drops every graph and starts over.
    """

    def __init__(self, function, module: torch.nn.Module):
        self.function, self.module = function, module
        self.seen: set = set()
        self.graphs: dict = {}  # signature -> _Captured, or None where capturing failed
        self.weights: tuple = ()

    def _weights_moved(self) -> bool:
        where = tuple(parameter.data_ptr() for parameter in self.module.parameters())
        moved, self.weights = where != self.weights, where
        return moved

    def __call__(self, *args, **kwargs):
        if self._weights_moved():
            self.seen.clear()
            self.graphs.clear()
        key = (tuple(_signature(a) for a in args), tuple((k, _signature(v)) for k, v in sorted(kwargs.items())))
        if key not in self.seen:
            self.seen.add(key)
            return self.function(*args, **kwargs)
        if key not in self.graphs:
            self.graphs[key] = self._capture(args, kwargs)
        captured = self.graphs[key]
        return self.function(*args, **kwargs) if captured is None else captured.replay(args, kwargs)

    def _capture(self, args, kwargs) -> _Captured | None:
        static = lambda value: value.clone() if isinstance(value, torch.Tensor) else value
        static_args, static_kwargs = [static(a) for a in args], {k: static(v) for k, v in kwargs.items()}
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                output = self.function(*static_args, **static_kwargs)
        except Exception as error:  # noqa: BLE001  an op that cannot be captured: keep running uncaptured
            log.warning("the UNet call could not be captured as a CUDA graph (%s: %s); running it uncaptured", type(error).__name__, error)
            return None
        return _Captured(graph, static_args, static_kwargs, output)


class FastUNet:
    """The UNet as `sampling.denoise` calls it, compiled and/or graphed as the runtime says."""

    def __init__(self, unet: torch.nn.Module, runtime: Runtime, backend="inductor"):
        self.unet = unet
        call = unet if runtime.compile == "off" else CompiledCall(unet, runtime.compile, "UNet", backend)
        self.call = GraphedCall(call, unet) if runtime.cuda_graphs else call

    def parameters(self):
        return self.unet.parameters()

    def __call__(self, *args, **kwargs):
        return self.call(*args, **kwargs)


class FastPath:
    """The UNet call and the decoder call of one model under one runtime."""

    def __init__(self, model, runtime: Runtime, backend="inductor"):
        self.unet = FastUNet(model.unet, runtime, backend)
        decoder = vae_decoder(model.vae)
        self.decoder = decoder if runtime.compile == "off" else CompiledCall(decoder, runtime.compile, "temporal decoder", backend)
        log.info("SF-V runs on %s", describe(runtime))
        if runtime.compile != "off":
            log.info("SF-V: torch.compile (%s) compiles the UNet and the decoder on the first run at each size; later runs reuse them", runtime.compile)
