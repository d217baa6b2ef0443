import math

import torch
import torch.nn.functional as F
from torch import nn

from trainables.config import LOSSES as CONFIG_LOSSES
from trainables.losses import LOSSES, bce_d, bce_g, gradient_penalty, hinge_d, hinge_g, lsgan_d, lsgan_g, wgan_d, wgan_g


def sp(x: float) -> float:
    """softplus by hand: log(1 + e^x)."""
    return math.log1p(math.exp(x))


def test_bce_against_hand_computed_values():
    real, fake = torch.tensor([2.0, 0.0]), torch.tensor([-1.0, 0.0])
    assert math.isclose(bce_d(real, fake).item(), (sp(-2) + sp(0)) / 2 + (sp(-1) + sp(0)) / 2, rel_tol=1e-6)
    assert math.isclose(bce_g(fake).item(), (sp(1) + sp(0)) / 2, rel_tol=1e-6)
    # At D's indifference point both players see log 2 per term.
    assert math.isclose(bce_d(torch.zeros(3), torch.zeros(3)).item(), 2 * math.log(2), rel_tol=1e-6)


def test_bce_with_one_sided_label_smoothing():
    # Real target 0.9: BCE(r, 0.9) = 0.9 * -log σ(r) + 0.1 * -log(1 - σ(r)) = 0.9 sp(-r) + 0.1 sp(r);
    # fakes keep target 0 (one-sided), so their term is unchanged.
    real, fake = torch.tensor([2.0, -0.5]), torch.tensor([-1.0, 0.3])
    t = 0.9
    by_hand = sum(t * sp(-r) + (1 - t) * sp(r) for r in (2.0, -0.5)) / 2 + (sp(-1.0) + sp(0.3)) / 2
    assert math.isclose(bce_d(real, fake, real_target=t).item(), by_hand, rel_tol=1e-6)
    # Same value from torch's own BCE-with-logits with soft targets (an independent implementation).
    reference = (F.binary_cross_entropy_with_logits(real, torch.full_like(real, t))
                 + F.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake)))
    assert torch.allclose(bce_d(real, fake, real_target=t), reference, rtol=1e-6)
    # Smoothing really changes the loss (the target is not ignored).
    assert not math.isclose(bce_d(real, fake, real_target=t).item(), bce_d(real, fake).item(), rel_tol=1e-3)


def test_wasserstein_losses_against_hand_computed_values():
    real, fake = torch.tensor([1.0, 3.0]), torch.tensor([-2.0, 0.0])
    assert wgan_d(real, fake).item() == -1.0 - 2.0
    assert wgan_g(fake).item() == 1.0


def test_hinge_losses_against_hand_computed_values():
    real, fake = torch.tensor([2.0, 0.5]), torch.tensor([-2.0, 0.0])
    # mean(relu(1 - [2, .5])) = mean(0, .5) = .25; mean(relu(1 + [-2, 0])) = mean(0, 1) = .5
    assert math.isclose(hinge_d(real, fake).item(), 0.75, rel_tol=1e-6)
    assert math.isclose(hinge_g(fake).item(), 1.0, rel_tol=1e-6)


def test_lsgan_losses_against_hand_computed_values():
    real, fake = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    # 0.5 * mean((0, 1)) + 0.5 * mean((0, 1))
    assert math.isclose(lsgan_d(real, fake).item(), 0.5, rel_tol=1e-6)
    # With real target 0.9: 0.5 * ((0.1² + 0.9²) / 2) + 0.5 * 0.5 = 0.455
    assert math.isclose(lsgan_d(real, fake, real_target=0.9).item(), 0.455, rel_tol=1e-6)
    # 0.5 * mean(((0 - 1)², (1 - 1)²)) = 0.25
    assert math.isclose(lsgan_g(fake).item(), 0.25, rel_tol=1e-6)


# Each objective the config accepts, written out independently of trainables.losses with torch's own
# primitives: (D loss, G loss) as functions of D's logits on reals and fakes.
REFERENCE_OBJECTIVES = {
    "bce": (lambda r, f: F.binary_cross_entropy_with_logits(r, torch.ones_like(r))
            + F.binary_cross_entropy_with_logits(f, torch.zeros_like(f)),
            lambda f: F.binary_cross_entropy_with_logits(f, torch.ones_like(f))),  # non-saturating
    "wgan-gp": (lambda r, f: f.mean() - r.mean(), lambda f: -f.mean()),  # the penalty is added by the step
    "hinge": (lambda r, f: torch.clamp(1 - r, min=0).mean() + torch.clamp(1 + f, min=0).mean(),
              lambda f: -f.mean()),
    "lsgan": (lambda r, f: 0.5 * F.mse_loss(r, torch.ones_like(r)) + 0.5 * F.mse_loss(f, torch.zeros_like(f)),
              lambda f: 0.5 * F.mse_loss(f, torch.ones_like(f))),
}


