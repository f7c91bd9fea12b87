"""Which CPU kernels compute the same bits as the committed reference machine, one kernel at a time.

test_reference_run.py says *whether* a portable run reproduces; where it does not, this says *which* of the
kernels a run uses differ. In a fresh portable process it runs the ops a gstlab run computes (the linear layer's
GEMMs at training and evaluation batch sizes, forward and backward; convolutions forward and backward, by oneDNN
as a run computes them and by ATen's im2col and MKL's GEMM as a run without oneDNN would; BatchNorm
in training and evaluation; ReLU, max-pool, cross-entropy, the foreach Adam update; the generator's normal fill
that initializes weights) on inputs that are the same on every machine (integers over a power of two) and round
when multiplied, and hashes each result's bytes. tests/data/kernel_fingerprint.json holds the hashes of the
machine that wrote it.

Under the reference's conditions (same torch, CPU model name and cpu_id) a difference fails; elsewhere the test is a
skip naming the ops that differ (docs/decisions.md, "Where results reproduce"). Regenerate (when the op list
changes, or to move the reference): ``python tests/test_kernel_fingerprint.py --write``.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from test_reference_run import judge, needs_x86_avx2, portable_env

REFERENCE = Path(__file__).parent / "data" / "kernel_fingerprint.json"


def _ops() -> dict[str, Callable[[], list]]:
    """Name -> a function returning the tensors to hash. torch is imported here, after the kernels are pinned."""
    import torch  # noqa: PLC0415
    import torch.nn.functional as F  # noqa: PLC0415

    gen = torch.Generator().manual_seed(0)

    def exact(*shape: int) -> torch.Tensor:
        """Values in [-1, 1] with 22-bit mantissas: the same on every machine, and their products round, so the
        order of a sum shows in its bits (small integers would sum exactly in any order)."""
        scale = 1 << 22
        return (torch.randint(-scale, scale + 1, shape, generator=gen) / float(scale)).requires_grad_(True)

    def linear(m: int, k: int, n: int) -> list:
        x, w, b = exact(m, k), exact(n, k), exact(n)
        out = F.linear(x, w, b)
        out.backward(exact(m, n))
        return [out, x.grad, w.grad, b.grad]

    def conv(batch: int, c_in: int, c_out: int, side: int, onednn: bool) -> list:
        x, w, b = exact(batch, c_in, side, side), exact(c_out, c_in, 3, 3), exact(c_out)
        with torch.backends.mkldnn.flags(enabled=onednn):  # off: ATen's im2col and MKL's GEMM
            out = F.conv2d(x, w, b, padding=1)
            out.backward(exact(*out.shape))
        return [out, x.grad, w.grad, b.grad]

    def batch_norm(training: bool) -> list:
        x, gamma, beta = exact(128, 16, 8, 8), exact(16), exact(16)
        mean, var = exact(16).detach(), exact(16).detach().abs() + 1
        out = F.batch_norm(x, mean, var, gamma, beta, training=training, momentum=0.1, eps=1e-5)
        out.backward(exact(*out.shape))
        return [out, x.grad, gamma.grad, beta.grad, mean, var]

    def pool_relu() -> list:
        x = exact(128, 16, 8, 8)
        out = F.max_pool2d(F.relu(x), 2)
        out.backward(exact(*out.shape))
        return [out, x.grad]

    def cross_entropy(m: int) -> list:
        logits, labels = exact(m, 10), torch.randint(0, 10, (m,), generator=gen)
        loss = F.cross_entropy(logits, labels)
        loss.backward()
        return [loss, logits.grad]

    def adam() -> list:
        params = [exact(64, 32).detach().requires_grad_(True), exact(10).detach().requires_grad_(True)]
        opt = torch.optim.Adam(params, lr=1e-3, foreach=True)
        for _ in range(3):
            for p in params:
                p.grad = exact(*p.shape).detach()
            opt.step()
        return params

    def normal_fill() -> list:
        torch.manual_seed(0)
        return [torch.randn(4096), torch.nn.init.kaiming_normal_(torch.empty(32, 16, 3, 3), mode="fan_out")]

    ops: dict[str, Callable[[], list]] = {}
    for m in (1, 8, 128, 256, 500):  # training (128) and evaluation (256, a last partial 500 % 256) batches
        for k, n in ((32, 10), (256, 10), (256, 256)):
            ops[f"linear m{m} k{k} n{n}"] = lambda m=m, k=k, n=n: linear(m, k, n)
    for onednn in (True, False):
        for batch, c_in, c_out, side in ((128, 1, 4, 16), (128, 8, 16, 8), (256, 16, 32, 4), (256, 32, 32, 1)):
            ops[f"conv3x3 b{batch} {c_in}->{c_out} {side}x{side}{'' if onednn else ' without oneDNN'}"] = \
                lambda a=(batch, c_in, c_out, side, onednn): conv(*a)
    ops["batch_norm train"] = lambda: batch_norm(True)
    ops["batch_norm eval"] = lambda: batch_norm(False)
    ops["relu + max_pool2d"] = pool_relu
    ops["cross_entropy m128"] = lambda: cross_entropy(128)
    ops["cross_entropy m256"] = lambda: cross_entropy(256)
    ops["adam foreach x3"] = adam
    ops["randn + kaiming_normal_"] = normal_fill
    return ops


def fingerprint() -> dict:
    """Run in this process (pinned before torch loads): the conditions and each op's hash."""
    import torch  # noqa: PLC0415

    from gstlab.environment import cpu_id, cpu_model, native_isa  # noqa: PLC0415

    torch.set_num_threads(1)
    hashes = {}
    for name, op in _ops().items():
        digest = hashlib.sha256()
        for t in op():
            digest.update(t.detach().contiguous().numpy().tobytes())
        hashes[name] = digest.hexdigest()[:16]
    return {"conditions": {"torch": torch.__version__, "cpu_model": cpu_model(), "cpu_id": cpu_id(),
                           "cpu_isa": native_isa(),
                           "aten_capability": torch.backends.cpu.get_cpu_capability()}, "ops": hashes}


