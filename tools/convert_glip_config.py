"""Turn an official GLIP yaml into an equivalent glip_d2 yaml.

Usage:
    python tools/convert_glip_config.py OFFICIAL.yaml -o OUT.yaml [--bert-config bert.json]

The output derives from ``configs/Base-GLIP.yaml`` and sets every key that the official config
determines. Official settings that glip_d2 cannot reproduce are listed as unsupported (exit
code 2 unless ``--allow-unsupported``); official keys with no glip_d2 equivalent are listed by
name (``--quiet`` prints only their count).
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
    parser.add_argument("-o", "--output", required=True, help="glip_d2 yaml to write")
    parser.add_argument("--bert-config", default=None, help="BERT config json (reduced models)")
    parser.add_argument("--allow-unsupported", action="store_true")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)

    official = load_official_config(args.official)
    bert = os.path.abspath(args.bert_config) if args.bert_config else None
    overrides, unsupported, not_expressed = convert_official_config(official, bert)
    out_dir = os.path.dirname(os.path.abspath(args.output))
    os.makedirs(out_dir, exist_ok=True)
    doc = {"_BASE_": os.path.relpath(os.path.abspath(BASE), out_dir)}
    doc.update(nest(overrides))
    with open(args.output, "w") as f:
        f.write(f"# Converted from {os.path.abspath(args.official)} by convert_glip_config.py\n")
        yaml.safe_dump(doc, f, sort_keys=False)

    log = sys.stderr
    log.write(f"wrote {args.output} ({len(overrides)} keys set)\n")
    if not_expressed:
        log.write(f"{len(not_expressed)} official keys have no glip_d2 equivalent")
        log.write(".\n" if args.quiet else ":\n  " + "\n  ".join(not_expressed) + "\n")
    if unsupported:
        log.write("UNSUPPORTED official settings:\n  " + "\n  ".join(unsupported) + "\n")
        return 0 if args.allow_unsupported else 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
