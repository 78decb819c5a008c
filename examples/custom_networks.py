"""Your own encoder and decoder in a tfvae.VAE. Run: python examples/custom_networks.py [--quick] [--output DIR]"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import tfvae  # noqa: E402
from _common import example_parser, fresh_output_dir  # noqa: E402


@keras.saving.register_keras_serializable(package="tfvae_examples")
class SmallConvEncoder(keras.layers.Layer):
    """Conv -> flatten -> Dense: images [batch, H, W, C] to `output_units` numbers.

    `get_config` returns the constructor arguments, so a VAE using this layer can
    be saved to `.keras` and loaded again.
    """

    def __init__(self, output_units, filters=16, hidden_units=64, **kwargs):
        super().__init__(**kwargs)
        self.output_units = output_units
        self.filters = filters
        self.hidden_units = hidden_units
        self.conv = keras.layers.Conv2D(filters, 3, strides=2, padding="same", activation="relu")
        self.flatten = keras.layers.Flatten()
        self.hidden = keras.layers.Dense(hidden_units, activation="relu")
        self.out = keras.layers.Dense(output_units)

    def build(self, input_shape):
        shape = tuple(input_shape)
        for layer in (self.conv, self.flatten, self.hidden, self.out):
            layer.build(shape)
            shape = layer.compute_output_shape(shape)

    def call(self, x):
        return self.out(self.hidden(self.flatten(self.conv(x))))

    def get_config(self):
        return {
            **super().get_config(),
            "output_units": self.output_units,
            "filters": self.filters,
            "hidden_units": self.hidden_units,
        }


def make_decoder(latent_dim, params_size):
    """A plain keras.Sequential from z [batch, latent_dim] to `params_size` numbers."""
    return keras.Sequential(
        [
            keras.Input((latent_dim,)),
            keras.layers.Dense(64, activation="relu"),
            keras.layers.Dense(params_size),
        ],
        name="decoder",
    )


def main(argv=None):
    parser = example_parser(__doc__)
    parser.add_argument("--epochs", type=int, default=None)
    args = parser.parse_args(argv)
    epochs = args.epochs or (2 if args.quick else 40)
    latent_dim = 4
    output = fresh_output_dir(args.output, "custom_networks")
    keras.utils.set_random_seed(0)

    (x_train, _), (x_val, _) = tfvae.data.load_digits()

    # The heads fix how many numbers each network must produce per example:
    posterior = tfvae.DiagonalGaussianPosterior(latent_dim)     # [mean, raw scale]: 2 * latent_dim
    likelihood = tfvae.BernoulliLikelihood((8, 8, 1))           # one logit per pixel: 64
    prior = tfvae.StandardNormalPrior(latent_dim)
    print(f"encoder must output posterior.params_size = {posterior.params_size} values")
    print(f"decoder must output likelihood.params_size = {likelihood.params_size} values")

    encoder = SmallConvEncoder(posterior.params_size, name="encoder")
    decoder = make_decoder(latent_dim, likelihood.params_size)

    # A decoder of the wrong width is rejected when the VAE is built.
    wrong_decoder = make_decoder(latent_dim, likelihood.params_size - 1)
    try:
        tfvae.VAE(SmallConvEncoder(posterior.params_size), wrong_decoder, posterior, likelihood)
        mismatch_error = None
    except ValueError as error:
        mismatch_error = str(error)
        print(f"wrong decoder width -> ValueError: {mismatch_error}")

    model = tfvae.VAE(encoder, decoder, posterior, likelihood, prior, seed=0)
    model.compile(optimizer=keras.optimizers.Adam(2e-3))
    q = model.encode(x_val[:2])
    p = model.decode(q.mean())
    print(f"q(z|x): {type(q).__name__}, batch {q.batch_shape}, event {q.event_shape}")
    print(f"p(x|z): {type(p).__name__}, batch {p.batch_shape}, event {p.event_shape}")

    elbo_before = float(np.mean(model.elbo(x_val, seed=0)["elbo"]))
    history = model.fit(x_train, epochs=epochs, batch_size=64, validation_data=(x_val,), verbose=0)
    terms = model.elbo(x_val, seed=0)
    elbo_after = float(np.mean(terms["elbo"]))
    print(f"held-out ELBO (seed 0): {elbo_before:.3f} before, {elbo_after:.3f} after "
          f"{epochs} epochs (reconstruction {np.mean(terms['reconstruction']):.3f}, "
          f"KL {np.mean(terms['kl']):.3f})")

    # The custom layer's get_config makes the whole VAE saveable.
    path = os.path.join(output, "custom_vae.keras")
    model.save(path)
    restored = keras.saving.load_model(path)
    reloaded_terms = np.asarray(restored.elbo(x_val, seed=0)["elbo"])
    reloaded = float(np.mean(reloaded_terms))
    max_diff = float(np.max(np.abs(reloaded_terms - np.asarray(terms["elbo"]))))
    print(f"saved {path}; reloaded ELBO (seed 0) {reloaded:.3f} (max difference {max_diff:g}), "
          f"encoder type {type(restored.encoder).__name__}")

    return {
        "output": output,
        "epochs": epochs,
        "posterior_params_size": posterior.params_size,
        "likelihood_params_size": likelihood.params_size,
        "encoder_output_shape": tuple(encoder(x_val[:3]).shape),
        "decoder_output_shape": tuple(decoder(np.zeros((3, latent_dim), "float32")).shape),
        "mismatch_error": mismatch_error,
        "elbo_before": elbo_before,
        "elbo_after": elbo_after,
        "val_elbo_history": [float(v) for v in history.history["val_elbo"]],
        "elbo_reloaded": reloaded,
        "reload_max_abs_diff": max_diff,
    }


if __name__ == "__main__":
    main()
