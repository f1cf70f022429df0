"""Hyperbolic kNN retrieval with faiss (issue 7): exact speed at SOP scale, approximate indexes at 1M points.

Part 1, exact all-vs-all retrieval (the reference includes the query), N = 60,000, D = 128 (SOP's test-set size), for
the k of SOP's evaluation (MAP@R: k = max_bin_count - 1 = 11; R@1000: k = 1000):

* faiss ``IndexFlatL2`` on the same N×D data (Euclidean, exact): the baseline of the ratios,
* ``PoincareKNN(c)`` (exact, certified) and ``PoincareKNN(c, tie_rtol=1e-4)``, with pml's self-match removal,
* pml's ``CustomKNN(PoincareDistance(c), batch_size=2048)``, timed on the first ``--custom-queries`` queries
  (against all N references) and extrapolated linearly to N queries.

Part 2, approximate search on 1,000,000 clustered ball points (D = 128): recall@1 and recall@10 of IVF-Flat and HNSW
(over the tangent vectors log0(y), L2 metric; k + 16 candidates re-ranked exactly by ``PoincareKNN``) against exact
``PoincareKNN``, and query throughput, for 10,000 held-out queries.

Times are the minimum over interleaved repeats (``bench_utils.time_ms``). ``--quick`` runs a small version.

    python benchmarks/bench_knn.py            # both parts (~30 min on 2 CPU cores)
    python benchmarks/bench_knn.py --quick    # ~2 min
    python benchmarks/bench_knn.py --part 2
"""

import argparse
import resource
import time

import faiss
import torch
from bench_utils import time_ms
from pytorch_metric_learning.utils.inference import CustomKNN
from tqdm.auto import tqdm

from pml_hyperbolic.distances import PoincareDistance
from pml_hyperbolic.layers import ToPoincare
from pml_hyperbolic.utils.inference import PoincareKNN

C = 0.1


