"""The meta-learned model: the estimator, adapt() with its batched kernel, the prediction path."""
