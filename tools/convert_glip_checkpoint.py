"""Convert an official GLIP checkpoint into a Detectron2 checkpoint for glip_d2.

Usage:
    python tools/convert_glip_checkpoint.py glip_tiny_model_o365_goldg.pth out.pth \
        [--config-file configs/glip_swin_t.yaml] [--use-ema]

With ``--config-file`` the converted weights are loaded into the model that config builds
first: a missing or unused key is reported by name, a shape mismatch is an error naming the
key and both shapes. (``DetectionCheckpointer`` can also read the official file directly.)
"""

import argparse
import sys

import torch

from glip_d2.utils.checkpoint import convert_official_state_dict, strip_module_prefix


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", help="official GLIP .pth")
    parser.add_argument("output", help="Detectron2 checkpoint to write")
    parser.add_argument("--config-file", default=None, help="glip_d2 yaml to validate against")
    parser.add_argument("--use-ema", action="store_true", help="take the 'model_ema' weights")
    args = parser.parse_args(argv)

    # Official checkpoints are plain pickles from older torch releases (optimizer state etc.).
    ckpt = torch.load(args.source, map_location="cpu", weights_only=False)
    key = "model_ema" if args.use_ema else "model"
    if isinstance(ckpt, dict) and key in ckpt:
        state = ckpt[key]
    elif args.use_ema:
        sys.exit(f"{args.source} has no 'model_ema' entry")
    else:
        state = ckpt
    converted, regenerated, dropped = convert_official_state_dict(strip_module_prefix(state))
    # Keep the anchor buffers under their official names: GLIP.load_state_dict checks them.
    converted.update(regenerated)

    if args.config_file:
        from detectron2.config import get_cfg
        from detectron2.modeling import build_model

        from glip_d2.config import add_glip_config

        cfg = get_cfg()
        add_glip_config(cfg)
        cfg.merge_from_file(args.config_file)
        cfg.MODEL.DEVICE = "cpu"
        model = build_model(cfg)
        result = model.load_state_dict(dict(converted), strict=False)
        for name in result.missing_keys:
            print(f"missing in checkpoint (stays at init): {name}", file=sys.stderr)
        for name in result.unexpected_keys:
            print(f"not used by the model: {name}", file=sys.stderr)
    for name in dropped:
        print(f"dropped (not a model entry with current transformers): {name}", file=sys.stderr)
    torch.save({"model": converted, "__author__": "glip_d2 convert_glip_checkpoint"}, args.output)
    print(f"wrote {args.output} ({len(converted)} tensors)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
