"""Frozen backbones: their spec and weights' identity, the networks, the engines that run
them (PyTorch, ONNX Runtime, OpenVINO), and the facts of the machine they run on. Its
modules export: :mod:`~cxrdask.backbones.spec` ``BackboneSpec`` (a backbone, its weights and
preprocessing; torch-free) and ``check_weights_available``; :mod:`~cxrdask.backbones.runner`
``load_backbone`` and the per-process ``cached_runner``; :mod:`~cxrdask.backbones.build`
``build_backbone``; :mod:`~cxrdask.backbones.engines` the engines' table (``ENGINE_RULES``);
:mod:`~cxrdask.backbones.hardware` what a machine computes natively."""
