"""The diagnosis head: inputs, the model and its checkpoint, the lazy batch reader, training."""
