"""Throughput of the runner (``examples/train.py --benchmark-throughput``) on a generated CUB-format folder of JPEGs.

For each backbone it prints, in images/s: the reference input pipeline alone (torchvision transforms on PIL images
in the workers, float32 batches), the runner's input pipeline alone, the bare backbone step on a device-resident
batch, and end-to-end training for each loss, with the ratio end-to-end / bare; then one markdown table for all.

    python benchmarks/bench_runner.py                       # 4,000 JPEGs 500×375 (~68 KB), ViT-S/16 and ResNet-50
    python benchmarks/bench_runner.py --tiny                # seconds on a CPU: checks the whole script
    bash benchmarks/gpu_runner.sh                           # the GPU measurement of docs/runner.md

The folder (``--folder``, made once; classes 1-100 hold the training images, classes 101-200 four test images each)
has images with smooth colour fields, shapes, stripes and noise, so that JPEG sizes and decoding times are those of
photographs of the same size.
"""

import argparse
import io
import json
import multiprocessing
import os
import platform
import sys
import time
import traceback

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.join(HERE, ".."), os.path.join(HERE, "..", "examples")]  # pml_hyperbolic and the runner

LOSSES = "softtriple,hyperbolic_softtriple,proxy_anchor+hier,chest"


def jpeg(seed, label, width, height, quality=90):
    """A generated photograph-like JPEG: a smooth colour field, 4-8 shapes in the class's colours, stripes, noise."""
    rng = np.random.default_rng(seed)
    palette = np.random.default_rng(10_000 + label).integers(0, 256, (6, 3))
    img = Image.fromarray(rng.integers(0, 256, (3, 4, 3)).astype(np.uint8)).resize((width, height), Image.BICUBIC)
    draw = ImageDraw.Draw(img)
    for _ in range(rng.integers(4, 9)):
        x0, y0 = rng.integers(-width // 10, width), rng.integers(-height // 8, height)
        colour = tuple(int(c) for c in np.clip(palette[rng.integers(6)] + rng.integers(-30, 31, 3), 0, 255))
        if rng.random() < 0.5:
            draw.ellipse(
                (x0, y0, x0 + rng.integers(width // 16, width // 2), y0 + rng.integers(height // 12, height // 2)),
                fill=colour,
            )
        else:
            points = [(int(x0 + rng.integers(0, width // 2)), int(y0 + rng.integers(0, height // 2))) for _ in range(5)]
            draw.polygon(points, fill=colour)
    pixels = np.asarray(img.filter(ImageFilter.GaussianBlur(1.0))).astype(np.float32)
    yy, xx = np.mgrid[0:height, 0:width]
    f = rng.uniform(0.05, 0.3, 2)
    pixels += 12 * np.sin(f[0] * xx + f[1] * yy)[..., None] + rng.normal(0, 8, (height, width, 1))
    out = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(out, "JPEG", quality=quality)
    return out.getvalue()


def _write(job):
    path, seed, label, width, height = job
    with open(path, "wb") as f:
        f.write(jpeg(seed, label, width, height))


def make_folder(root, images, width=500, height=375):
    """``root/CUB_200_2011`` in the CUB-200-2011 format: ``images`` training JPEGs over classes 1-100 and four test
    JPEGs in each of classes 101-200, written by all CPU cores. Returns the dataset folder."""
    folder = os.path.join(root, "CUB_200_2011")
    if os.path.exists(os.path.join(folder, "image_class_labels.txt")):
        return folder
    plan = [(i % 100 + 1, i) for i in range(images)] + [(101 + i // 4, images + i) for i in range(400)]
    jobs, lines, labels = [], [], []
    for image_id, (label, seed) in enumerate(sorted(plan), start=1):
        rel = f"{label:03d}.Class_{label}/Class_{label}_{seed:05d}.jpg"
        os.makedirs(os.path.join(folder, "images", os.path.dirname(rel)), exist_ok=True)
        jobs.append((os.path.join(folder, "images", rel), seed, label, width, height))
        lines.append(f"{image_id} {rel}")
        labels.append(f"{image_id} {label}")
    t0 = time.perf_counter()
    with multiprocessing.get_context("spawn").Pool(os.cpu_count()) as pool:
        pool.map(_write, jobs, chunksize=16)
    with open(os.path.join(folder, "images.txt"), "w") as f:
        f.write("\n".join(lines) + "\n")
    with open(os.path.join(folder, "image_class_labels.txt"), "w") as f:  # last: marks the folder complete
        f.write("\n".join(labels) + "\n")
    size = sum(os.path.getsize(j[0]) for j in jobs) / len(jobs) / 1024
    print(f"Wrote {len(jobs)} JPEGs of {width}×{height} (mean {size:.0f} KB) in {time.perf_counter() - t0:.1f} s.")
    return folder


def versions():
    import pytorch_metric_learning
    import timm
    import torch
    import torchvision

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor() or "CPU"
    return (
        f"{device}, {os.cpu_count()} CPU cores; python {platform.python_version()}, torch {torch.__version__}, "
        f"torchvision {torchvision.__version__}, timm {timm.__version__}, pml {pytorch_metric_learning.__version__}"
    )


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--folder", default=os.path.join("runs", "bench_runner", "data"), help="where the JPEGs go")
    p.add_argument("--output", default=os.path.join("runs", "bench_runner"), help="runner output folders")
    p.add_argument("--images", type=int, default=4000, help="training JPEGs")
    p.add_argument("--size", default="500x375", help="JPEG width x height")
    p.add_argument("--backbones", default="vit_small_patch16_224,resnet50")
    p.add_argument("--losses", default=LOSSES)
    p.add_argument("--steps", type=int, default=40, help="timed batches of each measurement")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--tiny", action="store_true", help="defaults for a check in seconds: 200 JPEGs of 80x60, timm's "
                   "test_vit and test_resnet, 64 px crops, batch 16, 3 steps")  # fmt: skip
    p.add_argument("extra", nargs="*", help="more runner options, after --")
    if "--tiny" in (sys.argv[1:] if argv is None else argv):
        p.set_defaults(images=200, size="80x60", steps=3, batch_size=16, backbones="test_vit,test_resnet")
    args = p.parse_args(argv)
    runner = ["--no-pretrained", "--amp", "--m-per-class", "4"]
    if args.tiny:
        runner += ["--image-size", "64", "--hier-proxies", "32", "--hier-topk", "4", "--embedding-size", "32"]
    width, height = (int(v) for v in args.size.split("x"))
    folder = make_folder(args.folder, args.images, width, height)

    from pml_hyperbolic_examples.throughput import markdown
    from pml_hyperbolic_examples.train import main as train

    def benchmark(backbone, losses):
        argv = ["--dataset", "cub", "--data-root", folder, "--backbone", backbone, "--loss", losses]
        argv += ["--batch-size", str(args.batch_size), "--benchmark-throughput", str(args.steps)]
        argv += ["--output", os.path.join(args.output, backbone)] + runner + args.extra
        print("\n$ python examples/train.py " + " ".join(argv), flush=True)
        t0 = time.perf_counter()
        try:
            return train(argv)
        except (Exception, SystemExit):  # noqa: BLE001 - report, and measure what works
            traceback.print_exc()
            print(f"FAILED: {backbone} with {losses}", flush=True)
            return None
        finally:
            print(f"({time.perf_counter() - t0:.0f} s)", flush=True)

    rows = []
    for backbone in args.backbones.split(","):
        measured = benchmark(backbone, args.losses)
        if measured is None and "," in args.losses:  # find out which losses fail
            measured = [row for loss in args.losses.split(",") for row in benchmark(backbone, loss) or []]
        rows += measured or []
    print(f"\n## Runner throughput, images/s ({versions()})\n")
    print(
        f"batch {args.batch_size}, 4 images per class, {args.images} JPEGs of {args.size}, float16/bfloat16 autocast, "
        f"no pretrained weights, {args.steps} timed batches after 5 warm-up ones\n"
    )
    print(markdown(rows))
    with open(os.path.join(args.output, "bench_runner.json"), "w") as f:
        json.dump({"versions": versions(), "args": vars(args), "rows": rows}, f, indent=2)
    return rows


if __name__ == "__main__":
    main()
