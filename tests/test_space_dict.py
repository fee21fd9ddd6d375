"""A search space's canonical mapping (`SearchSpace.to_dict`): what a hand-written YAML file gives, that it loads
back to the same configs, and that a supernet checkpoint and a latency table store the same space."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import sparsesearch as ss
import yaml
from sparsesearch.latency.structure import space_fingerprint, space_hash
from sparsesearch.supernet import SupernetMeta, same_space, space_from_yaml

#: a space in the short forms the format allows: a square resolution as one number, a block as [stage, block],
#: a stage's single window as a number, unsorted global choices
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

#: the same space written out by hand in the long form: every choice per gene, every resolution as [H, W]
CANONICAL = {
    "name": "round_trip",
    "architecture": "swin_nano",
    "model_kwargs": {"window_size": [4, 4, 4, 4]},
    "resolutions": [[64, 64], [96, 64]],
    "genes": [
        {"name": "a", "blocks": ["0.0", "0.1"], "choices": [0.0, 0.25, 0.5]},
        {"name": "b", "blocks": ["1.0", "1.1"], "choices": [0.0, 0.75]},
        {"name": "c", "blocks": ["2.0", "2.1"], "choices": [0.0, 0.25, 0.5]},
        {"name": "d", "blocks": ["3.0", "3.1"], "choices": [0.0]},
    ],
    "window_sizes": [[4, 8], [4], [4, 2], [4]],
}

CANONICAL_YAML = """
name: round_trip
architecture: swin_nano
model_kwargs:
  window_size: [4, 4, 4, 4]
resolutions: [[64, 64], [96, 64]]
genes:
  - {name: a, blocks: ["0.0", "0.1"], choices: [0.0, 0.25, 0.5]}
  - {name: b, blocks: ["1.0", "1.1"], choices: [0.0, 0.75]}
  - {name: c, blocks: ["2.0", "2.1"], choices: [0.0, 0.25, 0.5]}
  - {name: d, blocks: ["3.0", "3.1"], choices: [0.0]}
window_sizes: [[4, 8], [4], [4, 2], [4]]
"""


def _load(folder: Path, name: str, text: str) -> ss.SearchSpace:
    path = folder / name
    path.write_text(text)
    return ss.SearchSpace.load(path)


@pytest.fixture
def space(tmp_path: Path) -> ss.SearchSpace:
    return _load(tmp_path, "round_trip.yaml", SPACE_YAML)


def _every_genome(space: ss.SearchSpace) -> list[np.ndarray]:
    return [np.array(g) for g in itertools.product(*(range(int(u) + 1) for u in space.upper_bounds))]


def _configs(space: ss.SearchSpace) -> list[dict]:
    return [space.decode(g).to_dict() for g in _every_genome(space)]


def test_to_dict_of_a_known_space(space):
    assert space.to_dict() == CANONICAL
    assert json.loads(json.dumps(space.to_dict())) == CANONICAL  # plain lists and numbers


def test_a_genome_decodes_to_the_config_written_out(space):
    # genes a..d at choices 2, 1, 0, 0; windows at choices 1, 0, 1, 0; the second resolution
    genome = np.array([2, 1, 0, 0, 1, 0, 1, 0, 1])
    config = space.decode(genome)
    assert config.to_dict() == {
        "sparsity": [[0.5, 0.5], [0.75, 0.75], [0.0, 0.0], [0.0, 0.0]],
        "window_size": [8, 4, 2, 4],
        "resolution": [96, 64],
    }
    assert space.encode(config).tolist() == genome.tolist()
    assert (space.n_var, space.upper_bounds.tolist(), space.size) == (9, [2, 1, 2, 0, 1, 0, 1, 0, 1], 144)


def test_the_long_form_written_by_hand_is_the_same_space(space, tmp_path):
    long_form = _load(tmp_path, "long.yaml", CANONICAL_YAML)
    assert long_form.same_as(space) and space.same_as(long_form)
    assert long_form.upper_bounds.tolist() == space.upper_bounds.tolist()
    assert _configs(long_form) == _configs(space)


def test_to_dict_saved_as_yaml_or_json_loads_back_to_the_same_configs(space, tmp_path):
    configs = _configs(space)
    for name, text in (("again.yaml", yaml.safe_dump(space.to_dict())), ("again.json", json.dumps(space.to_dict()))):
        again = _load(tmp_path, name, text)
        assert again.same_as(space)
        assert again.upper_bounds.tolist() == space.upper_bounds.tolist()
        assert _configs(again) == configs
        for genome in _every_genome(space):
            assert again.encode(space.decode(genome)).tolist() == genome.tolist()


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
