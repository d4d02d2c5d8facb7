import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402

from checkpoints import make_checkpoint  # noqa: E402


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """``(folder, torch_model)`` of a tiny random CLIP checkpoint with hub-style buffers."""
    folder = str(tmp_path_factory.mktemp("tiny_clip"))
    return folder, make_checkpoint(folder)


@pytest.fixture(scope="session")
def tiny_clip(tiny_checkpoint):
    import jaxseg
    return jaxseg.load_clip(tiny_checkpoint[0])


@pytest.fixture(scope="session")
def attentive_clip(tmp_path_factory):
    """``(jaxseg CLIP, torch model)``: random real-size ViT-B/16 with local attention."""
    import jaxseg
    from real_clip import make_attentive_checkpoint

    folder = str(tmp_path_factory.mktemp("attentive_clip"))
    model = make_attentive_checkpoint(folder)
    return jaxseg.load_clip(folder), model
