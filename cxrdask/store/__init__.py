"""Zarr stores: features and pixels, their writer's lease, and where a store may be written."""
