"""`sdxlc explain`: every word, field, code and profile has reference text; unknown topics get a hint."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from sdxlc.cli.lang import explain_command
from sdxlc.lang.diagnostics import CATALOG
from sdxlc.lang.vocabulary import VOCABULARY, leaf_paths
from sdxlc.resolve.profiles import list_profiles
from sdxlc.tools.explain import DETAILS, explain, topics


@pytest.mark.parametrize("topic", ["lion", "cache", "cache te", "optimizer.lr", "SDX0520", "rtx3060-12gb"])
def test_named_topics_have_text(topic: str) -> None:
    text = explain(topic)
    assert text is not None and text.strip()


def test_a_word_shows_what_it_sets_its_argument_and_an_example() -> None:
    text = explain("rank")
    assert text is not None
    assert "lora.rank" in text and "integer" in text and "example:  lora rank 8" in text


def test_a_word_of_several_statements_shows_each() -> None:
    text = explain("seed")
    assert text is not None
    assert "training.seed" in text and "model.tiny_seed" in text and "sample.seed" in text


def test_a_field_shows_type_bounds_default_and_words() -> None:
    text = explain("optimizer.lr")
    assert text is not None
    assert "number (> 0)" in text and "default:  0.0001" in text and "`lr`" in text


def test_a_model_dependent_default_names_the_family() -> None:
    text = explain("resolution.size")
    assert text is not None
    assert "1024 for sdxl models" in text and "64 for tiny models" in text


def test_a_value_names_its_field() -> None:
    text = explain("lion")
    assert text is not None
    assert "optimizer.name" in text and "lr 0.0001 lion" in text


def test_a_code_shows_severity_and_title() -> None:
    text = explain("sdx0101")
    assert text is not None
    assert text.startswith("SDX0101 (error): unexpected character")


def test_a_profile_shows_its_memory() -> None:
    text = explain("rtx3060-12gb")
    assert text is not None
    assert "RTX 3060" in text and "GiB" in text


@pytest.mark.parametrize("words", sorted({entry.words for entry in VOCABULARY if entry.words}))
def test_every_vocabulary_word_is_explained(words: str) -> None:
    text = explain(words)
    assert text is not None and f"`{words}`" in text


@pytest.mark.parametrize("code", sorted(CATALOG))
def test_every_catalogued_code_is_explained(code: str) -> None:
    text = explain(code)
    assert text is not None and text.startswith(f"{code} ({CATALOG[code][0]}): {CATALOG[code][1]}")


def test_every_catalogued_code_has_a_longer_explanation() -> None:
    assert sorted(set(CATALOG) - set(DETAILS)) == []


@pytest.mark.parametrize("path", leaf_paths())
def test_every_recipe_field_is_explained(path: str) -> None:
    assert explain(path) is not None


@pytest.mark.parametrize("name", list_profiles())
def test_every_profile_is_explained(name: str) -> None:
    assert explain(name) is not None


def test_every_topic_resolves() -> None:
    missing = [topic for topic in topics() if explain(topic) is None]
    assert not missing


@pytest.mark.parametrize("topic", ["", "nothing-at-all", "SDX9999", "optimizer.nope"])
def test_unknown_topics_are_none(topic: str) -> None:
    assert explain(topic) is None


def test_cli_prints_the_text() -> None:
    result = CliRunner().invoke(explain_command, ["lion"])
    assert result.exit_code == 0 and "optimizer.name" in result.stdout


def test_cli_suggests_a_close_topic_for_an_unknown_one() -> None:
    result = CliRunner().invoke(explain_command, ["lorra"])
    assert result.exit_code == 2
    assert "did you mean `lora`?" in result.output
