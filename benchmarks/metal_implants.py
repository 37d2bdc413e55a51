"""Metal implants on the real whole HU series: a pacemaker with its lead, spinal fixation rods (simulated streaks).

    python benchmarks/metal_implants.py [--data DIR] [--json OUT] [--only NAME ...] [--photons N]

Each real chest series of covid-ct-md (P001, cap001, normal001) and LIDC-IDRI-0001 is analysed as it is and with each
implant of ``covidct.evaluate.metal.metal_implant_simulated`` (the metal and the streaks its filtered back-projection
makes; no lesion added). Per case: lesion mL in all and on the slices that hold metal, the lung mL, the severity, the
diagnosis, the warnings about metal, and the slice-level infection AUC where slice labels exist. On the healthy series
every lesion mL is false (LIDC-IDRI-0001 scored outside its readers' nodules, as in ``benchmarks/hu_volumes.py``).
Skips (exit 0) when the data folder is absent.
"""

from __future__ import annotations

from bench_io import emit_json, real_series_args, simulated_rows  # noqa: E402  (the script's folder is on sys.path)


def main() -> int:
    parsed = real_series_args(__doc__, lambda ap: ap.add_argument(
        "--photons", type=float, default=1e5, help="X-ray photons per ray before the patient"))
    if parsed is None:
        return 0
    args, data = parsed
    from covidct.evaluate.metal import IMPLANTS, metal_implant_simulated

    simulations = [(implant, lambda ct, implant=implant: metal_implant_simulated(ct, implant, photons=args.photons))
                   for implant in IMPLANTS]
    rows = simulated_rows(data, args.only, simulations, "metal")
    return emit_json({"rows": rows, "photons": args.photons}, args.json)


if __name__ == "__main__":
    raise SystemExit(main())
