"""A reconstruction field of view wider than the body, on the real whole HU series (simulated by padding with air).

    python benchmarks/wide_field.py [--data DIR] [--json OUT] [--only NAME ...] [--sizes N ...] [--air-noise HU]

Each real chest series of covid-ct-md (P001, cap001, normal001) and LIDC-IDRI-0001 is analysed as it is and on
wider fields at the same pixel size (``covidct.evaluate.acquisitions.wide_field_simulated``: the slices centred in
air; 640² and 768² make 378-576 mm fields of these series), with the same row as ``benchmarks/metal_implants.py``
(on the healthy series every lesion mL is false). About 1-2 minutes per series and size on two cores. Skips (exit 0)
when the data folder is absent.
"""

from __future__ import annotations

from bench_io import emit_json, real_series_args, simulated_rows  # noqa: E402  (the script's folder is on sys.path)


def main() -> int:
    def options(ap) -> None:
        ap.add_argument("--sizes", type=int, nargs="+", default=[640, 768], help="field sizes in pixels, one case each")
        ap.add_argument("--air-noise", type=float, default=None,
                        help="noise of the added air in HU (default: the series' own above the body; 0: flat)")

    parsed = real_series_args(__doc__, options)
    if parsed is None:
        return 0
    args, data = parsed
    from covidct.evaluate.acquisitions import wide_field_simulated

    simulations = [(f"field {n}²", lambda ct, n=n: (wide_field_simulated(ct, n, args.air_noise), None))
                   for n in args.sizes]
    rows = simulated_rows(data, args.only, simulations, None)
    return emit_json({"rows": rows, "sizes": args.sizes, "air_noise_hu": args.air_noise}, args.json)


if __name__ == "__main__":
    raise SystemExit(main())
