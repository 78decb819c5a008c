"""`tfvae.compiled.model_function`: one compiled function per (model, key), not keeping the model alive."""

import gc
import weakref

import tensorflow as tf

from tfvae import compiled


class _Model:
    def __init__(self, w):
        self.w = tf.Variable(w)


def _build_calls(log):
    def build(held):
        log.append("built")
        return lambda x: held().w * x

    return build


def test_one_function_per_model_and_key_reading_the_weights_when_called():
    log = []
    model = _Model(2.0)
    f = compiled.model_function(model, ("double",), _build_calls(log))
    assert compiled.model_function(model, ("double",), _build_calls(log)) is f
    assert log == ["built"]
    assert float(f(tf.constant(3.0))) == 6.0
    model.w.assign(5.0)  # the weights are read at call time, not baked into the trace
    assert float(f(tf.constant(3.0))) == 15.0
    # Another key, or another model, gets its own function.
    assert compiled.model_function(model, ("other",), _build_calls(log)) is not f
    assert compiled.model_function(_Model(1.0), ("double",), _build_calls(log)) is not f
    assert log == ["built"] * 3


def test_the_cache_does_not_keep_a_model_alive():
    model = _Model(1.0)
    f = compiled.model_function(model, ("k",), _build_calls([]))
    f(tf.constant(1.0))
    ref = weakref.ref(model)
    del model, f
    gc.collect()
    assert ref() is None
