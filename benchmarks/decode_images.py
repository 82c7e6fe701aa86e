"""What decoding a bulk request's image files costs, next to the model they are decoded for.

A request of 256 PNGs to `POST /models/{name}/elbo` is decoded (`service.http.images`: PIL, then the
run's preprocessing) before the model runs; this prints that decoding alone, per image, next to
`model.elbo_terms` on the ready tensor (the in-process baseline of `serve_load.py`), measured in
alternating slices of the same run:

- PNG as base64 strings (`images_png` in JSON) and as file bytes (a multipart upload);
- the images already of the model's (C, H, W) and mode (the common case: no resize), and RGB PNGs
  of another size (colour to grey and a resize: the general path).

The images are the embedded digits written as 8-bit PNGs. `decode + model` is what serving must
spend per image beyond HTTP, so `model / (model + decode)` bounds the served / in-process ratio of
`serve_load.py` from above.

    OMP_NUM_THREADS=1 python benchmarks/decode_images.py
    python benchmarks/decode_images.py --images 256 --seconds 1 --rounds 5
"""

from __future__ import annotations

import argparse
import base64
import sys
import time
from collections.abc import Callable


def per_image_us(run: Callable[[], object], seconds: float, n: int) -> list[float]:
    """Microseconds per image of each call of `run` (on `n` images) for about `seconds`."""
    run()  # warm
    times = []
    start = time.perf_counter()
    while time.perf_counter() - start < seconds or not times:
        began = time.perf_counter()
        run()
        times.append((time.perf_counter() - began) / n * 1e6)
    return times


def main(argv: list[str] | None = None) -> int:
    import numpy as np
    import torch
    from PIL import Image

    from model import TrainConfig
    from model.core.preprocess import Preprocessing
    from model.data.loading import load_raw
    from model.io.images import encode_png
    from model.kinds.registry import build_model
    from service.http.images import decode_base64_images

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=256, help="images per request")
    parser.add_argument("--seconds", type=float, default=0.5, help="measured seconds per row and round")
    parser.add_argument("--rounds", type=int, default=4,
                        help="slices the rows alternate in (the machine may be shared)")
    parser.add_argument("--torch-threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.torch_threads)

    n = args.images
    train, _ = load_raw("embedded", None)
    digits = (train.x[:n] * 255).round().to(torch.uint8)  # (n, 1, 28, 28)
    if digits.shape[0] < n:
        raise SystemExit(f"--images: expected at most {digits.shape[0]} (the embedded digits), got {n}")
    grey_pngs = [encode_png(d) for d in digits]
    # RGB files of another size: what a photo upload to a grey 28×28 model costs (convert and resize).
    colour_pngs = []
    for d in digits:
        image = Image.fromarray(d[0].numpy()).convert("RGB").resize((40, 32))
        colour_pngs.append(encode_png(torch.from_numpy(np.array(image)).permute(2, 0, 1)))

    preprocessing = Preprocessing((1, 28, 28))
    model = build_model(TrainConfig.of(device="cpu")).eval()

    def decode(items):
        return lambda: decode_base64_images(items, preprocessing, n, 1 << 24)

    def b64(pngs):
        return [base64.b64encode(p).decode("ascii") for p in pngs]

    x = torch.from_numpy(decode(b64(grey_pngs))().x)  # (n, 1, 28, 28)

    rows = {
        "model.elbo_terms on the tensor (in-process)": lambda: model.elbo_terms(x),
        "grey 28×28 PNG, base64 (images_png)": decode(b64(grey_pngs)),
        "grey 28×28 PNG, file bytes (multipart)": decode(grey_pngs),
        "RGB 40×32 PNG, file bytes (convert, resize)": decode(colour_pngs),
    }
    times: dict[str, list[float]] = {label: [] for label in rows}
    with torch.no_grad():
        for _ in range(args.rounds):
            for label, run in rows.items():
                times[label] += per_image_us(run, args.seconds / args.rounds, n)

    print(f"{n} images per call, {args.rounds} alternating rounds, torch threads {args.torch_threads}")
    model_us = float(np.median(times["model.elbo_terms on the tensor (in-process)"]))
    print(f"{'':<46} {'µs/image':>9} {'images/s':>10} {'model/(model+this)':>19}")
    for label, values in times.items():
        us = float(np.median(values))
        bound = "" if label.startswith("model") else f"{model_us / (model_us + us):19.2f}"
        print(f"{label:<46} {us:9.1f} {1e6 / us:10.0f} {bound}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
