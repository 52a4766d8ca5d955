"""The paper's analyses: dense vs. patch sampling, rarefied prediction, the
upper bound of a given output stride, and data-set statistics."""
