"""Pixels and files: codecs, structure probing, compositing. Knows neither HTTP nor the models."""
