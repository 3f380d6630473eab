"""What the ComfyUI nodes cost over sfv_core: the four-node graph against SFVPipeline, same generation.

    python benchmarks/bench_nodes.py             # tiny random model (seconds)
    python benchmarks/bench_nodes.py --full      # full SVD architecture, random weights: ~10 GB RAM in fp32,
                                                 # several minutes to build and load on a 2-core CPU

Both sides read the same checkpoint file from a temporary models folder and generate the same
clip (checked bitwise). The nodes run as ComfyUI calls them, with ComfyUI absent (the pack's
fallbacks): SFV Loader, SFV Image Conditioner, SFV One-Step Sampler, SFV Temporal VAE Decode.
The direct side is SFVPipeline.from_files + generate. Reported: loading (fastest of two), the
three generation stages (median and fastest of --repeats interleaved runs after a warm-up),
loading + median (the whole graph), and node / direct ratios. The bar is 1.02. Other
processes on a 2-core machine can slow single runs several times over: the ratio of
back-to-back pairs (a node run, then the direct run) is the steadier comparison then.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sfv_core.checkpoints import save_single_file  # noqa: E402
from sfv_core.assets import DEMO_IMAGE  # noqa: E402
from sfv_core.models import FULL, TINY, build_random_model  # noqa: E402
from sfv_core.pipeline import SFVPipeline  # noqa: E402
from sfv_core.video_io import load_image  # noqa: E402

PACK_NAME = "comfyui_sfv_pack"
CHECKPOINT = "bench_svd.safetensors"


def load_pack():
    """Import the repository root as ComfyUI's load_custom_node does."""
    spec = importlib.util.spec_from_file_location(PACK_NAME, ROOT / "__init__.py", submodule_search_locations=[str(ROOT)])
    pack = importlib.util.module_from_spec(spec)
    sys.modules[PACK_NAME] = pack
    spec.loader.exec_module(pack)
    return pack, sys.modules[f"{PACK_NAME}.nodes.comfy_runtime"]


def timed(function, *args, **kwargs):
    start = time.perf_counter()
    result = function(*args, **kwargs)
    return result, time.perf_counter() - start


class NodeGraph:
    def __init__(self, pack, runtime):
        self.nodes = {name: cls() for name, cls in pack.NODE_CLASS_MAPPINGS.items()}
        self.runtime = runtime

    def wrap(self, model, pipeline_runtime):
        """An SFV_MODEL around already loaded modules, as SFV Loader builds it."""
        return sys.modules[f"{PACK_NAME}.nodes.model"].SFVModel(model, pipeline_runtime, self.runtime.storage_device())

    def load(self):
        (self.model,) = self.nodes["SFVLoader"].load(checkpoint=CHECKPOINT, sfv_unet="none", dtype="fp32", attention="sdpa")

    def generate(self, image, settings, seed, chunk):
        conditioning, _ = self.nodes["SFVImageConditioner"].condition(sfv_model=self.model, image=image, **settings)
        (latent,) = self.nodes["SFVOneStepSampler"].sample(sfv_model=self.model, conditioning=conditioning, seed=seed, steps=1)
        (frames,) = self.nodes["SFVTemporalVAEDecode"].decode(sfv_model=self.model, samples=latent, frames_per_chunk=chunk, overlap=0, frames_per_clip=0)
        return frames


class Direct:
    def __init__(self, checkpoint: Path, device: torch.device):
        self.checkpoint, self.device = checkpoint, device

    def load(self):
        self.pipeline = SFVPipeline.from_files(str(self.checkpoint), device=str(self.device), dtype="fp32")

    def generate(self, image, settings, seed, chunk):
        core = dict(settings, num_frames=settings["frames"])
        del core["frames"]
        frames = self.pipeline.generate(image, seed=seed, steps=1, chunk_frames=chunk, **core).frames
        return frames.reshape(-1, *frames.shape[2:])


def drop(side) -> None:
    side.__dict__.pop("model", None)
    side.__dict__.pop("pipeline", None)
    gc.collect()


def measure(graph: NodeGraph, direct: Direct, image, settings, seed, chunk, repeats, share: bool) -> dict:
    """{side: (fastest load seconds, [generation seconds], first frames)}.

    Loads alternate (nodes, direct, nodes, direct) so that neither side alone pays for a cold
    file cache; generations alternate too, after one untimed warm-up run each. With `share`
    (full size: two copies do not fit in memory) only one model is in memory at a time, and for
    the generations the node graph wraps the direct side's modules in an SFV_MODEL exactly as
    its loader does.
    """
    sides = (("nodes", graph), ("direct", direct))
    loads = {name: [] for name, _ in sides}
    for _ in range(2):
        for name, side in sides:
            if share:
                drop(graph)
                drop(direct)
            loads[name].append(timed(side.load)[1])
            print(f"  {name:6s} load     {loads[name][-1]:8.2f} s", flush=True)
    if share:
        graph.model = graph.wrap(direct.pipeline.model, direct.pipeline.runtime)
    results = {name: [min(loads[name]), [], side.generate(image, settings, seed, chunk)] for name, side in sides}
    for _ in range(repeats):
        for name, side in sides:
            seconds = timed(side.generate, image, settings, seed, chunk)[1]
            results[name][1].append(seconds)
            print(f"  {name:6s} generate {seconds:8.2f} s", flush=True)
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--full", action="store_true", help="full-size SVD architecture (random weights) instead of the tiny one")
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--height", type=int, default=144)
    parser.add_argument("--frames", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_grad_enabled(False)

    pack, runtime = load_pack()
    configs = FULL if args.full else TINY
    image = load_image(DEMO_IMAGE)[..., :3]
    settings = dict(width=args.width, height=args.height, frames=args.frames, fps=7, motion_bucket_id=127, augmentation=0.02, resize="crop", variant="reference")
    with tempfile.TemporaryDirectory(prefix="sfv-bench-") as root:
        checkpoint = Path(root) / "checkpoints" / CHECKPOINT
        model, seconds = timed(build_random_model, configs)
        print(f"{'full' if args.full else 'tiny'} model built in {seconds:.1f} s", flush=True)
        save_single_file(model, checkpoint)
        del model
        gc.collect()
        runtime.set_models_root(root)
        graph, direct = NodeGraph(pack, runtime), Direct(checkpoint, runtime.compute_device())
        results = measure(graph, direct, image, settings, args.seed, args.frames, args.repeats, share=args.full)

    assert torch.equal(results["nodes"][2], results["direct"][2]), "the node graph and sfv_core made different frames"
    print(f"\n{'full' if args.full else 'tiny'} architecture, {args.width}x{args.height}, {args.frames} frames, fp32, CPU x{torch.get_num_threads()}, frames equal: yes")
    print(f"{'':8s}{'load s':>10s}{'stages s (median)':>20s}{'min':>8s}{'whole graph s':>16s}")
    whole = {}
    for name, (load, stages, _) in results.items():
        whole[name] = load + statistics.median(stages)
        print(f"{name:8s}{load:10.2f}{statistics.median(stages):20.3f}{min(stages):8.3f}{whole[name]:16.3f}")
    nodes_runs, direct_runs = results["nodes"][1], results["direct"][1]
    paired = statistics.median(n / d for n, d in zip(nodes_runs, direct_runs))
    print(f"ratio nodes / direct, stages: {paired:.3f} (median of back-to-back pairs), {statistics.median(nodes_runs) / statistics.median(direct_runs):.3f} (medians), "
          f"{min(nodes_runs) / min(direct_runs):.3f} (fastest runs); whole graph: {whole['nodes'] / whole['direct']:.3f} (bar: 1.02)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
