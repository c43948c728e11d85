"""Studies across archives: :mod:`~cxrdask.study.table` ``run_study`` (one head on every
store and each archive's internal score; each archive left out in turn and scored as an
external validation; the generalisation table of cross-archive papers, as markdown, JSON and
a figure), and :mod:`~cxrdask.study.shift` ``measure_shift`` (how separable two archives
are in feature space, and how their findings and demographics differ)."""
