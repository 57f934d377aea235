"""The benign-perturbation family and the stability figures (deephealth.evaluation.stability).

Pixel values below are worked out by hand from the documented definitions.
"""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from deephealth.evaluation import stability as st


def _ramp(h: int = 224, w: int = 224) -> np.ndarray:
    """A smooth film-like test pattern: a 2-D ramp with a soft bright disc, uint8."""
    yy, xx = np.mgrid[0:h, 0:w]
    disc = 80.0 * np.exp(-(((yy - h / 2) ** 2 + (xx - w / 2) ** 2) / (2 * (h / 5) ** 2)))
    return np.clip(40 + 0.5 * xx + 0.3 * yy + disc, 0, 255).astype(np.uint8)


def test_family_is_the_documented_one():
    assert st.PERTURBATION_NAMES == (
        "jpeg_q90", "noise_1", "gamma_0.9", "gamma_1.1", "rescale_0.8", "rescale_1.25", "rotate_+3", "rotate_-3",
        "shift_left", "shift_right", "shift_up", "shift_down", "crop_95", "blur", "sharpen",
    )
    for name in st.PERTURBATION_NAMES:
        assert name in (st.__doc__ or ""), name
    with pytest.raises(KeyError, match="unknown perturbation 'nope'"):
        st.perturbation("nope")


def test_gamma_maps_mid_grey_to_known_values():
    x = np.array([[0, 128, 255]], dtype=np.uint8)
    # 255 * (128/255) ** 1.1 = 119.47 -> 119; ** 0.9 = 137.13 -> 137; 0 and 255 are fixed points
    assert st.gamma(x, 1.1).tolist() == [[0, 119, 255]]
    assert st.gamma(x, 0.9).tolist() == [[0, 137, 255]]
    assert st.perturbation("gamma_1.1")(x).tolist() == [[0, 119, 255]]


def test_shift_moves_a_known_pixel_and_repeats_the_edge():
    img = np.zeros((224, 224), np.uint8)
    img[10, 10] = 200
    right = st.perturbation("shift_right")(img)
    assert right[10, 14] == 200 and right.sum() == 200  # 4 px at 224 px
    assert st.perturbation("shift_left")(img)[10, 6] == 200
    assert st.perturbation("shift_down")(img)[14, 10] == 200
    assert st.perturbation("shift_up")(img)[6, 10] == 200
    ramp = _ramp()
    r = st.perturbation("shift_right")(ramp)
    assert r.shape == ramp.shape
    assert (r[:, :4] == ramp[:, :1]).all() and (r[:, 4:] == ramp[:, :-4]).all()
    # the shift scales with the film: 2 px at 112 px, 18 px at 1000 px, never 0
    assert st.shift_px(112) == 2 and st.shift_px(1000) == 18 and st.shift_px(20) == 1
    with pytest.raises(ValueError, match="not smaller than the film"):
        st.shift(img, 224, 0)


def test_centre_crop_and_rescale_shapes_and_pixels():
    ramp = _ramp()
    c = st.perturbation("crop_95")(ramp)
    assert c.shape == (213, 213)  # round(0.95 * 224) = 213, offset (224 - 213) // 2 = 5
    assert (c == ramp[5:218, 5:218]).all()
    assert st.perturbation("rescale_0.8")(ramp).shape == (179, 179)  # round(179.2)
    assert st.perturbation("rescale_1.25")(ramp).shape == (280, 280)
    flat = np.full((100, 60), 77, np.uint8)
    assert (st.rescale(flat, 0.8) == 77).all() and st.rescale(flat, 0.8).shape == (80, 48)


def test_rotation_turns_a_line_by_three_degrees_and_fills_corners_with_edge_values():
    img = np.zeros((225, 225), np.uint8)
    img[112, :] = 255
    r = st.perturbation("rotate_+3")(img)  # counter-clockwise: the right end goes up
    # 80 px right of the centre the line is 80 * tan(3°) = 4.19 px higher: row 107.8 -> 108
    assert r[:, 192].argmax() == 108 and r[:, 32].argmax() == 116
    assert st.perturbation("rotate_-3")(img)[:, 192].argmax() == 116
    flat = np.full((50, 60), 100, np.uint8)
    assert (st.rotate(flat, 3.0) == 100).all()  # no black corners
    assert st.rotate(flat, -3.0).shape == (50, 60)


