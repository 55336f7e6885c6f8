"""Images per second of the data pipeline alone: preparing an image folder, then the training
loader reading the prepared cache.

    python bench/loader.py                                 # 2,000 images, loader threads 1 and 2
    python bench/loader.py --images 10000 --workers 1 2 4 --prepare-workers 4 --json loader.json

It draws --images synthetic 256x256 images (alexnet/synthetic.py) and writes them as JPEG files
(quality 90) into a temporary folder, nine in ten under train/<class>/ and the rest under
val/<class>/. Then it times

    prepare   python -m alexnet.prepare on that folder: decoding, rescaling, writing the
              memory-mapped arrays, and the training set's mean image and PCA
    loader    data.batches over the prepared training split exactly as training calls it:
              train=True, batch 128, random 227x227 crops of the 256x256 images, mirrors, PCA
              colour shifts, mean subtraction, with --workers threads, made on --device: the
              CPU, or a GPU as training on one does (the uint8 images are copied there and
              cropped, mirrored and shifted there), the GPU's work waited for at the end

The loader's rate is the median over --epochs epochs of (images in the epoch's batches) / (its
time). The cache is in the operating system's page cache by then (it was just written); read
from a cold disk, the loader can only be slower.
"""
import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import numpy
from PIL import Image

from alexnet import data, prepare, synthetic
from minigrad import backend


def write_folder(root, count, size, val_share=0.1):
    """`count` synthetic images as JPEG files under root/{train,val}/<class>/."""
    images, labels = synthetic.make_images(count, size, seed=0)
    val_from = round(count * (1 - val_share))
    for i, (image, label) in enumerate(zip(images, labels)):
        folder = os.path.join(root, "train" if i < val_from else "val", synthetic.CLASSES[label])
        os.makedirs(folder, exist_ok=True)
        Image.fromarray(image.transpose(1, 2, 0)).save(os.path.join(folder, f"{i:06d}.jpg"),
                                                       quality=90)


def loader_rate(split, aug, size, batch_size, workers, epochs, device):
    """Median images/s over `epochs` passes of data.batches(train=True) made on `device`."""
    rates = []
    for epoch in range(epochs):
        started, images = time.perf_counter(), 0
        for x, labels in data.batches(split, aug, size, batch_size, train=True, epoch=epoch,
                                      workers=workers, device=device):
            images += len(labels)
        backend.synchronize(device)
        rates.append(images / (time.perf_counter() - started))
    return statistics.median(rates)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=2000, help="images drawn (default 2000)")
    p.add_argument("--size", type=int, default=256, help="stored side (default 256)")
    p.add_argument("--crop", type=int, default=227, help="training crop (default 227)")
    p.add_argument("--batch", type=int, default=128, help="batch size (default 128)")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2],
                   help="loader threads to time (default: 1 2)")
    p.add_argument("--prepare-workers", type=int, default=os.cpu_count(),
                   help="decoding processes of the preparation (default: one per core)")
    p.add_argument("--epochs", type=int, default=3, help="timed loader epochs per setting")
    p.add_argument("--device", default="cpu", help="where batches are made: cpu (default) or a "
                   "GPU id, as training on that device makes them")
    p.add_argument("--json", metavar="PATH", help="also write the results to this JSON file")
    args = p.parse_args(argv)
    try:
        device = backend.parse_device(args.device)
    except ValueError as error:
        p.error(str(error))

    print(f"machine: {os.cpu_count()} cores; batches made on {device}; numpy {numpy.__version__}; "
          f"{args.images} images of {args.size}x{args.size}, crops of {args.crop}, "
          f"batch {args.batch}", flush=True)
    with tempfile.TemporaryDirectory(prefix="alexnet-loader-") as tmp:
        folder, cache = os.path.join(tmp, "images"), os.path.join(tmp, "cache")
        tick = time.perf_counter()
        write_folder(folder, args.images, args.size)
        print(f"drew and wrote {args.images} JPEG files in {time.perf_counter() - tick:.1f}s "
              "(not timed below)", flush=True)

        tick = time.perf_counter()
        prepare.prepare(folder, cache, args.size, args.prepare_workers, log=lambda message: None)
        seconds = time.perf_counter() - tick
        print(f"prepare: {args.images} images in {seconds:.1f}s = {args.images / seconds:.0f} "
              f"images/s with {args.prepare_workers} worker process(es); 10,000 images would "
              f"take about {10_000 * seconds / args.images:.0f}s", flush=True)

        opened = prepare.open_cache(cache)
        report = {"cores": os.cpu_count(), "numpy": numpy.__version__, "images": args.images,
                  "size": args.size, "crop": args.crop, "batch": args.batch,
                  "epochs": args.epochs, "train_images": len(opened.train), "device": device,
                  "prepare_workers": args.prepare_workers, "prepare_seconds": seconds,
                  "prepare_images_per_s": args.images / seconds, "loader": []}
        for workers in args.workers:
            rate = loader_rate(opened.train, opened.aug, args.crop, args.batch, workers,
                               args.epochs, device)
            report["loader"].append({"workers": workers, "images_per_s": rate})
            print(f"loader: {rate:.0f} images/s with --workers {workers} "
                  f"({len(opened.train)} training images, median of {args.epochs} epochs)",
                  flush=True)
        del opened                 # let go of the memory maps before the folder is removed
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
