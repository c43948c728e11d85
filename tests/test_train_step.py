"""The head's training step: eager on the CPU, replayed from a CUDA graph on a GPU."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cxrdask.head.model import new_head
from cxrdask.head.train_step import WARMUP_STEPS, EagerStep, GraphedStep, adam, train_step

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _batches(device: str, n: int = 12, size: int = 64, last: int = 17):
    generator = torch.Generator().manual_seed(1)
    out = []
    for i in range(n):
        rows = last if i == n - 1 else size
        x = torch.randn(rows, 2050, generator=generator)
        y = (x[:, :14] > 0.5).float()  # learnable: labels are a function of the inputs
        out.append((x.to(device), y.to(device)))
    return out


def _train(device: str, cuda_graph: bool, precision: str = "fp32", lr_after: float | None = None):
    head = new_head(2050, seed=0).to(device)
    optimizer = adam(head.parameters(), 1e-3, 1e-5, (0.9, 0.999), 1e-8, torch.device(device))
    criterion = nn.BCEWithLogitsLoss()
    step = train_step(head.layers, criterion, optimizer, torch.device(device), precision, cuda_graph)
    losses = []
    for i, (x, y) in enumerate(_batches(device)):
        if lr_after is not None and i == WARMUP_STEPS + 2:
            optimizer.param_groups[0]["lr"].fill_(lr_after)  # as ReduceLROnPlateau does
        losses.append(float(step(x, y)))
    return head, step, losses


def test_on_the_cpu_the_step_is_eager_and_learns():
    _, step, losses = _train("cpu", cuda_graph=True)
    assert type(step) is EagerStep
    assert sum(losses[-3:]) < sum(losses[:3])


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_the_graphed_step_trains_as_the_eager_one(precision):
    graphed_head, step, graphed = _train("cuda", cuda_graph=True, precision=precision)
    eager_head, _, eager = _train("cuda", cuda_graph=False, precision=precision)
    assert isinstance(step, GraphedStep) and step.graph is not None  # it was captured and replayed
    tolerance = 1e-4 if precision == "fp32" else 2e-2
    assert graphed == pytest.approx(eager, rel=tolerance, abs=tolerance)
    for a, b in zip(graphed_head.parameters(), eager_head.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=tolerance, atol=tolerance)


@pytest.mark.gpu
@needs_cuda
def test_a_changed_learning_rate_reaches_the_replayed_step():
    head, step, _ = _train("cuda", cuda_graph=True, lr_after=0.0)
    assert step.graph is not None
    before = [p.detach().clone() for p in head.parameters()]
    x, y = _batches("cuda")[0]
    step(x, y)  # a replay at lr 0 leaves the weights where they are
    for a, b in zip(before, head.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-7)
