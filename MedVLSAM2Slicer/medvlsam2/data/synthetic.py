"""Synthetic abdominal CT phantoms with labels, a findings report, VQA pairs and referring expressions.

Deterministic by seed. Geometry: identity direction in LPS, so ``i`` runs to the patient's left,
``j`` to posterior and ``k`` to superior; the patient lies supine. The liver is on the patient's
right (low ``i``), the spleen on the left, the spine posterior (high ``j``).

Label map (``ORGANS``): a liver-lesion voxel has label 8 (not 1) and a renal-cyst voxel label 9.
Segmentation targets (``STRUCTURE_LABELS``) follow radiology usage: "liver" includes its lesions
(labels 1 and 8); a kidney is its parenchyma (3 or 4) without the cyst, which is its own target.

These phantoms train and test the pipeline; they are not clinical images.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..io.volume import Volume
from .case import CHOICE_LETTERS, ClosedQA, CTCase, OpenQA, Referring, RegionQA

ORGANS: dict[int, str] = {1: "liver", 2: "spleen", 3: "right kidney", 4: "left kidney", 5: "pancreas",
                          6: "aorta", 7: "stomach", 8: "liver lesion", 9: "kidney cyst"}
STRUCTURE_LABELS: dict[str, list[int]] = {"liver": [1, 8], "spleen": [2], "right kidney": [3], "left kidney": [4],
                                          "pancreas": [5], "aorta": [6], "stomach": [7], "liver lesion": [8],
                                          "kidney cyst": [9]}
HU = {"air": -1000, "fat": -100, "muscle": 50, "bone": 700, "marrow": 250, "liver": 60, "spleen": 48,
      "kidney": 150, "pancreas": 40, "aorta": 180, "stomach_wall": 45, "stomach_fluid": 10, "gas": -900,
      "lesion": 20, "cyst": 5}
GENERATOR_VERSION = 4  # bump whenever a seed's image or texts change (models trained on older phantoms differ)
NOISE_HU = 12.0
BLUR_VOXELS = 0.6  # partial-volume blur (Gaussian sigma, in voxels)
_NUMBER_WORDS = ["none", "one", "two", "three"]


@dataclass
class Findings:
    """What a phantom shows. Keys accepted by ``generate_case(findings=...)``:
    ``liver_lesions`` (list of diameters in mm, 0-3 entries), ``renal_cyst`` (None, "left" or "right"),
    ``cyst_mm`` (diameter), ``splenomegaly`` (bool)."""

    liver_lesions: list[float]
    renal_cyst: str | None
    cyst_mm: float
    splenomegaly: bool

    @classmethod
    def draw(cls, rng: np.random.Generator) -> "Findings":
        n = int(rng.choice(4, p=[0.6, 0.2, 0.12, 0.08]))
        lesions = sorted((float(rng.uniform(8, 30)) for _ in range(n)), reverse=True)
        cyst = None if rng.random() >= 0.3 else str(rng.choice(["left", "right"]))
        return cls(lesions, cyst, float(rng.uniform(10, 24)), bool(rng.random() < 0.25))

    @classmethod
    def from_dict(cls, d: dict, rng: np.random.Generator) -> "Findings":
        unknown = set(d) - {"liver_lesions", "renal_cyst", "cyst_mm", "splenomegaly"}
        if unknown:
            raise ValueError(f"unknown findings {sorted(unknown)}; use liver_lesions, renal_cyst, cyst_mm, splenomegaly")
        drawn = cls.draw(rng)
        lesions = sorted((float(x) for x in d.get("liver_lesions", drawn.liver_lesions)), reverse=True)
        if len(lesions) > 3 or any(not 4 <= x <= 60 for x in lesions):
            raise ValueError("liver_lesions takes at most 3 diameters between 4 and 60 mm")
        cyst = d.get("renal_cyst", drawn.renal_cyst)
        if cyst not in (None, "left", "right"):
            raise ValueError(f"renal_cyst must be None, 'left' or 'right', got {cyst!r}")
        cyst_mm = float(d.get("cyst_mm", drawn.cyst_mm))
        if not 5 <= cyst_mm <= 40:  # larger would replace the whole kidney
            raise ValueError(f"cyst_mm must be between 5 and 40 mm, got {cyst_mm}")
        return cls(lesions, cyst, cyst_mm, bool(d.get("splenomegaly", drawn.splenomegaly)))


def _grid(shape, spacing):
    """Physical coordinates (mm) of voxel centres, centred on the volume: x (i), y (j), z (k)."""
    k, j, i = (np.arange(n, dtype=np.float32) for n in shape)
    z = (k - (shape[0] - 1) / 2) * spacing[2]
    y = (j - (shape[1] - 1) / 2) * spacing[1]
    x = (i - (shape[2] - 1) / 2) * spacing[0]
    return x[None, None, :], y[None, :, None], z[:, None, None]


def _ellipsoid(grid, centre, axes) -> np.ndarray:
    x, y, z = grid
    return ((x - centre[0]) / axes[0]) ** 2 + ((y - centre[1]) / axes[1]) ** 2 + ((z - centre[2]) / axes[2]) ** 2 <= 1.0


def _paint_anatomy(shape, spacing, rng, f: Findings):
    grid = _grid(shape, spacing)
    x, y, z = grid
    jitter = lambda s=6.0: rng.normal(0, s, 3)  # noqa: E731 - centre shift in mm
    scale = lambda: rng.uniform(0.88, 1.12, 3)  # noqa: E731 - per-axis size variation
    full = np.ones(shape, bool)
    hu = np.full(shape, HU["air"], np.float32)
    labels = np.zeros(shape, np.uint8)

    # Body wall: fat, a muscle ring, intra-abdominal fat; spine and ribs.
    ax, ay = 160 * rng.uniform(0.92, 1.05), 115 * rng.uniform(0.92, 1.05)
    r = (x / ax) ** 2 + (y / ay) ** 2
    body = (r <= 1.0) & full
    hu[body] = HU["fat"]
    muscle = body & (((x / (ax - 16)) ** 2 + (y / (ay - 16)) ** 2) <= 1.0)
    hu[muscle] = HU["muscle"]
    inner = body & (((x / (ax - 28)) ** 2 + (y / (ay - 28)) ** 2) <= 1.0)
    hu[inner] = HU["fat"] + 10
    spine_c = (0.0, ay - 45)
    vert = ((x - spine_c[0]) ** 2 + (y - spine_c[1]) ** 2 <= 18 ** 2) & full
    hu[vert] = HU["bone"]
    hu[((x - spine_c[0]) ** 2 + (y - spine_c[1]) ** 2 <= 13 ** 2) & full] = HU["marrow"]
    paraspinal = (((x - spine_c[0]) / 55) ** 2 + ((y - spine_c[1] - 25) / 22) ** 2 <= 1.0) & ~vert & body
    hu[paraspinal] = HU["muscle"]
    rib_ring = body & ~inner & muscle & (((x / (ax - 20)) ** 2 + (y / (ay - 20)) ** 2) >= 1.0)
    rib_levels = (np.mod(z + rng.uniform(0, 25), 25) < 8) & (z > -10)
    hu[rib_ring & rib_levels & (y > -ay * 0.6)] = HU["bone"] - 100

    zs = shape[0] * spacing[2] / 2  # half the z extent, organs placed relative to it
    organs = {}
    organs["liver"] = _ellipsoid(grid, np.array([-62, -8, 0.35 * zs]) + jitter(), np.array([78, 68, 0.62 * zs]) * scale())
    organs["liver"] &= inner
    spleen_axes = np.array([30, 45, 0.5 * zs]) * scale() * (1.45 if f.splenomegaly else 1.0)
    organs["spleen"] = _ellipsoid(grid, np.array([88, 38, 0.35 * zs]) + jitter(), spleen_axes) & inner
    kid_axes = np.array([24, 30, 0.48 * zs])
    organs["right kidney"] = _ellipsoid(grid, np.array([-58, 52, -0.3 * zs]) + jitter(4), kid_axes * scale()) & inner
    organs["left kidney"] = _ellipsoid(grid, np.array([58, 52, -0.22 * zs]) + jitter(4), kid_axes * scale()) & inner
    organs["pancreas"] = _ellipsoid(grid, np.array([12, 12, -0.02 * zs]) + jitter(4), np.array([55, 12, 0.18 * zs]) * scale())
    organs["stomach"] = _ellipsoid(grid, np.array([45, -38, 0.4 * zs]) + jitter(), np.array([42, 30, 0.4 * zs]) * scale()) & inner
    aorta_c = np.array([14, spine_c[1] - 30]) + rng.normal(0, 3, 2)
    organs["aorta"] = ((x - aorta_c[0]) ** 2 + (y - aorta_c[1]) ** 2 <= (11 * rng.uniform(0.9, 1.1)) ** 2) & full

    for name in ("liver", "spleen", "right kidney", "left kidney", "pancreas", "stomach", "aorta"):
        value = next(v for v, n in ORGANS.items() if n == name)
        m = organs[name]
        labels[m] = value
        hu[m] = HU["kidney" if "kidney" in name else ("stomach_wall" if name == "stomach" else name)]
    # Stomach content: fluid with an anterior gas cap (low j is anterior).
    content = _ellipsoid(grid, np.array([45, -38, 0.4 * zs]), np.array([32, 22, 0.32 * zs])) & (labels == 7)
    hu[content] = HU["stomach_fluid"]
    hu[content & (y < -48)] = HU["gas"]

    lesion_sites = []
    liver_idx = np.argwhere(labels == 1)
    for d in f.liver_lesions:
        c = _centre_inside(liver_idx, shape, spacing, rng)
        sphere = _ellipsoid(grid, c, np.full(3, d / 2)) & (labels == 1)
        labels[sphere] = 8
        hu[sphere] = HU["lesion"]
        lesion_sites.append(c)
    if f.renal_cyst:
        kidney = 3 if f.renal_cyst == "right" else 4
        c = _centre_inside(np.argwhere(labels == kidney), shape, spacing, rng)
        sphere = _ellipsoid(grid, c, np.full(3, f.cyst_mm / 2)) & (labels == kidney)
        labels[sphere] = 9
        hu[sphere] = HU["cyst"]
    return hu, labels, lesion_sites, organs, spleen_axes


def _centre_inside(indices: np.ndarray, shape, spacing, rng) -> np.ndarray:
    """A random centre (mm) among the inner half of an organ's voxels, so a finding sits inside it."""
    centre = indices.mean(0)
    near = indices[np.linalg.norm((indices - centre) * np.array(spacing[::-1]), axis=1)
                   <= np.percentile(np.linalg.norm((indices - centre) * np.array(spacing[::-1]), axis=1), 50)]
    k, j, i = near[rng.integers(len(near))]
    return np.array([(i - (shape[2] - 1) / 2) * spacing[0], (j - (shape[1] - 1) / 2) * spacing[1],
                     (k - (shape[0] - 1) / 2) * spacing[2]])


