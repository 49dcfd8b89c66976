"""SPLADE pieces: pooling, losses, data, evaluation, a short instrumented training loop and
collapse detectors. Each module has one job; import from the module that owns a name."""
