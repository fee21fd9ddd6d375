"""SparsityConfig and SearchSpace: round trips, encoding, sampling rules, and clear errors for bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import sparsesearch as ss
from sparsesearch.errors import ConfigError, SpaceError

SPACES = Path(__file__).resolve().parents[1] / "search_spaces"


@pytest.mark.parametrize("suffix", [".json", ".yaml"])
def test_config_round_trip(tmp_path, suffix):
    cfg = ss.SparsityConfig([[0.1, 0.2], [0.0, 0.5, 0.7]], [7, 12], resolution=(512, 1024))
    cfg.save(tmp_path / f"c{suffix}")
    back = ss.SparsityConfig.load(tmp_path / f"c{suffix}")
    assert back == cfg and back.to_dict() == cfg.to_dict()
    assert ss.SparsityConfig.from_dict(cfg.to_dict()) == cfg
    assert not list(tmp_path.glob("*.tmp"))  # written atomically, no temp left behind


@pytest.mark.parametrize(
    "data, match",
    [
        ({"sparsity": [[0.1, 1.0]], "window_size": [7]}, r"sparsity\[0\]\[1\] = 1.0 is outside \[0, 1\)"),
        ({"sparsity": [[0.1, -0.1]], "window_size": [7]}, r"sparsity\[0\]\[1\]"),
        ({"sparsity": [[0.1, "a"]], "window_size": [7]}, r"sparsity\[0\]\[1\] must be a number"),
        ({"sparsity": [[0.1]], "window_size": [7, 7]}, "window_size has 2 entries but sparsity has 1"),
        ({"sparsity": [[0.1]], "window_size": [0]}, r"window_size\[0\] must be a positive int"),
        ({"sparsity": [[0.1]], "window_size": [7], "windows": 3}, "unknown config key.*'windows'"),
        ({"window_size": [7]}, "missing 'sparsity'"),
        ({"sparsity": [[0.1]], "window_size": [7], "resolution": [1, 2, 3]}, "resolution must be"),
        ([1, 2], "must be a mapping"),
    ],
)
def test_bad_configs_name_the_field(data, match):
    with pytest.raises(ConfigError, match=match):
        ss.SparsityConfig.from_dict(data)


def test_config_validated_against_model():
    m = ss.create_model("swin_nano")
    with pytest.raises(ConfigError, match="config has 3 stages but the model has 4"):
        m.set_config(ss.SparsityConfig([[0.1, 0.1]] * 3, [7, 7, 7]))
    with pytest.raises(ConfigError, match=r"sparsity\[2\] has 3 values but stage 2 of the model has 2 blocks"):
        m.set_config(ss.SparsityConfig([[0.1, 0.1], [0.1, 0.1], [0.1, 0.1, 0.1], [0.0, 0.0]], 7))
    with pytest.raises(ConfigError, match=r"window_size\[1\] = 9 does not fit"):
        m.set_config(ss.SparsityConfig.dense(m.depths, [7, 9, 7, 7]))


def test_malformed_config_file(tmp_path):
    (tmp_path / "c.yaml").write_text("sparsity: [[0.1, 0.2]\nwindow_size: 7\n")
    with pytest.raises(ConfigError, match="c.yaml is not valid YAML"):
        ss.SparsityConfig.load(tmp_path / "c.yaml")
    (tmp_path / "c.json").write_text("{")
    with pytest.raises(ConfigError, match="c.json is not valid JSON"):
        ss.SparsityConfig.load(tmp_path / "c.json")


@pytest.mark.parametrize("name", ["swin_t", "swin_s", "swin_b", "demo"])
def test_shipped_spaces_load_and_build(name):
    space = ss.SearchSpace.load(SPACES / f"{name}.yaml")
    rng = np.random.default_rng(0)
    for _ in range(20):
        cfg = space.sample(rng)
        genes = space.encode(cfg)
        assert space.is_valid(genes)
        assert space.decode(genes) == cfg
    m = space.create_model()
    m.set_config(space.sample(rng))
    assert m.max_window_size == space.max_window_size


def test_swin_t_space_has_sparsevit_grouping():
    space = ss.SearchSpace.load(SPACES / "swin_t.yaml")
    assert space.depths == (2, 2, 6, 2)
    stage3 = [g.blocks for g in space.genes if g.stage == 2]
    assert stage3 == [((2, 0), (2, 1)), ((2, 2), (2, 3)), ((2, 4), (2, 5))]
    assert all(g.choices == tuple(round(0.1 * i, 1) for i in range(9)) for g in space.genes)


def test_non_decreasing_rule_holds_for_samples_and_repair():
    space = ss.SearchSpace.load(SPACES / "swin_t.yaml")
    genes = space.sample_genes(0, n=500)
    stage3 = [i for i, g in enumerate(space.genes) if g.stage == 2]
    assert np.all(np.diff(genes[:, stage3], axis=1) >= 0)
    assert len({tuple(r) for r in genes}) > 400  # still spread over the space
    bad = space.repair(np.zeros(space.n_var, dtype=int))
    bad[stage3] = [5, 2, 7]
    assert not space.is_valid(bad)
    assert list(space.repair(bad)[stage3]) == [2, 5, 7]


def test_uniform_densest_sparsest():
    space = ss.SearchSpace.load(SPACES / "demo.yaml")
    assert space.uniform(0.5).flat() == [0.5] * 8
    assert space.densest().flat() == [0.0] * 8
    assert space.sparsest().flat() == [0.8] * 8
    assert space.sparsest().resolution == (256, 256) and space.sparsest((192, 192)).resolution == (192, 192)
    with pytest.raises(SpaceError, match="uniform sparsity must be in"):
        space.uniform(1.0)


def test_encode_rejects_configs_outside_the_space():
    space = ss.SearchSpace.load(SPACES / "demo.yaml")
    cfg = space.uniform(0.5)
    cfg.sparsity[0][1] = 0.3
    with pytest.raises(SpaceError, match="gene 's1' different sparsities"):
        space.encode(cfg)
    with pytest.raises(SpaceError, match="not one of its choices"):
        space.encode(space.uniform(0.55))


def _write(tmp_path, text: str) -> Path:
    p = tmp_path / "space.yaml"
    p.write_text(text)
    return p


BASE = """
architecture: swin_nano
sparsity_choices: [0.0, 0.5]
genes:
  - {name: a, blocks: ["0.0", "0.1"]}
  - {name: b, blocks: ["1.0", "1.1", "2.0", "2.1", "3.0", "3.1"]}
