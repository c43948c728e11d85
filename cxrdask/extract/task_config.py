"""What a chunk task is given and measures: its settings (:class:`TaskConfig`, small, so the
graph stays light) and its stage names. Torch-free: the client that plans and submits a run
and the worker that runs it both import it; neither imports the other's side for it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from cxrdask._fs import StorageOptions
from cxrdask.backbones.spec import BackboneSpec
from cxrdask.config import DEFAULT_BATCH_SIZE
from cxrdask.imaging.preprocessing import Preprocessing

STAGES = ("read_s", "decode_s", "resize_s", "forward_s", "write_s")
STAGE_NAMES = tuple(stage.removesuffix("_s") for stage in STAGES)


@dataclass(frozen=True)
class TaskConfig:
    """Everything a chunk task needs besides its rows; small, so the graph stays light."""

    store_url: str | None  # None: only the pixel store is written (cxrdask cache)
    storage_options: StorageOptions | None
    backbone: BackboneSpec
    preprocessing: Preprocessing
    device: str = "auto"
    precision: str = "fp32"
    compile: bool = False
    engine: str = "torch"
    batch_size: int = DEFAULT_BATCH_SIZE
    io_threads: int = 8
    torch_threads: int = 1
    flip_seed: int = 0
    pixels_url: str | None = None
    pixels_role: Literal["none", "source", "write"] = "none"
    read_retries: int = 4
    modalities: str = "CR,DX"  # DICOM modalities read (see ExtractConfig.modalities)
    leases: tuple[tuple[str, str], ...] = ()  # (store URL, the run's lease token): fencing

    @property
    def runs_backbone(self) -> bool:
        """Whether the task computes features (False: a cache pass, pixels only)."""
        return self.store_url is not None


__all__ = ["STAGES", "STAGE_NAMES", "TaskConfig"]
