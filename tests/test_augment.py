"""DiffAugment: per-sample, differentiable, seeded; translation and cutout checked against
straightforward references written here."""
import pytest
import torch

from trainables.augment import (
    AUGMENT_FNS,
    diff_augment,
    parse_policy,
    rand_brightness,
    rand_contrast,
    rand_cutout,
    rand_saturation,
    rand_translation,
)

POLICIES = ["color", "translation", "cutout", "color,translation,cutout"]


def positive_batch(b=8, h=32, w=32, dtype=torch.float32, seed=0):
    # No zeros anywhere, so the zeros in an augmented batch are exactly the filled/cut pixels.
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(b, 3, h, w, generator=g) + 1).to(dtype)


def test_empty_policy_is_the_identity():
    x = positive_batch()
    assert diff_augment(x, "") is x
    assert diff_augment(x, ",") is x  # empty parts are skipped, like GANConfig's validation


def test_unknown_policy_is_refused_by_name():
    with pytest.raises(ValueError, match="zoom"):
        diff_augment(positive_batch(), "color,zoom")
    assert parse_policy("translation,,cutout") == ["translation", "cutout"]
    assert set(AUGMENT_FNS) == {"color", "translation", "cutout"}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("policy", POLICIES)
def test_every_policy_keeps_shape_and_dtype_and_changes_the_batch(policy, dtype):
    x = positive_batch(dtype=dtype)
    torch.manual_seed(0)
    out = diff_augment(x, policy)
    assert out.shape == x.shape and out.dtype == dtype
    assert torch.isfinite(out).all()
    assert not torch.equal(out, x)


def test_gradients_flow_through_every_augmentation():
    x = positive_batch().requires_grad_(True)
    torch.manual_seed(0)
    diff_augment(x, "color,translation,cutout").sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


@pytest.mark.parametrize("policy", POLICIES)
def test_seeded_runs_repeat(policy):
    x = positive_batch()
    torch.manual_seed(5)
    a = diff_augment(x, policy)
    torch.manual_seed(5)
    b = diff_augment(x, policy)
    torch.manual_seed(6)
    c = diff_augment(x, policy)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


# --- translation ------------------------------------------------------------------------------------

def shift_reference(img: torch.Tensor, dh: int, dw: int) -> torch.Tensor:
    """out[:, r, c] = img[:, r + dh, c + dw] where that is inside the image, else 0 (one sample)."""
    _, H, W = img.shape
    out = torch.zeros_like(img)
    for r in range(H):
        for c in range(W):
            if 0 <= r + dh < H and 0 <= c + dw < W:
                out[:, r, c] = img[:, r + dh, c + dw]
    return out


def fast_shift(img: torch.Tensor, dh: int, dw: int) -> torch.Tensor:
    """The same as shift_reference, by slicing (for the brute-force search)."""
    _, H, W = img.shape
    out = torch.zeros_like(img)
    if abs(dh) >= H or abs(dw) >= W:
        return out  # shifted right out of the image
    out[:, max(0, -dh):min(H, H - dh), max(0, -dw):min(W, W - dw)] = \
        img[:, max(0, dh):min(H, H + dh), max(0, dw):min(W, W + dw)]
    return out


def test_fast_shift_agrees_with_the_loop_reference():
    img = positive_batch(1, 6, 7)[0]
    for dh in range(-7, 8):
        for dw in range(-8, 9):
            assert torch.equal(fast_shift(img, dh, dw), shift_reference(img, dh, dw)), (dh, dw)


