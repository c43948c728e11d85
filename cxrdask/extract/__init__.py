"""Extraction: a pass planned and submitted by the client (torch-free) and the chunk task on
the workers. Its modules export, in the order a run meets them:
:mod:`~cxrdask.extract.plan` ``plan_extraction``, ``plan_from_pixels``, ``plan_cache``,
``ExtractionPlan`` (checked before any work; what kind of pass it is);
:mod:`~cxrdask.extract.layout` ``auto_chunk_rows``, ``local_layout``;
:mod:`~cxrdask.extract.resolve` what ``auto`` means on the workers;
:mod:`~cxrdask.extract.run` ``extract_features``, ``extract_from_pixels``, ``cache_pixels``,
``run_extraction``; :mod:`~cxrdask.extract.summary` ``ExtractSummary``, ``ChunkResult``;
:mod:`~cxrdask.extract.worker` the chunk task on a worker. The session's cluster, retries and
interrupts are :mod:`cxrdask.runtime`'s, shared with training and evaluation."""
