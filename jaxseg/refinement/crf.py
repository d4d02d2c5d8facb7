"""Dense CRF (Kraehenbuehl and Koltun 2011) with CLIP-ES's settings, through pydensecrf.

CLIP-ES (eval_cam_with_crf.py) runs 10 mean-field iterations with a Gaussian kernel (sxy 1,
compat 3) and a bilateral kernel (sxy 67, srgb 3, compat 4) on the unary
``-log(clip(p, 1e-5, 1))`` of the unnormalised ``[background, scores]``, computed in float16.
By an accident of their script the bilateral kernel sees the BGR image minus the ImageNet
mean, cast to uint8 so that negative values wrap around; ``clip_es_image=True`` feeds that
image (to reproduce their numbers), False the plain RGB image. pydensecrf is an optional
dependency: ``pip install 'jaxseg[crf]'`` (the pydensecrf2 package).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from jaxseg.checks import check_numbers

# CLIP-ES subtracts Caffe's ImageNet mean from the BGR image before the CRF.
_BGR_MEAN = np.array([104.008, 116.669, 122.675], np.float32)


@dataclasses.dataclass(frozen=True)
class CRFConfig:
    """Dense CRF settings (CLIP-ES's by default; hashable).

    Attributes:
      iterations: mean-field iterations.
      gaussian_sxy, gaussian_compat: the smoothness kernel.
      bilateral_sxy, bilateral_srgb, bilateral_compat: the appearance kernel.
      clip_es_image: feed the wrapped BGR-minus-mean image, as CLIP-ES's script does.
    """

    iterations: int = 10
    gaussian_sxy: float = 1.0
    gaussian_compat: float = 3.0
    bilateral_sxy: float = 67.0
    bilateral_srgb: float = 3.0
    bilateral_compat: float = 4.0
    clip_es_image: bool = False

    def __post_init__(self):
        check_numbers(self)
        if min(self.iterations, self.gaussian_sxy, self.bilateral_sxy, self.bilateral_srgb) <= 0:
            raise ValueError(f"CRFConfig needs iterations and kernel widths > 0, got {self}")


def clip_es_image(image: np.ndarray) -> np.ndarray:
    """CLIP-ES's CRF image: BGR minus the ImageNet mean, truncated and wrapped to uint8."""
    shifted = image[..., ::-1].astype(np.float32) - _BGR_MEAN
    return (np.trunc(shifted).astype(np.int64) % 256).astype(np.uint8)


def dense_crf(image: np.ndarray, scores: np.ndarray, background: np.ndarray,
              config: CRFConfig = CRFConfig()) -> np.ndarray:
    """Labels of the dense CRF on ``[background, scores]``.

    Args:
      image: uint8 ``[H, W, 3]`` RGB image.
      scores: float ``[K, H, W]`` label scores in [0, 1].
      background: float ``[H, W]`` background score.
      config: the CRF settings.

    Returns:
      int32 ``[H, W]``: 0 background, k label k.

    Raises:
      ImportError: pydensecrf is not installed (one line naming the extra to install).
    """
    try:
        import pydensecrf.densecrf as dcrf
        from pydensecrf.utils import unary_from_softmax
    except ImportError:
        raise ImportError("--refine crf needs pydensecrf: pip install 'jaxseg[crf]' "
                          "(the pydensecrf2 package)") from None
    if len(scores) == 0:
        return np.zeros(image.shape[:2], np.int32)
    probabilities = np.concatenate([background[None], scores]).astype(np.float16)
    labels, height, width = probabilities.shape
    crf = dcrf.DenseCRF2D(width, height, labels)
    crf.setUnaryEnergy(np.ascontiguousarray(unary_from_softmax(probabilities), np.float32))
    crf.addPairwiseGaussian(sxy=config.gaussian_sxy, compat=config.gaussian_compat)
    rgb = clip_es_image(image) if config.clip_es_image else image
    # pydensecrf takes a writable buffer: images decoded by PIL (np.asarray) are read-only.
    crf.addPairwiseBilateral(sxy=config.bilateral_sxy, srgb=config.bilateral_srgb,
                             rgbim=np.require(rgb, np.uint8, ["C", "W"]),
                             compat=config.bilateral_compat)
    q = np.asarray(crf.inference(config.iterations)).reshape(labels, height, width)
    return q.argmax(axis=0).astype(np.int32)
