"""AutoSparse with g0 from fewer batches: scoring time and mask agreement with the full pass, in one run.

    python benchmarks/autosparse_g0_batches.py                     # LeNet-5 / Fashion-MNIST, the default scorer
    python benchmarks/autosparse_g0_batches.py --scorer lenet300-fmnist

``gradient_batches=b`` sums b batches and scales the sum by ``len(data) / b`` to the full pass's
scale. For each b: the scoring time, and at each density the kept-set IoU with the full pass's mask
and both masks' kept weights per layer.
"""

from __future__ import annotations

import argparse
import time

import torch

import prunekit
from prunekit import data, models
from prunekit.core.allocation import select


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="lenet5")
    ap.add_argument("--dataset", default="fashion-mnist")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--batches", default="47,10,1", help="gradient_batches values, comma-separated")
    ap.add_argument("--densities", default="0.1,0.02,0.005")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--scorer", default=None, help="a shipped scorer's name or a scorer file (default: the method's default)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    ds = data.load_dataset(args.dataset, args.data_dir)
    model = models.create(args.model, ds.num_classes, ds.input_shape, seed=0)
    batches = data.scoring_batches(ds.train, batch_size=128, mean=ds.info.mean, std=ds.info.std, seed=0)
    print(f"{args.model} / {args.dataset}: a full pass is {len(batches)} batches of 128")
    scores = {}
    for b in [None, *(int(t) for t in args.batches.split(","))]:
        start = time.perf_counter()
        options = {"scorer": args.scorer} if args.scorer else {}
        scores[b] = prunekit.score(model, "autosparse", data=batches, **options, **({} if b is None else {"gradient_batches": b}))
        print(f"gradient_batches={b}: scoring {time.perf_counter() - start:.1f} s", flush=True)
    for d in (float(t) for t in args.densities.split(",")):
        ref = select(scores[None], d)  # the method's own selection: exact global top-k
        for b in (k for k in scores if k is not None):
            m = select(scores[b], d)
            both = sum(int((m[n] & ref[n]).sum()) for n in m)
            either = sum(int((m[n] | ref[n]).sum()) for n in m)
            print(f"density {d}, {b} batches: IoU {both / either:.3f}; kept per layer {[int(x.sum()) for x in m.values()]} "
                  f"(full pass {[int(x.sum()) for x in ref.values()]})")


if __name__ == "__main__":
    main()
