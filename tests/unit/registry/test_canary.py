from __future__ import annotations

import random
from collections import Counter
from typing import Any

from registry.models import pick_version, validate_model_fields


def version(name: str, weight: int | None = None) -> dict[str, Any]:
    return {"version": name, "traffic_weight": weight}


def picks(versions: list[dict[str, Any]], n: int = 2000) -> Counter[str]:
    rng = random.Random(7)
    return Counter(pick_version(versions, rng)["version"] for _ in range(n))  # type: ignore[index]


def test_without_weights_the_newest_serves_everything() -> None:
    assert picks([version("3"), version("2")]) == {"3": 2000}


def test_weights_split_the_traffic() -> None:
    counts = picks([version("3", 10), version("2", 90)])
    assert set(counts) == {"2", "3"} and 100 < counts["3"] < 300


def test_a_version_without_a_weight_gets_none_once_weights_are_set() -> None:
    assert picks([version("3"), version("2", 5)]) == {"2": 2000}


def test_all_zero_weights_fall_back_to_the_newest() -> None:
    assert picks([version("3", 0), version("2", 0)]) == {"3": 2000}
    assert pick_version([]) is None


def test_weight_validation() -> None:
    for bad in (-1, 1001, 2.5, True, "10"):
        _, problems = validate_model_fields({"traffic_weight": bad}, partial=True)
        assert [p.pointer for p in problems] == ["/traffic_weight"], bad
    values, problems = validate_model_fields({"traffic_weight": None}, partial=True)
    assert problems == [] and values == {"traffic_weight": None}


def test_a_model_has_at_most_64_labels() -> None:
    from registry.models import MAX_LABELS

    body = {
        "name": "m",
        "version": "1",
        "triton_name": "m",
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 1]}],
        "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1]}],
        "labels": {f"k{i}": "v" for i in range(5000)},
    }
    _, problems = validate_model_fields(body, partial=False)
    assert [p.pointer for p in problems] == ["/labels"] and str(MAX_LABELS) in problems[0].detail
