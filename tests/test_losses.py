import math

import torch

from trainables.losses import LOSSES, bce_d, bce_g, gradient_penalty, wgan_d, wgan_g


def test_bce_against_hand_computed_values():
    real, fake = torch.tensor([2.0, 0.0]), torch.tensor([-1.0, 0.0])
    sp = lambda x: math.log1p(math.exp(x))  # softplus by hand
    assert math.isclose(bce_d(real, fake).item(), (sp(-2) + sp(0)) / 2 + (sp(-1) + sp(0)) / 2, rel_tol=1e-6)
    assert math.isclose(bce_g(fake).item(), (sp(1) + sp(0)) / 2, rel_tol=1e-6)
    # At D's indifference point both players see log 2 per term.
    assert math.isclose(bce_d(torch.zeros(3), torch.zeros(3)).item(), 2 * math.log(2), rel_tol=1e-6)


def test_wasserstein_losses_against_hand_computed_values():
    real, fake = torch.tensor([1.0, 3.0]), torch.tensor([-2.0, 0.0])
    assert wgan_d(real, fake).item() == -1.0 - 2.0
    assert wgan_g(fake).item() == 1.0
    assert set(LOSSES) == {"bce", "wgan-gp"}


def test_gradient_penalty_of_a_linear_critic_is_exact():
    # D(x) = <w, x> has gradient w everywhere, so the penalty is (||w|| - 1)^2 at every x̂.
    w = torch.randn(3, 4, 4)
    D = lambda x: (x * w).flatten(1).sum(1)
    real, fake = torch.randn(5, 3, 4, 4), torch.randn(5, 3, 4, 4)
    expected = (w.norm() - 1) ** 2
    assert torch.allclose(gradient_penalty(D, real, fake), expected, rtol=1e-5)


def test_gradient_penalty_is_differentiable_wrt_critic_weights():
    w = torch.randn(3, 4, 4, requires_grad=True)
    D = lambda x: (x * w).flatten(1).sum(1)
    gp = gradient_penalty(D, torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4))
    (grad,) = torch.autograd.grad(gp, w)
    # d/dw (||w|| - 1)^2 = 2 (||w|| - 1) w / ||w||
    expected = 2 * (w.norm() - 1) * w / w.norm()
    assert torch.allclose(grad, expected, rtol=1e-4, atol=1e-6)
