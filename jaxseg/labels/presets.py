"""The authors' own prompt texts: templates, background names and class names per method.

Reproducing a method exactly includes its text side: CLIP-ES prompts every class (and its
background names) with one template and "synonym-fused" class names; NACLIP averages 80
ImageNet templates, gives some classes several names (each its own query, fused by the
maximum probability) and predicts background from 26 stuff names. Keys of the name tables
are :func:`jaxseg.labels.vocab.normalize_class_name` keys, so "tv", "tvmonitor" and
"tv monitor" all find the same entry.
"""

from __future__ import annotations

from typing import Mapping

from jaxseg.labels.vocab import normalize_class_name

# The five templates jaxseg averages by default (Chefer relevance).
DEFAULT_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.",
    "a clean origami {}.",
    "a photo of the small {}.",
    "a photo of the large {}.",
    "a cropped photo of a {}.",
)

# CLIP-ES (github linyq2117/CLIP-ES, generate_cams_voc12.py, clip_text.py): one template.
CLIP_ES_TEMPLATES: tuple[str, ...] = ("a clean origami {}.",)
CLIP_ES_VOC_BACKGROUND: tuple[str, ...] = (
    "ground", "land", "grass", "tree", "building", "wall", "sky", "lake", "water", "river",
    "sea", "railway", "railroad", "keyboard", "helmet", "cloud", "house", "mountain", "ocean",
    "road", "rock", "street", "valley", "bridge", "sign")
CLIP_ES_COCO_BACKGROUND: tuple[str, ...] = tuple(
    name for name in CLIP_ES_VOC_BACKGROUND if name not in ("keyboard", "sign"))
# Their class names where they differ from the plain VOC / COCO name (both lists; the COCO
# list writes VOC spellings such as "motorbike", and "sknowboard" as in their file).
CLIP_ES_NAMES: Mapping[str, str] = {normalize_class_name(key): value for key, value in {
    "aeroplane": "aeroplane", "motorbike": "motorbike", "sofa": "sofa",
    "pottedplant": "pottedplant", "diningtable": "diningtable",
    "bird": "bird avian", "chair": "chair seat", "person": "person with clothes,people,human",
    "tvmonitor": "tvmonitor screen", "backpack": "backpack,bag", "umbrella": "umbrella,parasol",
    "handbag": "handbag,purse", "tie": "necktie", "snowboard": "sknowboard",
    "baseball glove": "glove", "spoon": "dessertspoon", "remote": "remote control",
    "hair drier": "hairdrier,blowdrier"}.items()}

# NACLIP (github sinahmr/NACLIP, prompts/imagenet_template.py): OpenAI's 80 ImageNet templates.
IMAGENET_TEMPLATES: tuple[str, ...] = (
    'a bad photo of a {}.', 'a photo of many {}.', 'a sculpture of a {}.',
    'a photo of the hard to see {}.', 'a low resolution photo of the {}.', 'a rendering of a {}.',
    'graffiti of a {}.', 'a bad photo of the {}.', 'a cropped photo of the {}.',
    'a tattoo of a {}.', 'the embroidered {}.', 'a photo of a hard to see {}.',
    'a bright photo of a {}.', 'a photo of a clean {}.', 'a photo of a dirty {}.',
    'a dark photo of the {}.', 'a drawing of a {}.', 'a photo of my {}.',
    'the plastic {}.', 'a photo of the cool {}.', 'a close-up photo of a {}.',
    'a black and white photo of the {}.', 'a painting of the {}.', 'a painting of a {}.',
    'a pixelated photo of the {}.', 'a sculpture of the {}.', 'a bright photo of the {}.',
    'a cropped photo of a {}.', 'a plastic {}.', 'a photo of the dirty {}.',
    'a jpeg corrupted photo of a {}.', 'a blurry photo of the {}.', 'a photo of the {}.',
    'a good photo of the {}.', 'a rendering of the {}.', 'a {} in a video game.',
    'a photo of one {}.', 'a doodle of a {}.', 'a close-up photo of the {}.',
    'a photo of a {}.', 'the origami {}.', 'the {} in a video game.',
    'a sketch of a {}.', 'a doodle of the {}.', 'a origami {}.',
    'a low resolution photo of a {}.', 'the toy {}.', 'a rendition of the {}.',
    'a photo of the clean {}.', 'a photo of a large {}.', 'a rendition of a {}.',
    'a photo of a nice {}.', 'a photo of a weird {}.', 'a blurry photo of a {}.',
    'a cartoon {}.', 'art of a {}.', 'a sketch of the {}.',
    'a embroidered {}.', 'a pixelated photo of a {}.', 'itap of the {}.',
    'a jpeg corrupted photo of the {}.', 'a good photo of a {}.', 'a plushie {}.',
    'a photo of the nice {}.', 'a photo of the small {}.', 'a photo of the weird {}.',
    'the cartoon {}.', 'art of the {}.', 'a drawing of the {}.',
    'a photo of the large {}.', 'a black and white photo of a {}.', 'the plushie {}.',
    'a dark photo of a {}.', 'itap of a {}.', 'graffiti of the {}.',
    'a toy {}.', 'itap of my {}.', 'a photo of a cool {}.',
    'a photo of a small {}.', 'a tattoo of the {}.',
)
# NACLIP's background queries for VOC21 and COCO-Object (configs/cls_voc21.txt, line 1).
NACLIP_BACKGROUND: tuple[str, ...] = (
    "sky", "wall", "tree", "wood", "grass", "road", "sea", "river", "mountain", "sands", "desk",
    "bed", "building", "cloud", "lamp", "door", "window", "wardrobe", "ceiling", "shelf",
    "curtain", "stair", "floor", "hill", "rail", "fence")
_PERSON = ("person", "person in shirt", "person in jeans", "person in dress",
           "person in sweater", "person in skirt", "person in jacket")
# Their queries where a class has other or several names (configs/cls_voc21.txt).
NACLIP_NAMES: Mapping[str, tuple[str, ...]] = {normalize_class_name(key): value for key, value in {
    "boat": ("ship",), "diningtable": ("table",), "person": _PERSON,
    "tvmonitor": ("television monitor", "tv monitor", "monitor", "television", "screen"),
}.items()}

# Methods' prompt texts: templates, background names and the name table of their classes.
METHOD_PROMPTS = {
    "chefer": (DEFAULT_TEMPLATES, (), {}),
    "clip-es": (CLIP_ES_TEMPLATES, CLIP_ES_VOC_BACKGROUND,
                {key: (name,) for key, name in CLIP_ES_NAMES.items()}),
    "naclip": (IMAGENET_TEMPLATES, NACLIP_BACKGROUND, NACLIP_NAMES),
}


def label_queries(label: str, names: Mapping[str, tuple[str, ...]]) -> tuple[str, ...]:
    """The texts a label is prompted with: its entry in a method's name table, else itself."""
    return names.get(normalize_class_name(label), (label,))