# ----- texts ----------------------------------------------------------------------------------
def _lobe(centre_x: float, liver_centre_x: float) -> str:
    return "right" if centre_x < liver_centre_x + 10 else "left"  # patient's right is low x


def _report(f: Findings, lobes: list[str], spleen_cm: int, rng) -> str:
    pick = lambda options: options[int(rng.integers(len(options)))]  # noqa: E731
    n = len(f.liver_lesions)
    if n:
        size = int(round(f.liver_lesions[0]))
        liver = pick([f"{_NUMBER_WORDS[n].capitalize()} hypodense liver lesion{'s' if n > 1 else ''}, the largest {size} mm in the {lobes[0]} lobe.",
                      f"There {'are' if n > 1 else 'is'} {_NUMBER_WORDS[n]} hypodense lesion{'s' if n > 1 else ''} in the liver, the largest measuring {size} mm in the {lobes[0]} lobe."])
    else:
        liver = pick(["The liver is normal in size and attenuation without focal lesion.", "No focal liver lesion is seen.",
                      "The liver appears unremarkable."])
    spleen = (pick([f"The spleen is enlarged, measuring {spleen_cm} cm.", f"Splenomegaly is present, the spleen measuring {spleen_cm} cm."])
              if f.splenomegaly else pick(["The spleen is normal in size.", "No splenomegaly."]))
    if f.renal_cyst:
        cyst = int(round(f.cyst_mm))
        kidneys = pick([f"A {cyst} mm simple cyst in the {f.renal_cyst} kidney.",
                        f"There is a cyst in the {f.renal_cyst} kidney measuring {cyst} mm."])
    else:
        kidneys = pick(["Both kidneys are normal without cysts.", "The kidneys are unremarkable."])
    rest = pick(["The pancreas, aorta and stomach are unremarkable.", "Pancreas, aorta and stomach are normal."])
    abnormal = [s for s, on in (("liver lesion", n), ("splenomegaly", f.splenomegaly),
                                (f"{f.renal_cyst} renal cyst", f.renal_cyst)) if on]
    impression = "Impression: " + (", ".join(abnormal) + "." if abnormal else pick(["no acute abnormality.", "normal study."]))
    return " ".join([liver, spleen, kidneys, rest, impression])


