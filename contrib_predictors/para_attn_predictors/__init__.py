"""Predictor plugins for para-attn-server: ``tiny`` (CPU default), ``noop`` and more."""
