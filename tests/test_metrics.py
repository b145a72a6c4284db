"""Faithfulness and localisation metrics on constructed cases whose answers are known."""
import numpy as np
import pytest
import torch

from gradeclip import (boxes_to_masks, clip_scorer, compare_methods, deletion_insertion, encode_prompts,
                       energy_pointing_game, format_comparison, pointing_game, randomization_check,
                       prompt_sensitivity, rank_correlation)
from gradeclip.eval.metrics import pointing_point
from gradeclip.eval.metrics import randomize_last_blocks, replacement_image
from gradeclip.methods.baselines import rollout, self_attention
from gradeclip import grad_eclip_image

H = W = 16
REGION = (slice(4, 8), slice(8, 12))  # the only pixels the scorer looks at


def region_scorer(images):
    """Score = mean of the first channel inside REGION (one column per 'prompt', two prompts)."""
    s = images[:, 0, REGION[0], REGION[1]].mean(dim=(-1, -2))
    return torch.stack([s, s], dim=1)


def region_maps():
    good = torch.zeros(1, 1, H, W)
    good[0, 0, REGION[0], REGION[1]] = 1.0
    good = good + 0.01 * torch.rand(1, 1, H, W, generator=torch.Generator().manual_seed(0))
    return torch.cat([good, good.max() - good], dim=1)  # prompt 0: marks the region; prompt 1: its inverse


@pytest.mark.parametrize("replacement", ["black", "blur", "noise"])
def test_marking_the_region_is_more_faithful(replacement):
    pixels = torch.zeros(1, 3, H, W)
    pixels[:, :, REGION[0], REGION[1]] = 2.0  # a bright patch on a dark ground: blurring it lowers the score
    result = deletion_insertion(region_scorer, pixels, region_maps(), steps=16, replacement=replacement)
    assert result["deletion_curve"].shape == (1, 2, 17)
    assert result["deletion_auc"][0, 0] < result["deletion_auc"][0, 1]
    assert result["insertion_auc"][0, 0] > result["insertion_auc"][0, 1]


def test_curves_known_values():
    pixels = torch.full((1, 3, H, W), 2.0)
    result = deletion_insertion(region_scorer, pixels, region_maps(), steps=16, replacement="black")
    black = float(replacement_image(pixels, "black")[0, 0, 0, 0])
    d, i = result["deletion_curve"][0, 0], result["insertion_curve"][0, 0]
    # 16 region pixels of 256 are the top 1/16: gone after the first step, revealed after the first step
    assert d[0] == pytest.approx(2.0) and d[1:] == pytest.approx(black)
    assert i[0] == pytest.approx(black) and i[1:] == pytest.approx(2.0)
    assert result["deletion_auc"][0, 0] == pytest.approx((2.0 + black) / 2 / 16 + black * 15 / 16)


def test_curves_with_clip_are_batched(model):
    calls = []
    scorer = clip_scorer(model, encode_prompts(model, ["a", "b"]))

    def counting(images):
        calls.append(len(images))
        return scorer(images)

    pixels = torch.randn(2, 3, 32, 32)
    maps = torch.rand(2, 2, 4, 4)
    result = deletion_insertion(counting, pixels, maps, steps=5, batch_size=64)
    assert sum(calls) == 2 * 2 * 6 * 2 and len(calls) == 2  # every image scored once, one batch per curve kind
    with torch.no_grad():
        start = torch.nn.functional.normalize(model.encode_image(pixels), dim=-1) @ \
            torch.nn.functional.normalize(encode_prompts(model, ["a", "b"]), dim=-1).T
    np.testing.assert_allclose(result["deletion_curve"][:, :, 0], start.numpy(), rtol=1e-4, atol=1e-6)
    probs = clip_scorer(model, encode_prompts(model, ["a", "b"]), score="prob")(pixels)
    np.testing.assert_allclose(probs.sum(1).numpy(), 1, rtol=1e-5)


