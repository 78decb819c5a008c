"""Flow posteriors: a diagonal Gaussian pushed through inverse autoregressive or planar steps.

q(z|x) is `TransformedDistribution(N(μ, diag σ²), IAF_T ∘ … ∘ IAF_1)` where
each step (Kingma et al., 2016) is conditioned on a context vector h from the
encoder:

    [m, s] = MADE_t(z, h),  σ_t = sigmoid(s + 1.5),  z ← σ_t ⊙ z + (1 − σ_t) ⊙ m,

with `log |det ∂z'/∂z| = Σ_j log σ_tj` and the order of z reversed between
steps. Sampling is one parallel pass per step; the density of a sample drawn
by the flow comes from TFP's bijector cache, and of any other z from an exact
sequential inverse. No closed-form KL exists, so objectives use Monte Carlo.

`PlanarFlowPosterior` instead uses amortised planar steps
`z ← z + û tanh(wᵀz + b)` whose parameters the encoder outputs per example.
"""

import numpy as np
import keras
import tensorflow as tf
import tensorflow_probability as tfp

from tfvae import _checks
from tfvae import networks
from tfvae.heads import Posterior
from tfvae.hyperparameters import Hyperparameter

__all__ = [
    "FLOW_STEPS",
    "FlowPosterior",
    "IAFPosterior",
    "made_masks",
    "MaskedDense",
    "PlanarFlowPosterior",
]

# The flows' one option by name (`build_vae(num_steps=...)`, `tfvae train --num-steps`);
# None keeps each flow's own default.
FLOW_STEPS = Hyperparameter(None, _checks.positive_int, "the number of flow steps (default: "
                            "the flow's own: IAF 2, planar 4)", type=int)

tfd = tfp.distributions
tfb = tfp.bijectors

_FORGET_BIAS = 1.5
_PLANAR_MARGIN = 1e-4


