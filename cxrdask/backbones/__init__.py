"""Frozen backbones: their spec and weights' identity, the networks, the engines that run
them (PyTorch, ONNX Runtime, TorchScript), and the facts of the machine they run on."""
