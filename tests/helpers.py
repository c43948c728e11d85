"""The suite's own machinery, shared by its test files: one way to run a ``cxrdask`` command
as a user runs it (:func:`cxrdask`), a cluster of ``dask scheduler`` and ``dask worker``
processes, what a stalled test prints, a backbone fine-tuned on a synthetic archive, and the
small utilities several files need. (What users call too is ``cxrdask.testing``.)
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import numpy as np
from PIL import Image

from cxrdask._fs import StorageOptions
from cxrdask.archive.findings import label_matrix
from cxrdask.archive.labels import LABELS
from cxrdask.archive.synthetic import render_image
from cxrdask.backbones.spec import FEATURE_DIMS
from cxrdask.imaging.decode import preprocess_bytes
from cxrdask.imaging.preprocessing import Preprocessing
from cxrdask.testing import free_port

ROOT = Path(__file__).resolve().parent.parent
# What a user's shell gives a command, less the progress bars and a display for charts.
ENV = {**os.environ, "TQDM_DISABLE": "1", "MPLBACKEND": "Agg",
       "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}


class CommandStalled(AssertionError):
    """A command :func:`cxrdask` ran outlasted its time; the message says where it was."""


def cxrdask(*args, cwd=None, timeout: float = 600, check: bool = False,
            scheduler: str | None = None, log_dir: str | os.PathLike | None = None,
            env: dict | None = None) -> subprocess.CompletedProcess:
    """``python -m cxrdask.cli ARGS`` run to its end, output captured, as a user runs it.

    With ``check``, a non-zero exit raises ``AssertionError`` with the output. One still
    running after ``timeout`` seconds is asked for its threads' stacks (SIGUSR1, see
    ``cxrdask --help``) and stopped, and :class:`CommandStalled` is raised with its output
    so far and, given the ``scheduler`` it ran on, :func:`cluster_report`: a hang then says
    where it hung instead of only that it did.
    """
    process = subprocess.Popen([sys.executable, "-m", "cxrdask.cli", *map(str, args)], text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=cwd,
                               env=ENV if env is None else env)
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        report = ""
        if scheduler is not None:
            from distributed import Client

            try:
                with Client(scheduler, timeout="10s") as client:
                    report = cluster_report(client, log_dir)
            except Exception as exc:
                report = f"the scheduler did not answer: {exc!r}"
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGUSR1)
        time.sleep(2)  # the stacks are written
        process.kill()
        stdout, stderr = process.communicate()
        raise CommandStalled(
            f"cxrdask {' '.join(map(str, args))} still ran after {timeout:.0f} s\n"
            f"--- its stdout ---\n{stdout[-4000:]}\n"
            f"--- its stderr (with the stacks SIGUSR1 printed) ---\n{stderr[-12000:]}\n"
            f"--- the cluster ---\n{report}") from None
    result = subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
    if check and result.returncode != 0:
        raise AssertionError(f"exit {result.returncode}\n{result.stdout}\n{result.stderr}")
    return result


def tree_digest(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder``, by relative path."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@contextmanager
def command_line_cluster(n_workers: int = 2, nthreads: int = 1,
                         log_dir: str | os.PathLike | None = None) -> Iterator[tuple[str, str]]:
    """``dask scheduler`` and ``n_workers`` ``dask worker`` processes (each a nanny and its
    worker), started as a user starts them, on 127.0.0.1; always stopped afterwards.

    Yields the scheduler's address and its dashboard's URL. With ``log_dir``, each process's
    log (what Dask prints: workers joining and leaving, a nanny restarting its worker) is
    written to ``scheduler.log`` and ``worker-N.log`` there, for a test to show when it fails.
    """
    from distributed import Client

    dask_cli = str(Path(sys.executable).parent / "dask")
    port, dashboard = free_port(), free_port()
    address = f"tcp://127.0.0.1:{port}"
    env = {**os.environ, "DASK_DISTRIBUTED__WORKER__DAEMON": "False"}

    logs: list[IO[bytes]] = []

    def start(name: str, *args: str) -> subprocess.Popen:
        output: int | IO[bytes] = subprocess.DEVNULL
        if log_dir is not None:
            output = open(Path(log_dir) / f"{name}.log", "wb")  # noqa: SIM115 (closed below)
            logs.append(output)
        return subprocess.Popen([dask_cli, *args], stdout=output, stderr=subprocess.STDOUT,
                                start_new_session=True, env=env)

    processes = [start("scheduler", "scheduler", "--host", "127.0.0.1", "--port", str(port),
                       "--dashboard-address", f"127.0.0.1:{dashboard}")]
    processes += [start(f"worker-{i}", "worker", address, "--nthreads", str(nthreads),
                        "--host", "127.0.0.1", "--dashboard-address", "127.0.0.1:0")
                  for i in range(n_workers)]
    try:
        with Client(address, timeout="60s") as client:
            client.wait_for_workers(n_workers, timeout=120)
        yield address, f"http://127.0.0.1:{dashboard}"
    finally:
        for process in processes:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
        for process in processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
        for log in logs:
            log.close()


def cluster_report(client, log_dir: str | os.PathLike | None = None) -> str:
    """What a cluster is doing, for a test that waited too long: the tasks each worker is
    processing with their call stacks, then the end of each ``*.log`` in ``log_dir`` (see
    :func:`command_line_cluster`). Never raises: a report must not hide the failure."""
    parts = []
    for name, ask in (("processing", client.processing), ("call stacks", client.call_stack)):
        try:
            parts.append(f"{name}: {ask()}")
        except Exception as exc:
            parts.append(f"{name}: could not be read ({exc!r})")
    if log_dir is not None:
        for log in sorted(Path(log_dir).glob("*.log")):
            parts.append(f"--- {log.name} ---\n{log.read_text(errors='replace')[-6000:]}")
    return "\n".join(parts)


def report_if_stalled(finished: threading.Event, client, after: float,
                      log_dir: str | os.PathLike | None = None) -> None:
    """Print :func:`cluster_report` if ``finished`` is not set within ``after`` seconds (run
    it in a daemon thread beside a test's work: pytest shows the printout when the test then
    times out, so a hang says where the cluster was)."""
    if not finished.wait(after):
        print(f"--- not finished after {after:.0f} s ---\n{cluster_report(client, log_dir)}",
              flush=True)


def finetune_backbone(metadata_url: str, archive_root: str, weights_out: str | os.PathLike, *,
                      image_size: int = 224,
                      epochs: int = 4, frozen_stages: int = 2, batch_size: int = 32,
                      learning_rate: float = 1e-3, seed: int = 0,
                      storage_options: StorageOptions | None = None) -> str:
    """A ResNet18 whose last blocks learned an archive's signs, saved for ``weights=``.

    What Grad-CAM needs to be tested on a synthetic archive: the last block of a
    random-weight backbone carries a sign only as pooled statistics, so its maps localise no
    better than another image's. This trains ResNet18 on the 14 labels (from
    ``metadata_url``) of the images on ``archive_root``'s ``train_val_list.txt`` (never its
    test list: localisation is scored there). The
    stem and the first ``frozen_stages`` blocks keep their random initial weights, and their
    outputs are computed once, so an epoch costs only the blocks that learn (about 13 s for
    444 images at 224 px on 2 cores, with ``frozen_stages=2``).

    Returns the weights file (a torchvision ``state_dict``; its classifier is ignored by
    extraction), for ``extract_features(..., backbone="resnet18", weights=...)`` and
    ``localise(..., weights=...)``.
    """
    import torch

    from cxrdask._fs import filesystem
    from cxrdask.archive.images import locate_images
    from cxrdask.archive.kinds.nih import read_metadata
    from cxrdask.archive.splits import read_official_lists
    from cxrdask.backbones.networks import ResNet, build_network

    lists = read_official_lists(archive_root, storage_options)
    if lists is None:
        raise FileNotFoundError(f"{archive_root} has no train_val_list.txt and test_list.txt")
    fs, _ = filesystem(archive_root, storage_options)
    frame = read_metadata(metadata_url, storage_options=storage_options)
    frame = frame[frame["image_index"].isin(lists[0])]
    urls = locate_images(archive_root, storage_options=storage_options,
                         expected=frame["image_index"]).urls_for(frame["image_index"])
    preprocessing = Preprocessing(size=image_size)
    images = np.stack([preprocess_bytes(fs.cat_file(url), name, preprocessing)[0]
                       for url, name in zip(urls, frame["image_index"], strict=True)])
    labels = torch.from_numpy(label_matrix(frame).astype(np.float32))

    torch.manual_seed(seed)
    model = build_network("resnet18")  # torchvision's ResNet18, its random draws
    assert isinstance(model, ResNet)
    model.fc = torch.nn.Linear(FEATURE_DIMS["resnet18"], len(LABELS))
    stem = torch.nn.Sequential(model.conv1, model.bn1, model.relu, model.maxpool)
    stages = [stem, model.layer1, model.layer2, model.layer3, model.layer4]
    fixed = torch.nn.Sequential(*stages[:1 + frozen_stages]).eval()
    learning = torch.nn.Sequential(*stages[1 + frozen_stages:], model.avgpool,
                                   torch.nn.Flatten(), model.fc)
    with torch.no_grad():
        inputs = torch.cat([fixed(torch.from_numpy(images[i:i + 64]))
                            for i in range(0, len(images), 64)])
    del images
    optimiser = torch.optim.Adam(learning.parameters(), learning_rate)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for batch in torch.randperm(len(inputs), generator=generator).split(batch_size):
            loss = torch.nn.functional.binary_cross_entropy_with_logits(
                learning(inputs[batch]), labels[batch])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    torch.save(model.state_dict(), os.fspath(weights_out))
    return os.fspath(weights_out)


def radiographs(root, n: int = 20) -> list[str]:
    """Non-square 8-bit PNGs (so the centre crop matters) with learnable signs, and a
    manifest that makes them an archive."""
    rng = np.random.default_rng(4)
    lines, paths = ["path,patient_id,Effusion,Cardiomegaly"], []
    for i in range(n):
        labels = np.zeros(14, np.uint8)
        labels[[1, 2]] = rng.random(2) < 0.5
        square = render_image(labels, size=288, seed=i, strength=2.0)
        image = square[:, 16:272] if i % 2 else square[20:268]  # 288x256 or 248x288
        path = root / f"img{i:02d}.png"
        Image.fromarray(image).save(path)
        paths.append(str(path))
        lines.append(f"{path.name},{i},{labels[2]},{labels[1]}")
    (root / "manifest.csv").write_text("\n".join(lines) + "\n")
    return paths


def assert_the_web_page_agrees_with_predict(checkpoint: str, image: str, weights=None) -> None:
    """The web page's path (Grad-CAM's maps, pooled) gives predict's probabilities."""
    from cxrdask.serve.diagnosis import Diagnoser
    from cxrdask.serve.inference import predict

    with open(image, "rb") as handle:
        data = handle.read()
    diagnosis = Diagnoser.load(checkpoint, weights=weights, device="cpu").diagnose(data, "x.png")
    expected = predict([image], checkpoint, weights=weights, device="cpu").iloc[0]
    for label, probability in diagnosis.probabilities.items():
        assert abs(probability - expected[label]) < 2e-3, label
    assert set(diagnosis.heatmaps) == set(diagnosis.probabilities)
