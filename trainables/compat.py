"""Every private name of torch that the training code and sweeper rely on, named in one place.

`tests/test_compat.py` checks each one against the installed torch, with real tensors and modules,
and a changed name fails there with the torch version in the message. This module is in trainables
because trainables must not import sweeper, while sweeper may import trainables.
(sweeper/compat.py holds Ray's and Optuna's private names.)
"""
from __future__ import annotations

import torch
from torch.nn.utils.parametrizations import _SpectralNorm
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

# torch's spectral-norm parametrisation class (`torch.nn.utils.parametrizations._SpectralNorm`).
# The public `spectral_norm()` only registers an instance on a module; it cannot be subclassed.
# trainables.models.norms.FP32SpectralNorm subclasses it and relies on these:
#   - the constructor `(weight, n_power_iterations, dim, eps)`;
#   - the attributes `eps` and `n_power_iterations`;
#   - the buffers `_u` and `_v`, which are also the state-dict keys;
#   - `_reshape_weight_to_matrix`;
#   - a `forward` for 1-D weights that only normalises.
SpectralNormParametrization = _SpectralNorm

# The base class of a mode that sees every aten op (`torch.utils._python_dispatch.TorchDispatchMode`).
# torch exposes no public path to it. `torch.overrides.TorchFunctionMode` sees Python-level calls
# only, so it would miss the tensors that ops make inside autograd and inside modules.
DispatchMode = TorchDispatchMode

# The tensors in a nested op output (`torch.utils._pytree.tree_leaves`). The installed torch has no
# public `torch.utils.pytree`.
leaves = tree_leaves


def foreach_lerp_(ends: list[torch.Tensor], targets: list[torch.Tensor], weight: float) -> None:
    """`ends[i] += weight * (targets[i] - ends[i])` for every i, in one fused call (`torch._foreach_lerp_`).

    Its public equivalent is a Python loop of `Tensor.lerp_`, one kernel per tensor. That loop is the
    cost an EMA update over hundreds of parameters avoids."""
    torch._foreach_lerp_(ends, targets, weight)


def foreach_copy_(targets: list[torch.Tensor], sources: list[torch.Tensor]) -> None:
    """`targets[i].copy_(sources[i])` for every i, in one fused call (`torch._foreach_copy_`)."""
    torch._foreach_copy_(targets, sources)
