"""A brute-force reference for the compensated removal error (tests of importance.compensated / sequential)."""

import torch


def brute_force_error(weight, x, columns, lam, centred):
    """min over the kept columns' update D_S of ||(W_S + D_S) X_S + b - W X||^2 + lam ||D_S||^2 + lam ||W_C||^2,
    by an explicit stacked least-squares problem (b free when ``centred``)."""
    n, d_in = x.shape
    kept = [j for j in range(d_in) if j not in columns]
    target = x @ weight.T  # [n, d_out]: the dense output
    base = x[:, kept] @ weight[:, kept].T  # the kept columns unchanged
    design = x[:, kept]
    if centred:
        design = torch.cat([design, torch.ones(n, 1, dtype=x.dtype)], 1)
    penalty = lam ** 0.5 * torch.eye(design.shape[1], dtype=x.dtype)
    if centred:
        penalty[-1, -1] = 0  # the intercept is not regularised
    stacked = torch.cat([design, penalty])
    rhs = torch.cat([target - base, torch.zeros(design.shape[1], weight.shape[0], dtype=x.dtype)])
    solution = torch.linalg.lstsq(stacked, rhs).solution
    residual = stacked @ solution - rhs
    return float(residual.pow(2).sum() + lam * weight[:, columns].pow(2).sum())
