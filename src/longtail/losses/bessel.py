"""F(x) = log I_nu(x) - nu*log(x) for the von Mises-Fisher normaliser (docs/methods.md, ProCo).

I_nu is the modified Bessel function of the first kind. For the vMF distribution on the sphere S^{p-1}
(nu = p/2 - 1) the log normaliser is log C_p(kappa) = -F(kappa) - (p/2)*log(2*pi), and F'(x) = A_nu(x) =
I_{nu+1}(x)/I_nu(x), the mean resultant length of vMF(mu, x).

Two evaluations:

* ``debye`` (default): the uniform asymptotic (Debye) expansion of I_nu in nu (DLMF 10.41.3, terms
  u_1 ... u_4 of DLMF 10.41.10), arranged so that x = 0 is finite. float64 throughout, no loop, any
  real nu >= 15 (p >= 32); error about 1e-10 for nu >= 63, 2e-8 at nu = 15.
* ``miller``: a re-implementation of the official ProCo routine, for parity tests only: backward
  recurrence from order 2n (n = int(nu), an odd p is truncated as in that code) with trial values
  (1, 0), normalised by the exact I_0, with a rescaling guard against overflow. It loses accuracy once
  x is well above n (log I_n off by about 1e-3 from x = 1,740 at p = 128).

Both go through one autograd function of q = x^2 whose backward is the clamped derivative: the
gradient of F with respect to x is A_nu(x) clamped to [0, 1] (as the official code clamps it), and the
gradient with respect to q = x^2 is A/(2x), finite at x = 0. Everything is device-agnostic and
reads no value on the host.
"""

from __future__ import annotations

import math
import numbers

import torch
from torch import Tensor

__all__ = ["BESSEL_METHODS", "log_bessel_f", "log_bessel_f_of_square", "bessel_ratio", "miller_log_bessel",
           "raw_miller_ratio", "check_order", "f_at_zero"]

BESSEL_METHODS = ("debye", "miller")
MIN_NU = 15.0  # p >= 32


def check_order(nu: float) -> float:
    """nu as a float; ValueError unless it is a finite real number >= 15 (projection size p >= 32)."""
    if isinstance(nu, bool) or not isinstance(nu, numbers.Real) or not math.isfinite(float(nu)):
        raise ValueError(f"the Bessel order nu must be a finite real number (got {nu!r})")
    if float(nu) < MIN_NU:
        raise ValueError(f"the Bessel order nu = p/2 - 1 must be >= 15, i.e. a projection size p >= 32 "
                         f"(got nu = {nu}); the Debye expansion is not accurate enough below")
    return float(nu)


def f_at_zero(nu: float) -> float:
    """F(0) = -nu*log(2) - lgamma(nu + 1), the limit of log I_nu(x) - nu*log(x) at x = 0."""
    return -nu * math.log(2.0) - math.lgamma(nu + 1.0)


def _debye_f_sq(q: Tensor, nu: float) -> Tensor:
    """F_nu(sqrt(q)) by the Debye expansion, for q = x^2 >= 0 (float64)."""
    ns = torch.sqrt(q + nu * nu)  # nu * s, s = sqrt(1 + (x/nu)^2)
    t = nu / ns  # 1/s
    t2 = t * t
    u1 = t * (3.0 - 5.0 * t2) / 24.0
    u2 = t2 * (81.0 + t2 * (-462.0 + t2 * 385.0)) / 1152.0
    u3 = t * t2 * (30375.0 + t2 * (-369603.0 + t2 * (765765.0 - t2 * 425425.0))) / 414720.0
    u4 = t2 * t2 * (4465125.0 + t2 * (-94121676.0 + t2 * (349922430.0 + t2 * (-446185740.0 + t2 * 185910725.0)))) \
        / 39813120.0
    series = torch.log1p(u1 / nu + u2 / nu**2 + u3 / nu**3 + u4 / nu**4)
    # nu*(s - log(1 + s) - log(nu)) = nu*s - nu*log(nu + nu*s); -1/2 log s = 1/2 log t
    return ns - nu * torch.log(nu + ns) - 0.5 * math.log(2.0 * math.pi * nu) + 0.5 * torch.log(t) + series


