"""scripts/level_rules.py's colour information peaks where the cut splits the colours."""

import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts"))

import level_rules  # noqa: E402


def test_colour_information_is_largest_at_the_level_that_separates_the_colours():
    # 1000 pixels: 300 of colour bin 5 scored 0.8 (the object), 700 of bin 9 scored 0.3.
    top = np.r_[np.full(300, 0.8), np.full(700, 0.3)]
    colour = np.r_[np.full(300, 5), np.full(700, 9)]
    binary, labels = level_rules.colour_information(top, np.zeros(1000, int), colour, 1)
    levels = np.arange(1, level_rules.STEPS) / level_rules.STEPS
    separating = (levels > 0.3) & (levels <= 0.8)
    entropy = -(0.3 * np.log(0.3) + 0.7 * np.log(0.7))
    # Every separating level explains the colour completely: MI = H(fg); the others give 0.
    np.testing.assert_allclose(binary[separating], entropy, rtol=1e-6)
    np.testing.assert_allclose(binary[~separating], 0.0, atol=1e-9)
    # One label: the label map is the fg/bg split.
    np.testing.assert_allclose(labels, binary, atol=1e-9)
