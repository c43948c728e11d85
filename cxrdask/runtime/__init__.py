"""The Python session's shared machinery, used by every job that runs on Dask: its cluster
(:mod:`~cxrdask.runtime.cluster`: the session's local cluster, or a client of a running
scheduler), retries of transient storage failures (:mod:`~cxrdask.runtime.retries`) and
what Ctrl-C and the end of a command do (:mod:`~cxrdask.runtime.interrupt`).

Extraction, training, evaluation and the command line import it; it imports none of them.
"""
