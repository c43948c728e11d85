"""What an extraction did: each chunk task's :class:`ChunkResult` and the run's
:class:`ExtractSummary`, built from them and the store's status, and kept in the store.

Torch-free: the worker makes a :class:`ChunkResult`, the client reads it, neither imports
the other's side for it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

from cxrdask.extract.metrics import span_metrics
from cxrdask.extract.task_config import STAGE_NAMES, STAGES, TaskConfig

if TYPE_CHECKING:
    import pandas as pd

    from cxrdask.store.rows import RowStore


@dataclass
class ChunkResult:
    """What one chunk task tells the client: its rows' outcome and its seconds per stage.

    Attributes
    ----------
    chunk, worker, images, ok
        The chunk's number, the worker that ran it, its rows, and those written.
    failures, retriable, conversions : list of (str, str)
        Image index and reason of each failed row; of each row a transient storage failure
        left unread (the chunk stays not done); of each image converted on the way (a JPEG
        file, a 16-bit PNG).
    read_s, decode_s, resize_s, forward_s, write_s, task_s : float
        Seconds per stage, summed over the chunk's rows, and the whole task's.
    """

    chunk: int
    worker: str
    images: int
    ok: int
    failures: list[tuple[str, str]] = field(default_factory=list)
    retriable: list[tuple[str, str]] = field(default_factory=list)
    conversions: list[tuple[str, str]] = field(default_factory=list)
    read_s: float = 0.0
    decode_s: float = 0.0
    resize_s: float = 0.0
    forward_s: float = 0.0
    write_s: float = 0.0
    task_s: float = 0.0

    def timing(self) -> dict:
        """The row of :attr:`ExtractSummary.timings` for this chunk: counts and seconds."""
        return {k: v for k, v in asdict(self).items()
                if k not in ("failures", "conversions", "retriable")}


@dataclass
class ExtractSummary:
    """What an extraction did: rows written and failed, chunks run and skipped, speed, stage times.

    Attributes
    ----------
    rows_written, rows_failed : int
        This run's rows.
    store_rows_failed, store_rows_done : int
        The whole store's failed and written rows (earlier runs included).
    chunks_total, chunks_run, chunks_skipped : int
        Chunks of the store, run now, skipped as done (after their checksums were checked).
    chunks_damaged : list of int
        Chunks an earlier run marked done that failed their checksums (or lost their data)
        when this run read them; they were recomputed (and are among ``chunks_run``).
    seconds, warmup_seconds : float
        The run's time after the workers' model warm-up, and the warm-up (the workers'
        start-up, imports and model build).
    failures : list of (str, str)
        Image index and reason of each failed row of this run.
    retriable : list of (str, str)
        Rows left unread by transient storage failures (their chunks are not done: the next
        run reads them), with the last error.
    stage_seconds : dict of str to float
        Seconds per stage over every worker, read back from the dashboard's fine performance
        metrics of the run's span (``span_id``).
    timings : pandas.DataFrame
        One row per chunk task: worker, images and seconds per stage.
    precision : str
        The backbone's arithmetic this run used (``precision="auto"`` made concrete).
    compiled : bool
        Whether the backbone was compiled (``compile="auto"`` made concrete).
    engine : str
        What ran the backbone: ``torch``, ``onnxruntime`` or ``openvino``
        (``engine="auto"`` made concrete).
    """

    store_url: str
    rows_total: int
    rows_written: int
    rows_failed: int
    chunks_total: int
    chunks_skipped: int
    chunks_run: int
    seconds: float
    warmup_seconds: float
    failures: list[tuple[str, str]] = field(default_factory=list)
    conversions: list[tuple[str, str]] = field(default_factory=list)
    timings: pd.DataFrame = field(default_factory=lambda: _frame([]), repr=False)
    dashboard_link: str | None = None
    split: str = ""
    chunk_rows: int = 0
    retriable: list[tuple[str, str]] = field(default_factory=list)  # read again by the next run
    store_rows_failed: int = 0  # failed rows in the whole store, earlier runs included
    store_rows_done: int = 0  # rows of the store that are written (ok or failed)
    # Seconds per stage over every worker, read back from the scheduler's fine performance
    # metrics of this run's span (what the dashboard shows); empty when nothing ran.
    stage_seconds: dict[str, float] = field(default_factory=dict)
    span_id: str | None = None
    precision: str = ""  # the backbone's arithmetic ("auto" made concrete); "" for a cache pass
    compiled: bool = False  # whether the backbone was torch.compile'd ("auto" made concrete)
    engine: str = ""  # torch, onnxruntime or openvino ("auto" made concrete); "" for a cache pass
    # Chunks marked done by an earlier run that failed their checksums (or lost their data)
    # when this run checked them, and were recomputed.
    chunks_damaged: list[int] = field(default_factory=list)

    @property
    def failed_fraction(self) -> float:
        """Failed rows as a share of the store's written rows (what the threshold checks)."""
        return self.store_rows_failed / self.store_rows_done if self.store_rows_done else 0.0

    @property
    def images_per_second(self) -> float:
        done = self.rows_written + self.rows_failed
        return done / self.seconds if self.seconds > 0 else 0.0

    def per_worker(self) -> pd.DataFrame:
        """Seconds per stage (read, decode, resize, forward, write) summed per worker."""
        if self.timings.empty:
            return self.timings
        columns = ["images", *STAGES, "task_s"]
        return self.timings.groupby("worker")[columns].sum()

    def __str__(self) -> str:
        lines = [
            f"store: {self.store_url}",
            f"split: {self.split}",
            f"chunks: {self.chunks_run} run, {self.chunks_skipped} skipped as already done"
            + (" (their checksums checked)" if self.chunks_skipped else "")
            + f", {self.chunks_total} in all ({self.chunk_rows} rows each)"
            + (f"; {len(self.chunks_damaged)} found damaged and recomputed: {self.chunks_damaged}"
               if self.chunks_damaged else ""),
            f"rows: {self.rows_written} written, {self.rows_failed} failed "
            f"(of {self.rows_total} in the store)",
            f"time: {self.seconds:.1f} s ({self.images_per_second:.1f} images/s"
            + (f", {self.precision}" if self.precision else "")
            + (", compiled" if self.compiled else "")
            + (f", {self.engine}" if self.engine else "")
            + f"), model warm-up {self.warmup_seconds:.1f} s",
        ]
        if self.retriable:
            lines.append(f"rows to read again (transient storage failures, chunks not done): "
                         f"{len(self.retriable)}, e.g. {self.retriable[0][0]}: {self.retriable[0][1]}")
        if self.failures:
            lines.append("failed images (also in the store: FeatureStore.failures()):")
            lines += [f"  {name}: {reason}" for name, reason in self.failures[:10]]
            if len(self.failures) > 10:
                lines.append(f"  ... and {len(self.failures) - 10} more")
        if self.conversions:
            lines.append(f"converted images: {len(self.conversions)} "
                         f"(e.g. {self.conversions[0][0]}: {self.conversions[0][1]})")
        if any(self.stage_seconds.values()):
            total = sum(self.stage_seconds.values())
            lines.append("seconds per stage, all workers (the dashboard's Fine Performance "
                         "Metrics): " + ", ".join(f"{stage} {seconds:.1f} ({seconds / total:.0%})"
                                                  for stage, seconds in self.stage_seconds.items()))
        if not self.timings.empty:
            lines.append("seconds per stage and worker:")
            lines += ["  " + row for row in self.per_worker().round(2).to_string().splitlines()]
        return "\n".join(lines)


