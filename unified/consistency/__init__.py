"""Cross-backend consistency: the same model and images through every backend, against fp32.

- `compare`: one report per backend (top-1 agreement, top-5 overlap, cosine, per-layer error).
- `checks` / `suite` / `pytest_plugin`: the conformance suite every backend, built-in or
  third-party, must pass (`pytest --unified-backend NAME`).
- `tiny_models`: small generated ONNX models the suite and the tests quantize in milliseconds.
"""
