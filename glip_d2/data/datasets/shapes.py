"""``glip_shapes``: a small synthetic grounding set, generated deterministically on first use.

Coloured circles, squares and triangles (two sizes) on varied low-saturation backgrounds;
one COCO category per colour-shape pair (``"red circle"`` ...), and one caption per image that
refers to the objects by size, colour and shape (``"a small red circle next to a large blue
square."``) with MDETR-style ``tokens_positive`` spans. Images are 128-192 pixels a side, so a
tiny model learns the set on CPU in minutes.

Every annotation has an exact polygon ``segmentation`` (:func:`shape_polygon`, in COCO pixel
coordinates where pixel ``(i, j)`` covers ``[i, i + 1) x [j, j + 1)``): the square's four
corners, the triangle's three vertices and, for the circle, a 64-point polygon inscribed in the
circle of the drawn ellipse. Rasterised with pycocotools, the square gives exactly the drawn
pixels, the triangle and the circle at least 0.95 IoU with them (PIL draws without
antialiasing). The json ``area`` stays the box area.

Layout under the root folder::

    train/000000.png ...           val/000000.png ...
    annotations/instances_{train,val}.json   (COCO detection)
    annotations/grounding_{train,val}.json   (MDETR grounding: caption, tokens_positive)
    annotations/VERSION                      (the annotation format, :data:`SHAPES_VERSION`)

Generation writes to a temporary folder next to the root and renames it into place, so several
processes may ask for the set at once. A complete folder of an older version (no ``VERSION``
file: the jsons without segmentations) is upgraded in place by :func:`ensure_glip_shapes`:
each annotation's polygon follows from its category (the shape) and box, so the images, the
boxes and everything else stay as they are.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from typing import Any, Callable, Dict, List, Sequence, Tuple

import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image, ImageDraw

from .coco_grounding import load_coco_grounding_json
from .mdetr_grounding import load_mdetr_grounding_json

__all__ = [
    "SHAPES_CLASSES",
    "SHAPES_VERSION",
    "shape_polygon",
    "generate_glip_shapes",
    "ensure_glip_shapes",
    "register_glip_shapes",
]

logger = logging.getLogger(__name__)

_COLORS: Tuple[Tuple[str, Tuple[int, int, int]], ...] = (
    ("red", (220, 40, 40)),
    ("green", (40, 170, 60)),
    ("blue", (40, 80, 225)),
)
_KINDS = ("circle", "square", "triangle")
_SIZES = {"small": (20, 32), "large": (44, 64)}
_COUNT_WORDS = {2: "two", 3: "three", 4: "four"}
_SPLITS = ("train", "val")

#: The 9 category names, json ids 1..9 in this order.
SHAPES_CLASSES: Tuple[str, ...] = tuple(f"{c} {k}" for c, _ in _COLORS for k in _KINDS)

#: The annotation format: 1 (no ``VERSION`` file) boxes only, 2 with polygon segmentations.
SHAPES_VERSION = 2
_CIRCLE_POINTS = 64

_ONE_PHRASE = ("{0}.", "there is {0} in the picture.", "a picture of {0}.")
_TWO_PHRASES = ("{0} next to {1}.", "{0} and {1}.", "a picture of {0} and {1}.")


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    base = rng.integers(60, 200)
    tint = rng.integers(-15, 16, size=3)
    ramp = np.linspace(-1.0, 1.0, w if rng.random() < 0.5 else h)
    ramp = ramp[None, :] if ramp.shape[0] == w else ramp[:, None]
    gradient = rng.integers(-35, 36) * ramp
    img = base + tint[None, None, :] + gradient[..., None] + rng.normal(0, 5, size=(h, w, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def _place(rng, h: int, w: int, side: int, boxes: List[Tuple[int, int, int]]):
    for _ in range(30):
        x0 = int(rng.integers(2, w - side - 1))
        y0 = int(rng.integers(2, h - side - 1))
        if all(
            x0 + side + 4 <= bx or bx + bs + 4 <= x0 or y0 + side + 4 <= by or by + bs + 4 <= y0
            for bx, by, bs in boxes
        ):
            return x0, y0
    return None


def _draw(draw: ImageDraw.ImageDraw, kind: str, x0: int, y0: int, side: int, color) -> None:
    x1, y1 = x0 + side - 1, y0 + side - 1
    if kind == "circle":
        draw.ellipse([x0, y0, x1, y1], fill=color)
    elif kind == "square":
        draw.rectangle([x0, y0, x1, y1], fill=color)
    else:
        draw.polygon([(x0 + (side - 1) / 2.0, y0), (x0, y1), (x1, y1)], fill=color)


def shape_polygon(kind: str, x0: int, y0: int, side: int) -> List[float]:
    """The polygon of a shape drawn by this module in the box ``[x0, y0, side, side]``.

    PIL fills pixels ``x0 .. x0 + side - 1``, i.e. ``[x0, x0 + side)`` in COCO's continuous
    coordinates; the polygon spans that box.

    Args:
        kind (str): ``"circle"``, ``"square"`` or ``"triangle"``.
        x0, y0, side (int): the box (``XYWH_ABS``, a square).

    Returns:
        list[float]: flat ``[x1, y1, x2, y2, ...]`` in image pixels: the square's 4 corners,
        the triangle's 3 vertices (apex at the top centre), or 64 points on the circle of
        radius ``side / 2`` (at angles ``(k + 0.5) * 2 pi / 64``, rounded to 0.01 px).
    """
    x1, y1 = x0 + side, y0 + side
    if kind == "square":
        return [float(v) for v in (x0, y0, x1, y0, x1, y1, x0, y1)]
    if kind == "triangle":
        return [x0 + side / 2.0, float(y0), float(x0), float(y1), float(x1), float(y1)]
    if kind != "circle":
        raise ValueError(f"unknown shape kind {kind!r}; expected one of {_KINDS}")
    angles = (np.arange(_CIRCLE_POINTS) + 0.5) * (2.0 * np.pi / _CIRCLE_POINTS)
    cx, cy, r = x0 + side / 2.0, y0 + side / 2.0, side / 2.0
    points = np.stack([cx + r * np.cos(angles), cy + r * np.sin(angles)], axis=1)
    return [round(float(v), 2) for v in points.reshape(-1)]


def _segmentation(category_id: int, bbox: Sequence[float]) -> List[List[float]]:
    """The ``segmentation`` of an annotation of this set, from its category and box."""
    x0, y0, side, _ = (int(v) for v in bbox)
    return [shape_polygon(_KINDS[(int(category_id) - 1) % len(_KINDS)], x0, y0, side)]


def _caption(rng, objects: Sequence[Dict[str, Any]]) -> Tuple[str, List[List[int]], List[int]]:
    """Caption, per-phrase character span, and the phrase index of every object."""
    order = sorted(range(len(objects)), key=lambda i: objects[i]["bbox"][0])
    groups: Dict[str, List[int]] = {}
    for i in order:
        groups.setdefault(objects[i]["desc"], []).append(i)
    phrases, descs = [], []
    for desc, members in groups.items():
        n = len(members)
        words = desc + ("s" if n > 1 else "")
        phrases.append(("a " if n == 1 else _COUNT_WORDS[n] + " ") + words)
        descs.append(words)
    if len(phrases) == 1:
        caption = _ONE_PHRASE[rng.integers(len(_ONE_PHRASE))].format(*phrases)
    elif len(phrases) == 2:
        caption = _TWO_PHRASES[rng.integers(len(_TWO_PHRASES))].format(*phrases)
    else:
        caption = ", ".join(phrases[:-1]) + f" and {phrases[-1]}."
    spans, cursor = [], 0
    for phrase, words in zip(phrases, descs):
        start = caption.index(phrase, cursor) + len(phrase) - len(words)
        spans.append([start, start + len(words)])
        cursor = start + len(words)
    phrase_of = [0] * len(objects)
    for k, members in enumerate(groups.values()):
        for i in members:
            phrase_of[i] = k
    return caption, spans, phrase_of


def _make_image(seed: Sequence[int]) -> Tuple[Image.Image, List[Dict[str, Any]], Any]:
    rng = np.random.default_rng(list(seed))
    h, w = (int(v) for v in rng.integers(128, 193, size=2))
    image = Image.fromarray(_background(rng, h, w))
    draw = ImageDraw.Draw(image)
    placed: List[Tuple[int, int, int]] = []
    objects = []
    for _ in range(int(rng.choice([1, 2, 3, 4], p=[0.3, 0.3, 0.25, 0.15]))):
        ci, ki = int(rng.integers(len(_COLORS))), int(rng.integers(len(_KINDS)))
        size_word = "small" if rng.random() < 0.5 else "large"
        lo, hi = _SIZES[size_word]
        side = int(rng.integers(lo, hi + 1))
        pos = _place(rng, h, w, side, placed)
        if pos is None:
            continue
        placed.append((pos[0], pos[1], side))
        color_name, rgb = _COLORS[ci]
        color = tuple(int(np.clip(c + rng.integers(-12, 13), 0, 255)) for c in rgb)
        _draw(draw, _KINDS[ki], pos[0], pos[1], side, color)
        objects.append(
            {
                "category_id": ci * len(_KINDS) + ki + 1,
                "bbox": [float(pos[0]), float(pos[1]), float(side), float(side)],
                "desc": f"{size_word} {color_name} {_KINDS[ki]}",
            }
        )
    return image, objects, _caption(rng, objects)


def _write_split(folder: str, split: str, split_index: int, num: int, seed: int) -> None:
    os.makedirs(os.path.join(folder, split))
    categories = [{"id": i + 1, "name": n} for i, n in enumerate(SHAPES_CLASSES)]
    det: Dict[str, List] = {"images": [], "annotations": [], "categories": categories}
    grd: Dict[str, List] = {"images": [], "annotations": [], "categories": categories}
    ann_id = 1
    for i in range(num):
        image, objects, (caption, spans, phrase_of) = _make_image((seed, split_index, i))
        file_name = f"{i:06d}.png"
        image.save(os.path.join(folder, split, file_name))
        info = {"id": i + 1, "file_name": file_name, "height": image.height, "width": image.width}
        det["images"].append(dict(info))
        grd["images"].append(
            {
                **info,
                "caption": caption,
                "dataset_name": "glip_shapes",
                "original_img_id": i + 1,
                "sentence_id": 0,
                "tokens_positive_eval": [[span] for span in spans],
            }
        )
        for obj, k in zip(objects, phrase_of):
            box = {
                "id": ann_id,
                "image_id": i + 1,
                "category_id": obj["category_id"],
                "bbox": obj["bbox"],
                "area": obj["bbox"][2] * obj["bbox"][3],
                "iscrowd": 0,
                "segmentation": _segmentation(obj["category_id"], obj["bbox"]),
            }
            det["annotations"].append(box)
            grd["annotations"].append({**box, "tokens_positive": [spans[k]], "phrase_ids": k})
            ann_id += 1
    for kind, data in (("instances", det), ("grounding", grd)):
        with open(os.path.join(folder, "annotations", f"{kind}_{split}.json"), "w") as f:
            json.dump(data, f)


def _json_files(root: str) -> List[str]:
    return [
        os.path.join(root, "annotations", f"{kind}_{split}.json")
        for kind in ("instances", "grounding")
        for split in _SPLITS
    ]


def _complete(root: str) -> bool:
    return all(os.path.isfile(path) for path in _json_files(root))


def _version(root: str) -> int:
    path = os.path.join(root, "annotations", "VERSION")
    if not os.path.isfile(path):
        return 1
    with open(path) as f:
        return int(f.read().strip())


def _write_atomic(path: str, text: str) -> None:
    """Write through a temporary file and rename: concurrent readers see old or new."""
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=os.path.dirname(path))
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _write_version(folder: str) -> None:
    _write_atomic(os.path.join(folder, "annotations", "VERSION"), f"{SHAPES_VERSION}\n")


def _upgrade(root: str) -> None:
    """Add the polygon of every annotation of a version-1 folder (same content as a new one:
    the polygon is a function of the category and the box); then write ``VERSION``."""
    logger.info(f"Adding segmentations to the glip_shapes annotations in '{root}' ...")
    for path in _json_files(root):
        with open(path) as f:
            data = json.load(f)
        for ann in data["annotations"]:
            # Key order as generated: segmentation after iscrowd (before tokens_positive).
            items = list(ann.items())
            at = [k for k, _ in items].index("iscrowd") + 1
            segm = ("segmentation", _segmentation(ann["category_id"], ann["bbox"]))
            ann.clear()
            ann.update(items[:at] + [segm] + [kv for kv in items[at:] if kv[0] != "segmentation"])
        _write_atomic(path, json.dumps(data))
    _write_version(root)


def generate_glip_shapes(root: str, *, num_train: int = 256, num_val: int = 64, seed: int = 0):
    """Generate the set into ``root`` (which must not exist), atomically.

    Args:
        root (str): the dataset folder to create.
        num_train, num_val (int): images per split.
        seed (int): image i of a split depends only on (seed, split, i).
    """
    parent = os.path.dirname(os.path.abspath(root))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".glip_shapes-", dir=parent)
    try:
        os.makedirs(os.path.join(tmp, "annotations"))
        for split_index, (split, num) in enumerate(zip(_SPLITS, (num_train, num_val))):
            _write_split(tmp, split, split_index, num, seed)
        _write_version(tmp)
        os.rename(tmp, root)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not _complete(root):
            raise
        # Another process finished first; its copy is identical.


def ensure_glip_shapes(root: str, *, num_train: int = 256, num_val: int = 64, seed: int = 0) -> str:
    """Generate the set into ``root`` unless it is already there; returns ``root``.

    A complete folder of an older :data:`SHAPES_VERSION` is upgraded in place (see the module
    docstring); its images are not touched.
    """
    if _complete(root):
        version = _version(root)
        if version > SHAPES_VERSION:
            raise RuntimeError(
                f"'{root}' is a glip_shapes set of version {version}, newer than this code's "
                f"{SHAPES_VERSION}; update glip_d2 or delete the folder to regenerate"
            )
        if version < SHAPES_VERSION:
            _upgrade(root)
    else:
        if os.path.isdir(root) and os.listdir(root):
            raise RuntimeError(
                f"'{root}' exists but is not a complete glip_shapes set; delete it to regenerate"
            )
        logger.info(f"Generating the glip_shapes dataset in '{root}' ...")
        generate_glip_shapes(root, num_train=num_train, num_val=num_val, seed=seed)
    return root


def register_glip_shapes(
    root: str,
    *,
    prefix: str = "glip_shapes",
    num_train: int = 256,
    num_val: int = 64,
    seed: int = 0,
) -> List[str]:
    """Register ``<prefix>_{train,val}`` (COCO detection, evaluator "coco") and
    ``<prefix>_{train,val}_grounding`` (MDETR grounding, evaluator "grounding").

    The set is generated in ``root`` the first time one of them is loaded.

    Args:
        root (str): the dataset folder, e.g. ``$DETECTRON2_DATASETS/glip_shapes``.
        prefix (str): dataset name prefix.
        num_train, num_val, seed: passed to :func:`generate_glip_shapes`.

    Returns:
        list[str]: the registered names.
    """
    params = {"num_train": num_train, "num_val": num_val, "seed": seed}
    thing_meta = {
        "thing_classes": list(SHAPES_CLASSES),
        "thing_dataset_id_to_contiguous_id": {i + 1: i for i in range(len(SHAPES_CLASSES))},
    }
    names = []
    for split in _SPLITS:
        image_root = os.path.join(root, split)
        det_json = os.path.join(root, "annotations", f"instances_{split}.json")
        grd_json = os.path.join(root, "annotations", f"grounding_{split}.json")
        det_name, grd_name = f"{prefix}_{split}", f"{prefix}_{split}_grounding"
        register_generated_shapes(
            det_name,
            root,
            params,
            lambda j=det_json, r=image_root, n=det_name: load_coco_grounding_json(j, r, n),
            json_file=det_json,
            image_root=image_root,
            evaluator_type="coco",
            **thing_meta,
        )
        register_generated_shapes(
            grd_name,
            root,
            params,
            lambda j=grd_json, r=image_root, n=grd_name: load_mdetr_grounding_json(j, r, n),
            json_file=grd_json,
            image_root=image_root,
            evaluator_type="grounding",
            thing_classes=["object"],
        )
        names += [det_name, grd_name]
    return names


def register_generated_shapes(
    name: str, root: str, params: Dict[str, int], load: Callable[[], List[dict]], **metadata
) -> None:
    """Register ``name`` with a loader that first generates the glip_shapes set in ``root``
    (:func:`ensure_glip_shapes` with ``params``) and then returns ``load()``; ``metadata`` goes
    to its ``MetadataCatalog`` entry."""

    def load_generated():
        ensure_glip_shapes(root, **params)
        return load()

    DatasetCatalog.register(name, load_generated)
    MetadataCatalog.get(name).set(**metadata)
