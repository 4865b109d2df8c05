"""Semantic side of saic, torch-free (numpy + onnxruntime): the tiny10 classifier runtime
(`classifier`), gradient-based semantic weights (`gsw`) and the Semantic Information metric
(`si`).  See docs/si.md."""
