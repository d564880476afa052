"""odeplug's adjoint on JAX (Chen et al. 2018, Algorithm 1, as the reference engine's
``_adjoint_vjp_maker``): a ``jax.custom_vjp`` whose backward pass is one
``diffeqsolve`` of the augmented state ``[y, a, a_theta]`` per interval between output
times, over the differentiated inputs only (:class:`odeplug.Constant` leaves, and inputs
the caller does not differentiate, cost no adjoint channel). The backward solves report
their counts and failures as the cotangent of a probe input
(:func:`._results.backward_probe`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.custom_derivatives import SymbolicZero

from ._compat import primed_fsal_state
from ._controller import Norm, controller, first_step
from ._forward import CheckedField, forward
from ._layout import Layout, SolveStatic
from ._results import messages, result_code
from ._solver import SOLVERS, evaluations

__all__ = ["adjoint_problem", "solve_adjoint"]


@dataclass(frozen=True, eq=False)
class _Problem:
    """What the adjoint's custom VJP takes as non-differentiable: the field on lists of
    ``(params, constants)`` (statics and closed-over values inside), the static
    configuration, and whether a failed backward solve raises (equinox's runtime
    error) rather than only reporting its code through the probe."""

    field: Callable  # field(t, y, params, constants) -> dy
    static: SolveStatic
    raise_errors: bool


def _vf(problem: _Problem) -> Callable:
    return lambda t, y, pc: problem.field(t, y, *pc)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def solve_adjoint(problem, y0, t, params, constants, values, probe):
    """The forward solve (:func:`._forward.forward`) of ``problem`` (from
    :func:`adjoint_problem`), differentiated by the adjoint method; ``probe``'s
    cotangent reports the backward solves (:func:`._results.backward_info`)."""
    del probe  # only its cotangent matters
    return forward(_vf(problem), y0, t, (params, constants), problem.static, values)


def _solve_adjoint_fwd(problem, y0, t, params, constants, values, probe):
    # With symbolic zeros, each leaf comes with `perturbed`: whether the caller
    # differentiates it. Only those get adjoint channels.
    plain = jax.tree.map(lambda x: x.value, (y0, t, params, constants, values))
    wanted = _Wanted(t=t.perturbed, probe=probe.perturbed,
                     params=tuple(p.perturbed for p in params))
    ys, info = forward(_vf(problem), plain[0], plain[1], (plain[2], plain[3]),
                        problem.static, plain[4])
    return (ys, info), (plain, ys, wanted)


class _Wanted(eqx.Module):
    """Which inputs the backward pass differentiates: static, in the residuals' treedef."""

    t: bool = eqx.field(static=True)
    probe: bool = eqx.field(static=True)
    params: tuple[bool, ...] = eqx.field(static=True)


