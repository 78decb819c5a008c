"""tfvae: variational autoencoders in Keras 3 whose networks output TFP distributions.

`import tfvae` loads the library (and registers its Keras classes, so that
`keras.saving.load_model` reads tfvae models) when TensorFlow is already loaded,
as it is after `import keras` or `import tensorflow`. Before TensorFlow is
loaded, `import tfvae` imports neither, so that a program such as the `tfvae`
command can configure TensorFlow's logging first; the library then loads on
the first use of a public name (`tfvae.VAE`, `from tfvae import build_vae`, ...),
and a submodule on first access (`tfvae.data`). The command's layer
(`tfvae.runs`, `tfvae.report`, `tfvae.cli`; matplotlib) is not part of the
library and loads only when asked for.
"""

import importlib
import sys

__version__ = "0.2.0"

# Public name -> the module that defines it.
_NAMES = {
    "build_vae": "builders",
    "IAFPosterior": "flows",
    "PlanarFlowPosterior": "flows",
    "KLWarmup": "callbacks",
    "BernoulliLikelihood": "heads",
    "CategoricalPixelLikelihood": "heads",
    "ContinuousBernoulliLikelihood": "heads",
    "DiagonalGaussianPosterior": "heads",
    "DiscretizedLogisticLikelihood": "heads",
    "DistributionHead": "heads",
    "FullCovarianceGaussianPosterior": "heads",
    "GaussianLikelihood": "heads",
    "GaussianPosterior": "heads",
    "LevelLikelihood": "heads",
    "LikelihoodHead": "heads",
    "HierarchicalPosterior": "hierarchy",
    "HierarchicalPrior": "hierarchy",
    "VAE": "model",
    "MLP": "networks",
    "ConvDecoder": "networks",
    "ConvEncoder": "networks",
    "elbo": "objectives",
    "elbo_gap": "objectives",
    "iwae_bound": "objectives",
    "kl_divergence": "objectives",
    "log_likelihood": "objectives",
    "MixtureOfGaussiansPrior": "priors",
    "Prior": "priors",
    "StandardNormalPrior": "priors",
    "VampPrior": "priors",
}
# The library's public submodules (loaded with the library).
_SUBMODULES = ("data", "evaluation", "export", "gap", "objectives", "random")
# The command's layer: loaded only on first access.
_LAZY_SUBMODULES = ("runs", "report", "cli")


def _load_library():
    """Imports the library and binds its public names in this package."""
    for submodule in _SUBMODULES:
        importlib.import_module(f"tfvae.{submodule}")
    for name, module in _NAMES.items():
        globals()[name] = getattr(importlib.import_module(f"tfvae.{module}"), name)


def __getattr__(name):
    """Loads the library on the first use of a public name; submodules on first access."""
    if name in _SUBMODULES or name in _LAZY_SUBMODULES:
        return importlib.import_module(f"tfvae.{name}")
    if name in _NAMES:
        _load_library()
        return globals()[name]
    raise AttributeError(f"module 'tfvae' has no attribute {name!r}")


def __dir__():
    return sorted({*globals(), *_NAMES, *_SUBMODULES, *_LAZY_SUBMODULES})


__all__ = sorted([*_NAMES, "data", "evaluation", "export", "objectives", "random"])


# Deferring the library spares work only while TensorFlow is not loaded yet.
if "tensorflow" in sys.modules:
    _load_library()