def miller_log_bessel(x: Tensor, nu: float) -> tuple[Tensor, Tensor]:
    """(log I_n(x), log I_{n+1}(x)) with n = int(nu), by the official ProCo backward recurrence.

    Described in our notes: start at order 2n with trial values (I_2n, I_2n+1) = (1, 0), run
    I_{k-1} = (2k/x) I_k + I_{k+1} down to order 0, record the trial values at orders n + 1 and n, and
    normalise with the exact I_0: log I_n(x) = x + log i0e(x) + log(trial_n / trial_0). When any element's
    next value would overflow, every element's pair is divided by its current value and the log of that
    divisor is added to the element's log-scale (the step is then redone); each recorded value keeps
    the scale in force when it was taken. Here the "any" decision is a tensor, not a host read: rows
    are rescaled with ``torch.where``, which gives the same values. x must be > 0 (float64 on any
    device); parity tests only, it runs 2n small steps.
    """
    n = int(nu)
    x = x.to(torch.float64)
    two_over_x = 2.0 / x
    a = torch.ones_like(x)  # I_k (trial)
    b = torch.zeros_like(x)  # I_{k+1} (trial)
    scale = torch.zeros_like(x)  # log of what the trial values have been divided by
    rec_n = rec_n1 = sc_n = sc_n1 = None
    for k in range(2 * n, 0, -1):
        if k == n + 1:
            rec_n1, sc_n1 = a, scale
        if k == n:
            rec_n, sc_n = a, scale
        nxt = k * two_over_x * a + b
        overflow = torch.isinf(nxt).any()
        # divide every pair by its current value (when any element overflows), then redo the step
        div = torch.where(overflow, a, torch.ones_like(a))
        a, b = a / div, b / div
        scale = scale + torch.log(div)
        nxt = k * two_over_x * a + b
        a, b = nxt, a
    if n == 0:  # not reachable for nu >= 15; kept so the routine is total
        rec_n, sc_n = a, scale
    log_i0 = x + torch.log(torch.special.i0e(x))
    log_trial0 = torch.log(a) + scale
    log_in = log_i0 + torch.log(rec_n) + sc_n - log_trial0
    log_in1 = log_i0 + torch.log(rec_n1) + sc_n1 - log_trial0
    return log_in, log_in1


def _miller_f_sq(q: Tensor, nu: float) -> tuple[Tensor, Tensor]:
    """(F_n(x), raw A_n(x)/x) for x = sqrt(q), n = int(nu); exact limits at x = 0."""
    n = int(nu)
    x = torch.sqrt(q)
    pos = x > 0
    xs = torch.where(pos, x, torch.ones_like(x))
    log_in, log_in1 = miller_log_bessel(xs, nu)
    f = torch.where(pos, log_in - n * torch.log(xs), torch.full_like(x, f_at_zero(n)))
    ratio_over_x = torch.where(pos, torch.exp(log_in1 - log_in) / xs, torch.full_like(x, 1.0 / (2 * n + 2)))
    return f, ratio_over_x


def _f_and_ratio(q: Tensor, nu: float, method: str) -> tuple[Tensor, Tensor]:
    """(F_nu(x), clamp(A_nu(x), 0, 1)/x) for x = sqrt(q), float64; the second is finite at x = 0."""
    q = q.to(torch.float64)
    if method == "miller":
        f, r = _miller_f_sq(q, nu)
    else:
        f = _debye_f_sq(q, nu)
        r = torch.exp(_debye_f_sq(q, nu + 1.0) - f)  # A_nu(x)/x = exp(F_{nu+1}(x) - F_nu(x))
    x = torch.sqrt(q)
    # clamp A = x*r to [0, 1]: where x*r > 1 use 1/x instead of r
    return f, torch.where(x * r > 1.0, 1.0 / x, r).clamp_min(0.0)


class _FOfSquare(torch.autograd.Function):
    """F_nu(sqrt(q)) with dF/dq = clamp(A_nu(x), 0, 1) / (2x), x = sqrt(q) (finite at x = 0)."""

    @staticmethod
    def forward(ctx, q: Tensor, nu: float, method: str) -> Tensor:  # type: ignore[override]
        f, r = _f_and_ratio(q, nu, method)
        ctx.save_for_backward(r)
        return f

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        (r,) = ctx.saved_tensors
        return grad * 0.5 * r, None, None


def _check_method(method: str) -> str:
    if method not in BESSEL_METHODS:
        raise ValueError(f"bessel must be one of {BESSEL_METHODS} (got {method!r}); debye is the default")
    return method


def log_bessel_f_of_square(q: Tensor, nu: float, method: str = "debye") -> Tensor:
    """F_nu(sqrt(q)) for q = x^2 >= 0 (float64 result, same shape and device as ``q``).

    Differentiable in q: dF/dq = A_nu(x)/(2x) with A clamped to [0, 1], finite at q = 0.
    """
    return _FOfSquare.apply(q, check_order(nu), _check_method(method))


def log_bessel_f(x: Tensor, nu: float, method: str = "debye") -> Tensor:
    """F_nu(x) = log I_nu(x) - nu*log(x) for x >= 0 (float64; F(0) = -nu*log 2 - lgamma(nu + 1)).

    Differentiable in x: the gradient is A_nu(x) = I_{nu+1}(x)/I_nu(x), clamped to [0, 1]. With
    ``method="miller"`` the order is int(nu) (the official code's truncation).

    Shape:
        any -> the same shape, float64.
    """
    x = x.to(torch.float64)
    return log_bessel_f_of_square(x * x, nu, method)


def bessel_ratio(x: Tensor, nu: float, method: str = "debye") -> Tensor:
    """A_nu(x) = I_{nu+1}(x)/I_nu(x) for x >= 0 as the backward uses it (clamped to [0, 1]), float64, no
    gradient. ``miller`` gives the official routine's value after its clamp."""
    x = x.detach().to(torch.float64)
    _, r = _f_and_ratio(x * x, check_order(nu), _check_method(method))
    return x * r


def raw_miller_ratio(x: Tensor, nu: float) -> Tensor:
    """The official routine's I_{n+1}(x)/I_n(x) before its clamp (it exceeds 1 at large x), x > 0."""
    log_in, log_in1 = miller_log_bessel(x.detach().to(torch.float64), check_order(nu))
    return torch.exp(log_in1 - log_in)
