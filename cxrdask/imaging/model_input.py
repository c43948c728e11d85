"""8-bit gray images -> the backbone's input, on the worker's device.

Workers hand the device uint8 pixels (a quarter of the bytes of float32, a twelfth of
float32 RGB): on a GPU they go over PCIe from pinned memory without blocking, on the
thread's own CUDA stream so one thread's copy overlaps another's network. There they are
resized when the store asks for ``torch-bilinear-antialias`` (the CPUs then only decode),
flipped where the 2018 recipe flips, scaled to [0, 1], normalised and repeated to three
channels in ``channels_last`` layout: the same arithmetic as
:func:`cxrdask.imaging.decode.to_model_input`, in the same order, so CPU features do not change.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from cxrdask.imaging.preprocessing import Preprocessing, centre_square

_STREAMS = threading.local()


class DeviceInput:
    """Turns batches of uint8 gray images into normalised float input on ``device``.

    Parameters
    ----------
    device
        Where the backbone runs.
    preprocessing
        Size, interpolation, mean and std (the store's).
    """

    def __init__(self, device: torch.device, preprocessing: Preprocessing):
        self.device = device
        self.preprocessing = preprocessing
        mean = torch.tensor(preprocessing.mean, dtype=torch.float32)
        std = torch.tensor(preprocessing.std, dtype=torch.float32)
        self.mean = mean.view(1, -1, 1, 1).to(device)
        self.std = std.view(1, -1, 1, 1).to(device)
        if device.type == "cuda":
            torch.cuda.synchronize(device)  # made on the default stream; used on others

    @contextlib.contextmanager
    def stream(self) -> Iterator[None]:
        """This thread's CUDA stream (one per thread, so transfers overlap other threads'
        compute); a no-op on the CPU."""
        if self.device.type != "cuda":
            yield
            return
        stream = getattr(_STREAMS, "stream", None)
        if stream is None:
            stream = _STREAMS.stream = torch.cuda.Stream(device=self.device)
        with torch.cuda.stream(stream):
            yield

    def to_device(self, images: np.ndarray) -> torch.Tensor:
        """A uint8 ``(B, H, W)`` array on the device (pinned, non-blocking on a GPU)."""
        array = np.ascontiguousarray(images)
        if not array.flags.writeable:  # an image of Pillow's: torch takes only writable arrays
            array = array.copy()
        tensor = torch.from_numpy(array)
        if self.device.type == "cuda":
            return tensor.pin_memory().to(self.device, non_blocking=True)
        return tensor

    def resize(self, images: Sequence[np.ndarray | torch.Tensor]) -> torch.Tensor:
        """Full-size uint8 images -> ``(B, size, size)`` uint8 on the device: torch's
        antialiased bilinear resize, rounded to 8 bits (as Pillow's output is).

        Images are host arrays, or tensors already on the device (JPEGs it decoded:
        :mod:`~cxrdask.imaging.jpeg_device`). Images of one shape go in one call; mixed
        shapes (other archives) one by one.
        """
        size = self.preprocessing.size
        if self.preprocessing.crop in ("centre", "shortest-edge"):  # the latter approximated
            images = [image[top:top + side, left:left + side]
                      for image in images for top, left, side in
                      [centre_square(image.shape[0], image.shape[1],
                                     self.preprocessing.crop_fraction)]]
        shapes = {tuple(image.shape) for image in images}
        if len(shapes) == 1 and all(isinstance(image, np.ndarray) for image in images):
            groups = [self.to_device(np.stack(images))]
        elif len(shapes) == 1:
            groups = [torch.stack([self._on_device(image) for image in images])]
        else:
            groups = [self._on_device(image)[None] for image in images]
        out = []
        for group in groups:
            if group.shape[-2:] == (size, size):
                out.append(group)
                continue
            resized = F.interpolate(group[:, None].float(), size=(size, size), mode="bilinear",
                                    antialias=True, align_corners=False)
            out.append(resized[:, 0].round_().clamp_(0, 255).to(torch.uint8))
        return out[0] if len(out) == 1 else torch.cat(out)

    def _on_device(self, image: np.ndarray | torch.Tensor) -> torch.Tensor:
        if isinstance(image, torch.Tensor):
            return image.to(self.device)
        return self.to_device(image)

    def normalise(self, pixels: torch.Tensor, flips: Sequence[bool] | None = None) -> torch.Tensor:
        """uint8 ``(B, size, size)`` on the device -> float32 ``(B, channels, size, size)``,
        normalised, ``channels_last``; rows with a true ``flips`` are mirrored left-right."""
        x = pixels.to(torch.float32) * (1.0 / 255.0)  # float32 arithmetic, as NumPy's
        if flips is not None and any(flips):
            mask = torch.as_tensor(np.asarray(flips, dtype=bool), device=x.device)
            x = torch.where(mask[:, None, None], x.flip(-1), x)
        x = (x[:, None] - self.mean) / self.std  # broadcast: (B, channels, H, W)
        return x.contiguous(memory_format=torch.channels_last)


__all__ = ["DeviceInput"]