@keras.saving.register_keras_serializable(package="tfvae")
class MaskedDense(keras.layers.Layer):
    """A dense layer whose kernel is multiplied by a fixed 0/1 mask (MADE, Germain et al. 2015).

    `seed` seeds the initial kernel (default `None`: Keras's global random state).
    """

    def __init__(self, mask, activation=None, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.mask = np.asarray(mask, dtype="float32")
        self.activation = keras.activations.get(activation)
        self.seed = None if seed is None else _checks.non_negative_int("seed", seed)
        self.kernel = self.add_weight(
            shape=self.mask.shape, initializer=networks.kernel_initializer(self.seed),
            name="kernel",
        )
        self.bias = self.add_weight(shape=(self.mask.shape[1],), initializer="zeros", name="bias")
        self.built = True  # every weight exists already

    def call(self, inputs):
        kernel = tf.convert_to_tensor(self.kernel) * self.mask
        return self.activation(tf.matmul(inputs, tf.cast(kernel, inputs.dtype)) + self.bias)

    def get_config(self):
        return {**super().get_config(), "mask": self.mask.tolist(),
                "activation": keras.activations.serialize(self.activation), "seed": self.seed}


def made_masks(latent_dim, context_dim, hidden_units):
    """Masks for a one-hidden-layer MADE on `[z, h]` whose output j sees only z_<j.

    Returns:
      `(input_to_hidden [d + c, H], hidden_to_output [H, 2d])`; outputs are
      `[m_1..m_d, s_1..s_d]`.
    """
    d = latent_dim
    hidden_degree = np.arange(hidden_units) % d  # 0..d-1; 0 = context only
    input_degree = np.concatenate([np.arange(1, d + 1), np.zeros(context_dim)])
    input_to_hidden = (hidden_degree[None, :] >= input_degree[:, None]).astype("float32")
    input_to_hidden[d:] = 1.0  # the context reaches every hidden unit
    output_degree = np.tile(np.arange(1, d + 1), 2)
    hidden_to_output = (output_degree[None, :] > hidden_degree[:, None]).astype("float32")
    return input_to_hidden, hidden_to_output


class _IAFStep(tfb.Bijector):
    """One conditional IAF step as a TFP bijector (forward: parallel; inverse: sequential)."""

    def __init__(self, shift_and_gate_fn, latent_dim, name="iaf_step"):
        parameters = dict(locals())
        self._fn = shift_and_gate_fn
        self._latent_dim = latent_dim
        super().__init__(forward_min_event_ndims=1, parameters=parameters, name=name)

    def _gate(self, z):
        m, s = self._fn(z)
        return m, tf.sigmoid(s + _FORGET_BIAS)

    def _forward(self, z):
        m, gate = self._gate(z)
        return gate * z + (1.0 - gate) * m

    def _inverse(self, y):
        # Output j depends on z_<j only, so d fixed-point passes recover z exactly.
        z = tf.zeros_like(y)
        for _ in range(self._latent_dim):
            m, gate = self._gate(z)
            z = (y - (1.0 - gate) * m) / gate
        return z

    def _forward_log_det_jacobian(self, z):
        return tf.reduce_sum(tf.math.log_sigmoid(self._fn(z)[1] + _FORGET_BIAS), axis=-1)


class FlowPosterior(Posterior):
    """Base class: N(μ, diag σ²) pushed through the bijectors `_steps(parameters)` returns.

    Subclasses set `latent_dim`, `event_shape` and implement `params_size`,
    `_parameters` (with at least `loc` and `scale`) and `_steps`.
    """

    def _steps(self, parameters):
        """The flow's bijectors, first step first."""
        raise NotImplementedError

    def distribution(self, parameters):
        base = tfd.MultivariateNormalDiag(loc=parameters["loc"], scale_diag=parameters["scale"])
        # tfb.Chain applies its list last-to-first.
        return tfd.TransformedDistribution(base, tfb.Chain(self._steps(parameters)[::-1]))

    def reparameterize(self, parameters, eps):
        """z = flow(μ + σ ⊙ ε) for standard normal `eps` `[..., latent_dim]`."""
        z = parameters["loc"] + parameters["scale"] * eps
        for step in self._steps(parameters):
            z = step.forward(z)
        return z

    def sampler(self, parameters):
        """q and `reparameterize` through q's own flow (its log density then needs no
        inverse: TFP caches the base sample)."""
        q = self.distribution(parameters)
        return q, lambda eps: q.bijector.forward(parameters["loc"] + parameters["scale"] * eps)


@keras.saving.register_keras_serializable(package="tfvae")
class IAFPosterior(FlowPosterior):
    """q(z|x): N(μ, diag σ²) through `num_steps` inverse autoregressive flow steps.

    The encoder outputs `[μ, s, h]`: `latent_dim` means, `latent_dim` raw
    scales (`σ = softplus(s) + min_scale`) and a `context_dim` context vector
    h that conditions every step's MADE network.

    Args:
      latent_dim: size of z.
      num_steps: IAF steps. Default value: `2`.
      hidden_units: MADE hidden width per step. Default value: `64`.
      context_dim: size of h. Default value: `16`.
      min_scale: lower bound on σ. Default value: `1e-5`.
      seed: seed of the MADE networks' initial weights. Default value: `None`
        (Keras's global random state).
    """

    dreg_unbiased = False  # the MADE networks are weights of q's own

    # build_vae passes it a seed (its made networks' initial weights).
    seeded = True
    hyperparameters = {"num_steps": FLOW_STEPS}

    def __init__(self, latent_dim, num_steps=2, hidden_units=64, context_dim=16,
                 min_scale=1e-5, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.latent_dim = _checks.positive_int("latent_dim", latent_dim)
        self.num_steps = _checks.positive_int("num_steps", num_steps)
        self.hidden_units = _checks.positive_int("hidden_units", hidden_units)
        self.context_dim = _checks.positive_int("context_dim", context_dim)
        self.min_scale = _checks.non_negative_float("min_scale", min_scale)
        self.seed = None if seed is None else _checks.non_negative_int("seed", seed)
        self.event_shape = (self.latent_dim,)
        to_hidden, to_output = made_masks(self.latent_dim, self.context_dim, self.hidden_units)
        self.made_hidden = [
            MaskedDense(to_hidden, activation="elu", name=f"made_{t}_hidden",
                        dtype=self.dtype_policy, seed=networks.derive_seed(self.seed, 2 * t))
            for t in range(self.num_steps)
        ]
        self.made_output = [
            MaskedDense(to_output, name=f"made_{t}_output", dtype=self.dtype_policy,
                        seed=networks.derive_seed(self.seed, 2 * t + 1))
            for t in range(self.num_steps)
        ]
        # Small initial outputs: each step starts close to the identity map.
        for output in self.made_output:
            output.kernel.assign(output.kernel * 0.01)

    def build(self, input_shape):
        self.built = True  # the MADE layers create their weights in __init__

    @property
    def params_size(self):
        return 2 * self.latent_dim + self.context_dim

    def _parameters(self, flat):
        d = self.latent_dim
        loc, raw_scale, context = tf.split(flat, [d, d, self.context_dim], axis=-1)
        return {"loc": loc, "scale": tf.nn.softplus(raw_scale) + self.min_scale, "context": context}

    def _shift_and_gate_fn(self, step, context):
        hidden_layer, output_layer = self.made_hidden[step], self.made_output[step]

        def fn(z):
            # Broadcast z and h against each other: z may carry extra leading
            # dims (samples, or mixture components when this q is a VampPrior's).
            # (Broadcasting by addition keeps the graph convertible to ONNX.)
            h = context + tf.zeros_like(z[..., :1])
            z = z + tf.zeros_like(context[..., :1])
            out = output_layer(hidden_layer(tf.concat([z, h], axis=-1)))
            return out[..., : self.latent_dim], out[..., self.latent_dim :]

        return fn

    def _steps(self, parameters):
        """The flow, first step first, with the order of z reversed between steps."""
        context = parameters["context"]
        reverse = tfb.Permute(list(range(self.latent_dim))[::-1])
        steps = []
        for t in range(self.num_steps):
            if t:
                steps.append(reverse)
            steps.append(_IAFStep(self._shift_and_gate_fn(t, context), self.latent_dim,
                                  name=f"iaf_step_{t}"))
        return steps

    def get_config(self):
        return {
            **super().get_config(),
            "latent_dim": self.latent_dim,
            "num_steps": self.num_steps,
            "hidden_units": self.hidden_units,
            "context_dim": self.context_dim,
            "min_scale": self.min_scale,
            "seed": self.seed,
        }


class _PlanarStep(tfb.Bijector):
    """One planar step `z' = z + û tanh(wᵀz + b)` (Rezende & Mohamed, 2015) as a TFP bijector.

    `û = u + (softplus(wᵀu) − 1 − wᵀu) w / ‖w‖²` makes `wᵀû ≥ −1`, so the map is
    invertible. The inverse solves the monotone scalar equation
    `wᵀy = α + (wᵀû) tanh(α + b)` for `α = wᵀz` by bisection on the bracket
    `wᵀy ± |wᵀû|`, then `z = y − û tanh(α + b)`: exact to float precision. A
    final Newton step from the (gradient-stopped) bisection root gives the
    inverse its exact gradient (implicit differentiation), which the density
    of z not drawn by the flow needs (e.g. under a VampPrior or DReG).
    A margin keeps `wᵀû ≥ −1 + 1e-4`, strictly invertible in float32.
    """

    _BISECTIONS = 60

    def __init__(self, u, w, b, name="planar_step"):
        parameters = dict(locals())
        w_dot_u = tf.reduce_sum(w * u, axis=-1, keepdims=True)
        norm = tf.reduce_sum(tf.square(w), axis=-1, keepdims=True) + 1e-8
        self._u = u + (tf.nn.softplus(w_dot_u) - 1.0 + _PLANAR_MARGIN - w_dot_u) * w / norm
        self._w, self._b = w, b
        self._c = tf.reduce_sum(self._w * self._u, axis=-1, keepdims=True)  # wᵀû ≥ −1
        super().__init__(forward_min_event_ndims=1, parameters=parameters, name=name)

    def _alpha(self, z):
        return tf.reduce_sum(self._w * z, axis=-1, keepdims=True) + self._b

    def _forward(self, z):
        return z + self._u * tf.tanh(self._alpha(z))

    def _inverse(self, y):
        target = tf.reduce_sum(self._w * y, axis=-1, keepdims=True)  # wᵀy
        spread = tf.abs(self._c) + 1e-6
        low, high = target - spread, target + spread
        for _ in range(self._BISECTIONS):
            mid = 0.5 * (low + high)
            above = mid + self._c * tf.tanh(mid + self._b) > target
            low, high = tf.where(above, low, mid), tf.where(above, mid, high)
        alpha = tf.stop_gradient(0.5 * (low + high))
        slope = 1.0 + self._c * (1.0 - tf.square(tf.tanh(alpha + self._b)))
        alpha = alpha - (alpha + self._c * tf.tanh(alpha + self._b) - target) / slope
        return y - self._u * tf.tanh(alpha + self._b)

    def _forward_log_det_jacobian(self, z):
        derivative = 1.0 - tf.square(tf.tanh(self._alpha(z)))
        return tf.math.log(tf.abs(1.0 + derivative * self._c) + 1e-12)[..., 0]


@keras.saving.register_keras_serializable(package="tfvae")
class PlanarFlowPosterior(FlowPosterior):
    """q(z|x): N(μ, diag σ²) through `num_steps` amortised planar flow steps.

    The encoder outputs `[μ, s]` (`σ = softplus(s) + min_scale`) and, per
    step, `u`, `w` (`latent_dim` each) and `b`: every step's parameters depend
    on x, as in Rezende & Mohamed (2015). The head has no weights of its own.
    No analytic KL exists: objectives use Monte Carlo.

    Args:
      latent_dim: size of z.
      num_steps: planar steps. Default value: `4`.
      min_scale: lower bound on σ. Default value: `1e-5`.
    """

    hyperparameters = {"num_steps": FLOW_STEPS}

    def __init__(self, latent_dim, num_steps=4, min_scale=1e-5, **kwargs):
        super().__init__(**kwargs)
        self.latent_dim = _checks.positive_int("latent_dim", latent_dim)
        self.num_steps = _checks.positive_int("num_steps", num_steps)
        self.min_scale = _checks.non_negative_float("min_scale", min_scale)
        self.event_shape = (self.latent_dim,)

    @property
    def params_size(self):
        return 2 * self.latent_dim + self.num_steps * (2 * self.latent_dim + 1)

    def _parameters(self, flat):
        d, t = self.latent_dim, self.num_steps
        loc, raw_scale, u, w, b = tf.split(flat, [d, d, t * d, t * d, t], axis=-1)
        return {"loc": loc, "scale": tf.nn.softplus(raw_scale) + self.min_scale,
                "u": u, "w": w, "b": b}

    def _steps(self, parameters):
        d = self.latent_dim
        return [
            _PlanarStep(parameters["u"][..., i * d : (i + 1) * d],
                        parameters["w"][..., i * d : (i + 1) * d],
                        parameters["b"][..., i : i + 1], name=f"planar_step_{i}")
            for i in range(self.num_steps)
        ]

    def get_config(self):
        return {
            **super().get_config(),
            "latent_dim": self.latent_dim,
            "num_steps": self.num_steps,
            "min_scale": self.min_scale,
        }
