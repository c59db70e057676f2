"""Accuracy measurement shared by `maskid eval`, the benchmarks and training: `metrics`
(rank-k, thresholds at a false-accept rate, reports) and `splits` (the fixed dev/test splits)."""
