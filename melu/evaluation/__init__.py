"""How good is a model: metrics, baselines, scenario evaluation, reports, K-fold studies."""
