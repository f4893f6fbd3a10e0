"""The shipped layer traces (``*.npz``, docs/trace-format.md); how each was made is in traces/README.md."""
