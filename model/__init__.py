"""vae-lab's VAE library, speaking the language of DTU 02456 lab 7 ("Analyzing the VAE").

    from model import ReparameterizedDiagonalGaussian, Bernoulli, VariationalAutoencoder, VariationalInference
"""

from model.checkpoint import Checkpoint, CheckpointError, load_checkpoint
from model.config import TrainConfig
from model.distributions import Bernoulli, ReparameterizedDiagonalGaussian
from model.objectives import ElboTerms, ImportanceWeightedObjective, VariationalInference, iwae_bound
from model.vae import VariationalAutoencoder

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
