"""Compiled functions of a model, cached per model without keeping it alive.

Analyses outside the model (`tfvae.gap`, `tfvae.anomaly`) compile functions of a
model whose graphs depend on Python values (sample counts, the KL method), while
data, seeds and raw parameters are arguments and the weights are read when the
function runs. `model_function` builds each once per `(model, key)` and reuses its
traces; the cache's keys are weak, and a function holds its model only through a
`weakref`, so a model and its functions go together.
"""

import weakref

import tensorflow as tf

__all__ = ["model_function"]

_FUNCTIONS = weakref.WeakKeyDictionary()


def model_function(model, key, build, **options):
    """The `tf.function` of `build(model_ref)` for `(model, key)`, built on first use.

    Args:
      model: the model (a weak key of the cache).
      key: a hashable of the Python values the graph is built from.
      build: `model_ref -> function`; call `model_ref()` inside the function for
        the model, so that the cache does not keep it alive.
      **options: `tf.function` options (`autograph`, `reduce_retracing`, ...),
        fixed by the first call for a key.

    Returns:
      The compiled function.
    """
    functions = _FUNCTIONS.setdefault(model, {})
    if key not in functions:
        functions[key] = tf.function(build(weakref.ref(model)), **options)
    return functions[key]
