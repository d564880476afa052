"""Data sets of the paper's experiments, generated (no download)."""

from __future__ import annotations

import math

import numpy as np
from sklearn.utils import Bunch, check_random_state

__all__ = ["make_spirals"]


def make_spirals(n_spirals=1000, *, n_observed=30, n_grid=1000, window=200, noise_std=0.3,
                 a=0.0, b=0.3, stop=6 * math.pi, random_state=None) -> Bunch:
    """Irregularly observed 2-D spirals, the latent ODE benchmark of Chen et al. (2018,
    Sec. 5.1).

    The generator of torchdiffeq's ``examples/latent_ode.py`` (the paper does not state
    its own): two Archimedean spirals ``r = a + b * theta`` on ``n_grid`` points of
    ``theta`` over ``[0, stop]``, one counter-clockwise shifted to ``x + 5``, one
    clockwise (``r = a + 50 b / theta'`` with ``theta' = stop + 1 - theta``) shifted to
    ``x - 5``. Each spiral is one of them, chosen with probability 1/2, seen on a random
    window of ``window`` consecutive grid points, with Gaussian noise of standard
    deviation ``noise_std``: ``n_observed`` of the first half of the window are
    observed (drawn without replacement; the others are NaN), the second half are the
    extrapolation targets.

    Parameters
    ----------
    n_spirals : int, default=1000
    n_observed : int, default=30
        Observed points among the first ``window // 2``.
    n_grid : int, default=1000
    window : int, default=200
    noise_std : float, default=0.3
    a, b : float, default=0, 0.3
    stop : float, default=6 pi
    random_state : int, RandomState instance or None, default=None

    Returns
    -------
    data : Bunch
        ``X`` ``(n_spirals, window // 2, 2)``: the noisy observations, NaN where not
        observed; ``obs_times`` ``(window // 2,)``: their times (the window's, from 0,
        the grid's spacing); ``y`` ``(n_spirals, window - window // 2, 2)``: the noisy
        targets, at ``target_times``; ``X_true``, ``y_true``: the noise-free values at
        every time of the window's two halves; ``clockwise`` ``(n_spirals,)`` bool.

    Examples
    --------
    >>> from odeplug.datasets import make_spirals
    >>> data = make_spirals(10, n_observed=30, random_state=0)
    >>> data.X.shape, data.y.shape
    ((10, 100, 2), (10, 100, 2))
    >>> int((~np.isnan(data.X[0, :, 0])).sum())
    30
    """
    rng = check_random_state(random_state)
    half = window // 2
    if not 1 <= n_observed <= half:
        raise ValueError(f"n_observed must be in [1, {half}], got {n_observed}")
    if window > n_grid:
        raise ValueError(f"window ({window}) must not exceed n_grid ({n_grid})")
    theta = np.linspace(0.0, stop, n_grid)
    theta_cw = stop + 1.0 - theta
    r_cw = a + b * 50.0 / theta_cw
    clockwise_path = np.stack([r_cw * np.cos(theta_cw) - 5.0, r_cw * np.sin(theta_cw)], 1)
    r_cc = a + b * theta
    counter_path = np.stack([r_cc * np.cos(theta) + 5.0, r_cc * np.sin(theta)], 1)
    dt = theta[1] - theta[0]

    clockwise = rng.rand(n_spirals) < 0.5
    starts = rng.randint(0, n_grid - window + 1, size=n_spirals)
    true = np.stack([(clockwise_path if cw else counter_path)[s : s + window]
                     for cw, s in zip(clockwise, starts, strict=True)])
    noisy = true + noise_std * rng.standard_normal(true.shape)
    X = np.full((n_spirals, half, 2), np.nan)
    for i in range(n_spirals):
        kept = np.sort(rng.choice(half, size=n_observed, replace=False))
        X[i, kept] = noisy[i, kept]
    times = dt * np.arange(window)
    return Bunch(X=X, y=noisy[:, half:], obs_times=times[:half], target_times=times[half:],
                 X_true=true[:, :half], y_true=true[:, half:], clockwise=clockwise)