def test_bad_metric_inputs(model):
    with pytest.raises(ValueError, match="allowed: blur, black, noise"):
        replacement_image(torch.zeros(1, 3, 8, 8), "grey")
    with pytest.raises(ValueError, match="steps must be an int >= 1"):
        deletion_insertion(region_scorer, torch.zeros(1, 3, H, W), region_maps(), steps=0)
    with pytest.raises(ValueError, match="maps must be"):
        deletion_insertion(region_scorer, torch.zeros(2, 3, H, W), region_maps())
    with pytest.raises(ValueError, match="'cosine' or 'prob'"):
        clip_scorer(model, torch.zeros(1, 32), score="logit")


def test_pointing_games():
    maps = np.zeros((2, 6, 8))
    maps[0, 1, 2] = 1.0  # peak inside the box
    maps[1, 5, 7] = 1.0  # peak outside
    maps[1, 1, 2] = 0.5
    masks = boxes_to_masks([[1, 0, 4, 3], [1, 0, 4, 3]], (6, 8))
    assert masks.shape == (2, 6, 8) and masks[0].sum() == 9
    assert pointing_game(maps, masks).tolist() == [True, False]
    np.testing.assert_allclose(energy_pointing_game(maps, masks), [1.0, 0.5 / 1.5])
    assert energy_pointing_game(np.zeros((6, 8)), masks[0]) == 0
    with pytest.raises(ValueError, match="leading dimensions"):
        pointing_game(maps, masks[:1, :3])


def test_pointing_game_has_no_border_bias():
    """The best token in the top-left corner, upsampled bilinearly: a plateau of equal pixels reaching pixel 0.
    The point is the plateau's centre (1, 1), inside an object that starts 1 px from the border; argmax (pixel 0) is
    outside it. Catches a return to plain ``argmax`` (the border bias)."""
    import torch.nn.functional as F

    grid = np.zeros((4, 4))
    grid[0, 0] = 1.0
    up = F.interpolate(torch.tensor(grid)[None, None], size=(32, 32), mode="bilinear", align_corners=False)[0, 0]
    up = up.numpy()
    assert up[0, 0] == up.max() == up[3, 3]  # the tied plateau the bias came from
    mask = np.zeros((32, 32), bool)
    mask[1:8, 1:8] = True
    assert not mask.flat[up.argmax()]
    assert pointing_game(up, mask)
    assert pointing_point(up) == (1, 1)  # plateau rows and columns 0..3


def test_pointing_game_on_the_token_grid_points_at_the_cell_centre():
    """A raw (h, w) map against (H, W) masks: the maximal token (row 1, column 2 of a 4x4 grid over 32x32 px)
    points at its cell centre (12, 20). Catches an off-by-one cell, swapped rows/columns, or a corner instead of
    the centre (the masks below separate each of those)."""
    grid = np.zeros((4, 4))
    grid[1, 2] = 1.0
    assert pointing_point(grid, (32, 32)) == (12, 20)
    centre, corner, swapped = (np.zeros((32, 32), bool) for _ in range(3))
    centre[10:14, 18:22] = True
    corner[8:10, 16:18] = True
    swapped[18:22, 10:14] = True
    assert pointing_game(np.stack([grid] * 3), np.stack([centre, corner, swapped])).tolist() == [True, False, False]
    # ties between separate maxima: the first one in row-major order wins
    grid[3, 0] = 1.0
    assert pointing_point(grid, (32, 32)) == (12, 20)


def test_prompt_sensitivity_matches_scipy_spearman():
    """(K, K) Spearman matrix against ``scipy.stats.spearmanr`` for maps with known relations: equal ranking
    (a monotone transform: 1), reversed (-1) and unrelated (random: near 0). Catches the old bug (each map
    compared with itself, a K x 1 column of ones) and a transposed or mis-broadcast matrix."""
    from scipy.stats import spearmanr

    rng = np.random.default_rng(0)
    base = rng.random((7, 9))
    raw = np.stack([base, base ** 3 + 2, -base, rng.random((7, 9))])  # (K=4, h, w)
    matrix = prompt_sensitivity(raw[None])
    expected = spearmanr(raw.reshape(4, -1), axis=1).statistic
    assert matrix.shape == (4, 4)
    np.testing.assert_allclose(matrix, expected, atol=1e-12)
    np.testing.assert_allclose(matrix[0, 1], 1.0)
    np.testing.assert_allclose(matrix[0, 2], -1.0)
    assert abs(matrix[0, 3]) < 0.3 and matrix[3, 0] == matrix[0, 3]


