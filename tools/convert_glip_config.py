"""Turn an official GLIP yaml into an equivalent glip_d2 yaml.

Usage:
    python tools/convert_glip_config.py OFFICIAL.yaml [--task-config TASK.yaml] -o OUT.yaml
        [--bert-config bert.json]

OFFICIAL.yaml is an official model config (e.g. ``configs/pretrain/glip_Swin_T_O365_GoldG.yaml``
of microsoft/GLIP), read as the official code reads it: merged onto the official defaults, with
tuple strings such as ``(64, 128)`` evaluated. ``--task-config`` merges an official task overlay
on top (what the official code takes with ``--task_config``, e.g. ``configs/odinw/*.yaml``,
``configs/lvis/minival.yaml``); repeat it to merge several, in order.

The output derives from ``configs/Base-GLIP.yaml`` and sets every key that the official config
determines. Official settings that glip_d2 cannot reproduce are listed as unsupported (exit
code 2 unless ``--allow-unsupported``); official keys with no glip_d2 equivalent are listed by
name (``--quiet`` prints only their count); notes (also written into the output as comments)
say what is left to decide. Unreadable input is an error (exit code 1).
"""

import argparse
import os
import sys

import yaml

from glip_d2.utils.config_conversion import convert_official_config, load_official_config, nest

BASE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "configs", "Base-GLIP.yaml")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("official", help="official GLIP yaml (e.g. glip_Swin_T_O365_GoldG.yaml)")
    parser.add_argument(
        "--task-config",
        action="append",
        default=[],
        metavar="TASK.yaml",
        help="official task overlay merged onto the model config (repeatable, in order)",
    )
    parser.add_argument("-o", "--output", required=True, help="glip_d2 yaml to write")
    parser.add_argument("--bert-config", default=None, help="BERT config json (reduced models)")
    parser.add_argument("--allow-unsupported", action="store_true")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)

    log = sys.stderr
    bert = os.path.abspath(args.bert_config) if args.bert_config else None
    try:
        official = load_official_config(args.official, args.task_config)
    except ValueError as e:  # names the file
        log.write(f"error: {e}\n")
        return 1
    try:
        result = convert_official_config(official, bert)
    except (OSError, ValueError) as e:
        sources = " + ".join([args.official, *args.task_config])
        log.write(f"error: {sources}: {e}\n")
        return 1
    out_dir = os.path.dirname(os.path.abspath(args.output))
    os.makedirs(out_dir, exist_ok=True)
    doc = {"_BASE_": os.path.relpath(os.path.abspath(BASE), out_dir)}
    doc.update(nest(result.overrides))
    with open(args.output, "w") as f:
        for path in [args.official, *args.task_config]:
            f.write(f"# Converted from {os.path.abspath(path)} by convert_glip_config.py\n")
        for note in result.notes:
            f.write(f"# NOTE {note}\n")
        yaml.safe_dump(doc, f, sort_keys=False)

    log.write(f"wrote {args.output} ({len(result.overrides)} keys set)\n")
    if result.not_expressed:
        log.write(f"{len(result.not_expressed)} official keys have no glip_d2 equivalent")
        log.write(".\n" if args.quiet else ":\n  " + "\n  ".join(result.not_expressed) + "\n")
    for note in result.notes:
        log.write(f"NOTE {note}\n")
    if result.unsupported:
        log.write("UNSUPPORTED official settings:\n  " + "\n  ".join(result.unsupported) + "\n")
        return 0 if args.allow_unsupported else 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
