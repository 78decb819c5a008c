"""tfvae: variational autoencoders in Keras 3 whose networks output TFP distributions.

`import tfvae` loads the library only. The command's layer (`tfvae.runs`,
`tfvae.report`, `tfvae.cli`; matplotlib) loads on first use:
`from tfvae import runs`, or the attribute `tfvae.runs`.
"""

import importlib

from tfvae import anomaly
from tfvae import data
from tfvae import disentanglement
from tfvae import evaluation
from tfvae import export
from tfvae import gap
from tfvae import hyperparameters
from tfvae import marginal
from tfvae import mmd
from tfvae import objective_parts
from tfvae import objectives
from tfvae import random
from tfvae import records
from tfvae import shapes
from tfvae import sources
from tfvae import tables
from tfvae import tabular
from tfvae import vq
from tfvae.builders import build_vae
from tfvae.flows import IAFPosterior
from tfvae.flows import PlanarFlowPosterior
from tfvae.callbacks import KLWarmup
from tfvae.callbacks import LatentSummaries
from tfvae.callbacks import SurgeryLogs
from tfvae.callbacks import StopOnNonFinite
from tfvae.heads import BernoulliLikelihood
from tfvae.heads import CategoricalPixelLikelihood
from tfvae.heads import ContinuousBernoulliLikelihood
from tfvae.heads import DiagonalGaussianPosterior
from tfvae.heads import DiscretizedLogisticLikelihood
from tfvae.heads import DistributionHead
from tfvae.heads import FullCovarianceGaussianPosterior
from tfvae.heads import GaussianLikelihood
from tfvae.heads import GaussianPosterior
from tfvae.heads import LevelLikelihood
from tfvae.heads import LikelihoodHead
from tfvae.hierarchy import HierarchicalPosterior
from tfvae.hierarchy import HierarchicalPrior
from tfvae.model import VAE
from tfvae.networks import MLP
from tfvae.networks import ConvDecoder
from tfvae.networks import ConvEncoder
from tfvae.objectives import elbo
from tfvae.objectives import elbo_gap
from tfvae.objectives import iwae_bound
from tfvae.objectives import kl_divergence
from tfvae.objectives import log_likelihood
from tfvae.priors import MixtureOfGaussiansPrior
from tfvae.priors import Prior
from tfvae.priors import StandardNormalPrior
from tfvae.priors import VampPrior
from tfvae.tabular_likelihood import TabularLikelihood
from tfvae.vq import UniformCodePrior
from tfvae.vq import VQPosterior

__version__ = "0.2.0"

_LAZY_SUBMODULES = ("runs", "run_data", "report", "cli")


def __getattr__(name):
    """Imports the application layer's modules on first access (`tfvae.runs`)."""
    if name in _LAZY_SUBMODULES:
        return importlib.import_module(f"tfvae.{name}")
    raise AttributeError(f"module 'tfvae' has no attribute {name!r}")

__all__ = [
    "BernoulliLikelihood",
    "CategoricalPixelLikelihood",
    "ContinuousBernoulliLikelihood",
    "ConvDecoder",
    "ConvEncoder",
    "DiagonalGaussianPosterior",
    "DiscretizedLogisticLikelihood",
    "DistributionHead",
    "FullCovarianceGaussianPosterior",
    "GaussianLikelihood",
    "GaussianPosterior",
    "HierarchicalPosterior",
    "HierarchicalPrior",
    "IAFPosterior",
    "KLWarmup",
    "LatentSummaries",
    "SurgeryLogs",
    "StopOnNonFinite",
    "LevelLikelihood",
    "LikelihoodHead",
    "MLP",
    "MixtureOfGaussiansPrior",
    "PlanarFlowPosterior",
    "Prior",
    "StandardNormalPrior",
    "TabularLikelihood",
    "UniformCodePrior",
    "VAE",
    "VQPosterior",
    "VampPrior",
    "anomaly",
    "build_vae",
    "data",
    "disentanglement",
    "evaluation",
    "export",
    "elbo",
    "elbo_gap",
    "iwae_bound",
    "kl_divergence",
    "hyperparameters",
    "log_likelihood",
    "mmd",
    "objective_parts",
    "objectives",
    "random",
    "records",
    "shapes",
    "sources",
    "tables",
    "tabular",
    "vq",
]