def _closed(question: str, correct: str, choices: list[str], rng) -> ClosedQA:
    order = list(rng.permutation(len(choices)))
    shuffled = [choices[o] for o in order]
    return ClosedQA(question, shuffled, CHOICE_LETTERS[shuffled.index(correct)])


def _questions(f: Findings, lobes: list[str], rng):
    n = len(f.liver_lesions)
    cyst = f.renal_cyst or "neither"
    closed = [
        _closed("How many focal lesions are in the liver?", _NUMBER_WORDS[n], list(_NUMBER_WORDS), rng),
        _closed("Which kidney has a cyst?", cyst, ["left", "right", "both", "neither"], rng),
        _closed("What is the size of the spleen?", "enlarged" if f.splenomegaly else "normal",
                ["normal", "enlarged", "absent", "atrophic"], rng),
        _closed("Is there a focal liver lesion?", "yes" if n else "no", ["yes", "no", "only a cyst", "not assessable"], rng),
    ]
    opened = [
        OpenQA("Is the spleen enlarged?", "yes" if f.splenomegaly else "no"),
        OpenQA("What abnormality is in the kidneys?", f"a cyst in the {f.renal_cyst} kidney" if f.renal_cyst else "none"),
        OpenQA("Where is the liver lesion?", f"in the {lobes[0]} lobe" if n else "there is no liver lesion"),
    ]
    referring = referring_expressions(f, lobes, rng)
    return closed, opened, referring