def test_rank_correlation():
    a = np.arange(16.0).reshape(1, 4, 4)
    assert rank_correlation(a, a ** 3)[0] == pytest.approx(1.0)
    assert rank_correlation(a, -a)[0] == pytest.approx(-1.0)
    assert np.isnan(rank_correlation(a, np.ones_like(a))[0])
    # broadcasting: (2, 1, h, w) against (1, 3, h, w) gives (2, 3), each pair compared (not each map with itself)
    maps = np.random.default_rng(1).random((3, 4, 4))
    out = rank_correlation(maps[:2, None], maps[None])
    assert out.shape == (2, 3) and out[0, 0] == pytest.approx(1) and out[0, 1] < 0.99


def test_randomization_check(model):
    pixels = torch.randn(1, 3, 32, 32)
    text = encode_prompts(model, ["a dog", "a cat"])
    twin = randomize_last_blocks(model, 1)
    assert torch.equal(twin.visual.proj, model.visual.proj)
    assert not torch.equal(twin.visual.transformer.resblocks[-1].attn.in_proj_weight,
                           model.visual.transformer.resblocks[-1].attn.in_proj_weight)
    assert torch.equal(twin.visual.transformer.resblocks[0].attn.in_proj_weight,
                       model.visual.transformer.resblocks[0].attn.in_proj_weight)
    # a method that ignores the last block's weights entirely is unmoved: correlation 1
    def first_block_only(m, px, tf):
        return self_attention(m, px, tf) * 0 + rollout(model, px, tf)

    np.testing.assert_allclose(randomization_check(model, pixels, text, first_block_only), 1.0)
    corr = randomization_check(model, pixels, text, grad_eclip_image)
    assert corr.shape == (1, 2) and np.all(corr < 0.99)


def test_compare_methods(model):
    frames = np.random.default_rng(3).integers(0, 256, size=(1, 32, 32, 3), dtype=np.uint8)
    rows, explanations = compare_methods(model, frames, ["a dog", "a cat"], methods=["grad_eclip", "rise"],
                                         steps=4, options={"rise": {"n_masks": 16}})
    assert [r["method"] for r in rows] == ["grad_eclip", "rise"] and set(explanations) == {"grad_eclip", "rise"}
    for r in rows:
        assert 0 <= r["seconds_per_map"] and np.isfinite(r["deletion_auc"]) and np.isfinite(r["insertion_auc"])
    table = format_comparison(rows)
    assert "deletion AUC" in table and "grad_eclip" in table.splitlines()[2]
    with pytest.raises(ValueError, match="unknown method"):
        compare_methods(model, frames, ["a"], methods=["nope"])


def test_noise_replacement_is_seeded_uniform():
    """Noise is uniform in [0, 1] before CLIP's normalisation, the same for one seed and different for another.
    Catches an ignored seed or noise left unnormalised."""
    from gradeclip.backbones.pixels import CLIP_MEAN, CLIP_STD

    pixels = torch.zeros(1, 3, 40, 40)
    a = replacement_image(pixels, "noise", seed=1)
    assert torch.equal(a, replacement_image(pixels, "noise", seed=1))
    assert not torch.equal(a, replacement_image(pixels, "noise", seed=2))
    raw = a * torch.tensor(CLIP_STD).view(1, 3, 1, 1) + torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    assert raw.min() >= 0 and raw.max() <= 1 and abs(raw.mean().item() - 0.5) < 0.05


