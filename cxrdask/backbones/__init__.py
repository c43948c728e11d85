"""Frozen backbones: their spec and weights' identity, the networks, the engines that run
them (PyTorch, ONNX Runtime, OpenVINO), and the facts of the machine they run on."""