# Referring expressions the generator trains on ("the" is added by "Segment the ..."). Held-out
# phrasings for evaluation live in ``evaluation.language.HELD_OUT_TEMPLATES`` and must not appear here.
LESION_TEMPLATES = ["lesion in the liver", "liver lesion", "hypodense liver lesion", "focal liver lesion", "liver mass",
                    "hypodensity in the liver", "hypodense lesion of the liver", "mass in the liver", "hepatic lesion",
                    "low density lesion in the liver", "lesion in the {lobe} lobe of the liver",
                    "{lobe} lobe liver lesion"]
CYST_TEMPLATES = ["cyst in the {side} kidney", "{side} renal cyst", "{side} kidney cyst", "renal cyst", "kidney cyst",
                  "cystic lesion in the {side} kidney", "hypodensity in the {side} kidney",
                  "fluid filled lesion of the {side} kidney", "cyst of the {side} kidney", "simple cyst in the {side} kidney",
                  # finding words after the kidney's name, not only "cyst" (so "{side} kidney" + a density word
                  # names the cyst, not the kidney)
                  "{side} kidney hypodense lesion", "{side} kidney low density lesion", "{side} kidney fluid lesion",
                  # and finding words other than "lesion" there (a model that learnt "kidney ... lesion" alone still
                  # segments the kidney for a density word after its name)
                  "{side} kidney hypodense region", "{side} kidney low density region", "{side} kidney cystic region",
                  "{side} kidney fluid density", "{side} kidney low attenuation region"]
ORGAN_SYNONYMS = {1: ["largest abdominal organ", "hepatic parenchyma"],
                  2: ["organ on the left side next to the stomach", "splenic parenchyma"],
                  3: ["right renal parenchyma"], 4: ["left renal parenchyma"],
                  6: ["vessel in front of the spine", "abdominal aorta"], 5: ["organ behind the stomach"]}
NEVER_PRESENT = ["gallbladder", "urinary bladder", "heart", "appendix"]  # the phantoms have none of these


def _fill(template: str, rng, **values) -> str:
    return template.format(**{k: (v if isinstance(v, str) else str(rng.choice(v))) for k, v in values.items()})


def _lesion(expression: str, label: int) -> Referring:
    return Referring(expression, label, "lesion in the liver")


def _cyst(expression: str, label: int) -> Referring:
    side = next((w for w in ("left", "right") if w in expression.split()), None)
    return Referring(expression, label, f"cyst in the {side} kidney" if side else "cyst in the kidney")


