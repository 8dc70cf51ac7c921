"""The forward-mode machinery for any ``nn.Module``; imports nothing above it.

* ``sites``: which modules carry activity tangents (by type, name pattern or block);
* ``trace``: one traced pass: which site forms which parameter's gradient, the batch-coupling check;
* ``engine``: the general engine (hooks + ``vmap`` over ``torch.func.jvp``), weight-space JVPs;
* ``chain``: the fused Linear-chain fast path for plain MLPs;
* ``rules``: per module type, an activity estimate -> parameter gradients (Linear, Conv, local VJP);
* ``strategies``: one pass / chunked, low-memory, per-site JVP; sum / mean / projection / batch;
* ``state``: BatchNorm statistics and dropout masks once per step;
* ``aggregate``, ``samplers``: combining k JVPs; drawing isotropic tangents.
"""
