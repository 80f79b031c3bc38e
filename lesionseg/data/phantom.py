"""Random abdominal-pelvic anatomy, built from implicit solids in patient millimetres.

All data made here are **synthetic phantoms**: geometric shapes with CT-like densities, not images
of patients, and not for clinical use.

The anatomy is laid out in a local LPS frame (+x patient left, +y posterior, +z superior) whose
origin is the centre of the femoral heads' line at their height; a case later shifts it to scanner
coordinates.  Sizes, positions and shapes are drawn from one ``numpy.random.Generator``, so a seed
fixes the patient.  The spleen is a bent, bumpy ellipsoid of random size and pose in the left upper
abdomen, so that a model has to learn its shape rather than a fixed position.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from lesionseg.data.shapes import (
    N_BUMP_TERMS,
    Box,
    Canvas,
    Capsule,
    Column,
    Ellipsoid,
    Intersection,
    Solid,
    SphereCup,
    Union,
)
from lesionseg.data.tissues import CORTEX_MM, LABEL, PHASES, TISSUE_HU

SPINE_LEVELS = ("L5", "L4", "L3", "L2", "L1", "T12", "T11", "T10", "T9", "T8")
_RIB_REACH = {"T12": 1.2, "T11": 1.7, "T10": 2.3, "T9": 2.6, "T8": 2.7}  # radians around the body


@dataclass
class Layer:
    """One solid painted with one tissue; ``label`` names a label of ``tissues.LABEL`` or is None."""

    name: str
    solid: Solid
    tissue: str | Callable[[np.ndarray], np.ndarray]
    label: str | None = None


@dataclass
class Phantom:
    """A sampled patient: paint order, the solids lesions need, and landmarks (local mm)."""

    phase: str
    hu: dict[str, float]
    cortex_mm: float
    soft_layers: list[Layer]
    bone: Union
    bone_hosts: list[tuple[str, Solid]]
    node_sites: list[tuple[str, Capsule]]
    node_keep_out: list[Solid]
    body: Solid
    cavity: Solid
    landmarks: dict[str, float] = field(default_factory=dict)

    def bone_value(self, depth: np.ndarray) -> np.ndarray:
        """HU of bone at a depth (mm) below its surface: cortex, then trabecular marrow."""
        cortex, marrow = self.hu["cortical_bone"], self.hu["marrow"]
        into_marrow = np.clip(depth - self.cortex_mm + 0.5, 0.0, 1.0)
        return (cortex + (marrow - cortex) * into_marrow).astype(np.float32)

    def render(self, canvas: Canvas, nodes: list = (), bone_lesions: list = ()) -> None:
        """Paint the anatomy and the given lesions onto ``canvas`` (lesions: ``lesions.Lesion``)."""
        for layer in self.soft_layers:
            value = self.hu[layer.tissue] if isinstance(layer.tissue, str) else layer.tissue
            canvas.paint(layer.solid, value, LABEL[layer.label] if layer.label else 0)
        for lesion in nodes:
            lesion.painted_voxels = canvas.paint(lesion.solid, lesion.hu, LABEL[lesion.label])
        canvas.paint(self.bone, self.bone_value, LABEL["bone"])
        for lesion in bone_lesions:
            lesion.painted_voxels = canvas.paint(lesion.solid, lesion.hu, LABEL[lesion.label])


def _unit(v) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    return v / np.linalg.norm(v)


def _frame(first, second) -> np.ndarray:
    """Right-handed axes: ``first``, then ``second`` made perpendicular to it."""
    a = _unit(first)
    b = np.asarray(second, dtype=np.float64)
    b = _unit(b - (b @ a) * a)
    return np.column_stack([a, b, np.cross(a, b)])


def _jitter(rng: np.random.Generator, degrees: float) -> np.ndarray:
    """A random rotation of a few degrees about each axis."""
    ax, ay, az = np.radians(rng.normal(0.0, degrees, 3))
    cx, sx, cy, sy, cz, sz = np.cos(ax), np.sin(ax), np.cos(ay), np.sin(ay), np.cos(az), np.sin(az)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def _bumps(rng: np.random.Generator, amplitude: float) -> np.ndarray:
    return rng.normal(0.0, amplitude, N_BUMP_TERMS)


def sample_phantom(rng: np.random.Generator, phase: str | None = None) -> Phantom:
    """Draw one synthetic patient."""
    u = rng.uniform
    phase = phase or PHASES[int(rng.integers(len(PHASES)))]
    if phase not in PHASES:
        raise ValueError(f"unknown contrast phase {phase!r}; use one of {', '.join(PHASES)}")
    hu = {name: float(u(*ranges[phase])) for name, ranges in TISSUE_HU.items()}
    s = u(0.92, 1.08)  # skeletal size
    girth = u(0.85, 1.15)  # habitus

    # ---- spine: levels from the sacrum up ------------------------------------------------------
    z_sacrum_top = u(115, 135) * s
    disc, height = u(7, 10) * s, u(25, 29) * s
    level_z = {name: z_sacrum_top + disc + height / 2 + n * (height + disc) for n, name in enumerate(SPINE_LEVELS)}
    z_top = level_z[SPINE_LEVELS[-1]] + height
    body_rx, body_ry = u(20, 25) * s, u(15, 18) * s
    canal_rx, canal_ry = 11 * s, 8 * s

    # ---- body outline: trunk, thighs, fat and muscle layers --------------------------------------
    z_crotch = -u(70, 85) * s
    z_floor = -u(45, 60) * s
    z_body_top = z_top + 60
    kz = np.array([z_crotch, 0.0, 60 * s, level_z["L4"], level_z["L1"], level_z["T11"], z_body_top])
    # the skeleton sets the frame; muscle, belly (visceral fat) and subcutaneous fat are added on it
    fat, wall, belly = u(8, 30) * girth**2, u(8, 15), u(0, 35) * girth
    frame_w = np.array([140, 150, 140, 130, 125, 125, 125]) * s * rng.uniform(0.96, 1.04, 7)
    frame_d = np.array([95, 100, 100, 95, 95, 100, 105]) * s * rng.uniform(0.96, 1.04, 7)
    belly_share = np.array([0.0, 0.0, 0.3, 1.0, 1.0, 0.8, 0.6])
    # capped so that the widest patient still fits a 480 mm field of view
    half_w = np.minimum(frame_w + fat + wall + belly * belly_share, 225.0)
    half_d = np.minimum(frame_d + 1.1 * fat + wall + belly * belly_share, 190.0)
    body_cy = -0.5 * belly * belly_share  # a belly grows forwards
    lordosis, scoliosis, y_spine0 = u(5, 15), u(-6, 6), float(frame_d[3] - u(60, 70) * s)

    def spine_x(z):
        return scoliosis * np.sin(np.pi * (np.asarray(z) - z_sacrum_top) / (z_top - z_sacrum_top))

    def spine_y(z):
        t = np.clip((np.asarray(z) - z_sacrum_top) / (level_z["T12"] - z_sacrum_top), 0.0, 1.5)
        return y_spine0 - lordosis * np.sin(np.pi * np.minimum(t, 1.0)) + 12.0 * np.maximum(t - 1.0, 0.0)

    trunk = Column(kz, 0.0, body_cy, half_w, half_d)
    trunk_muscle = Column(kz, 0.0, body_cy + 0.1 * fat, half_w - fat, half_d - 1.1 * fat)
    cav_z = np.concatenate([[z_floor], kz[1:]])
    cavity = Column(cav_z, 0.0, body_cy + 0.1 * fat, half_w - fat - wall, half_d - 1.1 * fat - wall)

    fx, fy, r_head = u(85, 97) * s, u(-15, 0), u(21, 26) * s
    thigh_z = np.array([-450.0, z_crotch + 40])
    thigh_r = np.array([u(60, 75), u(70, 85)]) * girth
    thighs = [Column(thigh_z, side * (fx + 5), fy + 5, thigh_r, thigh_r * 0.95) for side in (1.0, -1.0)]
    thigh_muscles = [
        Column(thigh_z, side * (fx + 5), fy + 5, thigh_r - 0.8 * fat, thigh_r * 0.95 - 0.8 * fat)
        for side in (1.0, -1.0)
    ]
    body = Union([trunk, *thighs])
    muscle_compartment = Union([trunk_muscle, *thigh_muscles])

    # the scanner table: a gently curved carbon-fibre shell under the patient's back
    table_top = float((body_cy + half_d).max()) + u(1, 4)
    table_r = u(700, 900)
    table_half_width = u(200, 240)
    table = Column((-460.0, z_body_top + 200), 0.0, table_top + 4 - table_r, table_r, table_r, shell=8.0)
    table_region = Box(
        (-table_half_width, table_top - 40, -460.0), (table_half_width, table_top + 12, z_body_top + 200)
    )
    layers: list[Layer] = [
        Layer("table", Intersection(table, table_region), "table"),
        Layer("body", body, "fat"),
        Layer("muscle_wall", muscle_compartment, "muscle"),
        Layer("cavity", cavity, "fat"),
    ]

    # ---- levels of the organs -------------------------------------------------------------------
    z_kidney = level_z["L1"] - u(0, 20)
    z_liver = level_z["T12"] + u(10, 35)
    liver_rz = u(75, 90)
    z_dome = z_liver + liver_rz

    # lung bases behind and beside the liver dome
    for side in (1.0, -1.0):
        lung = Ellipsoid((side * u(70, 95), u(30, 55), z_dome + u(40, 70)), (u(65, 80), u(60, 75), u(90, 110)))
        layers.append(Layer(f"lung_{'left' if side > 0 else 'right'}", Intersection(lung, cavity), "lung"))

    # bowel loops: soft-tissue or gas-filled blobs in the front of the abdomen
    n_bowel = int(rng.integers(25, 45))
    for n in range(n_bowel):
        width = float(np.interp(0.0, kz, half_w)) - fat - wall
        centre = (u(-0.65, 0.65) * width, u(-0.75, 0.05) * float(half_d[3]), u(40, z_kidney + 20))
        radii = (u(12, 26), u(10, 24), u(12, 32))
        tissue = "gas" if u() < 0.25 else "bowel"
        loop = Ellipsoid(centre, radii, _jitter(rng, 40), _bumps(rng, 0.06))
        layers.append(Layer(f"bowel_{n}", Intersection(loop, cavity), tissue))

    # ---- muscles beside the spine and in the buttocks -------------------------------------------
    sz = np.linspace(z_sacrum_top - 40, z_body_top, 8)
    for side in (1.0, -1.0):
        back = Column(sz, spine_x(sz) + side * u(24, 30), spine_y(sz) + body_ry + 42, u(20, 27) * girth**0.3, u(17, 23))
        layers.append(Layer("paraspinal", Intersection(back, trunk_muscle), "muscle"))
        psoas_top = (side * 22 + spine_x(level_z["L1"]), float(spine_y(level_z["L1"])), level_z["L1"])
        psoas_mid = (side * u(42, 50) + spine_x(level_z["L5"]), float(spine_y(level_z["L5"])) - 8, level_z["L5"])
        psoas_low = (side * (fx - 22), fy - 28, 10.0)
        layers.append(Layer("psoas", Capsule(psoas_top, psoas_mid, 7 * s, u(17, 22) * s), "muscle"))
        layers.append(Layer("psoas", Capsule(psoas_mid, psoas_low, u(17, 22) * s, 14 * s), "muscle"))
        glute = Ellipsoid((side * (fx + 5), fy + u(55, 70), 35 * s), (u(48, 58), u(35, 42), u(80, 95)) * np.array(s))
        layers.append(Layer("gluteus", Intersection(glute, muscle_compartment), "muscle"))

    # ---- vessels: aorta, vena cava, iliac arteries and veins ------------------------------------
    z_bif = level_z["L4"] + u(-8, 8)
    r_aorta, r_cava = u(9, 13), u(10, 13)

    def front_of_spine(z, radius, dx):
        return (float(spine_x(z)) + dx, float(spine_y(z)) - body_ry - radius - 3, float(z))

    aorta_pts = [front_of_spine(z, r_aorta, u(12, 20)) for z in (z_body_top, level_z["L1"], z_bif)]
    cava_pts = [front_of_spine(z, r_cava, -u(18, 26)) for z in (z_body_top, level_z["L1"], level_z["L5"])]
    vessels: list[tuple[str, Capsule]] = []
    for n in range(2):
        vessels.append(("aorta", Capsule(aorta_pts[n], aorta_pts[n + 1], r_aorta, r_aorta * (0.97 if n else 1.0))))
        vessels.append(("vena_cava", Capsule(cava_pts[n], cava_pts[n + 1], r_cava)))
    for side, name in ((1.0, "left"), (-1.0, "right")):
        fork = (
            side * u(38, 48) + float(spine_x(level_z["L5"])),
            float(spine_y(level_z["L5"])) - body_ry - 4,
            level_z["L5"] - u(10, 25),
        )
        groin = (side * (fx - 12), fy - u(22, 30), 5.0)
        deep = (side * (fx - 40), fy + u(35, 45), u(20, 35))
        bif = aorta_pts[-1]
        vessels.append((f"common_iliac_{name}", Capsule(bif, fork, 6.5, 6.0)))
        vessels.append((f"external_iliac_{name}", Capsule(fork, groin, 6.0, 5.0)))
        vessels.append((f"internal_iliac_{name}", Capsule(fork, deep, 4.5, 3.5)))
        vein = np.array([-side * 5, 9, 0])
        vessels.append((f"iliac_vein_{name}", Capsule(np.add(fork, vein), np.add(groin, vein), 7.0, 6.5)))
        vessels.append(
            (f"common_iliac_vein_{name}", Capsule(np.add(cava_pts[-1], (0, 0, -5)), np.add(fork, vein), 8.0, 7.0))
        )
    for name, capsule in vessels:
        layers.append(Layer(name, capsule, "blood"))

    # ---- spinal canal and discs (painted before bone; bone covers the vertebral bodies) ---------
    layers.append(Layer("discs", Column(sz, spine_x(sz), spine_y(sz), body_rx * 0.97, body_ry * 0.97), "disc"))
    canal_y = spine_y(sz) + body_ry + canal_ry + 1
    layers.append(Layer("spinal_canal", Column(sz, spine_x(sz), canal_y, canal_rx, canal_ry), "csf"))

    # ---- pelvic organs ---------------------------------------------------------------------------
    y_sym, z_sym = fy - u(40, 50), -u(20, 30) * s
    prostate_radii = np.array([u(18, 26), u(13, 18), u(15, 22)])
    prostate_c = np.array([u(-3, 3), y_sym + u(25, 35), z_sym - u(0, 10)])
    rect_r = u(13, 19)
    rect_y = prostate_c[1] + prostate_radii[1] + rect_r + 2
    rectum = [
        Capsule((0, rect_y, prostate_c[2] - 40), (0, rect_y + 5, prostate_c[2] + 45), rect_r),
        Capsule((0, rect_y + 5, prostate_c[2] + 45), (u(10, 25), rect_y - 10, prostate_c[2] + 100), rect_r),
    ]
    for n, segment in enumerate(rectum):
        layers.append(Layer(f"rectum_{n}", segment, "bowel"))
        if u() < 0.6:
            gas = Capsule(segment.a, segment.b, rect_r * u(0.3, 0.6))
            layers.append(Layer(f"rectal_gas_{n}", gas, "gas"))
    bladder_radii = np.array([u(30, 55), u(25, 45), u(22, 45)])
    bladder_c = prostate_c + np.array([u(-6, 6), -u(5, 15), prostate_radii[2] + bladder_radii[2] - 6])
    bladder = Ellipsoid(bladder_c, bladder_radii, _jitter(rng, 6), _bumps(rng, 0.04))
    prostate = Ellipsoid(prostate_c, prostate_radii, _jitter(rng, 6), _bumps(rng, 0.03))

    # ---- abdominal organs -----------------------------------------------------------------------
    liver = Ellipsoid(
        (-u(45, 65), u(-15, 5), z_liver),
        (u(95, 115), u(75, 95), liver_rz),
        _frame((1, 0, u(-0.15, 0.05)), (0, 1, 0)) @ _jitter(rng, 4),
        _bumps(rng, 0.05),
        taper=u(0.45, 0.65),
    )
    gallbladder = Ellipsoid((-u(30, 50), -u(35, 55), z_liver - u(45, 65)), (u(12, 18), u(12, 18), u(25, 40)))
    spleen_frame = _frame((-1, u(-0.2, 0.2), 0.0), (0.0, -0.55, -0.8)) @ _jitter(rng, 12)
    spleen = Ellipsoid(
        (u(65, 100), u(15, 55), level_z["T12"] + u(-25, 25)),
        np.array([u(18, 24), u(48, 62), u(32, 40)]) * np.clip(rng.lognormal(0.0, 0.2), 0.72, 1.45),
        spleen_frame,
        _bumps(rng, 0.07),
        bend=u(0.3, 0.9),
    )
    kidneys = []
    for side, drop in ((1.0, 0.0), (-1.0, u(10, 25))):
        centre = (side * u(62, 75), float(spine_y(z_kidney)) + u(5, 20), z_kidney - drop)
        # long axis tilted: upper pole medial and posterior
        frame = _frame((side * -0.25, 0.3, 1.0), (side * 1.0, -0.5, 0.0)) @ _jitter(rng, 6)
        radii = (u(48, 58), u(24, 30), u(20, 26))
        kidney = Ellipsoid(centre, radii, frame, _bumps(rng, 0.03))
        sinus = Ellipsoid(
            np.add(centre, (-side * radii[1] * 0.55, -radii[2] * 0.2, 0)), (radii[0] * 0.45, 13, 9), frame
        )
        kidneys.append((kidney, sinus))

    layers.append(Layer("liver", Intersection(liver, cavity), "liver", "liver"))
    layers.append(Layer("gallbladder", Intersection(gallbladder, Intersection(liver, cavity)), "urine"))
    layers.append(Layer("spleen", Intersection(spleen, cavity), "spleen", "spleen"))
    for kidney, sinus in kidneys:
        layers.append(Layer("kidney", Intersection(kidney, cavity), "kidney", "kidney"))
        layers.append(Layer("renal_sinus", Intersection(sinus, kidney), "fat"))
    layers.append(Layer("bladder", bladder, "urine", "urinary_bladder"))
    layers.append(Layer("prostate", prostate, "prostate", "prostate"))

    # ---- skeleton ---------------------------------------------------------------------------------
    bones: list[Solid] = []
    hosts: list[tuple[str, Solid]] = []
    for n, level in enumerate(SPINE_LEVELS):
        zc = level_z[level]
        cx, cy = float(spine_x(zc)), float(spine_y(zc))
        widen = 1.0 + 0.03 * (4 - n) if n < 5 else 1.0 - 0.04 * (n - 4)
        vb = Column((zc - height / 2, zc + height / 2), cx, cy, body_rx * widen, body_ry * min(widen, 1.0))
        ccy = cy + body_ry + canal_ry + 1
        arch = Column((zc - height * 0.4, zc + height * 0.3), cx, ccy, canal_rx + 3, canal_ry + 3, shell=6.0 * s)
        spinous = Capsule((cx, ccy + canal_ry + 4, zc), (cx, ccy + canal_ry + u(24, 34) * s, zc - 12), 4.0 * s)
        bones += [vb, arch, spinous]
        hosts.append((f"vertebra_{level}", vb))
        for side in (1.0, -1.0):
            if level in _RIB_REACH:
                bones += _rib(side, cx, ccy, zc, _RIB_REACH[level], trunk, fat, wall, s)
            else:
                tip = (cx + side * u(35, 45) * s, ccy - 4, zc)
                bones.append(Capsule((cx + side * 8, ccy - 2, zc), tip, 4.5 * s, 3.5 * s))

    tilt = np.radians(u(20, 35))
    down = np.array([0.0, np.sin(tilt), -np.cos(tilt)])  # from the sacral promontory towards the coccyx
    sac_r = np.array([u(55, 65), u(44, 50), u(16, 20)]) * s
    sac_c = np.array([0.0, float(spine_y(z_sacrum_top)) + 5, z_sacrum_top]) + down * sac_r[0] * 0.8
    sacrum = Ellipsoid(sac_c, sac_r, _frame(down, (1, 0, 0)), taper=0.5)
    coccyx = Capsule(sac_c + down * sac_r[0] * 0.85, sac_c + down * sac_r[0] * 1.1 + (0, -15, -10), 6 * s, 3 * s)
    bones += [sacrum, coccyx]
    hosts.append(("sacrum", sacrum))

    wing_z = np.array([r_head + 10, 95 * s, level_z["L4"] + u(-5, 8)])
    for side, name in ((1.0, "left"), (-1.0, "right")):
        head_c = np.array([side * fx, fy, 0.0])
        head = Ellipsoid(head_c, (r_head, r_head, r_head))
        cup = SphereCup(head_c, r_head + 2.5, r_head + 12, (-side * 0.55, 0.0, 0.83), r_head * 0.35)
        wing = Column(
            wing_z,
            side * np.array([58, 58, 60]) * s,
            np.array([8, 12, 15]) * s,
            np.array([38, 62, 70]) * s,
            np.array([42, 60, 66]) * s,
            shell=u(9, 13) * s,
            angles=(np.radians(-40), np.radians(105)),
            mirror_x=side < 0,
        )
        ilium_body = Capsule(head_c + (-side * 8, 10, r_head + 6), (side * 62 * s, fy + 30, wing_z[0] + 25), 15 * s)
        sym = np.array([side * 9, y_sym, z_sym])
        pubis = Capsule(head_c + (-side * 14, -14, -4), sym + (0, 0, 8), 8 * s)
        symphysis = Capsule(sym + (0, 0, 10), sym + (0, 6, -20), 9 * s)
        tuber = head_c + (-side * 30 * s, 35, -55 * s)
        ischium = Capsule(head_c + (-side * 18, 20, -12), tuber, 12 * s, 13 * s)
        ramus = Capsule(tuber, sym + (0, 6, -20), 8 * s)
        trochanter = head_c + (side * 45 * s, 12, -28 * s)
        neck = Capsule(head_c, trochanter, 15 * s, 14 * s)
        shaft = Capsule(trochanter + (-side * 6, -6, -10), head_c + (side * 25 * s, -5, -420), 14 * s)
        greater = Ellipsoid(trochanter, (15, 19, 24))
        bones += [head, cup, wing, ilium_body, pubis, symphysis, ischium, ramus, neck, shaft, greater]
        hosts += [
            (f"femoral_head_{name}", head),
            (f"acetabulum_{name}", ilium_body),
            (f"ilium_{name}", wing),
            (f"femur_{name}", neck),
        ]
    bone = Union(bones)

    keep_out = [bladder, prostate, *rectum, *(k for k, _ in kidneys), liver, spleen]
    node_sites = [(name, c) for name, c in vessels if "iliac" in name and "vein" not in name]
    node_sites.append(("para_aortic", Capsule(aorta_pts[1], aorta_pts[2], r_aorta)))

    body_lo, body_hi = body.lo, body.hi
    landmarks = {
        "z_floor": float(z_floor),
        "z_crotch": float(z_crotch),
        "z_femoral_heads": 0.0,
        "z_kidneys": float(z_kidney),
        "z_liver_dome": float(z_dome),
        "spleen_top": float(spleen.hi[2]),
        "body_half_width": float(max(abs(body_lo[0]), abs(body_hi[0]))),
        "body_front": float(body_lo[1]),
        "body_back": float(body_hi[1]),
    }
    return Phantom(
        phase=phase,
        hu=hu,
        cortex_mm=float(u(*CORTEX_MM)),
        soft_layers=layers,
        bone=bone,
        bone_hosts=hosts,
        node_sites=node_sites,
        node_keep_out=keep_out,
        body=body,
        cavity=cavity,
        landmarks=landmarks,
    )


def _rib(side: float, cx: float, cy: float, zc: float, reach: float, trunk: Column, fat: float, wall: float, s: float):
    """A rib: capsules from the spine round the body wall, falling as they go forward."""
    parts = []
    n = 8
    drop = 55.0 * s * reach / 2.5
    points = []
    for t in np.linspace(0.0, 1.0, n + 1):
        phi = 0.25 + t * reach  # radians from the back midline
        z = zc - drop * t
        a = float(np.interp(z, trunk.z, trunk.ax)) - fat - wall * 0.3
        b = float(np.interp(z, trunk.z, trunk.ay)) - 1.1 * fat - wall * 0.3
        cy_body = float(np.interp(z, trunk.z, trunk.cy)) + 0.1 * fat
        points.append((side * a * np.sin(phi), cy_body + b * np.cos(phi), z))
    points[0] = (cx + side * 14, cy - 2, zc)
    for p, q in zip(points[:-1], points[1:], strict=True):
        parts.append(Capsule(p, q, 4.5 * s))
    return parts