def test_blur_sigma_is_a_twentieth_of_the_longer_side():
    """An impulse blurred on a 101x61 image (sigma = 101 / 20 = 5.05) has the profile exp(-x^2 / (2 sigma^2)),
    normalised, along its row. Catches a sigma from the shorter side (3.05) or a wrong divisor."""
    pixels = torch.zeros(1, 3, 61, 101)
    pixels[0, :, 30, 50] = 1.0
    row = replacement_image(pixels, "blur")[0, 0, 30, 50 - 8:50 + 9].double()
    x = torch.arange(-8, 9, dtype=torch.float64)
    want = torch.exp(-x ** 2 / (2 * 5.05 ** 2))
    torch.testing.assert_close(row / row.max(), want / want.max(), rtol=0, atol=2e-3)


def test_prob_score_uses_the_models_logit_scale(model):
    """``score="prob"`` is the softmax of logit_scale.exp() * cosine, with the model's own scale (changed here to
    make the point). Catches a missing or fixed scale (softmax of raw cosines is near uniform)."""
    import copy

    twin = copy.deepcopy(model)
    with torch.no_grad():
        twin.logit_scale.fill_(np.log(50.0))
    text = encode_prompts(twin, ["a dog", "a cat", "a tree"])
    images = torch.randn(2, 3, 32, 32)
    cosine = clip_scorer(twin, text)(images)
    probs = clip_scorer(twin, text, score="prob")(images)
    torch.testing.assert_close(probs, (50.0 * cosine).softmax(-1), rtol=1e-5, atol=1e-6)


def test_energy_pointing_game_ignores_negative_values():
    """Negative values count as 0 (only positive evidence is energy): inside 1 of a positive total 2 = 0.5.
    Without the clipping the share would be (-5 + 1) / (-5 + 1 + 1) = 1.33."""
    maps = np.array([[-5.0, 1.0], [0.0, 1.0]])
    mask = np.array([[True, True], [False, False]])
    assert energy_pointing_game(maps, mask) == pytest.approx(0.5)


def test_deletion_ranks_low_resolution_maps_bilinearly():
    """A 2x2 map over 8x8 pixels: the score of each deletion step is the sum, over the deleted pixels, of the
    bilinear (align_corners=False) upsampling of the map, so the curve follows the true ranking whatever the order
    of ties. Catches nearest-neighbour upsampling (a different ranking), a reversed order, or align_corners=True."""
    import torch.nn.functional as F

    small = torch.tensor([[[[0.0, 1.0], [3.0, 7.0]]]])
    up = F.interpolate(small, size=(8, 8), mode="bilinear", align_corners=False)[0, 0]
    pixels = torch.full((1, 3, 8, 8), 10.0)
    black = replacement_image(pixels, "black")[0, 0, 0, 0]

    def score(images):  # (M, 3, 8, 8) -> (M, 1): the upsampled values of the pixels that were deleted
        return ((images[:, 0] == black).float() * up).sum((-2, -1))[:, None]

    curves = deletion_insertion(score, pixels, small, steps=8, replacement="black")
    values = up.flatten().sort(descending=True).values
    want = torch.stack([values[:round(s / 8 * 64)].sum() for s in range(9)]).numpy()
    np.testing.assert_allclose(curves["deletion_curve"][0, 0], want, rtol=1e-5)


def test_randomisation_resets_layernorms_of_the_last_blocks_only(model):
    """The re-initialised blocks have LayerNorms at identity (weight 1, bias 0), other weights N(0, 0.02) and zero
    biases; earlier blocks are untouched. Catches LayerNorms left trained or randomised like the rest."""
    twin = randomize_last_blocks(model, 1)
    last, first = twin.visual.transformer.resblocks[-1], twin.visual.transformer.resblocks[0]
    for norm in (last.ln_1, last.ln_2):
        assert torch.equal(norm.weight, torch.ones_like(norm.weight))
        assert torch.equal(norm.bias, torch.zeros_like(norm.bias))
    assert torch.equal(last.attn.in_proj_bias, torch.zeros_like(last.attn.in_proj_bias))
    assert abs(last.mlp.c_fc.weight.std().item() - 0.02) < 0.002
    original = model.visual.transformer.resblocks[0]
    assert torch.equal(first.ln_1.weight, original.ln_1.weight) and not torch.equal(
        original.ln_1.weight, torch.ones_like(original.ln_1.weight))