def referring_expressions(f: Findings, lobes: list[str], rng, lesion_templates=None, cyst_templates=None,
                          absent: int = 3) -> list[Referring]:
    """Referring expressions for what the phantom shows (label 8 lesions, 9 cyst, organ synonyms) and,
    with label 0, ``absent`` phrases naming findings it does not show (a cyst on the other side, a lesion
    in a lesion-free liver, organs the phantoms never have)."""
    lesion_templates = lesion_templates or LESION_TEMPLATES
    cyst_templates = cyst_templates or CYST_TEMPLATES
    pick = lambda options, k: [options[i] for i in rng.choice(len(options), size=min(k, len(options)), replace=False)]  # noqa: E731
    out = [Referring(str(rng.choice(names)), v) for v, names in ORGAN_SYNONYMS.items()]
    if f.liver_lesions:
        out += [_lesion(_fill(t, rng, lobe=lobes[0]), 8) for t in pick(lesion_templates, 3)]
        if len(f.liver_lesions) > 1:
            out.append(_lesion(str(rng.choice(["liver lesions", "lesions in the liver"])), 8))
    else:
        out += [_lesion(_fill(t, rng, lobe=["left", "right"]), 0) for t in pick(lesion_templates, absent)]
    if f.renal_cyst:
        out += [_cyst(_fill(t, rng, side=f.renal_cyst), 9) for t in pick(cyst_templates, 3)]
        other = "left" if f.renal_cyst == "right" else "right"
        sided = [t for t in cyst_templates if "{side}" in t]
        out += [_cyst(_fill(t, rng, side=other), 0) for t in pick(sided, absent)]
    else:
        out += [_cyst(_fill(t, rng, side=["left", "right"]), 0) for t in pick(cyst_templates, absent)]
    out.append(Referring(str(rng.choice(NEVER_PRESENT)), 0))
    return out


def _region_questions(f: Findings, labels: np.ndarray, lesion_sites: list, lobes: list[str], spacing, rng
                      ) -> list[RegionQA]:
    """What a user asks about a drawn or segmented region: what it is, how large, whether cystic, where."""
    from scipy.ndimage import label as components

    out = []
    sp = np.array(spacing[::-1], dtype=np.float64)
    for values, name in (((1, 8), "the liver"), ((2,), "the spleen"), ((3, 9), "the right kidney"),
                         ((4, 9), "the left kidney"), ((5,), "the pancreas"), ((6,), "the aorta"), ((7,), "the stomach")):
        idx = np.argwhere(np.isin(labels, values))
        if values[-1] == 9:  # a kidney's region is that kidney (with its cyst, if any)
            side = 3 if "right" in name else 4
            idx = np.argwhere((labels == side) | ((labels == 9) & (f.renal_cyst == name.split()[1])))
            values = (side, 9) if f.renal_cyst == name.split()[1] else (side,)
        if not len(idx):
            continue
        cm = int(round(((idx.max(0) - idx.min(0) + 1) * sp).max() / 10))
        out += [RegionQA("What is this?", f"This is {name}.", values), RegionQA("How large is it?", f"It measures {cm} cm.", values),
                RegionQA("Is it cystic?", "no", values)]
    lesion_map, n = components(labels == 8)
    for comp in range(1, n + 1):
        idx = np.argwhere(lesion_map == comp)
        centre = (idx.mean(0)[::-1] - (np.array(labels.shape[::-1]) - 1) / 2) * np.array(spacing)
        which = int(np.argmin([np.linalg.norm(centre - c) for c in lesion_sites]))
        size = int(round(f.liver_lesions[which]))
        out += [RegionQA("What is this?", "This is a hypodense lesion in the liver.", (8,), comp),
                RegionQA("How large is it?", f"It measures {size} mm.", (8,), comp),
                RegionQA("Is it cystic?", "no", (8,), comp),
                RegionQA("Where is it?", f"In the {lobes[which]} lobe of the liver.", (8,), comp)]
    if f.renal_cyst and (labels == 9).any():
        size = int(round(f.cyst_mm))
        out += [RegionQA("What is this?", f"This is a cyst in the {f.renal_cyst} kidney.", (9,)),
                RegionQA("How large is it?", f"It measures {size} mm.", (9,)), RegionQA("Is it cystic?", "yes", (9,)),
                RegionQA("Where is it?", f"In the {f.renal_cyst} kidney.", (9,))]
    return out