def _frame(records: list[dict]) -> pd.DataFrame:
    """A DataFrame of ``records``. pandas is imported here, at a call, not with this module:
    ``extract_features`` starts its cluster first and imports pandas (0.5 s on one core)
    to read the metadata while the worker processes start."""
    import pandas as pd

    return pd.DataFrame(records)


def summarise(client, store: RowStore, results: list[ChunkResult], config: TaskConfig,
              span_id: str, *, todo: list[int], damaged: list[int], seconds: float,
              warm_seconds: float) -> ExtractSummary:
    """The run's :class:`ExtractSummary`: its tasks' results, the store's whole status, and
    the stage times the dashboard's metrics recorded for the run's span."""
    from cxrdask.store.features import STATUS_FAILED, STATUS_PENDING

    failures = [f for r in results for f in r.failures]
    timings = _frame([r.timing() for r in results])
    status = store.read("status")
    images_run = sum(r.images for r in results)
    measured = span_metrics(client, span_id, expect_images=images_run) if results else {}
    return ExtractSummary(
        store_url=store.url,
        rows_total=store.n_rows,
        rows_written=sum(r.ok for r in results),
        rows_failed=len(failures),
        chunks_total=store.n_chunks,
        chunks_skipped=store.n_chunks - len(todo),
        chunks_run=len(todo),
        chunks_damaged=damaged,
        seconds=seconds,
        warmup_seconds=warm_seconds,
        failures=failures,
        retriable=[f for r in results for f in r.retriable],
        conversions=[c for r in results for c in r.conversions],
        timings=timings,
        dashboard_link=getattr(client, "dashboard_link", None),
        split=store.provenance["split"].get("description", ""),
        chunk_rows=store.chunk_rows,
        store_rows_failed=int((status == STATUS_FAILED).sum()),
        store_rows_done=int((status != STATUS_PENDING).sum()),
        stage_seconds={stage: measured.get(stage, 0.0) for stage in STAGE_NAMES},
        span_id=span_id,
        precision=config.precision if config.runs_backbone else "",
        compiled=config.compile is True,
        engine=config.engine if config.runs_backbone else "",
    )


def record_run(store: RowStore, summary: ExtractSummary) -> None:
    """Keep the run's outcome in the store: failed-row count and conversions (first 1,000)."""
    previous = store.provenance.get("conversions", [])
    conversions = (previous + [list(c) for c in summary.conversions])[:1000]
    store.update_provenance(
        failed_rows=summary.store_rows_failed,  # counted from the status read in _run
        conversions=conversions,
        complete=store.is_complete(),
        last_run={"chunks_run": summary.chunks_run, "chunks_skipped": summary.chunks_skipped,
                  "seconds": round(summary.seconds, 3),
                  "images_per_second": round(summary.images_per_second, 2)},
    )


__all__ = ["ChunkResult", "ExtractSummary", "record_run", "summarise"]