def test_every_configurable_loss_maps_to_its_own_objective():
    # The names the config accepts are exactly the table's (a loss the config allows but the table
    # lacks would fail only inside a trial) ...
    assert set(CONFIG_LOSSES) == set(LOSSES) == set(REFERENCE_OBJECTIVES)
    # ... and each name looks up its own objective: logits on which the four objectives all differ,
    # so a swapped or copied table entry shows.
    real, fake = torch.tensor([1.5, -0.3, 0.2]), torch.tensor([-1.2, 0.7, 2.5])
    for name, (d_loss, g_loss) in LOSSES.items():
        ref_d, ref_g = REFERENCE_OBJECTIVES[name]
        assert torch.allclose(d_loss(real, fake), ref_d(real, fake), rtol=1e-6), name
        assert torch.allclose(g_loss(fake), ref_g(fake), rtol=1e-6), name
        for other, (other_d, other_g) in REFERENCE_OBJECTIVES.items():
            if other != name:
                assert not (torch.allclose(d_loss(real, fake), other_d(real, fake), rtol=1e-3)
                            and torch.allclose(g_loss(fake), other_g(fake), rtol=1e-3)), (name, other)


def test_gradient_penalty_of_a_linear_critic_is_exact():
    # D(x) = <w, x> has gradient w everywhere, so the penalty is (||w|| - 1)^2 at every x̂.
    w = torch.randn(3, 4, 4)
    def D(x):
        return (x * w).flatten(1).sum(1)
    real, fake = torch.randn(5, 3, 4, 4), torch.randn(5, 3, 4, 4)
    expected = (w.norm() - 1) ** 2
    assert torch.allclose(gradient_penalty(D, real, fake), expected, rtol=1e-5)


def test_gradient_penalty_is_differentiable_wrt_critic_weights():
    w = torch.randn(3, 4, 4, requires_grad=True)
    def D(x):
        return (x * w).flatten(1).sum(1)
    gp = gradient_penalty(D, torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4))
    (grad,) = torch.autograd.grad(gp, w)
    # d/dw (||w|| - 1)^2 = 2 (||w|| - 1) w / ||w||
    expected = 2 * (w.norm() - 1) * w / w.norm()
    assert torch.allclose(grad, expected, rtol=1e-4, atol=1e-6)


class _TinyCritic(nn.Module):
    """A small nonlinear, per-sample critic (no batch statistics), so each logit depends on its own sample only."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.out = nn.Linear(4 * 3 * 3, 1)

    def forward(self, x):
        return self.out(torch.tanh(self.conv(x)).flatten(1)).flatten()


def test_gradient_penalty_matches_finite_differences_of_a_nonlinear_critic():
    torch.manual_seed(0)
    D = _TinyCritic().double()
    real, fake = torch.randn(3, 3, 5, 5, dtype=torch.float64), torch.randn(3, 3, 5, 5, dtype=torch.float64)

    torch.manual_seed(123)
    gp = gradient_penalty(D, real, fake)

    # gradient_penalty draws alpha = torch.rand(B, 1, 1, 1) first: re-seed and draw the same.
    torch.manual_seed(123)
    alpha = torch.rand(real.shape[0], 1, 1, 1, dtype=torch.float64)
    mixed = alpha * real + (1 - alpha) * fake

    # Central differences per coordinate. D is per-sample, so perturbing the same coordinate in
    # every sample at once yields each sample's own partial derivative.
    eps = 1e-6
    grad = torch.zeros_like(mixed)
    with torch.no_grad():
        flat = mixed.view(mixed.shape[0], -1)
        for j in range(flat.shape[1]):
            bump = torch.zeros_like(flat)
            bump[:, j] = eps
            up = D((flat + bump).view_as(mixed))
            down = D((flat - bump).view_as(mixed))
            grad.view(mixed.shape[0], -1)[:, j] = (up - down) / (2 * eps)
    expected = ((grad.flatten(1).norm(dim=1) - 1) ** 2).mean()
    assert torch.allclose(gp, expected, rtol=1e-5)
    # The check has teeth: the penalty at other points (other alpha) differs.
    torch.manual_seed(7)
    assert not torch.allclose(gradient_penalty(D, real, fake), expected, rtol=1e-5)