def test_blur_and_unsharp_mask_of_an_impulse():
    z = np.zeros((9, 9), np.uint8)
    z[4, 4] = 100
    k = st.gaussian_kernel()
    assert k[2] == pytest.approx(1 / (1 + 2 * math.exp(-0.5) + 2 * math.exp(-2)))
    # centre: 100 * (1 - 0.5 + 0.5 * k2^2) = 58.1; neighbour 0.5 * 100 * k2 * k1 = 4.9; corner 2.98
    assert st.perturbation("blur")(z)[3:6, 3:6].tolist() == [[3, 5, 3], [5, 58, 5], [3, 5, 3]]
    # unsharp: centre 100 * (1.5 - 0.5 * k2^2) = 141.9; the neighbours go negative and clip to 0
    assert st.perturbation("sharpen")(z)[3:6, 3:6].tolist() == [[0, 0, 0], [0, 142, 0], [0, 0, 0]]
    flat = np.full((20, 20), 90, np.uint8)
    assert (st.blur_mix(flat, 0.5) == 90).all() and (st.blur_mix(flat, -0.5) == 90).all()


def test_noise_is_one_grey_level_deterministic_and_clipped():
    mid = np.full((64, 64), 128, np.uint8)
    a, b = st.grey_noise(mid), st.perturbation("noise_1")(mid)
    assert (a == b).all()  # seeded from the film: the same film gets the same noise
    assert set(np.unique(a.astype(int) - 128)) == {-1, 0, 1}
    ends = np.array([[0, 255] * 50], np.uint8)
    n = st.grey_noise(ends)
    assert n.min() == 0 and n.max() == 255 and np.abs(n.astype(int) - ends).max() <= 1


def test_jpeg_round_trip_is_bounded():
    ramp = _ramp()
    j = st.perturbation("jpeg_q90")(ramp)
    assert j.shape == ramp.shape and j.dtype == np.uint8
    d = np.abs(j.astype(int) - ramp.astype(int))
    assert d.max() <= 4 and d.mean() < 1.0


def test_bad_input_is_refused_in_one_line():
    with pytest.raises(ValueError, match="expected a non-empty \\(H, W\\) uint8 film"):
        st.perturbation("blur")(np.zeros((4, 4), np.float32))
    assert st.to_uint8(np.array([[0.0, 0.5, 1.0, 1.2]], np.float32)).tolist() == [[0, 128, 255, 255]]


def test_flip_figures_on_a_hand_made_set():
    base = np.array([0, 1, 2, 0])
    pert = np.array([0, 2, 2, 1])
    bp = np.array([[0.9, 0.05, 0.05], [0.2, 0.7, 0.1], [0.1, 0.3, 0.6], [0.6, 0.3, 0.1]])
    pp = np.array([[0.85, 0.1, 0.05], [0.2, 0.3, 0.5], [0.3, 0.2, 0.5], [0.4, 0.5, 0.1]])
    f = st.flip_figures(base, pert, bp, pp)
    assert f["n"] == 4 and f["n_flips"] == 2 and f["flip_rate"] == 0.5
    assert f["n_pneumonia_flips"] == 1 and f["pneumonia_flip_rate"] == 0.25  # only normal -> bacterial
    # |dP| = [0.05, 0, 0.2, 0.2]: median 0.125, 95th percentile 0.2 (linear), max 0.2
    assert f["abs_dp_p50"] == pytest.approx(0.125) and f["abs_dp_p95"] == pytest.approx(0.2)
    assert f["abs_dp_max"] == pytest.approx(0.2)
    with pytest.raises(ValueError, match="shape mismatch"):
        st.flip_figures(base, pert[:3], bp, pp)