"""


@pytest.mark.parametrize(
    "text, match",
    [
        (BASE.replace("swin_nano", "swin_huge"), "unknown architecture 'swin_huge'"),
        (BASE + "colour: red\n", "unknown key.*'colour'"),
        (BASE.replace('"3.0", "3.1"', '"3.0"'), r"block\(s\) 3.1 are in no gene"),
        (BASE.replace('"3.1"]', '"3.1", "3.2"]'), "names block 3.2, which swin_nano does not have"),
        (BASE.replace('"0.0", "0.1"', '"0.0", "1.0"'), "block 1.0 is in genes 'a' and 'b'"),
        (BASE.replace("[0.0, 0.5]", "[0.0, 1.5]"), r"1.5 is not a sparsity in \[0, 1\)"),
        (BASE.replace('["0.0", "0.1"]', '["zero"]'), "must be written 'stage.block'"),
        (BASE + "window_sizes: [[7], [7]]\n", "window_sizes must list the choices of each of the 4 stages"),
        (BASE + "window_sizes: [[7], [0], [7], [7]]\n", r"window_sizes\[1\] must be a non-empty list of positive ints"),
        (BASE + "rules: {sorted: true}\n", "rules must be a mapping"),
        ("genes: [\n", "is not valid YAML"),
        ("architecture: swin_nano\ngenes: []\n", "genes must be a non-empty list"),
    ],
)
def test_bad_spaces_name_the_field(tmp_path, text, match):
    with pytest.raises(SpaceError, match=match):
        ss.SearchSpace.load(_write(tmp_path, text))


def test_missing_space_file(tmp_path):
    with pytest.raises(SpaceError, match="does not exist"):
        ss.SearchSpace.load(tmp_path / "nope.yaml")
