"""Population priors for new players (issue 14, in progress): conjugate Bayesian reward
models on the base's last hidden features, mixed over cohorts, and their exact
expression as a LoRA delta of the last layer. Not yet wired into serving."""
