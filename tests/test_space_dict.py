"""One canonical mapping of a search space (`SearchSpace.to_dict`): it round-trips, and what a supernet checkpoint
stores agrees with what a latency table stores."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import sparsesearch as ss
import yaml
from sparsesearch.latency.structure import space_fingerprint, space_hash
from sparsesearch.supernet import SupernetMeta, same_space, space_from_yaml

SPACE_YAML = """
name: round_trip
architecture: swin_nano
model_kwargs: {window_size: [4, 4, 4, 4]}
resolutions: [64, [96, 64]]
sparsity_choices: [0.5, 0.0, 0.25]
genes:
  - {name: a, blocks: ["0.0", [0, 1]]}
  - {name: b, blocks: ["1.0", "1.1"], choices: [0.0, 0.75]}
  - {name: c, blocks: ["2.0", "2.1"]}
  - {name: d, blocks: ["3.0", "3.1"], choices: [0.0]}
window_sizes: [[4, 8], 4, [4, 2], [4]]
"""


@pytest.fixture
def space(tmp_path: Path) -> ss.SearchSpace:
    path = tmp_path / "round_trip.yaml"
    path.write_text(SPACE_YAML)
    return ss.SearchSpace.load(path)


def _same_encoding(a: ss.SearchSpace, b: ss.SearchSpace) -> None:
    assert (a.n_var, a.upper_bounds.tolist()) == (b.n_var, b.upper_bounds.tolist())
    for genome in a.sample_genes(np.random.default_rng(0), 20):
        assert a.decode(genome).to_dict() == b.decode(genome).to_dict()


def test_to_dict_is_plain_and_round_trips(space):
    data = space.to_dict()
    assert data == json.loads(json.dumps(data))  # lists, not tuples: JSON gives back the same mapping
    assert data == yaml.safe_load(yaml.safe_dump(data))
    assert data["resolutions"] == [[64, 64], [96, 64]]
    assert data["genes"][0] == {"name": "a", "blocks": ["0.0", "0.1"], "choices": [0.0, 0.25, 0.5]}
    assert data["model_kwargs"] == {"window_size": [4, 4, 4, 4]}
    again = ss.SearchSpace(data, "again")
    assert again.to_dict() == data
    assert again.same_as(space) and space.same_as(again)
    _same_encoding(space, again)


def test_same_as_ignores_only_the_name(space):
    data = space.to_dict()
    assert ss.SearchSpace({**data, "name": "other"}).same_as(space)
    changed = {**data, "resolutions": [[64, 64]]}
    assert not ss.SearchSpace(changed).same_as(space)
    rule = {**data, "genes": [{**g, "choices": [0.0, 0.5]} for g in data["genes"]], "rules": {}}
    with_rule = {**rule, "rules": {"non_decreasing_within_stage": True}}
    assert not ss.SearchSpace(rule).same_as(ss.SearchSpace(with_rule))


def test_supernet_and_latency_table_store_the_same_space(space):
    """The two places that used to serialise a space each their own way now agree."""
    stored_by_supernet = space_from_yaml(SupernetMeta.create(space, {}).space_yaml)
    assert same_space(stored_by_supernet, space)
    assert stored_by_supernet.to_dict() == space.to_dict()
    # a latency table keeps the space as JSON; reading it back gives the same space and the same hash
    stored_by_table = ss.SearchSpace(json.loads(json.dumps(space.to_dict())), "<table>")
    assert stored_by_table.same_as(stored_by_supernet)
    assert space_hash(stored_by_table) == space_hash(stored_by_supernet) == space_hash(space)
    # the table's notion of the space (its fingerprint) is the canonical mapping less the name and resolutions
    fingerprint = space_fingerprint(space)
    assert {k: v for k, v in space.to_dict().items() if k not in ("name", "resolutions")}.items() <= fingerprint.items()