def _solve_adjoint_bwd(problem, residuals, cotangents):
    """The adjoint method (Chen et al. 2018, Algorithm 1), interval by interval between
    output times, as the reference engine's ``_adjoint_vjp_maker``.

    From ``a = dL/dy(t[-1])``, each interval ``[t[i-1], t[i]]`` solves the augmented
    state ``z = [y, a, a_theta]`` (one flat vector: one error norm, as the reference,
    and few operations per stage) backwards from ``y = ys[i]``; ``a`` then takes the
    direct cotangent of ``ys[i-1]``. ``dL/dt_i = f(t_i, y_i) . g_i`` for ``i >= 1``
    (the augmented field's first block at the interval's start, free), ``dL/dt_0 =
    -f(t_0, y_0) . (a(t_0) - g_0)`` (one evaluation).
    """
    (y0, t, params, constants, values), ys, wanted = residuals
    static = problem.static
    g_ys = cotangents[0]
    if isinstance(g_ys, SymbolicZero):
        g_ys = jnp.zeros_like(ys)
    dtype, shape, n = y0.dtype, y0.shape, y0.size
    mask = wanted.params
    diff = [p for p, w in zip(params, mask, strict=True) if w]
    fixed = [p for p, w in zip(params, mask, strict=True) if not w]

    def field(s, y, diff):
        diff_iter, fixed_iter = iter(diff), iter(fixed)
        every = [next(diff_iter) if w else next(fixed_iter) for w in mask]
        return problem.field(s, y, every, constants)

    sizes = [p.size for p in diff]

    def augmented(s, z, diff):
        y, a = z[:n].reshape(shape), z[n : 2 * n].reshape(shape)
        dy, vjp = jax.vjp(lambda y, d: field(s, y, d), y, diff)
        a_y, a_diff = vjp(-a)  # da/dt = -a df/dy, da_theta/dt = -a df/dtheta
        return jnp.concatenate([dy.ravel(), a_y.ravel()]
                               + [x.ravel().astype(dtype) for x in a_diff])

    solver = SOLVERS[static.solver]
    order = solver.method.order
    norm = Norm(2 * n if static.seminorm else None)
    at_start, per_step = evaluations(static)
    term = diffrax.ODETerm(augmented)

    def interval(carry, inputs):
        a, a_diff, nfe, code, t_failed = carry
        t_start, t_end, y_start, g_end, g_start = inputs
        z = jnp.concatenate([y_start.ravel(), a, a_diff])
        f_z = augmented(t_start, z, diff)
        direction = jnp.where(t_end >= t_start, 1, -1).astype(dtype)
        h = first_step(lambda s, z: direction * augmented(direction * s, z, diff),
                       direction * t_start, z, direction * f_z, order, static, values,
                       values.adjoint_rtol, values.adjoint_atol, norm)
        # dt0=None: the controller starts with h (a traced dt0 costs a host callback).
        step_control = controller(static, values.adjoint_rtol, values.adjoint_atol, norm,
                                  first=h)
        sol = diffrax.diffeqsolve(
            term, solver, t0=t_start, t1=t_end, dt0=None, y0=z, args=diff,
            saveat=diffrax.SaveAt(t1=True), stepsize_controller=step_control,
            max_steps=static.max_num_steps, throw=False,
            solver_state=primed_fsal_state(f_z))
        z_end = sol.ys[0]
        new_code = result_code(sol.result)
        first_failure = (code == 0) & (new_code != 0)
        carry = (z_end[n : 2 * n] + g_end.ravel(), z_end[2 * n :],
                 nfe + at_start + per_step * sol.stats["num_steps"],
                 jnp.where(code == 0, new_code, code),
                 jnp.where(first_failure, sol.ts[0], t_failed))
        # dL/dt_i of the interval's start t_i: f(t_i, y_i) is f_z's first block.
        return carry, jnp.vdot(f_z[:n], g_start.ravel())

    m = sum(sizes)
    carry = (g_ys[-1].ravel(), jnp.zeros(m, dtype), jnp.zeros((), jnp.int32),
             jnp.zeros((), jnp.int32), jnp.full((), jnp.nan, dtype))
    # Intervals from the last: (t_i, t_{i-1}, ys_i, g_{i-1}, g_i) for i = T-1 .. 1.
    inputs = (t[1:], t[:-1], ys[1:], g_ys[:-1], g_ys[1:])
    if t.shape[0] == 2:  # the common [t0, t1]: no loop around the one solve
        carry, dt_ends = interval(carry, jax.tree.map(lambda x: x[0], inputs))
        dt_ends = dt_ends[None]
    else:
        carry, dt_ends = jax.lax.scan(interval, carry, inputs, reverse=True)
    a, a_diff, nfe, code, t_failed = carry

    grad_t = None
    if wanted.t:
        # dL/dt0: moving t0 with y0 fixed moves the whole trajectory.
        dt_start = -jnp.vdot(field(t[0], y0, diff).ravel(), a - g_ys[0].ravel())
        grad_t = jnp.concatenate([dt_start[None], dt_ends]).astype(t.dtype)
        nfe = nfe + 1
    pieces = iter(jnp.split(a_diff, np.cumsum(sizes)[:-1]) if sizes else [])
    grad_params = [next(pieces).reshape(p.shape).astype(p.dtype) if w else None
                   for p, w in zip(params, mask, strict=True)]
    grad_probe = None
    if wanted.probe:
        grad_probe = jnp.stack([nfe.astype(dtype), code.astype(dtype), t_failed])
    grads = (a.reshape(shape).astype(dtype), grad_t, grad_params,
             [None] * len(constants), None, grad_probe)
    if problem.raise_errors:
        grads = eqx.branched_error_if(grads, code != 0, code,
                                      messages(static, "the adjoint's backward solve: "))
    return grads


solve_adjoint.defvjp(_solve_adjoint_fwd, _solve_adjoint_bwd, symbolic_zeros=True)


def adjoint_problem(func: CheckedField, layout: Layout, leaves: list, y0, t0,
                     static: SolveStatic, raise_errors: bool):
    """``(problem, params, constants)`` for :func:`solve_adjoint`.

    The field is closure-converted (``jax.closure_convert``): traced values it closes
    over (an outer ``jit``'s arrays, or those ``grad`` differentiates) become inputs of
    the custom VJP, differentiated if inexact, rather than leaking into its backward
    pass.
    """
    params, constants, statics = layout.split(leaves)

    def field(s, y, params, constants):
        return func(s, y, layout.unflatten(layout.merge(params, constants, statics)))

    converted, hoisted = jax.closure_convert(field, t0, y0, params, constants)
    hoisted_param = tuple(eqx.is_inexact_array(x) for x in hoisted)
    n_params, n_constants = len(params), len(constants)

    def flat_field(s, y, params, constants):
        extra_p, extra_c = iter(params[n_params:]), iter(constants[n_constants:])
        closed = [next(extra_p) if p else next(extra_c) for p in hoisted_param]
        return converted(s, y, params[:n_params], constants[:n_constants], *closed)

    params = params + [x for x, p in zip(hoisted, hoisted_param, strict=True) if p]
    constants = constants + [x for x, p in zip(hoisted, hoisted_param, strict=True) if not p]
    return _Problem(flat_field, static, raise_errors), params, constants

