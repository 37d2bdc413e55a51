"""A reconstruction field of view wider than the body, on the real whole HU series (simulated by padding with air).

    python benchmarks/wide_field.py [--data DIR] [--json OUT] [--only NAME ...] [--sizes N ...] [--air-noise HU]
    python benchmarks/wide_field.py --fractions F ... [--data DIR] [--json OUT] [--only NAME ...]
    (either: [--lesions-model NAME_OR_RUN], the lesion model; default the shipped one)

Each real chest series of covid-ct-md (P001, cap001, normal001) and LIDC-IDRI-0001 is analysed as it is and on
wider fields at the same pixel size (``covidct.evaluate.acquisitions.wide_field_simulated``: the slices centred in
air; 640² and 768² make 378-576 mm fields of these series), with the same row as ``benchmarks/metal_implants.py``
(on the healthy series every lesion mL is false). About 1-2 minutes per series and size on two cores.

``--fractions``: the networks' response to the anatomy's scale. Each series is brought to a field in which its
HU-threshold lung field (``covidct.pipeline.grid.lung_field``) spans each fraction F of the width: padded with air
where its lungs span more, cut to a square box centred on them where less (``grid.box_around``); the analysis's own
box (``grid.lung_field_box``) is turned off, so that each field reaches the networks as it is.
Skips (exit 0) when the data folder is absent.
The phantoms' response to the same box: ``benchmarks/phantom_scale.py``.
"""

from __future__ import annotations

from bench_io import emit_json, real_series_args, simulated_rows  # noqa: E402  (the script's folder is on sys.path)


def at_lung_fraction(ct, fraction: float):
    """``ct`` on a field where its lung field spans ``fraction`` of the width (padded or cut, the pixel size kept)."""
    from covidct.evaluate.acquisitions import wide_field_simulated
    from covidct.pipeline import grid

    field = grid.lung_field(ct)
    width = field[1].stop - field[1].start
    if fraction < width / ct.shape[2]:
        return wide_field_simulated(ct, int(round(width / fraction)))
    return grid.crop_in_plane(ct, grid.box_around(field, ct.shape[1:], ct.spacing[1:], fraction))


def main() -> int:
    def options(ap) -> None:
        ap.add_argument("--sizes", type=int, nargs="+", default=[640, 768], help="field sizes in pixels, one case each")
        ap.add_argument("--air-noise", type=float, default=None,
                        help="noise of the added air in HU (default: the series' own above the body; 0: flat)")
        ap.add_argument("--lesions-model", default="lesions", help="lesion model: shipped name or run folder")
        ap.add_argument("--fractions", type=float, nargs="+", default=None,
                        help="instead of --sizes: lung-field shares of the width, one case each (box turned off)")
    parsed = real_series_args(__doc__, options)
    if parsed is None:
        return 0
    args, data = parsed
    from covidct.evaluate.acquisitions import wide_field_simulated

    if args.fractions:
        from covidct.pipeline import grid

        grid.NARROW_LUNG_FRACTION = 0.0  # each case sets the field the networks see itself
        simulations = [(f"lungs over {f:g} of the width", lambda ct, f=f: (at_lung_fraction(ct, f), None))
                       for f in args.fractions]
    else:
        simulations = [(f"field {n}²", lambda ct, n=n: (wide_field_simulated(ct, n, args.air_noise), None))
                       for n in args.sizes]
    rows = simulated_rows(data, args.only, simulations, None, args.lesions_model)
    return emit_json({"rows": rows, "sizes": None if args.fractions else args.sizes, "fractions": args.fractions,
                      "air_noise_hu": args.air_noise, "lesions_model": args.lesions_model}, args.json)


if __name__ == "__main__":
    raise SystemExit(main())
