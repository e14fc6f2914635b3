"""``python -m benchmarks.checks_overhead``: what the safety checks of a training step cost.

``LocalLearningRule.training_step`` checks, besides the targets and updates it always
checked, the batch (dtype, size, label range), the weights after each optimizer step (one
sum per parameter tensor) and the loss; GAIT-prop and TP also check each inverted layer's
LU pivots for singularity. This times those additions, interleaved with the step they
belong to (the rule's ``local_gradients`` plus its Adam step) on the same network and
batch, and prints each as a share of the step. Run it from the repository root.
"""
from __future__ import annotations

import argparse
import statistics
import time
from typing import Dict, Optional, Sequence

import torch

from lightning_gait import GAITProp, InvertibleMLP


def _build(width: int, depth: int, in_features: int, dtype: torch.dtype) -> GAITProp:
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        net = InvertibleMLP(in_features, width, depth, 10, square_output=True)
    finally:
        torch.set_default_dtype(previous)
    mode = "absolute" if dtype == torch.float64 else "difference"
    return GAITProp(net, normalize=True, target_mode=mode)


def measure(*, width: int = 500, depth: int = 6, batch: int = 256, in_features: int = 3072,
            dtype: torch.dtype = torch.float64, steps: int = 20, warmup: int = 3) -> Dict[str, float]:
    """Median milliseconds of the step and of each check, and the checks' share of the step."""
    rule = _build(width, depth, in_features, dtype)
    optimizer = rule.configure_optimizers()
    g = torch.Generator().manual_seed(0)
    x = torch.rand(batch, in_features, generator=g, dtype=dtype)
    y = torch.randint(0, 10, (batch,), generator=g)
    loss = torch.tensor(2.3, dtype=dtype)
    step_s, checks_s, singular_s = [], [], []
    for i in range(warmup + steps):
        start = time.perf_counter()
        for (gw, gb), (w, b) in zip(rule.local_gradients(x, y), rule.net.layer_parameters()):
            w.grad = gw
            if b is not None:
                b.grad = gb
        optimizer.step()
        stepped = time.perf_counter()
        rule.read_step_checks(rule.check_batch(x, y))  # the start of training_step
        rule._record_step(i, loss)  # after its optimizer step
        rule.read_step_checks()
        checked = time.perf_counter()
        inverses = [inv for inv in rule.layer_inverses() if inv is not None]
        factored = time.perf_counter()
        bool(torch.stack([inv.singular for inv in inverses]).any())
        flagged = time.perf_counter()
        if i >= warmup:
            step_s.append(stepped - start)
            checks_s.append(checked - stepped)
            singular_s.append(flagged - factored)
    step, checks, singular = (statistics.median(v) * 1e3 for v in (step_s, checks_s, singular_s))
    return {"step_ms": step, "checks_ms": checks, "singular_ms": singular,
            "checks_share": checks / step, "singular_share": singular / step}


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--width", type=int, default=500)
    parser.add_argument("--depth", type=int, default=6)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--in-features", type=int, default=3072)
    parser.add_argument("--dtype", choices=["float64", "float32"], default="float64")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    result = measure(width=args.width, depth=args.depth, batch=args.batch, in_features=args.in_features,
                     dtype=getattr(torch, args.dtype), steps=args.steps)
    print(f"{args.dtype}, width {args.width}, depth {args.depth}, batch {args.batch}: step {result['step_ms']:.1f} ms; "
          f"batch, weight and loss checks {result['checks_ms']:.3f} ms ({100 * result['checks_share']:.2f}%); "
          f"singular-layer flags {result['singular_ms']:.3f} ms ({100 * result['singular_share']:.2f}%)")
    return result


if __name__ == "__main__":
    main()
