"""The archive: its metadata CSV, labels, splits, boxes, expert labels, and synthetic archives."""
