"""headscope: diagnose and calibrate the MLM head of pretrained encoders for SPLADE.

This module stays import-light (no torch) so that `headscope check --report` works where torch is
not installed. The public verbs live in `headscope.api`.
"""

__version__ = "0.1.0"
