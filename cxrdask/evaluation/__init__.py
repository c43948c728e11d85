"""Evaluation: per-disease scores and the audit a reviewer reads (bootstrap intervals,
DeLong's test, calibration, subgroups), Grad-CAM localisation, reports and plots."""
