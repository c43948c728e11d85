"""Extraction: a run planned and submitted by the client (torch-free), the chunk task on the
workers, the local clusters they run on, and what the dashboard shows of them."""