def portable_fingerprint() -> dict:
    code = f"import gstlab, json, sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); " \
           "import test_kernel_fingerprint as t; print(json.dumps(t.fingerprint()))"
    proc = subprocess.run([sys.executable, "-c", code], env=portable_env(), capture_output=True, text=True)
    assert proc.returncode == 0, f"the fingerprint exited {proc.returncode}: {proc.stderr[-600:]}"
    return json.loads(proc.stdout.splitlines()[-1])


def differing(ref: dict, got: dict) -> list[str]:
    if ref["ops"].keys() != got["ops"].keys():
        raise AssertionError("the op list changed: regenerate with `python tests/test_kernel_fingerprint.py --write`")
    return [name for name in ref["ops"] if ref["ops"][name] != got["ops"][name]]


def test_differing_names_the_ops_and_refuses_a_changed_list():
    ref = {"ops": {"a": "1", "b": "2", "c": "3"}}
    assert differing(ref, {"ops": {"a": "1", "b": "x", "c": "3"}}) == ["b"]
    with pytest.raises(AssertionError, match="op list changed"):
        differing(ref, {"ops": {"a": "1", "b": "2"}})


@needs_x86_avx2
def test_kernel_fingerprint():
    ref, got = json.loads(REFERENCE.read_text()), portable_fingerprint()
    assert got["conditions"]["aten_capability"] == "AVX2"
    again = portable_fingerprint()
    assert again["ops"] == got["ops"], f"not reproducible run to run on this machine: {differing(got, again)}"
    diff = differing(ref, got)
    kernels = f"{len(diff)} of {len(ref['ops'])} differ: {'; '.join(diff)}" if diff else None
    judge(ref["conditions"], got["conditions"], kernels, "the portable kernels")


if __name__ == "__main__" and sys.argv[1:] == ["--write"]:
    record = portable_fingerprint()
    REFERENCE.parent.mkdir(exist_ok=True)
    REFERENCE.write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {REFERENCE}: {record['conditions']}")
