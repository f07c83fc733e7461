"""ODinW task tables (ODinW-13 of the GLIP paper, ODinW-35 of the CVinW challenge).

The paths, class names (``OVERRIDE_CATEGORY``), caption prompts (``CAPTION_PROMPT``) and
evaluation splits (``DATASETS.TEST``) come from the task configs of microsoft/GLIP (MIT
licence), ``configs/odinw_13/*.yaml`` and the 35 tasks listed in ``configs/odinw_35/_all.json``.
Class names are listed for json ids 1..K. The official evaluation commands turn both the
overrides and the caption prompts on (``USE_OVERRIDE_CATEGORY``, ``USE_CAPTION_PROMPT``); so do
the registrations in :mod:`glip_d2.data.datasets.builtin`. Paths are relative to
``$DETECTRON2_DATASETS``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Mapping, Optional, Tuple

__all__ = ["OdinwTask", "ODINW_13_TASKS", "ODINW_35_TASKS", "odinw_dataset_name"]

_SPLIT_DIRS = {"train": "train", "val": "valid", "test": "test", "minival": "mini_val"}


@dataclass(frozen=True)
class OdinwTask:
    """One ODinW task.

    Attributes:
        name (str): short task name, used in dataset names.
        splits (Mapping[str, tuple[str, str]]): split -> (image folder, COCO json).
        classes (tuple[str, ...]): category names for json ids 1..K.
        caption_prompt (tuple[dict, ...], optional): per-class prefix/name/suffix.
        eval_split (str): the split the official configs evaluate on.
    """

    name: str
    splits: Mapping[str, Tuple[str, str]]
    classes: Tuple[str, ...]
    caption_prompt: Optional[Tuple[Dict[str, str], ...]] = None
    eval_split: str = "val"


def _standard(base: str, splits: Tuple[str, ...]) -> Dict[str, Tuple[str, str]]:
    out = {}
    for split in splits:
        folder = f"{base}/{_SPLIT_DIRS[split]}"
        out[split] = (folder, f"{folder}/annotations_without_background.json")
    return out


def _export(folder: str) -> Dict[str, Tuple[str, str]]:
    splits = ("train", "val", "test")
    return {s: (folder, f"{folder}/{s}_annotations_without_background.json") for s in splits}


def odinw_dataset_name(version: int, task: str, split: str) -> str:
    """The registered name of an ODinW split, e.g. ``odinw13_Aquarium_val``."""
    return f"odinw{version}_{task}_{split}"


ODINW_13_TASKS: Tuple[OdinwTask, ...] = (
    OdinwTask(
        "AerialMaritimeDrone_large",
        _standard("odinw/AerialMaritimeDrone/large", ("train", "val", "test")),
        ("boat", "car", "dock", "jetski", "lift"),
    ),
    OdinwTask(
        "Aquarium",
        _standard("odinw/Aquarium/Aquarium Combined.v2-raw-1024.coco", ("train", "val", "test")),
        ("fish", "jellyfish", "penguin", "puffin", "shark", "starfish", "stingray"),
    ),
    OdinwTask(
        "CottontailRabbits",
        _standard("odinw/CottontailRabbits", ("train", "val", "test")),
        ("Cottontail-Rabbit",),
    ),
    OdinwTask(
        "EgoHands_generic",
        _standard("odinw/EgoHands/generic", ("train", "val", "test", "minival")),
        ("hand",),
        eval_split="minival",
    ),
    OdinwTask(
        "NorthAmericaMushrooms",
        _standard(
            "odinw/NorthAmericaMushrooms/North American Mushrooms.v1-416x416.coco",
            ("train", "val", "test"),
        ),
        ("CoW", "chanterelle"),
    ),
    OdinwTask("Packages", _standard("odinw/Packages/Raw", ("train", "val", "test")), ("package",)),
    OdinwTask(
        "PascalVOC",
        {
            "train": (
                "odinw/PascalVOC/train",
                "odinw/PascalVOC/train/annotations_without_background.json",
            ),
            "val": (
                "odinw/PascalVOC/valid",
                "odinw/PascalVOC/valid/annotations_without_background.json",
            ),
            "test": (
                "odinw/PascalVOC/valid",
                "odinw/PascalVOC/valid/annotations_without_background.json",
            ),
        },
        (
            "aeroplane",
            "bicycle",
            "bird",
            "boat",
            "bottle",
            "bus",
            "car",
            "cat",
            "chair",
            "cow",
            "diningtable",
            "dog",
            "horse",
            "motorbike",
            "person",
            "pottedplant",
            "sheep",
            "sofa",
            "train",
            "tvmonitor",
        ),
    ),
    OdinwTask(
        "Raccoon",
        _standard("odinw/Raccoon/Raccoon.v2-raw.coco", ("train", "val", "test")),
        ("raccoon",),
    ),
    OdinwTask(
        "ShellfishOpenImages",
        _standard("odinw/ShellfishOpenImages/raw", ("train", "val", "test")),
        ("Crab", "Lobster", "Shrimp"),
    ),
    OdinwTask(
        "VehiclesOpenImages",
        _standard("odinw/VehiclesOpenImages/416x416", ("train", "val", "test", "minival")),
        ("Ambulance", "Bus", "Car", "Motorcycle", "Truck"),
        eval_split="minival",
    ),
    OdinwTask("pistols", _export("odinw/pistols/export"), ("pistol",)),
    OdinwTask("pothole", _standard("odinw/pothole", ("train", "val", "test")), ("pothole",)),
    OdinwTask(
        "thermalDogsAndPeople",
        _standard("odinw/thermalDogsAndPeople", ("train", "val", "test")),
        ("dog", "person"),
    ),
)
ODINW_35_TASKS: Tuple[OdinwTask, ...] = (
    OdinwTask(
        "AerialMaritimeDrone_large",
        _standard("odinw/AerialMaritimeDrone/large", ("train", "val", "test")),
        ("boat", "car", "dock", "jetski", "lift"),
    ),
    OdinwTask(
        "AerialMaritimeDrone_tiled",
        _standard("odinw/AerialMaritimeDrone/tiled", ("train", "val", "test")),
        ("boat", "car", "dock", "jetski", "lift"),
    ),
    OdinwTask(
        "AmericanSignLanguageLetters",
        _standard(
            "odinw/AmericanSignLanguageLetters/American Sign Language Letters.v1-v1.coco",
            ("train", "val", "test"),
        ),
        (
            "A",
            "B",
            "C",
            "D",
            "E",
            "F",
            "G",
            "H",
            "I",
            "J",
            "K",
            "L",
            "M",
            "N",
            "O",
            "P",
            "Q",
            "R",
            "S",
            "T",
            "U",
            "V",
            "W",
            "X",
            "Y",
            "Z",
        ),
    ),
    OdinwTask(
        "Aquarium",
        _standard("odinw/Aquarium/Aquarium Combined.v2-raw-1024.coco", ("train", "val", "test")),
        ("fish", "jellyfish", "penguin", "puffin", "shark", "starfish", "stingray"),
        caption_prompt=(
            {"prefix": " ", "name": "fish", "suffix": ""},
            {"prefix": "", "name": "jellyfish", "suffix": ""},
            {"prefix": "", "name": "penguin", "suffix": " , which is black and white"},
            {"prefix": "", "name": "puffin", "suffix": " with orange beaks "},
            {"prefix": "", "name": "shark", "suffix": ""},
            {"prefix": "", "name": "starfish", "suffix": ""},
            {"prefix": "", "name": "stingray", "suffix": " which is flat and round"},
        ),
    ),
    OdinwTask(
        "BCCD",
        _standard("odinw/BCCD/BCCD.v3-raw.coco", ("train", "val", "test")),
        ("Platelets", "RBC", "WBC"),
    ),
    OdinwTask(
        "ChessPieces",
        _standard("odinw/ChessPieces/Chess Pieces.v23-raw.coco", ("train", "val", "test")),
        (
            "  ",
            "black bishop",
            "black king",
            "black knight",
            "black pawn",
            "black queen",
            "black rook",
            "white bishop",
            "white king",
            "white knight",
            "white pawn",
            "white queen",
            "white rook",
        ),
    ),
    OdinwTask(
        "CottontailRabbits",
        _standard("odinw/CottontailRabbits", ("train", "val", "test")),
        ("rabbit",),
    ),
    OdinwTask(
        "DroneControl",
        _standard(
            "odinw/DroneControl/Drone Control.v3-raw.coco", ("train", "val", "test", "minival")
        ),
        ("follow", "follow_hand", "land", "land_hand", "null", "object", "takeoff", "takeoff-hand"),
        eval_split="minival",
    ),
    OdinwTask(
        "EgoHands_generic",
        _standard("odinw/EgoHands/generic", ("train", "val", "test", "minival")),
        ("hand",),
        caption_prompt=({"prefix": " ", "name": "hand", "suffix": " of a person"},),
        eval_split="minival",
    ),
    OdinwTask(
        "EgoHands_specific",
        _standard("odinw/EgoHands/specific", ("train", "val", "test", "minival")),
        ("myleft", "myright", "yourleft", "yourright"),
        eval_split="minival",
    ),
    OdinwTask(
        "HardHatWorkers",
        _standard("odinw/HardHatWorkers/raw", ("train", "val", "test")),
        ("head", "helmet", "person"),
    ),
    OdinwTask(
        "MaskWearing",
        _standard("odinw/MaskWearing/raw", ("train", "val", "test")),
        ("mask", "no-mask"),
    ),
    OdinwTask(
        "MountainDewCommercial",
        _standard("odinw/MountainDewCommercial", ("train", "val", "test")),
        ("bottle",),
    ),
    OdinwTask(
        "NorthAmericaMushrooms",
        _standard(
            "odinw/NorthAmericaMushrooms/North American Mushrooms.v1-416x416.coco",
            ("train", "val", "test"),
        ),
        ("flat mushroom", "yellow mushroom"),
    ),
    OdinwTask(
        "OxfordPets_by-breed",
        _standard("odinw/OxfordPets/by-breed", ("train", "val", "test", "minival")),
        (
            "cat-Abyssinian",
            "cat-Bengal",
            "cat-Birman",
            "cat-Bombay",
            "cat-British_Shorthair",
            "cat-Egyptian_Mau",
            "cat-Maine_Coon",
            "cat-Persian",
            "cat-Ragdoll",
            "cat-Russian_Blue",
            "cat-Siamese",
            "cat-Sphynx",
            "dog-american_bulldog",
            "dog-american_pit_bull_terrier",
            "dog-basset_hound",
            "dog-beagle",
            "dog-boxer",
            "dog-chihuahua",
            "dog-english_cocker_spaniel",
            "dog-english_setter",
            "dog-german_shorthaired",
            "dog-great_pyrenees",
            "dog-havanese",
            "dog-japanese_chin",
            "dog-keeshond",
            "dog-leonberger",
            "dog-miniature_pinscher",
            "dog-newfoundland",
            "dog-pomeranian",
            "dog-pug",
            "dog-saint_bernard",
            "dog-samoyed",
            "dog-scottish_terrier",
            "dog-shiba_inu",
            "dog-staffordshire_bull_terrier",
            "dog-wheaten_terrier",
            "dog-yorkshire_terrier",
        ),
        eval_split="minival",
    ),
    OdinwTask(
        "OxfordPets_by-species",
        _standard("odinw/OxfordPets/by-species", ("train", "val", "test", "minival")),
        ("cat", "dog"),
        eval_split="minival",
    ),
    OdinwTask(
        "PKLot",
        _standard("odinw/PKLot/640", ("train", "val", "test", "minival")),
        ("space-empty", "space-occupied"),
        eval_split="minival",
    ),
    OdinwTask(
        "Packages",
        _standard("odinw/Packages/Raw", ("train", "val", "test")),
        ("package",),
        caption_prompt=({"prefix": "there is a ", "name": "package", "suffix": " on the porch"},),
    ),
    OdinwTask(
        "PascalVOC",
        {
            "train": (
                "odinw/PascalVOC/train",
                "odinw/PascalVOC/train/annotations_without_background.json",
            ),
            "val": (
                "odinw/PascalVOC/valid",
                "odinw/PascalVOC/valid/annotations_without_background.json",
            ),
            "test": (
                "odinw/PascalVOC/valid",
                "odinw/PascalVOC/valid/annotations_without_background.json",
            ),
        },
        (
            "aeroplane",
            "bicycle",
            "bird",
            "boat",
            "bottle",
            "bus",
            "car",
            "cat",
            "chair",
            "cow",
            "diningtable",
            "dog",
            "horse",
            "motorbike",
            "person",
            "pottedplant",
            "sheep",
            "sofa",
            "train",
            "tvmonitor",
        ),
    ),
    OdinwTask(
        "Raccoon",
        _standard("odinw/Raccoon/Raccoon.v2-raw.coco", ("train", "val", "test")),
        ("raccoon",),
    ),
    OdinwTask(
        "ShellfishOpenImages",
        _standard("odinw/ShellfishOpenImages/raw", ("train", "val", "test")),
        ("Crab", "Lobster", "Shrimp"),
    ),
    OdinwTask(
        "ThermalCheetah",
        _standard("odinw/ThermalCheetah", ("train", "val", "test")),
        ("cheetah", "human"),
    ),
    OdinwTask(
        "UnoCards",
        _standard("odinw/UnoCards/raw", ("train", "val", "test", "minival")),
        ("0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12", "13", "14"),
        eval_split="minival",
    ),
    OdinwTask(
        "VehiclesOpenImages",
        _standard("odinw/VehiclesOpenImages/416x416", ("train", "val", "test", "minival")),
        ("Ambulance", "Bus", "Car", "Motorcycle", "Truck"),
        eval_split="minival",
    ),
    OdinwTask(
        "WildfireSmoke", _standard("odinw/WildfireSmoke", ("train", "val", "test")), ("smoke",)
    ),
    OdinwTask(
        "boggleBoards",
        _export("odinw/boggleBoards/416x416AutoOrient/export"),
        (
            "Q",
            "a",
            "an",
            "b",
            "c",
            "d",
            "e",
            "er",
            "f",
            "g",
            "h",
            "he",
            "i",
            "in",
            "j",
            "k",
            "l",
            "m",
            "n",
            "o",
            "o ",
            "p",
            "q",
            "qu",
            "r",
            "s",
            "t",
            "t\\",
            "th",
            "u",
            "v",
            "w",
            "wild",
            "x",
            "y",
            "z",
        ),
    ),
    OdinwTask(
        "brackishUnderwater",
        _standard("odinw/brackishUnderwater/960x540", ("train", "val", "test", "minival")),
        ("crab", "fish", "jellyfish", "shrimp", "small_fish", "starfish"),
        eval_split="minival",
    ),
    OdinwTask("dice", _export("odinw/dice/mediumColor/export"), ("1", "2", "3", "4", "5", "6")),
    OdinwTask(
        "openPoetryVision",
        _standard("odinw/openPoetryVision/512x512", ("train", "val", "test", "minival")),
        (
            "American Typewriter",
            "Andale Mono",
            "Apple Chancery",
            "Arial",
            "Avenir",
            "Baskerville",
            "Big Caslon",
            "Bradley Hand",
            "Brush Script MT",
            "Chalkboard",
            "Comic Sans MS",
            "Copperplate",
            "Courier",
            "Didot",
            "Futura",
            "Geneva",
            "Georgia",
            "Gill Sans",
            "Helvetica",
            "Herculanum",
            "Impact",
            "Kefa",
            "Lucida Grande",
            "Luminari",
            "Marker Felt",
            "Menlo",
            "Monaco",
            "Noteworthy",
            "Optima",
            "PT Sans",
            "PT Serif",
            "Palatino",
            "Papyrus",
            "Phosphate",
            "Rockwell",
            "SF Pro",
            "SignPainter",
            "Skia",
            "Snell Roundhand",
            "Tahoma",
            "Times New Roman",
            "Trebuchet MS",
            "Verdana",
        ),
        eval_split="minival",
    ),
    OdinwTask("pistols", _export("odinw/pistols/export"), ("pistol",)),
    OdinwTask(
        "plantdoc_416x416",
        _standard("odinw/plantdoc/416x416", ("train", "val", "test")),
        (
            "Apple Scab Leaf",
            "Apple leaf",
            "Apple rust leaf",
            "Bell_pepper leaf",
            "Bell_pepper leaf spot",
            "Blueberry leaf",
            "Cherry leaf",
            "Corn Gray leaf spot",
            "Corn leaf blight",
            "Corn rust leaf",
            "Peach leaf",
            "Potato leaf",
            "Potato leaf early blight",
            "Potato leaf late blight",
            "Raspberry leaf",
            "Soyabean leaf",
            "Soybean leaf",
            "Squash Powdery mildew leaf",
            "Strawberry leaf",
            "Tomato Early blight leaf",
            "Tomato Septoria leaf spot",
            "Tomato leaf",
            "Tomato leaf bacterial spot",
            "Tomato leaf late blight",
            "Tomato leaf mosaic virus",
            "Tomato leaf yellow virus",
            "Tomato mold leaf",
            "Tomato two spotted spider mites leaf",
            "grape leaf",
            "grape leaf black rot",
        ),
    ),
    OdinwTask(
        "pothole",
        _standard("odinw/pothole", ("train", "val", "test")),
        ("pothole",),
        caption_prompt=({"prefix": "there are some ", "name": "holes", "suffix": " on the road"},),
    ),
    OdinwTask(
        "selfdrivingCar",
        _export("odinw/selfdrivingCar/fixedLarge/export"),
        (
            "biker",
            "car",
            "pedestrian",
            "trafficLight",
            "trafficLight-Green",
            "trafficLight-GreenLeft",
            "trafficLight-Red",
            "trafficLight-RedLeft",
            "trafficLight-Yellow",
            "trafficLight-YellowLeft",
            "truck",
        ),
    ),
    OdinwTask(
        "thermalDogsAndPeople",
        _standard("odinw/thermalDogsAndPeople", ("train", "val", "test")),
        ("dog", "person"),
    ),
    OdinwTask(
        "websiteScreenshots",
        _standard("odinw/websiteScreenshots", ("train", "val", "test", "minival")),
        ("button", "field", "heading", "iframe", "image", "label", "link", "text"),
        eval_split="minival",
    ),
)