def sop_like(n, dim, seed=0):
    """Ball embeddings shaped like SOP's test set: classes of 2 to 12 images, features around class centres mapped
    by ``ToPoincare(c=0.1, clip_r=2.3)`` (most land on the clipping shell, as trained Hyp-ViT embeddings do)."""
    g = torch.Generator().manual_seed(seed)
    sizes = torch.randint(2, 13, (n // 2,), generator=g)
    sizes = sizes[: int((sizes.cumsum(0) < n).sum()) + 1]
    labels = torch.arange(len(sizes)).repeat_interleave(sizes)[:n]
    centres = torch.randn(len(sizes), dim, generator=g)
    features = centres[labels] + 0.8 * torch.randn(n, dim, generator=g)
    with torch.no_grad():
        return ToPoincare(C, clip_r=2.3)(features), labels


def clustered_ball_points(n, dim, n_clusters, seed):
    """Points around cluster centres at tangent radii 1 to 4, mapped into the ball by ``ToPoincare`` (clip 2.3): about
    half the clusters on the clipping shell, the others inside (sqrt(c)*||y|| from 0.3 to 0.62)."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.nn.functional.normalize(torch.randn(n_clusters, dim, generator=g), dim=1)
    centres *= 1 + 3 * torch.rand(n_clusters, 1, generator=g)
    out = torch.empty(n, dim)
    to_ball = ToPoincare(C, clip_r=2.3)
    for s in range(0, n, 1 << 16):
        m = min(n, s + (1 << 16)) - s
        ids = torch.randint(0, n_clusters, (m,), generator=g)
        with torch.no_grad():
            out[s : s + m] = to_ball(centres[ids] + 0.3 * torch.randn(m, dim, generator=g) / dim**0.5)
    return out


def with_progress(fns, repeats):
    """Wrap ``fns`` so that each call advances one tqdm bar over all ``repeats`` rounds."""
    bar = tqdm(total=repeats * len(fns), desc="runs")

    def wrap(fn):
        def run():
            fn()
            bar.update()

        return run

    return {name: wrap(fn) for name, fn in fns.items()}, bar


def part1(n, dim, ks, repeats, custom_queries):
    x, labels = sop_like(n, dim)
    max_bin = int(torch.bincount(labels).max())
    ks = [max_bin - 1 if k == "max_bin_count" else k for k in ks]
    print(f"\n## Part 1: exact all-vs-all kNN, N = {n}, D = {dim}, c = {C} (max_bin_count = {max_bin})\n")
    xn = x.numpy()
    rows = {}
    for k in ks:

        def faiss_l2():
            index = faiss.IndexFlatL2(dim)
            index.add(xn)
            index.search(xn, k + 1)

        custom = CustomKNN(PoincareDistance(C), batch_size=2048)
        fns = {
            "faiss IndexFlatL2 (Euclidean)": faiss_l2,
            "PoincareKNN (exact)": lambda: PoincareKNN(C)(x, k, x, ref_includes_query=True),
            "PoincareKNN (tie_rtol=1e-4)": lambda: PoincareKNN(C, tie_rtol=1e-4)(x, k, x, ref_includes_query=True),
            "CustomKNN(PoincareDistance())": lambda: custom(x[:custom_queries], k, x, ref_includes_query=True),
        }
        fns, bar = with_progress(fns, repeats)
        times = time_ms(fns, repeats=repeats, warmup=0)
        bar.close()
        times["CustomKNN(PoincareDistance())"] *= n / custom_queries
        for name, t in times.items():
            rows.setdefault(name, {})[k] = t / 1e3
    base = rows["faiss IndexFlatL2 (Euclidean)"]
    print("| method | " + " | ".join(f"k = {k}: time (s) | × faiss L2" for k in ks) + " |")
    print("|---|" + "---:|---:|" * len(ks))
    for name, t in rows.items():
        note = f" (extrapolated from {custom_queries} queries)" if name.startswith("CustomKNN") else ""
        print(f"| {name}{note} | " + " | ".join(f"{t[k]:.1f} | {t[k] / base[k]:.2f}" for k in ks) + " |")
    exact, slow = rows["PoincareKNN (exact)"], rows["CustomKNN(PoincareDistance())"]
    speedups = ", ".join(f"k = {k}: {slow[k] / exact[k]:.1f}×" for k in ks)
    print("\nPoincareKNN (exact) speed-up over CustomKNN: " + speedups)


def recall(found, exact, k):
    """Fraction of the exact k nearest found among the first k returned, averaged over queries."""
    return (found[:, :k, None] == exact[:, None, :k]).any(2).double().mean().item()


def part2(n, dim, n_queries, nlist, nprobes, hnsw_m, efs, repeats):
    print(f"\n## Part 2: approximate kNN, {n} clustered ball points, D = {dim}, {n_queries} queries, c = {C}\n")
    t0 = time.perf_counter()
    data = clustered_ball_points(n + n_queries, dim, n_clusters=max(10, n // 100), seed=1)
    ref, query = data[:n], data[n:]
    del data
    print(f"data generated in {time.perf_counter() - t0:.0f} s")

    exact = PoincareKNN(C, reset_before=False, reset_after=False)
    t0 = time.perf_counter()
    exact.train(ref)
    build = time.perf_counter() - t0
    t0 = time.perf_counter()
    _, truth = exact(query, 10)
    exact_time = time.perf_counter() - t0
    del exact
    results = [("Flat (exact, PoincareKNN)", "", build, exact_time, 1.0, 1.0)]

    def ivf(dim_):
        return faiss.index_factory(dim_, f"IVF{nlist},Flat")

    def hnsw(dim_):
        return faiss.IndexHNSWFlat(dim_, hnsw_m)

    indexes = [(f"IVF{nlist},Flat", ivf, "nprobe", nprobes), (f"HNSW{hnsw_m},Flat", hnsw, "efSearch", efs)]
    for name, make, knob, values in indexes:
        knn = PoincareKNN(C, reset_before=False, reset_after=False, index_init_fn=make)
        print(f"building {name} ...")
        t0 = time.perf_counter()
        knn.train(ref)
        build = time.perf_counter() - t0
        for value in tqdm(values, desc=name):
            if knob == "nprobe":
                knn.index.nprobe = value
            else:
                knn.index.hnsw.efSearch = value
            found = {}
            search_ms = time_ms({"search": lambda knn=knn: found.update(i=knn(query, 10)[1])}, repeats=repeats,
                                warmup=0)
            results.append((name, f"{knob} = {value}", build, search_ms["search"] / 1e3,
                            recall(found["i"], truth, 1), recall(found["i"], truth, 10)))
        del knn

    print("\n| index | setting | build (s) | search (s) | queries/s | recall@1 | recall@10 |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for name, setting, build, search, r1, r10 in results:
        print(f"| {name} | {setting} | {build:.0f} | {search:.2f} | {n_queries / search:,.0f} | {r1:.4f} | {r10:.4f} |")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"\npeak resident memory of this process: {peak:.1f} GiB")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (about 2 minutes)")
    parser.add_argument("--part", type=int, choices=(1, 2), help="run only this part")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, faiss {faiss.__version__}, {torch.get_num_threads()} torch threads, "
          f"{faiss.omp_get_max_threads()} faiss threads")
    if args.part in (None, 1):
        if args.quick:
            part1(10_000, 128, ["max_bin_count", 1000], repeats=2, custom_queries=1000)
        else:
            part1(60_000, 128, ["max_bin_count", 1000], repeats=3, custom_queries=4096)
    if args.part in (None, 2):
        if args.quick:
            part2(100_000, 128, 1000, nlist=256, nprobes=(2, 8, 32), hnsw_m=16, efs=(16, 64), repeats=2)
        else:
            part2(1_000_000, 128, 10_000, nlist=1024, nprobes=(4, 16, 64), hnsw_m=16, efs=(16, 64, 256), repeats=2)


if __name__ == "__main__":
    main()
