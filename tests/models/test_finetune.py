"""Fine-tuning: frozen parameters stay bit-identical under every estimator; LoRA starts as the
base model; prompt tokens; a user's state-dict file checked key by key."""

import pickle

import pytest
import torch
from torch import nn

from forwardgrad import Estimator
from forwardgrad.models import vit
from forwardgrad.models.finetune import LoRALinear, add_lora, load_weights, train_only


def tiny_vit(prompts=0):
    torch.manual_seed(0)
    return vit(8, 1, 4, patch_size=4, depth=1, heads=2, dim=8, mlp_dim=16, prompts=prompts)


def batch():
    g = torch.Generator().manual_seed(1)
    return torch.randn(6, 1, 8, 8, generator=g), torch.randint(0, 4, (6,), generator=g)


def lora_model():
    model = tiny_vit()
    added = add_lora(model, ["blocks.*.mlp.0", "head"], rank=2, alpha=4.0)
    train_only(model, added)
    return model


def prompt_model():
    model = tiny_vit(prompts=3)
    train_only(model, ["embed.prompts", "head.*"])
    return model


def bias_model():
    model = tiny_vit()
    train_only(model, ["*.bias"])
    return model


SETUPS = {"lora": lora_model, "prompts": prompt_model, "biases": bias_model}
ESTIMATORS = {
    "weight": {},
    "activation": {"tangents": 2, "aggregate": "projection"},
    "activation-masked": {},
    "wt": {"fallback": "activation"},
    "wperp": {"fallback": "activation", "rank": 2},
    "downstream": {"fallback": "activation"},
    "activation-low-memory": {"low_memory": True},
    "backprop": {},
}


@pytest.mark.parametrize("setup", list(SETUPS))
@pytest.mark.parametrize("name", list(ESTIMATORS))
def test_frozen_parameters_stay_bit_identical(setup, name):
    model = SETUPS[setup]()
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    trained = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    assert frozen and trained
    guess = "activation" if name == "activation-low-memory" else name
    est = Estimator(model, guess, seed=0, **ESTIMATORS[name])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    x, y = batch()
    for _ in range(3):
        est.step(x, y)
        opt.step()
        opt.zero_grad()
    params = dict(model.named_parameters())
    for n, before in frozen.items():
        assert torch.equal(params[n], before), n
        assert params[n].grad is None, n
    assert any(not torch.equal(params[n], before) for n, before in trained.items())


def test_lora_starts_as_the_base_layer_and_freezes_it():
    model = tiny_vit()
    x, _ = batch()
    with torch.no_grad():
        before = model(x)
    added = add_lora(model, ["blocks.0.mlp.*"], rank=3, alpha=6.0)
    layer = model.blocks[0].mlp[0]
    assert isinstance(layer, LoRALinear) and isinstance(model.blocks[0].mlp[3], LoRALinear)
    assert added == [f"blocks.0.mlp.{i}.{p}.weight" for i in (0, 3) for p in ("down", "up")]
    assert not layer.base.weight.requires_grad and layer.scale == 2.0
    with torch.no_grad():
        assert torch.equal(model(x), before)  # up starts at zero
        layer.up.weight.normal_()
        expected = layer.base(x[:1, 0, 0]) + 2.0 * (x[:1, 0, 0] @ layer.down.weight.t()) @ (
            layer.up.weight.t()
        )
        assert torch.allclose(layer(x[:1, 0, 0]), expected, atol=1e-6)


def test_lora_and_trainable_patterns_name_what_is_wrong():
    with pytest.raises(ValueError, match=r"'embed.proj' matches no nn.Linear, only 'embed.proj'"):
        add_lora(tiny_vit(), ["embed.proj"], 2, 4.0)
    with pytest.raises(ValueError, match=r"lora pattern 'nope' matches nothing; names look like"):
        add_lora(tiny_vit(), ["nope"], 2, 4.0)
    with pytest.raises(ValueError, match=r"trainable pattern 'x\*' matches nothing"):
        train_only(tiny_vit(), ["x*"])
    with pytest.raises(ValueError, match="LoRA rank must be >= 1"):
        LoRALinear(nn.Linear(3, 3), 0, 1.0)


def test_prompt_tokens_sit_after_the_class_token():
    model = tiny_vit(prompts=3)
    x, _ = batch()
    tokens = model.embed(x)
    assert tokens.shape == (6, 1 + 3 + 4, 8)
    assert torch.equal(tokens[:, 1:4], model.embed.prompts.expand(6, -1, -1))
    plain = tiny_vit()
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if k != "embed.prompts"})
    assert torch.equal(plain.embed(x), torch.cat([tokens[:, :1], tokens[:, 4:]], 1))


def test_weights_from_a_file_are_checked_key_by_key(tmp_path):
    source = tiny_vit()
    path = tmp_path / "pretrained.pt"
    torch.save(source.state_dict(), path)
    target = tiny_vit(prompts=2)
    with torch.no_grad():
        for p in target.parameters():
            p.zero_()
    load_weights(target, path, new=["embed.prompts"])
    for k, v in source.state_dict().items():
        assert torch.equal(target.state_dict()[k], v), k
    with pytest.raises(ValueError, match=r"lacks: \['embed.prompts'\]"):
        load_weights(tiny_vit(prompts=2), path)
    bigger = vit(8, 1, 5, patch_size=4, depth=1, heads=2, dim=8, mlp_dim=16)
    with pytest.raises(ValueError, match=r"shapes differ: \['head.weight: file \(4, 8\), model"):
        load_weights(bigger, path)
    torch.save({**source.state_dict(), "extra": torch.zeros(1)}, tmp_path / "extra.pt")
    with pytest.raises(ValueError, match=r"has keys the model does not: \['extra'\]"):
        load_weights(tiny_vit(), tmp_path / "extra.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="is not a state_dict saved with torch.save"):
        load_weights(tiny_vit(), tmp_path / "junk.pt")


class _RunsCode:
    def __reduce__(self):
        return (exec, ("import pathlib; pathlib.Path('RAN').write_text('x')",))


def test_a_file_that_would_run_code_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump({"head.weight": _RunsCode()}, f)
    with pytest.raises(ValueError, match="weights_only=True"):
        load_weights(tiny_vit(), path)
    assert not (tmp_path / "RAN").exists()


def test_lora_refuses_a_linear_registered_under_two_names():
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.enc = self.dec = nn.Linear(4, 4)

    with pytest.raises(ValueError, match=r"'enc' is one nn.Linear registered under several"):
        add_lora(Tied(), ["*c"], 2, 4.0)


def test_frozen_layers_of_a_plain_mlp_get_no_tangents():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 6), nn.ReLU(), nn.Linear(6, 3))
    train_only(model, ["2.*"])
    est = Estimator(model, "activation")
    est.estimate(torch.randn(4, 5), torch.zeros(4, dtype=torch.long))
    assert est._engine.plan is None and est._engine.layout.keys == ["2"]
