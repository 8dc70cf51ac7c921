"""The README's "Any model" example runs as written and its loss falls."""

import re
from pathlib import Path

import torch


def _example() -> str:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme[readme.index("### Any model") :]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_any_model_example_trains_a_users_own_module():
    torch.manual_seed(0)
    namespace: dict = {}
    code = _example().replace("for step in range(50):", "losses = []\nfor step in range(50):")
    code = code.replace(
        "    loss = est.step(x, y)", "    loss = est.step(x, y)\n    losses.append(float(loss))"
    )
    exec(compile(code, "README.md", "exec"), namespace)
    losses = namespace["losses"]
    assert sum(losses[-5:]) / 5 < 0.8 * sum(losses[:5]) / 5
    rows = namespace["est"].describe()
    assert {"embed", "block.norm", "block.attn", "head"} <= {r["name"] for r in rows}
