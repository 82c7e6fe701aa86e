"""vae-lab's VAE library, speaking the language of DTU 02456 lab 7 ("Analyzing the VAE").

    from model import ReparameterizedDiagonalGaussian, Bernoulli, VariationalAutoencoder, VariationalInference
"""

from model.runs.checkpoint import Checkpoint, CheckpointError, load_checkpoint
from model.config.train import TrainConfig
from model.core.distributions import Bernoulli, ReparameterizedDiagonalGaussian
from model.core.objectives import ElboTerms, ImportanceWeightedObjective, VariationalInference, iwae_bound
from model.kinds.gaussian import VariationalAutoencoder

__all__ = [
    "Bernoulli",
    "Checkpoint",
    "CheckpointError",
    "ElboTerms",
    "ImportanceWeightedObjective",
    "ReparameterizedDiagonalGaussian",
    "TrainConfig",
    "VariationalAutoencoder",
    "VariationalInference",
    "iwae_bound",
    "load_checkpoint",
]
