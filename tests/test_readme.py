import dataclasses
import re
from pathlib import Path

import torch

from attnlab.layers import MIXERS
from attnlab.models import get_kind

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
GUIDES = README + (ROOT / "docs" / "reference.md").read_text()  # the README's longer pages
# `a, b = ...  # (2, 127, 256) and a scalar`: the shapes a line's comment states for the names
# it assigns (numbers only; a comment such as `# (B, T, D)` states no checkable shape)
SHAPE_COMMENT = re.compile(r"^(\w+(?:, \w+)*) = .*#\s*(\([\d, ]+\))(\s+and a scalar)?\s*$")


def stated_shapes(block: str) -> dict[str, tuple[int, ...]]:
    shapes = {}
    for line in block.splitlines():
        match = SHAPE_COMMENT.match(line)
        if match:
            names = match.group(1).split(", ")
            shapes[names[0]] = tuple(int(n) for n in re.findall(r"\d+", match.group(2)))
            if match.group(3):
                shapes[names[1]] = ()
    return shapes


def test_python_examples_in_the_readme_run_and_give_the_shapes_they_state(request):
    registered = dict(MIXERS)  # the README registers a mixer: gone after, for the next tests
    request.addfinalizer(lambda: (MIXERS.clear(), MIXERS.update(registered)))
    blocks = re.findall(r"```python\n(.*?)```", GUIDES, re.S)
    assert blocks
    checked = 0
    for block in blocks:
        namespace = {}
        exec(compile(block, "README.md", "exec"), namespace)
        for name, shape in stated_shapes(block).items():
            assert isinstance(namespace[name], torch.Tensor), name
            assert tuple(namespace[name].shape) == shape, (name, shape)
            checked += 1
    assert checked >= 2  # the Python API's logits and loss at least


def test_shape_comments_are_read():
    block = "logits, loss = model(x)  # (2, 127, 256) and a scalar\nh = f(x)  # (B, T, D)\n"
    assert stated_shapes(block) == {"logits": (2, 127, 256), "loss": ()}


def test_readme_shows_the_two_quickstart_commands():
    assert "make demo" in README and "make test" in README


def test_the_config_files_top_level_keys_listed_are_the_kinds_data_settings():
    for kind in ("gpt", "translation"):
        listed = re.search(rf"for\s+`{kind}`,\s+([^;.]*)", GUIDES)[1]
        fields = [f.name for f in dataclasses.fields(get_kind(kind).data_config)]
        assert re.findall(r"`(\w+)`", listed) == fields, kind


def test_the_api_pages_modules_import_and_hold_what_they_document():
    """docs/api.md lists modules by hand: a module renamed, or functions moved out of a listed
    module into a new one (open_tokenizer into data/saved_tokenizers.py), must show here."""
    import importlib

    listed = re.findall(r"^::: ([\w.]+)$", (ROOT / "docs" / "api.md").read_text(), re.M)
    assert len(listed) > 50
    for name in listed:
        importlib.import_module(name.rsplit(".", 1)[0] if name == "attnlab.cli.run" else name)
    assert "attnlab.data.saved_tokenizers" in listed  # open_tokenizer, which text.py imports
