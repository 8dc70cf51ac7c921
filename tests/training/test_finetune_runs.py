"""A fine-tuning run from the command line: pretrain, save, tune LoRA adapters from the file;
the frozen weights come out bit-identical, and the run resumes without the file."""

import json
import shutil

import torch

from forwardgrad.cli import main

VIT = ["--model", "vit", "--dataset", "digits", "--depth", "1", "--width", "16", "--heads", "2"]
VIT += ["--mlp-dim", "32", "--no-progress", "--threads", "1"]


def test_lora_run_from_a_pretrained_file_keeps_the_frozen_weights(tmp_path):
    pre, tuned = tmp_path / "pre", tmp_path / "tuned"
    assert main(["train", *VIT, "--guess", "backprop", "--epochs", "1", "--out", str(pre)]) == 0
    weights = tmp_path / "weights.pt"
    torch.save(torch.load(pre / "checkpoint.pt", weights_only=True)["model"], weights)
    args = ["--init-from", str(weights), "--lora", "blocks.0.mlp.0", "--trainable", "head.*"]
    argv = ["train", *VIT, *args, "--guess", "wt", "--fallback", "activation", "--epochs", "1"]
    assert main([*argv, "--out", str(tuned)]) == 0
    record = json.loads((tuned / "config.json").read_text())
    assert record["config"]["init_from"] == str(weights)
    assert "blocks.0.mlp.0.down" not in record["fallback_sites"]  # down -> up: a next layer
    assert "blocks.0.mlp.0.up" in record["fallback_sites"]  # then the add: none
    shutil.move(weights, tmp_path / "moved.pt")  # a resumed run needs only its checkpoint
    assert main(["train", "--resume", str(tuned), "--epochs", "2", "--no-progress"]) == 0
    start = torch.load(tmp_path / "moved.pt", weights_only=True)
    end = torch.load(tuned / "checkpoint.pt", weights_only=True)["model"]
    renamed = {"blocks.0.mlp.0.weight": "blocks.0.mlp.0.base.weight"}
    renamed["blocks.0.mlp.0.bias"] = "blocks.0.mlp.0.base.bias"
    for key, value in start.items():
        after = end[renamed.get(key, key)]
        assert torch.equal(after, value) != key.startswith("head."), key  # only head moved
    assert end["blocks.0.mlp.0.up.weight"].abs().sum() > 0  # the adapter trained (from zero)
