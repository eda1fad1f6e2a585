"""Weights shipped inside the package (the default model lives in ``default/``)."""
