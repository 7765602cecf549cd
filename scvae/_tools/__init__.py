"""Stage 7, what a fitted model does with AnnData: impute, generate, predictive checks."""
