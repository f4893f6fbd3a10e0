"""Training channel-gated networks with PyTorch and exporting their traces (the optional ``train`` extra).

Nothing outside this package and ``accel train`` / ``accel trace export`` imports it.
"""
