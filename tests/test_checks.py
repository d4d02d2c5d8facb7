"""The configs' type checks (``jaxseg.checks``): values of the wrong type or not finite are
refused at construction, naming the config and the field; the rest is stored as the
field's type, so configs stay hashable and print alike however they were written."""

import numpy as np
import pytest

from jaxseg.config import PromptConfig
from jaxseg.labels.autolabel import AutoLabelConfig
from jaxseg.maps.config import RelevanceConfig
from jaxseg.maps.native import NativeConfig
from jaxseg.maps.scoring import ScoreConfig
from jaxseg.maps.tta import TTAConfig
from jaxseg.refinement.classifier import ClassifierConfig
from jaxseg.refinement.crf import CRFConfig

NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize("make, message", [
    # Each was accepted and failed later (OverflowError in the variant count, a float shape,
    # NaN maps from an infinite ensemble weight) or did nothing visible.
    (lambda: TTAConfig(grid_aspect=INF), "TTAConfig.grid_aspect must be a finite number"),
    (lambda: TTAConfig(grid_aspect=NAN), "TTAConfig.grid_aspect must be a finite number"),
    (lambda: TTAConfig(input_size=224.5), "TTAConfig.input_size must be an integer"),
    (lambda: TTAConfig(scales=[1.0, NAN]), "TTAConfig.scales must be a sequence of finite"),
    (lambda: ScoreConfig(logit_scale=NAN), "ScoreConfig.logit_scale must be a finite number"),
    (lambda: ScoreConfig(pamr_steps=2.5), "ScoreConfig.pamr_steps must be an integer"),
    (lambda: ScoreConfig(pamr_dilations=[0]), "at least one dilation >= 1"),
    (lambda: ScoreConfig(pamr_dilations=[8.5]),
     "ScoreConfig.pamr_dilations must be a sequence of integers"),
    (lambda: RelevanceConfig(method=("chefer", "naclip"), weights=[INF, 1]),
     "RelevanceConfig.weights must be a sequence of finite numbers"),
    (lambda: RelevanceConfig(method="naclip", sigma=NAN), "RelevanceConfig.sigma must be a finite"),
    (lambda: RelevanceConfig(gradient_budget_mb=-1.0),
     "RelevanceConfig.gradient_budget_mb must be > 0"),
    (lambda: RelevanceConfig(start_layer=2.5),
     "RelevanceConfig.start_layer must be an integer or None"),
    (lambda: NativeConfig(short_side=336.5), "NativeConfig.short_side must be an integer"),
    (lambda: CRFConfig(iterations=2.5), "CRFConfig.iterations must be an integer"),
    (lambda: CRFConfig(bilateral_sxy=NAN), "CRFConfig.bilateral_sxy must be a finite number"),
    (lambda: CRFConfig(bilateral_srgb=0.0), "CRFConfig needs iterations and kernel widths > 0"),
    (lambda: AutoLabelConfig(top_k=2.5), "AutoLabelConfig.top_k must be an integer"),
    (lambda: AutoLabelConfig(threshold=True), "AutoLabelConfig.threshold must be a finite number"),
    (lambda: PromptConfig(templates="a photo of a {}."),
     "PromptConfig.templates must be a sequence of strings"),
    (lambda: PromptConfig(background=None),
     "PromptConfig.background must be a sequence of strings"),
    (lambda: PromptConfig(names={"cat": "kitty"}), "PromptConfig.names pairs a class name"),
])
def test_values_of_the_wrong_kind_are_refused_naming_the_field(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_values_are_stored_as_their_fields_types():
    # Lists, ints for floats and numpy scalars: the config hashes and prints as if written
    # with the field's own types (jit keys, and the settings digest of levels.json).
    assert repr(TTAConfig(scales=[1, 0.6], input_size=np.int64(224))) == repr(TTAConfig())
    assert hash(ScoreConfig(pamr_dilations=[8, 16], logit_scale=40)) == hash(ScoreConfig())
    ensemble = RelevanceConfig(method=["chefer", "naclip"], weights=[1, 2])
    assert ensemble.method == ("chefer", "naclip") and ensemble.weights == (1.0, 2.0)
    assert repr(CRFConfig(iterations=np.int32(10), gaussian_sxy=1)) == repr(CRFConfig())
    assert PromptConfig(names={"cat": ["kitty", "cat"]}) == PromptConfig(
        names=(("cat", ("kitty", "cat")),))
    classifier = ClassifierConfig(class_balance=0, learning_rate=np.float64(0.02))
    assert repr(classifier) == repr(ClassifierConfig())


def test_ablations_at_zero_stay_allowed():
    # No training steps (the initial network) and no Fourier map are valid ablations.
    config = ClassifierConfig(steps=0, num_fourier=0)
    assert (config.steps, config.num_fourier) == (0, 0)
    assert ScoreConfig(pamr_steps=0).pamr_steps == 0
