"""Checking the RTL against the model: simulators, the Verilog build cache, streams, the host-side driver."""
