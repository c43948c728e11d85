"""Evaluation: a head scored on a store and the audit a reviewer reads. Its modules export:
:mod:`~cxrdask.evaluation.scoring` ``score_split``, ``Scores`` (probabilities per split, read
out of core); :mod:`~cxrdask.evaluation.audit` ``audit`` (bootstrap intervals, DeLong's test,
calibration, subgroups, operating points); :mod:`~cxrdask.evaluation.published` the published
NIH AUCs (``WANG_2017``, ``CHEXNET_2017``); :mod:`~cxrdask.evaluation.report` ``evaluate``,
``EvaluationReport``, ``build_report``, ``write_report`` (markdown, JSON, charts);
:mod:`~cxrdask.evaluation.localisation` ``localise`` (Grad-CAM boxes against NIH's)."""
