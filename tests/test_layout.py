"""The package's shape: no import circles, public names that stay what the README says."""

import ast
import importlib
import inspect
import pathlib
import pkgutil

import jaxseg

PACKAGE = pathlib.Path(jaxseg.__file__).parent
# `python -m jaxseg.segment` / `-m jaxseg.evaluate` entry points: never imported by jaxseg.
ENTRY_POINTS = {"jaxseg.segment", "jaxseg.evaluate"}


def module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def all_modules() -> dict[str, pathlib.Path]:
    return {module_name(path): path for path in PACKAGE.rglob("*.py")}


def imported_modules(path: pathlib.Path, modules: set[str]) -> set[str]:
    """jaxseg modules named by every import statement of a file (function-level and
    TYPE_CHECKING imports included); ``from package import module`` counts the module."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                child = f"{node.module}.{alias.name}"
                found.add(child if child in modules else node.module)
    return {name for name in found if name in modules}


def test_no_import_circle_counting_every_import_statement():
    modules = all_modules()
    graph = {name: imported_modules(path, set(modules)) - {name}
             for name, path in modules.items()}
    state: dict[str, int] = {}  # 1 on the current path, 2 done

    def visit(name, path):
        state[name] = 1
        for child in sorted(graph[name]):
            assert state.get(child) != 1, "import circle: " + " -> ".join(path + [child])
            if child not in state:
                visit(child, path + [child])
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])


def test_entry_point_modules_are_imported_by_nothing():
    modules = all_modules()
    for name, path in modules.items():
        assert not imported_modules(path, set(modules)) & ENTRY_POINTS, name


def test_files_stay_under_400_lines():
    long = {name: len(path.read_text().splitlines()) for name, path in all_modules().items()}
    assert all(count <= 400 for count in long.values()), {k: v for k, v in long.items() if v > 400}


def test_public_names_survive_importing_every_module_in_any_order():
    for name in jaxseg.__all__:
        getattr(jaxseg, name)
    for info in pkgutil.walk_packages(jaxseg.__path__, "jaxseg."):
        if info.name not in ENTRY_POINTS:
            importlib.import_module(info.name)
    for name in jaxseg.__all__:
        value = getattr(jaxseg, name)
        assert not inspect.ismodule(value), f"jaxseg.{name} is a module"
    for name in ("segment", "segment_batch", "refine", "relevance", "relevance_tta", "evaluate",
                 "auto_labels", "load_clip", "preprocess", "class_embeddings"):
        assert inspect.isfunction(getattr(jaxseg, name)), name
    assert inspect.isclass(jaxseg.Segmenter) and inspect.isclass(jaxseg.SegmentConfig)
    assert sorted(dir(jaxseg)) == sorted(jaxseg.__all__)


def test_public_functions_work_after_every_module_was_imported(tmp_path):
    import numpy as np
    from PIL import Image

    for info in pkgutil.walk_packages(jaxseg.__path__, "jaxseg."):
        if info.name not in ENTRY_POINTS:
            importlib.import_module(info.name)
    image = np.zeros((24, 32, 3), np.uint8)
    image[:, 16:] = 200
    scores = np.zeros((1, 24, 32), np.float32)
    scores[0, :, 20:] = 1.0
    mask = jaxseg.refine(image, scores)
    assert mask.shape == (24, 32) and mask[:, 24:].all() and not mask[:, :12].any()
    for folder in ("pred", "gt"):
        (tmp_path / folder).mkdir()
        Image.fromarray(mask.astype(np.uint8)).save(tmp_path / folder / "a.png")
    assert jaxseg.evaluate(tmp_path / "pred", tmp_path / "gt")["miou"] == 100.0
    assert jaxseg.preprocess(image, size=16).shape == (16, 16, 3)