def _constant_maps(shape=(5, 7)):
    """Maps that say nothing: all zero, all one, and 3.7 plus noise of 1e-12 (below the 1e-6 relative range)."""
    noise = np.random.default_rng(0).random(shape) * 1e-12
    return np.stack([np.zeros(shape), np.ones(shape), 3.7 + noise])


def test_constant_maps_are_misses_with_zero_energy():
    """Zeros, ones and a constant plus 1e-12 noise, against masks covering the frame centre (at the map's size and
    at another, non-square size): every one a miss with energy 0, and counted constant; a one-hot map and a map
    with a 1e-3 bump are not constant. Catches the bug this rule fixes (a constant map's plateau is the whole map,
    its centre the frame's centre: a hit whenever the mask covers the centre), a constant test on exact equality
    (the noisy map passes as informative), and energy left as the mask's share for a flat map."""
    from gradeclip.eval.metrics import is_constant

    maps = _constant_maps()
    for size in ((5, 7), (15, 28)):
        centre = np.zeros(size, bool)
        centre[size[0] // 4: 3 * size[0] // 4 + 1, size[1] // 4: 3 * size[1] // 4 + 1] = True
        assert pointing_game(maps, np.stack([centre] * 3)).tolist() == [False, False, False], size
        assert pointing_game(maps, np.ones((3, *size), bool)).tolist() == [False, False, False], size
    full = np.ones((3, 5, 7), bool)
    assert energy_pointing_game(maps, full).tolist() == [0.0, 0.0, 0.0]  # not 1 (the mask's share) for a flat map
    one_hot = np.zeros((5, 7))
    one_hot[2, 3] = 1.0
    bump = np.ones((5, 7))
    bump[2, 3] += 1e-3
    assert is_constant(np.concatenate([maps, [one_hot, bump]])).tolist() == [True, True, True, False, False]
    assert pointing_game(bump, full[0]) and energy_pointing_game(bump, full[0]) == pytest.approx(1.0)
    partly_nan = np.where(one_hot > 0, 1.0, np.nan)
    partly_nan[0, 0] = 0.5
    assert is_constant(np.full((2, 3), np.nan)) and not is_constant(partly_nan)  # NaN ignored, not propagated
    cell = np.zeros((5, 7), bool)
    cell[2, 3] = True
    assert energy_pointing_game(partly_nan, cell) == pytest.approx(1 / 1.5)  # NaN counts as 0, not as "no energy"


def test_one_hot_map_hits_exactly_when_its_cell_is_in_the_mask():
    """Every cell of a non-square (5, 7) grid as a one-hot map, against masks at another, non-square resolution
    (15, 28: each cell a 3x4 block), two prompts at once with different masks: a hit exactly when the test's own
    cell set holds that cell. Catches swapped rows and columns, a point computed at the map's size instead of the
    mask's, an off-by-one cell, and prompts paired with the other prompt's mask."""
    rng = np.random.default_rng(3)
    cells = rng.random((2, 5, 7)) < 0.4  # prompt 0 and prompt 1: different cell sets
    masks = cells.repeat(3, axis=1).repeat(4, axis=2)  # (2, 15, 28)
    for i in range(5):
        for j in range(7):
            maps = np.zeros((2, 5, 7))
            maps[:, i, j] = 0.8
            maps[:, (i + 2) % 5, (j + 3) % 7] = 0.1  # not flat elsewhere either
            assert pointing_game(maps, masks).tolist() == cells[:, i, j].tolist(), (i, j)


def test_rank_correlation_is_missing_for_constant_maps():
    """A constant map plus 1e-12 noise has ranks from its noise alone: its correlation with a mask must be missing
    (NaN), not a number; an informative map's equals scipy's Spearman. Catches a rank correlation that rewards
    rounding noise (a constant map with a number) and one computed over the wrong axis."""
    from scipy.stats import spearmanr

    maps = _constant_maps()
    mask = np.zeros((5, 7))
    mask[1:3, 2:6] = 1.0
    assert np.isnan(rank_correlation(maps, mask)).all()
    informative = np.random.default_rng(1).random((2, 5, 7))
    expected = [spearmanr(m.ravel(), mask.ravel())[0] for m in informative]
    np.testing.assert_allclose(rank_correlation(informative, mask), expected, atol=1e-12)
    assert np.isnan(rank_correlation(informative[0], np.zeros((5, 7))))  # an empty mask: undefined too


def test_deletion_of_a_constant_map_is_missing():
    """Three prompts on a non-square frame: the region map, an all-zero map and a flat map plus 1e-12 noise. The
    constant maps' curves and AUCs are NaN (their pixel order would be the raster order), the region map's are the
    known values of ``test_curves_known_values``'s construction; ``compare_methods`` averages over the defined maps
    and counts the constant ones. Catches a constant map scored by raster-order deletion (a number for a map that
    says nothing) and NaN set on the wrong prompt."""
    pixels = torch.full((1, 3, H, W + 8), 2.0)
    region = torch.zeros(1, 1, H, W + 8)
    region[0, 0, REGION[0], REGION[1]] = 1.0

    def scorer(images):
        s = images[:, 0, REGION[0], REGION[1]].mean(dim=(-1, -2))
        return torch.stack([s, s, s], dim=1)

    flat = 3.0 + 1e-12 * torch.rand(1, 1, H, W + 8, dtype=torch.float64)
    maps = torch.cat([region, torch.zeros_like(region), flat.float()], dim=1)
    result = deletion_insertion(scorer, pixels, maps, steps=24, replacement="black")
    black = float(replacement_image(pixels, "black")[0, 0, 0, 0])
    assert result["deletion_auc"][0, 0] == pytest.approx((2.0 + black) / 2 / 24 + black * 23 / 24)
    for key in ("deletion_auc", "insertion_auc"):
        assert np.isnan(result[key][0, 1:]).all() and np.isfinite(result[key][0, 0]), key
    assert np.isnan(result["deletion_curve"][0, 1:]).all() and np.isfinite(result["insertion_curve"][0, 0]).all()


def test_compare_methods_counts_constant_maps(model):
    """A method whose maps are constant on the first frame and a ramp on the second: its AUCs are the means over the
    second frame's maps (finite), its 2 constant maps counted; a method constant everywhere has missing AUCs ("–",
    not a number). Catches a plain mean that turns one missing map into NaN for the method, a count of frames
    instead of maps, and a table printing nan."""
    from gradeclip.methods.registry import METHODS

    def flat(model, pixels, text_features):  # frame 0: flat; frame 1: a ramp
        maps = torch.full((pixels.shape[0], text_features.shape[0], 4, 4), 2.0)
        maps[1] = torch.arange(16.0).view(4, 4)
        return maps

    frames = np.random.default_rng(3).integers(0, 256, size=(2, 32, 48, 3), dtype=np.uint8)
    METHODS.register_module(name="test_flat_compare", module=flat)
    try:
        rows, _ = compare_methods(model, frames, ["a dog", "a cat"], methods=["grad_eclip", "test_flat_compare"],
                                  steps=4)
    finally:
        METHODS.module_dict.pop("test_flat_compare")
    by = {r["method"]: r for r in rows}
    assert by["test_flat_compare"]["constant_maps"] == 2 and by["grad_eclip"]["constant_maps"] == 0
    assert np.isfinite([by[m][k] for m in by for k in ("deletion_auc", "insertion_auc")]).all()
    everywhere = dict(by["test_flat_compare"], method="flat_everywhere", deletion_auc=float("nan"),
                      insertion_auc=float("nan"), constant_maps=4)
    line = next(li for li in format_comparison([*rows, everywhere]).splitlines() if li.startswith("flat_every"))
    assert line.split()[1:4] == ["–", "–", "4"] and "nan" not in format_comparison([*rows, everywhere])
