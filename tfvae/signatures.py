"""How a `tfvae.VAE` presents itself to Keras' SavedModel writers.

A conditional model is called on `(x, y)`, but Keras traces a model's default
SavedModel signature and `model.export`'s endpoint from its build shape (x
alone). This mixin gives both the model's real call input. (tfvae's named
serving signatures are written by `tfvae.export`.)
"""

import tensorflow as tf

__all__ = [
    "Signatures",
]


class Signatures:
    """Mixin before `keras.Model`; uses the model's `event_shape` and `conditioning`."""

    def input_specs(self):
        """The call input's tensor specs, dynamic batch: `x`, or `(x, y)` if conditional."""
        x = tf.TensorSpec((None,) + self.event_shape, tf.float32, name="x")
        return (x, self.conditioning.spec()) if self.conditioning.active else x

    def export(self, filepath, format="tf_saved_model", verbose=None, input_signature=None,
               **kwargs):
        """`keras.Model.export`; a conditional model's default input is `(x, y)`."""
        if input_signature is None and self.conditioning.active:
            input_signature = [self.input_specs()]
        return super().export(filepath, format=format, verbose=verbose,
                              input_signature=input_signature, **kwargs)

    @property
    def _default_save_signature(self):
        # SavedModel writers trace the model's default signature from its build
        # shape (x only); a conditional model is called on (x, y).
        if not self.conditioning.active:
            return super()._default_save_signature
        return tf.function(lambda inputs: self(inputs), input_signature=(self.input_specs(),))
