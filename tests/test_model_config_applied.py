"""`models.layers.config_applied`, the one owner of "a config for one call", and its three users: the Swin and
SamViT `forward(x, config)` and `RandomSparsity.applied`. The previous config comes back after the call, also when
the call raises; a config the model refuses changes nothing."""

from __future__ import annotations

import pytest
import sparsesearch as ss
import torch
from sparsesearch.errors import ConfigError
from sparsesearch.models.layers import config_applied

SWIN = dict(embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 1, 2, 2), window_size=4, num_classes=3)
SAM = dict(img_size=64, embed_dim=16, depth=2, num_heads=1, global_attn_indexes=(1,), window_size=2, neck_chans=8)


def _model(name: str) -> torch.nn.Module:
    if name == "swin":
        return ss.create_model("swin_nano", **SWIN).eval()
    return ss.create_model("samvit_nano", **SAM, head=None).eval()


def _configs(model: torch.nn.Module) -> tuple[ss.SparsityConfig, ss.SparsityConfig]:
    depths, windows = model.depths, model.default_window_size
    return ss.SparsityConfig.uniform(0.25, depths, windows), ss.SparsityConfig.uniform(0.5, depths, windows)


@pytest.mark.parametrize("name", ["swin", "samvit"])
def test_forward_config_restores_the_previous_config_after_an_exception(name):
    model = _model(name)
    before, during = _configs(model)
    model.set_config(before)
    seen = []

    def fail(module: torch.nn.Module, args: object) -> None:
        seen.append(model.config)
        raise RuntimeError("a failing forward")

    handle = model.patch_embed.register_forward_pre_hook(fail)
    try:
        with pytest.raises(RuntimeError, match="a failing forward"):
            model(torch.zeros(1, 3, 64, 64), config=during)
    finally:
        handle.remove()
    assert seen == [during]  # applied for the call...
    assert model.config == before  # ...and the previous one restored
    with pytest.raises(ConfigError):
        model(torch.zeros(1, 3, 64, 64), config=ss.SparsityConfig([[0.5]], [4]))  # wrong block count: refused
    assert model.config == before


def test_config_applied_with_and_without_a_config_attribute():
    model = _model("swin")
    cfg, _ = _configs(model)
    with pytest.raises(KeyError):
        with config_applied(model, cfg) as applied:
            assert applied is cfg and model.config is cfg
            raise KeyError("inside the block")
    assert model.config is None

    class Bare:  # anything with set_config: a missing `config` attribute restores None
        def __init__(self) -> None:
            self.calls: list[object] = []

        def set_config(self, config: object) -> None:
            self.calls.append(config)

    bare = Bare()
    with config_applied(bare, cfg):
        pass
    assert bare.calls == [cfg, None]


def test_random_sparsity_applied_restores_after_an_exception(tmp_path):
    space_file = tmp_path / "s.yaml"
    space_file.write_text(
        "name: s\narchitecture: swin_nano\n"
        "model_kwargs: {embed_dim: 16, num_heads: [1, 1, 2, 2], window_size: 4}\n"
        "resolutions: [[64, 64]]\nsparsity_choices: [0.0, 0.5]\n"
        'genes:\n  - {name: a, blocks: ["0.0", "0.1", "1.0", "1.1", "2.0", "2.1", "3.0", "3.1"]}\n'
    )
    space = ss.SearchSpace.load(space_file)
    model = space.create_model(num_classes=2)
    before = space.densest((64, 64))
    model.set_config(before)
    rs = ss.RandomSparsity(model, space, sampler="sandwich", seed=0)
    sparsest = rs.configs(0)[1]
    with pytest.raises(RuntimeError):
        with rs.applied(sparsest) as cfg:
            assert model.config == cfg == sparsest.config
            raise RuntimeError("a failing step")
    assert model.config == before
