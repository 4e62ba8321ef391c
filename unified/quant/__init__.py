"""Quantization algorithms any backend may use, independent of any platform's scheme: activation
statistics and range estimators (min-max, percentile, MSE, KL, ACIQ), bias correction, cross-layer
equalization, layer moments and adaptive weight rounding, and the build pipeline that applies them
before lowering a model onto the integer engine."""
