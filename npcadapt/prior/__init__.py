"""Population priors for new players: conjugate Bayesian reward models on the base's last
hidden features (`bayes`), cohorts learned from recordings (`library`), their exact
expression as a last-layer LoRA delta (`head`), and the online trainer that serves each
player's posterior (`trainer`). docs/adaptation.md explains the method."""
