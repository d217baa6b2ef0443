"""Optimisers (type and hyperparameters from the config, separate G/D learning rates) and LR schedules
over the whole run of num_evals * steps_per_eval G steps."""
import math

import pytest
import torch
from torch import nn

from trainables.config import GANConfig
from trainables.training.optim import build_optimizer, build_optimizers, build_schedule

TOTAL = 4 * 5  # num_evals * steps_per_eval


def cfg(**changes) -> GANConfig:
    return GANConfig(num_evals=4, steps_per_eval=5, **changes).validate()


def params():
    return [nn.Parameter(torch.zeros(3))]


@pytest.mark.parametrize("name,cls", [("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW),
                                      ("rmsprop", torch.optim.RMSprop), ("sgd", torch.optim.SGD)])
def test_optimizer_type_and_hyperparameters_follow_the_config(name, cls):
    c = cfg(optimizer=name, beta1=0.1, beta2=0.9, momentum=0.7, weight_decay=0.03)  # no torch default
    opt = build_optimizer(c, params(), lr=3e-3)
    assert type(opt) is cls
    group = opt.param_groups[0]
    assert group["lr"] == 3e-3 and group["weight_decay"] == 0.03
    if name in ("adam", "adamw"):
        assert group["betas"] == (0.1, 0.9)
    else:
        assert group["momentum"] == 0.7


def test_generator_and_discriminator_get_their_own_learning_rates():
    c = cfg(g_lr=1e-4, d_lr=4e-4)
    G, D = nn.Linear(2, 2), nn.Linear(3, 1)
    opt_g, opt_d = build_optimizers(c, G, D)
    assert opt_g.param_groups[0]["lr"] == 1e-4 and opt_d.param_groups[0]["lr"] == 4e-4
    # Each optimiser owns exactly its own network's parameters.
    assert {id(p) for p in opt_g.param_groups[0]["params"]} == {id(p) for p in G.parameters()}
    assert {id(p) for p in opt_d.param_groups[0]["params"]} == {id(p) for p in D.parameters()}


def lrs(schedule: str, lr: float = 1e-3, **changes) -> list[float]:
    """The LR in effect at G steps 0..TOTAL (the scheduler stepped once per G step)."""
    opt = build_optimizer(cfg(**changes), params(), lr=lr)
    sched = build_schedule(cfg(lr_schedule=schedule, **changes), opt)
    out = [opt.param_groups[0]["lr"]]
    for _ in range(TOTAL):
        opt.step()
        sched.step()
        out.append(opt.param_groups[0]["lr"])
    return out


def test_no_schedule_keeps_the_lr():
    assert lrs("none") == [1e-3] * (TOTAL + 1)


def test_linear_decay_reaches_zero_at_the_end():
    values = lrs("linear-decay")
    for t in (0, TOTAL // 4, TOTAL // 2, TOTAL):
        assert math.isclose(values[t], 1e-3 * (1 - t / TOTAL), abs_tol=1e-12), t
    assert values[TOTAL] == pytest.approx(0, abs=1e-12)


def test_cosine_follows_the_closed_form():
    values = lrs("cosine")
    for t in (0, 3, TOTAL // 2, 15, TOTAL):
        assert math.isclose(values[t], 1e-3 * (1 + math.cos(math.pi * t / TOTAL)) / 2, abs_tol=1e-10), t


def test_step_schedule_drops_at_half_and_three_quarters():
    values = lrs("step", lr_gamma=0.5)
    half, three_quarters = TOTAL // 2, 3 * TOTAL // 4
    expected = [1e-3 * 0.5 ** ((t >= half) + (t >= three_quarters)) for t in range(TOTAL + 1)]
    assert values == pytest.approx(expected, rel=1e-12)
    assert values[half - 1] == pytest.approx(1e-3) and values[half] == pytest.approx(5e-4)
    assert values[three_quarters] == pytest.approx(2.5e-4)
