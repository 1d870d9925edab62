"""The README's lists of names are generated from the registries and must not drift from them."""

import importlib.util
from pathlib import Path

import pytest

from evosparse.cli import readme_blocks
from evosparse.methods import METHODS
from evosparse.models import MODELS

ROOT = Path(__file__).resolve().parent.parent


def load_sync_script():
    spec = importlib.util.spec_from_file_location("sync_readme", ROOT / "scripts" / "sync_readme.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_readme_holds_the_current_generated_blocks():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert load_sync_script().synced(text) == text, "README is stale: run python scripts/sync_readme.py"


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_registered_method_has_a_row(name):
    assert f"| `{name}` |" in readme_blocks()["methods"]


def test_the_choices_name_every_model_and_optimizer():
    choices = readme_blocks()["choices"]
    assert all(f"`{model}`" in choices for model in MODELS)
    assert "`rmsprop`" in choices and "`text:PATH`" in choices


def test_a_missing_block_is_reported():
    with pytest.raises(SystemExit, match="no generated block"):
        load_sync_script().synced("a README without markers")