@pytest.mark.parametrize("h,w", [(32, 32), (16, 32)])
def test_translation_is_a_per_sample_zero_filled_shift(h, w):
    x = positive_batch(8, h, w)
    torch.manual_seed(3)
    out = rand_translation(x)
    limit_h, limit_w = int(h * 0.125 + 0.5), int(w * 0.125 + 0.5)
    shifts = []
    for i in range(x.shape[0]):
        # Brute force over far more than the allowed range; exactly one shift must reproduce the sample.
        matches = [(dh, dw) for dh in range(-h // 2, h // 2 + 1) for dw in range(-w // 2, w // 2 + 1)
                   if torch.equal(out[i], fast_shift(x[i], dh, dw))]
        assert len(matches) == 1, (i, matches)
        dh, dw = matches[0]
        assert abs(dh) <= limit_h and abs(dw) <= limit_w
        shifts.append((dh, dw))
    assert len(set(shifts)) > 1  # per sample, not one shift for the batch

    # The shifts are the official draws: dh (rows) first, then dw (columns), from torch's RNG.
    torch.manual_seed(3)
    dh = torch.randint(-limit_h, limit_h + 1, size=[8, 1, 1])
    dw = torch.randint(-limit_w, limit_w + 1, size=[8, 1, 1])
    assert shifts == list(zip(dh.flatten().tolist(), dw.flatten().tolist()))
    for i in range(2):  # the slow loop reference on a couple of samples
        assert torch.equal(out[i], shift_reference(x[i], *shifts[i]))


# --- cutout -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("h", [32, 9])
def test_cutout_zeroes_one_clipped_square_per_sample(h):
    x = positive_batch(16, h, h)
    torch.manual_seed(1)
    out = rand_cutout(x)
    size = int(h * 0.5 + 0.5)
    zero = out == 0
    assert (zero == zero[:, :1]).all()  # the same region in every channel
    for i in range(x.shape[0]):
        mask = zero[i, 0]
        rows, cols = mask.any(1).nonzero().flatten(), mask.any(0).nonzero().flatten()
        assert len(rows) and len(cols)  # the square always overlaps the image
        top, bottom, left, right = rows[0].item(), rows[-1].item() + 1, cols[0].item(), cols[-1].item() + 1
        # A solid axis-aligned rectangle ...
        rect = torch.zeros_like(mask)
        rect[top:bottom, left:right] = True
        assert torch.equal(mask, rect)
        # ... of the square's side, shorter only where clipped at a border.
        for lo, hi in ((top, bottom), (left, right)):
            assert hi - lo == size or (hi - lo < size and (lo == 0 or hi == h))
        # Everything outside it is untouched.
        assert torch.equal(out[i][:, ~mask], x[i][:, ~mask])
    assert not torch.equal(zero[0], zero[1])  # per sample


def test_cutout_squares_are_clipped_at_both_borders_sometimes():
    # The official centre range lets the square hang over either edge; check both happen.
    h = 8
    torch.manual_seed(0)
    mask = rand_cutout(positive_batch(200, h, h))[:, 0] == 0
    rows = mask.any(2)
    extent = rows.sum(1)
    first = rows.float().argmax(1)
    clipped_top = (extent < 4) & (first == 0)
    clipped_bottom = (extent < 4) & (first > 0)
    assert clipped_top.any() and clipped_bottom.any() and (extent == 4).any()


# --- color ------------------------------------------------------------------------------------------

def test_brightness_adds_a_per_sample_constant():
    torch.manual_seed(0)
    out = rand_brightness(torch.zeros(8, 3, 4, 4))
    per_sample = out.flatten(1)
    assert (per_sample == per_sample[:, :1]).all()  # constant within a sample
    values = per_sample[:, 0]
    assert (values >= -0.5).all() and (values < 0.5).all()
    assert len(values.unique()) == 8


def _factor(out, x, mean):
    """The per-sample factor s in out = (x - mean) * s + mean."""
    return ((out - mean) / (x - mean)).flatten(1)


def test_saturation_scales_each_sample_around_its_channel_mean():
    x = positive_batch(8, 4, 4, dtype=torch.float64)
    torch.manual_seed(0)
    out = rand_saturation(x)
    s = _factor(out, x, x.mean(1, keepdim=True))
    assert torch.allclose(s, s[:, :1].expand_as(s), atol=1e-9)
    assert (s[:, 0] >= 0).all() and (s[:, 0] < 2).all() and len(s[:, 0].unique()) == 8


def test_contrast_scales_each_sample_around_its_mean():
    x = positive_batch(8, 4, 4, dtype=torch.float64)
    torch.manual_seed(0)
    out = rand_contrast(x)
    s = _factor(out, x, x.mean((1, 2, 3), keepdim=True))
    assert torch.allclose(s, s[:, :1].expand_as(s), atol=1e-9)
    assert (s[:, 0] >= 0.5).all() and (s[:, 0] < 1.5).all() and len(s[:, 0].unique()) == 8


def test_color_policy_matches_the_official_formulas():
    # Brightness, then saturation, then contrast, each drawing one rand per sample in that order.
    x = positive_batch(4, 4, 4, dtype=torch.float64) - 1.5
    torch.manual_seed(9)
    out = diff_augment(x, "color")
    torch.manual_seed(9)
    b, s, c = (torch.rand(4, 1, 1, 1, dtype=torch.float64) for _ in range(3))
    y = x + (b - 0.5)
    y = (y - y.mean(1, keepdim=True)) * (s * 2) + y.mean(1, keepdim=True)
    y = (y - y.mean((1, 2, 3), keepdim=True)) * (c + 0.5) + y.mean((1, 2, 3), keepdim=True)
    assert torch.allclose(out, y, atol=1e-12)