def test_summary_and_patient_bootstrap():
    base = np.array([0, 0, 1, 1])
    labels = np.array([[0, 0, 1, 1], [1, 0, 1, 2]])
    probs = np.tile(np.array([0.5, 0.3, 0.2]), (2, 4, 1))
    scores = st.StabilityScores(["gamma_0.9", "blur"], ["a", "b", "c", "d"], [0, 1, 2, 3], probs[0], base,
                                probs, labels, [("x", "x: cannot read")])
    s = st.summarize_stability(scores, patient_ids=["p1", "p1", "p2", "p3"], n_resamples=200, seed=0)
    assert s["n_images"] == 4 and s["n_failed"] == 1
    assert s["perturbations"]["gamma_0.9"]["flip_rate"] == 0.0
    assert s["perturbations"]["gamma_0.9"]["flip_rate_ci"] == [0.0, 0.0]
    assert s["perturbations"]["blur"]["flip_rate"] == 0.5 and s["worst"] == "blur"
    lo, hi = s["perturbations"]["blur"]["flip_rate_ci"]
    assert 0.0 <= lo < 0.5 < hi <= 1.0
    assert s["any_flip_rate"] == 0.5 and s["max_flip_rate"] == 0.5
    assert s["family"][1] == {"name": "blur", "description": "Gaussian blur (sigma 1 px, amount 0.5)"}
    assert st.flip_rate_ci(np.ones(4, bool), ["a", "b", "c", "d"], n_resamples=50) == [1.0, 1.0]
    table = st.format_table(s)
    assert table[0].startswith("| perturbation | change | label flips | 95 % CI |")
    assert "| `blur` | Gaussian blur (sigma 1 px, amount 0.5) | 50.0 % (2) |" in table[3]


@pytest.mark.needs_data
def test_scores_through_the_predictor_match_predict(dataset_root: Path, tmp_path: Path, monkeypatch):
    """The unchanged films score exactly as `deephealth predict` scores the files; unreadable ones are listed."""
    from deephealth.inference import Predictor

    files = sorted((dataset_root / "test" / "NORMAL").glob("*.jpeg"))[:3] + \
        sorted((dataset_root / "test" / "PNEUMONIA").glob("*.jpeg"))[:3]
    bad = tmp_path / "broken.jpeg"
    bad.write_bytes(b"not an image")
    predictor = Predictor(num_threads=1)
    perts = [st.perturbation("gamma_1.1"), st.perturbation("shift_right")]
    scores = st.score_stability(predictor, [str(f) for f in files[:2]] + [str(bad)] + [str(f) for f in files[2:]],
                                perturbations=perts, batch_size=4)
    assert scores.perturbations == ["gamma_1.1", "shift_right"]
    assert scores.source_index == [0, 1, 3, 4, 5, 6] and len(scores.errors) == 1
    assert "broken.jpeg" in scores.errors[0][1]
    direct = predictor.predict_many([str(f) for f in files], allow_unsuitable=True)
    assert np.array_equal(scores.base_probs, np.stack([r.probs for r in direct]))
    assert scores.base_labels.tolist() == [r.label_index for r in direct]
    one = predictor.predict(st.perturbation("gamma_1.1")(st.to_uint8(predictor.load(str(files[4]))[0])) / 255.0,
                            allow_unsuitable=True)
    assert np.allclose(scores.probs[0, 4], one.probs, atol=1e-6)
    assert scores.probs.shape == (2, 6, 3) and scores.labels.shape == (2, 6)
    # chunking (one film at a time when films are large) does not change anything
    monkeypatch.setattr(st, "MAX_CHUNK_PIXELS", 1)
    again = st.score_stability(predictor, [str(f) for f in files[:2]] + [str(bad)] + [str(f) for f in files[2:]],
                               perturbations=perts, batch_size=4)
    assert again.source_index == scores.source_index and len(again.errors) == 1
    assert np.allclose(again.probs, scores.probs, atol=1e-6) and np.array_equal(again.labels, scores.labels)


def test_stability_module_does_not_import_torch():
    code = ("import sys, deephealth.evaluation.stability as s; "
            "print(any(m in sys.modules for m in ('torch',)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
