"""``steerinterp bench``: collection, steered generation, AUROC, LinEAS training and generation
against HuggingFace, each reported as a ratio to a baseline measured in the same run."""
