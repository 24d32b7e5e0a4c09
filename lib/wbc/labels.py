"""Class vocabularies of the datasets and the ten-class map of Study A.

The map itself is data, not code: ``resources/wbc10_map.csv`` has one row per (class, source)
entry with the columns ``class, source, source_label, sub_label, note``. An empty ``sub_label``
means "every image of that folder / class code"; a filled one selects the PBC file-name prefix
(``neutrophil/SNE_...``). Anything the map does not name is excluded from ``wbc10``.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import pandas as pd

from wbc.errors import WbcError

#: The ten classes, in the order of Study A's Table I (this order is the class index).
WBC10_CLASSES: tuple[str, ...] = (
    "basophil",
    "eosinophil",
    "lymphocyte",
    "monocyte",
    "neutrophil_segmented",
    "neutrophil_band",
    "myeloblast",
    "myelocyte",
    "promyelocyte",
    "metamyelocyte",
)

#: Study A's published Table I (images per class after its merge), for comparison only.
STUDY_A_TABLE_ONE: dict[str, int] = {
    "basophil": 1295,
    "eosinophil": 1321,
    "lymphocyte": 1297,
    "monocyte": 1300,
    "neutrophil_segmented": 1294,
    "neutrophil_band": 1308,
    "myeloblast": 1764,
    "myelocyte": 1179,
    "promyelocyte": 662,
    "metamyelocyte": 1030,
}

#: PBC folders and the file-name prefixes each holds (prefix -> meaning).
PBC_PREFIXES: dict[str, dict[str, str]] = {
    "basophil": {"BA": "basophil"},
    "eosinophil": {"EO": "eosinophil"},
    "erythroblast": {"ERB": "erythroblast"},
    "ig": {
        "MMY": "metamyelocyte",
        "MY": "myelocyte",
        "PMY": "promyelocyte",
        "IG": "immature granulocyte, not further specified",
    },
    "lymphocyte": {"LY": "lymphocyte"},
    "monocyte": {"MO": "monocyte"},
    "neutrophil": {
        "BNE": "band neutrophil",
        "SNE": "segmented neutrophil",
        "NEUTROPHIL": "neutrophil, not further specified",
    },
    "platelet": {"PLATELET": "platelet"},
}
PBC_CLASSES: tuple[str, ...] = tuple(PBC_PREFIXES)

#: The 15 class codes of AML-Cytomorphology_LMU (Matek et al. 2019) and what they mean.
LMU_CODES: dict[str, str] = {
    "BAS": "basophil",
    "EBO": "erythroblast",
    "EOS": "eosinophil",
    "KSC": "smudge cell",
    "LYA": "atypical lymphocyte",
    "LYT": "typical lymphocyte",
    "MMZ": "metamyelocyte",
    "MOB": "monoblast",
    "MON": "monocyte",
    "MYB": "myelocyte",
    "MYO": "myeloblast",
    "NGB": "band neutrophil",
    "NGS": "segmented neutrophil",
    "PMB": "bilobed promyelocyte",
    "PMO": "promyelocyte",
}

#: The four classes of the Kaggle ALL dataset (folder names) and the two image versions.
ALL_CLASSES: tuple[str, ...] = ("Benign", "Early", "Pre", "Pro")
ALL_VERSIONS: tuple[str, ...] = ("Original", "Segmented")

MAP_COLUMNS = ["class", "source", "source_label", "sub_label", "note"]
_MAP_RESOURCE = "wbc10_map.csv"


def label_map_path() -> Path:
    """Path of the packaged ten-class map CSV."""
    return Path(str(resources.files("wbc") / "resources" / _MAP_RESOURCE))


def load_label_map(path: str | Path | None = None) -> pd.DataFrame:
    """Load and check the ten-class map (default: the packaged ``wbc10_map.csv``).

    Raises ``WbcError`` naming the file when a column is missing, a class is not one of
    ``WBC10_CLASSES``, a source is not PBC/LMU, or one source entry is mapped twice.
    """
    path = Path(path) if path is not None else label_map_path()
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, pd.errors.ParserError) as exc:
        raise WbcError(f"cannot read the label map {path}: {exc}") from exc
    missing = [c for c in MAP_COLUMNS if c not in table.columns]
    if missing:
        raise WbcError(f"label map {path} lacks column(s) {missing}; expected {MAP_COLUMNS}")
    unknown = sorted(set(table["class"]) - set(WBC10_CLASSES))
    if unknown:
        raise WbcError(f"label map {path}: unknown class(es) {unknown}; expected {list(WBC10_CLASSES)}")
    bad_sources = sorted(set(table["source"]) - {"PBC", "LMU"})
    if bad_sources:
        raise WbcError(f"label map {path}: unknown source(s) {bad_sources}; expected PBC or LMU")
    key = ["source", "source_label", "sub_label"]
    twice = table[table.duplicated(key, keep=False)]
    if not twice.empty:
        raise WbcError(f"label map {path}: entries mapped more than once:\n{twice.to_string(index=False)}")
    return table[MAP_COLUMNS].reset_index(drop=True)


def describe_source_label(source: str, source_label: str, sub_label: str = "") -> str:
    """A human name for a source class, e.g. ``LMU LYA (atypical lymphocyte)``."""
    if source == "LMU" and source_label in LMU_CODES:
        return f"LMU {source_label} ({LMU_CODES[source_label]})"
    if source == "PBC" and sub_label:
        meaning = PBC_PREFIXES.get(source_label, {}).get(sub_label)
        name = f"PBC {source_label}/{sub_label}_"
        return f"{name} ({meaning})" if meaning else name
    return f"{source} {source_label}"
