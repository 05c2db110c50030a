"""Heatmaps drawn over pictures: a flat grid tints nothing, and a drawn map carries its colour scale."""
import numpy as np
from PIL import Image

from mimic.explain.heatmap import colour_bar, is_flat, overlay_grid, with_scale
from mimic.explain.relevance import words_of


def _picture():
    return Image.new("RGB", (140, 100), (30, 160, 90))


def test_a_flat_grid_tints_nothing_and_says_so():
    picture = _picture()
    for flat in (np.zeros((7, 7)), np.full((7, 7), 0.3)):
        assert is_flat(flat)
        assert np.array_equal(np.asarray(overlay_grid(picture, flat)), np.asarray(picture))
    drawn = with_scale(overlay_grid(picture, np.zeros((7, 7))), np.zeros((7, 7)), "mention image: relevance for S")
    strip = np.asarray(drawn)[100:].reshape(-1, 3)
    assert not (strip == [252, 255, 164]).all(1).any()  # no colour bar for a map that shows nothing
    assert not is_flat(np.eye(7))


def test_a_map_runs_from_its_minimum_to_its_maximum_with_its_bar():
    grid = np.zeros((7, 7))
    grid[0, 0], grid[6, 6] = 2.0, -1.0
    drawn = np.asarray(overlay_grid(_picture(), grid, opacity=1.0))
    assert tuple(drawn[0, 0]) == (252, 255, 164) and tuple(drawn[-1, -1]) == (0, 0, 4)  # most, least
    bar = np.asarray(colour_bar(256))
    assert tuple(bar[0, 0]) == (0, 0, 4) and tuple(bar[0, -1]) == (252, 255, 164)
    scaled = with_scale(overlay_grid(_picture(), grid), grid, "caption")
    assert scaled.size == (320, 152)  # at least 320 px wide, so the labels fit


def test_words_join_pieces_and_leave_the_marker_out():
    text = "Hopper [SEP] Nighthawks, painted."
    tokens = ["hopper", "[", "sep", "]", "night", "hawks", ",", "painted", "."]
    found = words_of(text, tokens, {"s": [1, 5, 5, 5, 2, 3, 0.5, 4, 1]})
    assert [(w["word"], w["s"]) for w in found] == [("Hopper", 1), ("Nighthawks,", 5.5), ("painted.", 5)]
    assert (found[1]["start"], found[1]["end"]) == (13, 24)
