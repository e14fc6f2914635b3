"""How far the cached layer inverse's updates are from the exact-inverse updates in training.

GAIT-N in the difference form (``target_mode="difference"``), trained with
``inverse=<strategy>`` for ``--steps`` steps (Adam, the paper's lr 1.9e-5, batch 256,
real CIFAR-10 when ``--data-dir`` holds it, else uniform noise). At every step, on the
same weights and batch, the exact-inverse (LU) rule's ``local_gradients`` are computed
too, and the relative error ``||dW_fast - dW_exact||_F / ||dW_exact||_F`` of every layer's
weight update is recorded (biases: the same, reported separately). Training follows the
first strategy's own trajectory, so the staleness of its cached inverse is the real one.

    python -m benchmarks.inverse_accuracy --steps 500 --json benchmarks/inverse_accuracy.json
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import pickle
import statistics
import time

import torch

from lightning_gait import GAITProp, InvertibleMLP
from lightning_gait.inverses import CachedInverse

STRATEGIES = {
    "ns1_ref1": dict(newton_steps=1, refinements=1),  # the default of inverse="cached"
    "ns1": dict(newton_steps=1, refinements=0),
    "ref1_every2": dict(newton_steps=0, refinements=1, refresh_every=2),
    "ref2_every10": dict(newton_steps=0, refinements=2, refresh_every=10),
}


def load_cifar(data_dir: str, dtype: torch.dtype):
    folder = os.path.join(data_dir, "cifar-10-batches-py")
    xs, ys = [], []
    for k in range(1, 6):
        path = os.path.join(folder, f"data_batch_{k}")
        if not os.path.exists(path):
            return None
        with open(path, "rb") as fh:
            d = pickle.load(fh, encoding="bytes")
        xs.append(torch.tensor(d[b"data"]))
        ys.append(torch.tensor(d[b"labels"]))
    return torch.cat(xs).to(dtype) / 255.0, torch.cat(ys)


def relative(a, b):
    return float((a - b).norm() / b.norm())


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=500)
    p.add_argument("--width", type=int, default=500)
    p.add_argument("--depth", type=int, default=6)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--lr", type=float, default=1.9e-5)
    p.add_argument("--dtype", default="float64", choices=["float64", "float32"])
    p.add_argument("--activation", default="leaky_relu")
    p.add_argument("--strategies", nargs="+", default=["ns1_ref1", "ns1"], choices=sorted(STRATEGIES))
    p.add_argument("--data-dir", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..",
                                                      "shared", "data"))
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    torch.manual_seed(args.seed)
    data = load_cifar(args.data_dir, dtype)
    source = "cifar10" if data is not None else "uniform noise"
    if data is None:
        g = torch.Generator().manual_seed(args.seed)
        data = (torch.rand(50 * args.batch, 3072, generator=g, dtype=dtype),
                torch.randint(0, 10, (50 * args.batch,), generator=g))
    X, Y = data
    perm = torch.randperm(len(X), generator=torch.Generator().manual_seed(args.seed))
    net = InvertibleMLP(3072, args.width, args.depth, 10, activation=args.activation).to(dtype)
    common = dict(normalize=True, target_mode="difference", ortho_weight=100.0, lr=args.lr)
    rules = {name: GAITProp(net, inverse=CachedInverse(**STRATEGIES[name]), **common) for name in args.strategies}
    exact = GAITProp(net, **common)
    driver = rules[args.strategies[0]]
    optimizer = driver.configure_optimizers()
    floor = []  # float32 only: exact float32 updates against exact float64 ones (round-off floor)
    far = {name: [] for name in rules}  # float32 only: each strategy against exact float64
    errors = {name: [] for name in rules}
    bias_errors = {name: [] for name in rules}
    residuals = {name: [] for name in rules}
    start = time.time()
    for step in range(args.steps):
        idx = perm[(step * args.batch) % (len(X) - args.batch):][: args.batch]
        x, y = X[idx], Y[idx]
        reference = exact.local_gradients(x, y)
        if dtype != torch.float64:
            net64 = copy.deepcopy(net).double()
            exact64 = GAITProp(net64, **common).local_gradients(x.double(), y)
            floor.append(max(relative(a[0].double(), b[0]) for a, b in zip(reference, exact64)))
        grads = {}
        for name, rule in rules.items():
            grads[name] = rule.local_gradients(x, y)
            if dtype != torch.float64:
                far[name].append(max(relative(a[0].double(), b[0]) for a, b in zip(grads[name], exact64)))
            errors[name].append(max(relative(a[0], b[0]) for a, b in zip(grads[name], reference)))
            bias_errors[name].append(max(relative(a[1], b[1]) for a, b in zip(grads[name], reference)))
            residuals[name].append(rule.inverse_strategy.last_residual)
        # the training step of the driver (with the penalty, as training_step)
        optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            for i, ((gw, gb), layer) in enumerate(zip(grads[args.strategies[0]], net.layers)):
                if i in net.square_layer_indices:
                    w = layer.weight
                    pmat = w @ w.T
                    pmat.diagonal().sub_(1.0)
                    gw = gw + driver.ortho_weight * 4.0 * (pmat @ w)
                layer.weight.grad, layer.bias.grad = gw, gb
        optimizer.step()
        if step % 25 == 0 or step == args.steps - 1:
            if floor:
                print(f"  float32 exact vs float64 exact: {floor[-1]:.1e} (max {max(floor):.1e})")
            print(f"step {step} ({time.time() - start:.0f} s): "
                  + ", ".join(f"{n} {errors[n][-1]:.1e} (max {max(errors[n]):.1e}, |E|_F {residuals[n][-1]:.1e})"
                              for n in rules), flush=True)
    summary = {
        name: {
            "options": STRATEGIES[name], "max_weight_update_error": max(errors[name]),
            "median_weight_update_error": statistics.median(errors[name]),
            "max_bias_update_error": max(bias_errors[name]),
            "exact_refreshes": rules[name].inverse_strategy.exact_refreshes,
            "max_residual_frobenius": max((r for r in residuals[name] if r == r), default=None),
        }
        for name in rules
    }
    if floor:
        summary["float32_exact_vs_float64_exact"] = {"max": max(floor), "median": statistics.median(floor)}
        for name in rules:
            summary[name]["vs_float64_exact_max"] = max(far[name])
            summary[name]["vs_float64_exact_median"] = statistics.median(far[name])
    out = {"setting": dict(vars(args), data=source, trained_with=args.strategies[0],
                           penalty="ortho_weight 100 (in the trained step)"),
           "summary": summary, "per_step_weight_error": errors, "per_step_residual": residuals}
    print(json.dumps(summary, indent=1))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=1)
    return out


if __name__ == "__main__":
    main()
