"""Images to model inputs: decode, convert and resize once; normalise on the host or the device."""
