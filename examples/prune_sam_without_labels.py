"""Prune a SAM image encoder for your images, without training and without labels (a few minutes on a CPU).

    .venv/bin/python examples/prune_sam_without_labels.py --checkpoint sam_vit_b_01ec64.pth --images my_images/ \\
        [--model samvit_base_patch16] [--resolution 448] [--latency 0.7x] [--out runs/sam_no_labels]

1. a search space for the encoder at your resolution (one sparsity gene per run of windowed blocks and one per
   global block, the model's own window);
2. the encoder with your weights (an original SAM checkpoint or a timm one; without --checkpoint: random weights,
   which only shows the mechanics);
3. a latency table measured on this machine (reused on a second run);
4. the search in one call, each config scored by its *fidelity*: the cosine similarity of the pruned encoder's neck
   embedding (what SAM's mask decoder reads) to the dense encoder's, on your images, no labels;
5. the best config exported with its model card (FLOPs, predicted and measured latency, fidelity).

SAM runs at 1024x1024; on a CPU the example defaults to 448x448 (28x28 tokens: 2x2 windows of 14 per block), which
keeps the profile and the search to minutes. Without --images it writes a few synthetic scenes to score on.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import sparsesearch as ss
import torch
import yaml
from sparsesearch.latency import ProfileSettings, profile
from sparsesearch.models import get_family, model_defaults


def space_for(model: str, resolution: int, model_kwargs: dict[str, object]) -> dict[str, object]:
    """A search space of a SAM-style encoder: per block group, one gene for its windowed blocks and one for its
    global block (choices 0 to 0.8), the model's default window."""
    family = get_family(model)
    arch = family.arch(model, model_kwargs)
    genes = []
    for s, depth in enumerate(family.depths(arch)):
        kinds: dict[str, list[str]] = {}
        for b in range(depth):
            kinds.setdefault(family.block_variant(arch, s, b), []).append(f"{s}.{b}")
        genes += [{"name": f"{kind[0]}{s + 1}", "blocks": blocks} for kind, blocks in kinds.items()]
    return {
        "name": f"{model}_{resolution}",
        "architecture": model,
        "model_kwargs": model_kwargs,
        "resolutions": [[resolution, resolution]],
        "sparsity_choices": [round(0.1 * i, 1) for i in range(9)],
        "genes": genes,
        "window_sizes": [[w] for w in family.default_window(arch)],
    }


def write_images(folder: Path, n: int, size: int, seed: int) -> None:
    """n synthetic scenes as PNG files (objects on a textured background), for a run without --images."""
    from PIL import Image
    from sparsesearch.data.synthetic import SparseScenes

    folder.mkdir(parents=True, exist_ok=True)
    scenes = SparseScenes(n, size, seed=seed, objects=(6, 12), coverage=(0.3, 0.5))
    for i in range(n):
        image, _ = scenes[i]
        pixels = (image.permute(1, 2, 0).clamp(0, 1).numpy() * 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"scene_{i:03d}.png")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="samvit_base_patch16", help="a SAM encoder of the zoo (`sparsesearch models`)")
    ap.add_argument("--model-kwargs", default="{}", help="JSON architecture overrides (e.g. a smaller test model)")
    ap.add_argument("--checkpoint", default=None, help="SAM (image_encoder.*) or timm weights; none: random weights")
    ap.add_argument("--images", default=None, help="a folder of your images (jpg/png, nested folders fine)")
    ap.add_argument("--resolution", type=int, default=448)
    ap.add_argument("--latency", default="0.7x", help="budget: a share of dense (0.7x) or milliseconds (40ms)")
    ap.add_argument("--val-images", type=int, default=16, help="images each config is scored on")
    ap.add_argument("--population", type=int, default=12)
    ap.add_argument("--generations", type=int, default=3)
    ap.add_argument("--profile-repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="CPU threads of the latency table and the timing")
    ap.add_argument("--out", default="runs/sam_no_labels")
    args = ap.parse_args(argv)
    if args.model not in ss.list_models() or "global_attn_indexes" not in model_defaults(args.model):
        ap.error(f"--model {args.model}: pick a SAM encoder (samvit_*) from `sparsesearch models`")
    return args


def load_encoder(space: ss.SearchSpace, checkpoint: str | None, out: Path) -> tuple[torch.nn.Module, str]:
    """The space's encoder (no head: its output is the neck embedding) with the user's weights, or random weights
    saved to `out` (so that the export reads them like a checkpoint); returns it and the weights' path."""
    model = space.create_model(head=None, seed=0)
    if checkpoint:
        loaded = ss.load_checkpoint(model, checkpoint)
        print(f"loaded {checkpoint} ({loaded.converted_from}; {'; '.join(loaded.notes) or 'as is'})")
    else:
        print("no --checkpoint: random weights (the mechanics only; pass your SAM checkpoint for real figures)")
        checkpoint = str(out / "random_weights.pth")
        torch.save(model.state_dict(), checkpoint)
    return model.eval(), checkpoint


def latency_table(space: ss.SearchSpace, path: Path, threads: int, repeats: int) -> ss.LatencyTable:
    """This machine's latency table of the space (measured once; a second run reads it)."""
    if path.is_file():
        table = ss.LatencyTable.load(path)
    else:
        table = profile(space, ProfileSettings(threads=threads, head="none", repeats=repeats, rounds=2), path)
    print(f"latency table {path}: dense {table.dense_latency():.1f} ms on this machine")
    return table


def main(argv: list[str] | None = None) -> dict[str, object]:
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    space_file = out / "space.yaml"
    space_file.write_text(yaml.safe_dump(space_for(args.model, args.resolution, json.loads(args.model_kwargs))))
    space = ss.SearchSpace.load(space_file)

    images = Path(args.images) if args.images else out / "images"
    if not args.images:
        print(f"no --images: scoring on {args.val_images} synthetic scenes written to {images}")
        write_images(images, args.val_images, args.resolution, seed=0)
    model, checkpoint = load_encoder(space, args.checkpoint, out)
    table_file = out / "table.json"
    table = latency_table(space, table_file, args.threads, args.profile_repeats)

    result = ss.search(
        space,
        model=model,
        accuracy="fidelity",
        data=str(images),
        val_samples=args.val_images,
        latency=table,
        budget=args.latency,
        population=args.population,
        generations=args.generations,
        out=out / "search",
        overwrite=True,
        progress=False,
    )
    best, dense_ms = result.best, table.dense_latency()
    print(
        f"best within {args.latency}: sparsity {best.config.sparsity} -> {best.latency_ms:.1f} ms predicted "
        f"({best.latency_ms / dense_ms:.2f}x dense), fidelity {best.accuracy:.2f} (100 = the dense encoder's output)"
    )
    ss.export_model(
        None,
        best.config,
        out / "export",
        model=args.model,
        checkpoint=checkpoint,
        space=space_file,
        head="none",
        table=table_file,
    )
    print(f"exported to {out / 'export'} (weights, config and model card: card.json); ss.load_exported reads it")
    return {"config": best.config.to_dict(), "x_dense": best.latency_ms / dense_ms, "fidelity": best.accuracy}


if __name__ == "__main__":
    main()
