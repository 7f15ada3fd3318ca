"""Autocoder: a reproducible pipeline that trains code-completion language models."""
