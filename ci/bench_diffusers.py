#!/usr/bin/env python3
"""The diffusers side of ci/bench.py: DDIMPipeline or StableDiffusionPipeline timed exactly as
`reprodiff bench ddim` / `reprodiff bench sd`.

Loads the pipeline once (weights cloned, so 64-byte aligned as reprodiff's are), runs it once to
warm up, then `--runs` times with a CPU generator re-seeded 0, and prints one JSON line: seconds
per timed run, peak resident memory and the SHA-256 of the last output (the same bits as
reprodiff's, since both are bit-identical on the same libtorch). With `--profile PATH`, one more
call after the timed ones runs under torch.profiler (CPU activity) and its ops are written to
PATH as a Chrome trace, as `REPRODIFF_PROFILE=PATH reprodiff bench` writes reprodiff's.
"""
import argparse
import hashlib
import json
import resource
import time

import torch
from diffusers import DDIMPipeline, StableDiffusionPipeline

PROMPT = "A bear is playing a guitar on Times Square"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--steps", type=int, required=True)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--threads", type=int)
    ap.add_argument("--pipeline", choices=["ddim", "sd"], default="ddim")
    ap.add_argument("--size", type=int, help="sd: height and width (default: the model's)")
    ap.add_argument("--profile", help="write one more (untimed) call's ops here, a Chrome trace")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.pipeline == "sd":
        pipe = StableDiffusionPipeline.from_pretrained(
            a.model, use_safetensors=True, safety_checker=None, requires_safety_checker=False)
        modules = [pipe.unet, pipe.vae, pipe.text_encoder]
    else:
        pipe = DDIMPipeline.from_pretrained(a.model)
        modules = [pipe.unet]
    for m in modules:
        for p in list(m.parameters()) + list(m.buffers()):
            p.data = p.data.clone()
    pipe.set_progress_bar_config(disable=True)
    size = {"height": a.size, "width": a.size} if a.size else {}
    times = []
    def call():
        g = torch.Generator("cpu").manual_seed(0)
        if a.pipeline == "sd":
            return pipe(prompt=PROMPT, generator=g, num_inference_steps=a.steps,
                        output_type="pt", **size).images
        return pipe(generator=g, num_inference_steps=a.steps, output_type="pt").images

    for i in range(a.runs + 1):
        start = time.perf_counter()
        image = call()
        elapsed = time.perf_counter() - start
        if i > 0:
            times.append(elapsed)
    if a.profile:
        from torch.profiler import ProfilerActivity, profile
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            call()
        prof.export_chrome_trace(a.profile)
    image = image.permute(0, 2, 3, 1).contiguous()
    sha = hashlib.sha256(image.numpy().tobytes()).hexdigest()
    print(json.dumps({"impl": "diffusers", "steps": a.steps, "threads": torch.get_num_threads(),
                      "seconds": times, "peak_rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                      "sha256": sha}))


if __name__ == "__main__":
    main()
