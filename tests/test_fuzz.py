"""No input makes the compiler raise, hang or report an error without a place.

Each family of generated inputs (tests/fuzzing.py) runs a few dozen cases here; bench/fuzz_recipes.py
runs over ten thousand. Every input that ever crashed the compiler (or hung it, or planned what the
runtime cannot take) is kept in tests/fuzz_corpus/ and replayed; `bench/fuzz_recipes.py --save DIR`
writes new entries in the same form. Every training method must plan under every launch strategy.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fuzzing import FAMILIES, Case, Outcome, run_case, sandbox
from hypothesis import HealthCheck, given, settings

from sdxlc.pipeline import compile_recipe

CORPUS = Path(__file__).resolve().parent / "fuzz_corpus"
SLOW = 5.0
EXAMPLES = {"mutated": 20, "words": 10, "text": 10, "numbers": 25, "controls": 25, "long": 5, "includes": 15,
            "sets": 25, "paths": 20, "launch": 10}


def _check(case: Case, folder: Path) -> Outcome:
    outcome = run_case(case, folder)
    assert outcome.exit in (0, 1), outcome.crash or outcome.unlocated
    assert outcome.unlocated == [], outcome.codes
    assert outcome.seconds < SLOW
    return outcome


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_generated_inputs_end_in_a_plan_or_located_errors(family: str,
                                                          tmp_path_factory: pytest.TempPathFactory) -> None:
    folder = sandbox(tmp_path_factory.mktemp(family) / "case")

    @settings(max_examples=EXAMPLES[family], deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(FAMILIES[family])
    def run(case: Case) -> None:
        _check(case, folder)

    run()


def _corpus() -> list[Path]:
    return sorted(CORPUS.glob("*.json"))


@pytest.mark.parametrize("entry", _corpus(), ids=lambda path: path.stem)
def test_every_input_that_ever_crashed(entry: Path, tmp_path: Path) -> None:
    """Each entry says what it once did (`why`) and how the compiler ends on it now (`expect`)."""
    recorded = json.loads(entry.read_text(encoding="utf-8"))
    outcome = _check(Case.from_json(recorded), sandbox(tmp_path / "case"))
    if recorded.get("expect") is not None:
        assert outcome.exit == recorded["expect"], outcome.codes


def test_the_corpus_covers_every_family() -> None:
    families = {json.loads(entry.read_text(encoding="utf-8"))["family"] for entry in _corpus()}
    assert {"numbers", "controls", "long", "includes", "sets", "paths", "launch"} <= families


METHODS = {
    "lora": "lora rank 4",
    "lora on the text encoders": "lora on unet+te1+te2",
    "finetune": "finetune unet",
    "finetune all": "finetune unet+te1+te2",
    "full bf16": "finetune unet full bf16",
    "embedding": 'embedding "<t>" init "cat"',
}


@pytest.mark.parametrize("strategy", ["ddp", "deepspeed-zero2", "fsdp"])
@pytest.mark.parametrize("method", sorted(METHODS))
@pytest.mark.parametrize("gpus", [2])
def test_every_method_plans_under_every_strategy(tmp_path: Path, method: str, strategy: str,
                                                 gpus: int) -> None:
    folder = sandbox(tmp_path / "case")
    recipe = folder / "fuzz.sdx"
    recipe.write_text(f'model tiny\nprofile a100-80gb\ndata "data/quickstart"\n{METHODS[method]}\n'
                      f"strategy {strategy}\ngpus {gpus}\n", encoding="utf-8")
    compiled = compile_recipe(recipe)
    assert compiled.plan is not None, [d.message for d in compiled.errors]
    assert compiled.plan["launch"]["strategy"] == strategy