# ----- public API ------------------------------------------------------------------------------
def generate_case(seed: int, shape: tuple[int, int, int] = (32, 128, 128),
                  spacing: tuple[float, float, float] = (2.8, 2.8, 5.0), findings: dict | None = None) -> CTCase:
    """One phantom: HU int16 ``[k, j, i]``, label map, report, VQA and referring expressions.

    ``shape`` is (slices, rows, columns); ``spacing`` is (i, j, k) in mm and should cover about
    36 x 36 x 16 cm. ``findings`` forces what the phantom shows (keys: see ``Findings``).
    """
    if len(shape) != 3 or min(shape) < 8:
        raise ValueError(f"shape must be three sizes of at least 8 voxels, got {shape}")
    rng = np.random.default_rng(seed)
    f = Findings.from_dict(findings, rng) if findings is not None else Findings.draw(rng)
    hu, labels, lesion_sites, organs, spleen_axes = _paint_anatomy(shape, spacing, rng, f)

    from scipy.ndimage import gaussian_filter

    hu = gaussian_filter(hu, BLUR_VOXELS) + rng.normal(0, NOISE_HU, shape).astype(np.float32)
    image = np.clip(np.round(hu), -1024, 3071).astype(np.int16)

    liver_x = float(np.argwhere(labels == 1)[:, 2].mean() - (shape[2] - 1) / 2) * spacing[0]
    lobes = [_lobe(c[0], liver_x) for c in lesion_sites] or ["right"]
    spleen_cm = int(round(2 * spleen_axes[2] / 10))
    report = _report(f, lobes, spleen_cm, rng)
    closed, opened, referring = _questions(f, lobes, rng)
    regions = _region_questions(f, labels, lesion_sites, lobes, spacing, rng)
    present = {v: n for v, n in ORGANS.items() if (labels == v).any()}
    volume = Volume(image, spacing=spacing, origin=(-(shape[2] - 1) / 2 * spacing[0], -(shape[1] - 1) / 2 * spacing[1],
                                                    -(shape[0] - 1) / 2 * spacing[2]))
    return CTCase(f"synthetic-{seed}", volume, labels, present, report, closed, opened, referring, regions)


def write_case(case: CTCase, folder, layout: str = "m3d"):
    """Write ``case`` (image, label map, report, VQA, referring) to ``folder``; see ``data.writers.write_case``."""
    from .writers import write_case as _write

    return _write(case, folder, layout)


def corpus() -> list[str]:
    """Text covering every word the generator and the chat format can emit (for a word-level tokenizer)."""
    from ..modeling.prompting import (REPORT_QUESTION, SEG_TOKEN, no_object_answer, region_question,  # torch: only here
                                      segment_question)

    texts = [REPORT_QUESTION, f"It is {SEG_TOKEN}.", "Choices: A. B. C. D. About the region : , ( )", "slices - to"]
    texts += [segment_question(t) for t in STRUCTURE_LABELS]
    rng = np.random.default_rng(0)
    phrases = LESION_TEMPLATES + CYST_TEMPLATES + NEVER_PRESENT + [n for names in ORGAN_SYNONYMS.values() for n in names]
    texts += [no_object_answer(_fill(t, rng, lobe="left", side="right")) for t in phrases]
    texts += [region_question(q) for q in ("What is this?", "How large is it?", "Is it cystic?", "Where is it?")]
    texts += ["This is a hypodense lesion in the liver. It measures cm mm. In the left right lobe of the liver kidney."]
    texts.append(" ".join(str(n) for n in range(0, 1001)))
    for lesions in ([], [12.0], [20.0, 10.0], [25.0, 15.0, 9.0]):
        for cyst in (None, "left", "right"):
            for spleno in (False, True):
                f = Findings(lesions, cyst, 15.0, spleno)
                for lobe in ("left", "right"):
                    for _ in range(6):  # the templates are chosen at random; cover every variant
                        texts.append(_report(f, [lobe], 14, rng))
                    closed, opened, referring = _questions(f, [lobe], rng)
                    texts += [q.prompt() + " " + q.target() for q in closed]
                    texts += [f"{q.question} {q.answer}" for q in opened]
                    texts += [segment_question(r.expression) for r in referring]
    texts += [f"This is the {n}." for n in ORGANS.values()]
    return texts

