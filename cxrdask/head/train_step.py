"""One optimisation step of the head: eager, or replayed as a CUDA graph on a GPU.

The head is tiny (2050->128->32->14): on a GPU one step's arithmetic takes microseconds,
and the step's cost is the ~40 kernel launches and the Python around them (about a
millisecond; 50 epochs of NIH's training split are ~15,000 steps). A CUDA graph records
the whole step once (forward, loss, backward, fused Adam) and replays it with one launch,
as PyTorch's "whole network capture" recipe does. The optimizer must be ``capturable`` with
its learning rate held in a device tensor, so a ReduceLROnPlateau change reaches the
replayed step (:func:`adam`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

WARMUP_STEPS = 3  # eager steps on a side stream before capture, as PyTorch's recipe asks


def adam(params, lr: float, weight_decay: float, betas: tuple[float, float], eps: float,
         device: torch.device) -> torch.optim.Adam:
    """Adam, fused where the build has it (fastest on CPU since torch 2.4 and on GPUs); on
    a GPU also capturable, with the learning rate in a device tensor (graph replays read it)."""
    kwargs: dict[str, Any] = dict(weight_decay=weight_decay, betas=tuple(betas), eps=eps)
    if device.type == "cuda":
        return torch.optim.Adam(params, lr=torch.tensor(lr, device=device), fused=True,
                                capturable=True, **kwargs)
    try:
        return torch.optim.Adam(params, lr=lr, fused=True, **kwargs)
    except (RuntimeError, TypeError):
        return torch.optim.Adam(params, lr=lr, **kwargs)


class EagerStep:
    """zero_grad, forward (under bf16 autocast when asked), loss, backward, optimizer step.

    Calling it returns the batch's mean loss as a device tensor (never read on the host
    here: a per-step ``.item()`` would make a GPU wait for every step).
    """

    graphed = False

    def __init__(self, layers: nn.Module, criterion: nn.Module, optimizer: torch.optim.Optimizer,
                 device: torch.device, precision: str):
        self.layers, self.criterion, self.optimizer = layers, criterion, optimizer
        self.device_type = device.type
        self.bf16 = precision == "bf16"

    def _forward_backward(self, inputs: torch.Tensor, targets: torch.Tensor,
                          cache: bool = True) -> torch.Tensor:
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast(self.device_type, dtype=torch.bfloat16, enabled=self.bf16,
                            cache_enabled=cache):
            logits = self.layers(inputs)
        loss = self.criterion(logits.float(), targets)
        loss.backward()
        self.optimizer.step()
        return loss.detach()

    def __call__(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self._forward_backward(inputs, targets)


class GraphedStep(EagerStep):
    """The step for full-size batches replayed from one CUDA graph; other sizes (an epoch's
    short last batch) run eagerly on the same weights and optimizer state.

    The first :data:`WARMUP_STEPS` full-size batches train eagerly on a side stream (real
    steps, not discarded); the next is captured and replayed, and every later one is copied
    into the graph's input buffers and replayed. The returned loss tensor is the graph's own
    buffer: read it (or add it up) before the next call.
    """

    graphed = True

    def __init__(self, layers, criterion, optimizer, device, precision):
        super().__init__(layers, criterion, optimizer, device, precision)
        self.batch_shape: torch.Size | None = None
        self.warm = 0
        self.graph: torch.cuda.CUDAGraph | None = None
        self.inputs: torch.Tensor | None = None
        self.targets: torch.Tensor | None = None
        self.loss: torch.Tensor | None = None

    def __call__(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if self.batch_shape is None:
            self.batch_shape = inputs.shape
        if inputs.shape != self.batch_shape:
            return self._forward_backward(inputs, targets)
        if self.graph is not None:
            assert self.inputs is not None and self.targets is not None and self.loss is not None
            self.inputs.copy_(inputs)
            self.targets.copy_(targets)
            self.graph.replay()
            return self.loss
        if self.warm < WARMUP_STEPS:
            self.warm += 1
            side = torch.cuda.Stream(device=inputs.device)
            side.wait_stream(torch.cuda.current_stream(inputs.device))
            with torch.cuda.stream(side):
                loss = self._forward_backward(inputs, targets, cache=False)
            torch.cuda.current_stream(inputs.device).wait_stream(side)
            return loss
        self.inputs, self.targets = inputs.clone(), targets.clone()
        self.optimizer.zero_grad(set_to_none=True)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):  # recorded, not run
            with torch.autocast(self.device_type, dtype=torch.bfloat16, enabled=self.bf16,
                                cache_enabled=False):
                logits = self.layers(self.inputs)
            loss = self.criterion(logits.float(), self.targets)
            loss.backward()
            self.optimizer.step()
        self.graph, self.loss = graph, loss.detach()
        graph.replay()  # this batch's step
        return self.loss


def train_step(layers: nn.Module, criterion: nn.Module, optimizer: torch.optim.Optimizer,
               device: torch.device, precision: str, cuda_graph: bool = True) -> EagerStep:
    """The step to train with: graphed on a GPU when ``cuda_graph`` is set, else eager."""
    kind = GraphedStep if device.type == "cuda" and cuda_graph else EagerStep
    return kind(layers, criterion, optimizer, device, precision)


__all__ = ["WARMUP_STEPS", "EagerStep", "GraphedStep", "adam", "train_step"]
