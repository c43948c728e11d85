"""One image: its diagnosis, its Grad-CAM heatmaps, and the web page. Its modules export:
:mod:`~cxrdask.serve.inference` ``predict`` (files to probabilities),
:mod:`~cxrdask.serve.diagnosis` ``Diagnoser`` (probabilities and a Grad-CAM heatmap for one
image), and :mod:`~cxrdask.serve.web` ``create_app`` (the web page and its JSON API)."""
