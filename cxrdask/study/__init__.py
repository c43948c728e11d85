"""Studies across archives: how a head travels, and how far apart two archives are.
:mod:`~cxrdask.study.table` has ``run_study`` (one head on every store and each archive's
internal score; each archive left out in turn and scored as an external validation; the
generalisation table of cross-archive papers, as markdown, JSON and a figure);
:mod:`~cxrdask.study.shift` has ``measure_shift`` (how separable two archives are in
feature space, and how their findings and demographics differ)."""
